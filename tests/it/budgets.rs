//! Budgets per peer: a peer that floods either channel is throttled (what a frame takes
//! from it stays bounded), counted, and refused once it stays over; both sides are told
//! why, and the honest peers keep converging. Before the budgets every byte of a flood
//! was handled in the frame it arrived, and nothing ever refused the flooder.

use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::net::session::{PeerBudget, SessionConfig};
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::{FRAME, TestRoom};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::support::drops;

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Score(u32);

const RATE: u64 = 64 * 1024;

/// Small budgets, so that a flood a debug build can send shows them.
fn budget() -> PeerBudget {
    PeerBudget {
        bytes_per_sec: [RATE, RATE],
        datagrams_per_sec: [2_000, 2_000],
        burst: Duration::from_millis(500),
        reliable_bytes_per_frame: 8 * 1024,
        max_waiting_bytes: 512 * 1024,
        grace: Duration::from_secs(2),
    }
}

fn setup(app: &mut App) {
    app.sync_component::<Score>(Route::Durable);
    app.insert_resource(SessionConfig {
        budget: budget(),
        ..SessionConfig::default()
    });
}

/// Bytes of payloads `peer` got from `from` so far on `channel` (read once per frame:
/// messages live two frames).
#[derive(Resource, Default)]
struct Got {
    from: Option<PeerId>,
    bytes: [u64; 2],
}

fn count_payloads(mut got: ResMut<Got>, mut payloads: MessageReader<PayloadReceived>) {
    for payload in payloads.read() {
        if Some(payload.from) == got.from {
            got.bytes[payload.channel.index()] += payload.payload.len() as u64;
        }
    }
}

fn rejections(room: &mut TestRoom, peer: usize) -> Vec<PeerRejected> {
    let world = room.app_mut(peer).world_mut();
    let messages = world.resource::<Messages<PeerRejected>>();
    messages.iter_current_update_messages().cloned().collect()
}

/// A room of two honest peers (0, 1) and a flooder (2) that sends peer 0 `per_frame`
/// payloads of `size` bytes on `channel` every frame for `frames` frames. Returns what
/// peer 0 handled of it, the refusals both sides saw, and when.
struct Flood {
    room: TestRoom,
    got: u64,
    victim_saw: Option<(usize, RejectReason)>,
    flooder_saw: Option<RejectReason>,
    flooder_left: bool,
}

fn flood(channel: Channel, size: usize, per_frame: usize, frames: usize) -> Flood {
    let mut room = TestRoom::new(1400 + channel.index() as u64);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    assert!(room.step_until(300, |r| r.fully_connected()));
    let flooder = room.peer_id(2).unwrap();
    let victim = room.peer_id(0).unwrap();
    room.app_mut(0).insert_resource(Got {
        from: Some(flooder),
        bytes: [0; 2],
    });
    room.app_mut(0).add_systems(Last, count_payloads);
    let honest = room
        .app_mut(1)
        .world_mut()
        .spawn((Replicated, Score(0)))
        .id();
    let mut result = Flood {
        room,
        got: 0,
        victim_saw: None,
        flooder_saw: None,
        flooder_left: false,
    };
    let payload = Bytes::from(vec![7u8; size]);
    for frame in 0..frames {
        let room = &mut result.room;
        if result.flooder_saw.is_none() {
            for _ in 0..per_frame {
                room.app_mut(2).world_mut().write_message(SendPayload {
                    to: Recipients::Peer(victim),
                    channel,
                    payload: payload.clone(),
                });
            }
        }
        // The honest peers keep editing all along.
        room.app_mut(1)
            .world_mut()
            .entity_mut(honest)
            .insert(Score(frame as u32));
        room.step();
        if let Some(r) = rejections(room, 0).into_iter().find(|r| r.peer == flooder) {
            result.victim_saw.get_or_insert((frame, r.reason));
        }
        if let Some(r) = rejections(room, 2).into_iter().find(|r| r.peer == victim) {
            result.flooder_saw.get_or_insert(r.reason);
        }
        let world = room.app_mut(0).world_mut();
        let left = world.resource::<Messages<PeerLeft>>();
        result.flooder_left |= left
            .iter_current_update_messages()
            .any(|l| l.peer == flooder && l.was_connected);
    }
    result.got = result.room.app(0).world().resource::<Got>().bytes[channel.index()];
    result
}

fn score_on(room: &mut TestRoom, peer: usize) -> Option<u32> {
    let world = room.app_mut(peer).world_mut();
    world.query::<&Score>().iter(world).next().map(|s| s.0)
}

