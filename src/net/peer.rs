//! Peers as entities: who is in the room, and what game code hears about them.
//!
//! Every remote peer with an open link has an entity carrying [`Peer`],
//! [`PeerLink`] and [`PeerStats`](crate::net::stats::PeerStats). The entity appears when the link opens
//! ([`PeerLink::Handshaking`]), becomes [`PeerLink::Connected`] once both sides agree on
//! the protocol and the registered sync types and each knows the other has its hello
//! (then [`PeerJoined`] is written; hellos are repeated until then, since the first
//! datagrams of a data channel can be lost), and is
//! despawned when the link closes (then [`PeerLeft`] is written). A peer whose
//! handshake does not match stays [`PeerLink::Rejected`] until it leaves, and all its
//! traffic is dropped.

use std::fmt;

use bevy::platform::collections::HashMap;
use bevy::prelude::*;

use super::identity::{self, LocalKeys, PeerKey};

/// A peer's id in the room, as the signaling server assigned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u128);

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

impl From<matchbox_socket::PeerId> for PeerId {
    fn from(id: matchbox_socket::PeerId) -> Self {
        Self(id.0.as_u128())
    }
}

impl From<PeerId> for matchbox_socket::PeerId {
    fn from(id: PeerId) -> Self {
        matchbox_socket::PeerId(uuid::Uuid::from_u128(id.0))
    }
}

/// A peer's identity: unlike [`PeerId`], it survives a reconnect (and, with a save,
/// a restart). It is derived from the replica's public key
/// ([`PeerKey::replica`](super::identity::PeerKey::replica)), which its hello
/// proves, so it cannot be claimed without the key. Durable entities are owned by a
/// replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplicaId(pub u64);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl ReplicaId {
    /// The largest replica id: ids are yrs client ids, which stay below 2^53 so that
    /// JavaScript reads them exactly (and peers refuse updates from larger ones).
    pub const MAX: u64 = (1 << 53) - 1;

    /// Parses the [`Display`](fmt::Display) form; `None` past [`ReplicaId::MAX`].
    pub fn parse(text: &str) -> Option<Self> {
        u64::from_str_radix(text, 16)
            .ok()
            .filter(|id| *id <= Self::MAX)
            .map(Self)
    }

    /// Whether this id is one a replica can have (at most [`ReplicaId::MAX`]).
    pub fn is_valid(self) -> bool {
        self.0 <= Self::MAX
    }
}

/// The replica behind a remote peer, known once its handshake is done.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReplica(pub ReplicaId);

/// A remote peer. Lives on the peer's entity.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
#[require(PeerLink)]
pub struct Peer {
    /// The peer's id.
    pub id: PeerId,
}

/// Where the link to a remote peer stands.
#[derive(Component, Debug, Clone, PartialEq, Eq, Default)]
pub enum PeerLink {
    /// Data channels are open; hellos are being exchanged.
    #[default]
    Handshaking,
    /// Handshake done; state flows both ways.
    Connected,
    /// Refused (at the handshake, or later for staying over budget), or it refused
    /// this peer; everything from it is dropped.
    Rejected(RejectReason),
}

/// Why a peer was refused: at the handshake, or later for staying over its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejectReason {
    /// The peer speaks another wire protocol version.
    ProtocolVersion {
        /// Ours.
        ours: u8,
        /// Theirs.
        theirs: u8,
    },
    /// The peer registered other sync types, or the same ones in another order.
    Schema {
        /// Types we registered that the peer did not (or not at the same place).
        only_ours: Vec<String>,
        /// Types the peer registered that we did not (or not at the same place).
        only_theirs: Vec<String>,
    },
    /// The peer has this peer's own replica id: two apps started from one save.
    SameReplica(ReplicaId),
    /// The peer's replica proved itself on a newer link, so this older one is ended:
    /// a reconnect whose old link had not closed yet, or two apps started from one
    /// save (then they take turns).
    ReplicaConnected(ReplicaId),
    /// The handshake was not done within
    /// [`HANDSHAKE_TIMEOUT`](crate::net::session::HANDSHAKE_TIMEOUT): the peer never
    /// proved itself (or its datagrams never came).
    HandshakeTimeout,
    /// The room's secrets differ (see [`RoomSecret`](super::identity::RoomSecret)).
    RoomSecret(super::identity::SecretMismatch),
    /// The hello itself was malformed.
    Malformed(String),
    /// The peer stayed over its budget (see
    /// [`PeerBudget`](crate::net::session::PeerBudget)): what it sent, against what.
    OverBudget(String),
    /// The peer refused this one, for the reason it gave (its own words, not
    /// checked: a peer may say anything).
    RefusedByPeer(String),
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ProtocolVersion { ours, theirs } => {
                write!(
                    f,
                    "peer speaks protocol `{theirs}`, this build speaks `{ours}`: run the same bevy_peer_sync version"
                )
            }
            Self::Schema {
                only_ours,
                only_theirs,
            } => write!(
                f,
                "registered sync types differ (order counts): only here `{only_ours:?}`, only on the peer `{only_theirs:?}`; register the same types in the same order on every build"
            ),
            Self::SameReplica(replica) => write!(
                f,
                "peer has this peer's own replica id `{replica}`: two apps restored from one save? give each player its own save"
            ),
            Self::ReplicaConnected(replica) => write!(
                f,
                "replica `{replica}` proved itself on a newer link, so this one ends (a reconnect; or two apps restored from one save? give each player its own save)"
            ),
            Self::HandshakeTimeout => write!(
                f,
                "no proved hello within the handshake timeout: the peer is not one of this room's, or its link is broken"
            ),
            Self::RoomSecret(mismatch) => write!(
                f,
                "{mismatch}: give every player of the room the same `RoomSecret`"
            ),
            Self::Malformed(reason) => write!(f, "malformed hello: {reason}"),
            Self::OverBudget(what) => write!(f, "over budget: {what}"),
            Self::RefusedByPeer(reason) => write!(f, "the peer refused this one: {reason}"),
        }
    }
}

