//! # bevy_peer_sync
//!
//! Keeps Bevy ECS state in sync between players connected peer to peer over WebRTC,
//! with no game server in the hot path. Traffic is split by what it can tolerate:
//! **transient** state (positions, cursors) goes latest-wins on an unreliable channel;
//! **durable** state (spawns, ownership, inventories, text) lives in a [`yrs`] CRDT
//! document on the reliable channel, so concurrent edits merge and late joiners
//! converge.
//!
//! ## Joining a room
//!
//! Peers meet through a matchbox signaling server (run `cargo run --bin
//! peer-sync-signal`, or start one in-process with
//! [`net::signaling::start_signaling_server`]) and then talk directly in a full mesh.
//!
//! ```no_run
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//!
//! App::new()
//!     .add_plugins(MinimalPlugins)
//!     .add_plugins(PeerSyncPlugin::new("ws://127.0.0.1:3536/my_room"))
//!     .add_systems(Update, |mut joined: MessageReader<PeerJoined>| {
//!         for joined in joined.read() {
//!             info!("`{}` joined", joined.peer);
//!         }
//!     })
//!     .run();
//! ```
//!
//! A room on this machine uses no ICE servers. A room anywhere else must say which
//! ones ([`PeerSyncPlugin::with_ice_servers`], [`PeerSyncPlugin::with_public_stun`] or
//! [`PeerSyncPlugin::without_ice_servers`]): public STUN is never a silent default.
//!
//! ## Testing without a network
//!
//! Everything above the transport runs unchanged over an in-process
//! [`net::transport::memory::MemoryNetwork`] with a seeded link conditioner;
//! [`testing::TestRoom`] steps several `App`s frame by frame:
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::testing::TestRoom;
//! use bytes::Bytes;
//!
//! let mut room = TestRoom::new(1);
//! let a = room.add_peer(|_| {});
//! let b = room.add_peer(|_| {});
//! room.step_n(3);
//!
//! room.app_mut(a).world_mut().write_message(SendPayload {
//!     to: Recipients::All,
//!     channel: Channel::Reliable,
//!     payload: Bytes::from_static(b"hello"),
//! });
//! room.step_n(2);
//! let received = room.received_payloads(b);
//! assert_eq!(received[0].payload, Bytes::from_static(b"hello"));
//! ```
//!
//! ## Syncing components
//!
//! Register each type once, with its route, in the same order on every build:
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::testing::TestRoom;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
//! struct Score(u32);
//!
//! fn setup(app: &mut App) {
//!     app.sync_component::<Score>(Route::Durable)
//!         .sync_transform(TransformEncoding::Quantized { position_precision: 0.01 });
//! }
//!
//! let mut room = TestRoom::new(7);
//! let a = room.add_peer(setup);
//! let b = room.add_peer(setup);
//! room.step_n(3);
//!
//! // Peer a spawns a replicated entity: it owns it, everyone sees it.
//! let entity = room
//!     .app_mut(a)
//!     .world_mut()
//!     .spawn((Replicated, Score(1), Transform::from_xyz(1.0, 2.0, 0.0)))
//!     .id();
//! room.step_n(10);
//!
//! let world = room.app_mut(b).world_mut();
//! let (score, transform) = world.query::<(&Score, &Transform)>().single(world).unwrap();
//! assert_eq!(*score, Score(1));
//! assert!((transform.translation.x - 1.0).abs() < 0.01);
//! # let _ = entity;
//! ```
//!
//! A type is stored and sent under its name without module path (`Score` above), so
//! moving it to another module changes nothing on the wire or on disk; pin a name of
//! your own with `Route::Durable.named("score")` (see [`registry`]).
//!
//! ## Peer data
//!
//! Every peer is the server of the others, so what a peer sends is refused and
//! counted on its [`PeerStats`](net::stats::PeerStats) before it costs more than a
//! small multiple of its size: document messages pass a check that reads them as
//! yrs would before yrs reads any byte (every count and length within the bytes,
//! nesting bounded, the estimated cost at most 32 bytes per byte), y-sync step 1s are
//! answered at most every 250 ms per peer (whole documents every 3 s), and live
//! entity updates that wait for their ownership are held within per-peer limits. The
//! README lists every limit, its default and what happens when it is hit.
//!
//! ## Layout
//!
//! | module | what |
//! |---|---|
//! | [`net`] | peers as entities, the session (handshake, routing, payloads, pings), counters, connection life, the transport boundary and its backends, signaling |
//! | [`doc`] | the yrs sync engine (y-sync, catch-up in pieces, out-of-order updates) and the room's [`SharedDoc`](doc::SharedDoc) |
//! | [`durable`] | replicated entities and durable components in the entity document, ownership |
//! | [`transient`] | latest-wins values on the unreliable channel, `Transform` codecs, smoothing |
//! | [`presence`] | who is here: name, colour, cursor, custom types, timeouts |
//! | [`registry`] | the one registry of synced types: names, routes, wire indices |
//! | [`schedule`] | where the plugin's systems run (one schedule per set) |
//! | [`persistence`] | local-first saves (a file, or `localStorage` in the browser) |
//! | [`undo`] | undo/redo of this peer's shared-document edits |
//! | [`diagnostics`] | RTT, loss, bandwidth, document figures; the egui overlay |
//! | [`testing`] | [`testing::TestRoom`]: several apps over the in-memory network |
//! | [`error`](mod@error) | the crate's error types |

#![warn(missing_docs)]

