//! The session with each remote peer: the handshake, decoding and routing of what
//! arrives, encoding, fragmenting and fanning out what leaves, pings for round-trip
//! time, and the per-peer counters.
//!
//! Game code talks to this module through two messages: write [`SendPayload`] to send
//! your own bytes to peers on either channel, read [`PayloadReceived`] to get theirs.
//! The crate's own routes (durable, transient, presence) use the same path.

use std::collections::VecDeque;
use std::time::Duration;

use bevy::prelude::*;
use bytes::Bytes;

use crate::error::DecodeError;
use crate::net::peer::{
    LocalPeer, Peer, PeerId, PeerJoined, PeerLeft, PeerLink, PeerRejected, PeerReplica, Peers,
    RejectReason, ReplicaId,
};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::{BackendStatus, Channel, LinkEvent, Packet, TransportIo};
use crate::net::wire::{
    self, Frame, Hello, MAX_DATAGRAM, Message, PROTOCOL_VERSION, Reassembler, WireLimits,
};
use crate::registry::SyncRegistry;

/// Settings of the session layer.
#[derive(Resource, Debug, Clone)]
pub struct SessionConfig {
    /// Limits applied to what peers send.
    pub limits: WireLimits,
    /// How often each connected peer is pinged for its round-trip time.
    pub ping_interval: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            limits: WireLimits::default(),
            ping_interval: Duration::from_millis(500),
        }
    }
}

/// Who a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recipients {
    /// Every connected peer.
    All,
    /// One peer.
    Peer(PeerId),
    /// Every connected peer but one.
    AllExcept(PeerId),
}

impl Recipients {
    fn includes(self, peer: PeerId) -> bool {
        match self {
            Recipients::All => true,
            Recipients::Peer(p) => p == peer,
            Recipients::AllExcept(p) => p != peer,
        }
    }
}

/// Write this to send application bytes to peers.
///
/// Reliable payloads of any size up to [`WireLimits::max_message_size`] are
/// fragmented as needed; an unreliable payload must fit one datagram
/// ([`wire::MAX_DATAGRAM`] minus the 2-byte header) and should stay under
/// [`wire::SAFE_UNRELIABLE_SIZE`].
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct SendPayload {
    /// Who receives it.
    pub to: Recipients,
    /// Which channel it travels on.
    pub channel: Channel,
    /// The bytes.
    pub payload: Bytes,
}

/// Application bytes that arrived from a peer.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct PayloadReceived {
    /// The sender.
    pub from: PeerId,
    /// The channel it came on.
    pub channel: Channel,
    /// The bytes.
    pub payload: Bytes,
}

/// Messages the crate's routes queue for sending this frame.
#[derive(Resource, Debug, Default)]
pub(crate) struct Outbox {
    queue: Vec<(Recipients, Channel, Message)>,
}

impl Outbox {
    pub(crate) fn push(&mut self, to: Recipients, channel: Channel, message: Message) {
        self.queue.push((to, channel, message));
    }
}

/// Decoded messages waiting for the crate's routes, filled in
/// [`crate::PeerSyncSystems::Receive`].
#[derive(Resource, Debug, Default)]
pub(crate) struct Inbox {
    pub(crate) doc: Vec<(PeerId, Bytes)>,
    pub(crate) transient: Vec<(PeerId, Bytes)>,
    pub(crate) presence: Vec<(PeerId, Channel, Bytes)>,
}

/// Session-wide state and counters.
#[derive(Resource, Debug, Default)]
pub struct SessionState {
    next_message_id: u32,
    next_nonce: u32,
    last_ping: Option<Duration>,
    /// Datagrams from peers with no open link (a late packet after a leave, or a
    /// backend that misbehaves).
    pub from_unknown_peers: u64,
}

/// Per-peer receive state that game code has no use for.
#[derive(Component, Debug, Default)]
pub(crate) struct Inbound {
    reassembler: Reassembler,
    pings: VecDeque<(u32, Duration)>,
    /// Whether each of the last pings was answered (true) or timed out.
    ping_outcomes: VecDeque<bool>,
    pub(crate) handshake: Handshake,
}

