//! The yrs sync engine: documents kept in step with the room by the y-sync protocol,
//! and the room's shared document ([`SharedDoc`]), free-form collaborative data
//! (texts, maps, arrays) that every peer may edit, merged by the CRDT.
//!
//! The engine keeps any number of documents in sync, each under a [`DocId`]: the
//! room's [`SharedDoc`] and the entity document of the
//! [durable route](crate::durable). It answers y-sync step 1, starts sync with peers
//! that join, asks the room for missing history, and hands each document's remote
//! updates to whoever hosts it, still encoded: the room's document applies them as
//! they come, the entity document checks them first. It names no type of the routes.
//!
//! - **Frame batching.** Every local transaction of a frame is collected and leaves as
//!   one merged update on the reliable channel in [`PeerSyncSystems::Collect`](crate::PeerSyncSystems::Collect)
//!   (`PostUpdate`). Do a frame's edits in one transaction where you can: per-edit
//!   transactions are yrs' slow path.
//! - **Remote updates** of a frame are applied in one transaction in
//!   [`PeerSyncSystems::Apply`](crate::PeerSyncSystems::Apply) (`PreUpdate`), then [`SharedDocChanged`] is written.
//! - **Joining and rejoining** run y-sync both ways: each side sends its state vector
//!   (step 1) and answers the other's with exactly the missing diff (step 2), so a late
//!   joiner or a peer that edited offline converges with everyone, with no host. A
//!   peer whose documents are still empty when a link opens says so in its hello
//!   (`Hello::fresh`): the other side sends it its whole
//!   state as they join, and it asks nothing, which saves a new player a round trip.
//!   It says so to one peer only, and holds back step 1 to the others until that
//!   state came (or [`HELD_STEP1_WAIT`] passed), so it is not sent the room's whole
//!   state once per peer.
//!   A large diff goes in pieces (`doc::pieces`), each an update of its own, so the receiver
//!   decodes one while it integrates the one before.
//! - **Bad input** (an update that does not decode, or one over
//!   [`DocLimits::max_update_size`]) is refused as a whole before it touches the
//!   document, and counted on the sender's [`PeerStats`](crate::net::stats::PeerStats).
//! - **Out-of-order updates wait.** An update that continues a client's history past
//!   a part this peer has not seen yet (lost with a dropped link, say) is not given to
//!   yrs, which would integrate it around a hole that later, larger blocks cannot
//!   always fill without corrupting its block store. It waits until the hole is
//!   filled, and the peer asks the room for the missing part (y-sync step 1, at most
//!   every [`SYNC_RETRY`]). One still waiting after [`MAX_ASKS`] asks is given up and
//!   counted ([`SharedDoc::given_up_updates`]): its history is not in the room, or it
//!   was made up, and the room is no longer asked for it.
//! - **Updates that build on what this peer lacks** (an item of another client, as a
//!   catch-up piece can need one from a later piece) are kept pending by yrs, which
//!   merges every later one that also stalls into them. That is bounded: past
//!   [`MAX_PENDING_MERGES`] stalled updates, [`DocLimits::max_waiting_bytes`], or
//!   [`MAX_ASKS`] asks of the room, what is pending is given up and counted. A piece
//!   that continues what is pending is merged with it, so the two go in together.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::testing::TestRoom;
//! use bevy_peer_sync::yrs::{GetString, Text, Transact};
//!
//! let mut room = TestRoom::new(1);
//! let a = room.add_peer(|_| {});
//! let b = room.add_peer(|_| {});
//! room.step_n(3);
//!
//! {
//!     let doc = room.app(a).world().resource::<SharedDoc>();
//!     let note = doc.text("note");
//!     note.insert(&mut doc.transact_mut(), 0, "hello");
//! }
//! room.step_n(2);
//! assert_eq!(room.app(b).world().resource::<SharedDoc>().text_string("note"), "hello");
//! ```

pub(crate) mod check;
mod engine;
pub(crate) mod levels;
pub(crate) mod nesting;
pub(crate) mod pieces;
mod shared;
mod stalled;
mod sync;
mod v1;

use std::sync::Arc;
use std::time::Duration;

use bevy::prelude::*;
use bytes::Bytes;
use yrs::encoding::read::Cursor;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{StateVector, Update};

