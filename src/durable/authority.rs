//! The ownership check of live updates: each is applied to a shadow copy of the
//! entity document first, and what it touched there is judged against the main
//! document (before) and the shadow (after). See the [route docs](super#ownership).

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};

use yrs::types::{Event, PathSegment};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Any, DeepObservable, Doc, Map, MapRef, Out, ReadTxn, Transact, Update};

use super::OwnerLeftPolicy;
use super::fields::{COMPONENTS, ENTITIES, OWNER, OWNERS, REQUESTS};
use crate::doc::REMOTE_ORIGIN;
use crate::entity::NetId;
use crate::net::peer::ReplicaId;

/// What a transaction on the shadow document touched.
#[derive(Debug, Default)]
pub(super) struct Touched {
    /// Entities added, removed or replaced at the top level.
    pub(super) roots: HashSet<String>,
    /// Per entity, the top-level keys changed inside it (`owner`, `components`).
    pub(super) inner: HashMap<String, HashSet<String>>,
}

pub(super) fn observe_touches(doc: &Doc) -> Arc<Mutex<Touched>> {
    let touched = Arc::new(Mutex::new(Touched::default()));
    attach_touch_observer(doc, Arc::clone(&touched));
    touched
}

pub(super) const TOUCH_OBSERVER: &str = "bevy_peer_sync";

pub(super) fn attach_touch_observer(doc: &Doc, sink: Arc<Mutex<Touched>>) {
    let root = doc.get_or_insert_map(ENTITIES);
    root.observe_deep(TOUCH_OBSERVER, move |txn, events| {
        let mut touched = sink.lock().unwrap_or_else(PoisonError::into_inner);
        for event in events.iter() {
            let path = match event {
                Event::Map(e) => e.path(),
                Event::Text(e) => e.path(),
                Event::Array(e) => e.path(),
                _ => continue,
            };
            match path.front() {
                None => {
                    if let Event::Map(e) = event {
                        touched
                            .roots
                            .extend(e.keys(txn).keys().map(|k| k.to_string()));
                    }
                }
                Some(PathSegment::Key(entity)) => {
                    let keys = touched.inner.entry(entity.to_string()).or_default();
                    match (path.get(1), event) {
                        (Some(PathSegment::Key(key)), Event::Map(e))
                            if path.len() == 2 && (&**key == OWNERS || &**key == REQUESTS) =>
                        {
                            keys.extend(e.keys(txn).keys().map(|k| format!("{key}/{k}")));
                        }
                        (Some(PathSegment::Key(key)), _) => {
                            keys.insert(key.to_string());
                        }
                        (None, Event::Map(e)) => {
                            keys.extend(e.keys(txn).keys().map(|k| k.to_string()))
                        }
                        _ => {
                            keys.insert(COMPONENTS.to_owned());
                        }
                    }
                }
                Some(PathSegment::Index(_)) => {}
            }
        }
    });
}

/// A copy of the entity document that live updates are tried on before they are
/// allowed into the real one.
pub(super) struct Shadow {
    doc: Doc,
    touched: Arc<Mutex<Touched>>,
    /// The shadow lags the main document (after y-sync catch-up, which is not
    /// checked): it is rebuilt before the next check instead of paying twice now.
    pub(super) stale: bool,
}

impl Shadow {
    pub(super) fn new() -> Self {
        let doc = Doc::new();
        let touched = observe_touches(&doc);
        Self {
            doc,
            touched,
            stale: false,
        }
    }

    /// Rebuilds the shadow from the main document (after a refused update).
    pub(super) fn rebuild(&mut self, main: &Doc) {
        // The integrated state, then the main document's pending updates as they are
        // (merging them into the state's encoding would put "skips" in the shadow's
        // block store; see `doc::leaves_hole`).
        let mut updates = Vec::new();
        {
            let txn = main.transact();
            updates.push(txn.encode_diff_v1(&yrs::StateVector::default()));
            if let Some(pending) = txn.store().pending_update() {
                updates.push(pending.update.encode_v1());
            }
            if let Some(pending) = txn.store().pending_ds() {
                // An update with no blocks, only the delete set.
                let mut encoder = yrs::updates::encoder::EncoderV1::new();
                yrs::encoding::write::Write::write_var(&mut encoder, 0u32);
                pending.encode(&mut encoder);
                updates.push(yrs::updates::encoder::Encoder::to_vec(encoder));
            }
        }
        let shadow = Doc::new();
        let touched = observe_touches(&shadow);
        {
            let mut txn = shadow.transact_mut_with(REMOTE_ORIGIN);
            for bytes in updates {
                if let Ok(update) = Update::decode_v1(&bytes) {
                    let _ = catch_unwind(AssertUnwindSafe(|| txn.apply_update(update)));
                }
            }
        }
        std::mem::take(&mut *touched.lock().unwrap_or_else(PoisonError::into_inner));
        self.doc = shadow;
        self.touched = touched;
        self.stale = false;
    }

