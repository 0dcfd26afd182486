//! Who a peer is, proved; and who may be in a room at all.
//!
//! Every replica has a signing key pair ([`PeerKey`], Ed25519), generated on first run
//! and kept with its save ([`crate::persistence`]). Its [`ReplicaId`] is derived from
//! the public key, so a replica id cannot be claimed without the key: ownership of
//! durable entities follows the key. Each run of an app also has a session key of its
//! own, never saved; the yrs client ids it writes with are derived from that one
//! (`client_id`), so every run writes with fresh ids (a save restored on two
//! machines never writes one client's clocks twice) and no peer can write under
//! another's.
//!
//! ## The handshake's proof
//! Each side's hello carries both public keys and a nonce fresh for the link. Once a
//! side has the other's hello, its hellos also carry a [`Proof`]: signatures by both
//! its keys over a transcript of both sides' keys and nonces, and, in a room with a
//! secret ([`RoomSecret`]), an HMAC-SHA-256 of that transcript keyed with the secret.
//! A peer is taken only once its proof checks, for this link's nonces: an old proof
//! replayed on another link does not. The secret never crosses the wire, and the
//! signaling server only ever sees the room's name.
//!
//! What it buys and what not: a stranger without the secret never gets past the
//! handshake, and a peer cannot pass itself off as another replica or write under
//! its yrs client ids. A peer with the secret may still write junk into what it
//! owns, presence names are claims, and peers see each other's IP addresses. The
//! MAC resists guessing online (one try per link) but not offline: someone who
//! recorded a handshake can test guesses of a weak secret at leisure, so use a secret
//! with the entropy of a random key (16 bytes or more, e.g. an invite code), not a
//! word.
//!
//! ```
//! use bevy_peer_sync::net::identity::PeerKey;
//!
//! let key = PeerKey::from_seed([7; 32]);
//! // The replica id is the key's, the same on every machine.
//! assert_eq!(key.replica(), PeerKey::from_seed([7; 32]).replica());
//! assert!(key.replica().is_valid());
//! ```

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::peer::{PeerId, RejectReason, ReplicaId};

/// A replica's signing key: who it is, for as long as it keeps it. Keep it as secret
/// as the save it lives in (whoever has it can write as this replica).
#[derive(Clone)]
pub struct PeerKey(SigningKey);

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret half.
        write!(f, "PeerKey(replica {})", self.replica())
    }
}

impl PeerKey {
    /// A new key from the operating system's randomness (the browser's on wasm).
    ///
    /// # Panics
    /// If the system has no randomness to give (no supported source on this target).
    pub fn generate() -> Self {
        Self::from_seed(random_bytes())
    }

    /// The key of a 32-byte seed (tests pin it for reproducible runs; a save keeps it).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self(SigningKey::from_bytes(&seed))
    }

    /// The seed, to keep (see [`crate::persistence`]).
    pub(crate) fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half, as the hello carries it.
    pub fn public(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The replica this key is.
    pub fn replica(&self) -> ReplicaId {
        replica_of(&self.public())
    }

    fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).to_bytes().to_vec()
    }
}

/// `N` bytes of the operating system's randomness.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0; N];
    getrandom::fill(&mut bytes).expect(
        "the operating system gives randomness (in the browser, through getrandom's `wasm_js` backend)",
    );
    bytes
}

/// The replica whose key has this public half: the first 8 bytes of a SHA-256 of it,
/// within [`ReplicaId::MAX`].
pub fn replica_of(public: &[u8; 32]) -> ReplicaId {
    ReplicaId(hash_u64(&[b"bevy_peer_sync replica\0", public]) & ReplicaId::MAX)
}

/// The yrs client id a run with session key `session` writes document `doc` with.
pub(crate) fn client_id(session: &[u8; 32], doc: u8) -> u64 {
    hash_u64(&[b"bevy_peer_sync client\0", session, &[doc]]) & ReplicaId::MAX
}

fn hash_u64(parts: &[&[u8]]) -> u64 {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part);
    }
    let digest = hash.finalize();
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA-256 has 32 bytes"))
}

