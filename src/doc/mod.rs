//! The room's shared [`yrs`] document: free-form collaborative data (texts, maps,
//! arrays) that every peer may edit, merged by the CRDT and kept in step with the
//! y-sync protocol.
//!
//! - **Frame batching.** Every local transaction of a frame is collected and leaves as
//!   one merged update on the reliable channel in [`PeerSyncSystems::Collect`]
//!   (`PostUpdate`). Do a frame's edits in one transaction where you can: per-edit
//!   transactions are yrs' slow path.
//! - **Remote updates** of a frame are applied in one transaction in
//!   [`PeerSyncSystems::Apply`] (`PreUpdate`), then [`SharedDocChanged`] is written.
//! - **Joining and rejoining** run y-sync both ways: each side sends its state vector
//!   (step 1) and answers the other's with exactly the missing diff (step 2), so a late
//!   joiner or a peer that edited offline converges with everyone, with no host. A
//!   peer whose documents are still empty when a link opens says so in its hello
//!   ([`Hello::fresh`](crate::net::wire::Hello::fresh)): the other side sends it its whole
//!   state as they join, and it asks nothing, which saves a new player a round trip.
//!   It says so to one peer only, and holds back step 1 to the others until that
//!   state came (or [`HELD_STEP1_WAIT`] passed), so it is not sent the room's whole
//!   state once per peer.
//!   A large diff goes in [`pieces`], each an update of its own, so the receiver
//!   decodes one while it integrates the one before.
//! - **Bad input** (an update that does not decode, or one over
//!   [`DocLimits::max_update_size`]) is refused as a whole before it touches the
//!   document, and counted on the sender's [`PeerStats`].
//! - **Out-of-order updates wait.** An update that continues a client's history past
//!   a part this peer has not seen yet (lost with a dropped link, say) is not given to
//!   yrs, which would integrate it around a hole that later, larger blocks cannot
//!   always fill without corrupting its block store. It waits until the hole is
//!   filled, and the peer asks the room for the missing part (y-sync step 1, at most
//!   every [`SYNC_RETRY`]). One still waiting after [`MAX_ASKS`] asks is given up and
//!   counted ([`SyncedDoc::given_up_updates`]): its history is not in the room, or it
//!   was made up, and the room is no longer asked for it.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::doc::SharedDoc;
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

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bevy::prelude::*;
use bytes::Bytes;
use yrs::encoding::read::Cursor;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::{
    ArrayRef, Doc, GetString, MapRef, Origin, ReadTxn, StateVector, TextRef, Transact,
    TransactionMut, Update,
};

pub mod nesting;
pub mod pieces;
mod v1;

use crate::net::peer::{PeerId, PeerJoined, PeerLeft, PeerRejected, Peers};
use crate::net::session::{FreshDocs, Inbox, Outbox, Recipients};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::net::wire::Message;
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// Origin of transactions that apply remote updates.
pub(crate) const REMOTE_ORIGIN: &str = "bevy_peer_sync/remote";
/// How often a peer holding out-of-order updates asks the room for what it misses.
pub const SYNC_RETRY: Duration = Duration::from_millis(500);
/// Out-of-order updates kept per document; past that the oldest go (the sync that
/// fills the hole brings them again).
const MAX_WAITING: usize = 1024;
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
}

impl Default for DocLimits {
    fn default() -> Self {
        Self {
            max_update_size: 16 * 1024 * 1024,
        }
    }
}

/// A yrs document kept in sync with the room: local updates collected per frame,
/// remote ones applied per frame.
pub struct SyncedDoc {
    doc: Doc,
    local_updates: Arc<Mutex<Vec<Vec<u8>>>>,
    updates: AtomicU64,
    /// Remote updates that arrived before an earlier part of their client's history,
    /// each with the number of times the room was asked for it since.
    waiting: Mutex<Vec<(Update, u32)>>,
    /// Waiting updates given up after [`MAX_ASKS`] asks.
    given_up: AtomicU64,
    /// A live update was held for a hole (outside `waiting`) since the room was last
    /// asked to fill it.
    gap_seen: AtomicBool,
    /// When the room was last asked (y-sync step 1) for what this peer misses.
    last_asked: Mutex<Option<Duration>>,
    /// Limits on what peers send for this document.
    pub limits: DocLimits,
    /// Catch-up updates (a late joiner's whole state, the answer to a y-sync step 1)
    /// at least twice this many bytes are sent in pieces of about this size, which the
    /// receiver decodes while it applies the one before (see [`pieces`]). Default
    /// [`pieces::PIECE_SIZE`]; `usize::MAX` sends them whole.
    pub piece_size: usize,
}

impl std::fmt::Debug for SyncedDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncedDoc")
            .field("client_id", &self.doc.client_id())
            .finish_non_exhaustive()
    }
}

