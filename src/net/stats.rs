//! Per-peer traffic counters: bytes and datagrams per channel, refusals by reason,
//! round-trip time. They live on each peer's entity as [`PeerStats`].

use bevy::prelude::*;

use crate::net::transport::Channel;

/// Why a datagram (or a change inside one) from a peer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum DropReason {
    /// Shorter than its header, or a body that did not decode.
    Malformed,
    /// Over a size limit.
    Oversized,
    /// Another protocol version.
    WrongVersion,
    /// A message kind this build does not know.
    UnknownKind,
    /// A kind on a channel it does not belong to.
    WrongChannel,
    /// Fragments that do not form a message.
    BadFragment,
    /// Arrived before the peer's handshake finished.
    BeforeHandshake,
    /// The peer was rejected at the handshake.
    Rejected,
    /// Wrote state the peer does not own.
    NotOwner,
    /// Older than what was already applied, or a duplicate.
    Stale,
    /// Over the peer's per-frame budget.
    OverBudget,
    /// Named an entity or type that is not known here.
    Unknown,
    /// Catch-up (a y-sync step 2) this peer did not ask for.
    Unasked,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 13] = [
        Self::Malformed,
        Self::Oversized,
        Self::WrongVersion,
        Self::UnknownKind,
        Self::WrongChannel,
        Self::BadFragment,
        Self::BeforeHandshake,
        Self::Rejected,
        Self::NotOwner,
        Self::Stale,
        Self::OverBudget,
        Self::Unknown,
        Self::Unasked,
    ];
}

/// Counters for one channel of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent.
    pub packets_out: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// Traffic counters for one remote peer.
#[derive(Component, Debug, Clone, Default)]
pub struct PeerStats {
    channels: [ChannelStats; 2],
    dropped: [u64; DropReason::ALL.len()],
    /// Smoothed round-trip time over the unreliable channel, once measured.
    pub rtt: Option<std::time::Duration>,
    /// Share of recent pings (up to the last 20) that got no answer: a round-trip loss
    /// estimate for the unreliable channel, once any ping has been settled.
    pub loss: Option<f32>,
    /// Bytes per second in the last measured second, per channel (see
    /// [`crate::diagnostics`]).
    pub rates: TrafficRates,
    /// Reliable datagrams that waited a frame or more for the peer's budget
    /// ([`crate::net::session::PeerBudget`]): past its rate or its bytes per frame.
    pub reliable_waited: u64,
    /// Reliable bytes waiting for the peer's budget at the end of the last frame.
    pub reliable_waiting_bytes: usize,
}

/// Bytes per second, per channel and direction, over the last measured second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TrafficRates {
    /// Received, indexed by [`Channel::index`].
    pub bytes_in_per_sec: [f64; 2],
    /// Sent, indexed by [`Channel::index`].
    pub bytes_out_per_sec: [f64; 2],
}

impl TrafficRates {
    /// Received bytes per second, both channels.
    pub fn total_in(&self) -> f64 {
        self.bytes_in_per_sec.iter().sum()
    }

    /// Sent bytes per second, both channels.
    pub fn total_out(&self) -> f64 {
        self.bytes_out_per_sec.iter().sum()
    }
}

impl PeerStats {
    /// Counters of one channel.
    pub fn channel(&self, channel: Channel) -> &ChannelStats {
        &self.channels[channel.index()]
    }

    /// Datagrams or changes dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// Everything dropped, for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub(crate) fn count_in(&mut self, channel: Channel, bytes: usize) {
        let stats = &mut self.channels[channel.index()];
        stats.packets_in += 1;
        stats.bytes_in += bytes as u64;
    }

    pub(crate) fn count_out(&mut self, channel: Channel, bytes: usize) {
        let stats = &mut self.channels[channel.index()];
        stats.packets_out += 1;
        stats.bytes_out += bytes as u64;
    }

    /// Counts one drop.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }
}
