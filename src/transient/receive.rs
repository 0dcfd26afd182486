//! The receiver's side: datagrams decoded under the per-peer budget, values applied
//! latest-wins (stale, duplicated, reordered and non-owner values dropped), values for
//! entities not known yet held; committed values read from the entity document.

use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::ecs::system::SystemParam;
use bevy::platform::collections::HashMap;
use bevy::platform::collections::hash_map::Entry;
use bevy::prelude::*;

use super::pack::{tick_after, unpack};
use super::smoothing::Interpolated;
use super::{Incoming, Pending, TransientConfig, TransientState, TransientType};
use crate::entity::{NetEntities, NetId, Owner};
use crate::net::peer::{PeerId, PeerLeft, PeerReplica, Peers, ReplicaId};
use crate::net::session::Inbox;
use crate::net::stats::{DropReason, PeerStats};
use crate::registry::{Decoded, SyncRegistry, whole_value};

/// Decodes transient datagrams, applying the per-peer budget and tick checks.
pub(super) fn decode_transient(
    mut inbox: ResMut<Inbox>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    registry: Res<SyncRegistry>,
    peers: Res<Peers>,
    mut senders: Query<(&PeerReplica, &mut PeerStats)>,
    mut left: MessageReader<PeerLeft>,
) {
    for left in left.read() {
        state.last_tick.remove(&left.peer);
    }
    let mut per_peer: HashMap<PeerId, usize> = HashMap::new();
    for (from, body) in std::mem::take(&mut inbox.transient) {
        let Some((replica, mut stats)) = peers.entity(from).and_then(|e| senders.get_mut(e).ok())
        else {
            continue;
        };
        let count = per_peer.entry(from).or_default();
        *count += 1;
        if *count > config.max_datagrams_per_peer_per_frame {
            stats.count_drop(DropReason::OverBudget);
            continue;
        }
        let Some((tick, entries)) = unpack(&body, replica.0, registry.framing()) else {
            debug!("dropped a malformed transient datagram from peer `{from}`");
            stats.count_drop(DropReason::Malformed);
            continue;
        };
        let last = state.last_tick.get(&from).copied();
        if let Some(last) = last
            && tick_after(tick, last)
            && tick.wrapping_sub(last) > config.max_tick_jump
        {
            debug!(
                "dropped a transient datagram from peer `{from}`: tick jumped from `{last}` to `{tick}`"
            );
            stats.count_drop(DropReason::Stale);
            continue;
        }
        if last.is_none_or(|last| tick_after(tick, last)) {
            state.last_tick.insert(from, tick);
        }
        for (type_index, id, bytes) in entries {
            state
                .incoming
                .entry(type_index)
                .or_default()
                .push(Incoming {
                    from,
                    id,
                    tick,
                    bytes,
                });
        }
    }
}

/// Who sent a value and who owns its entity: what [`apply_transient`] judges with.
#[derive(SystemParam)]
pub(super) struct Senders<'w, 's> {
    net: Res<'w, NetEntities>,
    peers: Res<'w, Peers>,
    owners: Query<'w, 's, &'static Owner>,
    replicas: Query<'w, 's, &'static PeerReplica>,
    stats: Query<'w, 's, &'static mut PeerStats>,
}

/// Where [`apply_transient`] puts values of `T`: the component, or its smoothing
/// buffer.
#[derive(SystemParam)]
pub(super) struct Targets<'w, 's, T: Component<Mutability = Mutable>> {
    commands: Commands<'w, 's>,
    values: Query<'w, 's, &'static mut T>,
    smoothing: Query<'w, 's, &'static mut Interpolated<T>>,
}

/// Applies this frame's values of `T`, checking order and ownership.
pub(super) fn apply_transient<T: Component<Mutability = Mutable> + Send + Sync + 'static>(
    mut kind: ResMut<TransientType<T>>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    time: Res<Time<Real>>,
    senders: Senders,
    targets: Targets<T>,
) {
    let Senders {
        net,
        peers,
        owners,
        replicas,
        mut stats,
    } = senders;
    let Targets {
        mut commands,
        values: mut targets,
        mut smoothing,
    } = targets;
    let now = time.elapsed();
    let index = kind.index;
    let codec = kind.codec;
    // This type's entries, moved out (not cloned: a clone of each value's bytes cost
    // two atomic counts per value).
    let mine = state.incoming.remove(&index).unwrap_or_default();
    let mut count_drop = |peer: PeerId, reason: DropReason| {
        if let Some(mut stats) = peers.entity(peer).and_then(|e| stats.get_mut(e).ok()) {
            stats.count_drop(reason);
        }
    };
    let mut values: Vec<Pending<T>> = Vec::with_capacity(mine.len());
    for Incoming {
        from,
        id,
        tick,
        bytes,
    } in mine
    {
        match (codec.decode)(&bytes, codec.param) {
            Some(value) => values.push(Pending {
                from,
                id,
                tick,
                value,
                since: now,
            }),
            None => count_drop(from, DropReason::Malformed),
        }
    }
    // Values held for entities that were not known yet come first (they are older).
    let held = std::mem::take(&mut kind.pending);
    let mut sender_cache: Option<(PeerId, Option<ReplicaId>)> = None;
    for pending in held.into_iter().chain(values) {
        let replica_of_sender = match sender_cache {
            Some((peer, replica)) if peer == pending.from => replica,
            _ => {
                let replica = peers
                    .entity(pending.from)
                    .and_then(|e| replicas.get(e).ok())
                    .map(|r| r.0);
                sender_cache = Some((pending.from, replica));
                replica
            }
        };
        let Some(entity) = net.entity(pending.id) else {
            if now.saturating_sub(pending.since) < config.pending_timeout
                && kind.pending.len() < 4_096
            {
                kind.pending.push_back(pending);
            } else {
                count_drop(pending.from, DropReason::Unknown);
            }
            continue;
        };
        let owner = owners.get(entity).ok().and_then(|o| o.0);
        if owner.is_none() || owner != replica_of_sender {
            count_drop(pending.from, DropReason::NotOwner);
            continue;
        }
        // One lookup: the last applied tick is read and replaced in place.
        let fresh = (pending.from, pending.tick);
        match kind.applied.entry(pending.id) {
            Entry::Occupied(mut last) => {
                let (sender, tick) = *last.get();
                if sender == pending.from && !tick_after(pending.tick, tick) {
                    count_drop(pending.from, DropReason::Stale);
                    continue;
                }
                last.insert(fresh);
            }
            Entry::Vacant(slot) => {
                slot.insert(fresh);
            }
        }
        if let Ok(mut buffer) = smoothing.get_mut(entity) {
            let sent = Duration::from_millis(u64::from(pending.tick));
            buffer.push_sample(pending.from, sent, now, pending.value);
        } else if let Ok(mut current) = targets.get_mut(entity) {
            *current = pending.value;
        } else {
            commands.entity(entity).insert(pending.value);
        }
    }
    prune_applied(&mut kind.applied, &net);
}