pub mod diagnostics;
pub mod doc;
pub mod durable;
pub mod entity;
pub mod error;
pub mod net;
pub mod persistence;
mod plugin;
pub mod presence;
pub mod registry;
pub mod schedule;
pub mod testing;
pub mod transient;
pub mod undo;

pub use yrs;

pub use crate::plugin::PeerSyncPlugin;
pub use crate::schedule::PeerSyncSystems;

/// Not part of the API: what benches and hostile tests reach below it (raw
/// transactions, the wire format, the transient packer). It may change in any release.
#[doc(hidden)]
pub mod internals {
    use crate::doc::SharedDoc;
    use crate::durable::EntityDoc;

    /// The yrs client id the app of `world` writes document `doc` with this run (`0`
    /// the shared document, `1` the entity document): the only one its live updates
    /// may carry blocks of.
    pub fn writes_as(world: &bevy::prelude::World, doc: u8) -> u64 {
        world
            .resource::<crate::net::peer::LocalPeer>()
            .client_id(doc)
    }

    /// The hello the app of `world` would send to `peer` now (with its proof once it
    /// has the peer's), saying `heard` and `waiting`: for tests that replay or flood
    /// one. `None` without a link to `peer`.
    pub fn hello_to(
        world: &bevy::prelude::World,
        peer: crate::net::peer::PeerId,
        heard: bool,
        waiting: bool,
    ) -> Option<crate::net::wire::Hello> {
        crate::net::session::hello_to(world, peer, heard, waiting)
    }

    /// A raw write transaction on the entity document: skips the ECS and the
    /// ownership rules on this peer, as a hostile peer would. Other peers judge what
    /// it sends like any live update.
    pub fn entity_doc_transact_mut(doc: &EntityDoc) -> yrs::TransactionMut<'_> {
        doc.synced_doc().transact_mut()
    }

    /// The wire format: datagrams, fragments, varints.
    pub mod wire {
        pub use crate::net::wire::*;
    }

    pub use crate::presence::encode_cursor;
    pub use crate::registry::Framing;
    pub use crate::transient::pack::{Entry, pack, unpack};

    /// Checks and decodes a `Doc` wire body (document id, then a y-sync message) as a
    /// receiver does before anything is applied: what a peer's document message costs
    /// before it is refused or accepted. A step 2 or update's payload is decoded too.
    pub fn decode_doc_message(body: &[u8]) -> Result<(), crate::net::stats::DropReason> {
        let (_, message) = crate::doc::decode_sync(body)?;
        match message {
            yrs::sync::SyncMessage::SyncStep1(_) => Ok(()),
            yrs::sync::SyncMessage::SyncStep2(update) | yrs::sync::SyncMessage::Update(update) => {
                crate::doc::decode_update(&update, &Default::default()).map(|_| ())
            }
        }
    }

    /// How often the entity document's shadow (the copy live updates are tried on)
    /// was rebuilt: a pass over the whole document each.
    pub fn shadow_rebuilds(doc: &EntityDoc) -> u64 {
        doc.shadow_rebuilds()
    }

    /// Whether yrs itself keeps any update pending in the room document (bounded:
    /// see [`MAX_PENDING_MERGES`](crate::doc::MAX_PENDING_MERGES)).
    pub fn pending_in_yrs(doc: &SharedDoc) -> bool {
        use yrs::{ReadTxn, Transact};
        doc.synced().doc().transact().has_missing_updates()
    }

    /// Runs of items whose depth in shared types the room document keeps (see
    /// [`MAX_TYPE_DEPTH`](crate::doc::MAX_TYPE_DEPTH)): a few per client and edit burst.
    pub fn level_runs(doc: &SharedDoc) -> usize {
        doc.synced().level_runs()
    }

    /// Collected blocks yrs kept pending that the room document's level index looked
    /// at so far, to tell whether yrs has placed them.
    pub fn collected_visits(doc: &SharedDoc) -> u64 {
        doc.synced().collected_visits()
    }

    /// Drops this frame's local edits of the room document before they leave, as if
    /// lost on the way. Returns whether there were any.
    pub fn drop_local_update(doc: &SharedDoc) -> bool {
        doc.synced().take_local_update().is_some()
    }
}

/// What most apps need.
pub mod prelude {
    pub use crate::PeerSyncPlugin;
    pub use crate::PeerSyncSystems;
    pub use crate::diagnostics::RoomDiagnostics;
    pub use crate::doc::{SharedDoc, SharedDocChanged};
    pub use crate::durable::{
        ClaimOwnership, OwnershipRequested, RequestOwnership, TransferOwnership,
    };
    pub use crate::entity::{NetEntities, NetId, Owner, Replicated};
    pub use crate::net::connection::{
        Connection, ConnectionState, ConnectionStateChanged, SetOnline,
    };
    pub use crate::net::identity::{PeerKey, RoomSecret};
    pub use crate::net::peer::{
        LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerLink, PeerRejected, Peers, RejectReason,
        ReplicaId,
    };
    pub use crate::net::session::{PayloadReceived, Recipients, SendPayload};
    pub use crate::net::stats::{DropReason, PeerStats};
    pub use crate::net::transport::{Channel, TransportIo};
    pub use crate::presence::{Away, LocalPresence, PeerCursor, PeerPresence, PresenceConfig};
    pub use crate::registry::{Route, SyncAppExt, SyncRegistry};
    pub use crate::transient::smoothing::{Smooth, SmoothAppExt, SmoothingConfig};
    pub use crate::transient::transform_codec::TransformEncoding;
    pub use crate::transient::{CommitTransient, TransientAppExt, TransientConfig};
}
