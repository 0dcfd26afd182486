//! Helpers shared by the test modules.

pub mod alloc;
pub mod traces;
pub mod webrtc;

use bevy_peer_sync::prelude::{DropReason, PeerStats};
use bevy_peer_sync::testing::TestRoom;

/// Sends `body` as a `Doc` message from peer `from` straight onto peer `to`'s transport
/// (in fragments, as a large one travels).
pub fn inject(room: &mut TestRoom, from: usize, to: usize, body: Vec<u8>) {
    use bevy_peer_sync::internals::wire::{self, Message};
    use bevy_peer_sync::net::transport::Packet;
    use bevy_peer_sync::prelude::{Channel, TransportIo};

    let from = room.peer_id(from).unwrap();
    let mut io = room.app_mut(to).world_mut().resource_mut::<TransportIo>();
    let frame = wire::encode(&Message::Doc(bytes::Bytes::from(body))).unwrap();
    for bytes in wire::fragment(frame, 7).unwrap() {
        io.insert_received(Packet {
            peer: from,
            channel: Channel::Reliable,
            bytes,
        });
    }
}

/// What `peer` dropped for `reason`, from all its peers.
pub fn drops(room: &mut TestRoom, peer: usize, reason: DropReason) -> u64 {
    let world = room.app_mut(peer).world_mut();
    world
        .query::<&PeerStats>()
        .iter(world)
        .map(|stats| stats.dropped(reason))
        .sum()
}
