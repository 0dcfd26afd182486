//! The fuzz targets' seed corpora and regressions replayed through the fuzz harness
//! (`fuzz/harness.rs`): every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through its target, and none panics.
//!
//! `generate_seed_corpora` (ignored) rewrites the `seed-*` files of the corpora from
//! what the peers of a [`TestRoom`] really send, plus the hostile inputs of
//! `hostile.rs`, `presence.rs` and `transient.rs`:
//! `cargo test --test it fuzz_corpus::generate_seed_corpora -- --ignored`.

#[allow(dead_code)]
#[path = "../../fuzz/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bevy::prelude::*;
use bevy_peer_sync::internals::wire::{self, Hello, Kind, Message};
use bevy_peer_sync::net::transport::Packet;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::{TestRoom, hostile};
use bytes::Bytes;

use harness::{DOC_ENTITIES, DOC_ROOM, doc_body, varint};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Every input of `target`'s corpus and regressions, by path.
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let hidden = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            if path.is_file() && !hidden {
                let bytes = std::fs::read(&path).expect("a corpus file");
                files.push((path, bytes));
            }
        }
    }
    files.sort();
    files
}

/// Runs every input of `target` through `run`; returns how many there were.
fn replay(target: &str, run: fn(&[u8])) -> usize {
    let files = inputs(target);
    for (path, bytes) in &files {
        let result = std::panic::catch_unwind(|| run(bytes));
        assert!(result.is_ok(), "`{target}`: {} panicked", path.display());
    }
    files.len()
}

#[test]
fn wire_inputs_do_not_panic() {
    assert!(replay("wire", harness::wire) > 0);
}

#[test]
fn doc_live_inputs_do_not_panic() {
    assert!(replay("doc_live", harness::doc_live) > 0);
}

#[test]
fn doc_catchup_inputs_do_not_panic() {
    assert!(replay("doc_catchup", harness::doc_catchup) > 0);
}

#[test]
fn presence_inputs_do_not_panic() {
    assert!(replay("presence", harness::presence) > 0);
}

#[test]
fn transient_inputs_do_not_panic() {
    assert!(replay("transient", harness::transient) > 0);
}

#[test]
fn save_inputs_do_not_panic() {
    assert!(replay("save", harness::save) > 0);
}

// ---------------------------------------------------------------------------------
// The seed generator.

