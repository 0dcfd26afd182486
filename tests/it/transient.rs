//! The transient route over the in-memory transport: loss, reordering, duplication,
//! forged values, values racing their entity's spawn, Transform smoothing, commits.

use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;
use bevy_peer_sync::durable::{EntityDocConfig, OwnerLeftPolicy};
use bevy_peer_sync::entity::NetEntities;
use bevy_peer_sync::internals::wire::{self, Message};
use bevy_peer_sync::net::transport::Packet;
use bevy_peer_sync::net::transport::memory::LinkConditioner;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::transient::smoothing::Interpolated;

use crate::support::drops;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

#[derive(Component, Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
struct Cursor {
    step: u32,
}

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Label(String);

fn setup(app: &mut App) {
    app.sync_component::<Label>(Route::Durable)
        .sync_component::<Cursor>(Route::Transient)
        .sync_transform(TransformEncoding::Quantized {
            position_precision: 0.01,
        });
}

fn cursor_of(room: &mut TestRoom, peer: usize, id: NetId) -> Option<Cursor> {
    let entity = room
        .app(peer)
        .world()
        .resource::<NetEntities>()
        .entity(id)?;
    room.app(peer).world().get::<Cursor>(entity).copied()
}

/// The x of `id`'s `Transform` as `peer` shows it.
fn x_of(room: &TestRoom, peer: usize, id: NetId) -> f32 {
    let world = room.app(peer).world();
    let entity = world.resource::<NetEntities>().entity(id).unwrap();
    world.get::<Transform>(entity).unwrap().translation.x
}

/// Moves `entity`, owned by `peer`, to `x`.
fn set_x(room: &mut TestRoom, peer: usize, entity: Entity, x: f32) {
    let world = room.app_mut(peer).world_mut();
    world.get_mut::<Transform>(entity).unwrap().translation.x = x;
}

#[test]
fn values_stay_real_and_ordered_under_loss_and_reach_the_final_one() {
    let mut room = TestRoom::new(31);
    room.network.set_default_conditioner(LinkConditioner {
        loss: 0.3,
        latency: Duration::from_millis(30),
        jitter: Duration::from_millis(25),
        reorder: 0.2,
        duplicate: 0.1,
    });
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(120, TestRoom::fully_connected));
    let entities: Vec<Entity> = (0..20)
        .map(|_| {
            room.app_mut(0)
                .world_mut()
                .spawn((Replicated, Cursor { step: 0 }))
                .id()
        })
        .collect();
    room.step_n(60);
    let ids: Vec<NetId> = entities
        .iter()
        .map(|e| *room.app(0).world().get::<NetId>(*e).unwrap())
        .collect();
    let mut last_seen = vec![[0u32; 20]; 3];
    for step in 1..=300u32 {
        for entity in &entities {
            room.app_mut(0)
                .world_mut()
                .get_mut::<Cursor>(*entity)
                .unwrap()
                .step = step;
        }
        room.step();
        for peer in [1, 2] {
            for (n, id) in ids.iter().enumerate() {
                if let Some(cursor) = cursor_of(&mut room, peer, *id) {
                    assert!(
                        cursor.step <= step,
                        "peer {peer} has a value the owner never had"
                    );
                    assert!(
                        cursor.step >= last_seen[peer][n],
                        "peer {peer} went backwards"
                    );
                    last_seen[peer][n] = cursor.step;
                }
            }
        }
    }
    assert!(
        drops(&mut room, 1, DropReason::Stale) > 0,
        "duplicates and reorders were dropped"
    );
    room.network.set_default_conditioner(LinkConditioner {
        latency: Duration::from_millis(30),
        ..Default::default()
    });
    room.step_n(10);
    for peer in [1, 2] {
        for id in &ids {
            assert_eq!(
                cursor_of(&mut room, peer, *id),
                Some(Cursor { step: 300 }),
                "peer {peer}"
            );
        }
    }
}

/// `Cursor`'s wire index: `Label` is registered before it (see `setup`).
const CURSOR_INDEX: u8 = 1;

/// Builds a transient datagram naming entity `id` (created by `creator`) with a
/// `Cursor`.
fn forged(tick: u64, id: NetId, step: u32) -> Bytes {
    use bevy_peer_sync::internals::wire::write_varint as varint;
    let mut body = Vec::new();
    varint(&mut body, tick);
    body.extend([CURSOR_INDEX, 1]);
    varint(&mut body, (id.counter << 1) | 1);
    varint(&mut body, id.creator.0);
    let mut value = Vec::new();
    varint(&mut value, u64::from(step));
    varint(&mut body, value.len() as u64);
    body.extend(value);
    wire::encode(&Message::Transient(Bytes::from(body))).unwrap()
}

