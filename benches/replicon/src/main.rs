//! bevy_peer_sync against bevy_replicon 0.42, side by side in one process, on one job:
//! one owner (replicon's server) moves the `Transform` of 1,000 entities every tick, and
//! N peers (replicon's clients) receive them, for N = 1, 3 and 19.
//!
//! ```text
//! cd benches/replicon && cargo run --release            # 11 rounds
//! cd benches/replicon && cargo run --release -- 3       # 3 rounds, quicker
//! cd benches/replicon && cargo run --release -- 1 ours  # one run (N=1), to profile
//! cd benches/replicon && EVICT=1 cargo run --release    # caches flushed before each
//!                                                        # measured receiver frame
//! ```
//!
//! Each round runs every configuration once, in an order that alternates between rounds,
//! so both crates see the same machine load; the table gives each one's median over the
//! rounds. Per configuration: 20 ticks of warm-up, then 200 measured ticks; the figures
//! are the mean wall time of one `App::update` of the sender and of one receiver (the
//! first; the others are updated too, untimed).
//!
//! - bevy_peer_sync runs in a `TestRoom` (its in-memory transport, whose delivery is
//!   inside the receiver's frame), `Transform` quantized to 1 cm, smoothed (the default
//!   of `sync_transform`) or not.
//! - bevy_replicon runs its server and clients in apps connected by its own `test_app`
//!   exchange (outside both apps' frames, so not timed), `Transform` replicated as 10
//!   `f32` with `replicate_as`, the server ticking every update.
//! - "single" runs every schedule of every app on Bevy's single-threaded executor (the
//!   executors' overhead out), "multi" keeps Bevy's default multi-threaded one.
//! - Bytes per entity update: what the receiver got over the run (ids and headers in;
//!   bevy_peer_sync's include its datagram header and pings), over ticks × entities.
//!
//! At the end the sender stops and every receiver must hold the sender's values (1 cm
//! for bevy_peer_sync's quantized ones, exactly for replicon's): a figure of a crate
//! that did not deliver is not printed.

use std::time::{Duration, Instant};

use bevy::ecs::schedule::SingleThreadedExecutor;
use bevy::prelude::*;
use bevy::state::app::StatesPlugin;
use bevy_peer_sync::prelude::{NetEntities, NetId, PeerStats, Replicated, TransientAppExt};
use bevy_peer_sync::testing::{FRAME, TestRoom};
use bevy_peer_sync::transient::transform_codec;
use bevy_peer_sync::transient::transform_codec::TransformEncoding;
use bevy_replicon::prelude as replicon;
use bevy_replicon::prelude::AppRuleExt;
use bevy_replicon::test_app::{ServerTestAppExt, TestClientEntity};
use serde::{Deserialize, Serialize};

