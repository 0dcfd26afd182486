//! Materialising: bringing the world in line with the entity document, for the
//! entities a frame's remote changes touched (or all of them after a catch-up).

use std::collections::HashSet;

use bevy::prelude::*;
use yrs::{Any, Doc, Map, Out, ReadTxn, Transact, Transaction};

use super::OwnerLeftPolicy;
use super::entity_doc::EntityDoc;
use super::fields::{COMPONENTS, ENTITIES, OWNER, REQUESTS};
use super::ownership::PendingRequests;
use crate::entity::{NetEntities, NetId, Owner, Replicated};
use crate::net::peer::{LocalPeer, ReplicaId};
use crate::registry::{Decoded, DocFns, SyncRegistry};

/// A type the entity document holds values of, as materialising reads it.
#[derive(Clone, Copy)]
struct DocType<'a> {
    name: &'a str,
    fns: DocFns,
}

/// Which entities to bring in line with the document.
pub(super) enum Dirty {
    /// Every entity, in the document or in the world (after an untracked catch-up).
    All,
    /// These, by document key.
    Keys(HashSet<String>),
}

/// A component as the document holds it for one entity.
enum Held {
    Absent,
    Unreadable,
    Value(Decoded),
}

/// An entity the world should show, as read from the document.
struct Wanted {
    id: NetId,
    owner: Option<ReplicaId>,
    components: Vec<Held>,
    requests: Vec<ReplicaId>,
}

/// What reading one entity of the document found.
enum Read {
    Gone,
    Hidden(Option<ReplicaId>),
    Shown(Wanted),
}

/// What reading entities out of the document needs, looked up once.
struct Reader<'w, V> {
    world: &'w World,
    types: &'w [DocType<'w>],
    local: ReplicaId,
    visible: V,
}

/// Reads entity `id` from its document map (`None`: not in the document).
fn read_entity<V: Fn(Option<ReplicaId>) -> bool>(
    reader: &Reader<V>,
    txn: &Transaction,
    id: NetId,
    map: Option<Out>,
) -> Read {
    let Reader {
        world,
        types,
        local,
        ref visible,
    } = *reader;
    let Some(Out::YMap(map)) = map else {
        return Read::Gone;
    };
    let (mut owner, mut components, mut requests) = (None, None, None);
    for (key, value) in map.iter(txn) {
        match (key, value) {
            (OWNER, Out::Any(Any::String(o))) => owner = ReplicaId::parse(&o),
            (COMPONENTS, Out::YMap(map)) => components = Some(map),
            (REQUESTS, Out::YMap(map)) => requests = Some(map),
            _ => {}
        }
    }
    if !visible(owner) {
        return Read::Hidden(owner);
    }
    let mut held: Vec<Held> = types.iter().map(|_| Held::Absent).collect();
    for (name, value) in components.iter().flat_map(|c| c.iter(txn)) {
        let (Some(index), Out::YMap(fields)) = (types.iter().position(|t| t.name == name), value)
        else {
            continue;
        };
        held[index] = match (types[index].fns.decode)(world, &fields, txn) {
            Ok(value) => Held::Value(value),
            Err(error) => {
                debug!("entity `{id}` holds a `{name}` that does not decode: {error}");
                Held::Unreadable
            }
        };
    }
    let requests = match (owner == Some(local), requests) {
        (true, Some(requests)) => requests
            .keys(txn)
            .filter_map(ReplicaId::parse)
            .filter(|r| *r != local)
            .collect(),
        _ => Vec::new(),
    };
    Read::Shown(Wanted {
        id,
        owner,
        components: held,
        requests,
    })
}

/// Entities read per task when a whole document is read on several threads.
const READS_PER_TASK: usize = 256;

