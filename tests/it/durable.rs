//! The durable route over the in-memory transport: lifecycle, fields, ownership,
//! forged writes, late joiners, and a seeded convergence run.

use std::collections::BTreeMap;
use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::durable::{EntityDoc, EntityDocConfig, OwnerLeftPolicy};
use bevy_peer_sync::entity::NetEntities;
use bevy_peer_sync::net::transport::memory::LinkConditioner;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::{Any, Map, Out, ReadTxn, Text, Transact};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Card {
    x: i64,
    y: i64,
    label: String,
}

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Score(u32);

fn setup(app: &mut App) {
    app.sync_component::<Card>(Route::Durable)
        .sync_component::<Score>(Route::Durable);
}

fn orphan_setup(app: &mut App) {
    setup(app);
    app.insert_resource(EntityDocConfig {
        owner_left: OwnerLeftPolicy::Orphan,
        hold_timeout: Duration::from_secs(2),
        ..Default::default()
    });
}

type State = BTreeMap<NetId, (Option<ReplicaId>, Option<Card>, Option<Score>)>;

fn state(room: &mut TestRoom, peer: usize) -> State {
    let world = room.app_mut(peer).world_mut();
    world
        .query::<(&NetId, &Owner, Option<&Card>, Option<&Score>)>()
        .iter(world)
        .map(|(id, owner, card, score)| (*id, (owner.0, card.cloned(), score.cloned())))
        .collect()
}

fn spawn(room: &mut TestRoom, peer: usize, card: Card) -> Entity {
    room.app_mut(peer)
        .world_mut()
        .spawn((Replicated, card))
        .id()
}

fn card(x: i64, label: &str) -> Card {
    Card {
        x,
        y: 0,
        label: label.into(),
    }
}

fn replica(room: &TestRoom, peer: usize) -> ReplicaId {
    room.app(peer).world().resource::<LocalPeer>().replica()
}

#[test]
fn spawn_edit_and_despawn_reach_every_peer() {
    let mut room = TestRoom::new(21);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = spawn(&mut room, 0, card(1, "first"));
    room.app_mut(0)
        .world_mut()
        .entity_mut(entity)
        .insert(Score(7));
    room.step_n(3);
    let expected = state(&mut room, 0);
    assert_eq!(expected.len(), 1);
    let (owner, card_value, score) = expected.values().next().unwrap().clone();
    assert_eq!(owner, Some(replica(&room, 0)));
    assert_eq!(card_value, Some(card(1, "first")));
    assert_eq!(score, Some(Score(7)));
    for peer in [1, 2] {
        assert_eq!(state(&mut room, peer), expected, "peer {peer} after spawn");
    }

    room.app_mut(0)
        .world_mut()
        .get_mut::<Card>(entity)
        .unwrap()
        .y = 5;
    room.app_mut(0)
        .world_mut()
        .entity_mut(entity)
        .remove::<Score>();
    room.step_n(3);
    let expected = state(&mut room, 0);
    for peer in [1, 2] {
        assert_eq!(state(&mut room, peer), expected, "peer {peer} after edit");
    }
    assert_eq!(expected.values().next().unwrap().1.as_ref().unwrap().y, 5);
    assert!(expected.values().next().unwrap().2.is_none());

    room.app_mut(0).world_mut().entity_mut(entity).despawn();
    room.step_n(3);
    for peer in 0..3 {
        assert!(
            state(&mut room, peer).is_empty(),
            "peer {peer} after despawn"
        );
    }
}

#[test]
fn simultaneous_spawns_never_collide() {
    let mut room = TestRoom::new(22);
    for _ in 0..4 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    for peer in 0..4 {
        for n in 0..25 {
            spawn(&mut room, peer, card(n, "same frame"));
        }
    }
    room.step_n(4);
    let expected = state(&mut room, 0);
    assert_eq!(expected.len(), 100);
    for peer in 1..4 {
        assert_eq!(state(&mut room, peer), expected);
    }
}