pub(crate) use engine::{Remote, SyncedDoc};
pub use levels::{MAX_SETTLED_DEPTH, MAX_STALLED_TYPES, MAX_TYPE_DEPTH};
pub use shared::{SharedDoc, SharedDocChanged};
pub use stalled::MAX_PENDING_MERGES;
pub use sync::{HELD_STEP1_WAIT, LARGE_ANSWER, LARGE_ANSWER_GAP, STEP1_ANSWER_GAP, STEP2_WINDOW};

use crate::net::stats::DropReason;
use crate::net::wire::Message;

/// Origin of transactions that apply remote updates.
pub(crate) const REMOTE_ORIGIN: &str = "bevy_peer_sync/remote";
/// How often a peer holding out-of-order updates asks the room for what it misses.
pub const SYNC_RETRY: Duration = Duration::from_millis(500);
/// Out-of-order updates kept per document; past that the oldest go (the sync that
/// fills the hole brings them again).
pub(crate) const MAX_WAITING: usize = 1024;
/// Asks of the room (one per [`SYNC_RETRY`]) an out-of-order update waits through
/// before it is given up. The room answers an ask within a round trip, and whoever
/// sent the update has its history, so past this the history is not in the room (or
/// the update was made up): when its holder comes back, y-sync brings it anyway.
pub const MAX_ASKS: u32 = 10;

/// Which document a `Doc` message is for (its first body byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DocId {
    /// The room's [`SharedDoc`].
    Room = 0,
    /// The document behind the durable ECS route.
    Entities = 1,
}

impl DocId {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            0 => Some(Self::Room),
            1 => Some(Self::Entities),
            _ => None,
        }
    }
}

/// Limits on document traffic from peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocLimits {
    /// The largest yrs update (or sync step 2) accepted from a peer, in bytes.
    pub max_update_size: usize,
    /// Bytes of remote updates that may wait for their history (out of order, or
    /// building on items this peer lacks) per document; past it the oldest are given
    /// up (y-sync brings them again if the room has them).
    pub max_waiting_bytes: usize,
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_update_size: 16 * 1024 * 1024,
            max_waiting_bytes: 32 * 1024 * 1024,
        }
    }
}

/// The documents the engine keeps in sync, by id, shared with their hosts.
#[derive(Resource, Default)]
pub(crate) struct HostedDocs(Vec<(DocId, Arc<SyncedDoc>)>);

impl HostedDocs {
    /// Syncs `doc` as document `id` (in place of any before it under that id).
    pub(crate) fn host(&mut self, id: DocId, doc: Arc<SyncedDoc>) {
        self.0.retain(|(hosted, _)| *hosted != id);
        self.0.push((id, doc));
        self.0.sort_by_key(|(id, _)| *id as u8);
    }

    /// The document under `id`, if one is hosted.
    pub(crate) fn get(&self, id: DocId) -> Option<&SyncedDoc> {
        self.0
            .iter()
            .find(|(hosted, _)| *hosted == id)
            .map(|(_, doc)| &**doc)
    }

    /// Every hosted document, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (DocId, &SyncedDoc)> + '_ {
        self.0.iter().map(|(id, doc)| (*id, &**doc))
    }
}

/// Adds the engine and the room's [`SharedDoc`]. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    sync::plugin(app);
    shared::plugin(app);
}

/// Whether applying `update` to a document at state `known` would continue some
/// client's history past a part the document has not seen. yrs integrates such
/// blocks around a "skip", and a later block that spans the skip's end (a merged
/// run, or a garbage-collected range) then breaks its block store (a subtraction
/// overflow in `BlockStore::push`) or is taken as already known.
pub(crate) fn leaves_hole(update: &Update, known: &StateVector) -> bool {
    // Where each client's blocks start in the update (O(clients), no pass over the
    // blocks: a catch-up can hold hundreds of thousands). Updates from peers running
    // this crate are contiguous per client (local transactions merged in order, y-sync
    // diffs), so the start is what matters.
    update
        .state_vector_lower()
        .iter()
        .any(|(client, &start)| start > known.get(client))
}

