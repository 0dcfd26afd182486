//! The durable route: entities and components that live in a yrs document, travel on
//! the reliable channel, merge under concurrent edits and reach late joiners.
//!
//! Mark an entity with [`Replicated`](crate::entity::Replicated) and it gets a [`NetId`](crate::entity::NetId) that every peer maps to
//! its own local `Entity`; ids are `(creator replica, counter)`, so two peers spawning
//! at once never collide. Register component types with
//! [`SyncAppExt::sync_component`](crate::registry::SyncAppExt::sync_component)`::<T>(Route::Durable)`: their values are stored
//! field by field, so concurrent edits to different fields both survive and edits to
//! the same field converge to one winner everywhere.
//!
//! ## Ownership
//! Every replicated entity has an [`Owner`](crate::entity::Owner): the replica that spawned it, until it is
//! handed over ([`TransferOwnership`], on its own or answering a
//! [`RequestOwnership`]) or, once its owner has left, claimed
//! ([`ClaimOwnership`], with [`OwnerLeftPolicy::Orphan`]). Only the owner's changes to
//! an entity are sent. A live update from a peer that touches an entity the peer does
//! not own is held for a moment (its ownership may be on its way from a third peer)
//! and, if it is still not allowed after [`EntityDocConfig::hold_timeout`], refused as
//! a whole and counted as [`DropReason::NotOwner`](crate::net::stats::DropReason::NotOwner): the document is never changed by
//! it. The check runs the update against a shadow copy of the document first.
//!
//! Every peer must judge an update the same way whatever order updates arrive in, or
//! the room would split. Two rules follow from that: a replica that has owned an
//! entity keeps write access to it (its edits may still be in flight when the
//! hand-over lands; concurrent edits then merge per field), and a claim under
//! [`OwnerLeftPolicy::Orphan`] is judged on its content alone (it may only set the
//! owner to its sender), since "the owner has left" is each peer's own view. Hand-overs
//! are for cooperation, not for revoking a misbehaving peer.
//!
//! y-sync catch-up (a late joiner, a healed partition) carries other peers' edits
//! relayed by the sender and is applied without the ownership check: peers are
//! trusted to relay, as nothing in an unsigned CRDT update proves its author.
//!
//! ## Document layout (readable by any Yjs client)
//! ```text
//! Y.Map "entities"
//!   "<creator replica hex>-<counter>": Y.Map
//!     "owner": "<replica hex>"
//!     "owners": Y.Map { "<replica hex>": true, ... }   // everyone who has owned it
//!     "requests": Y.Map { "<replica hex>": true, ... } // pending ownership requests
//!     "components": Y.Map
//!       "<type name>": Y.Map { "<field>": value, ... }   // "_" for non-struct values
//! ```
//! Values are plain JSON-like `Any` (numbers, strings, booleans, arrays, maps) made
//! by serde from your component.

mod authority;
mod entity_doc;
mod fields;
mod materialise;
mod ownership;
mod receive;
mod send;

use std::sync::Arc;
use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use yrs::{MapRef, Transaction};

pub use entity_doc::EntityDoc;
pub use ownership::{ClaimOwnership, OwnershipRequested, RequestOwnership, TransferOwnership};

use crate::doc::{DocId, HostedDocs};
use crate::entity::{DocWrites, NetEntities};
use crate::net::peer::LocalPeer;
use crate::registry::{Decoded, DocFns, Route, TypeFns};
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// What happens to an entity when its owner leaves the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerLeftPolicy {
    /// It disappears from every peer's world while its owner is away (and comes back if
    /// the owner reconnects).
    #[default]
    Despawn,
    /// It stays, orphaned, until a peer claims it with [`ClaimOwnership`].
    Orphan,
}

/// Settings of the durable route.
#[derive(Resource, Debug, Clone)]
pub struct EntityDocConfig {
    /// What happens to an entity whose owner leaves.
    pub owner_left: OwnerLeftPolicy,
    /// How long a live update that is not (yet) allowed is held before it is refused.
    pub hold_timeout: Duration,
    /// Whether owned entities are handed over on request without asking the game.
    pub grant_requests: bool,
    /// Bytes of live updates from one peer that may be held at once (waiting for
    /// their ownership or their history); past it, and past 256 updates, the rest are
    /// refused ([`DropReason::NotOwner`](crate::net::stats::DropReason::NotOwner)).
    pub max_held_bytes: usize,
}

