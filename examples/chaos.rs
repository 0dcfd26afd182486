//! A headless peer for the chaos run (`scripts/chaos.py`): no window, no GPU. It joins
//! a room over real WebRTC, performs seeded random actions (spawn, despawn, change a
//! component, move, edit the shared text, request and hand over ownership) and answers
//! commands on standard input, one per line:
//!
//! - `hash`: prints `hash <hex> entities <n> text <chars> peers <n>`, a canonical hash
//!   of its synced state (every replicated entity's id, owner and durable components,
//!   and the shared text; positions are transient and left out);
//! - `quiet`: stops acting, so that the room can settle; `act`: acts again.
//!
//! With `--hostile` it sprays every peer with the crate's hostile inputs
//! (`bevy_peer_sync::testing::hostile`) every 2 s instead, and acts on nothing.
//!
//! ```sh
//! cargo run --bin peer-sync-signal -- --port 3536 &
//! cargo run --example chaos -- --room ws://127.0.0.1:3536/chaos --seed 1
//! ```

use std::collections::BTreeMap;
use std::hash::Hasher;
use std::io::{BufRead, Write};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::net::peer::PeerReplica;
use bevy_peer_sync::net::transport::Packet;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::yrs::{GetString, Text};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// A durable number each owner changes.
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Counter(u32);

/// A durable label, set at spawn.
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Label(String);

#[derive(Resource)]
struct Chaos {
    rng: ChaCha8Rng,
    acting: bool,
    hostile: bool,
    commands: Mutex<Receiver<String>>,
    /// Actions per frame, on average.
    rate: f64,
    sprayed: u64,
    last_spray: f32,
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let room = arg(&args, "--room").unwrap_or_else(|| "ws://127.0.0.1:3536/chaos".into());
    let seed: u64 = arg(&args, "--seed")
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let rate: f64 = arg(&args, "--actions-per-sec")
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let hostile = args.iter().any(|a| a == "--hostile");
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if send.send(line.trim().to_owned()).is_err() {
                break;
            }
        }
    });
    let mut app = App::new();
    app.add_plugins(
        MinimalPlugins.set(bevy::app::ScheduleRunnerPlugin::run_loop(
            Duration::from_secs_f64(1.0 / 60.0),
        )),
    )
    .add_plugins(bevy::log::LogPlugin::default())
    .add_plugins(PeerSyncPlugin::new(room))
    .sync_component::<Counter>(Route::Durable)
    .sync_component::<Label>(Route::Durable)
    .sync_transform(TransformEncoding::default())
    .insert_resource(LocalPresence::new(
        if hostile { "hostile" } else { "chaos" },
        Color::WHITE,
    ))
    .insert_resource(Chaos {
        rng: ChaCha8Rng::seed_from_u64(seed),
        acting: !hostile,
        hostile,
        commands: Mutex::new(receive),
        rate: rate / 60.0,
        sprayed: 0,
        last_spray: f32::NEG_INFINITY,
    })
    .add_systems(Update, (answer, act, spray, note_links));
    app.run();
}

/// Answers the commands that arrived on standard input.
fn answer(
    mut chaos: ResMut<Chaos>,
    doc: Res<SharedDoc>,
    entities: Query<(&NetId, &Owner, Option<&Counter>, Option<&Label>)>,
    links: Query<&PeerLink>,
    mut exit: MessageWriter<AppExit>,
) {
    loop {
        let command = match chaos.commands.lock().expect("not poisoned").try_recv() {
            Ok(command) => command,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => {
                exit.write(AppExit::Success);
                return;
            }
        };
        match command.as_str() {
            "quiet" => chaos.acting = false,
            "act" => chaos.acting = !chaos.hostile,
            "hash" => {
                let mut state: BTreeMap<String, String> = BTreeMap::new();
                for (id, owner, counter, label) in &entities {
                    state.insert(
                        id.to_string(),
                        format!("{:?} {:?} {:?}", owner.0, counter, label),
                    );
                }
                let text = doc.text_string("notes");
                let mut hasher = Fnv(0xcbf2_9ce4_8422_2325);
                for (id, value) in &state {
                    hasher.write(id.as_bytes());
                    hasher.write(value.as_bytes());
                }
                hasher.write(text.as_bytes());
                let peers = links.iter().filter(|l| **l == PeerLink::Connected).count();
                let mut out = std::io::stdout().lock();
                let _ = writeln!(
                    out,
                    "hash {:016x} entities {} text {} peers {peers}",
                    hasher.finish(),
                    state.len(),
                    text.chars().count()
                );
                let _ = out.flush();
            }
            other => warn!("unknown command `{other}`"),
        }
    }
}

