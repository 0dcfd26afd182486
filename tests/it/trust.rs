//! Verified rooms (#15): strangers kept out by the room's secret, identities proved
//! by keys. Before, a hello's replica id was taken on its word: a peer claiming
//! another's replica was refused only by that peer, everyone else took it for the
//! real one; and anyone who knew the room's URL could join.

use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::internals::hello_to;
use bevy_peer_sync::internals::wire::{self, Message};
use bevy_peer_sync::net::identity::SecretMismatch;
use bevy_peer_sync::net::transport::Packet;
use bevy_peer_sync::net::transport::memory::LinkConditioner;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::{PeerOptions, TestRoom};
use bevy_peer_sync::yrs::{Text, Transact};

use crate::support::{drops, inject};

/// Steps `frames` frames; what each peer refused meanwhile.
fn steps(room: &mut TestRoom, frames: usize) -> Vec<Vec<RejectReason>> {
    let mut out = vec![Vec::new(); room.len()];
    for _ in 0..frames {
        room.step();
        for (peer, reasons) in out.iter_mut().enumerate() {
            let mut messages = room
                .app_mut(peer)
                .world_mut()
                .resource_mut::<Messages<PeerRejected>>();
            reasons.extend(messages.drain().map(|r| r.reason));
        }
    }
    out
}

fn replicas_connected(room: &mut TestRoom, peer: usize) -> Vec<ReplicaId> {
    let world = room.app_mut(peer).world_mut();
    let mut query = world.query::<&bevy_peer_sync::net::peer::PeerReplica>();
    query.iter(world).map(|r| r.0).collect()
}

/// Peers with the room's secret meet; one with another secret, or none, is refused
/// by each, and each side says why.
#[test]
fn a_room_secret_keeps_strangers_out() {
    let mut room = TestRoom::new(120);
    let secret = |s: &str| PeerOptions {
        room_secret: Some(RoomSecret::new(s)),
        ..PeerOptions::default()
    };
    let a = room.add_peer_with(secret("k7Qm-2xPa-9dLr"), |_| {});
    let b = room.add_peer_with(secret("k7Qm-2xPa-9dLr"), |_| {});
    let stranger = room.add_peer_with(secret("guess"), |_| {});
    let open = room.add_peer(|_| {});
    let mut rejected = steps(&mut room, 20);
    assert_eq!(room.connected_count(a), 1);
    assert_eq!(room.connected_count(b), 1);
    assert_eq!(room.connected_count(stranger), 0);
    // The open one and the stranger have no secret in common either.
    assert_eq!(room.connected_count(open), 0);
    let differs = RejectReason::RoomSecret(SecretMismatch::Differs);
    for peer in [a, b] {
        let reasons = &rejected[peer];
        assert!(reasons.contains(&differs), "{reasons:?}");
        assert!(
            reasons.contains(&RejectReason::RoomSecret(SecretMismatch::TheyHaveNone)),
            "{reasons:?}"
        );
    }
    let reasons = &rejected[stranger];
    assert_eq!(reasons.iter().filter(|r| **r == differs).count(), 2);
    let reasons = std::mem::take(&mut rejected[open]);
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == RejectReason::RoomSecret(SecretMismatch::WeHaveNone))
            .count(),
        3,
        "{reasons:?}"
    );
    // Nothing of theirs got in: their documents stay apart.
    {
        let doc = room.app(stranger).world().resource::<SharedDoc>();
        doc.text("note")
            .insert(&mut doc.transact_mut(), 0, "graffiti");
    }
    room.step_n(5);
    assert_eq!(
        room.app(a)
            .world()
            .resource::<SharedDoc>()
            .text_string("note"),
        ""
    );
}

/// A room of `a`, the victim `v` and the impostor `m`, whose own datagrams to `a`
/// never arrive (what reaches `a` from it is injected), once `m` has `a`'s hello.
fn impostor_room(seed: u64) -> (TestRoom, usize, usize, usize) {
    let mut room = TestRoom::new(seed);
    let a = room.add_peer(|_| {});
    let v = room.add_peer(|_| {});
    let m = room.add_peer(|_| {});
    let (a_id, m_id) = (room.peer_id(a).unwrap(), room.peer_id(m).unwrap());
    let never = LinkConditioner {
        latency: Duration::from_secs(3_600),
        ..LinkConditioner::PERFECT
    };
    room.network.set_conditioner(m_id, a_id, never);
    room.step_n(5);
    assert_eq!(room.connected_count(a), 1, "a and v meet");
    (room, a, v, m)
}

