//! The transient route: latest-wins component values on the unreliable channel, for
//! positions, cursors and anything that changes every frame.
//!
//! The owner of a replicated entity sends its changed transient components at
//! [`TransientConfig::send_rate`] (60 Hz by default), many entities per datagram,
//! each datagram at most [`SAFE_UNRELIABLE_SIZE`] bytes. A changed value is sent again
//! on the next few send ticks and every owned value is refreshed round-robin about
//! once a second, so a receiver reaches the owner's last value soon after losses stop.
//!
//! A datagram carries its sender tick: the sender's send clock in milliseconds, so
//! receivers time their smoothing by it whatever the sender's send rate (peers may
//! run different rates, and a game may change its rate while it runs). The clock
//! wraps after 49 days; ticks are compared in serial-number order.
//!
//! Receivers keep, per entity and type, the sender tick of the value they applied and
//! drop anything older or equal (stale, duplicated, reordered), anything from a peer
//! that does not own the entity, and anything over the per-peer budget of a frame;
//! each drop is counted on the sender's [`PeerStats`]. A value for an entity that is
//! not known yet (its spawn is still on the reliable channel) is held for
//! [`TransientConfig::pending_timeout`] and applied when the entity appears.
//!
//! Components that implement [`Smooth`](crate::transient::smoothing::Smooth) (like `Transform`) can be played back through
//! an interpolation buffer instead of snapping: see [`crate::transient::smoothing`].
//!
//! ## Datagram body
//! ```text
//! varint  sender tick (milliseconds of the sender's send clock)
//! repeat: varint type index, varint count,
//!         count × ( varint (counter delta << 1 | foreign), [varint creator if foreign],
//!                   [varint length unless the codec delimits itself], value bytes )
//! ```
//! Entities are sorted by counter within a type, so most ids cost one byte; the
//! `Transform` codecs delimit themselves, so a quantized `Transform` update costs about
//! 11.5 bytes with its id and headers (`cargo bench --bench transient`).
//!
//! ## Under real loss
//! webrtc-rs once closed an unordered, zero-retransmit channel after a single lost
//! datagram. `tests/webrtc_loss.rs` drops 10% of UDP with nftables while two peers
//! exchange values: the link stays up with matchbox 0.15, so the channel stays at
//! `max_retransmits: 0`.

pub mod smoothing;
pub mod transform_codec;

use std::collections::VecDeque;

use bevy::platform::collections::HashMap;
use std::marker::PhantomData;
use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;
use bytes::Bytes;

use crate::durable::{NetEntities, NetId, Owner};
use crate::net::peer::{LocalPeer, PeerId, PeerLeft, PeerReplica, Peers, ReplicaId};
use crate::net::session::{Inbox, Outbox, Recipients};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::net::wire::{HEADER_SIZE, Message, SAFE_UNRELIABLE_SIZE, read_varint, write_varint};
use crate::schedule::{PeerSyncSystems, Stage, StageAppExt, Step};

/// Where remote transient values are applied (in `PreUpdate`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyTransient;

/// Commit the current transient values of an entity (one the local peer owns) to the
/// durable document, e.g. when a drag ends: late joiners then start from it, and it
/// survives its owner leaving. Transient values are stored there as their wire bytes.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitTransient {
    /// The entity.
    pub entity: Entity,
}

/// Settings of the transient route.
#[derive(Resource, Debug, Clone)]
pub struct TransientConfig {
    /// Send ticks per second.
    pub send_rate: f64,
    /// How many further send ticks a changed value is repeated on.
    pub resend_ticks: u32,
    /// How long every owned value takes to be refreshed once, round-robin.
    pub refresh_period: Duration,
    /// How long a value for an unknown entity is held.
    pub pending_timeout: Duration,
    /// Datagrams per peer per frame beyond which the rest are dropped.
    pub max_datagrams_per_peer_per_frame: usize,
    /// A sender tick further than this past the last one from the same peer is refused
    /// (milliseconds of the sender's send clock).
    pub max_tick_jump: u32,
}