    /// Applies an update to the shadow and reports what it touched, and whether it
    /// integrated completely (an update whose dependencies have not arrived stays
    /// pending in yrs and would be integrated later by someone else's update, so it
    /// waits instead).
    pub(super) fn apply(&self, bytes: &[u8]) -> (Touched, bool) {
        let mut complete = false;
        if let Ok(update) = Update::decode_v1(bytes) {
            let inserted = update.insertions(true);
            let deleted = update.delete_set().clone();
            let applied = catch_unwind(AssertUnwindSafe(|| {
                self.doc
                    .transact_mut_with(REMOTE_ORIGIN)
                    .apply_update(update)
            }));
            // Complete when nothing of this update was left pending (what others left
            // pending before, say a relayed update that can never integrate, does not
            // hold back this one).
            let txn = self.doc.transact();
            let store = txn.store();
            complete = matches!(applied, Ok(Ok(())))
                && store
                    .pending_update()
                    .is_none_or(|p| p.update.insertions(true).intersect(&inserted).is_empty())
                && store
                    .pending_ds()
                    .is_none_or(|ds| ds.intersect(&deleted).is_empty());
        }
        let touched =
            std::mem::take(&mut *self.touched.lock().unwrap_or_else(PoisonError::into_inner));
        (touched, complete)
    }

    /// Whether a change `touched` by replica `sender` is allowed, judged against the
    /// main document (before) and this shadow (after).
    pub(super) fn allowed(
        &self,
        main: &Doc,
        tombstones: &HashSet<String>,
        touched: &Touched,
        sender: ReplicaId,
        policy: OwnerLeftPolicy,
    ) -> bool {
        for entity in &touched.roots {
            match owner_in(main, entity) {
                None => {
                    // A spawn: only its creator, as owner.
                    let creator_ok = NetId::parse(entity).is_some_and(|id| id.creator == sender);
                    let owner_after = owner_in(&self.doc, entity);
                    if !creator_ok || owner_after.is_some_and(|o| o != Some(sender)) {
                        return false;
                    }
                }
                Some(_) if may_write(main, entity, sender) => {}
                Some(_) => return false,
            }
        }
        for (entity, keys) in &touched.inner {
            if keys.is_empty() || touched.roots.contains(entity) || may_write(main, entity, sender)
            {
                continue;
            }
            if owner_in(main, entity).is_none() {
                // An edit racing the entity's despawn lands in a deleted map: harmless.
                if tombstones.contains(entity) {
                    continue;
                }
                return false;
            }
            // A request for ownership: only the sender's own request entry.
            let own_request = format!("{REQUESTS}/{sender}");
            if keys.iter().all(|k| k == REQUESTS || *k == own_request) {
                continue;
            }
            // A claim of an orphan: only the owner keys, adding only the sender. Judged
            // on the update alone, so every peer judges it alike.
            let own_entry = format!("{OWNERS}/{sender}");
            let only_owner_keys = keys
                .iter()
                .all(|k| k == OWNER || k == OWNERS || *k == own_entry);
            if !(policy == OwnerLeftPolicy::Orphan && only_owner_keys) {
                return false;
            }
        }
        true
    }
}

/// The owner recorded for `entity` in `doc` (`Some(None)`: orphaned,
/// `None`: no such entity).
pub(super) fn owner_in(doc: &Doc, entity: &str) -> Option<Option<ReplicaId>> {
    let txn = doc.transact();
    let root = txn.get_map(ENTITIES)?;
    let Some(Out::YMap(map)) = root.get(&txn, entity) else {
        return None;
    };
    match map.get(&txn, OWNER) {
        Some(Out::Any(Any::String(owner))) => Some(ReplicaId::parse(&owner)),
        _ => Some(None),
    }
}

/// Whether `replica` owns `entity` in `doc` or has owned it: a replica keeps
/// write access to what it once owned, so that its edits in flight when a
/// hand-over or claim lands are judged the same on every peer, whatever order
/// they arrive in. (Concurrent writes then merge per field, one winner.)
pub(super) fn may_write(doc: &Doc, entity: &str, replica: ReplicaId) -> bool {
    let txn = doc.transact();
    let Some(root) = txn.get_map(ENTITIES) else {
        return false;
    };
    let Some(Out::YMap(map)) = root.get(&txn, entity) else {
        return false;
    };
    let owner = replica.to_string();
    if matches!(map.get(&txn, OWNER), Some(Out::Any(Any::String(o))) if *o == *owner) {
        return true;
    }
    matches!(map.get(&txn, OWNERS), Some(Out::YMap(owners)) if owners.contains_key(&txn, &owner))
}

/// [`owner_in`] within a transaction, from the entities root.
pub(super) fn owner_in_txn<T: ReadTxn>(
    root: &MapRef,
    txn: &T,
    entity: &str,
) -> Option<Option<ReplicaId>> {
    let Some(Out::YMap(map)) = root.get(txn, entity) else {
        return None;
    };
    match map.get(txn, OWNER) {
        Some(Out::Any(Any::String(owner))) => Some(ReplicaId::parse(&owner)),
        _ => Some(None),
    }
}
