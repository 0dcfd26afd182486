//! What the fuzz targets run, one `pub fn` per target, each taking the fuzzer's bytes.
//!
//! By contract none of them panics, whatever the bytes: a panic is a finding. The same
//! file is included by the fuzz targets (`fuzz/fuzz_targets/*.rs`) and by the corpus
//! replay test (`tests/it/fuzz_corpus.rs`), so it uses only the crate's public API and
//! crates the main crate depends on.
//!
//! The targets that drive apps (`doc_live`, `doc_catchup`, `presence`, `transient`)
//! keep one [`TestRoom`] per thread and rebuild it every [`REBUILD_EVERY`] inputs, so
//! an input meets a room that a few hundred earlier inputs may have touched. A finding
//! that does not reproduce alone may need the inputs before it.
//!
//! Input layouts (byte 0 picks a mode where a target has several; see `fuzz/README.md`).

use std::cell::RefCell;
use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::durable::EntityDoc;
use bevy_peer_sync::internals::wire::{self, Frame, Message, Reassembler, WireLimits};
use bevy_peer_sync::internals::{Entry, unpack};
use bevy_peer_sync::net::transport::{Packet, TransportSystems};
use bevy_peer_sync::persistence::{decode_save, encode_save};
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::registry::Framing;
use bevy_peer_sync::schedule::Stage;
use bevy_peer_sync::testing::TestRoom;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use yrs::block::ClientID;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, Number, Options, Out, ReadTxn,
    StateVector, Text, Transact, Update,
};

/// Inputs a room serves before it is rebuilt (its state would grow without end).
pub const REBUILD_EVERY: u32 = 256;

/// Frames stepped after each injected input (the receiver decodes, applies and answers
/// it in its first frame; one frame keeps the app targets fast).
const FRAMES_PER_INPUT: usize = 1;

/// The `Doc` wire body's first byte: the room's shared document.
pub const DOC_ROOM: u8 = 0;
/// The `Doc` wire body's first byte: the entity document.
pub const DOC_ENTITIES: u8 = 1;

// ---------------------------------------------------------------------------------
// Components the rooms sync (the same names and order as the integration tests, so
// the hostile inputs built there mean the same here).

/// A durable component with fields.
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Card {
    /// Field.
    pub x: i64,
    /// Field.
    pub y: i64,
    /// Field.
    pub label: String,
}

/// A durable newtype component.
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Score(pub u32);

/// A durable component of the transient room (index 0 there).
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
pub struct Label(pub String);

/// A transient component (index 1 in the transient room).
#[derive(Component, Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
pub struct Cursor {
    /// Field.
    pub step: u32,
}

/// A presence component.
#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
pub enum Activity {
    /// Variant.
    Idle,
    /// Variant.
    Typing,
}

/// The durable rooms' setup (as `tests/it/durable.rs`).
pub fn durable_setup(app: &mut App) {
    app.sync_component::<Card>(Route::Durable)
        .sync_component::<Score>(Route::Durable);
}

/// The transient room's setup (as `tests/it/transient.rs`).
pub fn transient_setup(app: &mut App) {
    app.sync_component::<Label>(Route::Durable)
        .sync_component::<Cursor>(Route::Transient)
        .sync_transform(TransformEncoding::Quantized {
            position_precision: 0.01,
        });
}

/// The presence room's setup (as `tests/it/presence.rs`).
pub fn presence_setup(app: &mut App) {
    app.sync_component::<Activity>(Route::Presence)
        .insert_resource(PresenceConfig {
            heartbeat: Duration::from_millis(500),
            away_after: Duration::from_secs(2),
            remove_after: Duration::from_secs(5),
        });
}

// ---------------------------------------------------------------------------------
// A tap on what an app really sends (for seeds, and the transient target's tick).

/// The last packets an app handed its transport (at most [`Tap::KEEP`]).
#[derive(Resource, Default, Debug)]
pub struct Tap(pub Vec<Packet>);

impl Tap {
    /// How many packets a tap keeps.
    pub const KEEP: usize = 4096;
}

fn tap_outgoing(mut io: ResMut<TransportIo>, mut tap: ResMut<Tap>) {
    let packets: Vec<Packet> = io.drain_outgoing().collect();
    for packet in packets {
        if tap.0.len() >= Tap::KEEP {
            tap.0.remove(0);
        }
        tap.0.push(packet.clone());
        io.send(packet);
    }
}

