//! Connection life: whether this peer is in the room, and how it gets back in.
//!
//! [`Connection`] is a resource holding the current [`ConnectionState`];
//! [`ConnectionStateChanged`] is written on every change. The state follows the
//! backend ([`BackendStatus`]):
//!
//! | state | meaning |
//! |---|---|
//! | [`Connecting`](ConnectionState::Connecting) | first contact with the signaling server, not in the room yet |
//! | [`Connected`](ConnectionState::Connected) | in the room (links to peers open as they are negotiated) |
//! | [`Reconnecting`](ConnectionState::Reconnecting) | the room was lost; retrying with backoff ([`ReconnectPolicy`]) |
//! | [`Offline`](ConnectionState::Offline) | not trying any more (retries used up, a configuration error, or the backend left the room) |
//!
//! Nothing is lost while offline: durable edits go on in the local documents and
//! merge with everyone's when links reopen (both sides run y-sync on every join), and
//! owners resend their transient values within a refresh period.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::net::connection::{ConnectionState, ConnectionStateChanged};
//!
//! fn show_connection(mut changes: MessageReader<ConnectionStateChanged>) {
//!     for change in changes.read() {
//!         if change.to == ConnectionState::Reconnecting {
//!             info!("lost the room, retrying (edits keep working offline)");
//!         }
//!     }
//! }
//! # let mut app = App::new();
//! # app.add_plugins(MinimalPlugins)
//! #     .add_plugins(bevy_peer_sync::PeerSyncPlugin::with_custom_transport())
//! #     .add_systems(Update, show_connection);
//! # app.update();
//! ```

use std::time::Duration;

use bevy::prelude::*;

use crate::net::transport::{BackendStatus, TransportIo};

/// Whether this peer is in the room. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ConnectionState {
    /// Reaching the room for the first time.
    #[default]
    Connecting,
    /// In the room.
    Connected,
    /// Lost the room; retrying.
    Reconnecting,
    /// Not in the room and not retrying.
    Offline,
}

/// The connection state, with when it last changed and why.
#[derive(Resource, Debug, Clone, Default)]
pub struct Connection {
    state: ConnectionState,
    since: Duration,
    attempt: u32,
    reason: Option<String>,
    ever_connected: bool,
}

impl Connection {
    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// When (on the app's real-time clock) the state last changed.
    pub fn since(&self) -> Duration {
        self.since
    }

    /// Which retry this is, while reconnecting (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Why the room was lost, when it was.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether this peer was ever in the room.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }
}

/// The [`ConnectionState`] changed.
#[derive(Message, Debug, Clone, PartialEq, Eq)]
pub struct ConnectionStateChanged {
    /// The state before.
    pub from: ConnectionState,
    /// The state now.
    pub to: ConnectionState,
}

/// Ask the backend to leave the room (closing every link) or to come back.
///
/// Going offline is how a game offers "work offline": edits go on locally and merge
/// when it comes back online. The WebRTC and in-memory backends both honour it.
#[derive(Message, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOnline {
    /// Leave the room and stay out until [`SetOnline::Online`].
    Offline,
    /// Join the room again (at once, not after a backoff).
    Online,
}

/// How a backend retries after losing the room: exponential backoff with jitter.
#[derive(Debug, Clone, PartialEq)]
pub struct ReconnectPolicy {
    /// Wait before the first retry.
    pub first_delay: Duration,
    /// The longest wait between retries.
    pub max_delay: Duration,
    /// Give up (go [`ConnectionState::Offline`]) after this many failed retries in a
    /// row; `None` retries for ever.
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Never retry.
    pub fn never() -> Self {
        Self {
            max_attempts: Some(0),
            ..Self::default()
        }
    }

    /// The wait before retry `attempt` (1-based), before jitter: doubling from
    /// `first_delay`, capped at `max_delay`. `None` once retries are used up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt > max) {
            return None;
        }
        let doublings = attempt.saturating_sub(1).min(20);
        Some(
            self.first_delay
                .saturating_mul(1 << doublings)
                .min(self.max_delay),
        )
    }
}

pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<Connection>()
        .add_message::<ConnectionStateChanged>()
        .add_message::<SetOnline>();
}

/// Follows the backend's status. Runs first in [`crate::PeerSyncSystems::Receive`].
pub(crate) fn track_connection(
    io: Res<TransportIo>,
    time: Res<Time<Real>>,
    mut connection: ResMut<Connection>,
    mut changed: MessageWriter<ConnectionStateChanged>,
) {
    let (state, attempt) = match io.status() {
        BackendStatus::Opening if connection.ever_connected => (ConnectionState::Reconnecting, 0),
        BackendStatus::Opening => (ConnectionState::Connecting, 0),
        BackendStatus::Open => (ConnectionState::Connected, 0),
        BackendStatus::Reconnecting { attempt, .. } if connection.ever_connected => {
            (ConnectionState::Reconnecting, *attempt)
        }
        BackendStatus::Reconnecting { attempt, .. } => (ConnectionState::Connecting, *attempt),
        BackendStatus::Closed(_) => (ConnectionState::Offline, 0),
    };
    if let BackendStatus::Reconnecting { reason, .. } | BackendStatus::Closed(reason) = io.status()
        && connection.reason.as_deref() != Some(reason)
    {
        connection.reason = Some(reason.clone());
    }
    if connection.attempt != attempt {
        connection.attempt = attempt;
    }
    if state == connection.state {
        return;
    }
    let from = connection.state;
    connection.state = state;
    connection.since = time.elapsed();
    if state == ConnectionState::Connected {
        connection.ever_connected = true;
        connection.reason = None;
    }
    match state {
        ConnectionState::Connected => info!("in the room"),
        ConnectionState::Reconnecting => warn!(
            "lost the room ({}); reconnecting, edits keep working offline",
            connection.reason.as_deref().unwrap_or("no reason given")
        ),
        ConnectionState::Offline => warn!(
            "offline ({}); edits keep working locally",
            connection.reason.as_deref().unwrap_or("no reason given")
        ),
        ConnectionState::Connecting => {}
    }
    changed.write(ConnectionStateChanged { from, to: state });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_stops() {
        let policy = ReconnectPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            max_attempts: Some(5),
        };
        let delays: Vec<_> = (1..=6).map(|a| policy.delay(a)).collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500), None]);
        assert_eq!(ReconnectPolicy::never().delay(1), None);
        assert!(ReconnectPolicy::default().delay(u32::MAX).is_some());
    }
}
