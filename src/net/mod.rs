//! The network layer: peers as entities, the wire format, the session with each peer
//! (handshake, routing, pings), per-peer counters, connection life, the transport
//! boundary with its backends, and the signaling server.

pub mod connection;
pub mod peer;
pub mod session;
#[cfg(not(target_arch = "wasm32"))]
pub mod signaling;
pub mod stats;
pub mod transport;
pub(crate) mod wire;

pub use wire::{PROTOCOL_VERSION, SAFE_UNRELIABLE_SIZE, WireLimits};

use bevy::prelude::*;

use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// Adds the peers, the session with each and its systems. Part of
/// [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<peer::LocalPeer>()
        .init_resource::<peer::Peers>()
        .init_resource::<session::SessionState>()
        .init_resource::<session::FreshJoin>()
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
