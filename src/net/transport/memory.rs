//! An in-process network for tests and simulations.
//!
//! A [`MemoryNetwork`] connects any number of `App`s in one process in a full mesh,
//! with no sockets, threads or sleeps. Each direction of each link has a
//! [`LinkConditioner`] (loss, latency, jitter, reordering, duplication) driven by one
//! seeded random generator, so a run with the same seed and the same steps is the same
//! run. The network keeps its own clock, advanced with [`MemoryNetwork::advance`]
//! (the [`crate::testing::TestRoom`] helper does this once per frame).
//!
//! The two channels behave like WebRTC data channels: the unreliable one loses,
//! reorders and duplicates; the reliable one never loses or reorders, so loss on it
//! shows up as retransmission delay and head-of-line blocking, as SCTP does. Datagrams
//! over [`crate::net::wire::MAX_DATAGRAM`] bytes are refused, as webrtc-rs refuses them.
//!
//! ```
//! use bevy_peer_sync::net::transport::memory::{LinkConditioner, MemoryNetwork};
//! use std::time::Duration;
//!
//! let network = MemoryNetwork::new(7);
//! network.set_default_conditioner(LinkConditioner {
//!     loss: 0.2,
//!     latency: Duration::from_millis(30),
//!     jitter: Duration::from_millis(10),
//!     ..Default::default()
//! });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bevy::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::peer::PeerId;
use crate::net::transport::{
    BackendStatus, Channel, LinkEvent, Packet, TransportIo, TransportSystems,
};
use crate::net::wire::MAX_DATAGRAM;
use crate::schedule::{PeerSyncSystems, StageAppExt};

/// How one direction of a link mistreats datagrams.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkConditioner {
    /// Probability (0..=1) that a datagram is lost. On the reliable channel each loss
    /// costs one retransmission timeout instead.
    pub loss: f32,
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in `0..=jitter`, per datagram.
    pub jitter: Duration,
    /// Probability (0..=1) that an unreliable datagram is held back by an extra
    /// random delay of up to two frames plus twice the latency, so later ones overtake it.
    pub reorder: f32,
    /// Probability (0..=1) that an unreliable datagram arrives twice.
    pub duplicate: f32,
}

impl LinkConditioner {
    /// A perfect link: no loss, no delay.
    pub const PERFECT: Self = Self {
        loss: 0.0,
        latency: Duration::ZERO,
        jitter: Duration::ZERO,
        reorder: 0.0,
        duplicate: 0.0,
    };
}

/// What the network did with the datagrams it was given.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Datagrams handed to the network.
    pub sent: u64,
    /// Delivered to a peer.
    pub delivered: u64,
    /// Lost on an unreliable channel.
    pub lost: u64,
    /// Retransmissions simulated on a reliable channel.
    pub retransmitted: u64,
    /// Extra copies delivered.
    pub duplicated: u64,
    /// Refused for being over [`MAX_DATAGRAM`].
    pub oversized: u64,
    /// Dropped because the link was down or the peer gone.
    pub unroutable: u64,
}

#[derive(Debug)]
struct InFlight {
    deliver_at: Duration,
    seq: u64,
    from: PeerId,
    packet: Packet,
}

#[derive(Debug, Default)]
struct Member {
    events: Vec<LinkEvent>,
    in_flight: Vec<InFlight>,
    /// Per sender: when the last reliable datagram is delivered (ordering).
    reliable_tail: BTreeMap<PeerId, Duration>,
}

#[derive(Debug)]
struct Net {
    rng: ChaCha8Rng,
    clock: Duration,
    next_id: u128,
    seq: u64,
    members: BTreeMap<PeerId, Member>,
    default_conditioner: LinkConditioner,
    conditioners: BTreeMap<(PeerId, PeerId), LinkConditioner>,
    /// Datagrams still to lose at the start of a direction, whatever their channel.
    lose_next: BTreeMap<(PeerId, PeerId), u32>,
    cut: BTreeSet<(PeerId, PeerId)>,
    stats: NetworkStats,
}

fn pair(a: PeerId, b: PeerId) -> (PeerId, PeerId) {
    if a <= b { (a, b) } else { (b, a) }
}

impl Net {
    fn linked(&self, a: PeerId, b: PeerId) -> bool {
        a != b
            && self.members.contains_key(&a)
            && self.members.contains_key(&b)
            && !self.cut.contains(&pair(a, b))
    }

    fn announce(&mut self, a: PeerId, b: PeerId, up: bool) {
        let (for_a, for_b) = if up {
            (LinkEvent::Connected(b), LinkEvent::Connected(a))
        } else {
            (LinkEvent::Disconnected(b), LinkEvent::Disconnected(a))
        };
        if let Some(member) = self.members.get_mut(&a) {
            member.events.push(for_a);
            member.in_flight.retain(|f| f.from != b);
            member.reliable_tail.remove(&b);
        }
        if let Some(member) = self.members.get_mut(&b) {
            member.events.push(for_b);
            member.in_flight.retain(|f| f.from != a);
            member.reliable_tail.remove(&a);
        }
    }

