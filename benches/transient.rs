//! The transient route, measured against baselines in the same run.
//!
//! `cargo bench --bench transient` prints:
//! - bytes on the wire per moving-`Transform` update (ids, lengths and datagram
//!   headers included, amortised over 1,000 entities), lossless and quantized, against
//!   the raw payload (10 × f32) and bitcode's encoding of the same values;
//! - CPU per tick with 1,000 moving entities and 4 peers in memory: the owner's frame
//!   (send) and one receiver's frame (receive and apply);
//! - app-to-app one-way delay of a transient value over real matchbox WebRTC on this
//!   machine, against the raw socket's round trip in the same run.

#[path = "support/raw_matchbox.rs"]
mod raw_matchbox;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::entity::NetEntities;
use bevy_peer_sync::internals::Framing;
use bevy_peer_sync::internals::pack;
use bevy_peer_sync::internals::wire::HEADER_SIZE;
use bevy_peer_sync::net::signaling::start_signaling_server;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::transient::transform_codec::{
    encode_lossless, encode_quantized, measure_lossless, measure_quantized,
};
use serde::{Deserialize, Serialize};

const ENTITIES: u64 = 1_000;

fn transforms() -> Vec<Transform> {
    (0..ENTITIES)
        .map(|n| {
            let f = n as f32;
            Transform {
                translation: Vec3::new(f * 0.173 - 40.0, (f * 0.37).sin() * 5.0, f * 0.051 - 20.0),
                rotation: Quat::from_euler(EulerRot::YXZ, f * 0.01, f * 0.003, 0.0),
                scale: Vec3::ONE,
            }
        })
        .collect()
}

fn wire_bytes(values: Vec<Vec<u8>>, measure: bevy_peer_sync::transient::Measure) -> usize {
    let me = ReplicaId(12345);
    let entries = values
        .into_iter()
        .enumerate()
        .map(|(n, bytes)| {
            (
                0u16,
                NetId {
                    creator: me,
                    counter: n as u64 + 1,
                },
                bytes,
            )
        })
        .collect();
    pack(1_000_000, me, entries, &[Framing::Measured(measure)])
        .iter()
        .map(|d| d.len() + HEADER_SIZE)
        .sum()
}

fn bytes_per_update() {
    let transforms = transforms();
    let n = transforms.len() as f64;
    let raw: Vec<[f32; 10]> = transforms
        .iter()
        .map(|t| {
            let (p, r, s) = (t.translation, t.rotation, t.scale);
            [p.x, p.y, p.z, r.x, r.y, r.z, r.w, s.x, s.y, s.z]
        })
        .collect();
    let bitcode_bytes = bitcode::serialize(&raw).expect("bitcode encodes").len();
    let lossless = wire_bytes(
        transforms
            .iter()
            .map(|t| {
                let mut out = Vec::new();
                encode_lossless(t, &mut out);
                out
            })
            .collect(),
        measure_lossless,
    );
    let quantized = wire_bytes(
        transforms
            .iter()
            .map(|t| {
                let mut out = Vec::new();
                encode_quantized(t, 0.01, &mut out);
                out
            })
            .collect(),
        measure_quantized,
    );
    println!("bytes per 3D Transform update, {ENTITIES} moving entities in one send tick");
    println!("{:<48} {:>8.2}", "raw payload (10 x f32, no ids)", 40.0);
    println!(
        "{:<48} {:>8.2}",
        "bitcode of the same 10 x f32 (no ids)",
        bitcode_bytes as f64 / n
    );
    println!(
        "{:<48} {:>8.2}",
        "bevy_peer_sync lossless (ids + headers)",
        lossless as f64 / n
    );
    println!(
        "{:<48} {:>8.2}   (target <= 12)",
        "bevy_peer_sync quantized 1 cm (ids + headers)",
        quantized as f64 / n
    );
}

#[derive(Component, Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
struct Cursor(u32);

