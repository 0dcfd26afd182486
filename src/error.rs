//! Errors of this crate: one enum for configuration and runtime failures, and the
//! typed reasons a packet from a peer was refused.

use thiserror::Error;

use crate::net::transport::Channel;
use crate::net::wire::Kind;

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

/// Why an outgoing message could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body codec failed.
    #[error("message body could not be encoded: {0}")]
    Body(String),
    /// The message is larger than its channel can carry.
    #[error("message of `{size}` bytes is over the `{limit}`-byte limit of its channel")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why an incoming datagram was refused. Decoding returns this instead of panicking,
/// whatever the bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header.
    #[error("datagram of `{len}` bytes is shorter than its header")]
    Truncated {
        /// Length received.
        len: usize,
    },
    /// Over a size limit.
    #[error("datagram of `{size}` bytes is over the `{limit}`-byte limit")]
    Oversized {
        /// Size received or claimed.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Another protocol version.
    #[error(
        "protocol version `{got}`, this build speaks `{}`",
        crate::net::wire::PROTOCOL_VERSION
    )]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// A kind byte this version does not know.
    #[error("unknown message kind `{0}`")]
    UnknownKind(u8),
    /// A kind sent on a channel it does not belong to.
    #[error("message kind `{kind:?}` is not allowed on the {channel:?} channel")]
    WrongChannel {
        /// The kind.
        kind: Kind,
        /// The channel it came on.
        channel: Channel,
    },
    /// The body did not decode.
    #[error("malformed `{kind:?}` body: {reason}")]
    Body {
        /// The kind.
        kind: Kind,
        /// What the decoder said.
        reason: String,
    },
    /// Fragments that do not form a message.
    #[error("bad fragment: {0}")]
    Fragment(&'static str),
}