impl Default for TransientConfig {
    fn default() -> Self {
        Self {
            send_rate: 60.0,
            resend_ticks: 3,
            refresh_period: Duration::from_secs(1),
            pending_timeout: Duration::from_secs(2),
            max_datagrams_per_peer_per_frame: 64,
            max_tick_jump: 10 * 60 * 1000,
        }
    }
}

/// Encodes and decodes one transient type's values.
pub struct TransientCodec<T> {
    /// Appends `value` (with `param`).
    pub encode: fn(&T, f32, &mut Vec<u8>),
    /// Decodes one whole value (with `param`); `None` if malformed.
    pub decode: fn(&[u8], f32) -> Option<T>,
    /// A setting both functions receive (e.g. a quantization step).
    pub param: f32,
    /// For values that delimit themselves: how long the one at the start of a slice
    /// is. They then travel without a length prefix.
    pub measure: Option<Measure>,
}

impl<T> Clone for TransientCodec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for TransientCodec<T> {}

impl<T: serde::Serialize + serde::de::DeserializeOwned> TransientCodec<T> {
    /// The serde codec (bincode, see [`crate::net::wire`]).
    pub fn serde() -> Self {
        Self {
            encode: |value, _, out| {
                if let Err(error) = crate::net::wire::codec::encode_into(value, out) {
                    error!(
                        "transient value `{}` cannot be encoded: {error}",
                        std::any::type_name::<T>()
                    );
                }
            },
            decode: |bytes, _| crate::net::wire::codec::decode(bytes).ok(),
            param: 0.0,
            measure: None,
        }
    }
}

/// Per-type state of the transient route.
#[derive(Resource)]
pub(crate) struct TransientType<T> {
    pub(crate) index: u16,
    pub(crate) codec: TransientCodec<T>,
    /// Owned entities and how many more ticks each is resent on.
    resend: HashMap<Entity, u32>,
    /// Round-robin refresh cursor.
    cursor: usize,
    /// Per entity, the sender and sender tick of the last applied value. Ticks are
    /// compared only within one sender's clock: a new owner's clock may be behind.
    /// Entries of entities gone from the world are pruned (see [`prune_applied`]).
    applied: HashMap<NetId, (PeerId, u32)>,
    /// Values for entities not known yet.
    pending: VecDeque<Pending<T>>,
    _type: PhantomData<fn() -> T>,
}

struct Pending<T> {
    from: PeerId,
    id: NetId,
    tick: u32,
    value: T,
    since: Duration,
}

impl<T> TransientType<T> {
    pub(crate) fn new(index: u16, codec: TransientCodec<T>) -> Self {
        Self {
            index,
            codec,
            resend: HashMap::new(),
            cursor: 0,
            applied: HashMap::new(),
            pending: VecDeque::new(),
            _type: PhantomData,
        }
    }
}

/// The send clock and what was decoded this frame.
#[derive(Resource, Default)]
pub(crate) struct TransientState {
    /// The tick of the last send: [`TransientState::clock`] in milliseconds.
    tick: u32,
    /// Real time since the send clock started.
    clock: Duration,
    accumulator: Duration,
    due: bool,
    /// Entries decoded this frame: (sender, type index, id, tick, value bytes).
    incoming: Vec<Incoming>,
    /// Highest tick seen per sender (forgotten when it leaves).
    last_tick: HashMap<PeerId, u32>,
    /// Entries staged for this send tick: (type index, id, value bytes).
    outgoing: Vec<(u16, NetId, Vec<u8>)>,
    /// Per registered type (by index): how its values are delimited.
    measures: Vec<Option<Measure>>,
}

pub(crate) struct Incoming {
    from: PeerId,
    type_index: u16,
    id: NetId,
    tick: u32,
    bytes: Bytes,
}

/// Gives the next transient type its wire index.
fn next_type_index(world: &mut World, measure: Option<Measure>) -> u16 {
    let mut state = world.get_resource_or_init::<TransientState>();
    state.measures.push(measure);
    u16::try_from(state.measures.len() - 1).expect("fewer than 65,536 transient types")
}

/// Adds the route's shared systems. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<TransientState>()
        .init_resource::<TransientConfig>()
        .add_message::<CommitTransient>()
        .configure_sets(
            Stage(PeerSyncSystems::Apply),
            ApplyTransient.in_set(Step::ApplyValues),
        )
        .add_stage_systems(
            PeerSyncSystems::Apply,
            decode_transient.in_set(Step::DecodeValues),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            (advance_send_clock, pack_transient).chain(),
        );
}

