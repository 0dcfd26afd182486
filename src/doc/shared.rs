//! [`SharedDoc`]: the room's document for free-form collaborative data.

use std::sync::Arc;

use bevy::prelude::*;
use yrs::sync::SyncMessage;
use yrs::{ArrayRef, Doc, GetString, MapRef, StateVector, TextRef, Transact, TransactionMut};

use super::{DocId, DocLimits, HostedDocs, SyncedDoc, encode_sync};
use crate::net::peer::{PeerId, Peers};
use crate::net::session::{Outbox, Recipients};
use crate::net::stats::PeerStats;
use crate::net::transport::Channel;
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// The room's shared document. See the [module docs](super).
#[derive(Resource, Debug)]
pub struct SharedDoc {
    synced: Arc<SyncedDoc>,
}

impl SharedDoc {
    /// A document writing with yrs client id `client_id` (see
    /// [`identity`](crate::net::identity): the local run's, which peers check).
    pub(crate) fn with_client_id(client_id: u64) -> Self {
        let doc = Doc::with_options(yrs::Options {
            client_id: yrs::block::ClientID::new(client_id),
            ..yrs::Options::default()
        });
        Self {
            synced: Arc::new(SyncedDoc::new(doc)),
        }
    }

    /// The world's shared document, created (writing with this run's client id) and
    /// hosted if it has none yet.
    pub(crate) fn get_or_init(world: &mut World) -> &SharedDoc {
        if !world.contains_resource::<SharedDoc>() {
            let client_id = world
                .get_resource_or_init::<crate::net::peer::LocalPeer>()
                .client_id(DocId::Room as u8);
            let doc = SharedDoc::with_client_id(client_id);
            world
                .get_resource_or_init::<HostedDocs>()
                .host(DocId::Room, Arc::clone(&doc.synced));
            world.insert_resource(doc);
        }
        world.resource::<SharedDoc>()
    }

    /// The shared text `name`, created if needed.
    pub fn text(&self, name: &str) -> TextRef {
        self.doc().get_or_insert_text(name)
    }

    /// The shared map `name`, created if needed.
    pub fn map(&self, name: &str) -> MapRef {
        self.doc().get_or_insert_map(name)
    }

    /// The shared array `name`, created if needed.
    pub fn array(&self, name: &str) -> ArrayRef {
        self.doc().get_or_insert_array(name)
    }

    /// The current contents of the shared text `name`.
    pub fn text_string(&self, name: &str) -> String {
        let text = self.text(name);
        text.get_string(&self.doc().transact())
    }

    /// The yrs document itself.
    pub fn doc(&self) -> &Doc {
        self.synced.doc()
    }

    /// A local read-write transaction. Its changes go out at the end of the frame.
    pub fn transact_mut(&self) -> TransactionMut<'_> {
        self.synced.transact_mut()
    }

    /// The state vector (what this document has seen, per client).
    pub fn state_vector(&self) -> StateVector {
        self.synced.state_vector()
    }

    /// The whole integrated document as one update (for saving, or a late joiner).
    /// Updates still waiting for their history are left out.
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

    /// Out-of-order updates given up after [`MAX_ASKS`](super::MAX_ASKS) asks of the
    /// room.
    pub fn given_up_updates(&self) -> u64 {
        self.synced.given_up_updates()
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

    pub(crate) fn synced(&self) -> &SyncedDoc {
        &self.synced
    }
}

/// Remote changes were applied to the [`SharedDoc`] this frame.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct SharedDocChanged {
    /// The peers whose updates were applied.
    pub from: Vec<PeerId>,
}

/// Hosts the [`SharedDoc`] in the engine, and applies and sends its updates.
pub(super) fn plugin(app: &mut App) {
    SharedDoc::get_or_init(app.world_mut());
    app.add_message::<SharedDocChanged>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            apply_room_updates
                .after(super::sync::receive_doc_messages)
                .in_set(Step::SyncDocs),
        )
        .add_stage_systems(PeerSyncSystems::Collect, send_local_updates);
}

/// Applies the room's updates of this frame, as they are decoded (see
/// [`SyncedDoc::apply_encoded`]), and says who changed the document.
fn apply_room_updates(
    doc: Res<SharedDoc>,
    peers: Res<Peers>,
    mut stats: Query<&mut PeerStats>,
    mut changed: MessageWriter<SharedDocChanged>,
) {
    let incoming = doc.synced.take_incoming();
    if incoming.is_empty() {
        return;
    }
    let mut refused = Vec::new();
    // Live updates decoded now (their author checked), catch-up as it is applied.
    let limits = doc.synced.limits();
    let mut live = Vec::new();
    let mut catch_up = Vec::new();
    for remote in incoming {
        if remote.catch_up {
            catch_up.push((remote.from, remote.bytes));
            continue;
        }
        match super::decode_live(&remote.bytes, &limits, remote.author) {
            Ok(decoded) => live.push((remote.from, decoded, remote.bytes.len())),
            Err(reason) => refused.push((remote.from, reason)),
        }
    }
    let mut room_from = Vec::new();
    let applied = doc.synced.apply_encoded(
        live,
        catch_up,
        |from, _| {
            if !room_from.contains(&from) {
                room_from.push(from);
            }
            true
        },
        &mut refused,
    );
    for (peer, reason) in refused {
        debug!("refused a document update from peer `{peer}`: {reason:?}");
        if let Some(mut stats) = peers.entity(peer).and_then(|e| stats.get_mut(e).ok()) {
            stats.count_drop(reason);
        }
    }
    if let Err(error) = applied {
        error!("a remote update failed to apply to the shared document: {error}");
    }
    if !room_from.is_empty() {
        changed.write(SharedDocChanged { from: room_from });
    }
}

/// Sends this frame's local edits, merged into one update per document.
fn send_local_updates(doc: Res<SharedDoc>, mut outbox: ResMut<Outbox>) {
    if let Some(update) = doc.synced.take_local_update() {
        outbox.push(
            Recipients::All,
            Channel::Reliable,
            encode_sync(DocId::Room, SyncMessage::Update(update)),
        );
    }
}