/// A room's shared secret: only peers that know it get past the handshake (see the
/// [module docs](self)). Never sent; printed as `RoomSecret(..)`.
///
/// ```
/// use bevy_peer_sync::prelude::*;
///
/// let plugin = PeerSyncPlugin::new("ws://127.0.0.1:3536/board")
///     .with_room_secret(RoomSecret::new("k7Qm-2xPa-9dLr-Vw4e"));
/// # let _ = plugin;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RoomSecret(Arc<[u8]>);

impl fmt::Debug for RoomSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RoomSecret(..)")
    }
}

impl RoomSecret {
    /// A secret of these bytes (a passphrase, an invite code, a random key).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self(secret.as_ref().into())
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }
}

/// A nonce fresh for one link.
pub(crate) type Nonce = [u8; 16];

/// One side of a link: the keys and nonce its hellos say, and its id in the room (as
/// the signaling server assigned it: the verifier puts there the id of the link the
/// hello came on, so that a proof relayed from another link does not check).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Side {
    pub(crate) key: [u8; 32],
    pub(crate) session: [u8; 32],
    pub(crate) nonce: Nonce,
    pub(crate) peer: PeerId,
}

/// What a hello proves once its sender has the recipient's hello (see the
/// [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// By the replica key, over the transcript (64 bytes).
    pub replica_signature: Vec<u8>,
    /// By the session key, over the transcript (64 bytes).
    pub session_signature: Vec<u8>,
    /// HMAC-SHA-256 of the transcript with the room's secret, in a room with one.
    pub room_mac: Option<Vec<u8>>,
}

/// What `signer` proves to `verifier`: both sides' ids in the room, keys and nonces,
/// signer first. (Without the ids, a third peer could pass two peers' hellos between
/// its own links to them and sit in the middle, secret or not.)
fn transcript(signer: &Side, verifier: &Side) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"bevy_peer_sync hello proof v2\0");
    for side in [signer, verifier] {
        hash.update(side.peer.0.to_le_bytes());
        hash.update(side.key);
        hash.update(side.session);
        hash.update(side.nonce);
    }
    hash.finalize().into()
}

/// The local replica's keys, for proofs.
#[derive(Clone)]
pub(crate) struct LocalKeys {
    pub(crate) key: PeerKey,
    pub(crate) session: PeerKey,
}

impl LocalKeys {
    /// Our proof to the peer whose hello said `theirs`, on a link where ours say `ours`.
    pub(crate) fn prove(&self, ours: &Side, theirs: &Side, secret: Option<&RoomSecret>) -> Proof {
        let transcript = transcript(ours, theirs);
        Proof {
            replica_signature: self.key.sign(&transcript),
            session_signature: self.session.sign(&transcript),
            room_mac: secret.map(|secret| {
                let mut mac = secret.mac();
                mac.update(&transcript);
                mac.finalize().into_bytes().to_vec()
            }),
        }
    }
}

/// Checks the proof of the peer whose hellos say `theirs`, made for ours (`ours`):
/// both signatures, and the room's secret as this side has it (or has none).
pub(crate) fn check(
    proof: &Proof,
    theirs: &Side,
    ours: &Side,
    secret: Option<&RoomSecret>,
) -> Result<(), RejectReason> {
    let transcript = transcript(theirs, ours);
    // The secret first: a stranger learns nothing of the keys' checks.
    match (secret, &proof.room_mac) {
        (None, None) => {}
        (Some(_), None) => return Err(RejectReason::RoomSecret(SecretMismatch::TheyHaveNone)),
        (None, Some(_)) => return Err(RejectReason::RoomSecret(SecretMismatch::WeHaveNone)),
        (Some(secret), Some(tag)) => {
            let mut mac = secret.mac();
            mac.update(&transcript);
            // (In constant time.)
            if mac.verify_slice(tag).is_err() {
                return Err(RejectReason::RoomSecret(SecretMismatch::Differs));
            }
        }
    }
    let signed = |key: &[u8; 32], signature: &[u8], what: &str| {
        let bad =
            || RejectReason::Malformed(format!("the hello's {what} signature does not check"));
        let key = VerifyingKey::from_bytes(key).map_err(|_| bad())?;
        let signature = Signature::from_slice(signature).map_err(|_| bad())?;
        key.verify_strict(&transcript, &signature)
            .map_err(|_| bad())
    };
    signed(&theirs.key, &proof.replica_signature, "replica")?;
    // (`verify_strict` also refuses weak keys and malleable signatures.)
    signed(&theirs.session, &proof.session_signature, "session")
}

