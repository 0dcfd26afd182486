//! What one peer may send: bytes and datagrams per second on each channel, reliable
//! bytes taken per frame, reliable bytes left waiting. Every peer is the server of the
//! others, so this is the first thing a datagram meets after its peer is looked up.
//!
//! - **Unreliable** datagrams over the rate are dropped and counted
//!   ([`DropReason::OverBudget`](crate::net::stats::DropReason::OverBudget)): they are
//!   latest-wins, the next one carries newer values.
//! - **Reliable** datagrams are never dropped (that would break the ordered stream an
//!   honest peer relies on): past the rate, or past the bytes taken from one peer in one
//!   frame, they wait in order for the next frame. A burst such as a late joiner's
//!   catch-up is spread over a few frames instead of freezing one.
//! - A peer that stays over its budget for [`PeerBudget::grace`], or leaves more than
//!   [`PeerBudget::max_waiting_bytes`] waiting, is refused: its link becomes
//!   [`PeerLink::Rejected`](crate::net::peer::PeerLink::Rejected) with
//!   [`RejectReason::OverBudget`](crate::net::peer::RejectReason::OverBudget), the
//!   routes see it leave, and it is told why (it sees
//!   [`RejectReason::RefusedByPeer`](crate::net::peer::RejectReason::RefusedByPeer)).

use std::collections::VecDeque;
use std::time::Duration;

use crate::net::transport::{Channel, Packet};

/// Budgets per remote peer; part of [`super::SessionConfig`].
///
/// The defaults leave room for a peer that owns a few thousand moving entities and
/// sends a document of tens of MiB to a late joiner; a game that sends more raises
/// them on every build.
///
/// ```
/// use bevy_peer_sync::net::session::{PeerBudget, SessionConfig};
/// use bevy_peer_sync::prelude::*;
///
/// let config = SessionConfig {
///     budget: PeerBudget {
///         // Indexed by `Channel::index`: reliable, then unreliable.
///         bytes_per_sec: [16 << 20, 8 << 20],
///         ..PeerBudget::default()
///     },
///     ..SessionConfig::default()
/// };
/// assert_eq!(config.budget.bytes_per_sec[Channel::Unreliable.index()], 8 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerBudget {
    /// Bytes per second one peer may send, per channel ([`Channel::index`]).
    pub bytes_per_sec: [u64; 2],
    /// Datagrams per second one peer may send, per channel.
    pub datagrams_per_sec: [u64; 2],
    /// How much may arrive at once: the budget saved up while a peer is quiet, as a
    /// time at the full rate (1 s: a quiet peer may send a second's worth in one go).
    pub burst: Duration,
    /// Reliable bytes taken from one peer in one frame; the rest waits for the next
    /// frame (what a frame spends on one peer's input stays bounded).
    pub reliable_bytes_per_frame: usize,
    /// Reliable bytes that may wait for budget; past it the peer is refused.
    pub max_waiting_bytes: usize,
    /// How long a peer may stay over its budget (reliable bytes waiting every frame, or
    /// unreliable datagrams dropped every second) before it is refused.
    pub grace: Duration,
}

impl Default for PeerBudget {
    fn default() -> Self {
        Self {
            bytes_per_sec: [16 << 20, 4 << 20],
            datagrams_per_sec: [20_000, 8_000],
            burst: Duration::from_secs(1),
            reliable_bytes_per_frame: 1 << 20,
            max_waiting_bytes: 40 << 20,
            grace: Duration::from_secs(5),
        }
    }
}

/// Why a peer went over its budget for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Overrun {
    /// More reliable bytes waiting than allowed.
    Waiting { bytes: usize, limit: usize },
    /// Over the rate on `channel` for longer than the grace.
    Sustained { channel: Channel, grace: Duration },
}

impl Overrun {
    pub(crate) fn describe(&self, budget: &PeerBudget) -> String {
        match self {
            Self::Waiting { bytes, limit } => format!(
                "`{bytes}` reliable bytes waiting for budget, over the `{limit}`-byte limit (`PeerBudget::max_waiting_bytes`)"
            ),
            Self::Sustained { channel, grace } => {
                let i = channel.index();
                format!(
                    "over `{}` bytes or `{}` datagrams per second on the {channel:?} channel for `{grace:?}` (`PeerBudget`; raise it on every build if honest peers send this much)",
                    budget.bytes_per_sec[i], budget.datagrams_per_sec[i]
                )
            }
        }
    }
}

