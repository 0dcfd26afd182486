//! [`EntityDoc`]: the document behind the durable route, with what waits to go in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bevy::prelude::*;
use yrs::{Doc, MapRef, Options};

use super::authority::{Shadow, Touched, observe_touches};
use super::fields::ENTITIES;
use crate::doc::{Decoded, DocLimits, SyncedDoc};
use crate::entity::NetId;
use crate::net::peer::{PeerId, ReplicaId};

/// A live update from a peer, held until it is allowed (or refused).
pub(super) struct HeldUpdate {
    pub(super) from: PeerId,
    pub(super) replica: Option<ReplicaId>,
    /// Decoded once, on arrival; its bytes are decoded again only into the shadow.
    pub(super) update: Decoded,
    pub(super) bytes: Vec<u8>,
    pub(super) since: Duration,
}

/// The document behind the durable route, with its ownership check.
#[derive(Resource)]
pub struct EntityDoc {
    pub(super) synced: Arc<SyncedDoc>,
    pub(super) shadow: Shadow,
    /// A catch-up was applied untracked: re-read every entity.
    pub(super) everything_dirty: bool,
    pub(super) main_touched: Arc<Mutex<Touched>>,
    pub(super) held: VecDeque<HeldUpdate>,
    /// A saved state of this document, applied before any catch-up.
    pub(super) saved: Vec<Decoded>,
    /// Entities seen deleted from the document: edits racing their despawn are harmless.
    pub(super) tombstones: HashSet<String>,
    /// Entities not in the world because their owner is away
    /// ([`OwnerLeftPolicy::Despawn`](super::OwnerLeftPolicy::Despawn)), by owner: re-read
    /// when it comes back, so a join does not re-read the whole document.
    pub(super) hidden: HashMap<ReplicaId, HashSet<NetId>>,
    /// Updates refused for writing what the sender does not own.
    pub refused: u64,
    /// Shadow rebuilds so far.
    pub(super) shadow_rebuilds: u64,
    /// Frames of judging held updates so far: which sender goes first.
    pub(super) turn: usize,
}

impl fmt::Debug for EntityDoc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntityDoc")
            .field("held", &self.held.len())
            .field("refused", &self.refused)
            .finish_non_exhaustive()
    }
}

impl EntityDoc {
    /// A document writing with yrs client id `client_id`: the local run's (see
    /// [`identity`](crate::net::identity)), fresh each run, as reusing one whose later
    /// edits may have reached peers but not the save would corrupt the document.
    pub(super) fn new(client_id: u64) -> Self {
        Self::with_client_id(client_id)
    }

    /// A document for a replica restored from a save (ownership stays with the
    /// replica id; the client id is this run's).
    pub(crate) fn restored(client_id: u64, state: Decoded) -> Self {
        let mut doc = Self::with_client_id(client_id);
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
            synced: Arc::new(SyncedDoc::new(doc).with_only_root(ENTITIES)),
            shadow: Shadow::new(),
            everything_dirty: false,
            main_touched,
            held: VecDeque::new(),
            saved: Vec::new(),
            tombstones: HashSet::new(),
            hidden: HashMap::new(),
            refused: 0,
            shadow_rebuilds: 0,
            turn: 0,
        }
    }

    pub(super) fn root(&self) -> MapRef {
        self.synced.doc().get_or_insert_map(ENTITIES)
    }

    /// Queues a saved state of this document (see [`crate::persistence`]): applied
    /// like a y-sync catch-up, unchecked (it is this peer's own past state).
    pub(crate) fn queue_saved(&mut self, update: Decoded) {
        self.saved.push(update);
    }

    /// The yrs document itself (read it; write through the ECS, which checks ownership).
    pub fn doc(&self) -> &Doc {
        self.synced.doc()
    }

    /// The state vector (what this document has seen, per client).
    pub fn state_vector(&self) -> yrs::StateVector {
        self.synced.state_vector()
    }

    /// The whole integrated document as one update (for saving, or a late joiner).
    pub fn encode_state(&self) -> Vec<u8> {
        self.synced.encode_state()
    }

    /// How many updates (local transactions and remote updates) went through this
    /// document so far.
    pub fn update_count(&self) -> u64 {
        self.synced.update_count()
    }

    /// How many remote updates wait for an earlier part of their client's history.
    pub fn waiting_updates(&self) -> usize {
        self.synced.waiting_updates()
    }

    /// Bytes of the remote updates that wait for their history (see
    /// [`DocLimits::max_waiting_bytes`](crate::doc::DocLimits::max_waiting_bytes)).
    pub fn waiting_bytes(&self) -> usize {
        self.synced.waiting_bytes()
    }

    /// Out-of-order updates given up after [`MAX_ASKS`](crate::doc::MAX_ASKS) asks.
    pub fn given_up_updates(&self) -> u64 {
        self.synced.given_up_updates()
    }

    /// Live updates holding for their ownership or history.
    pub fn held_updates(&self) -> usize {
        self.held.len()
    }

    /// Limits on what peers send for this document.
    pub fn limits(&self) -> DocLimits {
        self.synced.limits()
    }

    /// Sets the limits on what peers send for this document.
    pub fn set_limits(&mut self, limits: DocLimits) {
        self.synced.set_limits(limits);
    }

    /// Catch-up at least twice this many bytes is sent in pieces of about this size
    /// (default 16 KiB less headers; `usize::MAX` sends it whole).
    pub fn set_piece_size(&mut self, size: usize) {
        self.synced.set_piece_size(size);
    }

    pub(crate) fn synced_doc(&self) -> &SyncedDoc {
        &self.synced
    }

    /// The engine's side of this document.
    pub(super) fn synced(&self) -> &Arc<SyncedDoc> {
        &self.synced
    }

    /// Rebuilds the shadow from this document (after a refused update, or a catch-up).
    pub(super) fn rebuild_shadow(&mut self) {
        self.shadow.rebuild(self.synced.doc());
        self.shadow_rebuilds += 1;
    }

    /// How often the shadow was rebuilt (a pass over the whole document each).
    pub(crate) fn shadow_rebuilds(&self) -> u64 {
        self.shadow_rebuilds
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
