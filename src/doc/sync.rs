//! The y-sync protocol over every hosted document: sync started with peers that
//! join, step 1 answered, updates routed to their hosts, missing history asked for.

use std::collections::HashMap;
use std::time::Duration;

use bevy::prelude::*;
use yrs::StateVector;
use yrs::sync::SyncMessage;

use super::{DocId, HostedDocs, Remote, decode_sync, step1, step2};
use crate::net::peer::{PeerId, PeerJoined, PeerLeft, PeerRejected, Peers};
use crate::net::session::{FreshJoin, Inbound, Inbox, Outbox, Recipients};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::net::wire::Message;
use crate::schedule::{PeerSyncSystems, StageAppExt, Step};

/// Step 1s from one peer are answered at most this often per document; asks that
/// come meanwhile are coalesced into the latest (and counted as
/// [`DropReason::OverBudget`]).
pub const STEP1_ANSWER_GAP: Duration = Duration::from_millis(250);
/// An answer to a step 1 of at least this many bytes (about a whole document) ...
pub const LARGE_ANSWER: usize = 64 * 1024;
/// ... is sent to one peer at most this often per document: asking for everything over
/// and over costs the asker, not the room.
pub const LARGE_ANSWER_GAP: Duration = Duration::from_secs(3);

/// Step 1s waiting for their answer, per peer and document.
#[derive(Resource, Default)]
pub(super) struct Step1Asks(HashMap<(PeerId, DocId), Ask>);

#[derive(Default)]
pub(super) struct Ask {
    /// The latest state vector asked with, not answered yet.
    pending: Option<StateVector>,
    last_answer: Option<Duration>,
    last_large: Option<Duration>,
}

/// A y-sync step 2 from a peer is taken only this long after this peer last asked it
/// (or the room) for one with a step 1, or after the last step 2 taken from it: an
/// answer, not a write of the sender's choosing. (The fresh joiner's whole state,
/// asked for in its hello, counts as asked.)
pub const STEP2_WINDOW: Duration = Duration::from_secs(30);

/// When this peer last asked for catch-up (sent a step 1), per peer and document, and
/// of the whole room; and when it last took a step 2 from each peer.
#[derive(Resource, Default)]
pub(super) struct Asked {
    peers: HashMap<(PeerId, DocId), Duration>,
    room: HashMap<DocId, Duration>,
}

impl Asked {
    fn note(&mut self, to: Recipients, doc: DocId, now: Duration) {
        match to {
            Recipients::Peer(peer) => {
                self.peers.insert((peer, doc), now);
            }
            _ => {
                self.room.insert(doc, now);
            }
        }
    }

    /// Whether a step 2 from `peer` now answers an ask; if so, its window starts again.
    fn answers(&mut self, peer: PeerId, doc: DocId, now: Duration) -> bool {
        let recent =
            |at: Option<&Duration>| at.is_some_and(|at| now.saturating_sub(*at) < STEP2_WINDOW);
        let asked = recent(self.peers.get(&(peer, doc))) || recent(self.room.get(&doc));
        if asked {
            self.peers.insert((peer, doc), now);
        }
        asked
    }

    fn forget(&mut self, peer: PeerId) {
        self.peers.retain(|(p, _), _| *p != peer);
    }
}

/// Adds the protocol's systems.
pub(super) fn plugin(app: &mut App) {
    app.init_resource::<HostedDocs>()
        .init_resource::<Asked>()
        .init_resource::<HeldStep1>()
        .init_resource::<Step1Asks>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            (
                send_state_vectors,
                ask_for_missing_history,
                receive_doc_messages,
            )
                .chain()
                .in_set(Step::SyncDocs),
        )
        .add_stage_systems(
            PeerSyncSystems::Apply,
            answer_step1
                .after(receive_doc_messages)
                .in_set(Step::SyncDocs),
        )
        // After this frame's catch-up is applied (in `Apply`), so the answers to these
        // step 1s hold only what it lacked.
        .add_stage_systems(PeerSyncSystems::Collect, send_held_step1)
        // Before hellos are answered or sent this frame (a save loaded at start-up makes
        // a peer not fresh from its first frame; edits of this frame count from the
        // next, which a hint can afford).
        .add_stage_systems(
            PeerSyncSystems::Receive,
            note_fresh_docs.in_set(Step::NoteDocs),
        );
}