/// Adds a [`Tap`] to `app`: every packet it sends is also kept there. The backend
/// sends from the `Send` stage (in its `TransportSystems::Send` set), so the tap runs
/// there too, in that set, before the backend's system.
pub fn add_tap(app: &mut App) {
    app.init_resource::<Tap>().add_systems(
        Stage(PeerSyncSystems::Send),
        tap_outgoing.in_set(TransportSystems::Send),
    );
}

// ---------------------------------------------------------------------------------
// Helpers.

/// Reads the fuzzer's bytes front to back; past the end every read is 0.
pub struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&first, rest)) => {
                self.bytes = rest;
                first
            }
            None => 0,
        }
    }

    /// The next two bytes, little-endian.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` next bytes.
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.bytes.len());
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        taken
    }

    /// Whatever is left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }

    /// Whether anything is left.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

pub use bevy_peer_sync::testing::hostile::{doc_body, varint};

/// Sends `message` from peer `from` straight onto peer `to`'s transport.
fn inject(room: &mut TestRoom, from: usize, to: usize, channel: Channel, message: &Message) {
    let Some(peer) = room.peer_id(from) else {
        return;
    };
    let Ok(frame) = wire::encode(message) else {
        return;
    };
    let pieces = match channel {
        Channel::Reliable => wire::fragment(frame, 7).unwrap_or_default(),
        Channel::Unreliable => vec![frame],
    };
    let mut io = room.app_mut(to).world_mut().resource_mut::<TransportIo>();
    for bytes in pieces {
        io.insert_received(Packet {
            peer,
            channel,
            bytes,
        });
    }
}

/// Overwrites up to `reader.byte() % 5` bytes of `bytes` at offsets the reader picks.
fn mutate(bytes: &mut [u8], reader: &mut Reader) {
    if bytes.is_empty() {
        return;
    }
    for _ in 0..reader.byte() % 5 {
        let at = usize::from(reader.u16()) % bytes.len();
        bytes[at] = reader.byte();
    }
}

/// A value for a document field, picked by the reader.
fn any_value(reader: &mut Reader) -> Any {
    match reader.byte() % 9 {
        0 => Any::Null,
        1 => Any::Bool(reader.byte() & 1 == 1),
        2 => Any::Number(Number::Float(f64::from(reader.u32() as i32))),
        3 => Any::Number(Number::Float(f64::from_bits(u64::from(reader.u32()) << 32))),
        4 => Any::Number(Number::Int(i64::from(reader.u32() as i32))),
        5 => {
            let len = usize::from(reader.byte() % 16);
            Any::from(String::from_utf8_lossy(reader.take(len)).into_owned())
        }
        6 => {
            let len = usize::from(reader.byte() % 16);
            Any::Buffer(reader.take(len).into())
        }
        7 => Any::Array(vec![Any::Number(Number::Int(1)), Any::from("x")].into()),
        _ => Any::Map(
            std::collections::HashMap::from([(
                "x".to_owned(),
                Any::Number(Number::Float(f64::from(reader.byte()))),
            )])
            .into(),
        ),
    }
}

/// A document with client id `client` holding `base` (an honest state), and its
/// state vector.
fn scratch_doc(client: u64, base: &[u8]) -> (Doc, StateVector) {
    let doc = Doc::with_options(Options {
        client_id: ClientID::new(client & ((1 << 53) - 1)),
        ..Options::default()
    });
    if let Ok(update) = Update::decode_v1(base) {
        let _ = doc.transact_mut().apply_update(update);
    }
    let sv = doc.transact().state_vector();
    (doc, sv)
}

/// Picks an element of `items` by the next byte.
fn pick<'a, T>(items: &'a [T], reader: &mut Reader) -> Option<&'a T> {
    if items.is_empty() {
        None
    } else {
        items.get(usize::from(reader.byte()) % items.len())
    }
}

fn keys_of(map: &yrs::MapRef, txn: &impl ReadTxn) -> Vec<String> {
    let mut keys: Vec<String> = map.keys(txn).map(str::to_owned).collect();
    keys.sort();
    keys
}

