//! The local write path: owned entities' changes staged, written to the entity
//! document in one transaction a frame, and sent.

use std::collections::HashSet;
use std::sync::PoisonError;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use serde::Serialize;
use yrs::{Any, Map, Out, ReadTxn, Transact};

use super::EntityDocConfig;
use super::authority::owner_in_txn;
use super::entity_doc::EntityDoc;
use super::fields::{COMPONENTS, ENTITIES, child_map, entity_map, write_fields};
use super::ownership::{
    ClaimOwnership, LocalView, OwnershipChanges, RequestOwnership, TransferOwnership,
    write_ownership,
};
use crate::doc::{DocId, encode_sync};
use crate::entity::{DocWrites, NetEntities, NetId, Owner, Replicated};
use crate::net::peer::{LocalPeer, PeerReplica, ReplicaId};
use crate::net::session::{Outbox, Recipients};
use crate::net::transport::Channel;
use crate::registry::{SyncRegistry, WireIndex};

/// Stages the owner's changes and removals of `T` for this frame's transaction.
pub(super) fn stage_component<T: Component + Serialize>(
    index: Res<WireIndex<T>>,
    mut staged: ResMut<DocWrites>,
    local: Res<LocalPeer>,
    changed: Query<(&NetId, &Owner, &T), Changed<T>>,
    ids: Query<&NetId>,
    mut removed: RemovedComponents<T>,
) {
    let me = Some(local.replica());
    for (id, owner, value) in &changed {
        if owner.0 != me {
            continue;
        }
        match yrs::encoding::serde::to_any(value) {
            Ok(any) => staged.values.push((*id, index.get(), any)),
            Err(error) => error!(
                "component `{}` cannot be stored: {error}",
                std::any::type_name::<T>()
            ),
        }
    }
    for entity in removed.read() {
        if let Ok(id) = ids.get(entity) {
            staged.removed.push((*id, index.get()));
        }
    }
}

/// Gives new [`Replicated`] entities a [`NetId`] and the local replica as owner.
pub(super) fn assign_net_ids(
    mut commands: Commands,
    local: Res<LocalPeer>,
    mut net: ResMut<NetEntities>,
    doc: Res<EntityDoc>,
    fresh: Query<Entity, (With<Replicated>, Without<NetId>)>,
    mut staged: ResMut<DocWrites>,
) {
    if fresh.is_empty() {
        return;
    }
    let txn = doc.doc().transact();
    let root = txn.get_map(ENTITIES);
    for entity in &fresh {
        // A replica restored from a save skips the ids its earlier life used.
        let id = loop {
            net.next_counter += 1;
            let id = NetId {
                creator: local.replica(),
                counter: net.next_counter,
            };
            let key = id.to_string();
            if !root.as_ref().is_some_and(|r| r.contains_key(&txn, &key))
                && !doc.tombstones.contains(&key)
            {
                break id;
            }
        };
        net.map.insert(id, entity);
        commands
            .entity(entity)
            .insert((id, Owner(Some(local.replica()))));
        // An empty value list marks the spawn; components follow via change detection.
        staged.values.push((id, DocWrites::SPAWN, Any::Null));
    }
}

/// What [`flush_staged`] reads besides the document: the frame's staged writes,
/// despawns and ownership messages.
#[derive(SystemParam)]
pub(super) struct FrameWrites<'w, 's> {
    staged: ResMut<'w, DocWrites>,
    despawned: RemovedComponents<'w, 's, Replicated>,
    transfers: MessageReader<'w, 's, TransferOwnership>,
    claims: MessageReader<'w, 's, ClaimOwnership>,
    requests: MessageReader<'w, 's, RequestOwnership>,
}

/// What [`flush_staged`] looks up: type names, who this peer is, who else is here,
/// who owns what.
#[derive(SystemParam)]
pub(super) struct WriteContext<'w, 's> {
    registry: Res<'w, SyncRegistry>,
    local: Res<'w, LocalPeer>,
    config: Res<'w, EntityDocConfig>,
    peers: Query<'w, 's, &'static PeerReplica>,
    owners: Query<'w, 's, (&'static NetId, &'static Owner)>,
}

/// Writes everything staged this frame, plus despawns and ownership changes, in one
/// transaction.
pub(super) fn flush_staged(
    mut doc: ResMut<EntityDoc>,
    context: WriteContext,
    mut writes: FrameWrites,
    mut net: ResMut<NetEntities>,
    mut commands: Commands,
) {
    let WriteContext {
        registry,
        local,
        config,
        peers,
        owners,
    } = context;
    let me = local.replica();
    let despawned: Vec<Entity> = writes.despawned.read().collect();
    let changes = OwnershipChanges {
        transfers: writes.transfers.read().copied().collect(),
        claims: writes.claims.read().copied().collect(),
        requests: writes.requests.read().copied().collect(),
    };
    let staged = &mut *writes.staged;
    if staged.values.is_empty()
        && staged.removed.is_empty()
        && despawned.is_empty()
        && changes.is_empty()
    {
        return;
    }
    let root = doc.root();
    let mut tombstones = Vec::new();
    let mut txn = doc.synced.transact_mut();
    for (id, index, value) in staged.values.drain(..) {
        let key = id.to_string();
        let entity_map = entity_map(&root, &mut txn, &key, me);
        let Some(name) = registry.name(index) else {
            continue;
        };
        let components = child_map(&entity_map, &mut txn, COMPONENTS);
        let component = child_map(&components, &mut txn, name);
        write_fields(&component, &mut txn, value);
    }
    for (id, index) in staged.removed.drain(..) {
        let key = id.to_string();
        if let Some(Out::YMap(entity_map)) = root.get(&txn, &key)
            && let Some(Out::YMap(components)) = entity_map.get(&txn, COMPONENTS)
            && let Some(name) = registry.name(index)
        {
            components.remove(&mut txn, name);
        }
    }
    // Despawns of entities we own.
    let gone: Vec<NetId> = net
        .map
        .iter()
        .filter(|(_, e)| despawned.contains(e))
        .map(|(id, _)| *id)
        .collect();
    for id in gone {
        net.map.remove(&id);
        if owner_in_txn(&root, &txn, &id.to_string()) == Some(Some(me)) {
            root.remove(&mut txn, &id.to_string());
            tombstones.push(id.to_string());
        }
    }
    let present: HashSet<ReplicaId> = peers.iter().map(|p| p.0).chain([me]).collect();
    let view = LocalView {
        me,
        present: &present,
        policy: config.owner_left,
    };
    write_ownership(changes, (&root, &mut txn), &view, &owners, &mut commands);
    drop(txn);
    doc.tombstones.extend(tombstones);
}

/// Sends this frame's local entity edits and keeps the shadow in step.
pub(super) fn send_entity_updates(doc: Res<EntityDoc>, mut outbox: ResMut<Outbox>) {
    if let Some(update) = doc.synced.take_local_update() {
        if !doc.shadow.stale {
            doc.shadow.apply(&update);
        }
        // The main document's observer saw our own edits: nothing to materialise.
        std::mem::take(
            &mut *doc
                .main_touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        outbox.push(
            Recipients::All,
            Channel::Reliable,
            encode_sync(DocId::Entities, yrs::sync::SyncMessage::Update(update)),
        );
    }
}