fn inject_hello(room: &mut TestRoom, from: usize, to: usize, hello: wire::Hello) {
    let from = room.peer_id(from).unwrap();
    let bytes = wire::encode(&Message::Hello(hello)).unwrap();
    room.app_mut(to)
        .world_mut()
        .resource_mut::<TransportIo>()
        .insert_received(Packet {
            peer: from,
            channel: Channel::Reliable,
            bytes,
        });
}

/// A peer claiming another's replica is refused by everyone, not only by the victim:
/// with its own key (the replica is not that key's), with the victim's key (its
/// signatures do not check), or replaying the victim's own proof from another link
/// (made for that link's nonces).
#[test]
fn an_impostor_is_refused_however_it_claims() {
    for claim in 0..3 {
        let (mut room, a, v, m) = impostor_room(121 + claim);
        let a_id = room.peer_id(a).unwrap();
        let victim = room.app(v).world().resource::<LocalPeer>().replica();
        let victim_key = room.app(v).world().resource::<LocalPeer>().key().public();
        let mut hello = hello_to(room.app(m).world(), a_id, false, true).unwrap();
        assert!(hello.proof.is_some(), "m has a's hello");
        match claim {
            // Its own key, the victim's replica id.
            0 => hello.replica = victim.0,
            // The victim's key and replica id, its own signatures.
            1 => {
                hello.replica = victim.0;
                hello.key = victim_key;
            }
            // The victim's hello to `a`, proof and all, replayed.
            _ => hello = hello_to(room.app(v).world(), a_id, false, true).unwrap(),
        }
        inject_hello(&mut room, m, a, hello);
        let reasons = steps(&mut room, 3).swap_remove(a);
        assert!(
            matches!(reasons.as_slice(), [RejectReason::Malformed(_)]),
            "claim {claim}: {reasons:?}"
        );
        assert_eq!(
            replicas_connected(&mut room, a),
            vec![victim],
            "claim {claim}"
        );
        assert_eq!(room.connected_count(a), 1);
    }
}

/// Two apps with one key (one save started twice, or a reconnect whose old link has
/// not closed yet): the newer link of that replica, proved over this peer's nonce for
/// it, replaces the older, which is told why; the two refuse each other. (Refusing the
/// newer one instead left a reconnecting peer out until its old link timed out.)
#[test]
fn a_newer_link_of_one_replica_replaces_the_older() {
    let mut room = TestRoom::new(124);
    let a = room.add_peer(|_| {});
    let v = room.add_peer(|_| {});
    room.step_n(5);
    assert_eq!(room.connected_count(a), 1);
    let key = room.app(v).world().resource::<LocalPeer>().key().clone();
    let replica = key.replica();
    let twin = room.add_peer_with(
        PeerOptions {
            key: Some(key),
            ..PeerOptions::default()
        },
        |_| {},
    );
    let rejected = steps(&mut room, 10);
    assert_eq!(rejected[a], vec![RejectReason::ReplicaConnected(replica)]);
    assert_eq!(replicas_connected(&mut room, a), vec![replica]);
    assert_eq!(room.connected_count(a), 1);
    let twin_id = room.peer_id(twin).unwrap();
    {
        let world = room.app_mut(a).world_mut();
        let mut query = world.query::<(&Peer, &PeerLink)>();
        let connected: Vec<_> = query
            .iter(world)
            .filter(|(_, link)| **link == PeerLink::Connected)
            .map(|(peer, _)| peer.id)
            .collect();
        assert_eq!(connected, vec![twin_id], "the newer link");
    }
    assert!(rejected[twin].contains(&RejectReason::SameReplica(replica)));
    assert!(rejected[v].contains(&RejectReason::SameReplica(replica)));
    assert!(
        rejected[v]
            .iter()
            .any(|r| matches!(r, RejectReason::RefusedByPeer(why) if why.contains("newer link"))),
        "{:?}",
        rejected[v]
    );
}

