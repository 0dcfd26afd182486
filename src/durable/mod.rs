//! The durable route: entities and components that live in a yrs document, travel on
//! the reliable channel, merge under concurrent edits and reach late joiners.
//!
//! Mark an entity with [`Replicated`] and it gets a [`NetId`] that every peer maps to
//! its own local `Entity`; ids are `(creator replica, counter)`, so two peers spawning
//! at once never collide. Register component types with
//! [`SyncAppExt::sync_component`]`::<T>(Route::Durable)`: their values are stored
//! field by field, so concurrent edits to different fields both survive and edits to
//! the same field converge to one winner everywhere.
//!
//! ## Ownership
//! Every replicated entity has an [`Owner`]: the replica that spawned it, until it is
//! handed over ([`TransferOwnership`], on its own or answering a
//! [`RequestOwnership`]) or, once its owner has left, claimed
//! ([`ClaimOwnership`], with [`OwnerLeftPolicy::Orphan`]). Only the owner's changes to
//! an entity are sent. A live update from a peer that touches an entity the peer does
//! not own is held for a moment (its ownership may be on its way from a third peer)
//! and, if it is still not allowed after [`EntityDocConfig::hold_timeout`], refused as
//! a whole and counted as [`DropReason::NotOwner`]: the document is never changed by
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

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use yrs::types::{Event, PathSegment};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Any, DeepObservable, Doc, Map, MapPrelim, MapRef, Options, Out, ReadTxn, Transact, Transaction,
    TransactionMut, Update,
};

use crate::doc::{DocId, REMOTE_ORIGIN, SyncedDoc, encode_sync};
use crate::net::peer::{LocalPeer, PeerId, PeerJoined, PeerLeft, PeerReplica, Peers, ReplicaId};
use crate::net::session::{Outbox, Recipients};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::registry::{Route, SyncRegistry};
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

const ENTITIES: &str = "entities";
/// Live updates from one peer that may wait for their ownership at once.
const MAX_HELD_PER_PEER: usize = 256;
const OWNER: &str = "owner";
const OWNERS: &str = "owners";
const REQUESTS: &str = "requests";
const COMPONENTS: &str = "components";
const WHOLE_VALUE: &str = "_";

/// Marks an entity for replication. Insert it when you spawn; the plugin adds its
/// [`NetId`] and [`Owner`].
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicated;

/// The network id of a replicated entity, the same on every peer.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId {
    /// The replica that spawned it.
    pub creator: ReplicaId,
    /// Its spawn counter on that replica.
    pub counter: u64,
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.creator, self.counter)
    }
}

impl NetId {
    /// Parses the [`Display`](fmt::Display) form, `"<replica hex>-<counter>"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (creator, counter) = text.split_once('-')?;
        Some(Self {
            creator: ReplicaId::parse(creator)?,
            counter: counter.parse().ok()?,
        })
    }
}

/// Who may write a replicated entity. `None` while orphaned.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub Option<ReplicaId>);

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
}

impl Default for EntityDocConfig {
    fn default() -> Self {
        Self {
            owner_left: OwnerLeftPolicy::Despawn,
            hold_timeout: Duration::from_secs(3),
            grant_requests: true,
        }
    }
}

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
pub(crate) struct PendingRequests(Vec<(Entity, ReplicaId)>);

/// Take an orphaned entity (its owner left, policy [`OwnerLeftPolicy::Orphan`]).
/// Concurrent claims converge to one owner on every peer.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimOwnership {
    /// The local entity.
    pub entity: Entity,
}

/// Maps network ids to local entities.
#[derive(Resource, Debug, Default)]
pub struct NetEntities {
    map: bevy::platform::collections::HashMap<NetId, Entity>,
    next_counter: u64,
}

impl NetEntities {
    /// The local entity of a network id.
    pub fn entity(&self, id: NetId) -> Option<Entity> {
        self.map.get(&id).copied()
    }

