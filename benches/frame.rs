//! What the plugin costs a frame when nothing happens: a peer in a connected room,
//! idle, against a bare `MinimalPlugins` app in the same run.
//!
//! `cargo bench --bench frame`. The plugin's own systems run single-threaded inside
//! one system per set (see `bevy_peer_sync::schedule`); before that, the same systems on
//! the multi-threaded executor cost an idle peer about 180 µs a frame on this machine.

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::registry::Route;
use bevy_peer_sync::testing::TestRoom;
use serde::{Deserialize, Serialize};

const FRAMES: u32 = 2_000;
const RUNS: usize = 5;

#[derive(Component, Serialize, Deserialize, Clone, PartialEq)]
struct Card {
    x: i64,
    label: String,
}

fn mean_frame(mut update: impl FnMut()) -> Duration {
    for _ in 0..100 {
        update();
    }
    let start = Instant::now();
    for _ in 0..FRAMES {
        update();
    }
    start.elapsed() / FRAMES
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..RUNS).map(|_| f()).min().expect("RUNS > 0")
}

fn idle_peer(entities: i64) -> Duration {
    let mut room = TestRoom::new(1);
    let a = room.add_peer(|app| {
        app.sync_component::<Card>(Route::Durable);
    });
    room.add_peer(|app| {
        app.sync_component::<Card>(Route::Durable);
    });
    assert!(room.step_until(10, TestRoom::fully_connected));
    for x in 0..entities {
        room.app_mut(a).world_mut().spawn((
            Replicated,
            Card {
                x,
                label: "card".into(),
            },
        ));
    }
    room.step_n(5);
    mean_frame(|| room.app_mut(a).update())
}

fn main() {
    let bare = best(|| {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins);
        mean_frame(|| app.update())
    });
    let empty = best(|| idle_peer(0));
    let full = best(|| idle_peer(1_000));
    println!("idle frame, mean of {FRAMES}, best of {RUNS} (release, this machine)");
    println!("{:<46} {:>10.1?}", "bare MinimalPlugins app", bare);
    println!("{:<46} {:>10.1?}", "idle peer, 1 connected peer", empty);
    println!(
        "{:<46} {:>10.1?}",
        "idle peer, 1 peer, 1,000 durable entities", full
    );
    println!(
        "plugin cost per idle frame: {:.1?} ({:.1?} with 1,000 entities)",
        empty.saturating_sub(bare),
        full.saturating_sub(bare)
    );
}
