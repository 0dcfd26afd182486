//! The handshake with one peer: a three-way exchange of hellos (see [`Handshake`]),
//! the schema check, and what a fresh joiner says.

use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;

use crate::net::peer::{
    LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerLink, PeerRejected, PeerReplica,
    RejectReason, ReplicaId,
};
use crate::net::transport::{Channel, Packet, TransportIo};
use crate::net::wire::{self, DecodeError, Hello, Message, PROTOCOL_VERSION};
use crate::registry::SyncRegistry;

/// Whether this peer's synced documents are still empty (nothing written, nothing
/// received), for [`Hello::fresh`], and which one peer that was said to. Only a hint: a peer wrongly taken for fresh is sent a whole state
/// where a diff would do.
///
/// A fresh peer asks one peer for everything: its hello to the first link says
/// fresh, to later ones not, and it holds back y-sync step 1 to the others (whose
/// answer would be the same whole state again) until that state comes, the asked
/// peer goes, or the document engine tires of waiting. The engine keeps `empty` and
/// `answered`; the handshake keeps `asked`.
#[derive(Resource, Debug)]
pub(crate) struct FreshJoin {
    /// Nothing written, nothing received.
    pub(crate) empty: bool,
    /// The peer our hello said fresh to: it sends us its whole state.
    pub(crate) asked: Option<PeerId>,
    /// Its state (some of it) came.
    pub(crate) answered: bool,
}

impl Default for FreshJoin {
    fn default() -> Self {
        Self {
            empty: true,
            asked: None,
            answered: false,
        }
    }
}

impl FreshJoin {
    /// Whether y-sync step 1 to `peer` waits: its answer would be a whole state while
    /// the one asked for is on its way.
    pub(crate) fn holds_step1_to(&self, peer: PeerId) -> bool {
        self.empty && !self.answered && self.asked.is_some_and(|asked| asked != peer)
    }

    /// The asked peer is gone (left, or refused): the next link may be asked.
    pub(crate) fn forget(&mut self, peer: PeerId) {
        if self.asked == Some(peer) {
            self.asked = None;
            self.answered = false;
        }
    }
}

/// The first wait before a hello is repeated; it doubles up to [`HELLO_RETRY_MAX`].
const HELLO_RETRY: Duration = Duration::from_millis(200);
const HELLO_RETRY_MAX: Duration = Duration::from_secs(2);

/// The handshake with one peer: a three-way exchange of hellos.
///
/// A link is [`PeerLink::Connected`] (and [`PeerJoined`] is written) once this side
/// has the peer's hello *and* knows the peer has ours, so neither side sends anything
/// the other would drop as "before the handshake". The first datagrams of a data
/// channel are not guaranteed: webrtc-rs drops data that arrives before its
/// negotiated channels are open (Chromium sends that early), and a backend can hand
/// over a peer's data before it reports the link. So a side that does not know its
/// hello arrived repeats it, with backoff, asking for an answer
/// ([`Hello::waiting`]); the answer says [`Hello::heard`].
#[derive(Debug, Default)]
pub(crate) struct Handshake {
    /// The peer's replica, once its hello was taken.
    pub(super) theirs: Option<ReplicaId>,
    /// The peer has shown it has our hello.
    ours_heard: bool,
    last_sent: Duration,
    retry: Duration,
    /// What our hellos on this link say of [`Hello::fresh`], fixed by the first.
    our_fresh: Option<bool>,
    /// What the peer's hello said of [`Hello::fresh`].
    their_fresh: bool,
    /// When we last answered a hello that asked for an answer.
    last_answer: Option<Duration>,
}

impl Handshake {
    /// Whether the peer sends us its whole state on joining (we said we were fresh),
    /// so we need not ask with y-sync step 1.
    pub(crate) fn we_are_sent_everything(&self) -> bool {
        self.our_fresh == Some(true)
    }

    /// Whether we send the peer our whole state on joining (it said it was fresh and
    /// will not ask).
    pub(crate) fn they_want_everything(&self) -> bool {
        self.their_fresh
    }

    /// [`Hello::fresh`] for our next hello on this link to `peer`: fixed by the first,
    /// and true on one link at a time (see [`FreshJoin`]).
    fn fresh(&mut self, docs: &mut FreshJoin, peer: PeerId) -> bool {
        *self.our_fresh.get_or_insert_with(|| {
            let fresh = docs.empty && docs.asked.is_none();
            if fresh {
                docs.asked = Some(peer);
            }
            fresh
        })
    }

