//! [`EntityDoc`]: the document behind the durable route, with what waits to go in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use yrs::{Doc, MapRef, Options, Update};

use super::authority::{Shadow, Touched, observe_touches};
use super::fields::ENTITIES;
use crate::doc::SyncedDoc;
use crate::entity::NetId;
use crate::net::peer::{PeerId, ReplicaId};

/// A live update from a peer, held until it is allowed (or refused).
pub(super) struct HeldUpdate {
    pub(super) from: PeerId,
    pub(super) replica: Option<ReplicaId>,
    /// Decoded once, on arrival; its bytes are decoded again only into the shadow.
    pub(super) update: Update,
    pub(super) bytes: Vec<u8>,
    pub(super) since: Duration,
}

/// The document behind the durable route, with its ownership check.
#[derive(Resource)]
pub struct EntityDoc {
    pub(super) synced: SyncedDoc,
    pub(super) shadow: Shadow,
    /// A catch-up was applied untracked: re-read every entity.
    pub(super) everything_dirty: bool,
    pub(super) main_touched: Arc<Mutex<Touched>>,
    pub(super) held: VecDeque<HeldUpdate>,
    /// Live updates from peers (decoded, and their bytes for the shadow), applied
    /// once allowed.
    pub(super) live: Vec<(PeerId, Update, Vec<u8>)>,
    /// Y-sync catch-up from peers, decoded as it is applied.
    pub(super) catch_up: Vec<(PeerId, Vec<u8>)>,
    /// A saved state of this document, applied before any catch-up.
    pub(super) saved: Vec<Update>,
    /// Entities seen deleted from the document: edits racing their despawn are harmless.
    pub(super) tombstones: HashSet<String>,
    /// Entities not in the world because their owner is away
    /// ([`OwnerLeftPolicy::Despawn`](super::OwnerLeftPolicy::Despawn)), by owner: re-read
    /// when it comes back, so a join does not re-read the whole document.
    pub(super) hidden: HashMap<ReplicaId, HashSet<NetId>>,
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

impl EntityDoc {
    pub(super) fn new(replica: ReplicaId) -> Self {
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
        Self {
            synced: SyncedDoc::new(doc),
            shadow: Shadow::new(),
            everything_dirty: false,
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

    pub(super) fn root(&self) -> MapRef {
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

    /// Rebuilds the shadow from this document (after a refused update, or a catch-up).
    pub(super) fn rebuild_shadow(&mut self) {
        self.shadow.rebuild(self.synced.doc());
    }

    /// Whether a change `touched` by replica `sender` is allowed (see
    /// [`Shadow::allowed`]).
    pub(super) fn allowed(
        &self,
        touched: &Touched,
        sender: ReplicaId,
        policy: super::OwnerLeftPolicy,
    ) -> bool {
        self.shadow
            .allowed(self.synced.doc(), &self.tombstones, touched, sender, policy)
    }
}