impl SyncedDoc {
    /// Wraps `doc`, collecting every local transaction's update.
    pub fn new(doc: Doc) -> Self {
        let local_updates = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&local_updates);
        // Encode only local transactions: `observe_update_v1` would encode every
        // transaction, remote catch-ups of the whole document included, and then we
        // would throw those away.
        doc.observe_transaction_cleanup("bevy_peer_sync", move |txn, _| {
            let remote = txn
                .origin()
                .is_some_and(|o| *o == Origin::from(REMOTE_ORIGIN));
            let changed = !txn.delete_set().is_empty() || txn.after_state() != txn.before_state();
            if !remote && changed {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(txn.encode_update_v1());
            }
        })
        .expect("a new document has no transaction open");
        Self {
            doc,
            local_updates,
            updates: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            given_up: AtomicU64::new(0),
            gap_seen: AtomicBool::new(false),
            last_asked: Mutex::new(None),
            limits: DocLimits::default(),
            piece_size: pieces::PIECE_SIZE,
        }
    }

    /// The document.
    pub fn doc(&self) -> &Doc {
        &self.doc
    }

    /// A local read-write transaction. Its changes go out at the end of the frame.
    pub fn transact_mut(&self) -> TransactionMut<'_> {
        self.doc.transact_mut()
    }

    /// The state vector (what this document has seen, per client).
    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The whole integrated document as one update (for saving, or a late joiner).
    ///
    /// Updates still waiting for their dependencies are left out: they are not state
    /// yet, their authors send them again on the next sync. (Encoding them in, as
    /// `encode_state_as_update_v1` does, was seen to upset yrs' later integration of
    /// the same pending updates.)
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    /// Takes this frame's local updates, merged into one.
    pub fn take_local_update(&self) -> Option<Vec<u8>> {
        let mut pending = std::mem::take(
            &mut *self
                .local_updates
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        self.updates
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        match pending.len() {
            0 => None,
            1 => pending.pop(),
            _ => match yrs::merge_updates_v1(&pending) {
                Ok(merged) => Some(merged),
                Err(error) => {
                    // Cannot happen for updates yrs itself produced; send them one by one.
                    error!("could not merge local updates, sending them apart: {error}");
                    let merged = pending.pop();
                    *self
                        .local_updates
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = pending;
                    merged
                }
            },
        }
    }

    /// Applies remote updates in one transaction. Each was decoded already.
    ///
    /// An update that would leave a hole in a client's history waits (see the
    /// [module docs](self)) and is applied here, in a later call, once the hole is
    /// filled, and the plugin asks the room for the missing part.
    pub fn apply_remote(&self, updates: Vec<Update>) -> Result<(), String> {
        self.apply_in_turn(&mut updates.into_iter()).map(|_| ())
    }

    /// [`SyncedDoc::apply_remote`] for updates that come in turn (decoded meanwhile);
    /// returns how many were applied.
    fn apply_in_turn(&self, updates: &mut dyn Iterator<Item = Update>) -> Result<u64, String> {
        // Waiting updates can only become ready once new remote history arrives: with
        // none, nothing to retry (this runs every frame).
        let mut updates = updates.peekable();
        if updates.peek().is_none() {
            return Ok(0);
        }
        let mut waiting =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        let mut applied = 0u64;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = self.doc.transact_mut_with(REMOTE_ORIGIN);
            for update in updates {
                if leaves_hole(&update, &txn.state_vector()) {
                    waiting.push((update, 0));
                    continue;
                }
                applied += 1;
                txn.apply_update(update).map_err(|e| e.to_string())?;
                // What waited for it may follow now, in the order it came.
                while !waiting.is_empty() {
                    let known = txn.state_vector();
                    let Some(ready) = waiting.iter().position(|(u, _)| !leaves_hole(u, &known))
                    else {
                        break;
                    };
                    let (update, _) = waiting.remove(ready);
                    applied += 1;
                    txn.apply_update(update).map_err(|e| e.to_string())?;
                }
            }
            Ok(())
        }));
        self.updates.fetch_add(applied, Ordering::Relaxed);
        if waiting.len() > MAX_WAITING {
            waiting.drain(..waiting.len() - MAX_WAITING);
        }
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = waiting;
        result
            .unwrap_or_else(|_| Err("yrs panicked while applying an update".into()))
            .map(|()| applied)
    }

    /// How many remote updates wait for an earlier part of their client's history.
    pub fn waiting_updates(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Notes that an update from a peer would have left a hole (checked by the
    /// caller before applying it), so the room is asked for the missing part.
    pub(crate) fn note_gap(&self) {
        self.gap_seen.store(true, Ordering::Relaxed);
    }

    /// Whether `update` would leave a hole in this document (see [`leaves_hole`]).
    pub(crate) fn would_leave_hole(&self, update: &Update) -> bool {
        leaves_hole(update, &self.state_vector())
    }

    /// Whether to ask the room now (y-sync step 1) for the missing part of a client's
    /// history: updates wait for it, and the room was not asked in the last
    /// [`SYNC_RETRY`]. `now` is real time.
    pub(crate) fn wants_sync(&self, now: Duration) -> bool {
        let mut last = self
            .last_asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| now.saturating_sub(at) < SYNC_RETRY) {
            return false;
        }
        // Count this ask against every waiting update; give up those asked for enough.
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let before = waiting.len();
        waiting.retain_mut(|(_, asks)| {
            *asks += 1;
            *asks <= MAX_ASKS
        });
        let given_up = before - waiting.len();
        if given_up > 0 {
            self.given_up.fetch_add(given_up as u64, Ordering::Relaxed);
            debug!(
                "gave up `{given_up}` updates still missing their history after `{MAX_ASKS}` asks; y-sync brings them when their holder is back"
            );
        }
        let gap = self.gap_seen.load(Ordering::Relaxed) || !waiting.is_empty();
        if !gap {
            return false;
        }
        *last = Some(now);
        self.gap_seen.store(false, Ordering::Relaxed);
        true
    }

    /// Out-of-order updates given up after [`MAX_ASKS`] asks of the room (their
    /// history never came: it is not in the room, or they were made up).
    pub fn given_up_updates(&self) -> u64 {
        self.given_up.load(Ordering::Relaxed)
    }

    /// How many updates (local transactions and remote updates) went through this
    /// document so far.
    pub fn update_count(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// The diff a peer with state vector `remote` is missing.
    pub fn diff_for(&self, remote: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(remote)
    }

    /// [`SyncedDoc::diff_for`] in pieces of about [`SyncedDoc::piece_size`] bytes, each
    /// an update of its own, to apply in order (see [`pieces`]).
    pub(crate) fn diff_pieces_for(&self, remote: &StateVector) -> Vec<Vec<u8>> {
        let (diff, ends) = {
            let txn = self.doc.transact();
            (txn.encode_diff_v1(remote), txn.state_vector())
        };
        match pieces::split(&diff, self.piece_size, &ends) {
            Some(pieces) => pieces,
            None => vec![diff],
        }
    }

    /// Decodes remote updates (refusing bad ones, see [`decode_update`]) and applies
    /// those `keep` accepts, in one transaction, after the already decoded `decoded`.
    ///
    /// A large batch is applied on another thread while this one decodes the next
    /// update: a late joiner's catch-up, sent in [`pieces`], is integrated about as
    /// soon as yrs has integrated it, instead of after yrs decoded all of it first.
    /// Returns how many updates were applied; refused ones are pushed on `refused`
    /// with the reason.
    pub(crate) fn apply_encoded(
        &self,
        decoded: Vec<(PeerId, Update)>,
        encoded: Vec<(PeerId, Vec<u8>)>,
        mut keep: impl FnMut(PeerId, &Update) -> bool + Send,
        refused: &mut Vec<(PeerId, DropReason)>,
    ) -> Result<u64, String> {
        let bytes: usize = encoded.iter().map(|(_, b)| b.len()).sum();
        let worth_a_thread = encoded.len() > 1 && bytes >= PIPELINE_MIN_BYTES;
        let limits = self.limits;
        decoded_in_turn(
            encoded,
            worth_a_thread,
            |(from, bytes)| (from, decode_update(&bytes, &limits)),
            |incoming| {
                let decoded = decoded.into_iter().map(|(from, u)| (from, Ok(u)));
                let mut updates =
                    decoded
                        .chain(incoming)
                        .filter_map(|(from, update)| match update {
                            Ok(update) => keep(from, &update).then_some(update),
                            Err(reason) => {
                                refused.push((from, reason));
                                None
                            }
                        });
                self.apply_in_turn(&mut updates)
            },
        )
    }
}

/// Bytes of updates in one batch from which applying them on another thread while
/// this one decodes pays for starting it (about 50 µs).
const PIPELINE_MIN_BYTES: usize = 64 * 1024;

/// Hands `items`, each through `decode`, to `apply` in order. When `worth_a_thread`
/// (and the machine has a second core), `apply` runs on a scoped thread and works on
/// the last item while this one decodes the next.
///
/// Decoding stays here: it allocates every block, and this thread's allocator is warm
/// (a new thread's starts cold: decoding there took about 1.5 times as long). A
/// thread of its own rather than Bevy's task pool, as `apply` blocks waiting for the
/// decoder, so the two must surely run at once, which the pool does not promise.
fn decoded_in_turn<T, R: Send, O: Send>(
    items: Vec<T>,
    worth_a_thread: bool,
    decode: impl Fn(T) -> R,
    apply: impl FnOnce(&mut dyn Iterator<Item = R>) -> O + Send,
) -> O {
    #[cfg(not(target_arch = "wasm32"))]
    if worth_a_thread && second_core() {
        // Taken back if the thread cannot start.
        let apply = Mutex::new(Some(apply));
        let took = |apply: &Mutex<Option<_>>| {
            apply
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
                .expect("`apply` is taken once, by the thread or after it failed to start")
        };
        let (sender, receiver) = std::sync::mpsc::channel();
        let mut items = items.into_iter();
        let result = std::thread::scope(|scope| {
            let applier = std::thread::Builder::new()
                .name("bevy_peer_sync apply".into())
                .spawn_scoped(scope, {
                    let apply = &apply;
                    move || took(apply)(&mut receiver.into_iter())
                });
            let Ok(applier) = applier else {
                return None;
            };
            for item in items.by_ref() {
                if sender.send(decode(item)).is_err() {
                    break;
                }
            }
            drop(sender);
            Some(
                applier
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            )
        });
        // No thread to be had: apply here.
        return result.unwrap_or_else(|| took(&apply)(&mut items.map(decode)));
    }
    let _ = worth_a_thread;
    apply(&mut items.into_iter().map(decode))
}

#[cfg(not(target_arch = "wasm32"))]
fn second_core() -> bool {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from)) > 1
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

