//! Ownership: who may write a replicated entity, and how it changes hands. See the
//! [route docs](super#ownership) for the rules every peer judges alike.

use std::collections::HashSet;

use bevy::prelude::*;
use yrs::{Map, MapRef, Out, TransactionMut};

use super::fields::{REQUESTS, child_map, set_owner};
use super::{EntityDocConfig, OwnerLeftPolicy};
use crate::entity::{NetId, Owner};
use crate::net::peer::ReplicaId;

/// The owner hands an entity to another replica.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferOwnership {
    /// The local entity.
    pub entity: Entity,
    /// The new owner.
    pub to: ReplicaId,
}

/// Ask an entity's owner to hand it over. The owner hears it as
/// [`OwnershipRequested`] and, with [`EntityDocConfig::grant_requests`] (the
/// default), hands it to the requester with the lowest replica id.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestOwnership {
    /// The local entity.
    pub entity: Entity,
}

/// A peer asked for an entity this peer owns.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnershipRequested {
    /// The local entity.
    pub entity: Entity,
    /// Who asks.
    pub from: ReplicaId,
}

/// Requests seen on owned entities, waiting for [`answer_requests`].
#[derive(Resource, Default)]
pub(crate) struct PendingRequests(pub(super) Vec<(Entity, ReplicaId)>);

/// Take an orphaned entity (its owner left, policy [`OwnerLeftPolicy::Orphan`]).
/// Concurrent claims converge to one owner on every peer.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimOwnership {
    /// The local entity.
    pub entity: Entity,
}

/// Tells the game about requests for its entities, and grants them if configured.
pub(super) fn answer_requests(
    mut pending: ResMut<PendingRequests>,
    config: Res<EntityDocConfig>,
    mut requested: MessageWriter<OwnershipRequested>,
    mut transfers: MessageWriter<TransferOwnership>,
) {
    let mut pending = std::mem::take(&mut pending.0);
    pending.sort_by_key(|(entity, from)| (*entity, *from));
    let mut granted: Option<Entity> = None;
    for (entity, from) in pending {
        requested.write(OwnershipRequested { entity, from });
        if config.grant_requests && granted != Some(entity) {
            transfers.write(TransferOwnership { entity, to: from });
            granted = Some(entity);
        }
    }
}

/// This frame's ownership messages, read once.
pub(super) struct OwnershipChanges {
    pub(super) transfers: Vec<TransferOwnership>,
    pub(super) claims: Vec<ClaimOwnership>,
    pub(super) requests: Vec<RequestOwnership>,
}

impl OwnershipChanges {
    pub(super) fn is_empty(&self) -> bool {
        self.transfers.is_empty() && self.claims.is_empty() && self.requests.is_empty()
    }
}

/// What this peer knows when it writes ownership changes.
pub(super) struct LocalView<'a> {
    /// This replica.
    pub(super) me: ReplicaId,
    /// Replicas in the room, this one included.
    pub(super) present: &'a HashSet<ReplicaId>,
    /// What happens to an entity whose owner leaves.
    pub(super) policy: OwnerLeftPolicy,
}

/// Writes this frame's hand-overs, claims and requests to the entity document.
pub(super) fn write_ownership(
    changes: OwnershipChanges,
    (root, txn): (&MapRef, &mut TransactionMut),
    view: &LocalView,
    owners: &Query<(&NetId, &Owner)>,
    commands: &mut Commands,
) {
    let LocalView {
        me,
        present,
        policy,
    } = *view;
    for transfer in changes.transfers {
        let Ok((id, owner)) = owners.get(transfer.entity) else {
            continue;
        };
        if owner.0 != Some(me) {
            warn!(
                "cannot hand over `{id}`: it is owned by `{:?}`, not by this peer",
                owner.0
            );
            continue;
        }
        if let Some(Out::YMap(entity_map)) = root.get(txn, &id.to_string()) {
            set_owner(&entity_map, txn, transfer.to);
            if let Some(Out::YMap(pending)) = entity_map.get(txn, REQUESTS) {
                pending.clear(txn);
            }
            commands
                .entity(transfer.entity)
                .insert(Owner(Some(transfer.to)));
        }
    }
    for claim in changes.claims {
        let Ok((id, owner)) = owners.get(claim.entity) else {
            continue;
        };
        let orphaned = owner.0.is_none_or(|o| !present.contains(&o));
        if policy != OwnerLeftPolicy::Orphan || !orphaned {
            warn!(
                "cannot claim `{id}`: its owner `{:?}` is still here or orphans are not claimable",
                owner.0
            );
            continue;
        }
        if let Some(Out::YMap(entity_map)) = root.get(txn, &id.to_string()) {
            set_owner(&entity_map, txn, me);
            commands.entity(claim.entity).insert(Owner(Some(me)));
        }
    }
    for request in changes.requests {
        let Ok((id, owner)) = owners.get(request.entity) else {
            continue;
        };
        if owner.0 == Some(me) {
            continue;
        }
        if let Some(Out::YMap(entity_map)) = root.get(txn, &id.to_string()) {
            let pending = child_map(&entity_map, txn, REQUESTS);
            pending.insert(txn, me.to_string(), true);
        }
    }
}