fn cpu_per_tick() {
    let mut room = TestRoom::new(5);
    for _ in 0..4 {
        room.add_peer(|app| {
            app.sync_transform(TransformEncoding::Quantized {
                position_precision: 0.01,
            });
        });
    }
    assert!(room.step_until(10, TestRoom::fully_connected));
    let entities: Vec<Entity> = transforms()
        .into_iter()
        .map(|t| room.app_mut(0).world_mut().spawn((Replicated, t)).id())
        .collect();
    room.step_n(30);
    let frames = 300;
    let (mut send, mut receive) = (Duration::ZERO, Duration::ZERO);
    for frame in 0..frames {
        for entity in &entities {
            room.app_mut(0)
                .world_mut()
                .get_mut::<Transform>(*entity)
                .unwrap()
                .translation
                .y = frame as f32 * 0.01;
        }
        room.network.advance(bevy_peer_sync::testing::FRAME);
        let start = Instant::now();
        room.app_mut(0).update();
        send += start.elapsed();
        for peer in 1..4 {
            let start = Instant::now();
            room.app_mut(peer).update();
            if peer == 1 {
                receive += start.elapsed();
            }
        }
    }
    assert_eq!(
        room.app(1).world().resource::<NetEntities>().len(),
        ENTITIES as usize
    );
    println!();
    println!(
        "CPU per tick, {ENTITIES} moving Transforms, 4 peers in memory, mean of {frames} frames"
    );
    println!(
        "{:<48} {:>10.1?}",
        "owner frame (collect, encode, send to 3)",
        send / frames
    );
    println!(
        "{:<48} {:>10.1?}",
        "receiver frame (decode, check, apply, smooth)",
        receive / frames
    );
    println!(
        "{:<48} {:>10.1?}   (target <= 1 ms)",
        "send + receive",
        (send + receive) / frames
    );
}

fn one_way_over_webrtc(url: &str) -> Duration {
    let mut apps: Vec<App> = (0..2)
        .map(|_| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins)
                .add_plugins(PeerSyncPlugin::new(url))
                .sync_component::<Cursor>(Route::Transient);
            app
        })
        .collect();
    let start = Instant::now();
    loop {
        let connected = apps.iter_mut().all(|app| {
            let world = app.world_mut();
            world
                .query::<&PeerLink>()
                .iter(world)
                .any(|l| *l == PeerLink::Connected)
        });
        if connected {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        apps.iter_mut().for_each(App::update);
        std::thread::sleep(Duration::from_millis(1));
    }
    let entity = apps[0].world_mut().spawn((Replicated, Cursor(0))).id();
    let mut id = None;
    while id.is_none_or(|id| {
        apps[1]
            .world()
            .resource::<NetEntities>()
            .entity(id)
            .is_none()
    }) {
        apps.iter_mut().for_each(App::update);
        id = apps[0].world().get::<NetId>(entity).copied();
    }
    let id = id.unwrap();
    // Both apps run flat out on this thread; a value is "there" when the receiver's
    // world shows it after one of its frames.
    let mut samples = Vec::new();
    for value in 1..=100u32 {
        apps[0].world_mut().get_mut::<Cursor>(entity).unwrap().0 = value;
        let set = Instant::now();
        loop {
            apps.iter_mut().for_each(App::update);
            let world = apps[1].world();
            let remote = world.resource::<NetEntities>().entity(id).unwrap();
            if world.get::<Cursor>(remote).is_some_and(|c| c.0 == value) {
                samples.push(set.elapsed());
                break;
            }
            if set.elapsed() > Duration::from_millis(500) {
                break; // lost; the next value goes on
            }
        }
        // Wait a varying time so values are set at every phase of the 60 Hz send
        // clock, as a player's input would be.
        let pause = Instant::now();
        let wait = Duration::from_micros(17_000 + u64::from(value * 7_919 % 16_667));
        while pause.elapsed() < wait {
            apps.iter_mut().for_each(App::update);
        }
    }
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    bytes_per_update();
    cpu_per_tick();
    let server = start_signaling_server(([127, 0, 0, 1], 0)).expect("signaling server starts");
    let raw = raw_matchbox::round_trips(&server.room_url("raw"), 100)[50];
    let ours = one_way_over_webrtc(&server.room_url("ours"));
    println!();
    println!("latency over real WebRTC on this machine, p50 of 100");
    println!("{:<48} {:>10.2?}", "raw matchbox round trip", raw);
    println!(
        "{:<48} {:>10.2?}",
        "bevy_peer_sync one-way (value set -> seen; 60 Hz send clock)", ours
    );
    println!(
        "difference {:.2?} (target: within one 60 Hz frame, 16.7 ms)",
        ours.saturating_sub(raw)
    );
}
