//! The foundation over the in-memory transport: joins, both channels, leaves, loss,
//! the handshake, and hostile input.

use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::internals::wire::{self, Frame, Hello, Message, PROTOCOL_VERSION};
use bevy_peer_sync::net::transport::Packet;
use bevy_peer_sync::net::transport::memory::LinkConditioner;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use yrs::Text;

fn send(room: &mut TestRoom, from: usize, to: Recipients, channel: Channel, payload: Vec<u8>) {
    room.app_mut(from).world_mut().write_message(SendPayload {
        to,
        channel,
        payload: Bytes::from(payload),
    });
}

fn messages<M: bevy::ecs::message::Message + Clone>(room: &mut TestRoom, index: usize) -> Vec<M> {
    room.app_mut(index)
        .world_mut()
        .resource_mut::<Messages<M>>()
        .drain()
        .collect()
}

#[test]
fn three_peers_join_exchange_and_leave() {
    let mut room = TestRoom::new(1);
    for _ in 0..3 {
        room.add_peer(|_| {});
    }
    assert!(
        room.step_until(10, TestRoom::fully_connected),
        "peers did not connect"
    );
    for i in 0..3 {
        assert_eq!(
            messages::<PeerJoined>(&mut room, i).len(),
            2,
            "peer {i} joined events"
        );
    }

    for channel in Channel::ALL {
        send(&mut room, 0, Recipients::All, channel, vec![1, 2, 3]);
    }
    room.step_n(2);
    for i in [1, 2] {
        let got = room.received_payloads(i);
        assert_eq!(got.len(), 2, "peer {i} gets one payload per channel");
        assert!(got.iter().all(|p| p.payload[..] == [1, 2, 3]));
        assert!(got.iter().any(|p| p.channel == Channel::Unreliable));
        assert_eq!(got[0].from, room.peer_id(0).unwrap());
    }
    assert!(
        room.received_payloads(0).is_empty(),
        "a sender does not hear itself"
    );

    // A large reliable payload crosses fragmented and arrives whole.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let to = Recipients::Peer(room.peer_id(2).unwrap());
    send(&mut room, 1, to, Channel::Reliable, big.clone());
    room.step_n(2);
    let got = room.received_payloads(2);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload[..], big[..]);

    let leaving = room.peer_id(1).unwrap();
    room.disconnect(1);
    room.step_n(2);
    for i in [0, 2] {
        let left = messages::<PeerLeft>(&mut room, i);
        assert_eq!(left.len(), 1, "peer {i} sees one leave");
        assert_eq!(left[0].peer, leaving);
        assert!(left[0].was_connected);
        assert_eq!(room.connected_count(i), 1);
    }
    assert_eq!(
        room.connected_count(1),
        0,
        "the leaver's own peers are gone too"
    );
}

/// The first datagrams of a link can be lost even on the reliable channel (webrtc-rs
/// drops data that arrives before its negotiated channels are open): hellos are
/// answered and repeated, and nobody joins before both sides have both hellos, so
/// nothing sent at the join is dropped as "before the handshake".
#[test]
fn lost_hellos_are_answered_and_repeated() {
    // Which of a's and b's first datagrams to each other are lost; whether b is fresh
    // (empty documents when the link opens: a sends it everything, it asks nothing).
    let cases = [(0, 1), (1, 0), (1, 1), (2, 3)];
    for ((lost_a_to_b, lost_b_to_a), b_fresh) in cases
        .into_iter()
        .flat_map(|lost| [(lost, false), (lost, true)])
    {
        let case = format!("lost a->b {lost_a_to_b}, b->a {lost_b_to_a}, b fresh {b_fresh}");
        let mut room = TestRoom::new(3);
        let a = room.add_peer(|_| {});
        let b = room.add_peer(|_| {});
        let (a_id, b_id) = (room.peer_id(a).unwrap(), room.peer_id(b).unwrap());
        room.network.lose_next(a_id, b_id, lost_a_to_b);
        room.network.lose_next(b_id, a_id, lost_b_to_a);
        let write = |room: &mut TestRoom, i: usize, text: &str| {
            let doc = room.app(i).world().resource::<SharedDoc>();
            doc.text("note").insert(&mut doc.transact_mut(), 0, text);
        };
        write(&mut room, a, "from a. ");
        if !b_fresh {
            write(&mut room, b, "from b. ");
        }
        // Repeats come after 200, 600, 1400 ms... (12, 36, 84 frames).
        assert!(room.step_until(100, TestRoom::fully_connected), "{case}");
        for i in [a, b] {
            assert_eq!(messages::<PeerJoined>(&mut room, i).len(), 1, "{case}");
        }
        if b_fresh {
            write(&mut room, b, "from b. ");
        }
        // Repeats and answers stop once heard, and join nobody twice.
        room.step_n(240);
        for i in [a, b] {
            assert!(messages::<PeerJoined>(&mut room, i).is_empty(), "{case}");
            assert_eq!(room.connected_count(i), 1, "{case}");
            let text = room
                .app(i)
                .world()
                .resource::<SharedDoc>()
                .text_string("note");
            assert!(
                text.contains("from a.") && text.contains("from b."),
                "{case}: {text}"
            );
            let mut stats = room.app_mut(i).world_mut().query::<&PeerStats>();
            let stats = stats.single(room.app(i).world()).unwrap();
            assert_eq!(stats.dropped(DropReason::BeforeHandshake), 0, "{case}");
        }
        send(&mut room, a, Recipients::All, Channel::Reliable, vec![9]);
        room.step_n(2);
        assert_eq!(room.received_payloads(b).len(), 1, "{case}");
    }
}