/// Forgets the last applied ticks of entities no longer in the world, once they
/// outnumber those in it (so the pass is paid for by as many despawns). A late value
/// for one of them waits as unknown and times out; one that comes back (its owner
/// back) takes its owner's next value.
pub(super) fn prune_applied(applied: &mut HashMap<NetId, (PeerId, u32)>, net: &NetEntities) {
    if applied.len() > 2 * net.len() + 256 {
        applied.retain(|id, _| net.entity(*id).is_some());
    }
}

/// Reads a committed value of `T` from its fields map in the document.
pub(super) fn decode_committed<T: Component<Mutability = Mutable>>(
    world: &World,
    fields: &yrs::MapRef,
    txn: &yrs::Transaction,
) -> Result<Decoded, String> {
    let Some(yrs::Any::Buffer(bytes)) = whole_value(fields, txn) else {
        return Err("a committed transient value is not bytes".into());
    };
    let codec = world.resource::<TransientType<T>>().codec;
    let value =
        (codec.decode)(&bytes, codec.param).ok_or("a committed transient value does not decode")?;
    Ok(Box::new(value))
}

/// Puts committed values of `T` on their entities.
pub(super) fn apply_committed<T: Component<Mutability = Mutable>>(
    world: &mut World,
    values: Vec<(Entity, Decoded)>,
) {
    // Every entity exists (materialised this frame); should one be gone, the rest
    // still go in.
    let _ = world.try_insert_batch(values.into_iter().map(|(entity, value)| {
        let value = *value
            .downcast::<T>()
            .expect("a type's values are decoded by that type's decode fn");
        (entity, value)
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::Replicated;
    use crate::testing::TestRoom;
    use crate::transient::{TransformEncoding, TransientAppExt};

    /// What a receiver keeps per entity and per sender does not outgrow the room:
    /// entries of despawned entities go once they outnumber the living, and a sender's
    /// last tick goes when it leaves.
    #[test]
    fn receivers_forget_despawned_entities_and_departed_senders() {
        let mut room = TestRoom::new(3);
        let setup = |app: &mut App| {
            app.sync_transform(TransformEncoding::Lossless);
        };
        let a = room.add_peer(setup);
        let b = room.add_peer(setup);
        assert!(room.step_until(10, TestRoom::fully_connected));
        let spawned: Vec<Entity> = (0..300)
            .map(|n| {
                let at = Transform::from_xyz(n as f32, 0.0, 0.0);
                room.app_mut(a).world_mut().spawn((Replicated, at)).id()
            })
            .collect();
        let applied = |room: &TestRoom| {
            let world = room.app(b).world();
            world.resource::<TransientType<Transform>>().applied.len()
        };
        let moved = |room: &mut TestRoom, entity: Entity| {
            let world = room.app_mut(a).world_mut();
            world.get_mut::<Transform>(entity).unwrap().translation.y += 1.0;
        };
        room.step_n(5);
        for &entity in &spawned {
            moved(&mut room, entity);
        }
        assert!(room.step_until(20, |room| applied(room) == 300));
        for entity in spawned {
            room.app_mut(a).world_mut().despawn(entity);
        }
        let last = room
            .app_mut(a)
            .world_mut()
            .spawn((Replicated, Transform::default()))
            .id();
        assert!(room.step_until(20, |room| {
            room.app(b).world().resource::<NetEntities>().len() == 1
        }));
        moved(&mut room, last);
        assert!(room.step_until(20, |room| applied(room) == 1));

        assert!(
            !room
                .app(b)
                .world()
                .resource::<TransientState>()
                .last_tick
                .is_empty()
        );
        room.disconnect(a);
        room.step_n(3);
        assert!(
            room.app(b)
                .world()
                .resource::<TransientState>()
                .last_tick
                .is_empty()
        );
    }
}