#[test]
fn forged_values_from_a_non_owner_change_nothing() {
    let mut room = TestRoom::new(32);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = room
        .app_mut(0)
        .world_mut()
        .spawn((Replicated, Cursor { step: 5 }))
        .id();
    room.step_n(4);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    assert_eq!(cursor_of(&mut room, 2, id), Some(Cursor { step: 5 }));

    // Peer 1 claims to move peer 0's cursor, straight onto peer 2's transport.
    let from = room.peer_id(1).unwrap();
    for tick in 100..110 {
        room.app_mut(2)
            .world_mut()
            .resource_mut::<TransportIo>()
            .insert_received(Packet {
                peer: from,
                channel: Channel::Unreliable,
                bytes: forged(tick, id, 99),
            });
        room.step();
    }
    assert_eq!(cursor_of(&mut room, 2, id), Some(Cursor { step: 5 }));
    assert!(drops(&mut room, 2, DropReason::NotOwner) >= 10);
    // Garbage in the same place is dropped as malformed.
    room.app_mut(2)
        .world_mut()
        .resource_mut::<TransportIo>()
        .insert_received(Packet {
            peer: from,
            channel: Channel::Unreliable,
            bytes: wire::encode(&Message::Transient(Bytes::from_static(&[1, 0, 9, 9, 9]))).unwrap(),
        });
    room.step();
    assert!(drops(&mut room, 2, DropReason::Malformed) >= 1);
}

#[test]
fn an_absurd_tick_jump_is_refused() {
    let mut room = TestRoom::new(37);
    for _ in 0..2 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = room
        .app_mut(0)
        .world_mut()
        .spawn((Replicated, Cursor { step: 5 }))
        .id();
    room.step_n(10);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    // The owner's own id, but a tick a year ahead of its clock.
    let from = room.peer_id(0).unwrap();
    room.app_mut(1)
        .world_mut()
        .resource_mut::<TransportIo>()
        .insert_received(Packet {
            peer: from,
            channel: Channel::Unreliable,
            bytes: forged(60 * 60 * 24 * 365 * 60, id, 77),
        });
    room.step();
    assert_eq!(cursor_of(&mut room, 1, id), Some(Cursor { step: 5 }));
    assert!(drops(&mut room, 1, DropReason::Stale) >= 1);
    // Real values keep flowing afterwards.
    room.app_mut(0)
        .world_mut()
        .get_mut::<Cursor>(entity)
        .unwrap()
        .step = 6;
    room.step_n(3);
    assert_eq!(cursor_of(&mut room, 1, id), Some(Cursor { step: 6 }));
}

#[test]
fn a_flood_from_one_peer_is_cut_at_its_budget() {
    let mut room = TestRoom::new(33);
    for _ in 0..2 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    let from = room.peer_id(0).unwrap();
    let id = NetId {
        creator: room.app(0).world().resource::<LocalPeer>().replica(),
        counter: 77,
    };
    {
        let mut io = room.app_mut(1).world_mut().resource_mut::<TransportIo>();
        for tick in 0..200u8 {
            io.insert_received(Packet {
                peer: from,
                channel: Channel::Unreliable,
                bytes: forged(u64::from(tick % 100), id, 1),
            });
        }
    }
    room.step();
    assert!(drops(&mut room, 1, DropReason::OverBudget) >= 100);
}