/// Decodes a yrs update from a peer, refusing oversized or malformed ones whole.
pub(crate) fn decode_update(bytes: &[u8], limits: &DocLimits) -> Result<Update, DropReason> {
    if bytes.len() > limits.max_update_size {
        return Err(DropReason::Oversized);
    }
    // yrs would recurse through the nesting (and overflow the stack) before any check.
    if nesting::any_depth(bytes).is_some_and(|depth| depth > nesting::MAX_ANY_DEPTH) {
        return Err(DropReason::Malformed);
    }
    match catch_unwind(|| Update::decode_v1(bytes)) {
        Ok(Ok(update)) => Ok(update),
        _ => Err(DropReason::Malformed),
    }
}

/// A y-sync message for one document, as it travels in a `Doc` wire message.
pub(crate) fn encode_sync(doc: DocId, message: SyncMessage) -> Message {
    let mut body = vec![doc as u8];
    body.extend_from_slice(&YMessage::Sync(message).encode_v1());
    Message::Doc(Bytes::from(body))
}

/// Y-sync step 2: what a peer at `remote` is missing, in [`pieces`].
fn step2(doc: DocId, synced: &SyncedDoc, remote: &StateVector) -> Vec<Message> {
    let pieces = synced.diff_pieces_for(remote);
    pieces
        .into_iter()
        .map(|piece| encode_sync(doc, SyncMessage::SyncStep2(piece)))
        .collect()
}