#[test]
fn ownership_hands_over_and_only_the_owner_writes() {
    let mut room = TestRoom::new(23);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = spawn(&mut room, 0, card(1, "a's"));
    room.step_n(3);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    let on_b = room
        .app(1)
        .world()
        .resource::<NetEntities>()
        .entity(id)
        .unwrap();

    // B edits an entity it does not own: nothing leaves B, nothing changes elsewhere.
    room.app_mut(1).world_mut().get_mut::<Card>(on_b).unwrap().x = 99;
    room.step_n(3);
    assert_eq!(room.app(0).world().get::<Card>(entity).unwrap().x, 1);

    let b = replica(&room, 1);
    room.app_mut(0)
        .world_mut()
        .write_message(TransferOwnership { entity, to: b });
    room.step_n(3);
    for peer in 0..3 {
        let st = state(&mut room, peer);
        assert_eq!(st[&id].0, Some(b), "peer {peer} sees b as owner");
    }
    room.app_mut(1).world_mut().get_mut::<Card>(on_b).unwrap().x = 42;
    room.step_n(3);
    let expected = state(&mut room, 1);
    assert_eq!(expected[&id].1.as_ref().unwrap().x, 42);
    for peer in [0, 2] {
        assert_eq!(state(&mut room, peer), expected, "peer {peer}");
    }
}

#[test]
fn forged_writes_to_an_entity_the_sender_does_not_own_are_refused_whole() {
    let mut room = TestRoom::new(24);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = spawn(&mut room, 0, card(1, "a's"));
    room.step_n(3);
    let id = room
        .app(0)
        .world()
        .get::<NetId>(entity)
        .unwrap()
        .to_string();
    let before_a = state(&mut room, 0);
    let sv_a = room.app(0).world().resource::<EntityDoc>().state_vector();

    // Peer 1 bypasses the API and writes peer 0's entity straight into its document,
    // plus a spawn of its own in the same update.
    {
        let doc = room.app(1).world().resource::<EntityDoc>();
        let root = doc.doc().get_or_insert_map("entities");
        let mut txn = bevy_peer_sync::internals::entity_doc_transact_mut(doc);
        let Some(Out::YMap(target)) = root.get(&txn, &id) else {
            panic!("entity is in the document")
        };
        target.insert(&mut txn, "owner", replica(&room, 1).to_string());
        let Some(Out::YMap(components)) = target.get(&txn, "components") else {
            panic!("components map")
        };
        let Some(Out::YMap(card_map)) = components.get(&txn, "Card") else {
            panic!("card map")
        };
        card_map.insert(&mut txn, "x", Any::from(666_i64));
    }
    // Held for the timeout (2 s default is 3 s), then refused.
    room.step_n(200);
    for peer in [0, 2] {
        assert_eq!(state(&mut room, peer), before_a, "peer {peer} unchanged");
        let doc = room.app(peer).world().resource::<EntityDoc>();
        assert_eq!(doc.refused, 1, "peer {peer} refused one update");
        let sv = doc.state_vector();
        assert_eq!(
            sv.get(&bevy_peer_sync::yrs::block::ClientID::new(
                replica(&room, 1).0
            )),
            0,
            "peer {peer}: nothing of the forger applied"
        );
    }
    assert_eq!(
        room.app(0).world().resource::<EntityDoc>().state_vector(),
        sv_a
    );
    let world = room.app_mut(0).world_mut();
    let dropped: u64 = world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.dropped(DropReason::NotOwner))
        .sum();
    assert_eq!(dropped, 1);
}

#[test]
fn a_late_joiner_receives_a_thousand_entities_and_a_b4_sized_text() {
    let mut room = TestRoom::new(25);
    let a = room.add_peer(setup);
    room.step_n(2);
    for n in 0..1_000 {
        spawn(&mut room, a, card(n, "item"));
    }
    let text: String = (0..260_000)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("paper").insert(&mut doc.transact_mut(), 0, &text);
    }
    room.step_n(2);
    let b = room.add_peer(setup);
    assert!(room.step_until(30, |room| state(room, b).len() == 1_000));
    assert_eq!(state(&mut room, b), state(&mut room, a));
    assert_eq!(
        room.app(b)
            .world()
            .resource::<SharedDoc>()
            .text_string("paper"),
        text
    );
}

