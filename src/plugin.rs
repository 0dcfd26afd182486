//! [`PeerSyncPlugin`]: the plugin, its builder, and the registration of synced types
//! ([`SyncAppExt`] for `App`), which hands each type to its route.

use std::borrow::Cow;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::PeerSyncError;
use crate::net::connection::ReconnectPolicy;
use crate::net::session::SessionConfig;
use crate::net::transport::TransportIo;
use crate::net::transport::matchbox::{IceServers, MatchboxConfig, MatchboxTransportPlugin};
use crate::net::transport::memory::{MemoryNetwork, MemoryTransportPlugin};
use crate::net::wire::WireLimits;
use crate::registry::{Route, SyncAppExt, SyncOptions, SyncRegistry, default_name};

#[derive(Debug, Clone)]
enum TransportChoice {
    Matchbox(MatchboxConfig),
    Memory(MemoryNetwork),
    Custom,
}

/// Adds peer-to-peer sync to an app.
#[derive(Debug, Clone)]
pub struct PeerSyncPlugin {
    transport: TransportChoice,
    session: SessionConfig,
}

impl PeerSyncPlugin {
    /// Joins the room at `room_url` (e.g. `ws://127.0.0.1:3536/my_room`) over WebRTC.
    ///
    /// A room on this machine needs nothing else. For a room elsewhere choose ICE
    /// servers, or the plugin refuses to build.
    pub fn new(room_url: impl Into<String>) -> Self {
        Self {
            transport: TransportChoice::Matchbox(MatchboxConfig::new(room_url)),
            session: SessionConfig::default(),
        }
    }

    /// Joins an in-process [`MemoryNetwork`], for tests and simulations.
    pub fn in_memory(network: &MemoryNetwork) -> Self {
        Self {
            transport: TransportChoice::Memory(network.clone()),
            session: SessionConfig::default(),
        }
    }

    /// Adds no backend: your own systems fill and drain [`TransportIo`] in
    /// [`TransportSystems`](crate::net::transport::TransportSystems).
    pub fn with_custom_transport() -> Self {
        Self {
            transport: TransportChoice::Custom,
            session: SessionConfig::default(),
        }
    }

    fn set_ice(mut self, ice: IceServers) -> Self {
        if let TransportChoice::Matchbox(config) = &mut self.transport {
            config.ice_servers = ice;
        }
        self
    }

    /// Uses these STUN/TURN servers.
    pub fn with_ice_servers(self, servers: matchbox_socket::RtcIceServerConfig) -> Self {
        self.set_ice(IceServers::Custom(servers))
    }

    /// Opts in to matchbox's default public STUN servers.
    pub fn with_public_stun(self) -> Self {
        self.set_ice(IceServers::PublicStun)
    }

    /// Uses no ICE servers (host candidates only: one machine or a LAN).
    pub fn without_ice_servers(self) -> Self {
        self.set_ice(IceServers::None)
    }

    /// How to retry when the room is lost (WebRTC only; the default retries for ever
    /// with backoff from 250 ms to 8 s).
    pub fn with_reconnect(mut self, policy: ReconnectPolicy) -> Self {
        if let TransportChoice::Matchbox(config) = &mut self.transport {
            config.reconnect = policy;
        }
        self
    }

    /// Limits on what peers may send.
    pub fn with_limits(mut self, limits: WireLimits) -> Self {
        self.session.limits = limits;
        self
    }

    /// Keeps strangers out: only peers with the same secret get past the handshake,
    /// and a peer with another (or none) is refused with
    /// [`RejectReason::RoomSecret`](crate::net::peer::RejectReason::RoomSecret) on both
    /// sides. The secret never crosses the wire; see
    /// [`identity`](crate::net::identity) for what it buys.
    ///
    /// ```
    /// use bevy_peer_sync::prelude::*;
    ///
    /// let plugin = PeerSyncPlugin::new("ws://127.0.0.1:3536/board")
    ///     .with_room_secret(RoomSecret::new("k7Qm-2xPa-9dLr-Vw4e"));
    /// # let _ = plugin;
    /// ```
    pub fn with_room_secret(mut self, secret: crate::net::identity::RoomSecret) -> Self {
        self.session.room_secret = Some(secret);
        self
    }