/// Adds the per-type systems of transient type `T`.
pub(crate) fn register<T>(app: &mut App, codec: TransientCodec<T>)
where
    T: Component<Mutability = Mutable>,
{
    let index = next_type_index(app.world_mut(), codec.measure);
    app.insert_resource(TransientType::<T>::new(index, codec))
        .add_stage_systems(
            PeerSyncSystems::Collect,
            commit_transient::<T>.in_set(Step::StageWrites),
        )
        .add_stage_systems(
            PeerSyncSystems::Apply,
            apply_transient::<T>.in_set(ApplyTransient),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            stage_transient::<T>
                .after(advance_send_clock)
                .before(pack_transient),
        );
}

fn advance_send_clock(
    time: Res<Time<Real>>,
    config: Res<TransientConfig>,
    mut state: ResMut<TransientState>,
) {
    let interval = Duration::from_secs_f64(1.0 / config.send_rate.max(1.0));
    state.clock += time.delta();
    state.accumulator += time.delta();
    state.due = state.accumulator >= interval;
    if state.due {
        // Never queue a burst after a stall: one send per due frame.
        state.accumulator = state.accumulator.saturating_sub(interval).min(interval);
        // Milliseconds, wrapping after 49 days (see `tick_after`); strictly after the
        // last tick even when two sends fall in one millisecond.
        let now = state.clock.as_millis() as u32;
        state.tick = if tick_after(now, state.tick) {
            now
        } else {
            state.tick.wrapping_add(1)
        };
    }
}

/// Whether sender tick `a` comes after `b`, in serial-number order (RFC 1982): the
/// send clock wraps, and two ticks of one sender are never half its range apart.
pub(crate) fn tick_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Marks changed owned values and, on a send tick, stages what goes out.
fn stage_transient<T: Component>(
    mut kind: ResMut<TransientType<T>>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    local: Res<LocalPeer>,
    changed: Query<Entity, Changed<T>>,
    owned: Query<(Entity, &NetId, &Owner, &T)>,
) {
    let me = Some(local.replica());
    for entity in &changed {
        if owned
            .get(entity)
            .is_ok_and(|(_, _, owner, _)| owner.0 == me)
        {
            kind.resend.insert(entity, config.resend_ticks + 1);
        }
    }
    if !state.due {
        return;
    }
    let index = kind.index;
    let codec = kind.codec;
    let encode = |value: &T, out: &mut Vec<u8>| (codec.encode)(value, codec.param, out);
    let mut sent = bevy::platform::collections::HashSet::new();
    kind.resend.retain(|entity, left| {
        if let Ok((_, id, owner, value)) = owned.get(*entity)
            && owner.0 == me
        {
            let mut bytes = Vec::with_capacity(16);
            encode(value, &mut bytes);
            sent.insert(*entity);
            state.outgoing.push((index, *id, bytes));
            *left -= 1;
            *left > 0
        } else {
            false
        }
    });
    // Round-robin refresh: a slice of everything owned each tick.
    let ticks_per_period = (config.refresh_period.as_secs_f64() * config.send_rate).max(1.0);
    let all: Vec<(Entity, NetId)> = owned
        .iter()
        .filter(|(_, _, owner, _)| owner.0 == me)
        .map(|(e, id, _, _)| (e, *id))
        .collect();
    if all.is_empty() {
        return;
    }
    let slice = ((all.len() as f64 / ticks_per_period).ceil() as usize).max(1);
    for step in 0..slice.min(all.len()) {
        let (entity, id) = all[(kind.cursor + step) % all.len()];
        if sent.contains(&entity) {
            continue;
        }
        if let Ok((_, _, _, value)) = owned.get(entity) {
            let mut bytes = Vec::with_capacity(16);
            encode(value, &mut bytes);
            state.outgoing.push((index, id, bytes));
        }
    }
    kind.cursor = (kind.cursor + slice) % all.len();
}

/// Finds the length of the encoded value at the start of a slice, for codecs whose
/// values delimit themselves (they then travel without a length prefix).
pub type Measure = fn(&[u8]) -> Option<usize>;