/// [`read_entity`] for many entities, split over the compute threads when there are
/// enough of them (a late joiner reads the whole room at once).
fn read_entities<V: Fn(Option<ReplicaId>) -> bool + Sync>(
    reader: &Reader<V>,
    doc: &Doc,
    entries: Vec<(NetId, Out)>,
) -> Vec<(NetId, Read)> {
    let read_part = |part: &[(NetId, Out)]| -> Vec<(NetId, Read)> {
        // Read transactions share the document; each task holds its own.
        let txn = doc.transact();
        part.iter()
            .map(|(id, out)| (*id, read_entity(reader, &txn, *id, Some(out.clone()))))
            .collect()
    };
    let pool = bevy::tasks::ComputeTaskPool::get_or_init(bevy::tasks::TaskPool::default);
    // The calling thread works in the scope too. (In the browser the pool is this
    // thread alone.)
    let workers = pool.thread_num() + 1;
    if cfg!(target_arch = "wasm32") || workers < 2 || entries.len() < 2 * READS_PER_TASK {
        return read_part(&entries);
    }
    let chunk = entries.len().div_ceil(workers).max(READS_PER_TASK);
    pool.scope(|scope| {
        for part in entries.chunks(chunk) {
            scope.spawn(async move { read_part(part) });
        }
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Brings the world in line with the document for the `dirty` entities.
pub(super) fn materialise(
    world: &mut World,
    dirty: Dirty,
    present: &HashSet<ReplicaId>,
    policy: OwnerLeftPolicy,
) {
    let local = world.resource::<LocalPeer>().replica();
    let visible = |owner: Option<ReplicaId>| match (policy, owner) {
        (_, Some(o)) if o == local || present.contains(&o) => true,
        (OwnerLeftPolicy::Orphan, _) => true,
        (OwnerLeftPolicy::Despawn, _) => false,
    };
    let everything = matches!(dirty, Dirty::All);
    let registry = world.resource::<SyncRegistry>();
    let types: Vec<DocType> = registry
        .doc_types()
        .map(|(_, name, fns)| DocType { name, fns })
        .collect();
    let reads: Vec<DocFns> = types.iter().map(|t| t.fns).collect();
    // Read the document first, then touch the world.
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut deleted: Vec<NetId> = Vec::new();
    let mut hidden: Vec<(Option<ReplicaId>, NetId)> = Vec::new();
    {
        let reader = Reader {
            world,
            types: &types,
            local,
            visible,
        };
        let doc = world.resource::<EntityDoc>();
        let txn = doc.doc().transact();
        let root = txn.get_map(ENTITIES);
        let mut take = |id: NetId, read: Read| match read {
            Read::Gone => deleted.push(id),
            Read::Hidden(owner) => hidden.push((owner, id)),
            Read::Shown(want) => wanted.push(want),
        };
        match dirty {
            Dirty::All => {
                let entries: Vec<(NetId, Out)> = root
                    .iter()
                    .flat_map(|root| root.iter(&txn))
                    .filter_map(|(key, value)| Some((NetId::parse(key)?, value)))
                    .collect();
                // Entities in the world that the document no longer holds.
                let net = &world.resource::<NetEntities>().map;
                if !net.is_empty() {
                    let in_doc: HashSet<NetId> = entries.iter().map(|(id, _)| *id).collect();
                    for id in net.keys().filter(|id| !in_doc.contains(*id)) {
                        take(*id, Read::Gone);
                    }
                }
                for (id, read) in read_entities(&reader, doc.doc(), entries) {
                    take(id, read);
                }
            }
            Dirty::Keys(keys) => {
                for key in keys {
                    let Some(id) = NetId::parse(&key) else {
                        continue;
                    };
                    let entry = root.as_ref().and_then(|r| r.get(&txn, &key));
                    take(id, read_entity(&reader, &txn, id, entry));
                }
            }
        }
    }
    {
        let mut doc = world.resource_mut::<EntityDoc>();
        if everything {
            // Rebuilt from this full read.
            doc.hidden.clear();
        }
        // Only entities deleted from the document: a hidden one is still there.
        for id in &deleted {
            doc.tombstones.insert(id.to_string());
        }
        for (owner, id) in &hidden {
            if let Some(owner) = owner {
                doc.hidden.entry(*owner).or_default().insert(*id);
            }
        }
    }
    let gone = deleted
        .into_iter()
        .chain(hidden.into_iter().map(|(_, id)| id));
    for id in gone {
        if let Some(entity) = world.resource_mut::<NetEntities>().map.remove(&id)
            && let Ok(entity) = world.get_entity_mut(entity)
        {
            entity.despawn();
        }
    }
    // Spawn the entities this peer has not seen yet in one batch.
    let mut targets: Vec<(Option<Entity>, bool)> = {
        let net = world.resource::<NetEntities>();
        wanted
            .iter()
            .map(|w| {
                let known = net.entity(w.id).filter(|e| world.get_entity(*e).is_ok());
                (known, known.is_none())
            })
            .collect()
    };
    let fresh: Vec<(Replicated, NetId, Owner)> = wanted
        .iter()
        .zip(&targets)
        .filter(|(_, (_, fresh))| *fresh)
        .map(|(w, _)| (Replicated, w.id, Owner(w.owner)))
        .collect();
    if !fresh.is_empty() {
        let spawned: Vec<Entity> = world.spawn_batch(fresh).collect();
        let mut spawned = spawned.into_iter();
        let mut net = world.resource_mut::<NetEntities>();
        for (want, (target, fresh)) in wanted.iter().zip(targets.iter_mut()) {
            if *fresh {
                let entity = spawned.next().expect("one spawned entity per fresh one");
                net.map.insert(want.id, entity);
                *target = Some(entity);
            }
        }
    }
    // Values go in per type, in batches; removals and owners per entity.
    let mut batches: Vec<Vec<(Entity, Decoded)>> = reads.iter().map(|_| Vec::new()).collect();
    for (want, (entity, fresh)) in wanted.into_iter().zip(targets) {
        let entity = entity.expect("every wanted entity exists now");
        if !want.requests.is_empty() {
            let mut pending = world.resource_mut::<PendingRequests>();
            pending.0.extend(want.requests.iter().map(|r| (entity, *r)));
        }
        let mut entity_mut = world.entity_mut(entity);
        if !fresh && entity_mut.get::<Owner>() != Some(&Owner(want.owner)) {
            entity_mut.insert(Owner(want.owner));
        }
        // Even for our own entities the document wins: a past owner's edit made
        // before it saw the hand-over may have won a field, on every peer alike.
        for ((read, held), batch) in reads.iter().zip(want.components).zip(&mut batches) {
            match held {
                Held::Value(value) => batch.push((entity, value)),
                Held::Absent if !fresh => (read.remove)(&mut entity_mut),
                Held::Absent | Held::Unreadable => {}
            }
        }
    }
    for (read, batch) in reads.iter().zip(batches) {
        if !batch.is_empty() {
            (read.apply)(world, batch);
        }
    }
}