/// A third peer passes two peers' hellos between its own links to them, to sit in the
/// middle (it needs no secret: it only relays what they sign). The proof names the
/// ids of both ends in the room, and the relayed one came on the relay's link: refused.
#[test]
fn a_proof_relayed_from_another_link_is_refused() {
    let mut room = TestRoom::new(129);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    let m = room.add_peer(|_| {});
    let (a_id, b_id, m_id) = (
        room.peer_id(a).unwrap(),
        room.peer_id(b).unwrap(),
        room.peer_id(m).unwrap(),
    );
    // m's own datagrams never arrive: a and b hear only what m relays.
    let never = LinkConditioner {
        latency: Duration::from_secs(3_600),
        ..LinkConditioner::PERFECT
    };
    room.network.set_conditioner(m_id, a_id, never);
    room.network.set_conditioner(m_id, b_id, never);
    room.step_n(5);
    assert_eq!(room.connected_count(a), 1, "a and b meet directly");
    // a's hello on its link to m, relayed to b as m's.
    let from_a = hello_to(room.app(a).world(), m_id, false, true).unwrap();
    inject_hello(&mut room, m, b, from_a);
    room.step();
    // b's answer on its link to m (its proof for what it took for m's side), relayed
    // to a as m's.
    let from_b = hello_to(room.app(b).world(), m_id, false, true).unwrap();
    assert!(
        from_b.proof.is_some(),
        "b answered the relayed hello with a proof"
    );
    inject_hello(&mut room, m, a, from_b);
    let reasons = steps(&mut room, 3).swap_remove(a);
    assert!(
        matches!(reasons.as_slice(), [RejectReason::Malformed(_)]),
        "{reasons:?}"
    );
    // a's only link to b's replica is the direct one.
    let b_replica = room.app(b).world().resource::<LocalPeer>().replica();
    assert_eq!(replicas_connected(&mut room, a), vec![b_replica]);
}

/// A hello that changes its keys or nonce on a link is dropped and counted; the
/// first stands.
#[test]
fn a_hello_changing_its_keys_on_a_link_is_dropped() {
    let mut room = TestRoom::new(125);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    room.step_n(5);
    let a_id = room.peer_id(a).unwrap();
    let mut hello = hello_to(room.app(b).world(), a_id, true, false).unwrap();
    hello.nonce[0] ^= 1;
    let before = drops(&mut room, a, DropReason::Malformed);
    inject_hello(&mut room, b, a, hello);
    room.step();
    assert_eq!(drops(&mut room, a, DropReason::Malformed), before + 1);
    assert_eq!(room.connected_count(a), 1);
}

/// A live update may carry only its sender's own blocks. Before, a 15-byte update
/// with one collected block over another client's next clocks passed every check and
/// made receivers ignore that client's next edits (and after a rejoin the loss spread
/// room-wide); now it is refused and counted, and the author's edits go on arriving.
#[test]
fn a_live_update_with_another_authors_blocks_is_refused() {
    use bevy_peer_sync::internals::writes_as;
    use bevy_peer_sync::testing::hostile::{doc_body, varint};

    let mut room = TestRoom::new(126);
    let a = room.add_peer(|_| {});
    let v = room.add_peer(|_| {});
    let m = room.add_peer(|_| {});
    assert!(room.step_until(10, TestRoom::fully_connected));
    let note = |room: &TestRoom, peer: usize| {
        room.app(peer)
            .world()
            .resource::<SharedDoc>()
            .text_string("note")
    };
    let write = |room: &mut TestRoom, text: &str| {
        let doc = room.app(v).world().resource::<SharedDoc>();
        let note = doc.text("note");
        let len = note.len(&doc.doc().transact());
        note.insert(&mut doc.transact_mut(), len, text);
    };
    write(&mut room, "first ");
    room.step_n(3);
    assert_eq!(note(&room, a), "first ");
    // m: a collected block of v's client over its next 1,000 clocks.
    let victim = writes_as(room.app(v).world(), 0);
    let mut update = vec![1, 1];
    varint(&mut update, victim);
    varint(&mut update, "first ".len() as u64);
    update.push(0);
    varint(&mut update, 1_000);
    update.push(0);
    assert!(update.len() <= 15, "{}", update.len());
    inject(&mut room, m, a, doc_body(0, 2, &update));
    room.step();
    assert_eq!(drops(&mut room, a, DropReason::NotOwner), 1);
    write(&mut room, "second");
    room.step_n(3);
    assert_eq!(note(&room, a), "first second");
}

