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
//! [`signaling::start_signaling_server`]) and then talk directly in a full mesh.
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
//! [`transport::memory::MemoryNetwork`] with a seeded link conditioner;
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
pub mod error;
pub mod net;
pub mod persistence;
pub mod presence;
pub mod registry;
pub mod schedule;
pub mod testing;
pub mod transient;
pub mod undo;

#[cfg(not(target_arch = "wasm32"))]
pub use net::signaling;
pub use net::{connection, peer, session, stats, transport, wire};

use bevy::prelude::*;
pub use yrs;

use crate::error::PeerSyncError;
use crate::net::peer::{LocalPeer, PeerJoined, PeerLeft, PeerRejected, Peers};
use crate::net::session::{
    Inbox, Outbox, PayloadReceived, SendPayload, SessionConfig, SessionState,
};
use crate::net::transport::TransportSystems;
use crate::net::transport::matchbox::{IceServers, MatchboxConfig, MatchboxTransportPlugin};
use crate::net::transport::memory::{MemoryNetwork, MemoryTransportPlugin};
use crate::net::wire::WireLimits;
use crate::registry::SyncRegistry;
use crate::schedule::StageAppExt;

/// What most apps need.
pub mod prelude {
    pub use crate::PeerSyncPlugin;
    pub use crate::PeerSyncSystems;
    pub use crate::diagnostics::RoomDiagnostics;
    pub use crate::doc::{SharedDoc, SharedDocChanged};
    pub use crate::durable::{
        ClaimOwnership, NetId, Owner, OwnershipRequested, Replicated, RequestOwnership, SyncAppExt,
        TransferOwnership,
    };
    pub use crate::net::connection::{
        Connection, ConnectionState, ConnectionStateChanged, SetOnline,
    };
    pub use crate::net::peer::{
        LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerLink, PeerRejected, Peers, RejectReason,
        ReplicaId,
    };
    pub use crate::net::session::{PayloadReceived, Recipients, SendPayload};
    pub use crate::net::stats::{DropReason, PeerStats};
    pub use crate::net::transport::{Channel, TransportIo};
    pub use crate::presence::{Away, LocalPresence, PeerCursor, PeerPresence, PresenceConfig};
    pub use crate::registry::Route;
    pub use crate::transient::smoothing::{Smooth, SmoothAppExt, SmoothingConfig};
    pub use crate::transient::transform_codec::TransformEncoding;
    pub use crate::transient::{CommitTransient, TransientConfig};
}

/// Where the plugin's systems run, in order.
///
/// `PreUpdate`: [`TransportSystems::Receive`] → [`PeerSyncSystems::Receive`] →
/// [`PeerSyncSystems::Apply`]. `PostUpdate`: [`PeerSyncSystems::Collect`] →
/// [`PeerSyncSystems::Send`] → [`TransportSystems::Send`]. Game systems in `Update`
/// see this frame's remote changes and their own changes leave the same frame.
///
/// In each set one system runs the plugin's own systems of that set, single-threaded,
/// from the set's [`Stage`](schedule::Stage) schedule (see [`schedule`] for why).
#[derive(SystemSet, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerSyncSystems {
    /// Link events and datagrams are decoded and routed.
    Receive,
    /// Remote state is applied to the world.
    Apply,
    /// Local changes are gathered for sending.
    Collect,
    /// Everything queued is encoded and handed to the transport.
    Send,
}

#[derive(Debug, Clone)]
enum TransportChoice {
    Matchbox(MatchboxConfig),
    Memory(MemoryNetwork),
    Custom,
}

/// Adds peer-to-peer sync to an app.
#[derive(Debug, Clone)]
pub struct PeerSyncPlugin {
    transport: TransportChoice,
    session: SessionConfig,
}

impl PeerSyncPlugin {
    /// Joins the room at `room_url` (e.g. `ws://127.0.0.1:3536/my_room`) over WebRTC.
    ///
    /// A room on this machine needs nothing else. For a room elsewhere choose ICE
    /// servers, or the plugin refuses to build.
    pub fn new(room_url: impl Into<String>) -> Self {
        Self {
            transport: TransportChoice::Matchbox(MatchboxConfig::new(room_url)),
            session: SessionConfig::default(),
        }
    }

    /// Joins an in-process [`MemoryNetwork`], for tests and simulations.
    pub fn in_memory(network: &MemoryNetwork) -> Self {
        Self {
            transport: TransportChoice::Memory(network.clone()),
            session: SessionConfig::default(),
        }
    }

