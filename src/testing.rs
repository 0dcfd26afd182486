//! Helpers for tests: several `App`s in one room over a
//! [`MemoryNetwork`], stepped frame by frame with a pinned clock.
//!
//! No sockets, threads or sleeps: a test with the same seed and the same steps runs
//! the same way every time.

pub mod hostile;

use std::time::Duration;

use bevy::prelude::*;
use bevy::time::TimeUpdateStrategy;

use crate::PeerSyncPlugin;
use crate::net::identity::PeerKey;
use crate::net::peer::{LocalPeer, PeerId, PeerLink, Peers};
use crate::net::session::PayloadReceived;
use crate::net::transport::memory::{MemoryEndpoint, MemoryNetwork};

/// The frame time every [`TestRoom`] app advances by: 60 Hz.
pub const FRAME: Duration = Duration::from_nanos(16_666_667);

/// How a [`TestRoom`] peer differs from the default one.
#[derive(Debug, Clone, Default)]
pub struct PeerOptions {
    /// Its replica key (by default one derived from the room's seed and its index).
    pub key: Option<PeerKey>,
    /// The room's secret as this peer has it (by default none).
    pub room_secret: Option<crate::net::identity::RoomSecret>,
}

/// Several peers in one in-memory room.
pub struct TestRoom {
    /// The network they share (set conditioners, cut links, read stats).
    pub network: MemoryNetwork,
    apps: Vec<App>,
    seed: u64,
}

impl TestRoom {
    /// An empty room whose network follows `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            network: MemoryNetwork::new(seed),
            apps: Vec::new(),
            seed,
        }
    }

    /// An app on this room's network with `MinimalPlugins`, a 60 Hz pinned clock,
    /// keys derived from the room's seed and [`PeerSyncPlugin::in_memory`],
    /// not yet added to the room.
    pub fn new_app(&self) -> App {
        self.new_app_with(PeerOptions::default())
    }

    /// [`TestRoom::new_app`] with `options`.
    pub fn new_app_with(&self, options: PeerOptions) -> App {
        // SplitMix64 of (seed, index): distinct, reproducible.
        let mut z = self
            .seed
            .wrapping_add((self.apps.len() as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let seed = |salt: u64| {
            let mut bytes = [0; 32];
            for (k, chunk) in bytes.chunks_mut(8).enumerate() {
                chunk.copy_from_slice(&(z ^ salt.wrapping_mul(k as u64 + 1)).to_le_bytes());
            }
            PeerKey::from_seed(bytes)
        };
        let key = options.key.unwrap_or_else(|| seed(1));
        let mut plugin = PeerSyncPlugin::in_memory(&self.network);
        if let Some(secret) = options.room_secret {
            plugin = plugin.with_room_secret(secret);
        }
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .insert_resource(LocalPeer::with_keys(key, seed(2)))
            .insert_resource(TimeUpdateStrategy::ManualDuration(FRAME))
            .add_plugins(plugin);
        app
    }

    /// Adds a peer made with `options`; `setup` registers components and systems.
    /// Returns its index.
    pub fn add_peer_with(&mut self, options: PeerOptions, setup: impl FnOnce(&mut App)) -> usize {
        let mut app = self.new_app_with(options);
        setup(&mut app);
        // What `App::run` does before the first frame.
        app.finish();
        app.cleanup();
        self.apps.push(app);
        self.apps.len() - 1
    }

    /// Adds a peer; `setup` registers components and systems. Returns its index.
    pub fn add_peer(&mut self, setup: impl FnOnce(&mut App)) -> usize {
        self.add_peer_with(PeerOptions::default(), setup)
    }

    /// Advances the network clock by one frame and updates every app once, in order.
    pub fn step(&mut self) {
        self.network.advance(FRAME);
        for app in &mut self.apps {
            app.update();
        }
    }

    /// [`TestRoom::step`] `frames` times.
    pub fn step_n(&mut self, frames: usize) {
        for _ in 0..frames {
            self.step();
        }
    }

    /// Steps until `done` holds or `max_frames` pass; returns whether it held.
    pub fn step_until(
        &mut self,
        max_frames: usize,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        for _ in 0..max_frames {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// The app of peer `index`.
    pub fn app(&self, index: usize) -> &App {
        &self.apps[index]
    }

    /// The app of peer `index`, mutably.
    pub fn app_mut(&mut self, index: usize) -> &mut App {
        &mut self.apps[index]
    }

    /// How many peers were added.
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether no peer was added.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }

    /// Peer `index`'s id on the network, while it is on it.
    pub fn peer_id(&self, index: usize) -> Option<PeerId> {
        self.apps[index]
            .world()
            .get_resource::<MemoryEndpoint>()
            .map(MemoryEndpoint::id)
    }

    /// Takes peer `index` off the network (its links close); the app keeps running.
    pub fn disconnect(&mut self, index: usize) {
        self.apps[index]
            .world_mut()
            .remove_resource::<MemoryEndpoint>();
    }

    /// Puts peer `index` back on the network under a new id, as a real reconnect does.
    pub fn reconnect(&mut self, index: usize) {
        let endpoint = MemoryEndpoint::join(&self.network);
        self.apps[index].world_mut().insert_resource(endpoint);
    }

    /// How many peers peer `index` has finished a handshake with.
    pub fn connected_count(&mut self, index: usize) -> usize {
        let world = self.apps[index].world_mut();
        let mut query = world.query::<&PeerLink>();
        query
            .iter(world)
            .filter(|l| **l == PeerLink::Connected)
            .count()
    }

    /// Whether every peer is connected to every other.
    pub fn fully_connected(&mut self) -> bool {
        let n = self.apps.len();
        (0..n).all(|i| self.connected_count(i) == n - 1)
    }

    /// Payloads peer `index` received and has not yet been asked for.
    pub fn received_payloads(&mut self, index: usize) -> Vec<PayloadReceived> {
        let world = self.apps[index].world_mut();
        world
            .resource_mut::<Messages<PayloadReceived>>()
            .drain()
            .collect()
    }

    /// The remote peers peer `index` has a link to.
    pub fn linked_peers(&self, index: usize) -> Vec<PeerId> {
        let mut ids: Vec<PeerId> = self.apps[index].world().resource::<Peers>().ids().collect();
        ids.sort();
        ids
    }
}