    fn send(&mut self, from: PeerId, packet: Packet) {
        self.stats.sent += 1;
        if packet.bytes.len() > MAX_DATAGRAM {
            self.stats.oversized += 1;
            warn!(
                "memory network refused a `{}`-byte datagram from `{from}` (limit `{MAX_DATAGRAM}`)",
                packet.bytes.len()
            );
            return;
        }
        let to = packet.peer;
        if !self.linked(from, to) {
            self.stats.unroutable += 1;
            return;
        }
        if let Some(count) = self.lose_next.get_mut(&(from, to))
            && *count > 0
        {
            *count -= 1;
            self.stats.lost += 1;
            return;
        }
        let conditioner = self
            .conditioners
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_conditioner);
        let jitter = |rng: &mut ChaCha8Rng| {
            if conditioner.jitter.is_zero() {
                Duration::ZERO
            } else {
                conditioner.jitter.mul_f64(rng.random::<f64>())
            }
        };
        let now = self.clock;
        let mut deliveries = Vec::with_capacity(2);
        match packet.channel {
            Channel::Unreliable => {
                if self.rng.random::<f32>() < conditioner.loss {
                    self.stats.lost += 1;
                    return;
                }
                let copies = if self.rng.random::<f32>() < conditioner.duplicate {
                    2
                } else {
                    1
                };
                self.stats.duplicated += copies - 1;
                for _ in 0..copies {
                    let mut at = now + conditioner.latency + jitter(&mut self.rng);
                    if self.rng.random::<f32>() < conditioner.reorder {
                        let hold = Duration::from_millis(33) + conditioner.latency * 2;
                        at += hold.mul_f64(self.rng.random::<f64>());
                    }
                    deliveries.push(at);
                }
            }
            Channel::Reliable => {
                let mut at = now + conditioner.latency + jitter(&mut self.rng);
                let timeout =
                    conditioner.latency * 2 + conditioner.jitter + Duration::from_millis(20);
                let mut tries = 0;
                while tries < 16 && self.rng.random::<f32>() < conditioner.loss {
                    at += timeout;
                    tries += 1;
                }
                self.stats.retransmitted += tries;
                let member = self.members.get_mut(&to).expect("linked peers are members");
                let tail = member.reliable_tail.entry(from).or_default();
                at = at.max(*tail);
                *tail = at;
                deliveries.push(at);
            }
        }
        for deliver_at in deliveries {
            self.seq += 1;
            let seq = self.seq;
            let member = self.members.get_mut(&to).expect("linked peers are members");
            member.in_flight.push(InFlight {
                deliver_at,
                seq,
                from,
                packet: Packet {
                    peer: from,
                    channel: packet.channel,
                    bytes: packet.bytes.clone(),
                },
            });
        }
    }
}

/// An in-process network. Cheap to clone: clones share the network.
#[derive(Clone, Debug)]
pub struct MemoryNetwork {
    net: Arc<Mutex<Net>>,
}

impl MemoryNetwork {
    /// An empty network whose random choices follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            net: Arc::new(Mutex::new(Net {
                rng: ChaCha8Rng::seed_from_u64(seed),
                clock: Duration::ZERO,
                next_id: 1,
                seq: 0,
                members: BTreeMap::new(),
                default_conditioner: LinkConditioner::PERFECT,
                conditioners: BTreeMap::new(),
                lose_next: BTreeMap::new(),
                cut: BTreeSet::new(),
                stats: NetworkStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the network's clock on; datagrams due by then become deliverable.
    pub fn advance(&self, by: Duration) {
        self.lock().clock += by;
    }

    /// The network's clock.
    pub fn now(&self) -> Duration {
        self.lock().clock
    }

    /// The conditioner of every direction without one of its own.
    pub fn set_default_conditioner(&self, conditioner: LinkConditioner) {
        self.lock().default_conditioner = conditioner;
    }

    /// The conditioner of the direction `from` → `to`.
    pub fn set_conditioner(&self, from: PeerId, to: PeerId, conditioner: LinkConditioner) {
        self.lock().conditioners.insert((from, to), conditioner);
    }

    /// Loses the next `count` datagrams from `from` to `to`, on either channel.
    ///
    /// The reliable channel is otherwise lossless here. Real data channels are not,
    /// at their very start: webrtc-rs drops data that arrives before its negotiated
    /// channels are open. This reproduces that.
    pub fn lose_next(&self, from: PeerId, to: PeerId, count: u32) {
        self.lock().lose_next.insert((from, to), count);
    }

    /// Adds a peer; it links to every present peer. Returns its id.
    pub fn join(&self) -> PeerId {
        let mut net = self.lock();
        let id = PeerId(net.next_id);
        net.next_id += 1;
        let others: Vec<PeerId> = net.members.keys().copied().collect();
        net.members.insert(id, Member::default());
        for other in others {
            if !net.cut.contains(&pair(id, other)) {
                net.announce(id, other, true);
            }
        }
        id
    }

    /// Removes a peer; its links close and what was in flight to it is gone.
    pub fn leave(&self, id: PeerId) {
        let mut net = self.lock();
        let others: Vec<PeerId> = net.members.keys().copied().filter(|p| *p != id).collect();
        for other in others {
            if net.linked(id, other) {
                net.announce(id, other, false);
            }
        }
        net.members.remove(&id);
    }