#[test]
fn values_that_outrun_their_spawn_are_held_not_lost() {
    let mut room = TestRoom::new(34);
    for _ in 0..2 {
        room.add_peer(setup);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    // The reliable channel retransmits a lot; the unreliable one gets through first.
    room.network.set_default_conditioner(LinkConditioner {
        loss: 0.6,
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    let entity = room
        .app_mut(0)
        .world_mut()
        .spawn((Replicated, Cursor { step: 1 }))
        .id();
    for step in 2..40 {
        room.app_mut(0)
            .world_mut()
            .get_mut::<Cursor>(entity)
            .unwrap()
            .step = step;
        room.step();
    }
    room.network
        .set_default_conditioner(LinkConditioner::PERFECT);
    room.step_n(10);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    assert_eq!(cursor_of(&mut room, 1, id), Some(Cursor { step: 39 }));
    assert_eq!(drops(&mut room, 1, DropReason::NotOwner), 0);
}

#[test]
fn transforms_are_smoothed_and_land_on_the_final_pose() {
    let mut room = TestRoom::new(35);
    room.network.set_default_conditioner(LinkConditioner {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(15),
        loss: 0.1,
        ..Default::default()
    });
    for _ in 0..2 {
        room.add_peer(setup);
    }
    assert!(room.step_until(60, TestRoom::fully_connected));
    let entity = room
        .app_mut(0)
        .world_mut()
        .spawn((Replicated, Transform::default()))
        .id();
    room.step_n(10);
    let id = *room.app(0).world().get::<NetId>(entity).unwrap();
    let mut previous_x = 0.0f32;
    for step in 1..=120 {
        set_x(&mut room, 0, entity, step as f32 * 0.1);
        room.step();
        let x = x_of(&room, 1, id);
        // Smoothed motion never jumps backwards by more than the quantization step.
        assert!(
            x + 0.011 >= previous_x,
            "step {step}: {x} after {previous_x}"
        );
        previous_x = x;
    }
    room.step_n(30);
    let x = x_of(&room, 1, id);
    assert!((x - 12.0).abs() < 0.006, "{x}");
}

#[test]
fn a_committed_value_outlives_its_owner() {
    let mut room = TestRoom::new(36);
    let orphan = |app: &mut App| {
        setup(app);
        app.insert_resource(EntityDocConfig {
            owner_left: OwnerLeftPolicy::Orphan,
            ..Default::default()
        });
    };
    let a = room.add_peer(orphan);
    room.add_peer(orphan);
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = room
        .app_mut(a)
        .world_mut()
        .spawn((Replicated, Label("card".into()), Cursor { step: 1 }))
        .id();
    room.step_n(3);
    room.app_mut(a)
        .world_mut()
        .get_mut::<Cursor>(entity)
        .unwrap()
        .step = 42;
    room.app_mut(a)
        .world_mut()
        .write_message(CommitTransient { entity });
    room.step_n(3);
    let id = *room.app(a).world().get::<NetId>(entity).unwrap();
    room.disconnect(a);
    room.step_n(3);
    // A newcomer learns the committed value from the document alone.
    let c = room.add_peer(orphan);
    assert!(room.step_until(20, |room| cursor_of(room, c, id).is_some()));
    assert_eq!(cursor_of(&mut room, c, id), Some(Cursor { step: 42 }));
}

/// A committed quantized position is the same on every peer, its owner included: the
/// owner takes the value as committed (before, it kept its exact `f32` while everyone
/// else held the rounded one, and the browser check once saw -77 on the owner and -76
/// on a tab for a shape dropped at -76.5).
#[test]
fn a_committed_lossy_value_is_the_same_on_its_owner() {
    let mut room = TestRoom::new(37);
    let a = room.add_peer(setup);
    let b = room.add_peer(setup);
    assert!(room.step_until(5, TestRoom::fully_connected));
    let entity = room
        .app_mut(a)
        .world_mut()
        .spawn((Replicated, Transform::default()))
        .id();
    room.step_n(3);
    let id = *room.app(a).world().get::<NetId>(entity).unwrap();
    set_x(&mut room, a, entity, -76.503_14);
    room.app_mut(a)
        .world_mut()
        .write_message(CommitTransient { entity });
    room.step_n(60);
    let (on_owner, on_peer) = (x_of(&room, a, id), x_of(&room, b, id));
    assert_eq!(on_owner, on_peer);
    assert!((on_owner + 76.5).abs() < 0.006, "{on_owner}");
}

/// Puts ten minutes on `peer`'s clock (the only app in the room yet) in ten frames,
/// so that apps added after it start far behind.
fn run_ten_minutes_alone(room: &mut TestRoom, peer: usize) {
    let every = TimeUpdateStrategy::ManualDuration;
    room.app_mut(peer)
        .insert_resource(every(Duration::from_secs(60)));
    room.step_n(10);
    room.app_mut(peer)
        .insert_resource(every(bevy_peer_sync::testing::FRAME));
}

/// Smoothing runs on the sender's clock as its datagrams state it: a receiver that
/// joined long after the sender started (the sender's clock is far ahead), or a sender
/// at another send rate, is played back in real time, a steady short way behind.
#[test]
fn late_receivers_and_other_send_rates_play_back_in_real_time() {
    for (case, sender_rate, receiver_late) in
        [("late receiver", 60.0, true), ("20 Hz sender", 20.0, false)]
    {
        let mut room = TestRoom::new(38);
        let sender = room.add_peer(|app| {
            setup(app);
            app.insert_resource(TransientConfig {
                send_rate: sender_rate,
                ..Default::default()
            });
        });
        if receiver_late {
            run_ten_minutes_alone(&mut room, sender);
        }
        let receiver = room.add_peer(setup);
        assert!(room.step_until(60, TestRoom::fully_connected), "{case}");
        let entity = room
            .app_mut(sender)
            .world_mut()
            .spawn((Replicated, Transform::default()))
            .id();
        room.step_n(10);
        let id = *room.app(sender).world().get::<NetId>(entity).unwrap();
        // 6 units a second, for 4 s; the lag is measured after 1 s and at the end.
        let mut lags = Vec::new();
        for step in 1..=240 {
            set_x(&mut room, sender, entity, step as f32 * 0.1);
            room.step();
            if step == 60 || step == 240 {
                lags.push(x_of(&room, sender, id) - x_of(&room, receiver, id));
            }
        }
        // Behind by the playback delay and a send interval or two (at 6 units/s, 0.1
        // s is 0.6), and not drifting.
        for lag in &lags {
            assert!((0.0..1.2).contains(lag), "{case}: lags {lags:?}");
        }
        assert!((lags[1] - lags[0]).abs() < 0.35, "{case}: lags {lags:?}");
    }
}

/// An entity handed to a peer whose send clock is behind the old owner's (it started
/// later) moves on every receiver at once: ticks are compared per sender, and the
/// smoothing buffer starts afresh on the new owner's clock.
#[test]
fn a_new_owner_with_a_younger_clock_is_followed_at_once() {
    let mut room = TestRoom::new(39);
    let old_owner = room.add_peer(setup);
    run_ten_minutes_alone(&mut room, old_owner);
    let new_owner = room.add_peer(setup);
    let watcher = room.add_peer(setup);
    assert!(room.step_until(60, TestRoom::fully_connected));
    let entity = room
        .app_mut(old_owner)
        .world_mut()
        .spawn((Replicated, Cursor { step: 1 }, Transform::default()))
        .id();
    room.step_n(10);
    let id = *room.app(old_owner).world().get::<NetId>(entity).unwrap();
    assert_eq!(cursor_of(&mut room, watcher, id), Some(Cursor { step: 1 }));
    let buffered = |room: &TestRoom, peer: usize| {
        let world = room.app(peer).world();
        let e = world.resource::<NetEntities>().entity(id).unwrap();
        world.get::<Interpolated<Transform>>(e).is_some()
    };
    assert!(buffered(&room, new_owner) && !buffered(&room, old_owner));

    let to = room
        .app(new_owner)
        .world()
        .resource::<LocalPeer>()
        .replica();
    room.app_mut(old_owner)
        .world_mut()
        .write_message(TransferOwnership { entity, to });
    let owned = |room: &mut TestRoom| {
        let e = room
            .app(new_owner)
            .world()
            .resource::<NetEntities>()
            .entity(id);
        e.filter(|e| room.app(new_owner).world().get::<Owner>(*e) == Some(&Owner(Some(to))))
    };
    assert!(room.step_until(20, |room| owned(room).is_some()));
    let mine = owned(&mut room).unwrap();
    for step in 2..=40u32 {
        let mut world = room.app_mut(new_owner).world_mut().entity_mut(mine);
        world.get_mut::<Cursor>().unwrap().step = step;
        world.get_mut::<Transform>().unwrap().translation.x = step as f32;
        room.step();
    }
    room.step_n(10);
    assert_eq!(cursor_of(&mut room, watcher, id), Some(Cursor { step: 40 }));
    let x = x_of(&room, watcher, id);
    assert!((x - 40.0).abs() < 0.02, "{x}");
    assert_eq!(drops(&mut room, watcher, DropReason::Stale), 0);
    // The buffer follows the owner: the new owner shows its own values as they are,
    // the old one plays the new owner's back.
    assert!(!buffered(&room, new_owner) && buffered(&room, old_owner));
}
