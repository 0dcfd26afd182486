//! Errors of this crate: [`PeerSyncError`] for configuration and runtime failures
//! (wrapping the network layer's [`NetError`]), [`SaveError`] for a save that is refused, and the wire's typed reasons a datagram
//! was refused ([`DecodeError`]) or could not be sent ([`EncodeError`]).

use thiserror::Error;

pub use crate::net::NetError;
pub use crate::net::stats::DropReason;
pub use crate::net::wire::{DecodeError, EncodeError};

/// Why a save was refused whole (see [`crate::persistence`]): nothing of it is used.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaveError {
    /// Shorter than a save's header and checksum.
    #[error("`{len}` bytes is too short to be a save")]
    TooShort {
        /// Its length.
        len: usize,
    },
    /// It does not start with a save's magic bytes.
    #[error("not a bevy_peer_sync save (wrong magic bytes)")]
    NotASave,
    /// A save format this build does not read.
    #[error("save format `{found}` is not the supported `{supported}`")]
    Format {
        /// The format byte found.
        found: u8,
        /// The one this build reads.
        supported: u8,
    },
    /// The checksum does not match: truncated or damaged.
    #[error("checksum mismatch: the save is truncated or damaged")]
    Checksum,
    /// A section header or body is cut off.
    #[error("a section is shorter than its length")]
    Truncated,
    /// A document section is not a valid update.
    #[error("document `{id}` does not decode ({reason:?})")]
    Undecodable {
        /// The section's document id.
        id: u8,
        /// What the update check found.
        reason: DropReason,
    },
    /// A document section decodes but does not apply.
    #[error("document `{id}` does not apply: {reason}")]
    Unappliable {
        /// The section's document id.
        id: u8,
        /// What yrs said.
        reason: String,
    },
    /// A document id this build does not know, or one that appears twice.
    #[error("unexpected document `{0}`")]
    UnknownDocument(u8),
    /// A replica id past [`ReplicaId::MAX`](crate::net::peer::ReplicaId::MAX).
    #[error("replica id `{0:x}` is past 2^53 - 1")]
    Replica(u64),
    /// Bytes after the last section.
    #[error("trailing bytes after the last document")]
    TrailingBytes,
}

/// What went wrong, and what to do about it.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PeerSyncError {
    /// The network layer refused a setting or could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A message could not be sent.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A save could not be read.
    #[error("saved document `{path}` could not be loaded: {reason}")]
    Load {
        /// Where it was read from.
        path: String,
        /// Why it could not be read.
        reason: String,
    },
    /// A save was read and refused whole; it was moved aside.
    #[error(
        "saved document `{path}` could not be loaded: {error}; {aside}, and the game goes on with the room's state"
    )]
    DamagedSave {
        /// Where it was read from.
        path: String,
        /// What is wrong with it.
        error: SaveError,
        /// Where it went.
        aside: String,
    },
}