fn child_map(map: &yrs::MapRef, txn: &impl ReadTxn, key: &str) -> Option<yrs::MapRef> {
    match map.get(txn, key) {
        Some(Out::YMap(child)) => Some(child),
        _ => None,
    }
}

/// A real edit of the entity document `base` by client `client`, picked by the reader:
/// component fields set, entities added, removed, given away, asked for. Returns the
/// update (the diff from `base`).
fn entity_edit(client: u64, owners: &[u64], base: &[u8], reader: &mut Reader) -> Vec<u8> {
    let (doc, sv) = scratch_doc(client, base);
    let root = doc.get_or_insert_map("entities");
    {
        let mut txn = doc.transact_mut();
        for _ in 0..1 + reader.byte() % 4 {
            let keys = keys_of(&root, &txn);
            let key = pick(&keys, reader).cloned();
            let owner = pick(owners, reader).copied().unwrap_or(client);
            match reader.byte() % 7 {
                0 | 1 => {
                    // A component field: an existing one, or a new name.
                    let Some(entity) = key.and_then(|k| child_map(&root, &txn, &k)) else {
                        continue;
                    };
                    let Some(components) = child_map(&entity, &txn, "components") else {
                        continue;
                    };
                    let names = keys_of(&components, &txn);
                    let name = match pick(&names, reader) {
                        Some(name) if !reader.byte().is_multiple_of(8) => name.clone(),
                        _ => {
                            ["Card", "Score", "Nope", ""][usize::from(reader.byte() % 4)].to_owned()
                        }
                    };
                    let component = match child_map(&components, &txn, &name) {
                        Some(map) => map,
                        None => components.insert(&mut txn, name, MapPrelim::default()),
                    };
                    let fields = keys_of(&component, &txn);
                    let field = match pick(&fields, reader) {
                        Some(field) if !reader.byte().is_multiple_of(8) => field.clone(),
                        _ => {
                            ["x", "y", "label", "", "zz"][usize::from(reader.byte() % 5)].to_owned()
                        }
                    };
                    let value = any_value(reader);
                    component.insert(&mut txn, field, value);
                }
                2 => {
                    // A new entity, spawned by `owner`'s replica.
                    let key = format!("{owner:016x}-{}", reader.byte());
                    let entity = root.insert(&mut txn, key, MapPrelim::default());
                    let components = entity.insert(&mut txn, "components", MapPrelim::default());
                    let owners_map = entity.insert(&mut txn, "owners", MapPrelim::default());
                    owners_map.insert(&mut txn, format!("{owner:016x}"), true);
                    entity.insert(&mut txn, "owner", format!("{owner:016x}"));
                    let score = components.insert(&mut txn, "Score", MapPrelim::default());
                    let value = any_value(reader);
                    score.insert(&mut txn, "", value);
                }
                3 => {
                    if let Some(key) = key {
                        root.remove(&mut txn, &key);
                    }
                }
                4 => {
                    if let Some(entity) = key.and_then(|k| child_map(&root, &txn, &k)) {
                        entity.insert(&mut txn, "owner", format!("{owner:016x}"));
                    }
                }
                5 => {
                    if let Some(entity) = key.and_then(|k| child_map(&root, &txn, &k)) {
                        let requests = match child_map(&entity, &txn, "requests") {
                            Some(map) => map,
                            None => entity.insert(&mut txn, "requests", MapPrelim::default()),
                        };
                        requests.insert(&mut txn, format!("{client:016x}"), any_value(reader));
                    }
                }
                _ => {
                    // Anything under any key of an entity, or at the root.
                    let value = any_value(reader);
                    match key.and_then(|k| child_map(&root, &txn, &k)) {
                        Some(entity) if reader.byte() & 1 == 0 => {
                            let field = ["owner", "owners", "components", "requests", "?"]
                                [usize::from(reader.byte() % 5)];
                            entity.insert(&mut txn, field, value);
                        }
                        _ => {
                            root.insert(&mut txn, format!("k{}", reader.byte()), value);
                        }
                    }
                }
            }
        }
    }
    let mut update = doc.transact().encode_state_as_update_v1(&sv);
    mutate(&mut update, reader);
    update
}