/// Packs entries `(type index, entity, encoded value)` into datagram bodies of at most
/// [`SAFE_UNRELIABLE_SIZE`] bytes with their header. `measures[type]` says whether that
/// type's values delimit themselves.
pub fn pack(
    tick: u32,
    sender: ReplicaId,
    mut entries: Vec<(u16, NetId, Vec<u8>)>,
    measures: &[Option<Measure>],
) -> Vec<Bytes> {
    entries.sort_by_key(|(t, id, _)| (*t, id.creator != sender, id.creator, id.counter));
    let budget = SAFE_UNRELIABLE_SIZE - HEADER_SIZE;
    let group_header_room = 6;
    let mut datagrams = Vec::new();
    let mut group = Vec::with_capacity(budget);
    let mut i = 0;
    while i < entries.len() {
        let mut body = Vec::with_capacity(budget);
        write_varint(&mut body, u64::from(tick));
        while i < entries.len() {
            let type_index = entries[i].0;
            let prefixed = measures
                .get(usize::from(type_index))
                .is_none_or(Option::is_none);
            group.clear();
            let mut count = 0u64;
            let mut previous = 0u64;
            let mut j = i;
            while j < entries.len() && entries[j].0 == type_index {
                let (_, id, value) = &entries[j];
                let mark = group.len();
                let foreign = id.creator != sender;
                let delta = if foreign {
                    id.counter
                } else {
                    id.counter.wrapping_sub(previous)
                };
                write_varint(&mut group, (delta << 1) | u64::from(foreign));
                if foreign {
                    write_varint(&mut group, id.creator.0);
                }
                if prefixed {
                    write_varint(&mut group, value.len() as u64);
                }
                group.extend_from_slice(value);
                if body.len() + group_header_room + group.len() > budget {
                    group.truncate(mark);
                    break;
                }
                if !foreign {
                    previous = id.counter;
                }
                count += 1;
                j += 1;
            }
            if count == 0 {
                if body.len() > 5 {
                    break; // start a new datagram
                }
                warn!(
                    "a transient value of `{}` bytes does not fit one datagram; dropped",
                    entries[i].2.len()
                );
                i += 1;
                continue;
            }
            write_varint(&mut body, u64::from(type_index));
            write_varint(&mut body, count);
            body.extend_from_slice(&group);
            i = j;
            if j < entries.len() && entries[j].0 == type_index {
                break; // this type continues in the next datagram
            }
        }
        datagrams.push(Bytes::from(body));
    }
    datagrams
}

/// One decoded value: its type index, entity and encoded value.
pub type Entry = (u16, NetId, Bytes);

/// Decodes a datagram body into entries. `None` if it is malformed anywhere.
/// `measures` has one element per registered type (see [`pack`]).
pub fn unpack(
    body: &Bytes,
    sender: ReplicaId,
    measures: &[Option<Measure>],
) -> Option<(u32, Vec<Entry>)> {
    let mut at = 0;
    let tick = u32::try_from(read_varint(body, &mut at)?).ok()?;
    let mut entries = Vec::new();
    while at < body.len() {
        let type_index = u16::try_from(read_varint(body, &mut at)?).ok()?;
        let measure = *measures.get(usize::from(type_index))?;
        let count = read_varint(body, &mut at)?;
        if count as usize > body.len() {
            return None;
        }
        let mut previous = 0u64;
        for _ in 0..count {
            let key = read_varint(body, &mut at)?;
            let foreign = key & 1 == 1;
            let id = if foreign {
                NetId {
                    creator: ReplicaId(read_varint(body, &mut at)?),
                    counter: key >> 1,
                }
            } else {
                previous = previous.checked_add(key >> 1)?;
                NetId {
                    creator: sender,
                    counter: previous,
                }
            };
            let len = match measure {
                Some(measure) => measure(body.get(at..)?)?,
                None => read_varint(body, &mut at)? as usize,
            };
            let end = at.checked_add(len).filter(|end| *end <= body.len())?;
            entries.push((type_index, id, body.slice(at..end)));
            at = end;
        }
    }
    Some((tick, entries))
}