/// The entity document has one root the crate defines, `entities`: an update that
/// writes in another (1 MiB here, live from the sender's own client or relayed as
/// catch-up) is refused and counted. Before, it was kept, saved and sent to every
/// late joiner, though nothing reads it.
#[test]
fn an_entity_update_writing_another_root_is_refused() {
    use bevy_peer_sync::internals::{entity_doc_transact_mut, writes_as};
    use bevy_peer_sync::testing::hostile::{doc_body, varint};
    use bevy_peer_sync::yrs::ReadTxn;

    #[derive(Component, serde::Serialize, serde::Deserialize, Clone, PartialEq)]
    struct Score(u32);
    let with_score = |app: &mut App| {
        app.sync_component::<Score>(Route::Durable);
    };
    let mut room = TestRoom::new(127);
    let a = room.add_peer(with_score);
    let m = room.add_peer(with_score);
    assert!(room.step_until(10, TestRoom::fully_connected));
    room.step_n(3);
    let junk = |client: u64| {
        let mut update = vec![1, 1];
        varint(&mut update, client);
        update.extend([0, 0b0010_0000 | 4, 1]);
        varint(&mut update, 4);
        update.extend(b"junk");
        update.extend([1, b'k']);
        varint(&mut update, 1 << 20);
        update.extend(std::iter::repeat_n(b'x', 1 << 20));
        update.push(0);
        update
    };
    let own = writes_as(room.app(m).world(), 1);
    for (kind, client) in [(2, own), (1, 5_555)] {
        inject(&mut room, m, a, doc_body(1, kind, &junk(client)));
        room.step_n(2);
    }
    assert_eq!(drops(&mut room, a, DropReason::Unknown), 2);
    let doc = room
        .app(a)
        .world()
        .resource::<bevy_peer_sync::durable::EntityDoc>();
    let txn = entity_doc_transact_mut(doc);
    assert!(txn.get_map("junk").is_none());
    assert!(
        txn.state_vector()
            .get(&bevy_peer_sync::yrs::block::ClientID::new(5_555))
            == 0
    );
    assert!(
        txn.state_vector()
            .get(&bevy_peer_sync::yrs::block::ClientID::new(own))
            == 0
    );
    drop(txn);
    // An honest entity still goes through.
    room.app_mut(m).world_mut().spawn((Replicated, Score(7)));
    assert!(room.step_until(10, |room| {
        room.app(a).world().resource::<NetEntities>().len() == 1
    }));
}

/// A y-sync step 2 is an answer: one this peer did not ask for (here well after the
/// step 1s of the join were answered) is refused and counted. Before, a step 2 was
/// applied whenever it came, asked for or not.
#[test]
fn an_unasked_step_2_is_refused() {
    use bevy_peer_sync::doc::STEP2_WINDOW;
    use bevy_peer_sync::testing::hostile::{doc_body, varint};

    let mut room = TestRoom::new(128);
    let a = room.add_peer(|_| {});
    let m = room.add_peer(|_| {});
    assert!(room.step_until(10, TestRoom::fully_connected));
    let frames = (STEP2_WINDOW.as_secs_f64() * 60.0) as usize + 60;
    room.step_n(frames);
    // A string under root `t` of a client of its choosing.
    let mut update = vec![1, 1];
    varint(&mut update, 4_242);
    update.extend([0, 4, 1, 1, b't', 8]);
    update.extend(b"graffiti");
    update.push(0);
    inject(&mut room, m, a, doc_body(0, 1, &update));
    room.step_n(2);
    assert_eq!(drops(&mut room, a, DropReason::Unasked), 1);
    assert_eq!(
        room.app(a).world().resource::<SharedDoc>().text_string("t"),
        ""
    );
}

/// A link that never proves itself (a stranger parking links, a peer gone silent
/// mid-handshake) is refused after `HANDSHAKE_TIMEOUT`, not re-helloed for ever.
#[test]
fn a_link_that_never_proves_itself_times_out() {
    use bevy_peer_sync::net::session::HANDSHAKE_TIMEOUT;

    let mut room = TestRoom::new(130);
    let a = room.add_peer(|_| {});
    let m = room.add_peer(|_| {});
    let (a_id, m_id) = (room.peer_id(a).unwrap(), room.peer_id(m).unwrap());
    let never = LinkConditioner {
        latency: Duration::from_secs(3_600),
        ..LinkConditioner::PERFECT
    };
    room.network.set_conditioner(m_id, a_id, never);
    let frames = (HANDSHAKE_TIMEOUT.as_secs_f64() * 60.0) as usize;
    let early = steps(&mut room, frames - 60);
    assert!(early[a].is_empty(), "{:?}", early[a]);
    let late = steps(&mut room, 120);
    assert_eq!(late[a], vec![RejectReason::HandshakeTimeout]);
}