/// A fresh joiner is sent the room's whole state by one peer, not by every peer in
/// the room: it says it is fresh to one, and asks the others (y-sync step 1) once that
/// state is in, when their answers hold only what it lacked.
#[test]
fn a_fresh_joiner_is_sent_the_room_once() {
    let mut room = TestRoom::new(31);
    let a = room.add_peer(setup);
    room.step_n(2);
    for n in 0..300 {
        spawn(&mut room, a, card(n, "a card with a label"));
    }
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        let text = "some shared text ".repeat(2_000);
        doc.text("paper").insert(&mut doc.transact_mut(), 0, &text);
    }
    room.step_n(2);
    let b = room.add_peer(setup);
    assert!(room.step_until(20, |room| state(room, b).len() == 300));
    // a and b part, and b writes something a has not seen, which c must get from b
    // whichever of them it asks for everything.
    let (pa, pb) = (room.peer_id(a).unwrap(), room.peer_id(b).unwrap());
    room.network.set_link_up(pa, pb, false);
    room.step_n(2);
    {
        let doc = room.app(b).world().resource::<SharedDoc>();
        doc.text("b's own")
            .insert(&mut doc.transact_mut(), 0, "from b");
    }
    room.step_n(2);
    let state_bytes = {
        let world = room.app(a).world();
        world.resource::<SharedDoc>().encode_state().len()
            + world.resource::<EntityDoc>().encode_state().len()
    } as u64;

    let c = room.add_peer(setup);
    assert!(room.step_until(30, |room| {
        state(room, c).len() == 300
            && room
                .app(c)
                .world()
                .resource::<SharedDoc>()
                .text_string("b's own")
                == "from b"
    }));
    assert_eq!(state(&mut room, c), state(&mut room, a));
    let world = room.app_mut(c).world_mut();
    let received: u64 = world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.channel(Channel::Reliable).bytes_in)
        .sum();
    assert!(
        received < state_bytes * 5 / 4,
        "{received} bytes received for a state of {state_bytes}"
    );
}

fn doc_state_vector(room: &TestRoom, peer: usize) -> Vec<(u64, u32)> {
    let sv = room
        .app(peer)
        .world()
        .resource::<EntityDoc>()
        .state_vector();
    let mut entries: Vec<(u64, u32)> = sv.iter().map(|(c, k)| (c.get(), *k)).collect();
    entries.sort();
    entries
}