/// Step 1 of y-sync (this document's state vector) for document `doc`.
fn step1(doc: DocId, synced: &SyncedDoc) -> Message {
    encode_sync(doc, SyncMessage::SyncStep1(synced.state_vector()))
}

/// Splits a `Doc` wire body into its document and y-sync message.
pub(crate) fn decode_sync(body: &[u8]) -> Result<(DocId, SyncMessage), DropReason> {
    let (&first, rest) = body.split_first().ok_or(DropReason::Malformed)?;
    let doc = DocId::from_byte(first).ok_or(DropReason::Unknown)?;
    let decoded = catch_unwind(|| {
        let mut decoder = DecoderV1::new(Cursor::new(rest));
        YMessage::decode(&mut decoder)
    });
    match decoded {
        Ok(Ok(YMessage::Sync(message))) => Ok((doc, message)),
        Ok(Ok(_)) => Err(DropReason::Unknown),
        _ => Err(DropReason::Malformed),
    }
}

/// The room's shared document. See the [module docs](self).
#[derive(Resource, Debug)]
pub struct SharedDoc {
    synced: SyncedDoc,
}

impl Default for SharedDoc {
    fn default() -> Self {
        Self::new(Doc::new())
    }
}

impl std::ops::Deref for SharedDoc {
    type Target = SyncedDoc;

    fn deref(&self) -> &SyncedDoc {
        &self.synced
    }
}

impl std::ops::DerefMut for SharedDoc {
    fn deref_mut(&mut self) -> &mut SyncedDoc {
        &mut self.synced
    }
}

impl SharedDoc {
    /// Wraps an existing document (e.g. one loaded from disk).
    pub fn new(doc: Doc) -> Self {
        Self {
            synced: SyncedDoc::new(doc),
        }
    }

    /// The shared text `name`, created if needed.
    pub fn text(&self, name: &str) -> TextRef {
        self.doc().get_or_insert_text(name)
    }

    /// The shared map `name`, created if needed.
    pub fn map(&self, name: &str) -> MapRef {
        self.doc().get_or_insert_map(name)
    }

    /// The shared array `name`, created if needed.
    pub fn array(&self, name: &str) -> ArrayRef {
        self.doc().get_or_insert_array(name)
    }

    /// The current contents of the shared text `name`.
    pub fn text_string(&self, name: &str) -> String {
        let text = self.text(name);
        text.get_string(&self.doc().transact())
    }
}