/// Sends this tick's entries.
fn pack_transient(
    mut state: ResMut<TransientState>,
    local: Res<LocalPeer>,
    mut outbox: ResMut<Outbox>,
) {
    if state.outgoing.is_empty() {
        return;
    }
    let entries = std::mem::take(&mut state.outgoing);
    for datagram in pack(state.tick, local.replica(), entries, &state.measures) {
        outbox.push(
            Recipients::All,
            Channel::Unreliable,
            Message::Transient(datagram),
        );
    }
}

/// Decodes transient datagrams, applying the per-peer budget and tick checks.
fn decode_transient(
    mut inbox: ResMut<Inbox>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    peers: Res<Peers>,
    mut senders: Query<(&PeerReplica, &mut PeerStats)>,
    mut left: MessageReader<PeerLeft>,
) {
    for left in left.read() {
        state.last_tick.remove(&left.peer);
    }
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    let measures = std::mem::take(&mut state.measures);
    for (from, body) in std::mem::take(&mut inbox.transient) {
        let Some((replica, mut stats)) = peers.entity(from).and_then(|e| senders.get_mut(e).ok())
        else {
            continue;
        };
        let count = per_peer.entry(from).or_default();
        *count += 1;
        if *count > config.max_datagrams_per_peer_per_frame {
            stats.count_drop(DropReason::OverBudget);
            continue;
        }
        let Some((tick, entries)) = unpack(&body, replica.0, &measures) else {
            debug!("dropped a malformed transient datagram from peer `{from}`");
            stats.count_drop(DropReason::Malformed);
            continue;
        };
        let last = state.last_tick.get(&from).copied();
        if let Some(last) = last
            && tick_after(tick, last)
            && tick.wrapping_sub(last) > config.max_tick_jump
        {
            debug!(
                "dropped a transient datagram from peer `{from}`: tick jumped from `{last}` to `{tick}`"
            );
            stats.count_drop(DropReason::Stale);
            continue;
        }
        if last.is_none_or(|last| tick_after(tick, last)) {
            state.last_tick.insert(from, tick);
        }
        state
            .incoming
            .extend(entries.into_iter().map(|(type_index, id, bytes)| Incoming {
                from,
                type_index,
                id,
                tick,
                bytes,
            }));
    }
    state.measures = measures;
}

/// Applies this frame's values of `T`, checking order and ownership.
#[allow(clippy::too_many_arguments)]
fn apply_transient<T: Component<Mutability = Mutable> + Send + Sync + 'static>(
    mut commands: Commands,
    mut kind: ResMut<TransientType<T>>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    time: Res<Time<Real>>,
    net: Res<NetEntities>,
    peers: Res<Peers>,
    owners: Query<&Owner>,
    replicas: Query<&PeerReplica>,
    mut stats: Query<&mut PeerStats>,
    mut targets: Query<&mut T>,
    mut smoothing: Query<&mut crate::transient::smoothing::Interpolated<T>>,
) {
    let now = time.elapsed();
    let index = kind.index;
    let codec = kind.codec;
    let mut mine = Vec::new();
    state.incoming.retain(|incoming| {
        if incoming.type_index == index {
            mine.push((
                incoming.from,
                incoming.id,
                incoming.tick,
                incoming.bytes.clone(),
            ));
            false
        } else {
            true
        }
    });
    let mut count_drop = |peer: PeerId, reason: DropReason| {
        if let Some(mut stats) = peers.entity(peer).and_then(|e| stats.get_mut(e).ok()) {
            stats.count_drop(reason);
        }
    };
    let mut values: Vec<Pending<T>> = Vec::new();
    for (from, id, tick, bytes) in mine {
        match (codec.decode)(&bytes, codec.param) {
            Some(value) => values.push(Pending {
                from,
                id,
                tick,
                value,
                since: now,
            }),
            None => count_drop(from, DropReason::Malformed),
        }
    }
    // Values held for entities that were not known yet come first (they are older).
    let held = std::mem::take(&mut kind.pending);
    let mut sender_cache: Option<(PeerId, Option<ReplicaId>)> = None;
    for pending in held.into_iter().chain(values) {
        let replica_of_sender = match sender_cache {
            Some((peer, replica)) if peer == pending.from => replica,
            _ => {
                let replica = peers
                    .entity(pending.from)
                    .and_then(|e| replicas.get(e).ok())
                    .map(|r| r.0);
                sender_cache = Some((pending.from, replica));
                replica
            }
        };
        let Some(entity) = net.entity(pending.id) else {
            if now.saturating_sub(pending.since) < config.pending_timeout
                && kind.pending.len() < 4_096
            {
                kind.pending.push_back(pending);
            } else {
                count_drop(pending.from, DropReason::Unknown);
            }
            continue;
        };
        let owner = owners.get(entity).ok().and_then(|o| o.0);
        if owner.is_none() || owner != replica_of_sender {
            count_drop(pending.from, DropReason::NotOwner);
            continue;
        }
        let last = kind.applied.get(&pending.id).copied();
        if last
            .is_some_and(|(sender, last)| sender == pending.from && !tick_after(pending.tick, last))
        {
            count_drop(pending.from, DropReason::Stale);
            continue;
        }
        kind.applied
            .insert(pending.id, (pending.from, pending.tick));
        if let Ok(mut buffer) = smoothing.get_mut(entity) {
            let sent = Duration::from_millis(u64::from(pending.tick));
            buffer.push_sample(pending.from, sent, now, pending.value);
        } else if let Ok(mut current) = targets.get_mut(entity) {
            *current = pending.value;
        } else {
            commands.entity(entity).insert(pending.value);
        }
    }
    prune_applied(&mut kind.applied, &net);
}