/// N peers, seeded random spawns, despawns, field edits, hand-overs and claims, over
/// a lossy, reordering link, with a partition that heals and a peer that leaves and
/// comes back. Every peer must end with the same world and the same document.
fn convergence_run(seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let peers = rng.random_range(3..=5);
    let mut room = TestRoom::new(seed);
    room.network.set_default_conditioner(LinkConditioner {
        loss: 0.15,
        latency: Duration::from_millis(rng.random_range(5..60)),
        jitter: Duration::from_millis(20),
        reorder: 0.2,
        duplicate: 0.1,
    });
    // Odd seeds send catch-up in pieces of a few blocks each (pieces from several
    // clients, some needing blocks of a later piece), even seeds whole.
    let piece_size = if seed % 2 == 1 { 64 } else { usize::MAX };
    for _ in 0..peers {
        let peer = room.add_peer(orphan_setup);
        let world = room.app_mut(peer).world_mut();
        world.resource_mut::<EntityDoc>().set_piece_size(piece_size);
        world.resource_mut::<SharedDoc>().set_piece_size(piece_size);
    }
    assert!(
        room.step_until(120, TestRoom::fully_connected),
        "seed {seed}: mesh did not form"
    );
    let isolated = rng.random_range(0..peers);
    let leaver = (isolated + 1) % peers;
    for frame in 0..360 {
        match frame {
            60 => room
                .network
                .set_isolated(room.peer_id(isolated).unwrap(), true),
            150 => room
                .network
                .set_isolated(room.peer_id(isolated).unwrap(), false),
            200 => room.disconnect(leaver),
            260 => room.reconnect(leaver),
            _ => {}
        }
        for peer in 0..peers {
            if !rng.random_bool(0.3) {
                continue;
            }
            let me = replica(&room, peer);
            let world = room.app_mut(peer).world_mut();
            let owned: Vec<(Entity, Option<ReplicaId>)> = world
                .query::<(Entity, &Owner)>()
                .iter(world)
                .map(|(e, o)| (e, o.0))
                .collect();
            let mine: Vec<Entity> = owned
                .iter()
                .filter(|(_, o)| *o == Some(me))
                .map(|(e, _)| *e)
                .collect();
            match rng.random_range(0..11) {
                0..=2 => {
                    world.spawn((Replicated, card(rng.random_range(0..100), "spawned")));
                }
                3..=6 if !mine.is_empty() => {
                    let entity = mine[rng.random_range(0..mine.len())];
                    if let Some(mut card) = world.get_mut::<Card>(entity) {
                        match rng.random_range(0..3) {
                            0 => card.x = rng.random_range(-1000..1000),
                            1 => card.y = rng.random_range(-1000..1000),
                            _ => card.label = format!("edit {frame}"),
                        }
                    }
                }
                7 if !mine.is_empty() => {
                    let entity = mine[rng.random_range(0..mine.len())];
                    world.entity_mut(entity).despawn();
                }
                8 if !mine.is_empty() => {
                    let entity = mine[rng.random_range(0..mine.len())];
                    let others: Vec<ReplicaId> = world
                        .query::<&bevy_peer_sync::net::peer::PeerReplica>()
                        .iter(world)
                        .map(|r| r.0)
                        .collect();
                    if !others.is_empty() {
                        let to = others[rng.random_range(0..others.len())];
                        world.write_message(TransferOwnership { entity, to });
                    }
                }
                9 => {
                    let present: Vec<ReplicaId> = world
                        .query::<&bevy_peer_sync::net::peer::PeerReplica>()
                        .iter(world)
                        .map(|r| r.0)
                        .collect();
                    let orphans: Vec<Entity> = owned
                        .iter()
                        .filter(|(_, o)| o.is_none_or(|o| o != me && !present.contains(&o)))
                        .map(|(e, _)| *e)
                        .collect();
                    if !orphans.is_empty() {
                        let entity = orphans[rng.random_range(0..orphans.len())];
                        world.write_message(ClaimOwnership { entity });
                    }
                }
                10 => {
                    let theirs: Vec<Entity> = owned
                        .iter()
                        .filter(|(_, o)| *o != Some(me))
                        .map(|(e, _)| *e)
                        .collect();
                    if !theirs.is_empty() {
                        let entity = theirs[rng.random_range(0..theirs.len())];
                        world.write_message(RequestOwnership { entity });
                    }
                }
                _ => {}
            }
        }
        room.step();
    }
    room.network
        .set_default_conditioner(LinkConditioner::PERFECT);
    let settled = room.step_until(600, |room| {
        let first = state(room, 0);
        let sv = doc_state_vector(room, 0);
        (1..peers).all(|p| state(room, p) == first && doc_state_vector(room, p) == sv)
    });
    if !settled {
        for p in 0..peers {
            eprintln!(
                "peer {p}: {} entities, sv {:?}",
                state(&mut room, p).len(),
                doc_state_vector(&room, p)
            );
        }
    }
    assert!(
        settled,
        "seed {seed}: peers did not converge (rerun with this seed)"
    );
}

#[test]
fn random_edits_partitions_and_rejoins_converge() {
    let base: u64 = std::env::var("PEER_SYNC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in base..base + 8 {
        convergence_run(seed);
    }
}

#[test]
fn shared_text_merges_concurrent_typing() {
    let mut room = TestRoom::new(26);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(5, TestRoom::fully_connected));
    for (peer, word) in [(a, "hello "), (b, "world")] {
        let doc = room.app(peer).world().resource::<SharedDoc>();
        doc.text("note").insert(&mut doc.transact_mut(), 0, word);
    }
    room.step_n(3);
    let on_a = room
        .app(a)
        .world()
        .resource::<SharedDoc>()
        .text_string("note");
    let on_b = room
        .app(b)
        .world()
        .resource::<SharedDoc>()
        .text_string("note");
    assert_eq!(on_a, on_b);
    assert_eq!(on_a.len(), 11);
    let doc = room.app(a).world().resource::<SharedDoc>();
    let _ = doc.doc().transact().state_vector();
}