/// How two sides' room secrets differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretMismatch {
    /// Both have one, and they differ.
    Differs,
    /// This side has one; the peer has none.
    TheyHaveNone,
    /// The peer has one; this side has none.
    WeHaveNone,
}

impl fmt::Display for SecretMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Differs => "the peer's room secret is not this one's",
            Self::TheyHaveNone => "this room has a secret and the peer gave none",
            Self::WeHaveNone => "the peer uses a room secret and this one has none",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(key: &LocalKeys, nonce: u8) -> Side {
        Side {
            key: key.key.public(),
            session: key.session.public(),
            nonce: [nonce; 16],
            peer: PeerId(u128::from(nonce)),
        }
    }

    fn keys(seed: u8) -> LocalKeys {
        LocalKeys {
            key: PeerKey::from_seed([seed; 32]),
            session: PeerKey::from_seed([seed.wrapping_add(100); 32]),
        }
    }

    #[test]
    fn a_proof_checks_for_its_link_only() {
        let (a, b) = (keys(1), keys(2));
        let (sa, sb) = (side(&a, 1), side(&b, 2));
        let secret = RoomSecret::new("shared");
        let proof = a.prove(&sa, &sb, Some(&secret));
        assert_eq!(check(&proof, &sa, &sb, Some(&secret)), Ok(()));
        // Another link's nonce: a replayed proof does not check.
        let other = Side {
            nonce: [9; 16],
            ..sb
        };
        assert!(check(&proof, &sa, &other, Some(&secret)).is_err());
        // Relayed: the same nonces, but it came on a link from another peer id.
        let relayed = Side {
            peer: PeerId(77),
            ..sa
        };
        assert!(check(&proof, &relayed, &sb, Some(&secret)).is_err());
        // Claimed as another replica's (or run's): it does not check. (With a secret
        // the MAC, over both keys, fails first.)
        let c = keys(3);
        let open = a.prove(&sa, &sb, None);
        for impostor in [
            Side {
                key: c.key.public(),
                ..sa
            },
            Side {
                session: c.session.public(),
                ..sa
            },
        ] {
            assert!(matches!(
                check(&open, &impostor, &sb, None),
                Err(RejectReason::Malformed(_))
            ));
            assert!(check(&proof, &impostor, &sb, Some(&secret)).is_err());
        }
        // Secrets.
        let wrong = RoomSecret::new("guess");
        assert_eq!(
            check(&proof, &sa, &sb, Some(&wrong)),
            Err(RejectReason::RoomSecret(SecretMismatch::Differs))
        );
        assert_eq!(
            check(&proof, &sa, &sb, None),
            Err(RejectReason::RoomSecret(SecretMismatch::WeHaveNone))
        );
        assert_eq!(
            check(&open, &sa, &sb, Some(&secret)),
            Err(RejectReason::RoomSecret(SecretMismatch::TheyHaveNone))
        );
        assert_eq!(check(&open, &sa, &sb, None), Ok(()));
    }

    #[test]
    fn ids_are_the_keys_and_stay_below_2_pow_53() {
        let key = PeerKey::from_seed([5; 32]);
        assert_eq!(key.replica(), replica_of(&key.public()));
        assert!(key.replica().is_valid());
        let session = PeerKey::from_seed([6; 32]).public();
        assert_ne!(client_id(&session, 0), client_id(&session, 1));
        assert!(client_id(&session, 1) <= ReplicaId::MAX);
        assert_ne!(PeerKey::generate().public(), PeerKey::generate().public());
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.seed())));
    }
}