/// A real edit of the room's document `base` by client `client`: texts, maps, arrays,
/// nested types. Returns the update (the diff from `base`).
fn shared_edit(client: u64, base: &[u8], reader: &mut Reader) -> Vec<u8> {
    let (doc, sv) = scratch_doc(client, base);
    let text = doc.get_or_insert_text("note");
    let map = doc.get_or_insert_map("m");
    let array = doc.get_or_insert_array("a");
    {
        let mut txn = doc.transact_mut();
        for _ in 0..1 + reader.byte() % 4 {
            match reader.byte() % 8 {
                0 => {
                    let len = text.len(&txn);
                    let at = u32::from(reader.u16()) % (len + 1);
                    let n = usize::from(reader.byte() % 24);
                    let chunk: String = reader
                        .take(n)
                        .iter()
                        .map(|b| char::from(b'a' + b % 26))
                        .collect();
                    text.insert(&mut txn, at, &chunk);
                }
                1 => {
                    let len = text.len(&txn);
                    if len > 0 {
                        let at = u32::from(reader.u16()) % len;
                        let n = 1 + u32::from(reader.byte()) % (len - at);
                        text.remove_range(&mut txn, at, n);
                    }
                }
                2 => {
                    let key = format!("k{}", reader.byte() % 16);
                    let value = any_value(reader);
                    map.insert(&mut txn, key, value);
                }
                3 => {
                    let key = format!("k{}", reader.byte() % 16);
                    map.remove(&mut txn, &key);
                }
                4 => {
                    let len = array.len(&txn);
                    let at = u32::from(reader.byte()) % (len + 1);
                    let value = any_value(reader);
                    array.insert(&mut txn, at, value);
                }
                5 => {
                    let len = array.len(&txn);
                    if len > 0 {
                        let at = u32::from(reader.byte()) % len;
                        let n = 1 + u32::from(reader.byte()) % (len - at);
                        array.remove_range(&mut txn, at, n);
                    }
                }
                6 => {
                    // Nested types, a few deep.
                    let key = format!("n{}", reader.byte() % 4);
                    let mut inner = map.insert(&mut txn, key, MapPrelim::default());
                    for depth in 0..reader.byte() % 6 {
                        inner = inner.insert(&mut txn, format!("d{depth}"), MapPrelim::default());
                    }
                    let value = any_value(reader);
                    inner.insert(&mut txn, "v", value);
                    let len = array.len(&txn);
                    let nested = array.insert(&mut txn, len, ArrayPrelim::default());
                    nested.push_back(&mut txn, Any::from("x"));
                }
                _ => {
                    let key = format!("t{}", reader.byte() % 4);
                    let nested =
                        map.insert(&mut txn, key, yrs::types::text::TextPrelim::new("abc"));
                    let len = nested.len(&txn);
                    nested.insert(&mut txn, len, "def");
                }
            }
        }
    }
    let mut update = doc.transact().encode_state_as_update_v1(&sv);
    mutate(&mut update, reader);
    update
}

/// A state vector naming `clients` at clocks the reader picks.
fn state_vector(clients: &[u64], reader: &mut Reader) -> Vec<u8> {
    let mut sv = StateVector::default();
    for _ in 0..reader.byte() % 4 {
        let client = pick(clients, reader).copied().unwrap_or(1);
        let clock = match reader.byte() % 4 {
            0 => 0,
            1 => u32::from(reader.byte()),
            2 => u32::from(reader.u16()),
            _ => reader.u32(),
        };
        sv.set_max(ClientID::new(client & ((1 << 53) - 1)), clock);
    }
    let mut bytes = sv.encode_v1();
    mutate(&mut bytes, reader);
    bytes
}

// ---------------------------------------------------------------------------------
// 1. wire