    /// Cuts the link between `a` and `b` (both see it close) or restores it.
    pub fn set_link_up(&self, a: PeerId, b: PeerId, up: bool) {
        let mut net = self.lock();
        let was_up = net.linked(a, b);
        if up {
            net.cut.remove(&pair(a, b));
        } else {
            net.cut.insert(pair(a, b));
        }
        let is_up = net.linked(a, b);
        if was_up != is_up {
            net.announce(a, b, is_up);
        }
    }

    /// Cuts (or restores) every link of `peer`: a partition of one.
    pub fn set_isolated(&self, peer: PeerId, isolated: bool) {
        let others: Vec<PeerId> = self
            .lock()
            .members
            .keys()
            .copied()
            .filter(|p| *p != peer)
            .collect();
        for other in others {
            self.set_link_up(peer, other, !isolated);
        }
    }

    /// What the network did so far.
    pub fn stats(&self) -> NetworkStats {
        self.lock().stats
    }

    fn send(&self, from: PeerId, packets: impl Iterator<Item = Packet>) {
        let mut net = self.lock();
        for packet in packets {
            net.send(from, packet);
        }
    }

    fn deliver(&self, to: PeerId, io: &mut TransportIo) {
        let mut net = self.lock();
        let clock = net.clock;
        let Some(member) = net.members.get_mut(&to) else {
            return;
        };
        for event in member.events.drain(..) {
            io.push_link_event(event);
        }
        let (mut due, waiting): (Vec<_>, Vec<_>) = member
            .in_flight
            .drain(..)
            .partition(|f| f.deliver_at <= clock);
        member.in_flight = waiting;
        due.sort_by_key(|f| (f.deliver_at, f.seq));
        net.stats.delivered += due.len() as u64;
        for flight in due {
            io.insert_received(flight.packet);
        }
    }
}

/// The backend resource of a peer on a [`MemoryNetwork`]. Dropping it (or the `App`)
/// makes the peer leave.
#[derive(Resource, Debug)]
pub(crate) struct MemoryEndpoint {
    network: MemoryNetwork,
    id: PeerId,
}

impl MemoryEndpoint {
    /// Joins `network`.
    pub fn join(network: &MemoryNetwork) -> Self {
        Self {
            network: network.clone(),
            id: network.join(),
        }
    }

    /// This peer's id on the network.
    pub fn id(&self) -> PeerId {
        self.id
    }
}

impl Drop for MemoryEndpoint {
    fn drop(&mut self) {
        self.network.leave(self.id);
    }
}

/// Adds the memory backend to an app. [`crate::PeerSyncPlugin::in_memory`] does this
/// for you.
pub(crate) struct MemoryTransportPlugin {
    /// The network to join.
    pub network: MemoryNetwork,
}

impl Plugin for MemoryTransportPlugin {
    fn build(&self, app: &mut App) {
        app.init_resource::<TransportIo>()
            .insert_resource(MemoryEndpoint::join(&self.network))
            .add_stage_systems(
                PeerSyncSystems::Receive,
                (go_online_or_offline, memory_receive)
                    .chain()
                    .in_set(TransportSystems::Receive),
            )
            .add_stage_systems(
                PeerSyncSystems::Send,
                memory_send.in_set(TransportSystems::Send),
            );
    }
}

/// The network the app last joined, kept to come back to after going offline.
#[derive(Resource)]
struct HomeNetwork(MemoryNetwork);

fn go_online_or_offline(
    mut commands: Commands,
    mut requests: MessageReader<crate::net::connection::SetOnline>,
    endpoint: Option<Res<MemoryEndpoint>>,
    home: Option<Res<HomeNetwork>>,
) {
    use crate::net::connection::SetOnline;
    let Some(request) = requests.read().last() else {
        return;
    };
    match (request, endpoint, home) {
        (SetOnline::Offline, Some(endpoint), _) => {
            commands.insert_resource(HomeNetwork(endpoint.network.clone()));
            commands.remove_resource::<MemoryEndpoint>();
        }
        (SetOnline::Online, None, Some(home)) => {
            commands.insert_resource(MemoryEndpoint::join(&home.0));
        }
        _ => {}
    }
}

fn memory_receive(endpoint: Option<Res<MemoryEndpoint>>, mut io: ResMut<TransportIo>) {
    let Some(endpoint) = endpoint else {
        if *io.status() == BackendStatus::Open {
            io.set_status(BackendStatus::Closed("left the memory network".into()));
        }
        return;
    };
    io.set_local_id(endpoint.id);
    io.set_status(BackendStatus::Open);
    endpoint.network.deliver(endpoint.id, &mut io);
}

fn memory_send(endpoint: Option<Res<MemoryEndpoint>>, mut io: ResMut<TransportIo>) {
    match endpoint {
        Some(endpoint) => endpoint.network.send(endpoint.id, io.drain_outgoing()),
        None => io.drain_outgoing().for_each(drop),
    }
}