/// 32 KiB a frame on the reliable channel (about 2 MiB/s) against a budget of 64 KiB/s:
/// peer 0 takes at most its per-frame allowance from the flooder each frame and never
/// more than the rate allows, holds at most its waiting limit, and refuses the flooder
/// once the waiting limit is passed. Before the budgets it handled all 32 KiB every
/// frame (1 MiB in 32 frames) and never refused anyone.
#[test]
fn a_reliable_flood_waits_within_budget_then_the_flooder_is_refused_and_told_why() {
    let frames = 120;
    let mut flood = flood(Channel::Reliable, 32 * 1024, 1, frames);
    let budget = budget();
    let elapsed = FRAME * frames as u32;
    let allowed = budget.bytes_per_sec[0] as f64 * (elapsed + budget.burst).as_secs_f64();
    assert!(
        (flood.got as f64) <= allowed + 32.0 * 1024.0,
        "took {} bytes, the budget allows {allowed}",
        flood.got
    );
    let (frame, reason) = flood.victim_saw.clone().expect("the flooder is refused");
    assert!(
        matches!(&reason, RejectReason::OverBudget(what) if what.contains("waiting")),
        "{reason}"
    );
    // 512 KiB waiting at about 31 KiB more a frame: refused within 20 frames of it.
    assert!(frame < 40, "refused at frame {frame}");
    assert!(flood.flooder_left, "the routes see the flooder leave");
    match flood.flooder_saw.clone() {
        Some(RejectReason::RefusedByPeer(why)) => assert!(why.contains("over budget"), "{why}"),
        other => panic!("the flooder is told why: {other:?}"),
    }
    // Nothing more is taken from it, and nothing waits for it.
    let world = flood.room.app_mut(0).world_mut();
    let waiting: usize = world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.reliable_waiting_bytes)
        .sum();
    assert_eq!(waiting, 0);
    // A flooder that does not take no for an answer: counted, never handled.
    let flooder = flood.room.peer_id(2).unwrap();
    let frame = bevy_peer_sync::internals::wire::encode(
        &bevy_peer_sync::internals::wire::Message::Payload(Bytes::from_static(b"more")),
    )
    .unwrap();
    let got = flood.room.app(0).world().resource::<Got>().bytes[0];
    for _ in 0..10 {
        let mut io = flood
            .room
            .app_mut(0)
            .world_mut()
            .resource_mut::<TransportIo>();
        io.insert_received(bevy_peer_sync::net::transport::Packet {
            peer: flooder,
            channel: Channel::Reliable,
            bytes: frame.clone(),
        });
    }
    flood.room.step();
    assert_eq!(drops(&mut flood.room, 0, DropReason::Rejected), 10);
    assert_eq!(flood.room.app(0).world().resource::<Got>().bytes[0], got);
    // The honest peers converged all along.
    let last = frames as u32 - 1;
    assert!(flood.room.step_until(60, |r| score_on(r, 0) == Some(last)
        && score_on(r, 2).is_some()));
    // Peer 0 refused the flooder; peer 1, which it did not flood, did not.
    assert_eq!(flood.room.connected_count(0), 1);
    assert_eq!(flood.room.connected_count(1), 2);
}

/// A burst within the budget's burst waits a few frames and is handled whole: an
/// honest late joiner's catch-up is spread, not refused.
#[test]
fn a_reliable_burst_is_spread_over_frames_and_nothing_is_lost() {
    // 128 KiB at once: over a frame's 8 KiB, within the 512 KiB waiting limit, and
    // paid back by the rate well within the grace.
    let mut flood = flood(Channel::Reliable, 16 * 1024, 8, 1);
    flood.room.step_n(150);
    let got = flood.room.app(0).world().resource::<Got>().bytes[0];
    assert_eq!(got, 128 * 1024);
    assert!(flood.victim_saw.is_none());
    let world = flood.room.app_mut(0).world_mut();
    let waited: u64 = world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.reliable_waited)
        .sum();
    assert!(waited > 0);
}

/// 60 datagrams of 1 KiB a frame on the unreliable channel (about 3.5 MiB/s) against
/// 64 KiB/s: all but the budget's worth are dropped and counted, and the flooder is
/// refused once it has stayed over for the grace (2 s). Before the budgets all of it
/// was handled (the transient route's own cap applies to its datagrams only).
#[test]
fn an_unreliable_flood_is_dropped_past_the_rate_then_the_flooder_is_refused() {
    let frames = 200;
    let mut flood = flood(Channel::Unreliable, 1024, 60, frames);
    let budget = budget();
    let allowed =
        budget.bytes_per_sec[1] as f64 * (FRAME * frames as u32 + budget.burst).as_secs_f64();
    assert!(flood.got as f64 <= allowed, "took {} bytes", flood.got);
    assert!(drops(&mut flood.room, 0, DropReason::OverBudget) > 1_000);
    let (frame, reason) = flood.victim_saw.clone().expect("refused");
    assert!(
        matches!(&reason, RejectReason::OverBudget(what) if what.contains("Unreliable")),
        "{reason}"
    );
    let refused_after = FRAME * frame as u32;
    assert!(
        refused_after >= budget.grace && refused_after < budget.grace + Duration::from_secs(1),
        "refused after {refused_after:?}"
    );
    assert!(matches!(
        flood.flooder_saw,
        Some(RejectReason::RefusedByPeer(_))
    ));
}
