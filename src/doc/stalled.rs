//! What cannot go into a document yet: remote updates that start past what it has of
//! a client's history ([`Waiting`], kept by the crate, encoded), and the part of an
//! update that builds on items it lacks, which yrs keeps pending inside the document
//! ([`PendingWatch`] bounds it; [`Levels`] watches the shared types in it, whose depth
//! can only be told once what they build on comes). [`Pass`] places each update of
//! one apply.

use bevy::prelude::*;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, TransactionMut, Update, WriteTxn};

use bevy::platform::collections::HashMap;
use yrs::block::ClientID;

use super::levels::{Admission, Levels, MAX_STALLED_TYPES, Shape};
use super::{Decoded, DocLimits, decode_update, leaves_hole};
use crate::net::peer::PeerId;
use crate::net::stats::DropReason;

/// A remote update that cannot go in yet (it starts past what this document has of
/// a client's history), kept encoded: its bytes are what it costs to keep, and what
/// [`DocLimits::max_waiting_bytes`] counts.
pub(super) struct Waiting {
    pub(super) from: PeerId,
    pub(super) bytes: Vec<u8>,
    /// Where each client's blocks start: ready once the document has all before.
    lower: StateVector,
    /// Asks of the room since it began to wait.
    pub(super) asks: u32,
}

impl Waiting {
    pub(super) fn ready(&self, known: &StateVector) -> bool {
        !self.lower.iter().any(|(c, &start)| start > known.get(c))
    }

    /// Its update again (checked again for its shape: it passed the check when it
    /// arrived, and yrs encoded it).
    pub(super) fn decode(&self) -> Option<Decoded> {
        let limits = DocLimits {
            max_update_size: usize::MAX,
            ..DocLimits::default()
        };
        decode_update(&self.bytes, &limits)
            .inspect_err(|reason| debug!("a waiting update did not decode again: {reason:?}"))
            .ok()
    }
}

/// Updates yrs keeps pending inside a document do not outgrow this many merged into
/// them (each merge costs the size of what is pending) before they are given up.
pub const MAX_PENDING_MERGES: u32 = 256;

/// What yrs keeps pending in a document: since when (in asks of the room) and how much
/// went into it.
#[derive(Debug, Default)]
pub(super) struct PendingWatch {
    pub(super) merges: u32,
    pub(super) bytes: usize,
    pub(super) asks: u32,
}

/// One apply's view of what waits and what yrs keeps pending.
pub(super) struct Pass<'a> {
    pub(super) watch: &'a mut Option<PendingWatch>,
    pub(super) limits: &'a DocLimits,
    pub(super) given_up: &'a mut u64,
    pub(super) waiting: &'a mut Vec<Waiting>,
    pub(super) levels: &'a mut Levels,
    /// Updates refused here (a shared type nested too deep), with their senders.
    pub(super) refused: &'a mut Vec<(PeerId, DropReason)>,
}