#[derive(Debug, Default)]
struct Bucket {
    bytes: f64,
    datagrams: f64,
}

/// When a peer went over on one channel, and when it last was.
#[derive(Debug, Default, Clone, Copy)]
struct Over {
    since: Option<Duration>,
    last: Duration,
}

/// How an unreliable datagram gap ends an episode of being over budget.
const QUIET: Duration = Duration::from_secs(1);

/// One peer's budget state: a token bucket per channel, this frame's reliable bytes,
/// and the reliable datagrams waiting their turn.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    buckets: [Bucket; 2],
    refilled: Option<Duration>,
    frame_bytes: usize,
    waiting: VecDeque<Packet>,
    waiting_bytes: usize,
    over: [Over; 2],
}

impl Meter {
    /// Refills the buckets for the time since the last frame (once per frame) and
    /// opens this frame's reliable allowance.
    pub(crate) fn start_frame(&mut self, now: Duration, budget: &PeerBudget) {
        let elapsed = match self.refilled {
            Some(then) if then == now => return,
            Some(then) => now.saturating_sub(then),
            // A new peer starts with a full bucket.
            None => budget.burst,
        };
        self.refilled = Some(now);
        self.frame_bytes = 0;
        let secs = elapsed.as_secs_f64();
        let depth = budget.burst.as_secs_f64();
        for (i, bucket) in self.buckets.iter_mut().enumerate() {
            let bytes = budget.bytes_per_sec[i] as f64;
            let datagrams = budget.datagrams_per_sec[i] as f64;
            bucket.bytes = (bucket.bytes + bytes * secs).min(bytes * depth);
            bucket.datagrams = (bucket.datagrams + datagrams * secs).min(datagrams * depth);
        }
    }

    /// Takes `len` bytes and one datagram from `channel`'s bucket if it has any left
    /// (a datagram may take it below zero; the debt is paid before the next one
    /// passes). A reliable datagram must also fit this frame's allowance.
    fn take(&mut self, channel: Channel, len: usize, budget: &PeerBudget) -> bool {
        let bucket = &mut self.buckets[channel.index()];
        if bucket.bytes <= 0.0 || bucket.datagrams <= 0.0 {
            return false;
        }
        if channel == Channel::Reliable {
            if self.frame_bytes >= budget.reliable_bytes_per_frame {
                return false;
            }
            self.frame_bytes += len;
        }
        bucket.bytes -= len as f64;
        bucket.datagrams -= 1.0;
        true
    }

    /// An unreliable datagram: whether it is within budget (if not, the caller drops
    /// it and the peer is noted over budget).
    pub(crate) fn admit_unreliable(
        &mut self,
        len: usize,
        now: Duration,
        budget: &PeerBudget,
    ) -> bool {
        let admitted = self.take(Channel::Unreliable, len, budget);
        if !admitted {
            let over = &mut self.over[Channel::Unreliable.index()];
            if over.since.is_none() || now.saturating_sub(over.last) > QUIET {
                over.since = Some(now);
            }
            over.last = now;
        }
        admitted
    }

    /// A reliable datagram: `Some` back if it may be handled now, `None` if it waits
    /// (behind others that wait, or for budget).
    pub(crate) fn admit_reliable(&mut self, packet: Packet, budget: &PeerBudget) -> Option<Packet> {
        if self.waiting.is_empty() && self.take(Channel::Reliable, packet.bytes.len(), budget) {
            return Some(packet);
        }
        self.waiting_bytes += packet.bytes.len();
        self.waiting.push_back(packet);
        None
    }

    /// The next waiting reliable datagram, if the budget lets it through.
    pub(crate) fn next_waiting(&mut self, budget: &PeerBudget) -> Option<Packet> {
        let len = self.waiting.front()?.bytes.len();
        if !self.take(Channel::Reliable, len, budget) {
            return None;
        }
        self.waiting_bytes -= len;
        self.waiting.pop_front()
    }

    /// Whether reliable datagrams wait for this peer's budget.
    #[cfg(test)]
    fn has_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Reliable bytes waiting for budget.
    pub(crate) fn waiting_bytes(&self) -> usize {
        self.waiting_bytes
    }

    /// Drops whatever waits (the peer was refused or left).
    pub(crate) fn clear(&mut self) {
        self.waiting = VecDeque::new();
        self.waiting_bytes = 0;
    }