/// An update lost on the way (here: taken out of the outbox) leaves a hole in what
/// the receiver knows of its author. The author's next update continues past the hole:
/// it waits, the receiver asks for the missing part, and both converge without a
/// reconnect.
#[test]
fn an_update_past_a_lost_one_waits_and_the_hole_is_filled_by_sync() {
    let mut room = TestRoom::new(27);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(5, TestRoom::fully_connected));
    room.step_n(2);
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.map("settings")
            .insert(&mut doc.transact_mut(), "lost", 1);
        assert!(
            bevy_peer_sync::internals::drop_local_update(doc),
            "the edit never leaves"
        );
        doc.map("settings")
            .insert(&mut doc.transact_mut(), "sent", 2);
    }
    room.step_n(2);
    let keys = |room: &TestRoom, peer: usize| {
        let doc = room.app(peer).world().resource::<SharedDoc>();
        let settings = doc.map("settings");
        let txn = doc.doc().transact();
        let mut keys: Vec<String> = settings.keys(&txn).map(str::to_owned).collect();
        keys.sort();
        keys
    };
    assert!(
        room.step_until(30, |room| keys(room, b) == ["lost", "sent"]),
        "b has {:?}",
        keys(&room, b)
    );
    let waiting = room
        .app(b)
        .world()
        .resource::<SharedDoc>()
        .waiting_updates();
    assert_eq!(waiting, 0);
    let sv = |peer: usize| {
        room.app(peer)
            .world()
            .resource::<SharedDoc>()
            .state_vector()
    };
    assert_eq!(sv(a), sv(b));
}

#[test]
fn malformed_and_oversized_document_updates_are_refused_without_harm() {
    use bevy_peer_sync::internals::wire::{self, Message};
    use bevy_peer_sync::net::transport::Packet;
    use bytes::Bytes;

    let mut room = TestRoom::new(27);
    let a = room.add_peer(setup);
    let b = room.add_peer(setup);
    assert!(room.step_until(5, TestRoom::fully_connected));
    spawn(&mut room, a, card(3, "kept"));
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("note")
            .insert(&mut doc.transact_mut(), 0, "intact");
    }
    room.step_n(3);
    let before = state(&mut room, b);
    let text_before = room
        .app(b)
        .world()
        .resource::<SharedDoc>()
        .text_string("note");

    // A real update to mutate: one more edit on a, captured but never sent.
    let valid = {
        let doc = bevy_peer_sync::yrs::Doc::new();
        let text = doc.get_or_insert_text("note");
        text.insert(&mut doc.transact_mut(), 0, "some text to corrupt");
        doc.transact()
            .encode_state_as_update_v1(&Default::default())
    };
    let a_id = room.peer_id(a).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for round in 0..40 {
        let mut io = room.app_mut(b).world_mut().resource_mut::<TransportIo>();
        for _ in 0..50 {
            let mut update = valid.clone();
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..update.len());
                update[i] = rng.random();
            }
            if rng.random_bool(0.2) {
                update.truncate(rng.random_range(0..update.len()));
            }
            // [doc id][y-sync: message type 0 (sync), step 2 / update][varint length][bytes]
            let mut body = vec![rng.random_range(0..3u8), 0, rng.random_range(0..3u8)];
            wire::write_varint(&mut body, update.len() as u64);
            body.extend_from_slice(&update);
            if round % 7 == 0 {
                body = (0..rng.random_range(0..64)).map(|_| rng.random()).collect();
            }
            io.insert_received(Packet {
                peer: a_id,
                channel: Channel::Reliable,
                bytes: wire::encode(&Message::Doc(Bytes::from(body))).unwrap(),
            });
        }
        room.step();
    }
    room.step_n(3);
    assert_eq!(state(&mut room, b), before, "entities untouched");
    // Garbage that happened to decode may add foreign text, never remove ours.
    let text_after = room
        .app(b)
        .world()
        .resource::<SharedDoc>()
        .text_string("note");
    assert!(text_after.contains(&text_before) || text_after.len() >= text_before.len());
    let world = room.app_mut(b).world_mut();
    let dropped: u64 = world
        .query::<&PeerStats>()
        .iter(world)
        .map(PeerStats::dropped_total)
        .sum();
    assert!(dropped > 100, "dropped {dropped}");

    // The link still carries real edits.
    spawn(&mut room, a, card(4, "after"));
    room.step_n(3);
    assert_eq!(state(&mut room, b).len(), 2);
}