/// Remote changes were applied to the [`SharedDoc`] this frame.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct SharedDocChanged {
    /// The peers whose updates were applied.
    pub from: Vec<PeerId>,
}

/// Adds the [`SharedDoc`] and its sync. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<SharedDoc>()
        .init_resource::<HeldStep1>()
        .add_message::<SharedDocChanged>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            (
                send_state_vectors,
                ask_for_missing_history,
                receive_doc_messages,
            )
                .chain()
                .in_set(Step::SyncDocs),
        )
        .add_stage_systems(PeerSyncSystems::Collect, send_local_updates)
        // After this frame's catch-up is applied (in `Apply`), so the answers to these
        // step 1s hold only what it lacked.
        .add_stage_systems(PeerSyncSystems::Collect, send_held_step1)
        // Before hellos are answered or sent this frame (a save loaded at start-up makes
        // a peer not fresh from its first frame; edits of this frame count from the
        // next, which a hint can afford).
        .add_stage_systems(
            PeerSyncSystems::Receive,
            note_fresh_docs.in_set(Step::NoteDocs),
        );
}

/// Starts y-sync with every peer that just joined, for every synced document: step 1
/// (our state vector, answered with what we lack), unless the peer sends us its
/// whole state anyway; and our whole state to a peer that said it was fresh.
#[allow(clippy::too_many_arguments)]
fn send_state_vectors(
    mut joined: MessageReader<PeerJoined>,
    doc: Res<SharedDoc>,
    entities: Option<Res<crate::durable::EntityDoc>>,
    links: Query<&crate::net::session::Inbound>,
    fresh: Res<FreshDocs>,
    mut held: ResMut<HeldStep1>,
    time: Res<Time<Real>>,
    mut outbox: ResMut<Outbox>,
) {
    let docs = synced_docs(&doc, entities.as_deref());
    // Each document's whole state, encoded once however many fresh peers join.
    let mut whole: Vec<Option<Vec<Message>>> = vec![None; docs.len()];
    for joined in joined.read() {
        let to = Recipients::Peer(joined.peer);
        let Ok(inbound) = links.get(joined.entity) else {
            continue;
        };
        let handshake = &inbound.handshake;
        let hold_step1 = fresh.holds_step1_to(joined.peer);
        if hold_step1 && !handshake.we_are_sent_everything() {
            held.0.push((joined.peer, time.elapsed()));
        }
        for (&(id, synced), whole) in docs.iter().zip(&mut whole) {
            if handshake.they_want_everything() {
                let state = whole.get_or_insert_with(|| step2(id, synced, &StateVector::default()));
                for piece in state.iter() {
                    outbox.push(to, Channel::Reliable, piece.clone());
                }
            }
            if !handshake.we_are_sent_everything() && !hold_step1 {
                outbox.push(to, Channel::Reliable, step1(id, synced));
            }
        }
    }
}

/// Notes when this peer's documents stop being empty (see [`Hello::fresh`]).
///
/// [`Hello::fresh`]: crate::net::wire::Hello::fresh
fn note_fresh_docs(
    mut fresh: ResMut<FreshDocs>,
    doc: Res<SharedDoc>,
    entities: Option<Res<crate::durable::EntityDoc>>,
    mut left: MessageReader<PeerLeft>,
    mut rejected: MessageReader<PeerRejected>,
) {
    for peer in left
        .read()
        .map(|l| l.peer)
        .chain(rejected.read().map(|r| r.peer))
    {
        fresh.forget(peer);
    }
    if !fresh.empty {
        return;
    }
    // Nothing integrated, nothing to delete: the state vector says it all.
    let empty = |synced: &SyncedDoc| synced.state_vector().is_empty();
    if !empty(&doc) || entities.is_some_and(|e| !empty(&e)) {
        fresh.empty = false;
    }
}

/// How long a fresh peer holds back y-sync step 1 to the other peers while the whole
/// state it asked one peer for (see [`Hello::fresh`](crate::net::wire::Hello::fresh)) does
/// not come.
pub const HELD_STEP1_WAIT: Duration = Duration::from_secs(2);

/// Peers whose y-sync step 1 waits for the whole state this peer asked another for,
/// each with when it joined.
#[derive(Resource, Default)]
struct HeldStep1(Vec<(PeerId, Duration)>);

