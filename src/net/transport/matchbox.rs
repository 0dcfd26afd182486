//! WebRTC through `matchbox_socket`: a full mesh of data channels, brokered by a
//! matchbox signaling server (see [`crate::net::signaling`]).
//!
//! The socket's message loop runs on Bevy's [`IoTaskPool`](bevy::tasks::IoTaskPool)
//! (through `bevy_matchbox`), which works on native and in the browser. Channel 0 is
//! reliable and ordered, channel 1 is unordered with no retransmits.
//!
//! ## ICE servers
//! matchbox defaults to public STUN servers. This crate never does that silently: a
//! room on this machine (`localhost`, `127.0.0.0/8`, `[::1]`) uses no ICE servers, and a
//! room elsewhere must be given an explicit choice (`with_ice_servers`, `with_public_stun`, `without_ice_servers` on [`crate::PeerSyncPlugin`]).

use std::time::Duration;

use bevy::prelude::*;
use bevy_matchbox::MatchboxSocket;
use matchbox_socket::{ChannelConfig, PeerState, RtcIceServerConfig, WebRtcSocketBuilder};

use crate::net::NetError;
use crate::net::connection::{ReconnectPolicy, SetOnline};
use crate::net::transport::{
    BackendStatus, Channel, LinkEvent, Packet, TransportIo, TransportSystems,
};
use crate::schedule::{PeerSyncSystems, StageAppExt};

/// Which ICE (STUN/TURN) servers the WebRTC connections use.
#[derive(Debug, Clone, Default)]
pub(crate) enum IceServers {
    /// Not chosen. Fine for a room on this machine (treated as [`IceServers::None`]);
    /// an error for any other room.
    #[default]
    Unchosen,
    /// No ICE servers: host candidates only. Works on one machine and on a LAN.
    None,
    /// Your own STUN/TURN servers (one set of credentials, as WebRTC allows).
    Custom(RtcIceServerConfig),
    /// matchbox's default, public STUN servers on the internet. Opt-in only.
    PublicStun,
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub(crate) struct MatchboxConfig {
    /// The room, e.g. `ws://127.0.0.1:3536/my_room`.
    pub room_url: String,
    /// The ICE server choice.
    pub ice_servers: IceServers,
    /// How many times one socket tries to reach the signaling server before it
    /// gives up (and [`MatchboxConfig::reconnect`] takes over with a new socket).
    pub reconnect_attempts: Option<u16>,
    /// How the room is retried once the socket is lost.
    pub reconnect: ReconnectPolicy,
}

impl MatchboxConfig {
    /// A config for `room_url` with ICE servers still to choose.
    pub fn new(room_url: impl Into<String>) -> Self {
        Self {
            room_url: room_url.into(),
            ice_servers: IceServers::Unchosen,
            reconnect_attempts: Some(1),
            reconnect: ReconnectPolicy::default(),
        }
    }

    /// The ICE servers the socket will be built with, or why it cannot be built.
    pub fn resolved_ice_servers(&self) -> Result<Option<RtcIceServerConfig>, NetError> {
        let host = room_host(&self.room_url)?;
        match &self.ice_servers {
            IceServers::Unchosen if is_local_host(host) => Ok(Some(no_ice_servers())),
            IceServers::Unchosen => Err(NetError::IceServersNotChosen {
                url: self.room_url.clone(),
            }),
            IceServers::None => Ok(Some(no_ice_servers())),
            IceServers::Custom(servers) => Ok(Some(servers.clone())),
            IceServers::PublicStun => Ok(None),
        }
    }