/// Starts y-sync with every peer that just joined, for every synced document: step 1
/// (our state vector, answered with what we lack), unless the peer sends us its
/// whole state anyway; and our whole state to a peer that said it was fresh.
fn send_state_vectors(
    mut joined: MessageReader<PeerJoined>,
    hosted: Res<HostedDocs>,
    links: Query<&Inbound>,
    fresh: Res<FreshJoin>,
    mut held: ResMut<HeldStep1>,
    time: Res<Time<Real>>,
    (mut outbox, mut asked): (ResMut<Outbox>, ResMut<Asked>),
) {
    let now = time.elapsed();
    let docs: Vec<_> = hosted.iter().collect();
    // Each document's whole state, encoded once however many fresh peers join.
    let mut whole: Vec<Option<Vec<Message>>> = vec![None; docs.len()];
    for joined in joined.read() {
        let to = Recipients::Peer(joined.peer);
        let Ok(inbound) = links.get(joined.entity) else {
            continue;
        };
        let handshake = &inbound.handshake;
        let hold_step1 = fresh.holds_step1_to(joined.peer);
        if hold_step1 && !handshake.we_are_sent_everything() {
            held.0.push((joined.peer, time.elapsed()));
        }
        for (&(id, synced), whole) in docs.iter().zip(&mut whole) {
            if handshake.they_want_everything() {
                let state = whole.get_or_insert_with(|| step2(id, synced, &StateVector::default()));
                for piece in state.iter() {
                    outbox.push(to, Channel::Reliable, piece.clone());
                }
            }
            if handshake.we_are_sent_everything() {
                // (Asked in our hello.)
                asked.note(to, id, now);
            } else if !hold_step1 {
                outbox.push(to, Channel::Reliable, step1(id, synced));
                asked.note(to, id, now);
            }
        }
    }
}

/// Notes when this peer's documents stop being empty (see `Hello::fresh`).
///
fn note_fresh_docs(
    mut fresh: ResMut<FreshJoin>,
    hosted: Res<HostedDocs>,
    mut left: MessageReader<PeerLeft>,
    mut rejected: MessageReader<PeerRejected>,
) {
    for peer in left
        .read()
        .map(|l| l.peer)
        .chain(rejected.read().map(|r| r.peer))
    {
        fresh.forget(peer);
    }
    if !fresh.empty {
        return;
    }
    // Nothing integrated, nothing to delete: the state vector says it all.
    if hosted
        .iter()
        .any(|(_, synced)| !synced.state_vector().is_empty())
    {
        fresh.empty = false;
    }
}

/// How long a fresh peer holds back y-sync step 1 to the other peers while the whole
/// state it asked one peer for (see `Hello::fresh`) does
/// not come.
pub const HELD_STEP1_WAIT: Duration = Duration::from_secs(2);

/// Peers whose y-sync step 1 waits for the whole state this peer asked another for,
/// each with when it joined.
#[derive(Resource, Default)]
struct HeldStep1(Vec<(PeerId, Duration)>);

/// Sends the held step 1s once the asked-for state came (or its sender went, or
/// [`HELD_STEP1_WAIT`] passed); by now it is applied, so their answers hold only
/// what that state lacked.
fn send_held_step1(
    fresh: Res<FreshJoin>,
    mut held: ResMut<HeldStep1>,
    peers: Res<Peers>,
    hosted: Res<HostedDocs>,
    mut outbox: ResMut<Outbox>,
    time: Res<Time<Real>>,
    mut asked: ResMut<Asked>,
) {
    if held.0.is_empty() {
        return;
    }
    let now = time.elapsed();
    held.0.retain(|&(peer, since)| {
        if fresh.holds_step1_to(peer) && now.saturating_sub(since) < HELD_STEP1_WAIT {
            return true;
        }
        if peers.entity(peer).is_some() {
            for (id, synced) in hosted.iter() {
                outbox.push(Recipients::Peer(peer), Channel::Reliable, step1(id, synced));
                asked.note(Recipients::Peer(peer), id, now);
            }
        }
        false
    });
}

/// Asks the room (y-sync step 1) for what out-of-order updates wait for.
fn ask_for_missing_history(
    hosted: Res<HostedDocs>,
    mut outbox: ResMut<Outbox>,
    time: Res<Time<Real>>,
    mut asked: ResMut<Asked>,
) {
    let now = time.elapsed();
    for (id, synced) in hosted.iter() {
        if synced.wants_sync(now) {
            outbox.push(Recipients::All, Channel::Reliable, step1(id, synced));
            asked.note(Recipients::All, id, now);
        }
    }
}