/// Whether this peer's synced documents are still empty (nothing written, nothing
/// received), for [`Hello::fresh`], and which one peer that was said to. Kept by the
/// shared document; only a hint: a peer wrongly taken for fresh is sent a whole state
/// where a diff would do.
///
/// A fresh peer asks one peer for everything: its hello to the first link says
/// fresh, to later ones not, and it holds back y-sync step 1 to the others (whose
/// answer would be the same whole state again) until that state comes, the asked
/// peer goes, or [`crate::doc`] tires of waiting.
#[derive(Resource, Debug)]
pub(crate) struct FreshDocs {
    /// Nothing written, nothing received.
    pub(crate) empty: bool,
    /// The peer our hello said fresh to: it sends us its whole state.
    pub(crate) asked: Option<PeerId>,
    /// Its state (some of it) came.
    pub(crate) answered: bool,
}

impl Default for FreshDocs {
    fn default() -> Self {
        Self {
            empty: true,
            asked: None,
            answered: false,
        }
    }
}

impl FreshDocs {
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

impl Inbound {
    fn settle_ping(&mut self, answered: bool, stats: &mut PeerStats) {
        if self.ping_outcomes.len() >= 20 {
            self.ping_outcomes.pop_front();
        }
        self.ping_outcomes.push_back(answered);
        let lost = self.ping_outcomes.iter().filter(|a| !**a).count();
        stats.loss = Some(lost as f32 / self.ping_outcomes.len() as f32);
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
    theirs: Option<ReplicaId>,
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
    /// and true on one link at a time (see [`FreshDocs`]).
    fn fresh(&mut self, docs: &mut FreshDocs, peer: PeerId) -> bool {
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
}

/// Opens and closes peer entities as the backend reports links.
pub(crate) fn handle_link_events(
    mut commands: Commands,
    mut io: ResMut<TransportIo>,
    mut local: ResMut<LocalPeer>,
    mut peers: ResMut<Peers>,
    links: Query<(&PeerLink, Option<&PeerReplica>)>,
    mut left: MessageWriter<PeerLeft>,
) {
    if let Some(id) = io.local_id()
        && local.id() != Some(id)
    {
        local.set(id);
    }
    let mut events: Vec<LinkEvent> = io.drain_link_events().collect();
    if matches!(
        io.status(),
        BackendStatus::Closed(_) | BackendStatus::Reconnecting { .. }
    ) {
        // The backend is gone: so is every link it carried.
        events.extend(peers.ids().map(LinkEvent::Disconnected));
    }
    for event in events {
        match event {
            LinkEvent::Connected(peer) => {
                if peers.entity(peer).is_some() {
                    continue;
                }
                // Our hello leaves this frame, from `repeat_hellos` (or as the answer
                // to theirs, should it be here already).
                let entity = commands.spawn((Peer { id: peer }, Inbound::default())).id();
                peers.insert(peer, entity);
                debug!("link to peer `{peer}` open");
            }
            LinkEvent::Disconnected(peer) => {
                let Some(entity) = peers.remove(peer) else {
                    continue;
                };
                let (was_connected, replica) = match links.get(entity) {
                    Ok((link, replica)) => (*link == PeerLink::Connected, replica.map(|r| r.0)),
                    Err(_) => (false, None),
                };
                commands.entity(entity).despawn();
                debug!("link to peer `{peer}` closed");
                left.write(PeerLeft {
                    peer,
                    replica: replica.filter(|_| was_connected),
                    was_connected,
                });
            }
        }
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

/// Decodes every received datagram and routes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn receive_packets(
    mut commands: Commands,
    mut io: ResMut<TransportIo>,
    peers: Res<Peers>,
    local: Res<LocalPeer>,
    registry: Res<SyncRegistry>,
    config: Res<SessionConfig>,
    mut fresh_docs: ResMut<FreshDocs>,
    time: Res<Time<Real>>,
    mut state: ResMut<SessionState>,
    mut outbox: ResMut<Outbox>,
    mut inbox: ResMut<Inbox>,
    mut peer_query: Query<(&mut PeerLink, &mut PeerStats, &mut Inbound)>,
    mut joined: MessageWriter<PeerJoined>,
    mut rejected: MessageWriter<PeerRejected>,
    mut payloads: MessageWriter<PayloadReceived>,
) {
    let packets: Vec<Packet> = io.drain_received().collect();
    for packet in packets {
        let Some(entity) = peers.entity(packet.peer) else {
            state.from_unknown_peers += 1;
            continue;
        };
        let Ok((mut link, mut stats, mut inbound)) = peer_query.get_mut(entity) else {
            state.from_unknown_peers += 1;
            continue;
        };
        stats.count_in(packet.channel, packet.bytes.len());
        if matches!(*link, PeerLink::Rejected(_)) {
            stats.count_drop(DropReason::Rejected);
            continue;
        }
        let message = match decode_packet(&packet, &mut inbound.reassembler, &config.limits) {
            Ok(Some(message)) => message,
            Ok(None) => continue,
            Err(error) => {
                if *link == PeerLink::Handshaking
                    && packet.channel == Channel::Reliable
                    && let DecodeError::Version { got } = error
                {
                    reject(
                        packet.peer,
                        &mut link,
                        RejectReason::ProtocolVersion {
                            ours: PROTOCOL_VERSION,
                            theirs: got,
                        },
                        &mut rejected,
                    );
                }
                debug!("dropped datagram from peer `{}`: {error}", packet.peer);
                stats.count_drop(DropReason::from(&error));
                continue;
            }
        };
        let from = packet.peer;
        let now = time.elapsed();
        if let Message::Hello(hello) = &message {
            let handshake = &mut inbound.handshake;
            if handshake.theirs.is_none() {
                let same_replica = (hello.replica == local.replica().0)
                    .then_some(RejectReason::SameReplica(local.replica()));
                if let Err(reason) = same_replica.map_or_else(|| check_hello(&registry, hello), Err)
                {
                    reject(from, &mut link, reason, &mut rejected);
                    if hello.waiting {
                        // Ours, once, so that they can tell why too.
                        let flags = HelloFlags::default();
                        send_hello(&mut io, &registry, local.replica(), from, flags);
                    }
                    continue;
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
                    fresh: handshake.fresh(&mut fresh_docs, from),
                };
                send_hello(&mut io, &registry, local.replica(), from, flags);
                handshake.sent(now);
                handshake.last_answer = Some(now);
            }
        } else if *link == PeerLink::Handshaking && inbound.handshake.theirs.is_some() {
            // Peers send anything but hellos only once connected, which they are only
            // once they know we have theirs and they have ours: our answer to their
            // hello was lost or is still on its way.
            inbound.handshake.ours_heard = true;
        }
        if *link == PeerLink::Handshaking
            && inbound.handshake.ours_heard
            && let Some(replica) = inbound.handshake.theirs
        {
            debug!("peer `{from}` joined");
            *link = PeerLink::Connected;
            commands.entity(entity).insert(PeerReplica(replica));
            joined.write(PeerJoined {
                peer: from,
                replica,
                entity,
            });
        }
        match message {
            // Taken above.
            Message::Hello(_) => {}
            other if *link != PeerLink::Connected => {
                debug!(
                    "dropped `{:?}` from peer `{from}`: handshake not finished",
                    other.kind()
                );
                stats.count_drop(DropReason::BeforeHandshake);
            }
            Message::Payload(payload) => {
                payloads.write(PayloadReceived {
                    from,
                    channel: packet.channel,
                    payload,
                });
            }
            Message::Ping(nonce) => outbox.push(
                Recipients::Peer(from),
                Channel::Unreliable,
                Message::Pong(nonce),
            ),
            Message::Pong(nonce) => {
                let Some(position) = inbound.pings.iter().position(|(n, _)| *n == nonce) else {
                    stats.count_drop(DropReason::Stale);
                    continue;
                };
                let (_, sent) = inbound
                    .pings
                    .remove(position)
                    .expect("position was just found");
                let sample = time.elapsed().saturating_sub(sent);
                inbound.settle_ping(true, &mut stats);
                stats.rtt = Some(match stats.rtt {
                    Some(rtt) => (rtt * 7 + sample) / 8,
                    None => sample,
                });
            }
            Message::Doc(bytes) => inbox.doc.push((from, bytes)),
            Message::Transient(bytes) => inbox.transient.push((from, bytes)),
            Message::Presence(bytes) => inbox.presence.push((from, packet.channel, bytes)),
        }
    }
}

fn decode_packet(
    packet: &Packet,
    reassembler: &mut Reassembler,
    limits: &WireLimits,
) -> Result<Option<Message>, DecodeError> {
    match wire::decode(&packet.bytes, packet.channel)? {
        Frame::Message(message) => Ok(Some(message)),
        Frame::Fragment(fragment) => match reassembler.push(fragment, limits)? {
            Some(whole) => wire::decode_reassembled(&whole).map(Some),
            None => Ok(None),
        },
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
    mut fresh_docs: ResMut<FreshDocs>,
    mut peers: Query<(&Peer, &PeerLink, &mut Inbound)>,
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

/// Sends pings to connected peers when they are due.
pub(crate) fn queue_pings(
    time: Res<Time<Real>>,
    config: Res<SessionConfig>,
    mut state: ResMut<SessionState>,
    mut outbox: ResMut<Outbox>,
    mut peers: Query<(&Peer, &PeerLink, &mut Inbound, &mut PeerStats)>,
) {
    let now = time.elapsed();
    // A ping unanswered for 2 s (or four round trips, if longer) is lost.
    for (_, _, mut inbound, mut stats) in &mut peers {
        let timeout = stats.rtt.map_or(Duration::from_secs(2), |rtt| {
            (rtt * 4).max(Duration::from_secs(2))
        });
        while inbound
            .pings
            .front()
            .is_some_and(|(_, sent)| now.saturating_sub(*sent) > timeout)
        {
            inbound.pings.pop_front();
            inbound.settle_ping(false, &mut stats);
        }
    }
    if state
        .last_ping
        .is_some_and(|last| now < last + config.ping_interval)
    {
        return;
    }
    state.last_ping = Some(now);
    for (peer, link, mut inbound, _) in &mut peers {
        if *link != PeerLink::Connected {
            continue;
        }
        let nonce = state.next_nonce;
        state.next_nonce = state.next_nonce.wrapping_add(1);
        if inbound.pings.len() >= 16 {
            inbound.pings.pop_front();
        }
        inbound.pings.push_back((nonce, now));
        outbox.push(
            Recipients::Peer(peer.id),
            Channel::Unreliable,
            Message::Ping(nonce),
        );
    }
}

/// Encodes everything queued this frame and hands it to the backend.
pub(crate) fn send_packets(
    mut io: ResMut<TransportIo>,
    mut outbox: ResMut<Outbox>,
    mut state: ResMut<SessionState>,
    mut requests: MessageReader<SendPayload>,
    mut peers: Query<(&Peer, &PeerLink, &mut PeerStats)>,
) {
    let payloads = requests
        .read()
        .map(|r| (r.to, r.channel, Message::Payload(r.payload.clone())));
    let queued: Vec<_> = outbox.queue.drain(..).chain(payloads).collect();
    for (to, channel, message) in queued {
        let frame = match wire::encode(&message) {
            Ok(frame) => frame,
            Err(error) => {
                warn!("could not send `{:?}`: {error}", message.kind());
                continue;
            }
        };
        let datagrams = match channel {
            Channel::Reliable => {
                state.next_message_id = state.next_message_id.wrapping_add(1) % (u32::MAX - 1);
                match wire::fragment(frame, state.next_message_id) {
                    Ok(pieces) => pieces,
                    Err(error) => {
                        warn!("could not send `{:?}`: {error}", message.kind());
                        continue;
                    }
                }
            }
            Channel::Unreliable if frame.len() > MAX_DATAGRAM => {
                warn!(
                    "could not send `{:?}` unreliably: `{}` bytes is over the `{MAX_DATAGRAM}`-byte datagram limit; send it on the reliable channel",
                    message.kind(),
                    frame.len()
                );
                continue;
            }
            Channel::Unreliable => vec![frame],
        };
        for (peer, link, mut stats) in &mut peers {
            if *link != PeerLink::Connected || !to.includes(peer.id) {
                continue;
            }
            for bytes in &datagrams {
                stats.count_out(channel, bytes.len());
                io.send(Packet {
                    peer: peer.id,
                    channel,
                    bytes: bytes.clone(),
                });
            }
        }
    }
}