/// A peer whose documents are empty when it joins says so in its hello; the room
/// sends it everything as it joins, without waiting for its y-sync step 1: on a
/// network without delay it has the room's document one step after the handshake.
#[test]
fn a_fresh_joiner_is_sent_everything_without_asking() {
    let mut room = TestRoom::new(4);
    let a = room.add_peer(|_| {});
    room.step();
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("note")
            .insert(&mut doc.transact_mut(), 0, "before b came");
    }
    room.step();
    let b = room.add_peer(|_| {});
    // Step 1: the link opens, hellos cross. Step 2: both join, a sends everything.
    room.step_n(2);
    assert_eq!(messages::<PeerJoined>(&mut room, b).len(), 1);
    let note = |room: &TestRoom, i: usize| {
        room.app(i)
            .world()
            .resource::<SharedDoc>()
            .text_string("note")
    };
    assert_eq!(note(&room, b), "before b came");
    // b, once it has content, is no longer fresh: after a reconnect it asks (y-sync
    // step 1) as any peer with state does, and edits made apart still merge.
    room.disconnect(b);
    room.step();
    for (i, text) in [(a, " a alone"), (b, " b alone")] {
        let doc = room.app(i).world().resource::<SharedDoc>();
        let len = doc.text_string("note").len() as u32;
        doc.text("note").insert(&mut doc.transact_mut(), len, text);
    }
    room.reconnect(b);
    assert!(room.step_until(10, |room| {
        let (na, nb) = (note(room, a), note(room, b));
        na == nb && na.contains("a alone") && na.contains("b alone")
    }));
}

#[test]
fn reliable_channel_delivers_everything_in_order_under_loss() {
    let mut room = TestRoom::new(2);
    room.network.set_default_conditioner(LinkConditioner {
        loss: 0.2,
        latency: Duration::from_millis(40),
        jitter: Duration::from_millis(20),
        reorder: 0.2,
        duplicate: 0.1,
    });
    for _ in 0..3 {
        room.add_peer(|_| {});
    }
    assert!(room.step_until(60, TestRoom::fully_connected));
    let mut unreliable_sent = 0;
    let mut got = [Vec::new(), Vec::new(), Vec::new()];
    for n in 0u32..420 {
        if n < 300 {
            send(
                &mut room,
                0,
                Recipients::All,
                Channel::Reliable,
                n.to_le_bytes().to_vec(),
            );
            send(
                &mut room,
                0,
                Recipients::All,
                Channel::Unreliable,
                n.to_le_bytes().to_vec(),
            );
            unreliable_sent += 1;
        }
        room.step();
        for (i, got) in got.iter_mut().enumerate() {
            got.extend(room.received_payloads(i));
        }
    }
    for i in [1, 2] {
        let got = &got[i];
        let reliable: Vec<u32> = got
            .iter()
            .filter(|p| p.channel == Channel::Reliable)
            .map(|p| u32::from_le_bytes(p.payload[..].try_into().unwrap()))
            .collect();
        assert_eq!(
            reliable,
            (0..300).collect::<Vec<_>>(),
            "peer {i}: all, once, in order"
        );
        let unreliable = got
            .iter()
            .filter(|p| p.channel == Channel::Unreliable)
            .count();
        assert!(
            unreliable < unreliable_sent + 60 && unreliable > unreliable_sent / 2,
            "peer {i}: {unreliable} unreliable"
        );
    }
    let stats = room.network.stats();
    assert!(
        stats.lost > 0 && stats.retransmitted > 0 && stats.duplicated > 0,
        "{stats:?}"
    );
}

