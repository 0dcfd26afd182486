//! The durable route against raw yrs, in the same run.
//!
//! `cargo bench --bench durable` prints:
//! - B4 (the automerge-paper trace, 260k edits) typed on one peer in frames of 1,000
//!   patches and delivered to a second peer through `SharedDoc` and the in-memory
//!   transport, against raw yrs with the same frame batching (one transaction and one
//!   update per frame, applied to a second document): time and bytes.
//! - A late joiner receiving 1,000 durable entities plus the B4 text, against yrs
//!   encoding the same two documents and decoding them into fresh ones.

#[path = "../tests/it/support/traces.rs"]
mod traces;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::durable::EntityDoc;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::updates::decoder::Decode;
use bevy_peer_sync::yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

use serde::{Deserialize, Serialize};

const PATCHES_PER_FRAME: usize = 1_000;
const RUNS: usize = 3;
const JOIN_RUNS: usize = 15;

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Card {
    x: i64,
    y: i64,
    label: String,
}

fn apply(
    text: &bevy_peer_sync::yrs::TextRef,
    txn: &mut bevy_peer_sync::yrs::TransactionMut,
    patches: &[traces::Patch],
) {
    for (pos, del, ins) in patches {
        if *del > 0 {
            text.remove_range(txn, *pos as u32, *del as u32);
        }
        if !ins.is_empty() {
            text.insert(txn, *pos as u32, ins);
        }
    }
}

fn raw_b4(patches: &[traces::Patch], end: &str) -> (Duration, u64) {
    let start = Instant::now();
    let a = Doc::new();
    let b = Doc::new();
    let text = a.get_or_insert_text("paper");
    // The transaction's own update, as y-websocket and friends send it.
    let sink = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = sink.clone();
    a.observe_update_v1("bench", move |_, event| {
        out.lock().unwrap().push(event.update.clone())
    })
    .unwrap();
    let mut bytes = 0u64;
    for chunk in patches.chunks(PATCHES_PER_FRAME) {
        apply(&text, &mut a.transact_mut(), chunk);
        for update in sink.lock().unwrap().drain(..) {
            bytes += update.len() as u64;
            b.transact_mut()
                .apply_update(Update::decode_v1(&update).unwrap())
                .unwrap();
        }
    }
    let elapsed = start.elapsed();
    assert_eq!(b.get_or_insert_text("paper").get_string(&b.transact()), end);
    (elapsed, bytes)
}

fn reliable_bytes_out(room: &mut TestRoom, peer: usize) -> u64 {
    let world = room.app_mut(peer).world_mut();
    world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.channel(Channel::Reliable).bytes_out)
        .sum()
}

fn ours_b4(patches: &[traces::Patch], end: &str) -> (Duration, u64) {
    let mut room = TestRoom::new(1);
    let a = room.add_peer(|_| {});
    let b = room.add_peer(|_| {});
    assert!(room.step_until(5, TestRoom::fully_connected));
    room.step_n(5); // handshake and y-sync of the empty documents out of the way
    let bytes_before = reliable_bytes_out(&mut room, a);
    let start = Instant::now();
    for chunk in patches.chunks(PATCHES_PER_FRAME) {
        {
            let doc = room.app(a).world().resource::<SharedDoc>();
            let text = doc.text("paper");
            apply(&text, &mut doc.transact_mut(), chunk);
        }
        room.step();
    }
    room.step(); // the last frame's update lands on b
    let elapsed = start.elapsed();
    assert_eq!(
        room.app(b)
            .world()
            .resource::<SharedDoc>()
            .text_string("paper"),
        end
    );
    // Pings ride the unreliable channel; everything reliable here is the document.
    (elapsed, reliable_bytes_out(&mut room, a) - bytes_before)
}

fn populated_room(end: &str) -> (TestRoom, usize) {
    let mut room = TestRoom::new(2);
    let a = room.add_peer(|app| {
        app.sync_component::<Card>(Route::Durable);
    });
    room.step_n(2);
    for n in 0..1_000 {
        room.app_mut(a).world_mut().spawn((
            Replicated,
            Card {
                x: n,
                y: -n,
                label: format!("card {n}"),
            },
        ));
    }
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("paper").insert(&mut doc.transact_mut(), 0, end);
    }
    room.step_n(2);
    (room, a)
}