/// Routes `Doc` messages: step 1s to [`answer_step1`], step 2s and updates to their
/// document.
pub(super) fn receive_doc_messages(
    mut inbox: ResMut<Inbox>,
    hosted: Res<HostedDocs>,
    mut fresh: ResMut<FreshJoin>,
    mut asks: ResMut<Step1Asks>,
    (peers, mut stats, links): (Res<Peers>, Query<&mut PeerStats>, Query<&Inbound>),
    (mut asked, time, mut left): (ResMut<Asked>, Res<Time<Real>>, MessageReader<PeerLeft>),
) {
    for left in left.read() {
        asked.forget(left.peer);
    }
    if inbox.doc.is_empty() {
        return;
    }
    let now = time.elapsed();
    let mut drop = |peer: PeerId, reason: DropReason, what: &str| {
        debug!("refused {what} from peer `{peer}`: {reason:?}");
        if let Some(mut stats) = peers.entity(peer).and_then(|e| stats.get_mut(e).ok()) {
            stats.count_drop(reason);
        }
    };
    for (peer, body) in std::mem::take(&mut inbox.doc) {
        let (doc_id, message) = match decode_sync(&body) {
            Ok(decoded) => decoded,
            Err(reason) => {
                drop(peer, reason, "a document message");
                continue;
            }
        };
        let Some(synced) = hosted.get(doc_id) else {
            drop(
                peer,
                DropReason::Unknown,
                "a message for a document not synced here",
            );
            continue;
        };
        match message {
            SyncMessage::SyncStep1(remote) => {
                let ask = asks.0.entry((peer, doc_id)).or_default();
                if ask.pending.replace(remote).is_some() {
                    drop(
                        peer,
                        DropReason::OverBudget,
                        "a step 1 asked again before its answer",
                    );
                }
            }
            SyncMessage::SyncStep2(bytes) => {
                if !asked.answers(peer, doc_id, now) {
                    drop(peer, DropReason::Unasked, "a step 2 nobody asked for");
                    continue;
                }
                if fresh.asked == Some(peer) {
                    fresh.answered = true;
                }
                synced.push_incoming(Remote {
                    from: peer,
                    catch_up: true,
                    author: None,
                    bytes,
                });
            }
            SyncMessage::Update(bytes) => {
                let author = peers
                    .entity(peer)
                    .and_then(|entity| links.get(entity).ok())
                    .and_then(|link| link.handshake.their_client_id(doc_id as u8));
                synced.push_incoming(Remote {
                    from: peer,
                    catch_up: false,
                    author,
                    bytes,
                })
            }
        }
    }
}

/// Answers the step 1s that are due (see [`STEP1_ANSWER_GAP`], [`LARGE_ANSWER_GAP`]).
fn answer_step1(
    mut asks: ResMut<Step1Asks>,
    hosted: Res<HostedDocs>,
    peers: Res<Peers>,
    time: Res<Time<Real>>,
    mut outbox: ResMut<Outbox>,
) {
    if asks.0.is_empty() {
        return;
    }
    let now = time.elapsed();
    let since =
        |at: Option<Duration>, gap: Duration| at.is_some_and(|at| now.saturating_sub(at) < gap);
    asks.0.retain(|&(peer, doc_id), ask| {
        if peers.entity(peer).is_none() {
            return false;
        }
        let Some(synced) = hosted.get(doc_id) else {
            return false;
        };
        if ask.pending.is_none() || since(ask.last_answer, STEP1_ANSWER_GAP) {
            return true;
        }
        let remote = ask.pending.take().expect("checked above");
        let pieces = step2(doc_id, synced, &remote);
        let bytes: usize = pieces
            .iter()
            .map(|piece| match piece {
                Message::Doc(body) => body.len(),
                _ => 0,
            })
            .sum();
        let large = bytes >= LARGE_ANSWER;
        if large && since(ask.last_large, LARGE_ANSWER_GAP) {
            ask.pending = Some(remote);
            return true;
        }
        for piece in pieces {
            outbox.push(Recipients::Peer(peer), Channel::Reliable, piece);
        }
        ask.last_answer = Some(now);
        if large {
            ask.last_large = Some(now);
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doc::SharedDoc;
    use yrs::Text;

    /// A fresh joiner whose asked peer is slow to answer (its link takes seconds)
    /// asks the others after [`HELD_STEP1_WAIT`]; one whose asked peer leaves asks
    /// them at once. Either way it converges with the room.
    #[test]
    fn a_fresh_joiner_asks_the_others_when_the_asked_peer_fails_it() {
        use crate::net::transport::memory::LinkConditioner;
        use crate::testing::TestRoom;

        for leaves in [false, true] {
            let mut room = TestRoom::new(8);
            let a = room.add_peer(|_| {});
            room.add_peer(|_| {});
            assert!(room.step_until(10, TestRoom::fully_connected));
            {
                let doc = room.app(a).world().resource::<SharedDoc>();
                doc.text("note")
                    .insert(&mut doc.transact_mut(), 0, "known to all");
            }
            room.step_n(3);
            let c = room.add_peer(|_| {});
            room.step(); // c's links open and its hellos leave
            let asked = room.app(c).world().resource::<FreshJoin>().asked;
            let asked = asked.expect("a fresh joiner asks one peer");
            let c_id = room.peer_id(c).unwrap();
            if leaves {
                room.network.set_link_up(asked, c_id, false);
            } else {
                let slow = LinkConditioner {
                    latency: Duration::from_secs(10),
                    ..LinkConditioner::PERFECT
                };
                room.network.set_conditioner(asked, c_id, slow);
                room.network.set_conditioner(c_id, asked, slow);
            }
            let note = |room: &TestRoom| {
                let doc = room.app(c).world().resource::<SharedDoc>();
                doc.text_string("note")
            };
            let frames = HELD_STEP1_WAIT.as_millis() as usize / 16;
            if leaves {
                assert!(room.step_until(10, |room| note(room) == "known to all"));
            } else {
                room.step_n(frames / 2);
                assert_eq!(note(&room), "", "still waiting for the asked peer");
                assert!(room.step_until(frames, |room| note(room) == "known to all"));
            }
        }
    }
}