/// Forgets the last applied ticks of entities no longer in the world, once they
/// outnumber those in it (so the pass is paid for by as many despawns). A late value
/// for one of them waits as unknown and times out; one that comes back (its owner
/// back) takes its owner's next value.
fn prune_applied(applied: &mut HashMap<NetId, (PeerId, u32)>, net: &NetEntities) {
    if applied.len() > 2 * net.len() + 256 {
        applied.retain(|id, _| net.entity(*id).is_some());
    }
}

/// Stages committed values of `T` for the durable document.
fn commit_transient<T: Component>(
    kind: Res<TransientType<T>>,
    index: Res<crate::durable::DurableIndex<T>>,
    local: Res<LocalPeer>,
    mut commits: MessageReader<CommitTransient>,
    values: Query<(&NetId, &Owner, &T)>,
    mut staged: ResMut<crate::durable::Staged>,
) {
    for commit in commits.read() {
        let Ok((id, owner, value)) = values.get(commit.entity) else {
            continue;
        };
        if owner.0 != Some(local.replica()) {
            warn!("cannot commit `{id}`: this peer does not own it");
            continue;
        }
        let mut bytes = Vec::new();
        (kind.codec.encode)(value, kind.codec.param, &mut bytes);
        staged.push(*id, index.index(), yrs::Any::Buffer(bytes.into()));
    }
}

/// Reads a committed value of `T` from its fields map in the document.
pub(crate) fn decode_committed<T: Component<Mutability = Mutable>>(
    world: &World,
    fields: &yrs::MapRef,
    txn: &yrs::Transaction,
) -> Result<crate::durable::Decoded, String> {
    let Some(yrs::Any::Buffer(bytes)) = crate::durable::whole_value(fields, txn) else {
        return Err("a committed transient value is not bytes".into());
    };
    let codec = world.resource::<TransientType<T>>().codec;
    let value =
        (codec.decode)(&bytes, codec.param).ok_or("a committed transient value does not decode")?;
    Ok(Box::new(value))
}