    /// Adds no backend: your own systems fill and drain
    /// [`TransportIo`](transport::TransportIo) in [`TransportSystems`].
    pub fn with_custom_transport() -> Self {
        Self {
            transport: TransportChoice::Custom,
            session: SessionConfig::default(),
        }
    }

    fn set_ice(mut self, ice: IceServers) -> Self {
        if let TransportChoice::Matchbox(config) = &mut self.transport {
            config.ice_servers = ice;
        }
        self
    }

    /// Uses these STUN/TURN servers.
    pub fn with_ice_servers(self, servers: matchbox_socket::RtcIceServerConfig) -> Self {
        self.set_ice(IceServers::Custom(servers))
    }

    /// Opts in to matchbox's default public STUN servers.
    pub fn with_public_stun(self) -> Self {
        self.set_ice(IceServers::PublicStun)
    }

    /// Uses no ICE servers (host candidates only: one machine or a LAN).
    pub fn without_ice_servers(self) -> Self {
        self.set_ice(IceServers::None)
    }

    /// How to retry when the room is lost (WebRTC only; the default retries for ever
    /// with backoff from 250 ms to 8 s).
    pub fn with_reconnect(mut self, policy: connection::ReconnectPolicy) -> Self {
        if let TransportChoice::Matchbox(config) = &mut self.transport {
            config.reconnect = policy;
        }
        self
    }

    /// Limits on what peers may send.
    pub fn with_limits(mut self, limits: WireLimits) -> Self {
        self.session.limits = limits;
        self
    }

    /// Session settings (limits, ping interval).
    pub fn with_session_config(mut self, config: SessionConfig) -> Self {
        self.session = config;
        self
    }

    /// Checks the configuration without building: the same checks `build` makes.
    pub fn try_validate(&self) -> Result<(), PeerSyncError> {
        match &self.transport {
            TransportChoice::Matchbox(config) => config.resolved_ice_servers().map(|_| ()),
            TransportChoice::Memory(_) | TransportChoice::Custom => Ok(()),
        }
    }
}

impl Plugin for PeerSyncPlugin {
    /// # Panics
    /// If the configuration is invalid (see [`PeerSyncPlugin::try_validate`]): a room
    /// url that is not `ws://`/`wss://`, or a remote room with no ICE choice.
    fn build(&self, app: &mut App) {
        if let Err(error) = self.try_validate() {
            panic!("PeerSyncPlugin: {error}");
        }
        app.init_resource::<LocalPeer>()
            .init_resource::<Peers>()
            .init_resource::<SyncRegistry>()
            .init_resource::<SessionState>()
            .init_resource::<session::FreshDocs>()
            .init_resource::<Outbox>()
            .init_resource::<Inbox>()
            .insert_resource(self.session.clone())
            .add_message::<PeerJoined>()
            .add_message::<PeerLeft>()
            .add_message::<PeerRejected>()
            .add_message::<SendPayload>()
            .add_message::<PayloadReceived>()
            .configure_sets(
                PreUpdate,
                (
                    TransportSystems::Receive,
                    PeerSyncSystems::Receive,
                    PeerSyncSystems::Apply,
                )
                    .chain(),
            )
            .configure_sets(
                PostUpdate,
                (
                    PeerSyncSystems::Collect,
                    PeerSyncSystems::Send,
                    TransportSystems::Send,
                )
                    .chain(),
            )
            .add_stage_systems(
                PeerSyncSystems::Receive,
                (
                    connection::track_connection,
                    session::handle_link_events,
                    session::receive_packets,
                )
                    .chain(),
            )
            .add_stage_systems(
                PeerSyncSystems::Send,
                (
                    session::repeat_hellos,
                    session::queue_pings,
                    session::send_packets,
                )
                    .chain(),
            );
        schedule::plugin(app);
        // The built-in backends run inside the stages: first and last there.
        app.configure_sets(
            schedule::Stage(PeerSyncSystems::Receive),
            TransportSystems::Receive.before(connection::track_connection),
        )
        .configure_sets(
            schedule::Stage(PeerSyncSystems::Send),
            TransportSystems::Send.after(session::send_packets),
        );
        match &self.transport {
            TransportChoice::Matchbox(config) => {
                app.add_plugins(MatchboxTransportPlugin {
                    config: config.clone(),
                });
            }
            TransportChoice::Memory(network) => {
                app.add_plugins(MemoryTransportPlugin {
                    network: network.clone(),
                });
            }
            TransportChoice::Custom => {
                app.init_resource::<transport::TransportIo>();
            }
        }
        connection::plugin(app);
        doc::plugin(app);
        durable::plugin(app);
        durable::presence_hooks(app);
        transient::plugin(app);
        presence::plugin(app);
        diagnostics::plugin(app);
    }
}