#[derive(Component, serde::Serialize, serde::Deserialize, Clone, PartialEq)]
struct Position(f32);

#[derive(Component, serde::Serialize, serde::Deserialize, Clone, PartialEq)]
struct Score(u32);

#[derive(Component, serde::Serialize, serde::Deserialize, Clone, PartialEq)]
struct Health(u32);

#[test]
fn mismatched_schemas_are_rejected_with_both_sides_named() {
    let mut room = TestRoom::new(3);
    let a = room.add_peer(|app| {
        app.sync_component::<Position>(Route::Transient.named("game::Position"))
            .sync_component::<Score>(Route::Durable.named("game::Score"));
    });
    let b = room.add_peer(|app| {
        app.sync_component::<Position>(Route::Transient.named("game::Position"))
            .sync_component::<Health>(Route::Durable.named("game::Health"));
    });
    let mut rejected = Vec::new();
    for _ in 0..5 {
        room.step();
        rejected.extend(messages::<PeerRejected>(&mut room, a));
    }
    assert_eq!(room.connected_count(a), 0);
    assert_eq!(room.connected_count(b), 0);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].peer, room.peer_id(b).unwrap());
    match &rejected[0].reason {
        RejectReason::Schema {
            only_ours,
            only_theirs,
        } => {
            assert_eq!(only_ours, &vec!["game::Score:durable".to_owned()]);
            assert_eq!(only_theirs, &vec!["game::Health:durable".to_owned()]);
        }
        other => panic!("unexpected reason {other:?}"),
    }
    assert!(messages::<PeerJoined>(&mut room, a).is_empty());

    // Payloads from a rejected peer are dropped and counted.
    send(&mut room, b, Recipients::All, Channel::Reliable, vec![9]);
    room.step_n(2);
    assert!(room.received_payloads(a).is_empty());
}

#[test]
fn another_protocol_version_is_rejected() {
    let mut room = TestRoom::new(4);
    let a = room.add_peer(|_| {});
    // Peer b is a custom backend-less app pretending to speak version 99.
    let b = room.add_peer(|_| {});
    room.step(); // links open, hellos queued
    let b_id = room.peer_id(b).unwrap();
    // Replace what `a` got from `b` before it is processed: a future version's hello.
    let mut future = wire::encode(&Message::Hello(Hello {
        crate_version: "9.0.0".into(),
        replica: 1,
        key: [0; 32],
        session: [0; 32],
        nonce: [0; 16],
        proof: None,
        schema_hash: 0,
        schema: vec![],
        heard: false,
        waiting: true,
        fresh: false,
    }))
    .unwrap()
    .to_vec();
    future[0] = 99;
    let world = room.app_mut(a).world_mut();
    let entity = world.resource::<Peers>().entity(b_id);
    if let Some(entity) = entity {
        world.entity_mut(entity).insert(PeerLink::Handshaking);
    }
    world.resource_mut::<TransportIo>().insert_received(Packet {
        peer: b_id,
        channel: Channel::Reliable,
        bytes: Bytes::from(future),
    });
    room.app_mut(a).update();
    let rejected = messages::<PeerRejected>(&mut room, a);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        rejected[0].reason,
        RejectReason::ProtocolVersion {
            ours: PROTOCOL_VERSION,
            theirs: 99
        }
    );
}

