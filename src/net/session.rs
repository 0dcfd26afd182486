//! The session with each remote peer: the handshake, decoding and routing of what
//! arrives, encoding, fragmenting and fanning out what leaves, pings for round-trip
//! time, and the per-peer counters.
//!
//! Game code talks to this module through two messages: write [`SendPayload`] to send
//! your own bytes to peers on either channel, read [`PayloadReceived`] to get theirs.
//! The crate's own routes (durable, transient, presence) use the same path.

mod budget;
mod handshake;
mod ping;

use std::collections::VecDeque;
use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::prelude::*;
use bytes::Bytes;

pub use budget::PeerBudget;
pub use handshake::HANDSHAKE_TIMEOUT;
pub(crate) use handshake::{
    ConnectedReplicas, FreshJoin, Handshake, HelloOutcome, hello_to, repeat_hellos,
};
pub(crate) use ping::queue_pings;

use crate::net::peer::{
    LocalPeer, Peer, PeerId, PeerLeft, PeerLink, PeerReplica, Peers, RejectReason,
};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::{BackendStatus, Channel, LinkEvent, Packet, TransportIo};
use crate::net::wire::{self, DecodeError, Frame, MAX_DATAGRAM, Message, Reassembler, WireLimits};

/// Settings of the session layer.
#[derive(Resource, Debug, Clone)]
pub struct SessionConfig {
    /// Limits applied to what peers send.
    pub limits: WireLimits,
    /// What each peer may send per second and per frame, and when it is refused.
    pub budget: PeerBudget,
    /// How often each connected peer is pinged for its round-trip time.
    pub ping_interval: Duration,
    /// The room's secret: only peers that know it get past the handshake (see
    /// [`identity`](crate::net::identity)). `None`: anyone who knows the room's URL may
    /// join (identities are proved all the same).
    pub room_secret: Option<crate::net::identity::RoomSecret>,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            limits: WireLimits::default(),
            budget: PeerBudget::default(),
            ping_interval: Duration::from_millis(500),
            room_secret: None,
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
    /// Pings in flight: nonce and when it left.
    pings: VecDeque<(u32, Duration)>,
    /// Whether each of the last pings was answered (true) or timed out.
    ping_outcomes: VecDeque<bool>,
    pub(crate) handshake: Handshake,
    /// What this peer may still send (see [`budget`]).
    meter: budget::Meter,
}

