//! The transport boundary: plain byte queues in one resource.
//!
//! A backend fills [`TransportIo`] with link events and received datagrams in
//! [`TransportSystems::Receive`] (in `PreUpdate`) and drains what the plugin queued in
//! [`TransportSystems::Send`] (in `PostUpdate`). (The built-in backends run in the same
//! sets inside the plugin's own [`Stage`](crate::schedule::Stage) schedules, first and
//! last.) Nothing else crosses the boundary, so
//! backends are swappable: [`matchbox`] speaks WebRTC, [`memory`] connects several
//! `App`s in one process with a seeded link conditioner, and your own backend only has
//! to move bytes in and out of these queues.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use bevy_peer_sync::net::transport::Packet;
//!
//! // A backend that loops every reliable packet back to its sender.
//! fn echo_backend(mut io: ResMut<TransportIo>) {
//!     let sent: Vec<Packet> = io.drain_outgoing().collect();
//!     for packet in sent {
//!         io.insert_received(packet);
//!     }
//! }
//! # let mut app = App::new();
//! # app.init_resource::<TransportIo>();
//! # app.add_systems(Update, echo_backend);
//! # app.update();
//! ```

pub mod matchbox;
pub mod memory;

use bevy::prelude::*;
use bytes::Bytes;

use crate::net::peer::PeerId;

/// The two data channels every peer link has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Ordered, retransmitted until delivered. Durable state, handshakes, fragments.
    Reliable,
    /// Unordered, never retransmitted. Transient state, cursors, pings.
    Unreliable,
}

impl Channel {
    /// Both channels, in backend index order (reliable is 0, unreliable is 1).
    pub const ALL: [Channel; 2] = [Channel::Reliable, Channel::Unreliable];

    /// The backend channel index.
    pub fn index(self) -> usize {
        match self {
            Channel::Reliable => 0,
            Channel::Unreliable => 1,
        }
    }
}

/// One datagram with its remote peer and channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// The remote peer (sender when received, recipient when sent).
    pub peer: PeerId,
    /// The channel.
    pub channel: Channel,
    /// The datagram.
    pub bytes: Bytes,
}

/// A change in the link to one remote peer, as the backend sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Data channels to this peer are open.
    Connected(PeerId),
    /// The link to this peer is gone.
    Disconnected(PeerId),
}

/// Whether the backend can reach the room at all.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BackendStatus {
    /// Still opening (signaling not reached yet).
    #[default]
    Opening,
    /// In the room, with a local id.
    Open,
    /// Lost the room (or never reached it) and retrying.
    Reconnecting {
        /// Which retry comes next (1 for the first).
        attempt: u32,
        /// Why the room was lost.
        reason: String,
    },
    /// Closed for good, with the reason.
    Closed(String),
}

/// The byte queues between the plugin and a transport backend.
#[derive(Resource, Debug, Default)]
pub struct TransportIo {
    local_id: Option<PeerId>,
    status: BackendStatus,
    link_events: Vec<LinkEvent>,
    received: Vec<Packet>,
    outgoing: Vec<Packet>,
}

impl TransportIo {
    // --- backend side ---

    /// Backend: the id the room gave this peer.
    pub fn set_local_id(&mut self, id: PeerId) {
        self.local_id = Some(id);
    }

    /// Backend: the room is reachable or not.
    pub fn set_status(&mut self, status: BackendStatus) {
        self.status = status;
    }

    /// Backend: a link went up or down.
    pub fn push_link_event(&mut self, event: LinkEvent) {
        self.link_events.push(event);
    }

    /// Backend: a datagram arrived.
    pub fn insert_received(&mut self, packet: Packet) {
        self.received.push(packet);
    }

    /// Backend: takes everything the plugin queued for sending.
    pub fn drain_outgoing(&mut self) -> impl Iterator<Item = Packet> + '_ {
        self.outgoing.drain(..)
    }

    // --- plugin side ---

    /// The local peer id, once the room assigned one.
    pub fn local_id(&self) -> Option<PeerId> {
        self.local_id
    }

    /// The backend's view of the room.
    pub fn status(&self) -> &BackendStatus {
        &self.status
    }

    /// Queues a datagram for the backend to send.
    pub fn send(&mut self, packet: Packet) {
        self.outgoing.push(packet);
    }

    /// Takes the link events since the last call.
    pub fn drain_link_events(&mut self) -> impl Iterator<Item = LinkEvent> + '_ {
        self.link_events.drain(..)
    }

    /// Takes the datagrams received since the last call.
    pub fn drain_received(&mut self) -> impl Iterator<Item = Packet> + '_ {
        self.received.drain(..)
    }

    /// Datagrams waiting to be sent.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.len()
    }
}

pub use crate::schedule::TransportSystems;