    /// Called once a frame after everything arrived: notes whether the peer is over
    /// its reliable budget, and says whether it has been for too long.
    pub(crate) fn end_frame(&mut self, now: Duration, budget: &PeerBudget) -> Option<Overrun> {
        if self.waiting_bytes > budget.max_waiting_bytes {
            return Some(Overrun::Waiting {
                bytes: self.waiting_bytes,
                limit: budget.max_waiting_bytes,
            });
        }
        let reliable = &mut self.over[Channel::Reliable.index()];
        if self.waiting.is_empty() {
            reliable.since = None;
        } else {
            reliable.since.get_or_insert(now);
            reliable.last = now;
        }
        for channel in Channel::ALL {
            let over = self.over[channel.index()];
            if let Some(since) = over.since
                && now.saturating_sub(over.last) <= QUIET
                && now.saturating_sub(since) >= budget.grace
            {
                return Some(Overrun::Sustained {
                    channel,
                    grace: budget.grace,
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::peer::PeerId;
    use bytes::Bytes;

    fn packet(channel: Channel, len: usize) -> Packet {
        Packet {
            peer: PeerId(1),
            channel,
            bytes: Bytes::from(vec![0; len]),
        }
    }

    const FRAME: Duration = Duration::from_millis(16);

    #[test]
    fn reliable_bytes_past_a_frames_allowance_wait_in_order_and_none_is_lost() {
        let budget = PeerBudget {
            reliable_bytes_per_frame: 1_000,
            ..PeerBudget::default()
        };
        let mut meter = Meter::default();
        let mut now = Duration::ZERO;
        meter.start_frame(now, &budget);
        let passed: usize = (0..10)
            .filter_map(|_| meter.admit_reliable(packet(Channel::Reliable, 400), &budget))
            .count();
        // 400 + 400 + 400: the third takes the frame past its allowance, then it waits.
        assert_eq!(passed, 3);
        assert_eq!(meter.waiting_bytes(), 2_800);
        let mut frames = 0;
        let mut taken = passed;
        while meter.has_waiting() {
            now += FRAME;
            frames += 1;
            meter.start_frame(now, &budget);
            while meter.next_waiting(&budget).is_some() {
                taken += 1;
            }
            assert_eq!(meter.end_frame(now, &budget), None);
        }
        assert_eq!((taken, frames), (10, 3));
    }

    #[test]
    fn a_peer_over_its_unreliable_rate_for_the_grace_is_refused_and_a_short_burst_is_not() {
        let budget = PeerBudget {
            bytes_per_sec: [1 << 20, 10_000],
            ..PeerBudget::default()
        };
        let mut meter = Meter::default();
        let mut now = Duration::ZERO;
        // A burst: a second's worth at once, then quiet.
        meter.start_frame(now, &budget);
        let admitted = (0..30)
            .filter(|_| meter.admit_unreliable(1_000, now, &budget))
            .count();
        assert_eq!(admitted, 10);
        for _ in 0..600 {
            now += FRAME;
            meter.start_frame(now, &budget);
            assert_eq!(meter.end_frame(now, &budget), None);
        }
        // Twice the rate, every frame: refused once the grace is over.
        let mut refused_after = None;
        for frame in 0..1_000 {
            now += FRAME;
            meter.start_frame(now, &budget);
            meter.admit_unreliable(340, now, &budget);
            meter.admit_unreliable(340, now, &budget);
            if let Some(overrun) = meter.end_frame(now, &budget) {
                assert!(matches!(
                    overrun,
                    Overrun::Sustained {
                        channel: Channel::Unreliable,
                        ..
                    }
                ));
                refused_after = Some(frame);
                break;
            }
        }
        let frames = refused_after.expect("refused") as u32;
        let after = FRAME * frames;
        assert!(after >= budget.grace && after < budget.grace + Duration::from_secs(2));
    }

    #[test]
    fn more_waiting_than_allowed_is_refused_at_once() {
        let budget = PeerBudget {
            reliable_bytes_per_frame: 1_000,
            max_waiting_bytes: 10_000,
            ..PeerBudget::default()
        };
        let mut meter = Meter::default();
        meter.start_frame(Duration::ZERO, &budget);
        for _ in 0..20 {
            meter.admit_reliable(packet(Channel::Reliable, 1_000), &budget);
        }
        assert!(matches!(
            meter.end_frame(Duration::ZERO, &budget),
            Some(Overrun::Waiting { .. })
        ));
    }
}
