//! Pings: round-trip time and a loss estimate for the unreliable channel.

use std::time::Duration;

use bevy::prelude::*;

use super::{Inbound, Outbox, Recipients, SessionConfig, SessionState};
use crate::net::peer::{Peer, PeerLink};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::net::wire::Message;

impl Inbound {
    fn settle_ping(&mut self, answered: bool, stats: &mut PeerStats) {
        if self.ping_outcomes.len() >= 20 {
            self.ping_outcomes.pop_front();
        }
        self.ping_outcomes.push_back(answered);
        let lost = self.ping_outcomes.iter().filter(|a| !**a).count();
        stats.loss = Some(lost as f32 / self.ping_outcomes.len() as f32);
    }

    /// A pong came: the ping it answers gives a round-trip sample.
    pub(super) fn settle_pong(&mut self, nonce: u32, now: Duration, stats: &mut PeerStats) {
        let Some(position) = self.pings.iter().position(|(n, _)| *n == nonce) else {
            stats.count_drop(DropReason::Stale);
            return;
        };
        let (_, sent) = self
            .pings
            .remove(position)
            .expect("position was just found");
        let sample = now.saturating_sub(sent);
        self.settle_ping(true, stats);
        stats.rtt = Some(match stats.rtt {
            Some(rtt) => (rtt * 7 + sample) / 8,
            None => sample,
        });
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