impl Default for EntityDocConfig {
    fn default() -> Self {
        Self {
            owner_left: OwnerLeftPolicy::Despawn,
            hold_timeout: Duration::from_secs(3),
            grant_requests: true,
            max_held_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Adds the durable route. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    let client_id = app
        .world_mut()
        .get_resource_or_init::<LocalPeer>()
        .client_id(DocId::Entities as u8);
    let doc = EntityDoc::new(client_id);
    app.world_mut()
        .get_resource_or_init::<HostedDocs>()
        .host(DocId::Entities, Arc::clone(doc.synced()));
    app.insert_resource(doc)
        .init_resource::<EntityDocConfig>()
        .init_resource::<NetEntities>()
        .init_resource::<DocWrites>()
        .init_resource::<receive::OwnerChanges>()
        .add_message::<TransferOwnership>()
        .add_message::<ClaimOwnership>()
        .add_message::<RequestOwnership>()
        .add_message::<OwnershipRequested>()
        .init_resource::<ownership::PendingRequests>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            (
                receive::note_replica_changes,
                receive::apply_remote_entities,
            )
                .chain()
                .in_set(Step::ApplyEntities),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            (
                send::assign_net_ids.in_set(Step::AssignIds),
                ownership::answer_requests.in_set(Step::StageWrites),
                (send::flush_staged, send::send_entity_updates)
                    .chain()
                    .in_set(Step::FlushDoc),
            ),
        );
}

/// Replaces the entity document with one restored from a saved state (see
/// [`EntityDoc::restored`]), synced in its place.
pub(crate) fn restore(world: &mut World, state: crate::doc::Decoded) {
    let client_id = world
        .resource::<LocalPeer>()
        .client_id(DocId::Entities as u8);
    let doc = EntityDoc::restored(client_id, state);
    world
        .resource_mut::<HostedDocs>()
        .host(DocId::Entities, Arc::clone(doc.synced()));
    world.insert_resource(doc);
}

/// Registers `T` as a durable component under `name`. Called by
/// `sync_component::<T>(Route::Durable)`.
pub(crate) fn register<T>(app: &mut App, name: String)
where
    T: Component<Mutability = Mutable> + Serialize + DeserializeOwned + Clone + PartialEq,
{
    let fns = TypeFns {
        doc: Some(DocFns {
            decode: decode_component::<T>,
            apply: apply_components::<T>,
            remove: |entity| {
                entity.remove::<T>();
            },
        }),
        ..TypeFns::EMPTY
    };
    crate::registry::register::<T>(app, name, Route::Durable, fns);
    app.add_stage_systems(
        PeerSyncSystems::Collect,
        send::stage_component::<T>.in_set(Step::StageWrites),
    );
}

fn decode_component<T: DeserializeOwned + Send + 'static>(
    _: &World,
    fields: &MapRef,
    txn: &Transaction,
) -> Result<Decoded, String> {
    fields::read_value::<T>(fields, txn).map(|value| Box::new(value) as Decoded)
}

/// Sets each value on its entity: changed only where it differs (so change detection
/// sees real changes only), inserted in one batch where the entity lacks it.
fn apply_components<T: Component<Mutability = Mutable> + PartialEq>(
    world: &mut World,
    values: Vec<(Entity, Decoded)>,
) {
    let mut inserts = Vec::new();
    for (entity, value) in values {
        let value = *value
            .downcast::<T>()
            .expect("a type's values are decoded by that type's decode fn");
        let Ok(mut entity_mut) = world.get_entity_mut(entity) else {
            continue;
        };
        match entity_mut.get_mut::<T>() {
            Some(mut current) => {
                if *current != value {
                    *current = value;
                }
            }
            None => inserts.push((entity, value)),
        }
    }
    // Every entity was just found; should one be gone, the rest still go in.
    let _ = world.try_insert_batch(inserts);
}
