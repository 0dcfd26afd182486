//! Helpers shared by the test modules.

pub mod alloc;
pub mod traces;
pub mod webrtc;

use bevy_peer_sync::prelude::{DropReason, PeerStats};
use bevy_peer_sync::testing::TestRoom;

/// What `peer` dropped for `reason`, from all its peers.
pub fn drops(room: &mut TestRoom, peer: usize, reason: DropReason) -> u64 {
    let world = room.app_mut(peer).world_mut();
    world
        .query::<&PeerStats>()
        .iter(world)
        .map(|stats| stats.dropped(reason))
        .sum()
}