/// Puts committed values of `T` on their entities.
pub(crate) fn apply_committed<T: Component<Mutability = Mutable>>(
    world: &mut World,
    values: Vec<(Entity, crate::durable::Decoded)>,
) {
    // Every entity exists (materialised this frame); should one be gone, the rest
    // still go in.
    let _ = world.try_insert_batch(values.into_iter().map(|(entity, value)| {
        let value = *value
            .downcast::<T>()
            .expect("a type's values are decoded by that type's decode fn");
        (entity, value)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{Replicated, SyncAppExt};
    use crate::testing::TestRoom;
    use crate::transient::transform_codec::TransformEncoding;

    /// What a receiver keeps per entity and per sender does not outgrow the room:
    /// entries of despawned entities go once they outnumber the living, and a sender's
    /// last tick goes when it leaves.
    #[test]
    fn receivers_forget_despawned_entities_and_departed_senders() {
        let mut room = TestRoom::new(3);
        let setup = |app: &mut App| {
            app.sync_transform(TransformEncoding::Lossless);
        };
        let a = room.add_peer(setup);
        let b = room.add_peer(setup);
        assert!(room.step_until(10, TestRoom::fully_connected));
        let spawned: Vec<Entity> = (0..300)
            .map(|n| {
                let at = Transform::from_xyz(n as f32, 0.0, 0.0);
                room.app_mut(a).world_mut().spawn((Replicated, at)).id()
            })
            .collect();
        let applied = |room: &TestRoom| {
            let world = room.app(b).world();
            world.resource::<TransientType<Transform>>().applied.len()
        };
        let moved = |room: &mut TestRoom, entity: Entity| {
            let world = room.app_mut(a).world_mut();
            world.get_mut::<Transform>(entity).unwrap().translation.y += 1.0;
        };
        room.step_n(5);
        for &entity in &spawned {
            moved(&mut room, entity);
        }
        assert!(room.step_until(20, |room| applied(room) == 300));
        for entity in spawned {
            room.app_mut(a).world_mut().despawn(entity);
        }
        let last = room
            .app_mut(a)
            .world_mut()
            .spawn((Replicated, Transform::default()))
            .id();
        assert!(room.step_until(20, |room| {
            room.app(b).world().resource::<NetEntities>().len() == 1
        }));
        moved(&mut room, last);
        assert!(room.step_until(20, |room| applied(room) == 1));

        assert!(
            !room
                .app(b)
                .world()
                .resource::<TransientState>()
                .last_tick
                .is_empty()
        );
        room.disconnect(a);
        room.step_n(3);
        assert!(
            room.app(b)
                .world()
                .resource::<TransientState>()
                .last_tick
                .is_empty()
        );
    }

    fn id(creator: u64, counter: u64) -> NetId {
        NetId {
            creator: ReplicaId(creator),
            counter,
        }
    }

    #[test]
    fn packs_under_the_datagram_limit_and_unpacks_the_same() {
        let me = ReplicaId(7);
        let mut entries = Vec::new();
        for n in 1..=500u64 {
            entries.push((0u16, id(7, n), vec![n as u8; 10]));
        }
        entries.push((1u16, id(9, 3), vec![1, 2, 3]));
        let datagrams = pack(42, me, entries.clone(), &[None, None]);
        assert!(datagrams.len() > 1);
        let mut back = Vec::new();
        for d in &datagrams {
            assert!(
                d.len() + HEADER_SIZE <= SAFE_UNRELIABLE_SIZE,
                "{} bytes",
                d.len()
            );
            let (tick, decoded) = unpack(d, me, &[None, None]).unwrap();
            assert_eq!(tick, 42);
            back.extend(decoded.into_iter().map(|(t, i, b)| (t, i, b.to_vec())));
        }
        back.sort_by_key(|(t, i, _)| (*t, *i));
        entries.sort_by_key(|(t, i, _)| (*t, *i));
        assert_eq!(back, entries);
        // 500 ten-byte values: one byte of id and one of length each, plus headers.
        let total: usize = datagrams.iter().map(|d| d.len()).sum();
        assert!(total < 500 * 12 + 100, "{total}");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let one: &[Option<Measure>] = &[None];
        assert!(unpack(&Bytes::new(), ReplicaId(1), one).is_none());
        let unknown_type = Bytes::from_static(&[1, 5, 1]);
        assert!(unpack(&unknown_type, ReplicaId(1), one).is_none());
        let past_the_end = Bytes::from_static(&[1, 0, 1, 2, 9]);
        assert!(unpack(&past_the_end, ReplicaId(1), one).is_none());
        let mut state = 99u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let fixed: Measure = |b| (b.len() >= 3).then_some(3);
            let _ = unpack(
                &Bytes::from(bytes),
                ReplicaId(1),
                &[None, Some(fixed), None],
            );
        }
    }
}