fn ours_late_join(end: &str) -> (Duration, usize) {
    let (mut room, _) = populated_room(end);
    // Building the App and its first frame (startup systems, schedule setup) are not
    // part of joining: the joiner's game is running before it enters the room.
    let b = room.add_peer(|app| {
        app.sync_component::<Card>(Route::Durable);
    });
    room.disconnect(b);
    room.app_mut(b).update();
    room.reconnect(b);
    let start = Instant::now();
    let mut frames = 0;
    let done = room.step_until(100, |room| {
        frames += 1;
        room.app(b)
            .world()
            .resource::<bevy_peer_sync::entity::NetEntities>()
            .len()
            == 1_000
            && room
                .app(b)
                .world()
                .resource::<SharedDoc>()
                .text_string("paper")
                .len()
                == end.len()
    });
    assert!(done);
    (start.elapsed(), frames - 1)
}

fn raw_late_join(end: &str) -> Duration {
    let (room, a) = populated_room(end);
    let docs = [
        room.app(a).world().resource::<SharedDoc>().doc().clone(),
        room.app(a).world().resource::<EntityDoc>().doc().clone(),
    ];
    let fresh = [Doc::new(), Doc::new()];
    let start = Instant::now();
    for (doc, fresh) in docs.iter().zip(&fresh) {
        let state = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        fresh
            .transact_mut()
            .apply_update(Update::decode_v1(&state).unwrap())
            .unwrap();
    }
    // The joiner keeps its documents: dropping them (0.8 ms) is not part of joining.
    let elapsed = start.elapsed();
    drop(fresh);
    elapsed
}

fn best<T>(mut f: impl FnMut() -> (Duration, T)) -> (Duration, T) {
    let mut best = f();
    for _ in 1..RUNS {
        let next = f();
        if next.0 < best.0 {
            best = next;
        }
    }
    best
}

fn main() {
    let trace = traces::load_sequential("automerge-paper.json.gz");
    let patches: Vec<traces::Patch> = trace.txns.into_iter().flatten().collect();
    let end = trace.end_content;

    // `cargo bench --bench durable -- late-join` runs only the late-join figures.
    if !std::env::args().any(|a| a == "late-join") {
        let (raw_time, raw_bytes) = best(|| raw_b4(&patches, &end));
        let (our_time, our_bytes) = best(|| ours_b4(&patches, &end));
        println!(
            "B4 trace, {} patches in frames of {PATCHES_PER_FRAME}, best of {RUNS}",
            patches.len()
        );
        println!("{:<34} {:>12} {:>12}", "", "time", "bytes");
        println!(
            "{:<34} {:>12.1?} {:>12}",
            "raw yrs (same batching)", raw_time, raw_bytes
        );
        println!(
            "{:<34} {:>12.1?} {:>12}",
            "SharedDoc + memory transport", our_time, our_bytes
        );
        println!(
            "ratio: time {:.2}x (target <= 1.3x), bytes {:.3}x (target <= 1.1x)",
            our_time.as_secs_f64() / raw_time.as_secs_f64(),
            our_bytes as f64 / raw_bytes as f64
        );
    }

    // Alternate the two so both see the same machine; this machine is noisy at the
    // millisecond scale, so take the best of many.
    let (mut raw_join, mut our_join, mut frames) = (Duration::MAX, Duration::MAX, 0);
    for _ in 0..JOIN_RUNS {
        raw_join = raw_join.min(raw_late_join(&end));
        let (time, steps) = ours_late_join(&end);
        our_join = our_join.min(time);
        frames = steps;
    }
    println!();
    println!("late join: 1,000 durable entities + the B4 text, best of {JOIN_RUNS}");
    println!("{:<34} {:>12.1?}", "raw yrs encode + decode", raw_join);
    println!(
        "{:<34} {:>12.1?}",
        "bevy_peer_sync join to converged", our_join
    );
    println!("(the joiner converged on its frame {frames} in the room)");
    println!(
        "ratio: {:.2}x (target <= 1.2x)",
        our_join.as_secs_f64() / raw_join.as_secs_f64()
    );
}