/// Valid datagrams of every kind, as seeds for mutation.
fn seeds() -> Vec<(Bytes, Channel)> {
    let mut out = Vec::new();
    let hello = Message::Hello(Hello {
        crate_version: "0.1.0".into(),
        replica: 2,
        key: [0; 32],
        session: [0; 32],
        nonce: [0; 16],
        proof: None,
        schema_hash: 1,
        schema: vec!["a:durable".into(), "b:transient".into()],
        heard: true,
        waiting: false,
        fresh: true,
    });
    out.push((wire::encode(&hello).unwrap(), Channel::Reliable));
    out.push((
        wire::encode(&Message::Payload(Bytes::from_static(b"abc"))).unwrap(),
        Channel::Unreliable,
    ));
    out.push((
        wire::encode(&Message::Ping(5)).unwrap(),
        Channel::Unreliable,
    ));
    out.push((
        wire::encode(&Message::Pong(5)).unwrap(),
        Channel::Unreliable,
    ));
    out.push((
        wire::encode(&Message::Doc(Bytes::from_static(&[0, 0, 1, 0]))).unwrap(),
        Channel::Reliable,
    ));
    let big = wire::encode(&Message::Payload(Bytes::from(vec![7u8; 40_000]))).unwrap();
    for piece in wire::fragment(big, 3).unwrap() {
        out.push((piece, Channel::Reliable));
    }
    out
}

fn mutate(rng: &mut ChaCha8Rng, seed: &Bytes) -> Bytes {
    let mut bytes = seed.to_vec();
    match rng.random_range(0..6) {
        0 => {
            let n = rng.random_range(0..=bytes.len());
            bytes.truncate(n);
        }
        1 => {
            for _ in 0..rng.random_range(1..4) {
                if !bytes.is_empty() {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
            }
        }
        2 => {
            let extra = rng.random_range(1..64);
            bytes.extend((0..extra).map(|_| rng.random::<u8>()));
        }
        3 => {
            // Keep the header, randomise the body.
            let len = rng.random_range(0..200);
            bytes.truncate(2.min(bytes.len()));
            bytes.extend((0..len).map(|_| rng.random::<u8>()));
        }
        4 => {
            if bytes.len() > 1 {
                bytes[1] = rng.random();
            }
        }
        _ => {
            let len = rng.random_range(0..300);
            bytes = (0..len).map(|_| rng.random::<u8>()).collect();
        }
    }
    Bytes::from(bytes)
}

#[test]
fn decoding_never_panics_on_random_and_mutated_input() {
    let mut rng = ChaCha8Rng::seed_from_u64(0xBAD);
    let seeds = seeds();
    let mut errors = 0;
    let mut reassembler = wire::Reassembler::default();
    let limits = wire::WireLimits::default();
    for _ in 0..20_000 {
        let (seed, channel) = &seeds[rng.random_range(0..seeds.len())];
        let input = mutate(&mut rng, seed);
        for channel in [*channel, Channel::Reliable, Channel::Unreliable] {
            match wire::decode(&input, channel) {
                Ok(Frame::Fragment(f)) => match reassembler.push(f, &limits) {
                    Ok(Some(whole)) => {
                        let _ = wire::decode_reassembled(&whole);
                    }
                    Ok(None) => {}
                    Err(_) => errors += 1,
                },
                Ok(Frame::Message(_)) => {}
                Err(_) => errors += 1,
            }
        }
    }
    assert!(
        errors > 10_000,
        "mutations should mostly be refused, got {errors}"
    );
}

#[test]
fn hostile_datagrams_are_dropped_counted_and_harmless() {
    let mut room = TestRoom::new(5);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(5, TestRoom::fully_connected));
    let b_id = room.peer_id(b).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(0xF00D);
    let seeds = seeds();
    let mut injected = 0;
    for _ in 0..50 {
        let mut io = room.app_mut(a).world_mut().resource_mut::<TransportIo>();
        for _ in 0..100 {
            let (seed, channel) = &seeds[rng.random_range(0..seeds.len())];
            let channel = if rng.random::<bool>() {
                *channel
            } else {
                Channel::Unreliable
            };
            io.insert_received(Packet {
                peer: b_id,
                channel,
                bytes: mutate(&mut rng, seed),
            });
            injected += 1;
        }
        room.step();
    }
    room.received_payloads(a);
    let entity = room
        .app(a)
        .world()
        .resource::<Peers>()
        .entity(b_id)
        .unwrap();
    let stats = room
        .app(a)
        .world()
        .get::<PeerStats>(entity)
        .unwrap()
        .clone();
    assert!(
        stats.dropped_total() > injected / 2,
        "dropped {} of {injected}",
        stats.dropped_total()
    );
    assert!(stats.dropped(DropReason::Malformed) > 0);
    assert!(stats.dropped(DropReason::UnknownKind) > 0);

    // The link still works both ways.
    assert_eq!(room.connected_count(a), 1);
    send(&mut room, b, Recipients::All, Channel::Reliable, vec![42]);
    send(&mut room, a, Recipients::All, Channel::Reliable, vec![43]);
    room.step_n(2);
    let got: Vec<_> = room
        .received_payloads(a)
        .into_iter()
        .filter(|p| p.payload[..] == [42])
        .collect();
    assert_eq!(got.len(), 1);
    assert_eq!(
        room.received_payloads(b)
            .iter()
            .filter(|p| p.payload[..] == [43])
            .count(),
        1
    );
}