/// Seeds by target and name.
#[derive(Default)]
struct Seeds(BTreeMap<(&'static str, String), Vec<u8>>);

impl Seeds {
    fn add(&mut self, target: &'static str, name: impl Into<String>, bytes: Vec<u8>) {
        self.0.insert((target, name.into()), bytes);
    }

    fn write(&self) {
        for target in [
            "wire",
            "doc_live",
            "doc_catchup",
            "presence",
            "transient",
            "save",
        ] {
            let dir = fuzz_dir().join("corpus").join(target);
            std::fs::create_dir_all(&dir).expect("a corpus folder");
            for entry in std::fs::read_dir(&dir).expect("a corpus folder") {
                let path = entry.expect("an entry").path();
                if path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
                {
                    std::fs::remove_file(path).expect("an old seed");
                }
            }
        }
        for ((target, name), bytes) in &self.0 {
            let path = fuzz_dir()
                .join("corpus")
                .join(target)
                .join(format!("seed-{name}"));
            std::fs::write(path, bytes).expect("a seed");
        }
    }
}

/// Datagrams with a two-byte little-endian length in front of each: a `wire` input.
fn datagrams<'a>(packets: impl IntoIterator<Item = &'a Bytes>) -> Vec<u8> {
    let mut out = Vec::new();
    for bytes in packets {
        out.extend((bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

fn kind_of(packet: &Packet) -> Option<u8> {
    packet.bytes.get(1).copied()
}

fn tapped(room: &TestRoom, peer: usize) -> Vec<Packet> {
    room.app(peer).world().resource::<harness::Tap>().0.clone()
}

/// Peers that edited before they met (so they catch up with step 1 and step 2),
/// spawn, edit and despawn entities, edit the room's document, then a late joiner.
fn durable_traffic() -> Vec<Packet> {
    let setup = |app: &mut App| {
        harness::durable_setup(app);
        harness::add_tap(app);
    };
    let mut room = TestRoom::new(0x5EED);
    for peer in 0..2 {
        room.add_peer(setup);
        room.app_mut(peer).world_mut().spawn((
            Replicated,
            harness::Card {
                x: peer as i64,
                y: 2,
                label: "early".into(),
            },
        ));
        let doc = room.app(peer).world().resource::<SharedDoc>();
        let note = doc.text("note");
        bevy_peer_sync::yrs::Text::insert(&note, &mut doc.transact_mut(), 0, "before we met");
    }
    assert!(room.step_until(30, TestRoom::fully_connected));
    room.step_n(5);
    let entity = room
        .app_mut(1)
        .world_mut()
        .spawn((Replicated, harness::Score(5)))
        .id();
    room.step_n(3);
    room.app_mut(1)
        .world_mut()
        .get_mut::<harness::Score>(entity)
        .expect("a score")
        .0 = 6;
    {
        let doc = room.app(1).world().resource::<SharedDoc>();
        let (map, array) = (doc.map("m"), doc.array("a"));
        let mut txn = doc.transact_mut();
        bevy_peer_sync::yrs::Map::insert(&map, &mut txn, "k", "v");
        bevy_peer_sync::yrs::Array::insert(&array, &mut txn, 0, 1.5);
    }
    room.step_n(3);
    room.app_mut(1).world_mut().despawn(entity);
    room.step_n(3);
    room.add_peer(setup);
    assert!(room.step_until(30, TestRoom::fully_connected));
    room.step_n(40);
    [0, 1, 2].iter().flat_map(|p| tapped(&room, *p)).collect()
}

fn transient_traffic() -> Vec<Packet> {
    let setup = |app: &mut App| {
        harness::transient_setup(app);
        harness::add_tap(app);
    };
    let mut room = TestRoom::new(0x5EEE);
    room.add_peer(setup);
    room.add_peer(setup);
    assert!(room.step_until(30, TestRoom::fully_connected));
    let entities: Vec<Entity> = (0..3)
        .map(|n| {
            room.app_mut(0)
                .world_mut()
                .spawn((
                    Replicated,
                    harness::Cursor { step: n },
                    Transform::from_xyz(n as f32, 1.0, 0.0),
                ))
                .id()
        })
        .collect();
    for step in 0..10u32 {
        for entity in &entities {
            let mut world = room.app_mut(0).world_mut().entity_mut(*entity);
            world.get_mut::<harness::Cursor>().expect("a cursor").step = step;
            world
                .get_mut::<Transform>()
                .expect("a transform")
                .translation
                .x += 0.5;
        }
        room.step();
    }
    tapped(&room, 0)
}

fn presence_traffic() -> Vec<Packet> {
    let setup = |app: &mut App| {
        harness::presence_setup(app);
        harness::add_tap(app);
    };
    let mut room = TestRoom::new(0x5EEF);
    room.add_peer(setup);
    room.add_peer(setup);
    {
        let mut me = room.app_mut(0).world_mut().resource_mut::<LocalPresence>();
        me.name = "ada lovelace".into();
        me.color = Color::srgb_u8(200, 40, 30);
        me.insert(harness::Activity::Typing);
    }
    assert!(room.step_until(30, TestRoom::fully_connected));
    for n in 0..5 {
        room.app_mut(0)
            .world_mut()
            .resource_mut::<LocalPresence>()
            .cursor = (n != 2).then(|| Vec2::new(n as f32, -1.0));
        room.step();
    }
    room.app_mut(0).world_mut().write_message(AppExit::Success);
    room.step_n(2);
    tapped(&room, 0)
}

/// At most `n` packets of each kind (and document and y-sync kind for `Doc`).
fn some_of_each(packets: &[Packet], n: usize) -> Vec<Packet> {
    let mut counts: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    packets
        .iter()
        .filter(|packet| {
            let key = packet.bytes.iter().take(5).copied().collect::<Vec<u8>>();
            let key = if kind_of(packet) == Some(Kind::Doc as u8) {
                key
            } else {
                key[..2.min(key.len())].to_vec()
            };
            let count = counts.entry(key).or_default();
            *count += 1;
            *count <= n
        })
        .cloned()
        .collect()
}

/// A `Doc` body's y-sync kind and payload (its document byte first).
fn sync_parts(body: &[u8]) -> Option<(u8, u8, &[u8])> {
    let (&doc, rest) = body.split_first()?;
    let (&tag, rest) = rest.split_first()?;
    let (&kind, rest) = rest.split_first()?;
    if tag != 0 {
        return None;
    }
    let mut at = 0;
    let len = wire::read_varint(rest, &mut at)? as usize;
    Some((doc, kind, rest.get(at..at + len)?))
}

// The hostile inputs (`bevy_peer_sync::testing::hostile`), some made smaller: the
// seeds stay small.

fn hostile_updates() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("nested-map-bomb", hostile::nested_map_bomb()),
        ("wrapped-length", hostile::wrapped_length(200)),
        ("deep-types", hostile::deep_types(40)),
        (
            "json-content",
            vec![1, 1, 1, 0, 2, 1, 1, b't', 0, 1, b'x', 0],
        ),
        ("squash-run", hostile::squash_run(600)),
        (
            "building-on-nothing",
            hostile::update_building_on_nothing(0x1234_5678),
        ),
    ]
}

/// A `Transient` body naming entity `id` with a `Cursor` (as `transient.rs`).
fn forged_transient(tick: u64, creator: u64, counter: u64, step: u32) -> Vec<u8> {
    let mut body = Vec::new();
    varint(&mut body, tick);
    body.extend([1, 1]);
    varint(&mut body, (counter << 1) | 1);
    varint(&mut body, creator);
    let mut value = Vec::new();
    varint(&mut value, u64::from(step));
    varint(&mut body, value.len() as u64);
    body.extend(value);
    body
}

/// A save file (the right magic, format and checksum) whose one section is `update`.
pub(crate) fn save_with(update: &[u8]) -> Vec<u8> {
    let mut save = b"BPSY".to_vec();
    save.push(1);
    save.extend(7u64.to_le_bytes());
    save.push(1);
    save.push(1);
    save.extend((update.len() as u32).to_le_bytes());
    save.extend(update);
    harness::with_crc(save)
}

/// Rewrites the `seed-*` files of `fuzz/corpus/`.
#[test]
#[ignore = "rewrites fuzz/corpus: run by hand"]
fn generate_seed_corpora() {
    let mut seeds = Seeds::default();
    let durable = some_of_each(&durable_traffic(), 3);
    let transient = some_of_each(&transient_traffic(), 6);
    let presence = some_of_each(&presence_traffic(), 4);

    // wire: every kind an honest peer sends, a few datagrams each.
    let mut by_kind: BTreeMap<u8, Vec<Bytes>> = BTreeMap::new();
    for packet in durable.iter().chain(&transient).chain(&presence) {
        by_kind
            .entry(kind_of(packet).unwrap_or(0))
            .or_default()
            .push(packet.bytes.clone());
    }
    for (kind, packets) in &by_kind {
        for (n, chunk) in packets.chunks(3).take(3).enumerate() {
            seeds.add("wire", format!("kind{kind}-{n}"), datagrams(chunk));
        }
    }
    // A fragmented message as the encoder cuts it, and one of three small pieces.
    let big = wire::encode(&Message::Payload(Bytes::from(vec![7u8; 17_000]))).unwrap();
    seeds.add(
        "wire",
        "fragmented",
        datagrams(&wire::fragment(big, 3).unwrap()),
    );
    let inner = wire::encode(&Message::Doc(Bytes::from(doc_body(0, 0, &[0])))).unwrap();
    let pieces: Vec<Bytes> = inner
        .chunks(3)
        .enumerate()
        .map(|(index, chunk)| {
            let mut piece = vec![wire::PROTOCOL_VERSION, Kind::Fragment as u8];
            piece.extend(9u32.to_le_bytes());
            piece.extend((index as u16).to_le_bytes());
            piece.extend((inner.len().div_ceil(3) as u16).to_le_bytes());
            piece.extend(chunk);
            Bytes::from(piece)
        })
        .collect();
    seeds.add("wire", "small-pieces", datagrams(&pieces));
    let hello = wire::encode(&Message::Hello(Hello {
        crate_version: "0.1.0".into(),
        replica: 1 << 53,
        key: [0; 32],
        session: [0; 32],
        nonce: [0; 16],
        proof: None,
        schema_hash: 1,
        schema: vec!["Card:durable".into(), "Score:durable".into()],
        heard: false,
        waiting: true,
        fresh: false,
    }))
    .unwrap();
    seeds.add("wire", "hello-replica-2-pow-53", datagrams([&hello]));
    // The small datagrams of the hostile spray, a few to a file.
    let spray: Vec<Bytes> = hostile::datagrams(7)
        .into_iter()
        .map(|(_, datagram)| datagram)
        .filter(|datagram| datagram.len() < 1024)
        .collect();
    for (n, chunk) in spray.chunks(spray.len().div_ceil(12)).enumerate() {
        seeds.add("wire", format!("hostile-spray-{n}"), datagrams(chunk));
    }
    for (name, update) in hostile_updates() {
        let message = Message::Doc(Bytes::from(doc_body(0, 2, &update)));
        let datagram = wire::encode(&message).unwrap();
        seeds.add("wire", format!("hostile-{name}"), datagrams([&datagram]));
    }

    // doc_live and doc_catchup: every y-sync message honest peers sent.
    let mut n = 0;
    for packet in &durable {
        if kind_of(packet) != Some(Kind::Doc as u8) {
            continue;
        }
        let body = &packet.bytes[wire::HEADER_SIZE..];
        let Some((doc, kind, payload)) = sync_parts(body) else {
            continue;
        };
        n += 1;
        // Raw y-sync message, and a payload.
        seeds.add(
            "doc_catchup",
            format!("real-{n}-doc{doc}-kind{kind}"),
            [&[0x10 | doc][..], &body[1..]].concat(),
        );
        let payload_mode = (kind << 1) | doc;
        seeds.add(
            "doc_catchup",
            format!("real-{n}-doc{doc}-kind{kind}-payload"),
            [&[payload_mode][..], payload].concat(),
        );
        if doc == DOC_ENTITIES {
            seeds.add(
                "doc_live",
                format!("real-{n}-kind{kind}"),
                [&[0][..], &body[1..]].concat(),
            );
            if kind != 0 {
                seeds.add(
                    "doc_live",
                    format!("real-{n}-kind{kind}-payload"),
                    [&[1][..], payload].concat(),
                );
            }
        }
    }
    for (name, update) in hostile_updates() {
        seeds.add(
            "doc_live",
            format!("hostile-{name}"),
            [&[1][..], &update].concat(),
        );
        seeds.add(
            "doc_catchup",
            format!("hostile-{name}-step2"),
            [&[(1 << 1) | DOC_ROOM][..], &update].concat(),
        );
    }
    seeds.add(
        "doc_catchup",
        "hostile-state-vector-bomb",
        [&[DOC_ROOM][..], &hostile::state_vector_bomb()].concat(),
    );
    seeds.add("doc_catchup", "ask-all", vec![DOC_ROOM, 0]);
    // Built inputs: a few real edits (byte 0 picks building, the rest the edit).
    for (n, rest) in [
        &[0u8, 0, 0, 0, 0, 0, 5, 1, 2, 3][..],
        &[1, 1, 2, 0, 0, 3, 9, 9],
        &[2, 3, 7, 1, 4, 0, 0, 8, 0, 1],
        &[0, 0, 2, 2, 1, 5, 6, b'h', b'i', 0, 0, 0],
    ]
    .iter()
    .enumerate()
    {
        seeds.add("doc_live", format!("built-{n}"), [&[2][..], rest].concat());
        for mode in [0x08, 0x08 | 1, 0x08 | 2, 0x08 | 3, 0x08 | 4, 0x08 | 5] {
            seeds.add(
                "doc_catchup",
                format!("built-{n}-mode{mode}"),
                [&[mode][..], rest].concat(),
            );
        }
    }

    // presence: what an honest peer sent, and the garbage of `presence.rs`.
    for (n, packet) in presence
        .iter()
        .filter(|p| kind_of(p) == Some(Kind::Presence as u8))
        .enumerate()
    {
        let body = &packet.bytes[wire::HEADER_SIZE..];
        seeds.add("presence", format!("real-{n}"), [&[0][..], body].concat());
    }
    let garbage: [&[u8]; 5] = [
        &[],
        &[9],
        &[1, 200, 1],
        &[0, 1, 1, 0, 0],
        &[1, 0, 0, 0, 0, 0, 5],
    ];
    let mut split = vec![1];
    for (n, body) in garbage.iter().enumerate() {
        seeds.add(
            "presence",
            format!("garbage-{n}"),
            [&[0][..], body].concat(),
        );
        split.push(body.len() as u8);
        split.extend_from_slice(body);
    }
    seeds.add("presence", "garbage-split", split);
    seeds.add(
        "presence",
        "built-0",
        vec![2, 3, b'b', b'o', b'b', 1, 2, 3, 4, 1, 0, 1, 0],
    );
    seeds.add(
        "presence",
        "built-1",
        vec![2, 0, 0, 0, 0, 0, 2, 0, 2, 1, 1, 1, 0],
    );

    // transient: what the owner sent, and the forgeries of `transient.rs`.
    for (n, packet) in transient
        .iter()
        .filter(|p| kind_of(p) == Some(Kind::Transient as u8))
        .enumerate()
    {
        let body = &packet.bytes[wire::HEADER_SIZE..];
        seeds.add("transient", format!("real-{n}"), [&[0][..], body].concat());
    }
    seeds.add("transient", "malformed", vec![0, 1, 0, 9, 9, 9]);
    seeds.add(
        "transient",
        "forged",
        [&[0][..], &forged_transient(100, 0x1234_5678, 1, 9)].concat(),
    );
    seeds.add(
        "transient",
        "absurd-tick",
        [
            &[0][..],
            &forged_transient(u64::from(u32::MAX / 2), 7, 1, 9),
        ]
        .concat(),
    );
    seeds.add(
        "transient",
        "built-0",
        vec![1, 64, 3, 1, 0, 1, 1, 5, 2, 0, 1, 2, 2, 1],
    );
    seeds.add(
        "transient",
        "built-1",
        vec![1, 65, 2, 1, 1, 1, 4, 1, 2, 3, 4, 2, 3, 0],
    );

    // save: a real one, raw and checksummed by the harness, and hostile ones.
    let save = harness::real_save();
    seeds.add("save", "real", [&[0][..], &save].concat());
    seeds.add(
        "save",
        "real-body",
        [&[1][..], &save[..save.len() - 4]].concat(),
    );
    seeds.add(
        "save",
        "real-truncated",
        [&[0][..], &save[..save.len() / 2]].concat(),
    );
    seeds.add("save", "mutated-0", vec![2, 2, 20, 0, 9, 30, 0, 0]);
    seeds.add("save", "mutated-1", vec![2, 1, 13, 0, 2, 0]);
    for (name, update) in hostile_updates() {
        seeds.add(
            "save",
            format!("hostile-{name}"),
            [&[0][..], &save_with(&update)].concat(),
        );
    }
    seeds.write();
}