/// The local peer: its keys (see [`identity`] module), the replica id they
/// prove, and the id the room gave it.
#[derive(Resource, Clone)]
pub struct LocalPeer {
    id: Option<PeerId>,
    replica: ReplicaId,
    keys: LocalKeys,
}

impl fmt::Debug for LocalPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalPeer")
            .field("id", &self.id)
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

impl Default for LocalPeer {
    /// A new replica: a key generated now (a save keeps it for the next run).
    fn default() -> Self {
        Self::with_key(PeerKey::generate())
    }
}

impl LocalPeer {
    /// The replica of `key` (a game may keep the key to keep ownership across
    /// restarts; [`PersistencePlugin`](crate::persistence::PersistencePlugin) does).
    /// Insert it before adding [`crate::PeerSyncPlugin`]. This run's session key is
    /// generated.
    pub fn with_key(key: PeerKey) -> Self {
        Self::with_keys(key, PeerKey::generate())
    }

    /// Both keys pinned (tests, for reproducible runs).
    pub(crate) fn with_keys(key: PeerKey, session: PeerKey) -> Self {
        Self {
            id: None,
            replica: key.replica(),
            keys: LocalKeys { key, session },
        }
    }

    /// Takes back the replica key of a save: this run's session (and so its yrs
    /// client ids) stays.
    pub(crate) fn restore_key(&mut self, key: PeerKey) {
        self.replica = key.replica();
        self.keys.key = key;
    }

    /// The local replica id (stable across reconnects of this app): its key's.
    pub fn replica(&self) -> ReplicaId {
        self.replica
    }

    /// The replica's key.
    pub fn key(&self) -> &PeerKey {
        &self.keys.key
    }

    pub(crate) fn keys(&self) -> &LocalKeys {
        &self.keys
    }

    /// The yrs client id this run writes document `doc` with (see
    /// [`identity`]).
    pub(crate) fn client_id(&self, doc: u8) -> u64 {
        identity::client_id(&self.keys.session.public(), doc)
    }

    /// The local id, once the room assigned one.
    pub fn id(&self) -> Option<PeerId> {
        self.id
    }

    pub(crate) fn set(&mut self, id: PeerId) {
        self.id = Some(id);
    }
}

/// Looks up a remote peer's entity by id.
#[derive(Resource, Debug, Default)]
pub struct Peers {
    entities: HashMap<PeerId, Entity>,
}

impl Peers {
    /// The entity of a remote peer, if its link is open.
    pub fn entity(&self, peer: PeerId) -> Option<Entity> {
        self.entities.get(&peer).copied()
    }

    /// Ids of every remote peer with an open link (in any handshake state).
    pub fn ids(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.entities.keys().copied()
    }

    /// How many remote peers have an open link.
    pub fn len(&self) -> usize {
        self.entities.len()
    }

    /// Whether no remote peer has an open link.
    pub fn is_empty(&self) -> bool {
        self.entities.is_empty()
    }

    pub(crate) fn insert(&mut self, peer: PeerId, entity: Entity) {
        self.entities.insert(peer, entity);
    }

    pub(crate) fn remove(&mut self, peer: PeerId) -> Option<Entity> {
        self.entities.remove(&peer)
    }
}

/// A remote peer finished its handshake: state now flows both ways.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerJoined {
    /// The peer.
    pub peer: PeerId,
    /// Its replica.
    pub replica: ReplicaId,
    /// Its entity.
    pub entity: Entity,
}

/// A remote peer's link closed. Its entity has been despawned.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerLeft {
    /// The peer.
    pub peer: PeerId,
    /// Its replica, if its handshake had finished.
    pub replica: Option<ReplicaId>,
    /// Whether it had finished its handshake.
    pub was_connected: bool,
}

/// A remote peer was refused, at the handshake or later (see [`RejectReason`]); or it
/// refused this one ([`RejectReason::RefusedByPeer`]). Nothing more is taken from it.
/// A peer refused after its handshake also leaves ([`PeerLeft`]).
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PeerRejected {
    /// The peer.
    pub peer: PeerId,
    /// Why.
    pub reason: RejectReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replica ids are yrs client ids: past 2^53 - 1 they are refused where they enter.
    #[test]
    fn replica_ids_stay_below_2_pow_53() {
        assert_eq!(
            ReplicaId::parse("1fffffffffffff"),
            Some(ReplicaId(ReplicaId::MAX))
        );
        assert_eq!(ReplicaId::parse("20000000000000"), None);
        assert!(PeerKey::generate().replica().is_valid());
    }
}
