//! The transient route: latest-wins component values on the unreliable channel, for
//! positions, cursors and anything that changes every frame.
//!
//! The owner of a replicated entity sends its changed transient components at
//! [`TransientConfig::send_rate`] (60 Hz by default), many entities per datagram,
//! each datagram at most [`SAFE_UNRELIABLE_SIZE`](crate::net::wire::SAFE_UNRELIABLE_SIZE) bytes. A changed value is sent again
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
//! each drop is counted on the sender's [`PeerStats`](crate::net::stats::PeerStats). A value for an entity that is
//! not known yet (its spawn is still on the reliable channel) is held for
//! [`TransientConfig::pending_timeout`] and applied when the entity appears.
//!
//! Components that implement [`Smooth`](smoothing::Smooth) (like `Transform`) can be played back through
//! an interpolation buffer instead of snapping: see [`smoothing`].
//!
//! ## Datagram body
//! ```text
//! varint  sender tick (milliseconds of the sender's send clock)
//! repeat: varint type (its wire index), varint count,
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

pub(crate) mod pack;
mod receive;
mod send;
pub mod smoothing;
pub mod transform_codec;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use bytes::Bytes;

pub use transform_codec::TransformEncoding;

use crate::entity::NetId;
use crate::net::peer::PeerId;
pub use crate::registry::Measure;
use crate::registry::{DocFns, Framing, Route, TypeFns};
use crate::schedule::{PeerSyncSystems, Stage, StageAppExt, Step};

/// Where remote transient values are applied (in `PreUpdate`).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApplyTransient;

/// Commit the current transient values of an entity (one the local peer owns) to the
/// durable document, e.g. when a drag ends: late joiners then start from it, and it
/// survives its owner leaving. Transient values are stored there as their wire bytes,
/// and the owner's value becomes what its codec reads back from them (a quantized
/// position is rounded), so that every peer holds the same committed state.
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
    /// The serde codec (bincode, the wire's codec for serde types).
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
    pub(super) resend: HashMap<Entity, u32>,
    /// Round-robin refresh cursor.
    pub(super) cursor: usize,
    /// Per entity, the sender and sender tick of the last applied value. Ticks are
    /// compared only within one sender's clock: a new owner's clock may be behind.
    /// Entries of entities gone from the world are pruned (see [`prune_applied`]).
    pub(super) applied: HashMap<NetId, (PeerId, u32)>,
    /// Values for entities not known yet.
    pub(super) pending: VecDeque<Pending<T>>,
    _type: PhantomData<fn() -> T>,
}

pub(super) struct Pending<T> {
    pub(super) from: PeerId,
    pub(super) id: NetId,
    pub(super) tick: u32,
    pub(super) value: T,
    pub(super) since: Duration,
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
    pub(super) tick: u32,
    /// Real time since the send clock started.
    pub(super) clock: Duration,
    pub(super) accumulator: Duration,
    pub(super) due: bool,
    /// Entries decoded this frame, by type index (each type's apply system takes its
    /// own, without walking the others').
    pub(super) incoming: HashMap<u16, Vec<Incoming>>,
    /// Highest tick seen per sender (forgotten when it leaves).
    pub(super) last_tick: HashMap<PeerId, u32>,
    /// Entries staged for this send tick: (type index, id, value bytes).
    pub(super) outgoing: Vec<(u16, NetId, Vec<u8>)>,
}

pub(crate) struct Incoming {
    pub(super) from: PeerId,
    pub(super) id: NetId,
    pub(super) tick: u32,
    pub(super) bytes: Bytes,
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
            receive::decode_transient.in_set(Step::DecodeValues),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            (send::advance_send_clock, send::pack_transient).chain(),
        );
}

/// Registers `T` as a transient type under `name` with `codec`, and adds its systems.
///
/// # Panics
/// If `T` or `name` is registered already.
fn register<T>(app: &mut App, name: String, codec: TransientCodec<T>)
where
    T: Component<Mutability = Mutable>,
{
    // Committed values live in the entity document under the same name; a missing one
    // removes nothing (the value may simply never have been committed).
    let fns = TypeFns {
        doc: Some(DocFns {
            decode: receive::decode_committed::<T>,
            apply: receive::apply_committed::<T>,
            remove: |_| {},
        }),
        framing: match codec.measure {
            Some(measure) => Framing::Measured(measure),
            None => Framing::Prefixed,
        },
        ..TypeFns::EMPTY
    };
    let index = crate::registry::register::<T>(app, name, Route::Transient, fns);
    app.insert_resource(TransientType::<T>::new(index, codec))
        .add_stage_systems(
            PeerSyncSystems::Collect,
            send::commit_transient::<T>.in_set(Step::StageWrites),
        )
        .add_stage_systems(
            PeerSyncSystems::Apply,
            receive::apply_transient::<T>.in_set(ApplyTransient),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            send::stage_transient::<T>
                .after(send::advance_send_clock)
                .before(send::pack_transient),
        );
}

/// Registers `T` with the serde codec. Called by
/// `sync_component::<T>(Route::Transient)`.
pub(crate) fn register_serde<T>(app: &mut App, name: String)
where
    T: Component<Mutability = Mutable> + serde::Serialize + serde::de::DeserializeOwned,
{
    register::<T>(app, name, TransientCodec::serde());
}

/// Registration of transient types with codecs of their own, and of `Transform`.
pub trait TransientAppExt {
    /// Synchronises `T` on the transient route with your own codec, under `name`.
    ///
    /// # Panics
    /// If `T`, or another type under the same name, is registered already.
    fn sync_transient_with<T>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        codec: TransientCodec<T>,
    ) -> &mut Self
    where
        T: Component<Mutability = Mutable>;

    /// Synchronises `Transform` on the transient route with `encoding`, smoothed on
    /// receivers (see [`smoothing`]). Its name is `Transform` (lossless) or
    /// `Transform@<precision>` (quantized).
    ///
    /// # Panics
    /// If `Transform` is registered already.
    fn sync_transform(&mut self, encoding: TransformEncoding) -> &mut Self;
}

impl TransientAppExt for App {
    fn sync_transient_with<T>(
        &mut self,
        name: impl Into<Cow<'static, str>>,
        codec: TransientCodec<T>,
    ) -> &mut Self
    where
        T: Component<Mutability = Mutable>,
    {
        register::<T>(self, name.into().into_owned(), codec);
        self
    }

    fn sync_transform(&mut self, encoding: TransformEncoding) -> &mut Self {
        let name = match encoding {
            TransformEncoding::Lossless => "Transform".to_owned(),
            TransformEncoding::Quantized { position_precision } => {
                format!("Transform@{position_precision}")
            }
        };
        self.sync_transient_with::<Transform>(name, transform_codec::codec(encoding));
        smoothing::SmoothAppExt::smooth_component::<Transform>(self, Default::default())
    }
}
