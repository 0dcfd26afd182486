//! The remote apply path: catch-up applied as it comes, live updates held until the
//! ownership check allows them, refusals counted, and what changed materialised.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bevy::prelude::*;
use yrs::{DeepObservable, Update};

use super::authority::{TOUCH_OBSERVER, attach_touch_observer};
use super::entity_doc::{EntityDoc, HeldUpdate};
use super::materialise::{Dirty, materialise};
use super::{EntityDocConfig, OwnerLeftPolicy};
use crate::doc::levels::Admission;
use crate::doc::{Decoded, decode_live};
use crate::entity::{NetId, Owner};
use crate::net::peer::{
    LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerReplica, Peers, ReplicaId,
};
use crate::net::stats::{DropReason, PeerStats};

/// Live updates from one peer that may wait for their ownership at once.
const MAX_HELD_PER_PEER: usize = 256;

/// Applies queued remote entity updates (checking ownership of live ones) and
/// materialises what changed into the world.
pub(super) fn apply_remote_entities(world: &mut World) {
    let now = world.resource::<Time<Real>>().elapsed();
    let local = world.resource::<LocalPeer>().replica();
    let config = world.resource::<EntityDocConfig>().clone();
    let (present, replica_of) = room_view(world, local);
    let mut refused: Vec<(PeerId, DropReason)> = Vec::new();
    {
        let mut doc = world.resource_mut::<EntityDoc>();
        let (live, catch_up) = take_incoming(&doc, &mut refused);
        hold_live(&mut doc, live, (&replica_of, &config), now, &mut refused);
        apply_catch_up(&mut doc, catch_up, &mut refused);
        judge_held(&mut doc, &config, now, &mut refused);
    }
    count_refusals(world, refused);
    if let Some(dirty) = what_changed(world, config.owner_left) {
        materialise(world, dirty, &present, config.owner_left);
    }
}

/// The replicas in the room (this one included), and the replica of each peer.
fn room_view(
    world: &mut World,
    local: ReplicaId,
) -> (HashSet<ReplicaId>, HashMap<PeerId, ReplicaId>) {
    let mut present: HashSet<ReplicaId> = HashSet::from([local]);
    let mut replica_of: HashMap<PeerId, ReplicaId> = HashMap::new();
    let mut query = world.query::<(&Peer, &PeerReplica)>();
    for (peer, replica) in query.iter(world) {
        present.insert(replica.0);
        replica_of.insert(peer.id, replica.0);
    }
    (present, replica_of)
}

/// A live update: decoded on arrival, with its bytes for the shadow.
type Live = (PeerId, Decoded, Vec<u8>);

/// This frame's updates from peers: live ones decoded now (they may wait for their
/// ownership, decoded), catch-up still encoded (decoded as it is applied).
fn take_incoming(
    doc: &EntityDoc,
    refused: &mut Vec<(PeerId, DropReason)>,
) -> (Vec<Live>, Vec<(PeerId, Vec<u8>)>) {
    let limits = doc.limits();
    let (mut live, mut catch_up) = (Vec::new(), Vec::new());
    for remote in doc.synced().take_incoming() {
        if remote.catch_up {
            catch_up.push((remote.from, remote.bytes));
            continue;
        }
        let decoded = decode_live(&remote.bytes, &limits, remote.author)
            .and_then(|decoded| doc.synced().admits_roots(decoded));
        match decoded {
            Ok(update) => live.push((remote.from, update, remote.bytes)),
            Err(reason) => refused.push((remote.from, reason)),
        }
    }
    (live, catch_up)
}

/// Queues this frame's live updates behind those already held.
fn hold_live(
    doc: &mut EntityDoc,
    live: Vec<Live>,
    (replica_of, config): (&HashMap<PeerId, ReplicaId>, &EntityDocConfig),
    now: Duration,
    refused: &mut Vec<(PeerId, DropReason)>,
) {
    if live.is_empty() {
        return;
    }
    // What each peer has held: updates and bytes.
    let mut held: HashMap<PeerId, (usize, usize)> = HashMap::new();
    for h in &doc.held {
        let entry = held.entry(h.from).or_default();
        entry.0 += 1;
        entry.1 += h.bytes.len();
    }
    for (from, update, bytes) in live {
        // A peer may have at most `MAX_HELD_PER_PEER` updates or
        // `EntityDocConfig::max_held_bytes` waiting; past that (a flood of writes it
        // may not make) the rest are refused at once. One alone is always taken (its
        // size is bounded by `DocLimits`).
        let (count, size) = held.entry(from).or_default();
        let over_bytes = *count > 0 && *size + bytes.len() > config.max_held_bytes;
        if *count >= MAX_HELD_PER_PEER || over_bytes {
            doc.refused += 1;
            refused.push((from, DropReason::NotOwner));
            continue;
        }
        *count += 1;
        *size += bytes.len();
        doc.held.push_back(HeldUpdate {
            from,
            replica: replica_of.get(&from).copied(),
            update,
            bytes,
            since: now,
        });
    }
}