#[test]
fn offline_owner_and_claimer_edit_different_fields_and_both_survive() {
    let mut room = TestRoom::new(28);
    for _ in 0..3 {
        room.add_peer(orphan_setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = spawn(&mut room, 0, card(1, "shared"));
    room.step_n(3);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();

    // Peer 0 drops off the network; the others see it leave and peer 1 claims its card.
    room.network.set_isolated(room.peer_id(0).unwrap(), true);
    room.step_n(3);
    let on_1 = room
        .app(1)
        .world()
        .resource::<NetEntities>()
        .entity(id)
        .unwrap();
    room.app_mut(1)
        .world_mut()
        .write_message(ClaimOwnership { entity: on_1 });
    room.step_n(2);
    room.app_mut(1).world_mut().get_mut::<Card>(on_1).unwrap().y = 20;
    // Meanwhile the offline owner edits another field of the same component.
    room.app_mut(0)
        .world_mut()
        .get_mut::<Card>(entity)
        .unwrap()
        .x = 10;
    room.step_n(3);

    room.network.set_isolated(room.peer_id(0).unwrap(), false);
    assert!(room.step_until(60, |room| {
        let first = state(room, 0);
        (1..3).all(|p| state(room, p) == first)
    }));
    let merged = state(&mut room, 2);
    let (owner, card_value, _) = &merged[&id];
    assert_eq!(*owner, Some(replica(&room, 1)), "the claim stands");
    let card_value = card_value.as_ref().unwrap();
    assert_eq!(
        (card_value.x, card_value.y),
        (10, 20),
        "both fields survive"
    );
}

#[test]
fn ownership_is_requested_and_granted() {
    let mut room = TestRoom::new(29);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = spawn(&mut room, 0, card(1, "wanted"));
    room.step_n(3);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    let on_2 = room
        .app(2)
        .world()
        .resource::<NetEntities>()
        .entity(id)
        .unwrap();
    room.app_mut(2)
        .world_mut()
        .write_message(RequestOwnership { entity: on_2 });
    room.step_n(6);
    let c = replica(&room, 2);
    for peer in 0..3 {
        assert_eq!(
            state(&mut room, peer)[&id].0,
            Some(c),
            "peer {peer} sees the grant"
        );
    }
    room.app_mut(2)
        .world_mut()
        .get_mut::<Card>(on_2)
        .unwrap()
        .label = "mine now".into();
    room.step_n(3);
    assert_eq!(
        room.app(0).world().get::<Card>(entity).unwrap().label,
        "mine now"
    );
}

/// With the default [`OwnerLeftPolicy::Despawn`], an owner's entities vanish while it
/// is away and come back with it: on a peer that saw them, and on one that joined
/// while the owner was away (it learns of them, hidden, from the catch-up).
#[test]
fn an_away_owners_entities_vanish_and_come_back_with_it() {
    let mut room = TestRoom::new(26);
    let owner = room.add_peer(setup);
    let watcher = room.add_peer(setup);
    assert!(room.step_until(10, TestRoom::fully_connected));
    for n in 0..3 {
        spawn(&mut room, owner, card(n, "kept"));
    }
    spawn(&mut room, watcher, card(9, "watcher's"));
    assert!(room.step_until(10, |room| {
        state(room, watcher).len() == 4 && state(room, owner).len() == 4
    }));
    let everything = state(&mut room, owner);

    room.disconnect(owner);
    assert!(room.step_until(10, |room| state(room, watcher).len() == 1));
    let late = room.add_peer(setup);
    assert!(room.step_until(20, |room| state(room, late).len() == 1));
    assert_eq!(state(&mut room, late), state(&mut room, watcher));

    room.reconnect(owner);
    assert!(room.step_until(20, |room| {
        state(room, watcher).len() == 4 && state(room, late).len() == 4
    }));
    assert_eq!(state(&mut room, watcher), everything);
    assert_eq!(state(&mut room, late), everything);
}