    /// How many replicated entities exist locally.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a transaction on the shadow document touched.
#[derive(Debug, Default)]
struct Touched {
    /// Entities added, removed or replaced at the top level.
    roots: HashSet<String>,
    /// Per entity, the top-level keys changed inside it (`owner`, `components`).
    inner: HashMap<String, HashSet<String>>,
}

struct HeldUpdate {
    from: PeerId,
    replica: Option<ReplicaId>,
    /// Decoded once, on arrival; its bytes are decoded again only into the shadow.
    update: Update,
    bytes: Vec<u8>,
    since: Duration,
}

/// The document behind the durable route, with its ownership check.
#[derive(Resource)]
pub struct EntityDoc {
    synced: SyncedDoc,
    shadow: Doc,
    /// The shadow lags the main document (after y-sync catch-up, which is not
    /// checked): it is rebuilt before the next check instead of paying twice now.
    shadow_stale: bool,
    /// A catch-up was applied untracked: re-read every entity.
    everything_dirty: bool,
    shadow_touched: Arc<Mutex<Touched>>,
    main_touched: Arc<Mutex<Touched>>,
    held: VecDeque<HeldUpdate>,
    /// Live updates from peers (decoded, and their bytes for the shadow), applied
    /// once allowed.
    live: Vec<(PeerId, Update, Vec<u8>)>,
    /// Y-sync catch-up from peers, decoded as it is applied.
    catch_up: Vec<(PeerId, Vec<u8>)>,
    /// A saved state of this document, applied before any catch-up.
    saved: Vec<Update>,
    /// Entities seen deleted from the document: edits racing their despawn are harmless.
    tombstones: HashSet<String>,
    /// Entities not in the world because their owner is away
    /// ([`OwnerLeftPolicy::Despawn`]), by owner: re-read when it comes back, so a join
    /// does not re-read the whole document.
    hidden: HashMap<ReplicaId, HashSet<NetId>>,
    /// Updates refused for writing what the sender does not own.
    pub refused: u64,
}

impl fmt::Debug for EntityDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityDoc")
            .field("held", &self.held.len())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for EntityDoc {
    type Target = SyncedDoc;

    fn deref(&self) -> &SyncedDoc {
        &self.synced
    }
}

/// For its settings ([`SyncedDoc::limits`], [`SyncedDoc::piece_size`]).
impl std::ops::DerefMut for EntityDoc {
    fn deref_mut(&mut self) -> &mut SyncedDoc {
        &mut self.synced
    }
}

fn observe_touches(doc: &Doc) -> Arc<Mutex<Touched>> {
    let touched = Arc::new(Mutex::new(Touched::default()));
    attach_touch_observer(doc, Arc::clone(&touched));
    touched
}

const TOUCH_OBSERVER: &str = "bevy_peer_sync";

fn attach_touch_observer(doc: &Doc, sink: Arc<Mutex<Touched>>) {
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

impl EntityDoc {
    fn new(replica: ReplicaId) -> Self {
        Self::with_client_id(replica.0)
    }

    /// A document for a replica restored from a save: its yrs client id is fresh
    /// (reusing one whose later edits may have reached peers but not the save would
    /// corrupt the document), while ownership stays with the replica id.
    pub(crate) fn restored(state: Update) -> Self {
        let mut doc = Self::with_client_id(yrs::block::ClientID::random().get());
        doc.queue_saved(state);
        doc
    }

    fn with_client_id(client_id: u64) -> Self {
        let doc = Doc::with_options(Options {
            client_id: yrs::block::ClientID::new(client_id),
            ..Options::default()
        });
        let main_touched = observe_touches(&doc);
        let shadow = Doc::new();
        let shadow_touched = observe_touches(&shadow);
        Self {
            synced: SyncedDoc::new(doc),
            shadow,
            shadow_stale: false,
            everything_dirty: false,
            shadow_touched,
            main_touched,
            held: VecDeque::new(),
            live: Vec::new(),
            catch_up: Vec::new(),
            saved: Vec::new(),
            tombstones: HashSet::new(),
            hidden: HashMap::new(),
            refused: 0,
        }
    }

    fn root(&self) -> MapRef {
        self.synced.doc().get_or_insert_map(ENTITIES)
    }

    /// Queues a live update from a peer, checked for ownership before it is applied.
    pub(crate) fn queue_live(&mut self, from: PeerId, update: Update, bytes: Vec<u8>) {
        self.live.push((from, update, bytes));
    }

    /// Queues y-sync catch-up from a peer, still encoded.
    pub(crate) fn queue_catch_up(&mut self, from: PeerId, bytes: Vec<u8>) {
        self.catch_up.push((from, bytes));
    }

    /// Queues a saved state of this document (see [`crate::persistence`]): applied
    /// like a y-sync catch-up, unchecked (it is this peer's own past state).
    pub(crate) fn queue_saved(&mut self, update: Update) {
        self.saved.push(update);
    }

    /// Rebuilds the shadow from the main document (after a refused update).
    fn rebuild_shadow(&mut self) {
        // The integrated state, then the main document's pending updates as they are
        // (merging them into the state's encoding would put "skips" in the shadow's
        // block store; see `shared_doc::leaves_hole`).
        let mut updates = Vec::new();
        {
            let txn = self.synced.doc().transact();
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
        self.shadow = shadow;
        self.shadow_touched = touched;
        self.shadow_stale = false;
    }

    /// Applies an update to the shadow and reports what it touched, and whether it
    /// integrated completely (an update whose dependencies have not arrived stays
    /// pending in yrs and would be integrated later by someone else's update, so it
    /// waits instead).
    fn apply_to_shadow(&self, bytes: &[u8]) -> (Touched, bool) {
        let mut complete = false;
        if let Ok(update) = Update::decode_v1(bytes) {
            let inserted = update.insertions(true);
            let deleted = update.delete_set().clone();
            let applied = catch_unwind(AssertUnwindSafe(|| {
                self.shadow
                    .transact_mut_with(REMOTE_ORIGIN)
                    .apply_update(update)
            }));
            // Complete when nothing of this update was left pending (what others left
            // pending before, say a relayed update that can never integrate, does not
            // hold back this one).
            let txn = self.shadow.transact();
            let store = txn.store();
            complete = matches!(applied, Ok(Ok(())))
                && store
                    .pending_update()
                    .is_none_or(|p| p.update.insertions(true).intersect(&inserted).is_empty())
                && store
                    .pending_ds()
                    .is_none_or(|ds| ds.intersect(&deleted).is_empty());
        }
        let touched = std::mem::take(
            &mut *self
                .shadow_touched
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        (touched, complete)
    }

    /// The owner recorded for `entity` in the main document (`Some(None)`: orphaned,
    /// `None`: no such entity).
    fn owner_in(doc: &Doc, entity: &str) -> Option<Option<ReplicaId>> {
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
    fn may_write(doc: &Doc, entity: &str, replica: ReplicaId) -> bool {
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

    /// Whether a change `touched` by replica `sender` is allowed, judged against the
    /// main document (before) and the shadow (after).
    fn allowed(&self, touched: &Touched, sender: ReplicaId, policy: OwnerLeftPolicy) -> bool {
        let main = self.synced.doc();
        for entity in &touched.roots {
            match Self::owner_in(main, entity) {
                None => {
                    // A spawn: only its creator, as owner.
                    let creator_ok = NetId::parse(entity).is_some_and(|id| id.creator == sender);
                    let owner_after = Self::owner_in(&self.shadow, entity);
                    if !creator_ok || owner_after.is_some_and(|o| o != Some(sender)) {
                        return false;
                    }
                }
                Some(_) if Self::may_write(main, entity, sender) => {}
                Some(_) => return false,
            }
        }
        for (entity, keys) in &touched.inner {
            if keys.is_empty()
                || touched.roots.contains(entity)
                || Self::may_write(main, entity, sender)
            {
                continue;
            }
            if Self::owner_in(main, entity).is_none() {
                // An edit racing the entity's despawn lands in a deleted map: harmless.
                if self.tombstones.contains(entity) {
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

/// A component value read from the document, not yet in the world.
pub(crate) type Decoded = Box<dyn std::any::Any + Send>;
/// Reads a component value from its fields map in the document.
pub(crate) type DecodeFn = for<'a> fn(&World, &MapRef, &Transaction<'a>) -> Result<Decoded, String>;
/// Puts values of one type, each decoded by that type's [`DecodeFn`], on their entities.
pub(crate) type ApplyFn = fn(&mut World, Vec<(Entity, Decoded)>);
/// Removes a component from an entity.
type RemoveFn = fn(&mut EntityWorldMut);

/// How one type's values come out of the document and into the world.
#[derive(Clone, Copy)]
pub(crate) struct ReadFns {
    pub(crate) decode: DecodeFn,
    pub(crate) apply: ApplyFn,
    pub(crate) remove: RemoveFn,
}

/// One durable component type: how to write it to and read it from the document.
pub(crate) struct DurableType {
    name: String,
    read: ReadFns,
}

/// The durable types, in registration order.
#[derive(Resource, Default)]
pub(crate) struct DurableTypes(Vec<DurableType>);

/// Component values staged this frame for the document, written in one transaction.
#[derive(Resource, Default)]
pub(crate) struct Staged {
    values: Vec<(NetId, usize, Any)>,
    removed: Vec<(NetId, usize)>,
}

impl Staged {
    pub(crate) fn push(&mut self, id: NetId, index: usize, value: Any) {
        self.values.push((id, index, value));
    }
}

/// Registration of synced component types.
pub trait SyncAppExt {
    /// Synchronises component `T` on `route`.
    ///
    /// Register the same types in the same order on every build: the handshake
    /// refuses peers whose registrations differ.
    ///
    /// ```
    /// use bevy::prelude::*;
    /// use bevy_peer_sync::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
    /// struct Inventory {
    ///     gold: u32,
    ///     items: Vec<String>,
    /// }
    ///
    /// let mut app = App::new();
    /// app.add_plugins(MinimalPlugins)
    ///     .add_plugins(PeerSyncPlugin::with_custom_transport())
    ///     .sync_component::<Inventory>(Route::Durable);
    /// ```
    fn sync_component<T>(&mut self, route: Route) -> &mut Self
    where
        T: Component<Mutability = Mutable> + Serialize + DeserializeOwned + Clone + PartialEq;

    /// Synchronises `T` on the transient route with your own codec, under `name`.
    fn sync_transient_with<T>(
        &mut self,
        name: String,
        codec: crate::transient::TransientCodec<T>,
    ) -> &mut Self
    where
        T: Component<Mutability = Mutable>;

    /// Synchronises `Transform` on the transient route with `encoding`, smoothed on
    /// receivers (see [`crate::transient::smoothing`]).
    fn sync_transform(
        &mut self,
        encoding: crate::transient::transform_codec::TransformEncoding,
    ) -> &mut Self;
}

/// Lists `T` among the types the document holds, under `name`.
fn add_document_type<T: Component>(app: &mut App, name: String, read: ReadFns) {
    let mut types = app.world_mut().get_resource_or_init::<DurableTypes>();
    let index = types.0.len();
    types.0.push(DurableType { name, read });
    app.insert_resource(DurableIndex::<T> {
        index,
        _type: std::marker::PhantomData,
    });
}

impl SyncAppExt for App {
    fn sync_component<T>(&mut self, route: Route) -> &mut Self
    where
        T: Component<Mutability = Mutable> + Serialize + DeserializeOwned + Clone + PartialEq,
    {
        let name = std::any::type_name::<T>().to_owned();
        match route {
            Route::Durable => {
                self.world_mut()
                    .get_resource_or_init::<SyncRegistry>()
                    .register(name.clone(), route);
                add_document_type::<T>(
                    self,
                    name,
                    ReadFns {
                        decode: decode_component::<T>,
                        apply: apply_components::<T>,
                        remove: |entity| {
                            entity.remove::<T>();
                        },
                    },
                );
                self.add_stage_systems(
                    PeerSyncSystems::Collect,
                    stage_component::<T>.in_set(Step::StageWrites),
                )
            }
            Route::Transient => {
                self.sync_transient_with::<T>(name, crate::transient::TransientCodec::serde())
            }
            Route::Presence => {
                crate::presence::register::<T>(self);
                self
            }
        }
    }

    fn sync_transient_with<T>(
        &mut self,
        name: String,
        codec: crate::transient::TransientCodec<T>,
    ) -> &mut Self
    where
        T: Component<Mutability = Mutable>,
    {
        self.world_mut()
            .get_resource_or_init::<SyncRegistry>()
            .register(name.clone(), Route::Transient);
        // Committed values live in the document under the same name; a missing one
        // removes nothing (the value may simply never have been committed).
        add_document_type::<T>(
            self,
            name,
            ReadFns {
                decode: crate::transient::decode_committed::<T>,
                apply: crate::transient::apply_committed::<T>,
                remove: |_| {},
            },
        );
        crate::transient::register::<T>(self, codec);
        self
    }

    fn sync_transform(
        &mut self,
        encoding: crate::transient::transform_codec::TransformEncoding,
    ) -> &mut Self {
        let name = match encoding {
            crate::transient::transform_codec::TransformEncoding::Lossless => {
                "Transform".to_owned()
            }
            crate::transient::transform_codec::TransformEncoding::Quantized {
                position_precision,
            } => {
                format!("Transform@{position_precision}")
            }
        };
        self.sync_transient_with::<Transform>(
            name,
            crate::transient::transform_codec::codec(encoding),
        );
        crate::transient::smoothing::SmoothAppExt::smooth_component::<Transform>(
            self,
            Default::default(),
        )
    }
}

fn decode_component<T: DeserializeOwned + Send + 'static>(
    _: &World,
    fields: &MapRef,
    txn: &Transaction,
) -> Result<Decoded, String> {
    read_value::<T>(fields, txn).map(|value| Box::new(value) as Decoded)
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

/// The index of durable type `T` in [`DurableTypes`].
#[derive(Resource)]
pub(crate) struct DurableIndex<T> {
    index: usize,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<T> DurableIndex<T> {
    pub(crate) fn index(&self) -> usize {
        self.index
    }
}

/// Stages the owner's changes and removals of `T` for this frame's transaction.
fn stage_component<T: Component + Serialize>(
    index: Res<DurableIndex<T>>,
    mut staged: ResMut<Staged>,
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
            Ok(any) => staged.values.push((*id, index.index, any)),
            Err(error) => error!(
                "component `{}` cannot be stored: {error}",
                std::any::type_name::<T>()
            ),
        }
    }
    for entity in removed.read() {
        if let Ok(id) = ids.get(entity) {
            staged.removed.push((*id, index.index));
        }
    }
}

/// Adds the durable route. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    let replica = app
        .world_mut()
        .get_resource_or_init::<LocalPeer>()
        .replica();
    app.insert_resource(EntityDoc::new(replica))
        .init_resource::<EntityDocConfig>()
        .init_resource::<NetEntities>()
        .init_resource::<DurableTypes>()
        .init_resource::<Staged>()
        .add_message::<TransferOwnership>()
        .add_message::<ClaimOwnership>()
        .add_message::<RequestOwnership>()
        .add_message::<OwnershipRequested>()
        .init_resource::<PendingRequests>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            apply_remote_entities.in_set(Step::ApplyEntities),
        )
        .add_stage_systems(
            PeerSyncSystems::Collect,
            (
                assign_net_ids.in_set(Step::AssignIds),
                answer_requests.in_set(Step::StageWrites),
                (flush_staged, send_entity_updates)
                    .chain()
                    .in_set(Step::FlushDoc),
            ),
        );
}

/// Gives new [`Replicated`] entities a [`NetId`] and the local replica as owner.
pub(crate) fn assign_net_ids(
    mut commands: Commands,
    local: Res<LocalPeer>,
    mut net: ResMut<NetEntities>,
    doc: Res<EntityDoc>,
    fresh: Query<Entity, (With<Replicated>, Without<NetId>)>,
    mut staged: ResMut<Staged>,
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
        staged.values.push((id, usize::MAX, Any::Null));
    }
}

/// Tells the game about requests for its entities, and grants them if configured.
fn answer_requests(
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

/// Writes everything staged this frame, plus despawns and ownership changes, in one
/// transaction.
#[allow(clippy::too_many_arguments)]
pub(crate) fn flush_staged(
    mut doc: ResMut<EntityDoc>,
    types: Res<DurableTypes>,
    local: Res<LocalPeer>,
    mut staged: ResMut<Staged>,
    mut net: ResMut<NetEntities>,
    mut despawned: RemovedComponents<Replicated>,
    owners: Query<(&NetId, &Owner)>,
    mut transfers: MessageReader<TransferOwnership>,
    mut claims: MessageReader<ClaimOwnership>,
    mut requests: MessageReader<RequestOwnership>,
    peers: Query<&PeerReplica>,
    config: Res<EntityDocConfig>,
    mut commands: Commands,
) {
    let me = local.replica();
    let despawned: Vec<Entity> = despawned.read().collect();
    let transfers: Vec<TransferOwnership> = transfers.read().copied().collect();
    let claims: Vec<ClaimOwnership> = claims.read().copied().collect();
    let requests: Vec<RequestOwnership> = requests.read().copied().collect();
    if requests.is_empty()
        && staged.values.is_empty()
        && staged.removed.is_empty()
        && despawned.is_empty()
        && transfers.is_empty()
        && claims.is_empty()
    {
        return;
    }
    let root = doc.root();
    let mut tombstones = Vec::new();
    let mut txn = doc.transact_mut();
    for (id, index, value) in staged.values.drain(..) {
        let key = id.to_string();
        let entity_map = entity_map(&root, &mut txn, &key, me);
        if index == usize::MAX {
            continue;
        }
        let components = child_map(&entity_map, &mut txn, COMPONENTS);
        let component = child_map(&components, &mut txn, &types.0[index].name);
        write_fields(&component, &mut txn, value);
    }
    for (id, index) in staged.removed.drain(..) {
        let key = id.to_string();
        if let Some(Out::YMap(entity_map)) = root.get(&txn, &key)
            && let Some(Out::YMap(components)) = entity_map.get(&txn, COMPONENTS)
        {
            components.remove(&mut txn, &types.0[index].name);
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
        if EntityDoc::owner_in_txn(&root, &txn, &id.to_string()) == Some(Some(me)) {
            root.remove(&mut txn, &id.to_string());
            tombstones.push(id.to_string());
        }
    }
    for transfer in transfers {
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
        if let Some(Out::YMap(entity_map)) = root.get(&txn, &id.to_string()) {
            set_owner(&entity_map, &mut txn, transfer.to);
            if let Some(Out::YMap(pending)) = entity_map.get(&txn, REQUESTS) {
                pending.clear(&mut txn);
            }
            commands
                .entity(transfer.entity)
                .insert(Owner(Some(transfer.to)));
        }
    }
    let present: HashSet<ReplicaId> = peers.iter().map(|p| p.0).chain([me]).collect();
    for claim in claims {
        let Ok((id, owner)) = owners.get(claim.entity) else {
            continue;
        };
        let orphaned = owner.0.is_none_or(|o| !present.contains(&o));
        if config.owner_left != OwnerLeftPolicy::Orphan || !orphaned {
            warn!(
                "cannot claim `{id}`: its owner `{:?}` is still here or orphans are not claimable",
                owner.0
            );
            continue;
        }
        if let Some(Out::YMap(entity_map)) = root.get(&txn, &id.to_string()) {
            set_owner(&entity_map, &mut txn, me);
            commands.entity(claim.entity).insert(Owner(Some(me)));
        }
    }
    for request in requests {
        let Ok((id, owner)) = owners.get(request.entity) else {
            continue;
        };
        if owner.0 == Some(me) {
            continue;
        }
        if let Some(Out::YMap(entity_map)) = root.get(&txn, &id.to_string()) {
            let pending = child_map(&entity_map, &mut txn, REQUESTS);
            pending.insert(&mut txn, me.to_string(), true);
        }
    }
    drop(txn);
    doc.tombstones.extend(tombstones);
}

/// Records a new owner, and adds it to everyone who has owned the entity.
fn set_owner(entity_map: &MapRef, txn: &mut TransactionMut, owner: ReplicaId) {
    let owners = child_map(entity_map, txn, OWNERS);
    if !owners.contains_key(txn, &owner.to_string()) {
        owners.insert(txn, owner.to_string(), true);
    }
    entity_map.insert(txn, OWNER, owner.to_string());
}

fn entity_map(root: &MapRef, txn: &mut TransactionMut, key: &str, owner: ReplicaId) -> MapRef {
    if let Some(Out::YMap(map)) = root.get(txn, key) {
        return map;
    }
    let map = root.insert(txn, key, MapPrelim::default());
    map.insert(txn, COMPONENTS, MapPrelim::default());
    set_owner(&map, txn, owner);
    map
}

fn child_map(parent: &MapRef, txn: &mut TransactionMut, key: &str) -> MapRef {
    if let Some(Out::YMap(map)) = parent.get(txn, key) {
        return map;
    }
    parent.insert(txn, key, MapPrelim::default())
}

/// Writes the fields of `value` that differ from what the map holds.
fn write_fields(map: &MapRef, txn: &mut TransactionMut, value: Any) {
    let fields: Vec<(String, Any)> = match value {
        Any::Map(fields) => fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        other => vec![(WHOLE_VALUE.to_owned(), other)],
    };
    for (field, value) in fields {
        let same = matches!(map.get(txn, &field), Some(Out::Any(ref current)) if *current == value);
        if !same {
            map.insert(txn, field, value);
        }
    }
}

/// Reads a component's fields map back into `T`, the inverse of [`write_fields`].
fn read_value<T: DeserializeOwned>(map: &MapRef, txn: &Transaction) -> Result<T, String> {
    let fields: Vec<(&str, Any)> = map
        .iter(txn)
        .filter_map(|(key, value)| match value {
            Out::Any(any) => Some((key, any)),
            _ => None,
        })
        .collect();
    if let [(key, whole)] = &fields[..]
        && *key == WHOLE_VALUE
    {
        return yrs::encoding::serde::from_any(whole).map_err(|e| e.to_string());
    }
    // Straight from the fields, without building a map of them first; types that
    // take a map other than as fields (an enum with data, a newtype around a map) do
    // not take this form, and read the map as `to_any` made it.
    let direct = T::deserialize(serde::de::value::MapDeserializer::new(
        fields.iter().map(|(key, value)| (*key, value)),
    ));
    direct.or_else(|_: yrs::encoding::read::Error| {
        let map: HashMap<String, Any> = fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        yrs::encoding::serde::from_any(&Any::Map(Arc::new(map))).map_err(|e| e.to_string())
    })
}

/// The single value of a fields map that holds a whole value, not fields.
pub(crate) fn whole_value(map: &MapRef, txn: &Transaction) -> Option<Any> {
    match map.get(txn, WHOLE_VALUE) {
        Some(Out::Any(any)) => Some(any),
        _ => None,
    }
}

impl EntityDoc {
    fn owner_in_txn<T: ReadTxn>(root: &MapRef, txn: &T, entity: &str) -> Option<Option<ReplicaId>> {
        let Some(Out::YMap(map)) = root.get(txn, entity) else {
            return None;
        };
        match map.get(txn, OWNER) {
            Some(Out::Any(Any::String(owner))) => Some(ReplicaId::parse(&owner)),
            _ => Some(None),
        }
    }
}

/// Sends this frame's local entity edits and keeps the shadow in step.
fn send_entity_updates(doc: Res<EntityDoc>, mut outbox: ResMut<Outbox>) {
    if let Some(update) = doc.take_local_update() {
        if !doc.shadow_stale {
            doc.apply_to_shadow(&update);
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

/// Applies queued remote entity updates (checking ownership of live ones) and
/// materialises what changed into the world.
pub(crate) fn apply_remote_entities(world: &mut World) {
    let now = world.resource::<Time<Real>>().elapsed();
    let local = world.resource::<LocalPeer>().replica();
    let config = world.resource::<EntityDocConfig>().clone();
    let mut present: HashSet<ReplicaId> = HashSet::from([local]);
    let mut replica_of: HashMap<PeerId, ReplicaId> = HashMap::new();
    {
        let mut query = world.query::<(&crate::net::peer::Peer, &PeerReplica)>();
        for (peer, replica) in query.iter(world) {
            present.insert(replica.0);
            replica_of.insert(peer.id, replica.0);
        }
    }
    let mut refused_from: Vec<PeerId> = Vec::new();
    let mut malformed: Vec<(PeerId, DropReason)> = Vec::new();
    {
        let mut doc = world.resource_mut::<EntityDoc>();
        let live = std::mem::take(&mut doc.live);
        for (from, update, bytes) in live {
            // A peer may have at most `MAX_HELD_PER_PEER` updates waiting; past that
            // (a flood of writes it may not make) the rest are refused at once.
            if doc.held.iter().filter(|h| h.from == from).count() >= MAX_HELD_PER_PEER {
                doc.refused += 1;
                refused_from.push(from);
                continue;
            }
            doc.held.push_back(HeldUpdate {
                from,
                replica: replica_of.get(&from).copied(),
                update,
                bytes,
                since: now,
            });
        }
        let saved: Vec<_> = doc.saved.drain(..).map(|u| (PeerId(0), u)).collect();
        let catch_up = std::mem::take(&mut doc.catch_up);
        if !saved.is_empty() || !catch_up.is_empty() {
            // y-sync catch-up: relayed state, applied as is (see the module docs), in
            // one transaction, without per-change tracking: everything is re-read.
            // One that brings nothing new (the usual answer of a peer that was already
            // in step) is skipped: no re-read of the world for it.
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
                .apply_encoded(saved, catch_up, brings_news, &mut malformed);
            if let Err(error) = applied {
                error!("a sync update failed to apply: {error}");
            }
            attach_touch_observer(doc.synced.doc(), Arc::clone(&doc.main_touched));
            if news {
                doc.shadow_stale = true;
                doc.everything_dirty = true;
            }
        }
        // Live updates, in arrival order; one not yet allowed holds back later ones
        // from the same sender (yrs needs each client's updates in order anyway).
        let mut blocked: HashSet<PeerId> = HashSet::new();
        let mut still_held = VecDeque::new();
        while let Some(held) = doc.held.pop_front() {
            if blocked.contains(&held.from) {
                still_held.push_back(held);
                continue;
            }
            // Out of order (an earlier update of its client has not arrived) or
            // missing what it builds on: it waits, and the room is asked for the rest.
            let mut missing_history = doc.synced.would_leave_hole(&held.update);
            if !missing_history {
                if doc.shadow_stale {
                    doc.rebuild_shadow();
                }
                let (touched, complete) = doc.apply_to_shadow(&held.bytes);
                let allowed = complete
                    && held
                        .replica
                        .is_some_and(|r| doc.allowed(&touched, r, config.owner_left));
                if allowed {
                    let waiting = doc.synced.waiting_updates();
                    let from = held.from;
                    if let Err(error) = doc.synced.apply_remote(vec![held.update]) {
                        error!("an update from `{from}` failed to apply: {error}");
                    }
                    if doc.synced.waiting_updates() < waiting {
                        // Catch-up that waited for this update went in with it.
                        doc.shadow_stale = true;
                        doc.everything_dirty = true;
                    }
                    continue;
                }
                missing_history = !complete;
                doc.rebuild_shadow();
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
                    refused_from.push(held.from);
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
    for (from, reason) in refused_from
        .into_iter()
        .map(|from| (from, DropReason::NotOwner))
        .chain(malformed)
    {
        if reason != DropReason::NotOwner {
            debug!("refused a document update from peer `{from}`: {reason:?}");
        }
        let entity = world.resource::<Peers>().entity(from);
        if let Some(mut stats) = entity.and_then(|e| world.get_mut::<PeerStats>(e)) {
            stats.count_drop(reason);
        }
    }
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
        materialise(world, Dirty::All, &present, config.owner_left);
        return;
    }
    if !replicas_changed.is_empty() && config.owner_left == OwnerLeftPolicy::Despawn {
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
    if !dirty.is_empty() {
        materialise(world, Dirty::Keys(dirty), &present, config.owner_left);
    }
}

/// Replicas that joined or left, so their entities are re-checked for visibility.
#[derive(Resource, Default)]
struct OwnerChanges {
    replicas: HashSet<ReplicaId>,
}

fn note_replica_changes(
    mut joined: MessageReader<PeerJoined>,
    mut left: MessageReader<PeerLeft>,
    mut changes: ResMut<OwnerChanges>,
) {
    changes.replicas.extend(joined.read().map(|j| j.replica));
    changes
        .replicas
        .extend(left.read().filter_map(|l| l.replica));
}

pub(crate) fn presence_hooks(app: &mut App) {
    app.init_resource::<OwnerChanges>().add_stage_systems(
        PeerSyncSystems::Apply,
        note_replica_changes
            .before(apply_remote_entities)
            .in_set(Step::ApplyEntities),
    );
}

/// Which entities to bring in line with the document.
enum Dirty {
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
    types: &'w [DurableType],
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
        held[index] = match (types[index].read.decode)(world, &fields, txn) {
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
fn materialise(
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
    // Read the document first, then touch the world.
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut deleted: Vec<NetId> = Vec::new();
    let mut hidden: Vec<(Option<ReplicaId>, NetId)> = Vec::new();
    {
        let reader = Reader {
            world,
            types: &world.resource::<DurableTypes>().0,
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
    let reads: Vec<ReadFns> = world
        .resource::<DurableTypes>()
        .0
        .iter()
        .map(|t| t.read)
        .collect();
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fields {
        x: i64,
        label: String,
        tag: Option<u8>,
        nested: Point,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Point(f32, f32);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Shape {
        Dot,
        Circle { radius: f64 },
        Line(Point, Point),
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Wrapped(BTreeMap<String, i32>);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        a: u32,
    }

    /// Writes `value` as a component's fields map and reads it back as a `T`.
    fn read_back<T: DeserializeOwned>(value: Any) -> Result<T, String> {
        let doc = Doc::new();
        let root = doc.get_or_insert_map("root");
        {
            let mut txn = doc.transact_mut();
            let map = child_map(&root, &mut txn, "value");
            write_fields(&map, &mut txn, value);
        }
        let txn = doc.transact();
        let Some(Out::YMap(map)) = root.get(&txn, "value") else {
            panic!("the fields map was written");
        };
        read_value::<T>(&map, &txn)
    }

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, String> {
        read_back(yrs::encoding::serde::to_any(value).unwrap())
    }

    /// Every serde shape a component can take comes back from its fields map as it
    /// went in: fields read directly, whole values and map-shaped non-structs through
    /// the general path.
    #[test]
    fn component_values_come_back_from_their_fields() {
        let fields = Fields {
            x: -3,
            label: "card".into(),
            tag: None,
            nested: Point(1.5, -2.0),
        };
        assert_eq!(round_trip(&fields).unwrap(), fields);
        for shape in [
            Shape::Dot,
            Shape::Circle { radius: 2.5 },
            Shape::Line(Point(0.0, 1.0), Point(2.0, 3.0)),
        ] {
            assert_eq!(round_trip(&shape).unwrap(), shape);
        }
        let wrapped = Wrapped(BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
        assert_eq!(round_trip(&wrapped).unwrap(), wrapped);
        assert_eq!(round_trip(&7u32).unwrap(), 7);
        assert_eq!(round_trip(&Strict { a: 4 }).unwrap(), Strict { a: 4 });
        // A value of another shape is an error, not a panic.
        assert!(read_back::<Fields>(Any::from("not a struct")).is_err());
    }
}