/// Sends the held step 1s once the asked-for state came (or its sender went, or
/// [`HELD_STEP1_WAIT`] passed); by now it is applied, so their answers hold only
/// what that state lacked.
fn send_held_step1(
    fresh: Res<FreshDocs>,
    mut held: ResMut<HeldStep1>,
    peers: Res<Peers>,
    doc: Res<SharedDoc>,
    entities: Option<Res<crate::durable::EntityDoc>>,
    mut outbox: ResMut<Outbox>,
    time: Res<Time<Real>>,
) {
    if held.0.is_empty() {
        return;
    }
    let now = time.elapsed();
    held.0.retain(|&(peer, since)| {
        if fresh.holds_step1_to(peer) && now.saturating_sub(since) < HELD_STEP1_WAIT {
            return true;
        }
        if peers.entity(peer).is_some() {
            for (id, synced) in synced_docs(&doc, entities.as_deref()) {
                outbox.push(Recipients::Peer(peer), Channel::Reliable, step1(id, synced));
            }
        }
        false
    });
}

/// Asks the room (y-sync step 1) for what out-of-order updates wait for.
fn ask_for_missing_history(
    doc: Res<SharedDoc>,
    entity_doc: Option<Res<crate::durable::EntityDoc>>,
    mut outbox: ResMut<Outbox>,
    time: Res<Time<Real>>,
) {
    let now = time.elapsed();
    for (id, synced) in synced_docs(&doc, entity_doc.as_deref()) {
        if synced.wants_sync(now) {
            outbox.push(Recipients::All, Channel::Reliable, step1(id, synced));
        }
    }
}

/// The documents this peer keeps in sync, with their ids.
fn synced_docs<'a>(
    doc: &'a SharedDoc,
    entities: Option<&'a crate::durable::EntityDoc>,
) -> Vec<(DocId, &'a SyncedDoc)> {
    let mut docs: Vec<(DocId, &SyncedDoc)> = vec![(DocId::Room, doc)];
    if let Some(entities) = entities {
        docs.push((DocId::Entities, entities));
    }
    docs
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum MessageKind {
    Sync,
    Update,
}

/// Routes `Doc` messages: answers step 1, applies step 2 and updates.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive_doc_messages(
    mut inbox: ResMut<Inbox>,
    doc: Res<SharedDoc>,
    mut entity_doc: Option<ResMut<crate::durable::EntityDoc>>,
    mut fresh: ResMut<FreshDocs>,
    peers: Res<Peers>,
    mut stats: Query<&mut PeerStats>,
    mut outbox: ResMut<Outbox>,
    mut changed: MessageWriter<SharedDocChanged>,
) {
    if inbox.doc.is_empty() {
        return;
    }
    let mut room_updates = Vec::new();
    let mut drop = |peer: PeerId, reason: DropReason, what: &str| {
        debug!("refused {what} from peer `{peer}`: {reason:?}");
        if let Some(mut stats) = peers.entity(peer).and_then(|e| stats.get_mut(e).ok()) {
            stats.count_drop(reason);
        }
    };
    for (peer, body) in std::mem::take(&mut inbox.doc) {
        let (doc_id, message) = match decode_sync(&body) {
            Ok(decoded) => decoded,
            Err(reason) => {
                drop(peer, reason, "a document message");
                continue;
            }
        };
        let synced: &SyncedDoc = match doc_id {
            DocId::Room => &doc,
            DocId::Entities => match &entity_doc {
                Some(entities) => entities,
                None => {
                    drop(peer, DropReason::Unknown, "an entity document message");
                    continue;
                }
            },
        };
        let message_kind = match &message {
            SyncMessage::Update(_) => MessageKind::Update,
            _ => MessageKind::Sync,
        };
        match message {
            SyncMessage::SyncStep1(remote) => {
                for piece in step2(doc_id, synced, &remote) {
                    outbox.push(Recipients::Peer(peer), Channel::Reliable, piece);
                }
            }
            SyncMessage::SyncStep2(bytes) | SyncMessage::Update(bytes) => {
                if message_kind == MessageKind::Sync && fresh.asked == Some(peer) {
                    fresh.answered = true;
                }
                // Decoded when they are applied, so that a large catch-up is decoded
                // while it is applied (`SyncedDoc::apply_encoded`). A live entity
                // update is checked now: it may wait for ownership, as bytes.
                match (doc_id, message_kind, entity_doc.as_mut()) {
                    (DocId::Room, _, _) => room_updates.push((peer, bytes)),
                    (DocId::Entities, MessageKind::Sync, Some(entities)) => {
                        entities.queue_catch_up(peer, bytes);
                    }
                    (DocId::Entities, MessageKind::Update, Some(entities)) => {
                        match decode_update(&bytes, &entities.limits) {
                            Ok(update) => entities.queue_live(peer, update, bytes),
                            Err(reason) => drop(peer, reason, "a document update"),
                        }
                    }
                    (DocId::Entities, _, None) => {}
                }
            }
        }
    }
    let mut room_from = Vec::new();
    let mut refused = Vec::new();
    let applied = doc.apply_encoded(
        Vec::new(),
        room_updates,
        |from, _| {
            if !room_from.contains(&from) {
                room_from.push(from);
            }
            true
        },
        &mut refused,
    );
    for (peer, reason) in refused {
        drop(peer, reason, "a document update");
    }
    if let Err(error) = applied {
        error!("a remote update failed to apply to the shared document: {error}");
    }
    if !room_from.is_empty() {
        changed.write(SharedDocChanged { from: room_from });
    }
}