/// Logs links that open and close (at `info`, which the chaos run keeps), so that the
/// run can tell a stopped peer was given up by the others.
fn note_links(mut joined: MessageReader<PeerJoined>, mut left: MessageReader<PeerLeft>) {
    for j in joined.read() {
        info!("joined: peer `{}` replica `{}`", j.peer, j.replica);
    }
    for l in left.read() {
        info!("left: peer `{}`", l.peer);
    }
}

/// FNV-1a: the same hash in every process (std's hasher is keyed per process).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// One random action now and then.
#[allow(clippy::too_many_arguments)]
fn act(
    mut commands: Commands,
    mut chaos: ResMut<Chaos>,
    local: Res<LocalPeer>,
    doc: Res<SharedDoc>,
    mut owned: Query<(Entity, &Owner, &mut Counter, &mut Transform)>,
    replicas: Query<&PeerReplica>,
    mut requests: MessageWriter<RequestOwnership>,
    mut transfers: MessageWriter<TransferOwnership>,
) {
    if !chaos.acting {
        return;
    }
    let rate = chaos.rate;
    let rng = &mut chaos.rng;
    if !rng.random_bool(rate.min(1.0)) {
        return;
    }
    let me = local.replica();
    let mine: Vec<Entity> = owned
        .iter()
        .filter(|(_, owner, _, _)| owner.0 == Some(me))
        .map(|(e, ..)| e)
        .collect();
    let others: Vec<Entity> = owned
        .iter()
        .filter(|(_, owner, _, _)| owner.0 != Some(me))
        .map(|(e, ..)| e)
        .collect();
    let pick = |rng: &mut ChaCha8Rng, from: &[Entity]| -> Option<Entity> {
        (!from.is_empty()).then(|| from[rng.random_range(0..from.len())])
    };
    match rng.random_range(0..100) {
        0..25 if mine.len() < 20 => {
            let n: u32 = rng.random();
            commands.spawn((
                Replicated,
                Counter(n % 1_000),
                Label(format!("made by {me} #{n}")),
                Transform::from_xyz(rng.random_range(-100.0..100.0), 0.0, 0.0),
            ));
        }
        25..35 => {
            if let Some(entity) = pick(rng, &mine) {
                commands.entity(entity).despawn();
            }
        }
        35..60 => {
            if let Some(entity) = pick(rng, &mine)
                && let Ok((_, _, mut counter, _)) = owned.get_mut(entity)
            {
                counter.0 += 1;
            }
        }
        60..75 => {
            if let Some(entity) = pick(rng, &mine)
                && let Ok((_, _, _, mut transform)) = owned.get_mut(entity)
            {
                transform.translation.x += rng.random_range(-5.0..5.0);
            }
        }
        75..90 => {
            let text = doc.text("notes");
            let mut txn = doc.transact_mut();
            let len = text.get_string(&txn).chars().count() as u32;
            if len > 400 || (len > 0 && rng.random_bool(0.3)) {
                let at = rng.random_range(0..len);
                let n = rng.random_range(1..=(len - at).min(8));
                text.remove_range(&mut txn, at, n);
            } else {
                let at = if len == 0 {
                    0
                } else {
                    rng.random_range(0..=len)
                };
                let word = format!("{} ", rng.random_range(0..1_000u32));
                text.insert(&mut txn, at, &word);
            }
        }
        90..95 => {
            if let Some(entity) = pick(rng, &others) {
                requests.write(RequestOwnership { entity });
            }
        }
        _ => {
            let peers: Vec<ReplicaId> = replicas.iter().map(|r| r.0).collect();
            if let Some(entity) = pick(rng, &mine)
                && !peers.is_empty()
            {
                let to = peers[rng.random_range(0..peers.len())];
                transfers.write(TransferOwnership { entity, to });
            }
        }
    }
}

/// `--hostile`: the crate's hostile spray at every connected peer, every 2 s.
fn spray(
    time: Res<Time<Real>>,
    mut chaos: ResMut<Chaos>,
    mut io: ResMut<TransportIo>,
    peers: Query<(&Peer, &PeerLink)>,
) {
    let now = time.elapsed_secs();
    if !chaos.hostile || now - chaos.last_spray < 2.0 {
        return;
    }
    chaos.last_spray = now;
    chaos.sprayed += 1;
    let spray = bevy_peer_sync::testing::hostile::datagrams(chaos.sprayed);
    for (peer, link) in &peers {
        if *link != PeerLink::Connected {
            continue;
        }
        for (channel, bytes) in &spray {
            io.send(Packet {
                peer: peer.id,
                channel: *channel,
                bytes: bytes.clone(),
            });
        }
    }
}