#[test]
fn round_trip_time_is_measured() {
    let mut room = TestRoom::new(6);
    room.network.set_default_conditioner(LinkConditioner {
        latency: Duration::from_millis(50),
        ..Default::default()
    });
    let a = room.add_peer(|_| {});
    room.add_peer(|_| {});
    room.step_n(90);
    let world = room.app_mut(a).world_mut();
    let rtt = world
        .query::<&PeerStats>()
        .single(world)
        .unwrap()
        .rtt
        .unwrap();
    // 50 ms each way, quantised to 60 Hz frames.
    assert!(
        rtt >= Duration::from_millis(100) && rtt <= Duration::from_millis(140),
        "{rtt:?}"
    );
}

/// What a game system in `PostUpdate` before [`PeerSyncSystems::Collect`] writes, a
/// game system in `PreUpdate` after [`PeerSyncSystems::Apply`] on another peer sees in
/// the same step (the plugin's own systems run inside those sets).
#[test]
fn game_systems_ordered_around_the_sets_see_the_same_frame() {
    #[derive(Resource, Default)]
    struct Seen(Option<u32>);
    #[derive(Resource, Default)]
    struct Frame(u32);

    fn write_on_frame_5(mut frame: ResMut<Frame>, doc: Res<SharedDoc>) {
        frame.0 += 1;
        if frame.0 == 5 {
            doc.text("t").insert(&mut doc.transact_mut(), 0, "hi");
        }
    }
    fn see(mut frame: ResMut<Frame>, doc: Res<SharedDoc>, mut seen: ResMut<Seen>) {
        frame.0 += 1;
        if seen.0.is_none() && doc.text_string("t") == "hi" {
            seen.0 = Some(frame.0);
        }
    }

    let mut room = TestRoom::new(21);
    room.add_peer(|app| {
        app.init_resource::<Frame>().add_systems(
            PostUpdate,
            write_on_frame_5.before(PeerSyncSystems::Collect),
        );
    });
    let b = room.add_peer(|app| {
        app.init_resource::<Frame>()
            .init_resource::<Seen>()
            .add_systems(PreUpdate, see.after(PeerSyncSystems::Apply));
    });
    assert!(room.step_until(4, TestRoom::fully_connected));
    room.step_n(6);
    // Peer 0 updates before peer 1 in a step, and the memory network has no delay.
    assert_eq!(room.app(b).world().resource::<Seen>().0, Some(5));
}

/// A flood of hellos asking for an answer is not answered hello for hello: a peer
/// cannot make us send its traffic back (our hello, schema included, is the larger).
#[test]
fn a_flood_of_hellos_is_answered_once() {
    let mut room = TestRoom::new(6);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(10, TestRoom::fully_connected));
    room.step_n(30);
    let reliable_in = |room: &mut TestRoom| {
        let world = room.app_mut(b).world_mut();
        let mut stats = world.query::<&PeerStats>();
        stats
            .single(world)
            .unwrap()
            .channel(Channel::Reliable)
            .packets_in
    };
    let before = reliable_in(&mut room);
    let b_id = room.peer_id(b).unwrap();
    let a_id = room.peer_id(a).unwrap();
    let hello = bevy_peer_sync::internals::hello_to(room.app(b).world(), a_id, true, true)
        .expect("b has a link to a");
    let hello = wire::encode(&Message::Hello(hello)).unwrap();
    for _ in 0..100 {
        room.app_mut(a)
            .world_mut()
            .resource_mut::<TransportIo>()
            .insert_received(Packet {
                peer: b_id,
                channel: Channel::Reliable,
                bytes: hello.clone(),
            });
    }
    room.step_n(3);
    let answers = reliable_in(&mut room) - before;
    assert!(answers <= 1, "{answers} hellos came back");
    assert_eq!(room.connected_count(a), 1);
}
