//! [`SyncedDoc`]: one yrs document kept in sync with the room: local updates collected
//! per frame, remote ones waiting for their history where they would leave a hole,
//! catch-up decoded on this thread while another integrates it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bevy::prelude::*;
use yrs::{Doc, Origin, ReadTxn, StateVector, Transact, TransactionMut, Update};

use super::levels::{Admission, Levels, Shape};
use super::stalled::{Pass, PendingWatch, Waiting, prune_pending};
use super::{
    Decoded, DocLimits, MAX_ASKS, MAX_WAITING, REMOTE_ORIGIN, SYNC_RETRY, check, decode_update,
    leaves_hole, pieces,
};
use crate::net::peer::PeerId;
use crate::net::stats::DropReason;

/// A y-sync step 2 or update from a peer, still encoded, for the document's host.
#[derive(Debug)]
pub(crate) struct Remote {
    /// The sender.
    pub(crate) from: PeerId,
    /// Catch-up (a y-sync step 2) rather than a live update.
    pub(crate) catch_up: bool,
    /// Of a live update: the yrs client id its sender writes this document with (see
    /// [`identity`](crate::net::identity)), the only one its blocks may be of.
    pub(crate) author: Option<u64>,
    /// The update.
    pub(crate) bytes: Vec<u8>,
}