    fn sent(&mut self, now: Duration) {
        self.last_sent = now;
        self.retry = if self.retry.is_zero() {
            HELLO_RETRY
        } else {
            (self.retry * 2).min(HELLO_RETRY_MAX)
        };
    }

    /// Whether a hello asking for an answer gets one now: the first always; then at
    /// most one per half [`HELLO_RETRY`], which an honest peer's repeats never come
    /// faster than, so a flood of hellos is not answered hello for hello.
    fn may_answer(&self, now: Duration) -> bool {
        self.last_answer
            .is_none_or(|at| now.saturating_sub(at) >= HELLO_RETRY / 2)
    }

    fn due(&self, now: Duration) -> bool {
        !self.ours_heard && now >= self.last_sent + self.retry
    }

    /// Whether the peer's hello was taken.
    pub(crate) fn knows_theirs(&self) -> bool {
        self.theirs.is_some()
    }

    /// Something but a hello came from the peer: it has ours.
    pub(crate) fn heard_from_them(&mut self) {
        self.ours_heard = true;
    }
}

/// What one of our hellos says of the handshake: [`Hello::heard`], [`Hello::waiting`],
/// [`Hello::fresh`].
#[derive(Debug, Default, Clone, Copy)]
struct HelloFlags {
    heard: bool,
    waiting: bool,
    fresh: bool,
}

/// Sends our hello to `peer` (see [`Handshake`]).
fn send_hello(
    io: &mut TransportIo,
    registry: &SyncRegistry,
    replica: ReplicaId,
    peer: PeerId,
    flags: HelloFlags,
) {
    let HelloFlags {
        heard,
        waiting,
        fresh,
    } = flags;
    let schema = registry.schema_strings();
    let hello = Message::Hello(Hello {
        crate_version: env!("CARGO_PKG_VERSION").to_owned(),
        replica: replica.0,
        schema_hash: crate::registry::schema_hash(&schema),
        schema,
        heard,
        waiting,
        fresh,
    });
    // A hello is small and fixed; fragment it anyway should a huge schema need it.
    let frame = wire::encode(&hello).expect("a hello always encodes");
    for bytes in wire::fragment(frame, u32::MAX).expect("a hello is far below the fragment limit") {
        io.send(Packet {
            peer,
            channel: Channel::Reliable,
            bytes,
        });
    }
}

/// What hellos are answered and judged with.
#[derive(SystemParam)]
pub(crate) struct Hellos<'w, 's> {
    commands: Commands<'w, 's>,
    local: Res<'w, LocalPeer>,
    registry: Res<'w, SyncRegistry>,
    fresh: ResMut<'w, FreshJoin>,
    joined: MessageWriter<'w, PeerJoined>,
    rejected: MessageWriter<'w, PeerRejected>,
    left: MessageWriter<'w, PeerLeft>,
}

impl Hellos<'_, '_> {
    /// Takes a hello from `from`: checks the first one (refusing the peer if it does
    /// not match), notes what it says, and answers it if it asks. Returns whether the
    /// peer is still in (not refused).
    pub(crate) fn take(
        &mut self,
        from: PeerId,
        hello: &Hello,
        link: &mut PeerLink,
        handshake: &mut Handshake,
        io: &mut TransportIo,
        now: Duration,
    ) -> bool {
        let me = self.local.replica();
        if handshake.theirs.is_none() {
            let same_replica = if !ReplicaId(hello.replica).is_valid() {
                Some(RejectReason::Malformed("replica id past 2^53 - 1".into()))
            } else {
                (hello.replica == me.0).then_some(RejectReason::SameReplica(me))
            };
            if let Err(reason) =
                same_replica.map_or_else(|| check_hello(&self.registry, hello), Err)
            {
                reject(from, link, reason, &mut self.rejected);
                if hello.waiting {
                    // Ours, once, so that they can tell why too.
                    send_hello(io, &self.registry, me, from, HelloFlags::default());
                }
                return false;
            }
            debug!(
                "hello from peer `{from}` (bevy_peer_sync `{}`)",
                hello.crate_version
            );
            handshake.theirs = Some(ReplicaId(hello.replica));
            handshake.their_fresh = hello.fresh;
        }
        handshake.ours_heard |= hello.heard;
        if hello.waiting && handshake.may_answer(now) {
            let flags = HelloFlags {
                heard: true,
                waiting: !handshake.ours_heard,
                fresh: handshake.fresh(&mut self.fresh, from),
            };
            send_hello(io, &self.registry, me, from, flags);
            handshake.sent(now);
            handshake.last_answer = Some(now);
        }
        true
    }

