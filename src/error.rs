//! Errors of this crate: [`PeerSyncError`] for configuration and runtime failures,
//! and the wire's typed reasons a datagram was refused ([`DecodeError`]) or could not
//! be sent ([`EncodeError`]).

use thiserror::Error;

pub use crate::net::wire::{DecodeError, EncodeError};

/// What went wrong, and what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PeerSyncError {
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
    /// A message could not be sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A persisted document could not be loaded.
    #[error("saved document `{path}` could not be loaded: {reason}")]
    Load {
        /// Where it was read from.
        path: String,
        /// Why it was refused.
        reason: String,
    },
}