impl Inbound {
    /// Drops what is held of a refused peer's input.
    fn forget_input(&mut self) {
        self.reassembler = Reassembler::default();
        self.meter.clear();
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
                let entity = commands
                    .spawn((Peer { id: peer }, PeerStats::default(), Inbound::default()))
                    .id();
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

/// What [`receive_packets`] reads datagrams with.
#[derive(SystemParam)]
pub(crate) struct Receiving<'w, 's> {
    io: ResMut<'w, TransportIo>,
    peers: Res<'w, Peers>,
    config: Res<'w, SessionConfig>,
    time: Res<'w, Time<Real>>,
    state: ResMut<'w, SessionState>,
    links: Query<
        'w,
        's,
        (
            Entity,
            &'static Peer,
            &'static mut PeerLink,
            &'static mut PeerStats,
            &'static mut Inbound,
        ),
    >,
}

/// Where [`receive_packets`] hands what arrived: the routes' inbox, the game's
/// payloads, and answers that go straight back.
#[derive(SystemParam)]
pub(crate) struct Delivery<'w> {
    outbox: ResMut<'w, Outbox>,
    inbox: ResMut<'w, Inbox>,
    payloads: MessageWriter<'w, PayloadReceived>,
}

/// Decodes every received datagram and routes it, within each peer's budget: reliable
/// datagrams that waited for budget go first, in order; then what arrived this frame;
/// then a peer over its budget for too long is refused (see [`budget`]).
pub(crate) fn receive_packets(
    mut rx: Receiving,
    mut hellos: handshake::Hellos,
    mut delivery: Delivery,
) {
    let now = rx.time.elapsed();
    let budget = rx.config.budget;
    let limits = rx.config.limits;
    let mut ctx = Handling {
        hellos: &mut hellos,
        delivery: &mut delivery,
        io: &mut rx.io,
        limits: &limits,
        now,
    };
    for (entity, _, mut link, mut stats, mut inbound) in &mut rx.links {
        inbound.meter.start_frame(now, &budget);
        while !matches!(*link, PeerLink::Rejected(_))
            && let Some(packet) = inbound.meter.next_waiting(&budget)
        {
            ctx.handle(packet, entity, &mut link, &mut stats, &mut inbound);
        }
    }
    let packets: Vec<Packet> = ctx.io.drain_received().collect();
    for packet in packets {
        let Some(entity) = rx.peers.entity(packet.peer) else {
            rx.state.from_unknown_peers += 1;
            continue;
        };
        let Ok((_, _, mut link, mut stats, mut inbound)) = rx.links.get_mut(entity) else {
            rx.state.from_unknown_peers += 1;
            continue;
        };
        stats.count_in(packet.channel, packet.bytes.len());
        if matches!(*link, PeerLink::Rejected(_)) {
            stats.count_drop(DropReason::Rejected);
            continue;
        }
        let meter = &mut inbound.meter;
        meter.start_frame(now, &budget);
        let packet = match packet.channel {
            Channel::Unreliable => {
                if !meter.admit_unreliable(packet.bytes.len(), now, &budget) {
                    stats.count_drop(DropReason::OverBudget);
                    continue;
                }
                packet
            }
            Channel::Reliable => match meter.admit_reliable(packet, &budget) {
                Some(packet) => packet,
                None => {
                    stats.reliable_waited += 1;
                    continue;
                }
            },
        };
        ctx.handle(packet, entity, &mut link, &mut stats, &mut inbound);
    }
    for (entity, peer, mut link, mut stats, mut inbound) in &mut rx.links {
        if matches!(*link, PeerLink::Rejected(_)) {
            continue;
        }
        stats.reliable_waiting_bytes = inbound.meter.waiting_bytes();
        let Some(overrun) = inbound.meter.end_frame(now, &budget) else {
            continue;
        };
        let peer = peer.id;
        let reason = RejectReason::OverBudget(overrun.describe(&budget));
        // Told why, on the reliable channel (the link is not `Connected` any more, so
        // not through the outbox).
        if let Ok(frame) = wire::encode(&Message::Bye(reason.to_string())) {
            ctx.io.send(Packet {
                peer,
                channel: Channel::Reliable,
                bytes: frame,
            });
        }
        let replica = inbound.handshake.theirs;
        ctx.hellos
            .end_link(peer, entity, &mut link, replica, reason);
        inbound.forget_input();
        stats.reliable_waiting_bytes = 0;
    }
}

/// What one datagram is handled with.
struct Handling<'a, 'w, 's, 'd> {
    hellos: &'a mut handshake::Hellos<'w, 's>,
    delivery: &'a mut Delivery<'d>,
    io: &'a mut TransportIo,
    limits: &'a WireLimits,
    now: Duration,
}

impl Handling<'_, '_, '_, '_> {
    /// Decodes one datagram within budget and routes it: the handshake takes hellos,
    /// a connected peer's messages go to the routes.
    fn handle(
        &mut self,
        packet: Packet,
        entity: Entity,
        link: &mut PeerLink,
        stats: &mut PeerStats,
        inbound: &mut Inbound,
    ) {
        let now = self.now;
        let message = match decode_packet(&packet, &mut inbound.reassembler, self.limits) {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(error) => {
                self.hellos.on_bad_datagram(&packet, &error, link);
                debug!("dropped datagram from peer `{}`: {error}", packet.peer);
                stats.count_drop(DropReason::from(&error));
                return;
            }
        };
        let from = packet.peer;
        match &message {
            Message::Hello(hello) => {
                let taken = self.hellos.take(
                    (from, entity),
                    hello,
                    link,
                    &mut inbound.handshake,
                    self.io,
                    now,
                );
                match taken {
                    HelloOutcome::Taken => {}
                    HelloOutcome::Dropped => {
                        stats.count_drop(DropReason::Malformed);
                        return;
                    }
                    HelloOutcome::Refused => return,
                }
            }
            Message::Bye(reason) => {
                debug!("peer `{from}` refused this one: {reason}");
                let replica = inbound.handshake.theirs;
                let reason = RejectReason::RefusedByPeer(reason.clone());
                self.hellos.end_link(from, entity, link, replica, reason);
                inbound.forget_input();
                return;
            }
            _ if *link == PeerLink::Handshaking && inbound.handshake.knows_theirs() => {
                // Peers send anything but hellos only once connected, which they are
                // only once they know we have theirs and they have ours: our answer to
                // their hello was lost or is still on its way.
                inbound.handshake.heard_from_them();
            }
            _ => {}
        }
        self.hellos
            .join_if_ready(from, entity, link, &inbound.handshake);
        if *link != PeerLink::Connected {
            if !matches!(message, Message::Hello(_)) {
                debug!(
                    "dropped `{:?}` from peer `{from}`: handshake not finished",
                    message.kind()
                );
                stats.count_drop(DropReason::BeforeHandshake);
            }
            return;
        }
        self.delivery
            .deliver(message, (from, packet.channel), stats, inbound, now);
    }
}

impl Delivery<'_> {
    /// Routes a message from a connected peer.
    fn deliver(
        &mut self,
        message: Message,
        (from, channel): (PeerId, Channel),
        stats: &mut PeerStats,
        inbound: &mut Inbound,
        now: Duration,
    ) {
        match message {
            // Taken by the handshake.
            Message::Hello(_) | Message::Bye(_) => {}
            Message::Payload(payload) => {
                self.payloads.write(PayloadReceived {
                    from,
                    channel,
                    payload,
                });
            }
            Message::Ping(nonce) => self.outbox.push(
                Recipients::Peer(from),
                Channel::Unreliable,
                Message::Pong(nonce),
            ),
            Message::Pong(nonce) => inbound.settle_pong(nonce, now, stats),
            Message::Doc(bytes) => self.inbox.doc.push((from, bytes)),
            Message::Transient(bytes) => self.inbox.transient.push((from, bytes)),
            Message::Presence(bytes) => self.inbox.presence.push((from, channel, bytes)),
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