    /// A datagram that did not decode: a first one of another protocol version
    /// refuses the peer, naming both versions.
    pub(crate) fn on_bad_datagram(
        &mut self,
        packet: &Packet,
        error: &DecodeError,
        link: &mut PeerLink,
    ) {
        if *link == PeerLink::Handshaking
            && packet.channel == Channel::Reliable
            && let DecodeError::Version { got } = *error
        {
            let reason = RejectReason::ProtocolVersion {
                ours: PROTOCOL_VERSION,
                theirs: got,
            };
            reject(packet.peer, link, reason, &mut self.rejected);
        }
    }

    /// Ends the link to `from` for `reason`, at any stage: nothing more is taken from
    /// it, and a connected peer also leaves (the routes forget it as if it had gone;
    /// its entity stays, [`PeerLink::Rejected`], until the transport closes the link).
    pub(crate) fn end_link(
        &mut self,
        from: PeerId,
        entity: Entity,
        link: &mut PeerLink,
        replica: Option<ReplicaId>,
        reason: RejectReason,
    ) {
        let was_connected = *link == PeerLink::Connected;
        reject(from, link, reason, &mut self.rejected);
        if was_connected {
            self.commands.entity(entity).remove::<PeerReplica>();
            self.left.write(PeerLeft {
                peer: from,
                replica,
                was_connected,
            });
        }
    }

    /// Makes the link [`PeerLink::Connected`] once both sides have each other's hello.
    pub(crate) fn join_if_ready(
        &mut self,
        from: PeerId,
        entity: Entity,
        link: &mut PeerLink,
        handshake: &Handshake,
    ) {
        if *link == PeerLink::Handshaking
            && handshake.ours_heard
            && let Some(replica) = handshake.theirs
        {
            debug!("peer `{from}` joined");
            *link = PeerLink::Connected;
            self.commands.entity(entity).insert(PeerReplica(replica));
            self.joined.write(PeerJoined {
                peer: from,
                replica,
                entity,
            });
        }
    }
}

fn check_hello(registry: &SyncRegistry, hello: &Hello) -> Result<(), RejectReason> {
    let ours = registry.schema_strings();
    if crate::registry::schema_hash(&hello.schema) != hello.schema_hash {
        return Err(RejectReason::Malformed(
            "schema hash does not match its schema".into(),
        ));
    }
    if hello.schema_hash == crate::registry::schema_hash(&ours) && hello.schema == ours {
        return Ok(());
    }
    let differs = |a: &[String], b: &[String]| -> Vec<String> {
        a.iter()
            .enumerate()
            .filter(|(i, e)| b.get(*i) != Some(*e))
            .map(|(_, e)| e.clone())
            .collect()
    };
    Err(RejectReason::Schema {
        only_ours: differs(&ours, &hello.schema),
        only_theirs: differs(&hello.schema, &ours),
    })
}

fn reject(
    peer: PeerId,
    link: &mut PeerLink,
    reason: RejectReason,
    rejected: &mut MessageWriter<PeerRejected>,
) {
    warn!("refusing peer `{peer}`: {reason}");
    *link = PeerLink::Rejected(reason.clone());
    rejected.write(PeerRejected { peer, reason });
}

/// Sends our hello to new peers, and again to peers not known to have it (see
/// [`Handshake`]).
pub(crate) fn repeat_hellos(
    time: Res<Time<Real>>,
    mut io: ResMut<TransportIo>,
    registry: Res<SyncRegistry>,
    local: Res<LocalPeer>,
    mut fresh_docs: ResMut<FreshJoin>,
    mut peers: Query<(&Peer, &PeerLink, &mut super::Inbound)>,
) {
    let now = time.elapsed();
    for (peer, link, mut inbound) in &mut peers {
        let handshake = &mut inbound.handshake;
        if matches!(link, PeerLink::Rejected(_)) || !handshake.due(now) {
            continue;
        }
        debug!("hello to peer `{}`", peer.id);
        let flags = HelloFlags {
            heard: handshake.theirs.is_some(),
            waiting: true,
            fresh: handshake.fresh(&mut fresh_docs, peer.id),
        };
        send_hello(&mut io, &registry, local.replica(), peer.id, flags);
        handshake.sent(now);
    }
}