/// A yrs document kept in sync with the room: local updates collected per frame,
/// remote ones applied per frame.
pub(crate) struct SyncedDoc {
    doc: Doc,
    local_updates: Arc<Mutex<Vec<Vec<u8>>>>,
    updates: AtomicU64,
    /// Remote updates that arrived before an earlier part of their client's history,
    /// each with the number of times the room was asked for it since.
    waiting: Mutex<Vec<Waiting>>,
    /// Their bytes, as of the last apply.
    waiting_bytes: AtomicUsize,
    /// What yrs keeps pending in the document, if anything.
    pending: Mutex<Option<PendingWatch>>,
    /// How deeply each item taken in sits in shared types (see [`super::levels`]).
    levels: Arc<Mutex<Levels>>,
    /// Waiting updates given up after [`MAX_ASKS`] asks.
    given_up: AtomicU64,
    /// A live update was held for a hole (outside `waiting`) since the room was last
    /// asked to fill it.
    gap_seen: AtomicBool,
    /// When the room was last asked (y-sync step 1) for what this peer misses.
    last_asked: Mutex<Option<Duration>>,
    /// Remote updates routed here this frame, for the host to take.
    incoming: Mutex<Vec<Remote>>,
    /// The one root type peers may write in, for a document whose layout the crate
    /// defines (the entity document's `entities`); `None`: any.
    only_root: Option<&'static str>,
    /// [`DocLimits::max_update_size`]: the largest update accepted from a peer.
    max_update_size: AtomicUsize,
    /// [`DocLimits::max_waiting_bytes`].
    max_waiting_bytes: AtomicUsize,
    /// Catch-up updates (a late joiner's whole state, the answer to a y-sync step 1)
    /// at least twice this many bytes are sent in pieces of about this size, which the
    /// receiver decodes while it applies the one before (see [`pieces`]). Default
    /// [`pieces::PIECE_SIZE`]; `usize::MAX` sends them whole.
    piece_size: AtomicUsize,
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
    pub(crate) fn new(doc: Doc) -> Self {
        let local_updates = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&local_updates);
        let levels = Arc::new(Mutex::new(Levels::default()));
        let local_levels = Arc::clone(&levels);
        // Encode only local transactions: `observe_update_v1` would encode every
        // transaction, remote catch-ups of the whole document included, and then we
        // would throw those away.
        doc.observe_transaction_cleanup("bevy_peer_sync", move |txn, _| {
            let remote = txn
                .origin()
                .is_some_and(|o| *o == Origin::from(REMOTE_ORIGIN));
            let changed = !txn.delete_set().is_empty() || txn.after_state() != txn.before_state();
            if !remote && changed {
                let update = txn.encode_update_v1();
                // Peers may build on these items: where they sit is recorded now.
                match check::local_shape(&update) {
                    Some(shape) => {
                        // (Out of budget only for updates of a peer's making.)
                        let _ = local_levels
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .record(&shape, |_| u32::MAX, |_| u32::MAX);
                    }
                    None => debug!(
                        "a local update's layout is not one the check reads: shared types peers nest in its items will wait"
                    ),
                }
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(update);
            }
        })
        .expect("a new document has no transaction open");
        Self {
            doc,
            local_updates,
            updates: AtomicU64::new(0),
            waiting: Mutex::new(Vec::new()),
            waiting_bytes: AtomicUsize::new(0),
            pending: Mutex::new(None),
            levels,
            given_up: AtomicU64::new(0),
            gap_seen: AtomicBool::new(false),
            last_asked: Mutex::new(None),
            incoming: Mutex::new(Vec::new()),
            only_root: None,
            max_update_size: AtomicUsize::new(DocLimits::default().max_update_size),
            max_waiting_bytes: AtomicUsize::new(DocLimits::default().max_waiting_bytes),
            piece_size: AtomicUsize::new(pieces::PIECE_SIZE),
        }
    }

    /// Limits on what peers send for this document.
    /// This document with peers' writes kept to root type `root` (see
    /// [`SyncedDoc::admits_roots`]).
    pub(crate) fn with_only_root(mut self, root: &'static str) -> Self {
        self.only_root = Some(root);
        self
    }

    /// `decoded`, unless it writes in a root type peers may not write in here: an
    /// update of the entity document with items in another root than `entities` (kept,
    /// saved and sent to every late joiner, though nothing reads it) is refused as
    /// [`DropReason::Unknown`].
    pub(crate) fn admits_roots(&self, decoded: Decoded) -> Result<Decoded, DropReason> {
        match self.only_root {
            Some(root) if !decoded.shape.roots_only(root) => Err(DropReason::Unknown),
            _ => Ok(decoded),
        }
    }

    pub(crate) fn limits(&self) -> DocLimits {
        DocLimits {
            max_update_size: self.max_update_size.load(Ordering::Relaxed),
            max_waiting_bytes: self.max_waiting_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn set_limits(&self, limits: DocLimits) {
        self.max_update_size
            .store(limits.max_update_size, Ordering::Relaxed);
        self.max_waiting_bytes
            .store(limits.max_waiting_bytes, Ordering::Relaxed);
    }

    /// The size catch-up is cut into (see [`pieces`]).
    pub(crate) fn piece_size(&self) -> usize {
        self.piece_size.load(Ordering::Relaxed)
    }

    pub(crate) fn set_piece_size(&self, size: usize) {
        self.piece_size.store(size, Ordering::Relaxed);
    }

    /// Routes a peer's update here, for the host to take this frame.
    pub(crate) fn push_incoming(&self, remote: Remote) {
        self.incoming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(remote);
    }

    /// Takes the updates routed here since the last call.
    pub(crate) fn take_incoming(&self) -> Vec<Remote> {
        std::mem::take(&mut *self.incoming.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// The document.
    pub(crate) fn doc(&self) -> &Doc {
        &self.doc
    }

    /// A local read-write transaction. Its changes go out at the end of the frame.
    pub(crate) fn transact_mut(&self) -> TransactionMut<'_> {
        self.doc.transact_mut()
    }

    /// The state vector (what this document has seen, per client).
    pub(crate) fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    /// The whole integrated document as one update (for saving, or a late joiner).
    ///
    /// Updates still waiting for their dependencies are left out: they are not state
    /// yet, their authors send them again on the next sync. (Encoding them in, as
    /// `encode_state_as_update_v1` does, was seen to upset yrs' later integration of
    /// the same pending updates.)
    pub(crate) fn encode_state(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    /// Takes this frame's local updates, merged into one.
    pub(crate) fn take_local_update(&self) -> Option<Vec<u8>> {
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
    /// Updates refused here (a shared type nested too deep) are dropped, logged.
    pub(crate) fn apply_remote(
        &self,
        updates: Vec<(PeerId, Decoded, usize)>,
    ) -> Result<(), String> {
        let mut refused = Vec::new();
        let applied = self.apply_in_turn(&mut updates.into_iter(), &mut refused);
        for (from, reason) in refused {
            debug!("refused an update from `{from}`: {reason:?}");
        }
        applied.map(|_| ())
    }

    /// Whether an update of this `shape` may go in (see [`Levels::admit`]).
    pub(crate) fn admit(&self, shape: &Shape) -> Admission {
        self.levels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(shape)
    }

    /// Runs of items whose levels are recorded (see [`super::levels`]).
    pub(crate) fn level_runs(&self) -> usize {
        self.levels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runs()
    }

    /// Collected blocks yrs kept pending looked at so far (see [`super::levels`]).
    pub(crate) fn collected_visits(&self) -> u64 {
        self.levels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .collected_visits()
    }

    /// [`SyncedDoc::apply_remote`] for updates that come in turn (decoded meanwhile),
    /// each with its encoded size; returns how many were applied.
    ///
    /// yrs keeps the part of an update that builds on items it does not have (an
    /// origin or parent of another client, a deletion of unknown items) pending inside
    /// the document, and merges each later update that also stalls into it: honest
    /// catch-up in pieces needs that (a piece can build on a later one), but a peer
    /// can also make it grow for ever. So what yrs keeps pending is bounded
    /// ([`MAX_PENDING_MERGES`] updates, [`DocLimits::max_waiting_bytes`], and
    /// [`MAX_ASKS`] asks of the room) and then given up. An update that continues a
    /// client's history where what yrs keeps pending ends is merged with it before it
    /// goes in (handed to yrs alone it would leave a hole in that history, and wait
    /// for ever on the piece that waits for it).
    fn apply_in_turn(
        &self,
        updates: &mut dyn Iterator<Item = (PeerId, Decoded, usize)>,
        refused: &mut Vec<(PeerId, DropReason)>,
    ) -> Result<u64, String> {
        // Waiting updates can only become ready once new remote history arrives: with
        // none, nothing to retry (this runs every frame).
        let mut updates = updates.peekable();
        if updates.peek().is_none() {
            return Ok(0);
        }
        let mut waiting =
            std::mem::take(&mut *self.waiting.lock().unwrap_or_else(PoisonError::into_inner));
        let mut watch = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let mut levels = self.levels.lock().unwrap_or_else(PoisonError::into_inner);
        let limits = self.limits();
        let mut applied = 0u64;
        let mut given_up = 0u64;
        let result = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = self.doc.transact_mut_with(REMOTE_ORIGIN);
            let mut pass = Pass {
                watch: &mut watch,
                limits: &limits,
                given_up: &mut given_up,
                waiting: &mut waiting,
                levels: &mut levels,
                refused,
            };
            for (from, decoded, size) in updates {
                if !pass.place(&mut txn, from, decoded, size, 0) {
                    continue;
                }
                applied += 1;
                // What waited for it may follow now, in the order it came.
                loop {
                    let known = txn.state_vector();
                    let Some(ready) = pass.waiting.iter().position(|w| w.ready(&known)) else {
                        break;
                    };
                    let entry = pass.waiting.remove(ready);
                    if let Some(decoded) = entry.decode()
                        && pass.place(&mut txn, entry.from, decoded, entry.bytes.len(), entry.asks)
                    {
                        applied += 1;
                    }
                }
            }
            Ok(())
        }));
        drop(watch);
        drop(levels);
        self.updates.fetch_add(applied, Ordering::Relaxed);
        let mut bytes: usize = waiting.iter().map(|w| w.bytes.len()).sum();
        let mut over = 0;
        while waiting.len() - over > MAX_WAITING || bytes > limits.max_waiting_bytes {
            bytes -= waiting[over].bytes.len();
            over += 1;
        }
        if over > 0 {
            waiting.drain(..over);
            debug!(
                "gave up `{over}` waiting updates, over `{MAX_WAITING}` or `{}` bytes; y-sync brings them if the room has them",
                limits.max_waiting_bytes
            );
        }
        self.given_up
            .fetch_add(over as u64 + given_up, Ordering::Relaxed);
        self.waiting_bytes.store(bytes, Ordering::Relaxed);
        *self.waiting.lock().unwrap_or_else(PoisonError::into_inner) = waiting;
        result
            .unwrap_or_else(|_| Err("yrs panicked while applying an update".into()))
            .map(|()| applied)
    }

    /// Bytes of remote updates waiting for their history (encoded).
    pub(crate) fn waiting_bytes(&self) -> usize {
        self.waiting_bytes.load(Ordering::Relaxed)
    }

    /// How many remote updates wait for an earlier part of their client's history.
    pub(crate) fn waiting_updates(&self) -> usize {
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
        waiting.retain_mut(|entry| {
            entry.asks += 1;
            entry.asks <= MAX_ASKS
        });
        let given_up = before - waiting.len();
        self.waiting_bytes.store(
            waiting.iter().map(|w| w.bytes.len()).sum(),
            Ordering::Relaxed,
        );
        if given_up > 0 {
            self.given_up.fetch_add(given_up as u64, Ordering::Relaxed);
            debug!(
                "gave up `{given_up}` updates still missing their history after `{MAX_ASKS}` asks; y-sync brings them when their holder is back"
            );
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(watch) = pending.as_mut() {
            watch.asks += 1;
            if watch.asks > MAX_ASKS {
                prune_pending(
                    &mut self.doc.transact_mut_with(REMOTE_ORIGIN),
                    &mut self.levels.lock().unwrap_or_else(PoisonError::into_inner),
                );
                self.given_up
                    .fetch_add(u64::from(watch.merges), Ordering::Relaxed);
                *pending = None;
                debug!(
                    "gave up what yrs kept pending after `{MAX_ASKS}` asks of the room: what it builds on never came"
                );
            }
        }
        let gap = self.gap_seen.load(Ordering::Relaxed) || !waiting.is_empty() || pending.is_some();
        if !gap {
            return false;
        }
        *last = Some(now);
        self.gap_seen.store(false, Ordering::Relaxed);
        true
    }

    /// Out-of-order updates given up after [`MAX_ASKS`] asks of the room (their
    /// history never came: it is not in the room, or they were made up).
    pub(crate) fn given_up_updates(&self) -> u64 {
        self.given_up.load(Ordering::Relaxed)
    }

    /// How many updates (local transactions and remote updates) went through this
    /// document so far.
    pub(crate) fn update_count(&self) -> u64 {
        self.updates.load(Ordering::Relaxed)
    }

    /// The diff a peer with state vector `remote` is missing, in pieces of about
    /// [`SyncedDoc::piece_size`] bytes, each
    /// an update of its own, to apply in order (see [`pieces`]).
    pub(crate) fn diff_pieces_for(&self, remote: &StateVector) -> Vec<Vec<u8>> {
        let (diff, ends) = {
            let txn = self.doc.transact();
            (txn.encode_diff_v1(remote), txn.state_vector())
        };
        match pieces::split(&diff, self.piece_size(), &ends) {
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
        decoded: Vec<(PeerId, Decoded, usize)>,
        encoded: Vec<(PeerId, Vec<u8>)>,
        mut keep: impl FnMut(PeerId, &Update) -> bool + Send,
        refused: &mut Vec<(PeerId, DropReason)>,
    ) -> Result<u64, String> {
        let bytes: usize = encoded.iter().map(|(_, b)| b.len()).sum();
        let worth_a_thread = encoded.len() > 1 && bytes >= PIPELINE_MIN_BYTES;
        let limits = self.limits();
        decoded_in_turn(
            encoded,
            worth_a_thread,
            |(from, bytes)| {
                (
                    from,
                    decode_update(&bytes, &limits)
                        .and_then(|u| self.admits_roots(u))
                        .map(|u| (u, bytes.len())),
                )
            },
            |incoming| {
                let decoded = decoded
                    .into_iter()
                    .map(|(from, u, size)| (from, Ok((u, size))));
                let mut decode_refused = Vec::new();
                let mut updates =
                    decoded
                        .chain(incoming)
                        .filter_map(|(from, update)| match update {
                            Ok((decoded, size)) => {
                                keep(from, &decoded.update).then_some((from, decoded, size))
                            }
                            Err(reason) => {
                                decode_refused.push((from, reason));
                                None
                            }
                        });
                let mut apply_refused = Vec::new();
                let applied = self.apply_in_turn(&mut updates, &mut apply_refused);
                drop(updates);
                refused.extend(decode_refused);
                refused.extend(apply_refused);
                applied
            },
        )
    }
}

/// Bytes of updates in one batch from which applying them on another thread while
/// this one decodes pays for starting it (about 50 µs).
pub(super) const PIPELINE_MIN_BYTES: usize = 64 * 1024;

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

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, Map, MapPrelim, Options, Text, WriteTxn, types::ToJson};

    fn update_of(doc: &Doc, edit: impl FnOnce(&mut TransactionMut)) -> Decoded {
        let before = doc.transact().state_vector();
        edit(&mut doc.transact_mut());
        decoded(&doc.transact().encode_diff_v1(&before))
    }

    fn decoded(bytes: &[u8]) -> Decoded {
        decode_update(bytes, &DocLimits::default()).unwrap()
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

    /// A catch-up in pieces of a text three clients typed into at once, each piece
    /// applied alone: items whose origins lie in later pieces wait for them, and the
    /// document ends whole (whatever yrs cannot integrate yet waits in the crate, and
    /// must not wait for ever on a piece that itself waits for it).
    #[test]
    fn pieces_of_interleaved_text_from_many_clients_end_whole() {
        let authors: Vec<Doc> = (1..=3)
            .map(|c| {
                Doc::with_options(Options {
                    client_id: yrs::block::ClientID::new(c),
                    ..Options::default()
                })
            })
            .collect();
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u32
        };
        for round in 0..300 {
            for author in &authors {
                let text = author.get_or_insert_text("t");
                let mut txn = author.transact_mut();
                let len = text.len(&txn);
                let at = if len == 0 { 0 } else { next() % (len + 1) };
                text.insert(&mut txn, at, &format!("{round}-{} ", next() % 100));
                if len > 50 && next() % 3 == 0 {
                    text.remove_range(&mut txn, next() % (len - 10), 3);
                }
                // Maps nested in one another's maps, keys overwritten: shared types
                // whose level depends on other clients' items.
                let mut map = txn.get_or_insert_map("m");
                for _ in 0..next() % 4 {
                    let key = format!("k{}", next() % 3);
                    match map.get(&txn, &key) {
                        Some(yrs::Out::YMap(inner)) => map = inner,
                        _ => break,
                    }
                }
                let key = format!("k{}", next() % 3);
                if next() % 4 == 0 {
                    map.insert(&mut txn, key, round as i64);
                } else {
                    map.insert(&mut txn, key, MapPrelim::default());
                }
            }
            // Everyone hears everyone now and then, so that items build on others'.
            if round % 7 == 0 {
                for a in 0..authors.len() {
                    for b in 0..authors.len() {
                        if a != b {
                            let sv = authors[b].transact().state_vector();
                            let diff = authors[a].transact().encode_diff_v1(&sv);
                            authors[b]
                                .transact_mut()
                                .apply_update(Update::decode_v1(&diff).unwrap())
                                .unwrap();
                        }
                    }
                }
            }
        }
        let source = &authors[0];
        let (whole, ends) = {
            let txn = source.transact();
            (
                txn.encode_diff_v1(&StateVector::default()),
                txn.state_vector(),
            )
        };
        let expected = source
            .get_or_insert_text("t")
            .get_string(&source.transact());
        let expected_maps = source.get_or_insert_map("m").to_json(&source.transact());
        for size in [512, 2 * 1024, 8 * 1024] {
            let pieces = pieces::split(&whole, size, &ends).expect("cut");
            let reader = SyncedDoc::new(Doc::new());
            let mut refused = Vec::new();
            for piece in &pieces {
                reader
                    .apply_encoded(
                        Vec::new(),
                        vec![(PeerId(1), piece.clone())],
                        |_, _| true,
                        &mut refused,
                    )
                    .unwrap();
            }
            assert!(refused.is_empty());
            let got = reader
                .doc()
                .get_or_insert_text("t")
                .get_string(&reader.doc().transact());
            assert_eq!(got, expected, "pieces of {size} bytes ({})", pieces.len());
            let maps = reader
                .doc()
                .get_or_insert_map("m")
                .to_json(&reader.doc().transact());
            assert_eq!(maps, expected_maps, "maps in pieces of {size} bytes");
            assert_eq!(reader.waiting_updates(), 0);
        }
    }

    /// A shared type nested in a map a third peer made, whose update is still on its
    /// way: its depth cannot be told yet, yrs keeps it pending (it builds on the
    /// map), the level index keeps it as stalled, and both go in once the map comes.
    #[test]
    fn a_type_in_a_third_peers_map_waits_for_that_map() {
        let author = |c| {
            Doc::with_options(Options {
                client_id: yrs::block::ClientID::new(c),
                ..Options::default()
            })
        };
        let (a, b) = (author(1), author(2));
        let ua = update_of(&a, |txn| {
            txn.get_or_insert_map("m")
                .insert(txn, "inner", MapPrelim::default());
        });
        b.transact_mut()
            .apply_update(
                Update::decode_v1(&a.transact().encode_diff_v1(&StateVector::default())).unwrap(),
            )
            .unwrap();
        let ub = update_of(&b, |txn| {
            let Some(yrs::Out::YMap(inner)) = txn.get_or_insert_map("m").get(txn, "inner") else {
                panic!("b has a's map");
            };
            inner.insert(txn, "deeper", MapPrelim::default());
        });
        let reader = SyncedDoc::new(Doc::new());
        reader.apply_remote(vec![(PeerId(2), ub, 0)]).unwrap();
        let stalled = || reader.levels.lock().unwrap().stalled_types();
        assert!(reader.doc().transact().has_missing_updates());
        assert_eq!(stalled(), 1, "b's map waits for a's");
        reader.apply_remote(vec![(PeerId(1), ua, 0)]).unwrap();
        assert!(!reader.doc().transact().has_missing_updates());
        assert_eq!(stalled(), 0);
        assert_eq!(reader.state_vector(), b.transact().state_vector());
        let json = |doc: &Doc| doc.get_or_insert_map("m").to_json(&doc.transact());
        assert_eq!(json(reader.doc()), json(&b));
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
        let full = decoded(&author.transact().encode_diff_v1(&StateVector::default()));

        let reader = SyncedDoc::new(Doc::new());
        reader.apply_remote(vec![(PeerId(1), u0, 0)]).unwrap();
        reader.apply_remote(vec![(PeerId(1), u2, 0)]).unwrap();
        assert_eq!(reader.waiting_updates(), 1, "u2 must wait for u1");
        assert!(reader.wants_sync(Duration::ZERO));
        assert!(
            !reader.wants_sync(Duration::from_millis(10)),
            "rate limited"
        );
        reader.apply_remote(vec![(PeerId(1), full, 0)]).unwrap();
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
        reader.apply_remote(vec![(PeerId(1), u1, 0)]).unwrap();
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
        assert!(
            !leaves_hole(&whole.update, &known),
            "overlaps what is known"
        );
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(1),
            ..Options::default()
        });
        let text = doc.get_or_insert_text("t");
        let _ = update_of(&doc, |txn| text.insert(txn, 0, "abcd"));
        let tail = update_of(&doc, |txn| text.insert(txn, 4, "ef"));
        assert!(
            leaves_hole(&tail.update, &known),
            "starts at 4, known up to 3"
        );
        known.set_max(yrs::block::ClientID::new(1), 4);
        assert!(!leaves_hole(&tail.update, &known));
    }
}