    fn builder(&self) -> Result<WebRtcSocketBuilder, NetError> {
        let ice = self.resolved_ice_servers()?;
        let mut builder = WebRtcSocketBuilder::new(self.room_url.clone())
            .reconnect_attempts(self.reconnect_attempts)
            .signaling_keep_alive_interval(Some(Duration::from_secs(10)))
            .add_channel(ChannelConfig::reliable())
            .add_channel(ChannelConfig::unreliable());
        if let Some(ice) = ice {
            builder = builder.ice_server(ice);
        }
        Ok(builder)
    }
}

fn no_ice_servers() -> RtcIceServerConfig {
    RtcIceServerConfig {
        urls: Vec::new(),
        username: None,
        credential: None,
    }
}

/// The host part of a `ws://` or `wss://` url.
pub(crate) fn room_host(url: &str) -> Result<&str, NetError> {
    let invalid = |reason| NetError::InvalidRoomUrl {
        url: url.to_owned(),
        reason,
    };
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .ok_or_else(|| invalid("it must start with ws:// or wss://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    if host.is_empty() {
        return Err(invalid("it has no host"));
    }
    Ok(host)
}

/// Whether `host` is this machine.
pub(crate) fn is_local_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// The WebRTC backend. [`crate::PeerSyncPlugin::new`] adds it.
pub(crate) struct MatchboxTransportPlugin {
    /// Where to connect.
    pub config: MatchboxConfig,
}

/// The socket to open, now or after a backoff.
#[derive(Resource, Debug)]
struct SocketPlan {
    config: MatchboxConfig,
    /// When (real time) to open the next socket; `None` while one is open.
    open_at: Option<Duration>,
    /// Failed attempts in a row.
    failures: u32,
    /// Jitter source (a tiny xorshift; no need for a real RNG here).
    jitter: u64,
}

/// The open socket.
#[derive(Resource, Debug)]
pub(crate) struct MatchboxTransport {
    socket: MatchboxSocket,
    opened: bool,
}

impl Plugin for MatchboxTransportPlugin {
    fn build(&self, app: &mut App) {
        // `SystemTime` panics in the browser; yrs' id generator works everywhere.
        let seed = yrs::block::ClientID::random().get() | 1;
        app.init_resource::<TransportIo>()
            .insert_resource(SocketPlan {
                config: self.config.clone(),
                open_at: Some(Duration::ZERO),
                failures: 0,
                jitter: seed,
            })
            .add_stage_systems(
                PeerSyncSystems::Receive,
                (go_online_or_offline, open_socket, matchbox_receive)
                    .chain()
                    .in_set(TransportSystems::Receive),
            )
            .add_stage_systems(
                PeerSyncSystems::Send,
                matchbox_send.in_set(TransportSystems::Send),
            );
    }
}

fn go_online_or_offline(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut requests: MessageReader<SetOnline>,
    mut plan: ResMut<SocketPlan>,
    mut io: ResMut<TransportIo>,
) {
    let Some(request) = requests.read().last() else {
        return;
    };
    match request {
        SetOnline::Offline => {
            info!("going offline from room `{}`", plan.config.room_url);
            commands.remove_resource::<MatchboxTransport>();
            plan.open_at = None;
            plan.failures = 0;
            io.set_status(BackendStatus::Closed("went offline on request".into()));
        }
        SetOnline::Online => {
            if plan.open_at.is_none() && matches!(io.status(), BackendStatus::Closed(_)) {
                plan.open_at = Some(time.elapsed());
                plan.failures = 0;
                io.set_status(BackendStatus::Opening);
            }
        }
    }
}

fn open_socket(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut plan: ResMut<SocketPlan>,
    mut io: ResMut<TransportIo>,
) {
    let Some(open_at) = plan.open_at else { return };
    if time.elapsed() < open_at {
        return;
    }
    plan.open_at = None;
    match plan.config.builder() {
        Ok(builder) => {
            info!("joining room `{}`", plan.config.room_url);
            commands.insert_resource(MatchboxTransport {
                socket: MatchboxSocket::from(builder),
                opened: false,
            });
        }
        Err(error) => {
            error!("{error}");
            io.set_status(BackendStatus::Closed(error.to_string()));
        }
    }
}

/// The socket is gone: plan the next one, or give up.
fn socket_lost(plan: &mut SocketPlan, io: &mut TransportIo, now: Duration, reason: String) {
    plan.failures += 1;
    match plan.config.reconnect.delay(plan.failures) {
        Some(delay) => {
            // ±25% jitter, so peers that lost the same server do not retry in step.
            plan.jitter ^= plan.jitter << 13;
            plan.jitter ^= plan.jitter >> 7;
            plan.jitter ^= plan.jitter << 17;
            let factor = 0.75 + (plan.jitter % 1000) as f64 / 2000.0;
            let delay = delay.mul_f64(factor);
            warn!(
                "{reason}; retrying room `{}` in `{delay:?}` (attempt `{}`)",
                plan.config.room_url, plan.failures
            );
            plan.open_at = Some(now + delay);
            io.set_status(BackendStatus::Reconnecting {
                attempt: plan.failures,
                reason,
            });
        }
        None => {
            warn!(
                "{reason}; giving up on room `{}` after `{}` attempts",
                plan.config.room_url,
                plan.failures - 1
            );
            io.set_status(BackendStatus::Closed(reason));
        }
    }
}

fn matchbox_receive(
    mut commands: Commands,
    time: Res<Time<Real>>,
    transport: Option<ResMut<MatchboxTransport>>,
    mut plan: ResMut<SocketPlan>,
    mut io: ResMut<TransportIo>,
) {
    let Some(mut transport) = transport else {
        return;
    };
    let transport = &mut *transport;
    match transport.socket.try_update_peers() {
        Ok(changes) => {
            for (peer, state) in changes {
                io.push_link_event(match state {
                    PeerState::Connected => LinkEvent::Connected(peer.into()),
                    PeerState::Disconnected => LinkEvent::Disconnected(peer.into()),
                });
            }
        }
        Err(_) => {
            commands.remove_resource::<MatchboxTransport>();
            let reason = if transport.opened {
                "lost the signaling server and every peer link"
            } else {
                "could not reach the signaling server"
            };
            socket_lost(&mut plan, &mut io, time.elapsed(), reason.to_owned());
            return;
        }
    }
    let socket = &mut transport.socket;
    if let Some(id) = socket.id() {
        io.set_local_id(id.into());
        if !transport.opened {
            transport.opened = true;
            plan.failures = 0;
        }
        if *io.status() != BackendStatus::Open {
            io.set_status(BackendStatus::Open);
        }
    }
    for channel in Channel::ALL {
        let Ok(ch) = socket.get_channel_mut(channel.index()) else {
            continue;
        };
        for (peer, bytes) in ch.receive() {
            io.insert_received(Packet {
                peer: peer.into(),
                channel,
                bytes,
            });
        }
    }
}

fn matchbox_send(transport: Option<ResMut<MatchboxTransport>>, mut io: ResMut<TransportIo>) {
    let Some(mut transport) = transport else {
        io.drain_outgoing().for_each(drop);
        return;
    };
    for packet in io.drain_outgoing() {
        let Ok(channel) = transport.socket.get_channel_mut(packet.channel.index()) else {
            continue;
        };
        if channel.try_send(packet.bytes, packet.peer.into()).is_err() {
            debug!("socket closed; dropped a datagram to `{}`", packet.peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_rooms_need_no_ice_choice() {
        for url in [
            "ws://localhost:3536/r",
            "ws://127.0.0.1:1/x",
            "ws://[::1]:3536/",
            "wss://user@127.0.0.2/",
        ] {
            let config = MatchboxConfig::new(url);
            let ice = config.resolved_ice_servers().unwrap().unwrap();
            assert!(ice.urls.is_empty(), "{url}");
        }
    }

    #[test]
    fn remote_rooms_must_choose() {
        let config = MatchboxConfig::new("wss://match.example.com/room");
        assert!(matches!(
            config.resolved_ice_servers(),
            Err(NetError::IceServersNotChosen { .. })
        ));
        let config = MatchboxConfig {
            ice_servers: IceServers::PublicStun,
            ..config
        };
        assert!(config.resolved_ice_servers().unwrap().is_none());
        assert!(matches!(
            MatchboxConfig::new("http://x/").resolved_ice_servers(),
            Err(NetError::InvalidRoomUrl { .. })
        ));
    }
}