/// Applies a saved state and y-sync catch-up: relayed state, applied as is (see the
/// [route docs](super#ownership)), in one transaction, without per-change tracking:
/// everything is re-read. One that brings nothing new (the usual answer of a peer
/// that was already in step) is skipped: no re-read of the world for it.
fn apply_catch_up(
    doc: &mut EntityDoc,
    catch_up: Vec<(PeerId, Vec<u8>)>,
    refused: &mut Vec<(PeerId, DropReason)>,
) {
    let saved: Vec<_> = doc.saved.drain(..).map(|u| (PeerId(0), u, 0)).collect();
    if saved.is_empty() && catch_up.is_empty() {
        return;
    }
    let known = doc.state_vector();
    let mut news = false;
    let brings_news = |_: PeerId, update: &Update| {
        // Cheapest first: `extends` may walk every block (all of a piece that
        // continues past `known`, which `leaves_hole` sees at once).
        let new = crate::doc::leaves_hole(update, &known)
            || !update.delete_set().is_empty()
            || update.extends(&known);
        news |= new;
        new
    };
    let root = doc.root();
    root.unobserve_deep(TOUCH_OBSERVER);
    let applied = doc
        .synced
        .apply_encoded(saved, catch_up, brings_news, refused);
    if let Err(error) = applied {
        error!("a sync update failed to apply: {error}");
    }
    attach_touch_observer(doc.synced.doc(), Arc::clone(&doc.main_touched));
    if news {
        doc.shadow.stale = true;
        doc.everything_dirty = true;
    }
}

/// Judges held live updates in arrival order: one allowed goes in, one refused for
/// good is counted, one still waiting (for its history, or for ownership on its way
/// from a third peer) stays.
fn judge_held(
    doc: &mut EntityDoc,
    config: &EntityDocConfig,
    now: Duration,
    refused: &mut Vec<(PeerId, DropReason)>,
) {
    // Live updates, in arrival order; one not yet allowed holds back later ones
    // from the same sender (yrs needs each client's updates in order anyway).
    let mut blocked: HashSet<PeerId> = HashSet::new();
    let mut still_held = VecDeque::new();
    // The shadow is rebuilt (a pass over the whole document) at most once a frame:
    // what would need a second rebuild waits for the next frame, so updates that are
    // never allowed cost their sender's place in the queue, not the receiver's frame.
    let mut rebuilt = false;
    // Senders take turns going first, so one whose updates keep failing the check
    // cannot take every frame's rebuild from the others.
    doc.turn = doc.turn.wrapping_add(1);
    doc.held = take_turns(std::mem::take(&mut doc.held), doc.turn);
    while let Some(held) = doc.held.pop_front() {
        if blocked.contains(&held.from) {
            still_held.push_back(held);
            continue;
        }
        // Out of order (an earlier update of its client has not arrived) or
        // missing what it builds on: it waits, and the room is asked for the rest.
        let mut missing_history = doc.synced.would_leave_hole(&held.update.update);
        if !missing_history {
            // Its shared types must nest within the limit in the document before the
            // shadow (a document like any other) takes it.
            if doc.synced.admit(&held.update.shape) == Admission::TooDeep {
                debug!(
                    "refused an entity update from peer `{}`: a shared type in it nests too deep",
                    held.from
                );
                refused.push((held.from, DropReason::Malformed));
                continue;
            }
            if doc.shadow.stale {
                if rebuilt {
                    if now.saturating_sub(held.since) >= config.hold_timeout {
                        debug!(
                            "dropped an entity update from peer `{}`: its turn for the check did not come in time",
                            held.from
                        );
                        refused.push((held.from, DropReason::OverBudget));
                        continue;
                    }
                    blocked.insert(held.from);
                    still_held.push_back(held);
                    continue;
                }
                doc.rebuild_shadow();
                rebuilt = true;
            }
            let (touched, complete) = doc.shadow.apply(&held.bytes);
            let allowed = complete
                && held
                    .replica
                    .is_some_and(|r| doc.allowed(&touched, r, config.owner_left));
            if allowed {
                let waiting = doc.synced.waiting_updates();
                let from = held.from;
                let size = held.bytes.len();
                if let Err(error) = doc.synced.apply_remote(vec![(from, held.update, size)]) {
                    error!("an update from `{from}` failed to apply: {error}");
                }
                if doc.synced.waiting_updates() < waiting {
                    // Catch-up that waited for this update went in with it.
                    doc.shadow.stale = true;
                    doc.everything_dirty = true;
                }
                continue;
            }
            missing_history = !complete;
            // Tried on the shadow and not taken: the shadow no longer matches.
            doc.shadow.stale = true;
        }
        if missing_history {
            doc.synced.note_gap();
        }
        let expired = now.saturating_sub(held.since) >= config.hold_timeout;
        match (expired, missing_history) {
            (true, true) => debug!(
                // Not a refusal: the sync that fills the hole brings it again.
                "dropped an entity update from peer `{}` still missing its history; the room's sync brings it",
                held.from
            ),
            (true, false) => {
                warn!(
                    "refused an entity update from peer `{}`: it writes entities that peer does not own",
                    held.from
                );
                doc.refused += 1;
                refused.push((held.from, DropReason::NotOwner));
            }
            (false, _) => {
                // One waiting for ownership holds back the sender's later updates
                // (they may build on it). One missing history does not need to: any
                // later update of the same client continues past the same hole.
                if !missing_history {
                    blocked.insert(held.from);
                }
                still_held.push_back(held);
            }
        }
    }
    doc.held = still_held;
}