/// Splits `data` into datagrams (a two-byte little-endian length in front of each),
/// decodes each on both channels, feeds fragments to one [`Reassembler`] per channel
/// with the default [`WireLimits`] and decodes what they reassemble. Whatever decodes
/// re-encodes to a message that decodes the same.
pub fn wire(data: &[u8]) {
    let limits = WireLimits::default();
    let mut reassemblers = [Reassembler::default(), Reassembler::default()];
    let mut reader = Reader::new(data);
    while !reader.is_empty() {
        let len = usize::from(reader.u16());
        let datagram = Bytes::copy_from_slice(reader.take(len));
        for (channel, reassembler) in Channel::ALL.into_iter().zip(&mut reassemblers) {
            match wire::decode(&datagram, channel) {
                Ok(Frame::Message(message)) => round_trip(&message, channel),
                Ok(Frame::Fragment(fragment)) => {
                    if let Ok(Some(whole)) = reassembler.push(fragment, &limits)
                        && let Ok(message) = wire::decode_reassembled(&whole)
                    {
                        round_trip(&message, Channel::Reliable);
                    }
                }
                Err(error) => {
                    let _ = DropReason::from(&error);
                    let _ = error.to_string();
                }
            }
            let _ = reassembler.is_pending();
        }
    }
}