/// Decodes a live update from a peer whose blocks may only be of client `author`
/// (its sender's own, see [`identity`](crate::net::identity)): one carrying
/// another's (items, collected blocks: a peer writing in another's name, or making
/// receivers skip another's next edits) is refused as [`DropReason::NotOwner`].
/// Deletions of others' items are judged by the document's own rules.
pub(crate) fn decode_live(
    bytes: &[u8],
    limits: &DocLimits,
    author: Option<u64>,
) -> Result<Decoded, DropReason> {
    let Some(author) = author else {
        return Err(DropReason::NotOwner);
    };
    let decoded = decode_update(bytes, limits)?;
    if decoded.shape.clients().any(|client| client != author) {
        return Err(DropReason::NotOwner);
    }
    Ok(decoded)
}

/// Decodes a yrs update from a peer, refusing oversized or malformed ones whole.
///
/// yrs sees only what passed [`check::update`]: exactly an honest encoder's layout,
/// with every count and length within the bytes, nesting bounded, and its estimated
/// cost within a small multiple of its size. How deeply its shared types nest in the
/// document is settled when it is applied (see [`levels`]).
pub(crate) fn decode_update(bytes: &[u8], limits: &DocLimits) -> Result<Decoded, DropReason> {
    if bytes.len() > limits.max_update_size {
        return Err(DropReason::Oversized);
    }
    let shape = check::update(bytes).map_err(refusal)?;
    let update = Update::decode_v1(bytes).map_err(|_| DropReason::Malformed)?;
    Ok(Decoded { update, shape })
}

/// A remote update that passed the check, decoded, with the levels of its items.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) update: Update,
    pub(crate) shape: levels::Shape,
}

/// How a refusal of [`check`] is counted.
fn refusal(refusal: check::Refusal) -> DropReason {
    match refusal {
        check::Refusal::Layout | check::Refusal::Unsafe => DropReason::Malformed,
        check::Refusal::TooCostly => DropReason::OverBudget,
    }
}

/// A y-sync message for one document, as it travels in a `Doc` wire message.
pub(crate) fn encode_sync(doc: DocId, message: SyncMessage) -> Message {
    let mut body = vec![doc as u8];
    body.extend_from_slice(&YMessage::Sync(message).encode_v1());
    Message::Doc(Bytes::from(body))
}

/// Y-sync step 2: what a peer at `remote` is missing, in [`pieces`].
pub(crate) fn step2(doc: DocId, synced: &SyncedDoc, remote: &StateVector) -> Vec<Message> {
    let pieces = synced.diff_pieces_for(remote);
    pieces
        .into_iter()
        .map(|piece| encode_sync(doc, SyncMessage::SyncStep2(piece)))
        .collect()
}

/// Step 1 of y-sync (this document's state vector) for document `doc`.
pub(crate) fn step1(doc: DocId, synced: &SyncedDoc) -> Message {
    encode_sync(doc, SyncMessage::SyncStep1(synced.state_vector()))
}

/// Splits a `Doc` wire body into its document and y-sync message.
pub(crate) fn decode_sync(body: &[u8]) -> Result<(DocId, SyncMessage), DropReason> {
    let (&first, rest) = body.split_first().ok_or(DropReason::Malformed)?;
    let doc = DocId::from_byte(first).ok_or(DropReason::Unknown)?;
    // yrs reads only a message that passed the check: a sync message whose state
    // vector or update is within its bytes.
    check::sync_message(rest).map_err(refusal)?;
    let mut decoder = DecoderV1::new(Cursor::new(rest));
    match YMessage::decode(&mut decoder) {
        Ok(YMessage::Sync(message)) => Ok((doc, message)),
        Ok(_) => Err(DropReason::Unknown),
        Err(_) => Err(DropReason::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, ReadTxn, Text, Transact};

    #[test]
    fn oversized_and_malformed_updates_are_refused() {
        let doc = Doc::new();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "0123456789");
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let small = DocLimits {
            max_update_size: 8,
            ..DocLimits::default()
        };
        assert_eq!(
            decode_update(&update, &small).err(),
            Some(DropReason::Oversized)
        );
        assert!(decode_update(&update, &DocLimits::default()).is_ok());
        assert_eq!(
            decode_update(&[0xff, 0xff, 0xff], &DocLimits::default()).err(),
            Some(DropReason::Malformed)
        );
        assert_eq!(decode_sync(&[9, 0, 0]).err(), Some(DropReason::Unknown));
        assert_eq!(decode_sync(&[]).err(), Some(DropReason::Malformed));
    }
}