/// `held` with each sender's updates in their order, the senders in turn `turn`.
fn take_turns(held: VecDeque<HeldUpdate>, turn: usize) -> VecDeque<HeldUpdate> {
    let mut senders: Vec<PeerId> = Vec::new();
    for update in &held {
        if !senders.contains(&update.from) {
            senders.push(update.from);
        }
    }
    if senders.len() < 2 {
        return held;
    }
    senders.sort();
    let first = turn % senders.len();
    senders.rotate_left(first);
    let mut queues: Vec<VecDeque<HeldUpdate>> = senders.iter().map(|_| VecDeque::new()).collect();
    for update in held {
        let at = senders
            .iter()
            .position(|s| *s == update.from)
            .expect("every sender was listed");
        queues[at].push_back(update);
    }
    queues.into_iter().flatten().collect()
}

/// Counts refused updates on their senders' stats.
fn count_refusals(world: &mut World, refused: Vec<(PeerId, DropReason)>) {
    for (from, reason) in refused {
        if reason != DropReason::NotOwner {
            debug!("refused a document update from peer `{from}`: {reason:?}");
        }
        let entity = world.resource::<Peers>().entity(from);
        if let Some(mut stats) = entity.and_then(|e| world.get_mut::<PeerStats>(e)) {
            stats.count_drop(reason);
        }
    }
}

/// Which entities to bring in line with the document this frame, if any.
fn what_changed(world: &mut World, policy: OwnerLeftPolicy) -> Option<Dirty> {
    let touched = {
        let doc = world.resource::<EntityDoc>();
        std::mem::take(
            &mut *doc
                .main_touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    };
    let mut dirty: HashSet<String> = touched.roots;
    dirty.extend(touched.inner.into_keys());
    let replicas_changed = std::mem::take(&mut world.resource_mut::<OwnerChanges>().replicas);
    let everything_dirty = std::mem::take(&mut world.resource_mut::<EntityDoc>().everything_dirty);
    if everything_dirty {
        // A catch-up was applied untracked: re-read every entity, here or there.
        return Some(Dirty::All);
    }
    if !replicas_changed.is_empty() && policy == OwnerLeftPolicy::Despawn {
        // An owner came or went: its entities appear or vanish. Those shown are in the
        // world, those hidden for its absence were noted when they were hidden.
        let mut doc = world.resource_mut::<EntityDoc>();
        for replica in &replicas_changed {
            if let Some(ids) = doc.hidden.remove(replica) {
                dirty.extend(ids.iter().map(ToString::to_string));
            }
        }
        let mut owned = world.query::<(&NetId, &Owner)>();
        dirty.extend(
            owned
                .iter(world)
                .filter(|(_, owner)| owner.0.is_some_and(|o| replicas_changed.contains(&o)))
                .map(|(id, _)| id.to_string()),
        );
    }
    (!dirty.is_empty()).then_some(Dirty::Keys(dirty))
}

/// Replicas that joined or left, so their entities are re-checked for visibility.
#[derive(Resource, Default)]
pub(super) struct OwnerChanges {
    replicas: HashSet<ReplicaId>,
}

pub(super) fn note_replica_changes(
    mut joined: MessageReader<PeerJoined>,
    mut left: MessageReader<PeerLeft>,
    mut changes: ResMut<OwnerChanges>,
) {
    changes.replicas.extend(joined.read().map(|j| j.replica));
    changes
        .replicas
        .extend(left.read().filter_map(|l| l.replica));
}