fn round_trip(message: &Message, channel: Channel) {
    let encoded = wire::encode(message).expect("a decoded message encodes");
    match wire::decode(&encoded, channel) {
        Ok(Frame::Message(again)) if again == *message => {}
        Ok(Frame::Message(again)) => panic!("decode(encode(m)) != m: {message:?}, {again:?}"),
        // A reassembled message may be larger than one datagram.
        Err(wire::DecodeError::Oversized { .. }) => {}
        other => panic!("decode(encode({message:?})) = {other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// 2. and 3. documents through a receiving app

/// A durable room: peer 0 receives, peer 1 sends; both own a few entities, and the
/// room's document holds some text, a map and an array.
struct DocRoom {
    room: TestRoom,
    inputs: u32,
    /// Peer 1's entity document and room document (honest states to edit from).
    entities_base: Vec<u8>,
    shared_base: Vec<u8>,
    /// yrs client ids: peer 1's, peer 0's, and one nobody has.
    clients: Vec<u64>,
    /// Replica ids (entity owners): peer 1's, peer 0's, and one nobody has.
    owners: Vec<u64>,
}

fn doc_room() -> DocRoom {
    let mut room = TestRoom::new(0xF022);
    room.add_peer(durable_setup);
    room.add_peer(durable_setup);
    assert!(
        room.step_until(30, TestRoom::fully_connected),
        "harness: the doc room did not connect"
    );
    for peer in [0, 1] {
        for n in 0..3u32 {
            let card = Card {
                x: i64::from(n),
                y: -1,
                label: format!("card {peer}/{n}"),
            };
            room.app_mut(peer)
                .world_mut()
                .spawn((Replicated, card, Score(n)));
        }
    }
    {
        let doc = room.app(0).world().resource::<SharedDoc>();
        // Each root type first: naming one opens a transaction of its own.
        let (note, map, array) = (doc.text("note"), doc.map("m"), doc.array("a"));
        let mut txn = doc.transact_mut();
        note.insert(&mut txn, 0, "hello, room");
        map.insert(&mut txn, "k1", 1.5);
        array.insert(&mut txn, 0, "first");
    }
    room.step_n(10);
    let world = room.app(1).world();
    let entities_base = world.resource::<EntityDoc>().encode_state();
    let shared = world.resource::<SharedDoc>();
    let shared_base = shared.encode_state();
    let peer1_shared = shared.doc().client_id().get();
    let peer1_entities = world.resource::<EntityDoc>().doc().client_id().get();
    let peer0 = room.app(0).world();
    let peer0_shared = peer0.resource::<SharedDoc>().doc().client_id().get();
    let peer0_entities = peer0.resource::<EntityDoc>().doc().client_id().get();
    let replica = |peer: usize| room.app(peer).world().resource::<LocalPeer>().replica().0;
    let owners = vec![replica(1), replica(0), 0x1234_5678];
    DocRoom {
        entities_base,
        shared_base,
        clients: vec![
            peer1_entities,
            peer1_shared,
            peer0_entities,
            peer0_shared,
            0x1234_5678,
        ],
        owners,
        room,
        inputs: 0,
    }
}

/// Runs `run` on the room in `cell`, built anew by `build` every `REBUILD_EVERY`
/// inputs (`inputs` counts them), so that what the room holds does not grow without end.
fn with_room<R>(
    cell: &'static std::thread::LocalKey<RefCell<Option<R>>>,
    inputs: fn(&mut R) -> &mut u32,
    build: fn() -> R,
    run: impl FnOnce(&mut R),
) {
    cell.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell
            .as_mut()
            .is_none_or(|room| *inputs(room) >= REBUILD_EVERY)
        {
            *cell = None;
            *cell = Some(build());
        }
        let room = cell.as_mut().expect("just built");
        *inputs(room) += 1;
        run(room);
    });
}

thread_local! {
    static DOC_ROOM_CELL: RefCell<Option<DocRoom>> = const { RefCell::new(None) };
}

fn with_doc_room(run: impl FnOnce(&mut DocRoom)) {
    with_room(&DOC_ROOM_CELL, |r| &mut r.inputs, doc_room, run);
}

/// Sends `body` as a `Doc` message from peer 1 to peer 0 and steps the room.
fn send_doc(room: &mut DocRoom, body: Vec<u8>) {
    inject(
        &mut room.room,
        1,
        0,
        Channel::Reliable,
        &Message::Doc(Bytes::from(body)),
    );
    room.room.step_n(FRAMES_PER_INPUT);
}

/// Y-sync messages on the entity document, from peer 1 into peer 0 of a durable room.
///
/// Byte 0 picks: `% 4 == 0` the rest is a y-sync message (after the document byte);
/// `1` the rest is an update's payload; `2`, `3` the rest picks a real edit of peer
/// 1's entity document (by a client and for owners the rest picks), a few bytes of it
/// then overwritten, sent as an update.
pub fn doc_live(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mode = reader.byte();
    with_doc_room(|room| {
        let body = match mode % 4 {
            0 => [&[DOC_ENTITIES][..], reader.rest()].concat(),
            1 => doc_body(DOC_ENTITIES, 2, reader.rest()),
            _ => {
                let client = *pick(&room.clients, &mut reader).expect("clients");
                let update = entity_edit(client, &room.owners, &room.entities_base, &mut reader);
                doc_body(DOC_ENTITIES, 2, &update)
            }
        };
        send_doc(room, body);
    });
}

/// Catch-up on both documents, from peer 1 into peer 0 of a durable room.
///
/// Byte 0: bit 0 picks the document (0 the room's, 1 the entity document); bits 1-2
/// the kind (0 step 1, 1 step 2, 2 update, 3 step 2); bit 3 raw (the rest is the
/// message's payload) or built: a state vector (step 1) naming the room's clients, or
/// a real edit of peer 1's document (step 2, update), a few bytes then overwritten.
/// Bit 4 set: the rest is a whole y-sync message after the document byte.
pub fn doc_catchup(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mode = reader.byte();
    let doc = mode & 1;
    let kind = match (mode >> 1) & 3 {
        3 => 1,
        kind => kind,
    };
    with_doc_room(|room| {
        let body = if mode & 0x10 != 0 {
            [&[doc][..], reader.rest()].concat()
        } else if mode & 0x08 == 0 {
            doc_body(doc, kind, reader.rest())
        } else {
            let payload = match (kind, doc) {
                (0, _) => state_vector(&room.clients, &mut reader),
                (_, DOC_ROOM) => {
                    let client = *pick(&room.clients, &mut reader).expect("clients");
                    shared_edit(client, &room.shared_base, &mut reader)
                }
                _ => {
                    let client = *pick(&room.clients, &mut reader).expect("clients");
                    entity_edit(client, &room.owners, &room.entities_base, &mut reader)
                }
            };
            doc_body(doc, kind, &payload)
        };
        send_doc(room, body);
    });
}

// ---------------------------------------------------------------------------------
// 4. presence

struct PresenceRoom {
    room: TestRoom,
    inputs: u32,
}

fn presence_room() -> PresenceRoom {
    let mut room = TestRoom::new(0xF053);
    room.add_peer(presence_setup);
    room.add_peer(presence_setup);
    {
        let world = room.app_mut(0).world_mut();
        let mut me = world.resource_mut::<LocalPresence>();
        me.name = "ada".into();
        me.cursor = Some(Vec2::new(1.0, 2.0));
        me.insert(Activity::Idle);
    }
    assert!(
        room.step_until(30, TestRoom::fully_connected),
        "harness: the presence room did not connect"
    );
    room.step_n(2);
    PresenceRoom { room, inputs: 0 }
}

thread_local! {
    static PRESENCE_ROOM: RefCell<Option<PresenceRoom>> = const { RefCell::new(None) };
}

/// Presence messages from peer 0 into peer 1 of a presence room.
///
/// Byte 0 picks: `% 3 == 0` the rest is one body, sent on both channels; `1` the rest
/// is bodies with a one-byte length in front of each, sent on alternate channels; `2`
/// a state message built from the rest (name, colour, extras whose index and bytes
/// the rest gives), sent on the reliable channel.
pub fn presence(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mode = reader.byte();
    with_room(
        &PRESENCE_ROOM,
        |r| &mut r.inputs,
        presence_room,
        |state| {
            let room = &mut state.room;
            match mode % 3 {
                0 => {
                    let body = Bytes::copy_from_slice(reader.rest());
                    for channel in Channel::ALL {
                        inject(room, 0, 1, channel, &Message::Presence(body.clone()));
                    }
                }
                1 => {
                    let mut n = 0;
                    while !reader.is_empty() {
                        let len = usize::from(reader.byte());
                        let body = Bytes::copy_from_slice(reader.take(len));
                        inject(room, 0, 1, Channel::ALL[n % 2], &Message::Presence(body));
                        n += 1;
                    }
                }
                _ => {
                    let mut body = vec![1];
                    let n = usize::from(reader.byte() % 140);
                    let name = reader.take(n);
                    varint(&mut body, name.len() as u64);
                    body.extend_from_slice(name);
                    body.extend_from_slice(reader.take(4));
                    let extras = reader.byte() % 3;
                    varint(&mut body, u64::from(extras));
                    for _ in 0..extras {
                        varint(&mut body, u64::from(reader.byte() % 3));
                        let n = usize::from(reader.byte() % 8);
                        let value = reader.take(n);
                        varint(&mut body, value.len() as u64);
                        body.extend_from_slice(value);
                    }
                    inject(
                        room,
                        0,
                        1,
                        Channel::Reliable,
                        &Message::Presence(body.into()),
                    );
                }
            }
            room.step_n(FRAMES_PER_INPUT);
        },
    );
}

// ---------------------------------------------------------------------------------
// 5. transient

struct TransientRoom {
    room: TestRoom,
    inputs: u32,
    /// Peer 0's entities (their ids as numbers: creator, counter).
    ids: Vec<NetId>,
    sender: ReplicaId,
}

fn transient_room() -> TransientRoom {
    let mut room = TestRoom::new(0xF031);
    room.add_peer(|app| {
        transient_setup(app);
        add_tap(app);
    });
    room.add_peer(transient_setup);
    assert!(
        room.step_until(30, TestRoom::fully_connected),
        "harness: the transient room did not connect"
    );
    let entities: Vec<Entity> = (0..4u32)
        .map(|n| {
            room.app_mut(0)
                .world_mut()
                .spawn((
                    Replicated,
                    Cursor { step: n },
                    Label(format!("l{n}")),
                    Transform::from_xyz(n as f32, 0.0, 0.0),
                ))
                .id()
        })
        .collect();
    room.step_n(6);
    let ids = entities
        .iter()
        .filter_map(|entity| room.app(0).world().get::<NetId>(*entity).copied())
        .collect();
    let sender = room.app(0).world().resource::<LocalPeer>().replica();
    TransientRoom {
        room,
        inputs: 0,
        ids,
        sender,
    }
}

thread_local! {
    static TRANSIENT_ROOM: RefCell<Option<TransientRoom>> = const { RefCell::new(None) };
}

/// The last tick peer 0 sent a transient datagram with.
fn last_tick(room: &TestRoom) -> u32 {
    let tap = room.app(0).world().resource::<Tap>();
    tap.0
        .iter()
        .rev()
        .find(|p| p.bytes.get(1) == Some(&(wire::Kind::Transient as u8)))
        .and_then(|p| {
            let mut at = wire::HEADER_SIZE;
            wire::read_varint(&p.bytes, &mut at)
        })
        .map_or(0, |tick| tick as u32)
}

fn three_bytes(bytes: &[u8]) -> Option<usize> {
    (bytes.len() >= 3).then_some(3)
}

fn a_varint(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    wire::read_varint(bytes, &mut at).map(|_| at)
}

/// Transient batches: [`unpack`] of the rest (after byte 0) under a few framings, and
/// a `Transient` datagram from peer 0 (the owner of 4 entities) into peer 1 of a
/// transient room. Byte 0 `% 2 == 0`: the datagram's body is the rest; `1`: built
/// from the rest (a tick near peer 0's own, entries for its entities or forged ones,
/// values from the rest) with the crate's packer.
pub fn transient(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mode = reader.byte();
    let framings: [&[Framing]; 2] = [
        &[Framing::Prefixed],
        &[
            Framing::NotTransient,
            Framing::Prefixed,
            Framing::Measured(three_bytes),
            Framing::Measured(a_varint),
        ],
    ];
    let rest = Bytes::copy_from_slice(reader.rest());
    for framing in framings {
        for sender in [ReplicaId(1), ReplicaId((1 << 53) - 1)] {
            if let Some((_, entries)) = unpack(&rest, sender, framing) {
                let _: Vec<&Entry> = entries.iter().collect();
            }
        }
    }
    with_room(
        &TRANSIENT_ROOM,
        |r| &mut r.inputs,
        transient_room,
        |state| {
            let bodies = if mode.is_multiple_of(2) {
                vec![rest]
            } else {
                let mut reader = Reader::new(&rest);
                let tick = last_tick(&state.room)
                    .wrapping_add(u32::from(reader.byte()))
                    .wrapping_sub(64);
                let mut entries = Vec::new();
                for _ in 0..reader.byte() % 8 {
                    let type_index = u16::from(reader.byte() % 4);
                    let id = match pick(&state.ids, &mut reader) {
                        Some(id) if !reader.byte().is_multiple_of(8) => *id,
                        _ => NetId {
                            creator: ReplicaId(u64::from(reader.u32())),
                            counter: u64::from(reader.byte()),
                        },
                    };
                    let n = usize::from(reader.byte() % 16);
                    let value = reader.take(n).to_vec();
                    entries.push((type_index, id, value));
                }
                let framing = [Framing::NotTransient, Framing::Prefixed, Framing::Prefixed];
                bevy_peer_sync::internals::pack(tick, state.sender, entries, &framing)
            };
            for body in bodies {
                inject(
                    &mut state.room,
                    0,
                    1,
                    Channel::Unreliable,
                    &Message::Transient(body),
                );
            }
            state.room.step_n(FRAMES_PER_INPUT);
        },
    );
}

// ---------------------------------------------------------------------------------
// 6. save

thread_local! {
    static REAL_SAVE: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// A save an honest peer writes: both documents, some entities and edits.
pub fn real_save() -> Vec<u8> {
    let room = doc_room().room;
    let world = room.app(0).world();
    encode_save(
        world.resource::<LocalPeer>().key(),
        world.resource::<SharedDoc>(),
        Some(world.resource::<EntityDoc>()),
    )
}

/// Saves: [`decode_save`]. Byte 0 `% 3 == 0`: the rest is the save; `1`: the rest is a
/// save without its checksum (the right one is appended); `2`: a real save with a few
/// bytes overwritten at offsets the rest picks (and maybe cut short), checksum fixed.
/// A save that decodes has its documents applied to fresh documents.
pub fn save(data: &[u8]) {
    let mut reader = Reader::new(data);
    let mode = reader.byte();
    let bytes = match mode % 3 {
        0 => reader.rest().to_vec(),
        1 => with_crc(reader.rest().to_vec()),
        _ => {
            let real =
                REAL_SAVE.with(|cell| cell.borrow_mut().get_or_insert_with(real_save).clone());
            let mut body = real[..real.len() - 4].to_vec();
            mutate(&mut body, &mut reader);
            if reader.byte().is_multiple_of(4) {
                let keep = usize::from(reader.u16()) % (body.len() + 1);
                body.truncate(keep);
            }
            body.extend_from_slice(reader.rest());
            with_crc(body)
        }
    };
    if let Ok(save) = decode_save(&bytes) {
        let _ = save.key;
        for update in [save.shared, save.entities].into_iter().flatten() {
            let doc = Doc::new();
            let _ = doc.transact_mut().apply_update(update);
            let _ = doc.get_or_insert_text("note").get_string(&doc.transact());
        }
    }
}

/// `body` with its CRC-32 appended, as a save ends.
pub fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}