    /// Session settings (limits, ping interval, room secret).
    pub fn with_session_config(mut self, config: SessionConfig) -> Self {
        self.session = config;
        self
    }

    /// Checks the configuration without building: the same checks `build` makes.
    pub fn try_validate(&self) -> Result<(), PeerSyncError> {
        match &self.transport {
            TransportChoice::Matchbox(config) => config
                .resolved_ice_servers()
                .map(|_| ())
                .map_err(PeerSyncError::from),
            TransportChoice::Memory(_) | TransportChoice::Custom => Ok(()),
        }
    }
}

impl Plugin for PeerSyncPlugin {
    /// # Panics
    /// If the configuration is invalid (see [`PeerSyncPlugin::try_validate`]): a room
    /// url that is not `ws://`/`wss://`, or a remote room with no ICE choice.
    fn build(&self, app: &mut App) {
        if let Err(error) = self.try_validate() {
            panic!("PeerSyncPlugin: {error}");
        }
        app.init_resource::<SyncRegistry>()
            .insert_resource(self.session.clone());
        crate::schedule::plugin(app);
        crate::net::plugin(app);
        match &self.transport {
            TransportChoice::Matchbox(config) => {
                app.add_plugins(MatchboxTransportPlugin {
                    config: config.clone(),
                });
            }
            TransportChoice::Memory(network) => {
                app.add_plugins(MemoryTransportPlugin {
                    network: network.clone(),
                });
            }
            TransportChoice::Custom => {
                app.init_resource::<TransportIo>();
            }
        }
        crate::net::connection::plugin(app);
        crate::doc::plugin(app);
        crate::durable::plugin(app);
        crate::transient::plugin(app);
        crate::presence::plugin(app);
        crate::diagnostics::plugin(app);
    }

    /// # Panics
    /// If [`LocalPeer`](crate::net::peer::LocalPeer) was replaced after this plugin was
    /// added: the documents write with the first one's client ids, which the new one's
    /// hellos do not prove, so peers would refuse every update this app sends. Insert
    /// `LocalPeer::with_key(..)` before adding the plugin.
    fn finish(&self, app: &mut App) {
        let world = app.world();
        let local = world.resource::<crate::net::peer::LocalPeer>();
        let room = crate::doc::DocId::Room as u8;
        let mut ours = world
            .resource::<crate::doc::SharedDoc>()
            .doc()
            .client_id()
            .get()
            == local.client_id(room);
        if let Some(entities) = world.get_resource::<crate::durable::EntityDoc>() {
            let id = crate::doc::DocId::Entities as u8;
            ours &= entities.doc().client_id().get() == local.client_id(id);
        }
        assert!(
            ours,
            "PeerSyncPlugin: `LocalPeer` was replaced after the plugin was added; insert `LocalPeer::with_key(..)` before `add_plugins(PeerSyncPlugin::..)`, or peers refuse every update this app sends"
        );
    }
}

impl SyncAppExt for App {
    fn sync_component<T>(&mut self, options: impl Into<SyncOptions>) -> &mut Self
    where
        T: Component<Mutability = Mutable> + Serialize + DeserializeOwned + Clone + PartialEq,
    {
        let SyncOptions { route, name } = options.into();
        let name = name.map_or_else(default_name::<T>, Cow::into_owned);
        match route {
            Route::Durable => crate::durable::register::<T>(self, name),
            Route::Transient => crate::transient::register_serde::<T>(self, name),
            Route::Presence => crate::presence::register::<T>(self, name),
        }
        self
    }
}