impl Pass<'_> {
    /// Applies `update` if it leaves no hole (merged with what yrs keeps pending if it
    /// continues that) and its shared types are admitted, or puts it with the waiting
    /// ones, or refuses it (a type nested too deep); returns whether it went in.
    pub(super) fn place(
        &mut self,
        txn: &mut TransactionMut,
        from: PeerId,
        decoded: Decoded,
        size: usize,
        asks: u32,
    ) -> bool {
        let Decoded { update, shape } = decoded;
        if self.levels.admit(&shape) == Admission::TooDeep {
            debug!(
                "refused an update from `{from}`: a shared type in it would nest deeper than `{}`, or it describes items otherwise than before",
                super::MAX_TYPE_DEPTH
            );
            self.refused.push((from, DropReason::Malformed));
            return false;
        }
        let known = txn.state_vector();
        if !leaves_hole(&update, &known) {
            let drained = self.integrate(txn, update, size);
            self.record_taken(txn, &shape, drained);
            return true;
        }
        // A catch-up piece after one that waits in yrs for a later piece continues the
        // clients that wait: together they leave no hole.
        if txn.has_missing_updates() {
            let mut with_pending = known.clone();
            if let Some(pending) = txn.store().pending_update() {
                for (&client, ranges) in pending.update.insertions(true).iter() {
                    if let Some(end) = ranges.iter().map(|r| r.end).max() {
                        with_pending.set_max(client, end);
                    }
                }
            }
            if !leaves_hole(&update, &with_pending)
                && let Some(pending) = txn.prune_pending()
            {
                let merged = Update::merge_updates([pending, update]);
                // (What was pending is taken out and in again: drained or not.)
                self.integrate(txn, merged, size);
                self.record_taken(txn, &shape, true);
                return true;
            }
        }
        self.waiting.push(Waiting {
            from,
            bytes: update.encode_v1(),
            lower: update.state_vector_lower(),
            asks,
        });
        false
    }

    /// Applies an update that leaves no hole, and bounds what yrs keeps pending after.
    /// Returns whether some of what yrs kept pending went in with it (or was given up).
    fn integrate(&mut self, txn: &mut TransactionMut, update: Update, size: usize) -> bool {
        // What yrs kept pending waited for these: changed, something of it went in.
        let missing_before = txn
            .store()
            .pending_update()
            .map(|pending| pending.missing.clone());
        // One that yrs refuses part-way (a parent that is not a type, say) keeps what
        // it integrated; the frame's other updates still go in.
        // Where its clients end, to tell afterwards whether it stalled beside what
        // was pending already (with nothing pending before, anything pending after
        // is its own).
        let ends: Option<Vec<(yrs::block::ClientID, u32)>> = txn.has_missing_updates().then(|| {
            update
                .insertions(true)
                .iter()
                .filter_map(|(&client, ranges)| Some((client, ranges.iter().map(|r| r.end).max()?)))
                .collect()
        });
        if let Err(error) = txn.apply_update(update) {
            debug!("yrs refused part of a remote update: {error}");
        }
        let drained = missing_before.is_some_and(|before| {
            txn.store()
                .pending_update()
                .is_none_or(|pending| pending.missing != before)
        });
        if !txn.has_missing_updates() {
            *self.watch = None;
            self.levels.clear_stalled();
            return drained;
        }
        // Whether this one stalled (some of its blocks did not go in), or went in
        // beside what stays pending.
        let stalled = ends.is_none_or(|ends| {
            let known = txn.state_vector();
            ends.iter().any(|(client, end)| known.get(client) < *end)
        });
        let watch = self.watch.get_or_insert_with(PendingWatch::default);
        if !stalled && !drained {
            return false;
        }
        // One that stalls is merged into what is pending; one that lets some of it in
        // (or makes yrs retry it: what it waits for moved) costs a walk of it, here and
        // in yrs. Either counts.
        watch.merges += 1;
        if stalled {
            watch.bytes += size;
        }
        if watch.merges > MAX_PENDING_MERGES
            || watch.bytes > self.limits.max_waiting_bytes
            || self.levels.stalled_types() > MAX_STALLED_TYPES
        {
            debug!(
                "gave up what yrs kept pending: `{}` updates, `{}` bytes, `{}` shared types, still missing what they build on",
                watch.merges,
                watch.bytes,
                self.levels.stalled_types()
            );
            self.give_up_pending(txn);
            return true;
        }
        drained
    }

    /// Records the levels of what yrs took of an update of `shape` (integrated, or
    /// kept pending): nothing of what it refused; and, when some of what yrs kept
    /// pending went in (`drained`), the collected blocks of it at 0.
    fn record_taken(&mut self, txn: &mut TransactionMut, shape: &Shape, drained: bool) {
        let known = txn.state_vector();
        let at = |client: u64| known.get(&ClientID::new(client));
        let mut ends: HashMap<u64, u32> = shape.ends().map(|(c, _)| (c, at(c))).collect();
        // Past what is integrated, only what yrs keeps pending.
        if txn.has_missing_updates()
            && shape.ends().any(|(client, end)| end > at(client))
            && let Some(pending) = txn.store().pending_update()
        {
            for (client, ranges) in pending.update.insertions(true).iter() {
                if let (Some(taken), Some(end)) = (
                    ends.get_mut(&client.get()),
                    ranges.iter().map(|r| r.end).max(),
                ) {
                    *taken = (*taken).max(end);
                }
            }
        }
        let on_track = self
            .levels
            .record(shape, at, |client| ends.get(&client).copied().unwrap_or(0));
        if drained {
            // (Only then: the walk is as long as what is pending, which yrs walks
            // again itself when some of it goes in.)
            self.levels.place_collected(at);
        }
        if !on_track && txn.has_missing_updates() {
            debug!("gave up what yrs kept pending: its shared types took too long to follow");
            self.give_up_pending(txn);
        }
    }

    /// Gives up what yrs keeps pending (counted), and what was recorded of it.
    fn give_up_pending(&mut self, txn: &mut TransactionMut) {
        prune_pending(txn, self.levels);
        if let Some(watch) = self.watch.take() {
            *self.given_up += u64::from(watch.merges.max(1));
        }
    }
}

/// Drops what yrs keeps pending in the document, and what was recorded of it.
pub(super) fn prune_pending(txn: &mut TransactionMut, levels: &mut Levels) {
    txn.prune_pending();
    levels.forget_from(&txn.state_vector());
}
