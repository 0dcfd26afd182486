//! The network layer: peers as entities, the wire format, the session with each peer
//! (handshake, routing, pings), per-peer counters, connection life, the transport
//! boundary with its backends, and the signaling server.

pub mod connection;
pub mod identity;
pub mod peer;
pub mod session;
#[cfg(not(target_arch = "wasm32"))]
pub mod signaling;
pub mod stats;
pub mod transport;
pub(crate) mod wire;

pub use wire::{PROTOCOL_VERSION, SAFE_UNRELIABLE_SIZE, WireLimits};

use bevy::prelude::*;
use thiserror::Error;

use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// What the network layer refuses to start with, and what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NetError {
    /// The room URL could not be understood.
    #[error("room url `{url}` is not a ws:// or wss:// url with a host: {reason}")]
    InvalidRoomUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A room on another machine needs an explicit ICE server choice.
    #[error(
        "room `{url}` is not on this machine, so ICE servers must be chosen: call \
         `.with_ice_servers(...)` with your STUN/TURN servers, `.with_public_stun()` to opt in to \
         matchbox's public STUN default, or `.without_ice_servers()` for a LAN"
    )]
    IceServersNotChosen {
        /// The room URL.
        url: String,
    },
    /// The signaling server could not start.
    #[error("signaling server could not start on `{addr}`: {reason}")]
    Signaling {
        /// The address it tried to bind.
        addr: String,
        /// The underlying error.
        reason: String,
    },
}

/// Adds the peers, the session with each and its systems. Part of
/// [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<peer::LocalPeer>()
        .init_resource::<peer::Peers>()
        .init_resource::<session::SessionState>()
        .init_resource::<session::FreshJoin>()
        .init_resource::<session::ConnectedReplicas>()
        .init_resource::<session::Outbox>()
        .init_resource::<session::Inbox>()
        .add_message::<peer::PeerJoined>()
        .add_message::<peer::PeerLeft>()
        .add_message::<peer::PeerRejected>()
        .add_message::<session::SendPayload>()
        .add_message::<session::PayloadReceived>()
        .add_stage_systems(
            PeerSyncSystems::Receive,
            (
                connection::track_connection,
                session::handle_link_events,
                session::receive_packets,
            )
                .chain()
                .in_set(Step::Decode),
        )
        .add_stage_systems(
            PeerSyncSystems::Send,
            (
                session::repeat_hellos,
                session::queue_pings,
                session::send_packets,
            )
                .chain()
                .in_set(Step::Encode),
        );
}