const ENTITIES: usize = 1_000;
const WARMUP: u32 = 20;
const TICKS: u32 = 200;
const PRECISION: f32 = 0.01;
const ROOM_SIZES: [usize; 3] = [1, 3, 19];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Executor {
    Single,
    Multi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crate {
    /// bevy_peer_sync, smoothing on (`sync_transform`) or off.
    Ours {
        smoothing: bool,
    },
    Replicon,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Config {
    krate: Crate,
    executor: Executor,
    receivers: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    sender: Duration,
    receiver: Duration,
    bytes_per_update: f64,
}

/// Entity `n`'s transform at `tick`: every entity moves and turns every tick.
fn transform_at(n: usize, tick: u32) -> Transform {
    let (n, t) = (n as f32, tick as f32);
    Transform {
        translation: Vec3::new(
            n * 0.173 - 40.0,
            (n * 0.37 + t * 0.05).sin() * 5.0,
            t * 0.02,
        ),
        rotation: Quat::from_rotation_z(n * 0.01 + t * 0.01),
        scale: Vec3::ONE,
    }
}

/// With `EVICT=1`: writes 64 MiB before the measured receiver's frame, as if many
/// other apps had run since its last one. In one process, the N-1 other receivers of a
/// room evict the measured one's data between its frames; this tells how much of a
/// receiver's growth with N is that, not work.
fn evict_caches() {
    thread_local! {
        static JUNK: std::cell::RefCell<Option<Vec<u64>>> = const { std::cell::RefCell::new(None) };
    }
    if std::env::var_os("EVICT").is_none_or(|v| v != "1") {
        return;
    }
    JUNK.with(|junk| {
        let mut junk = junk.borrow_mut();
        let junk = junk.get_or_insert_with(|| vec![0; 8 << 20]);
        for (n, word) in junk.iter_mut().enumerate() {
            *word = word.wrapping_add(n as u64);
        }
        std::hint::black_box(&junk);
    });
}

fn set_executor(app: &mut App, executor: Executor) {
    if executor == Executor::Single {
        for (_, schedule) in app.world_mut().resource_mut::<Schedules>().iter_mut() {
            schedule.set_executor(SingleThreadedExecutor::new());
        }
    }
}

fn move_all(world: &mut World, entities: &[Entity], tick: u32) {
    for (n, entity) in entities.iter().enumerate() {
        *world.get_mut::<Transform>(*entity).expect("spawned") = transform_at(n, tick);
    }
}

/// Within `tolerance` of position and 0.05 rad of rotation (both quantized on our wire).
fn close(a: &Transform, b: &Transform, tolerance: f32) -> bool {
    a.translation.distance(b.translation) <= tolerance
        && a.rotation.angle_between(b.rotation) < 0.05
}

fn ours(receivers: usize, executor: Executor, smoothing: bool) -> Figures {
    let encoding = TransformEncoding::Quantized {
        position_precision: PRECISION,
    };
    let mut room = TestRoom::new(17);
    for _ in 0..=receivers {
        room.add_peer(|app| {
            if smoothing {
                app.sync_transform(encoding);
            } else {
                app.sync_transient_with::<Transform>(
                    "Transform@0.01",
                    transform_codec::codec(encoding),
                );
            }
        });
    }
    for peer in 0..=receivers {
        set_executor(room.app_mut(peer), executor);
    }
    assert!(
        room.step_until(600, TestRoom::fully_connected),
        "the room connects"
    );
    let entities: Vec<Entity> = (0..ENTITIES)
        .map(|n| {
            room.app_mut(0)
                .world_mut()
                .spawn((Replicated, transform_at(n, 0)))
                .id()
        })
        .collect();
    assert!(
        room.step_until(600, |room| (1..=receivers).all(|peer| room
            .app(peer)
            .world()
            .resource::<NetEntities>()
            .len()
            == ENTITIES)),
        "every receiver has every entity"
    );
    let unreliable_in = |room: &mut TestRoom| -> u64 {
        let world = room.app_mut(1).world_mut();
        world
            .query::<&PeerStats>()
            .iter(world)
            .map(|s| {
                s.channel(bevy_peer_sync::prelude::Channel::Unreliable)
                    .bytes_in
            })
            .sum()
    };
    let (mut sender, mut receiver) = (Duration::ZERO, Duration::ZERO);
    let mut bytes_before = 0;
    for tick in 1..=WARMUP + TICKS {
        if tick == WARMUP + 1 {
            bytes_before = unreliable_in(&mut room);
        }
        move_all(room.app_mut(0).world_mut(), &entities, tick);
        room.network.advance(FRAME);
        let start = Instant::now();
        room.app_mut(0).update();
        if tick > WARMUP {
            sender += start.elapsed();
        }
        for peer in 1..=receivers {
            if peer == 1 {
                evict_caches();
            }
            let start = Instant::now();
            room.app_mut(peer).update();
            if peer == 1 && tick > WARMUP {
                receiver += start.elapsed();
            }
        }
    }
    let bytes = unreliable_in(&mut room) - bytes_before;
    // The sender stops; smoothing plays back 50 ms behind.
    room.step_n(30);
    let expected: Vec<(NetId, Transform)> = {
        let world = room.app_mut(0).world_mut();
        entities
            .iter()
            .map(|e| {
                (
                    *world.get::<NetId>(*e).expect("replicated"),
                    *world.get::<Transform>(*e).expect("spawned"),
                )
            })
            .collect()
    };
    for peer in 1..=receivers {
        let world = room.app(peer).world();
        let net = world.resource::<NetEntities>();
        for (id, value) in &expected {
            let got = net
                .entity(*id)
                .and_then(|e| world.get::<Transform>(e))
                .expect("the receiver holds the entity's transform");
            assert!(
                close(got, value, PRECISION * 1.5),
                "bevy_peer_sync receiver {peer} holds {got:?} for {value:?}"
            );
        }
    }
    Figures {
        sender: sender / TICKS,
        receiver: receiver / TICKS,
        bytes_per_update: bytes as f64 / f64::from(TICKS) / ENTITIES as f64,
    }
}

/// Replicon's `Transform` on the wire: 10 `f32` (glam's serde is not in this build).
#[derive(Serialize, Deserialize, Clone, Copy)]
struct RawTransform([f32; 10]);

impl From<Transform> for RawTransform {
    fn from(t: Transform) -> Self {
        let (p, r, s) = (t.translation, t.rotation, t.scale);
        Self([p.x, p.y, p.z, r.x, r.y, r.z, r.w, s.x, s.y, s.z])
    }
}

impl From<RawTransform> for Transform {
    fn from(RawTransform(v): RawTransform) -> Self {
        Transform {
            translation: Vec3::new(v[0], v[1], v[2]),
            rotation: Quat::from_xyzw(v[3], v[4], v[5], v[6]),
            scale: Vec3::new(v[7], v[8], v[9]),
        }
    }
}

fn replicon_app() -> App {
    let mut app = App::new();
    app.add_plugins((
        MinimalPlugins,
        StatesPlugin,
        replicon::RepliconPlugins.set(replicon::ServerPlugin::new(PostUpdate)),
    ))
    .replicate_as::<Transform, RawTransform>();
    app.finish();
    app.cleanup();
    app
}

fn replicon(receivers: usize, executor: Executor) -> Figures {
    let mut server = replicon_app();
    let mut clients: Vec<App> = (0..receivers).map(|_| replicon_app()).collect();
    set_executor(&mut server, executor);
    for client in &mut clients {
        set_executor(client, executor);
        server.connect_client(client);
    }
    let entities: Vec<Entity> = (0..ENTITIES)
        .map(|n| {
            server
                .world_mut()
                .spawn((replicon::Replicated, transform_at(n, 0)))
                .id()
        })
        .collect();
    let exchange = |server: &mut App, clients: &mut [App]| {
        for client in clients {
            server.exchange_with_client(client);
            client.update();
        }
    };
    for _ in 0..5 {
        server.update();
        exchange(&mut server, &mut clients);
    }
    let first = **clients[0].world().resource::<TestClientEntity>();
    let (mut sender, mut receiver) = (Duration::ZERO, Duration::ZERO);
    let mut bytes = 0;
    for tick in 1..=WARMUP + TICKS {
        move_all(server.world_mut(), &entities, tick);
        let start = Instant::now();
        server.update();
        if tick > WARMUP {
            sender += start.elapsed();
            bytes += server
                .world()
                .resource::<replicon::ServerMessages>()
                .iter_sent()
                .filter(|(client, _, _)| *client == first)
                .map(|(_, _, message)| message.len())
                .sum::<usize>();
        }
        for (n, client) in clients.iter_mut().enumerate() {
            server.exchange_with_client(client);
            if n == 0 {
                evict_caches();
            }
            let start = Instant::now();
            client.update();
            if n == 0 && tick > WARMUP {
                receiver += start.elapsed();
            }
        }
    }
    for _ in 0..5 {
        server.update();
        exchange(&mut server, &mut clients);
    }
    for client in &mut clients {
        let world = client.world_mut();
        let mut remote = world.query_filtered::<&Transform, With<replicon::Remote>>();
        let mut got: Vec<Transform> = remote.iter(world).copied().collect();
        assert_eq!(got.len(), ENTITIES, "every client has every entity");
        let mut expected: Vec<Transform> = entities
            .iter()
            .map(|e| *server.world().get::<Transform>(*e).expect("spawned"))
            .collect();
        let key = |t: &Transform| (t.translation.x.to_bits(), t.translation.z.to_bits());
        got.sort_by_key(key);
        expected.sort_by_key(key);
        assert!(
            got.iter().zip(&expected).all(|(a, b)| a == b),
            "every replicon client holds the server's values"
        );
    }
    Figures {
        sender: sender / TICKS,
        receiver: receiver / TICKS,
        bytes_per_update: bytes as f64 / f64::from(TICKS) / ENTITIES as f64,
    }
}

fn run(config: Config) -> Figures {
    match config.krate {
        Crate::Ours { smoothing } => ours(config.receivers, config.executor, smoothing),
        Crate::Replicon => replicon(config.receivers, config.executor),
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("the number of rounds"))
        .unwrap_or(11);
    // `-- 1 ours` or `-- 1 replicon`: one configuration (N=1, single-threaded), for a
    // profiler (`valgrind --tool=callgrind`).
    match std::env::args().nth(2).as_deref() {
        Some("ours") => {
            ours(1, Executor::Single, true);
            return;
        }
        Some("replicon") => {
            replicon(1, Executor::Single);
            return;
        }
        _ => {}
    }
    let mut configs = Vec::new();
    for executor in [Executor::Single, Executor::Multi] {
        for receivers in ROOM_SIZES {
            for krate in [
                Crate::Ours { smoothing: true },
                Crate::Ours { smoothing: false },
                Crate::Replicon,
            ] {
                configs.push(Config {
                    krate,
                    executor,
                    receivers,
                });
            }
        }
    }
    let mut results: Vec<Vec<Figures>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        let started = Instant::now();
        let order: Vec<usize> = if round % 2 == 0 {
            (0..configs.len()).collect()
        } else {
            (0..configs.len()).rev().collect()
        };
        for index in order {
            results[index].push(run(configs[index]));
        }
        eprintln!("round {} of {rounds}: {:.1?}", round + 1, started.elapsed());
    }
    let figure = |krate: Crate, executor: Executor, receivers: usize| -> (f64, f64, f64) {
        let index = configs
            .iter()
            .position(|c| {
                *c == Config {
                    krate,
                    executor,
                    receivers,
                }
            })
            .expect("measured");
        let runs = &results[index];
        (
            us(median(runs.iter().map(|f| f.sender).collect())),
            us(median(runs.iter().map(|f| f.receiver).collect())),
            runs[0].bytes_per_update,
        )
    };
    println!(
        "{ENTITIES} moving Transforms, {TICKS} ticks after {WARMUP} of warm-up, median of {rounds} interleaved rounds; µs per frame"
    );
    for executor in [Executor::Single, Executor::Multi] {
        println!();
        println!("executor: {executor:?}");
        println!("{:<44} {:>18} {:>18} {:>18}", "", "N=1", "N=3", "N=19");
        let row = |label: &str, cell: &dyn Fn(usize) -> String| {
            let cells: Vec<String> = ROOM_SIZES.iter().map(|n| cell(*n)).collect();
            println!(
                "{label:<44} {:>18} {:>18} {:>18}",
                cells[0], cells[1], cells[2]
            );
        };
        let smoothed = Crate::Ours { smoothing: true };
        let plain = Crate::Ours { smoothing: false };
        // One figure of ours against replicon's: "ours/theirs ratio".
        let versus = |ours: Crate, pick: fn((f64, f64, f64)) -> f64| {
            move |n: usize| {
                let (ours, theirs) = (
                    pick(figure(ours, executor, n)),
                    pick(figure(Crate::Replicon, executor, n)),
                );
                format!("{ours:.0}/{theirs:.0} {:.2}x", ours / theirs)
            }
        };
        row("sender, ours / replicon", &versus(smoothed, |f| f.0));
        row(
            "receiver, ours smoothed / replicon",
            &versus(smoothed, |f| f.1),
        );
        row(
            "receiver, ours without smoothing / replicon",
            &versus(plain, |f| f.1),
        );
        row("smoothing (smoothed - without)", &|n| {
            let (_, with, _) = figure(smoothed, executor, n);
            let (_, without, _) = figure(plain, executor, n);
            format!("{:.0}", with - without)
        });
        row("receiver vs its own N=1 (ours / replicon)", &|n| {
            let ours = figure(smoothed, executor, n).1 / figure(smoothed, executor, 1).1;
            let theirs =
                figure(Crate::Replicon, executor, n).1 / figure(Crate::Replicon, executor, 1).1;
            format!("{ours:.2}x/{theirs:.2}x")
        });
        row("bytes per entity update, ours / replicon", &|n| {
            let (_, _, ours) = figure(smoothed, executor, n);
            let (_, _, theirs) = figure(Crate::Replicon, executor, n);
            format!("{ours:.2}/{theirs:.2}")
        });
    }
}