/// Sends this frame's local edits, merged into one update per document.
fn send_local_updates(doc: Res<SharedDoc>, mut outbox: ResMut<Outbox>) {
    if let Some(update) = doc.take_local_update() {
        outbox.push(
            Recipients::All,
            Channel::Reliable,
            encode_sync(DocId::Room, SyncMessage::Update(update)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Map, MapPrelim, Options, Text};

    fn update_of(doc: &Doc, edit: impl FnOnce(&mut TransactionMut)) -> Update {
        let before = doc.transact().state_vector();
        edit(&mut doc.transact_mut());
        Update::decode_v1(&doc.transact().encode_diff_v1(&before)).unwrap()
    }

    /// A fresh joiner whose asked peer is slow to answer (its link takes seconds)
    /// asks the others after [`HELD_STEP1_WAIT`]; one whose asked peer leaves asks
    /// them at once. Either way it converges with the room.
    #[test]
    fn a_fresh_joiner_asks_the_others_when_the_asked_peer_fails_it() {
        use crate::net::transport::memory::LinkConditioner;
        use crate::testing::TestRoom;

        for leaves in [false, true] {
            let mut room = TestRoom::new(8);
            let a = room.add_peer(|_| {});
            room.add_peer(|_| {});
            assert!(room.step_until(10, TestRoom::fully_connected));
            {
                let doc = room.app(a).world().resource::<SharedDoc>();
                doc.text("note")
                    .insert(&mut doc.transact_mut(), 0, "known to all");
            }
            room.step_n(3);
            let c = room.add_peer(|_| {});
            room.step(); // c's links open and its hellos leave
            let asked = room.app(c).world().resource::<FreshDocs>().asked;
            let asked = asked.expect("a fresh joiner asks one peer");
            let c_id = room.peer_id(c).unwrap();
            if leaves {
                room.network.set_link_up(asked, c_id, false);
            } else {
                let slow = LinkConditioner {
                    latency: Duration::from_secs(10),
                    ..LinkConditioner::PERFECT
                };
                room.network.set_conditioner(asked, c_id, slow);
                room.network.set_conditioner(c_id, asked, slow);
            }
            let note = |room: &TestRoom| {
                let doc = room.app(c).world().resource::<SharedDoc>();
                doc.text_string("note")
            };
            let frames = HELD_STEP1_WAIT.as_millis() as usize / 16;
            if leaves {
                assert!(room.step_until(10, |room| note(room) == "known to all"));
            } else {
                room.step_n(frames / 2);
                assert_eq!(note(&room), "", "still waiting for the asked peer");
                assert!(room.step_until(frames, |room| note(room) == "known to all"));
            }
        }
    }

    /// A large catch-up in pieces is decoded here and applied on the other thread: a
    /// malformed piece among them is refused and counted alone, pieces that come in
    /// the wrong order wait for the ones before, and the document ends whole.
    #[test]
    fn pieces_are_applied_as_they_are_decoded() {
        let author = Doc::new();
        let map = author.get_or_insert_map("m");
        {
            let mut txn = author.transact_mut();
            for n in 0..5_000 {
                map.insert(&mut txn, format!("key {n}"), format!("value {n}"));
            }
        }
        let (whole, ends) = {
            let txn = author.transact();
            (
                txn.encode_diff_v1(&StateVector::default()),
                txn.state_vector(),
            )
        };
        let pieces = pieces::split(&whole, 4 * 1024, &ends).expect("cut");
        assert!(whole.len() >= PIPELINE_MIN_BYTES && pieces.len() > 10);
        let peer = PeerId(7);
        let expected = author.transact().encode_diff_v1(&StateVector::default());

        // In order, with garbage in the middle: all but the garbage go in.
        let mut batch: Vec<_> = pieces.iter().map(|p| (peer, p.clone())).collect();
        batch.insert(3, (peer, vec![1, 1, 250, 3]));
        let reader = SyncedDoc::new(Doc::new());
        let mut refused = Vec::new();
        let applied = reader.apply_encoded(Vec::new(), batch, |_, _| true, &mut refused);
        assert_eq!(applied, Ok(pieces.len() as u64));
        assert_eq!(refused, vec![(peer, DropReason::Malformed)]);
        assert_eq!(reader.encode_state(), expected);

        // Backwards: each waits for the one before, until the first comes.
        let backwards: Vec<_> = pieces.iter().rev().map(|p| (peer, p.clone())).collect();
        let reader = SyncedDoc::new(Doc::new());
        let applied = reader.apply_encoded(Vec::new(), backwards, |_, _| true, &mut refused);
        assert_eq!(applied, Ok(pieces.len() as u64));
        assert_eq!(reader.waiting_updates(), 0);
        assert_eq!(reader.encode_state(), expected);

        // What `keep` turns down is not applied, and what waits on it waits on.
        let reader = SyncedDoc::new(Doc::new());
        let batch: Vec<_> = pieces.iter().map(|p| (peer, p.clone())).collect();
        let mut seen = 0;
        let keep = |_, _: &Update| {
            seen += 1;
            seen != 2
        };
        let applied = reader.apply_encoded(Vec::new(), batch, keep, &mut refused);
        assert_eq!(applied, Ok(1));
        assert_eq!(reader.waiting_updates(), pieces.len() - 2);
    }

    /// An update that skips part of its client's history waits for it; the full
    /// state, whose garbage-collected range spans the hole, then applies cleanly.
    /// (Handed to yrs as they come, the out-of-order update leaves a "skip" in the
    /// block store and the full state makes yrs panic in `BlockStore::push`.)
    #[test]
    fn out_of_order_updates_wait_for_the_hole() {
        let author = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(7),
            ..Options::default()
        });
        let root = author.get_or_insert_map("m");
        let u0 = update_of(&author, |txn| {
            root.insert(txn, "a", MapPrelim::default());
        });
        let inner = || match root.get(&author.transact(), "a") {
            Some(yrs::Out::YMap(map)) => map,
            _ => unreachable!(),
        };
        let (first, second) = (inner(), inner());
        let _u1 = update_of(&author, |txn| {
            first.insert(txn, "x", 1);
        });
        let u2 = update_of(&author, |txn| {
            second.insert(txn, "y", 2);
        });
        // Deleting the map garbage-collects x and y into one range.
        root.remove(&mut author.transact_mut(), "a");
        let full =
            Update::decode_v1(&author.transact().encode_diff_v1(&StateVector::default())).unwrap();

        let reader = SyncedDoc::new(Doc::new());
        reader.apply_remote(vec![u0]).unwrap();
        reader.apply_remote(vec![u2]).unwrap();
        assert_eq!(reader.waiting_updates(), 1, "u2 must wait for u1");
        assert!(reader.wants_sync(Duration::ZERO));
        assert!(
            !reader.wants_sync(Duration::from_millis(10)),
            "rate limited"
        );
        reader.apply_remote(vec![full]).unwrap();
        assert_eq!(reader.waiting_updates(), 0);
        assert_eq!(reader.state_vector(), author.transact().state_vector());
        let reader_root = reader.doc().get_or_insert_map("m");
        assert_eq!(reader_root.len(&reader.doc().transact()), 0);
    }

    /// An update whose history never comes (it is not in the room, or the update was
    /// made up) is given up after [`MAX_ASKS`] asks, and then the room is not asked
    /// again for it.
    #[test]
    fn an_update_whose_history_never_comes_is_given_up() {
        let author = Doc::new();
        let text = author.get_or_insert_text("t");
        let _u0 = update_of(&author, |txn| text.insert(txn, 0, "a"));
        let u1 = update_of(&author, |txn| text.insert(txn, 1, "b"));
        let reader = SyncedDoc::new(Doc::new());
        reader.apply_remote(vec![u1]).unwrap();
        assert_eq!(reader.waiting_updates(), 1);
        let mut asks = 0;
        for n in 0..100u64 {
            if reader.wants_sync(SYNC_RETRY * n as u32) {
                asks += 1;
            }
        }
        assert_eq!(asks, MAX_ASKS);
        assert_eq!(reader.waiting_updates(), 0);
        assert_eq!(reader.given_up_updates(), 1);
        assert_eq!(
            reader
                .doc()
                .get_or_insert_text("t")
                .get_string(&reader.doc().transact()),
            ""
        );
    }

    #[test]
    fn holes_are_found_per_client() {
        let mut known = StateVector::default();
        known.set_max(yrs::block::ClientID::new(1), 3);
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(1),
            ..Options::default()
        });
        let text = doc.get_or_insert_text("t");
        let whole = update_of(&doc, |txn| text.insert(txn, 0, "abcdef"));
        assert!(!leaves_hole(&whole, &known), "overlaps what is known");
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(1),
            ..Options::default()
        });
        let text = doc.get_or_insert_text("t");
        let _ = update_of(&doc, |txn| text.insert(txn, 0, "abcd"));
        let tail = update_of(&doc, |txn| text.insert(txn, 4, "ef"));
        assert!(leaves_hole(&tail, &known), "starts at 4, known up to 3");
        known.set_max(yrs::block::ClientID::new(1), 4);
        assert!(!leaves_hole(&tail, &known));
    }

    #[test]
    fn oversized_and_malformed_updates_are_refused() {
        let doc = Doc::new();
        doc.get_or_insert_text("t")
            .insert(&mut doc.transact_mut(), 0, "0123456789");
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        let small = DocLimits { max_update_size: 8 };
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
