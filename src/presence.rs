//! Presence: who is here, what they are called, their colour and cursor, like Yjs
//! awareness but as ECS.
//!
//! Each peer publishes its [`LocalPresence`] (a resource you edit). On every other peer
//! it appears as components on that peer's entity (the one with [`Peer`]):
//! [`PeerPresence`] (name, colour), [`PeerCursor`] and any type registered with
//! `app.sync_component::<T>(Route::Presence)`.
//!
//! - The cursor travels on the unreliable channel, every frame it changes (and with
//!   each heartbeat, so a lost last position is repaired); stale cursors are dropped
//!   by a per-sender clock.
//! - Name, colour and registered types travel on the reliable channel when they change,
//!   when a peer joins, and with each heartbeat.
//! - A peer not heard from for [`PresenceConfig::away_after`] gets [`Away`]; after
//!   [`PresenceConfig::remove_after`] its presence components are removed. A peer that
//!   exits cleanly says goodbye and its presence goes at once (its entity follows
//!   when the link closes). Timeouts run on Bevy's real-time clock.
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! /// Extra presence state: what the player is doing.
//! #[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
//! enum Activity { Idle, Typing }
//!
//! fn setup(mut me: ResMut<LocalPresence>) {
//!     me.name = "ada".into();
//!     me.color = Color::srgb(0.9, 0.3, 0.2);
//!     me.insert(Activity::Typing);
//! }
//!
//! fn follow_cursor(mut me: ResMut<LocalPresence>, time: Res<Time>) {
//!     me.cursor = Some(Vec2::new(time.elapsed_secs().sin(), 0.0) * 100.0);
//! }
//!
//! fn list_players(players: Query<(&PeerPresence, Option<&PeerCursor>, Has<Away>, Option<&Activity>)>) {
//!     for (presence, cursor, away, activity) in &players {
//!         let cursor = cursor.and_then(|c| c.0);
//!         debug!("{} at {cursor:?}, away: {away}, doing {activity:?}", presence.name);
//!     }
//! }
//!
//! let mut app = App::new();
//! app.add_plugins(MinimalPlugins)
//!     .add_plugins(PeerSyncPlugin::new("ws://127.0.0.1:3536/lobby"))
//!     .sync_component::<Activity>(Route::Presence)
//!     .add_systems(Startup, setup)
//!     .add_systems(Update, (follow_cursor, list_players));
//! ```

use std::any::TypeId;
use std::time::Duration;

use bevy::ecs::system::SystemParam;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};

use crate::net::peer::{Peer, PeerJoined, PeerLink, Peers};
use crate::net::session::{Inbox, Outbox, Recipients};
use crate::net::stats::{DropReason, PeerStats};
use crate::net::transport::Channel;
use crate::net::wire::{Message, read_varint, write_varint};
use crate::registry::{InsertFn, RemoveFn, Route, SyncRegistry, TypeFns};
use crate::schedule::{PeerSyncSystems, StageAppExt};

/// Presence timing.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct PresenceConfig {
    /// How often presence is resent when nothing changed (it doubles as a liveness
    /// signal).
    pub heartbeat: Duration,
    /// A peer not heard from for this long is marked [`Away`].
    pub away_after: Duration,
    /// A peer not heard from for this long has its presence removed.
    pub remove_after: Duration,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            away_after: Duration::from_secs(3),
            remove_after: Duration::from_secs(15),
        }
    }
}

/// Longest display name sent or accepted, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Largest encoded extra presence value sent or accepted, in bytes.
pub const MAX_EXTRA_LEN: usize = 4096;

/// What this peer shows the others. Edit it; changes go out the same frame.
#[derive(Resource, Debug, Clone, PartialEq)]
pub struct LocalPresence {
    /// Display name.
    pub name: String,
    /// Colour (sent as 8-bit sRGBA).
    pub color: Color,
    /// Cursor position in whatever space the game uses, or `None` when it is not over
    /// the shared space.
    pub cursor: Option<Vec2>,
    extras: HashMap<TypeId, Vec<u8>>,
}

impl Default for LocalPresence {
    fn default() -> Self {
        Self {
            name: String::new(),
            color: Color::WHITE,
            cursor: None,
            extras: HashMap::default(),
        }
    }
}

impl LocalPresence {
    /// A presence with this name and colour, no cursor yet.
    pub fn new(name: impl Into<String>, color: Color) -> Self {
        Self {
            name: name.into(),
            color,
            ..Self::default()
        }
    }

    /// Publishes `value` as this peer's `T`. `T` must be registered with
    /// `app.sync_component::<T>(Route::Presence)`; a value that does not encode, or
    /// encodes to more than [`MAX_EXTRA_LEN`] bytes, is not published (and logged).
    pub fn insert<T: Component + Serialize>(&mut self, value: T) {
        let mut bytes = Vec::new();
        match crate::net::wire::codec::encode_into(&value, &mut bytes) {
            Ok(()) if bytes.len() <= MAX_EXTRA_LEN => {
                self.extras.insert(TypeId::of::<T>(), bytes);
            }
            Ok(()) => warn!(
                "presence value `{}` is `{}` bytes, over the `{MAX_EXTRA_LEN}`-byte limit; not published",
                std::any::type_name::<T>(),
                bytes.len()
            ),
            Err(error) => warn!(
                "presence value `{}` does not encode: {error}",
                std::any::type_name::<T>()
            ),
        }
    }

    /// Stops publishing `T`.
    pub fn remove<T: Component>(&mut self) {
        self.extras.remove(&TypeId::of::<T>());
    }
}

/// A remote peer's name and colour, on its [`Peer`] entity.
#[derive(Component, Debug, Clone, PartialEq)]
pub struct PeerPresence {
    /// Display name.
    pub name: String,
    /// Colour.
    pub color: Color,
}

/// A remote peer's cursor, on its [`Peer`] entity.
#[derive(Component, Debug, Clone, Copy, PartialEq, Default)]
pub struct PeerCursor(pub Option<Vec2>);

/// Marks a remote peer not heard from for [`PresenceConfig::away_after`].
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Away;

/// Receive-side bookkeeping on each peer entity.
#[derive(Component, Debug, Clone, Default)]
struct Heard {
    last: Duration,
    cursor_clock: Option<u32>,
    removed: bool,
}

#[derive(Resource, Debug, Default)]
struct PresenceSender {
    clock: u32,
    last_heartbeat: Option<Duration>,
    sent: Option<LocalPresence>,
}

const CURSOR: u8 = 0;
const STATE: u8 = 1;
const BYE: u8 = 2;

/// Adds presence. Part of [`crate::PeerSyncPlugin`].
pub(crate) fn plugin(app: &mut App) {
    app.init_resource::<PresenceConfig>()
        .init_resource::<LocalPresence>()
        .init_resource::<PresenceSender>()
        .add_stage_systems(
            PeerSyncSystems::Apply,
            (start_heard, receive_presence, expire_presence).chain(),
        )
        .add_stage_systems(PeerSyncSystems::Collect, send_presence);
}

/// Registers `T` as presence state under `name`. Called by
/// `sync_component::<T>(Route::Presence)`.
pub(crate) fn register<T>(app: &mut App, name: String)
where
    T: Component + Serialize + DeserializeOwned,
{
    let fns = TypeFns {
        presence: Some((
            |entity, bytes| {
                let value: T = crate::net::wire::codec::decode(bytes)?;
                entity.insert(value);
                Ok(())
            },
            |entity| {
                entity.remove::<T>();
            },
        )),
        ..TypeFns::EMPTY
    };
    crate::registry::register::<T>(app, name, Route::Presence, fns);
}

/// Encodes a cursor update.
#[doc(hidden)]
pub fn encode_cursor(clock: u32, cursor: Option<Vec2>) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.push(CURSOR);
    write_varint(&mut out, u64::from(clock));
    match cursor {
        None => out.push(0),
        Some(at) => {
            out.push(1);
            out.extend_from_slice(&at.x.to_le_bytes());
            out.extend_from_slice(&at.y.to_le_bytes());
        }
    }
    out
}

fn encode_state(presence: &LocalPresence, registry: &SyncRegistry) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(STATE);
    let name = &presence.name[..presence.name.floor_char_boundary(MAX_NAME_LEN)];
    write_varint(&mut out, name.len() as u64);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&presence.color.to_srgba().to_u8_array());
    let extras: Vec<(u16, &Vec<u8>)> = registry
        .presence_types()
        .filter_map(|(index, type_id, _)| presence.extras.get(&type_id).map(|b| (index, b)))
        .collect();
    write_varint(&mut out, extras.len() as u64);
    for (index, bytes) in extras {
        write_varint(&mut out, u64::from(index));
        write_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    out
}

/// A decoded presence message.
#[derive(Debug, Clone, PartialEq)]
enum Decoded {
    Cursor {
        clock: u32,
        cursor: Option<Vec2>,
    },
    State {
        name: String,
        color: [u8; 4],
        extras: Vec<(u16, Vec<u8>)>,
    },
    Bye,
}

/// Decodes a presence body; `known` are the wire indices of the presence types.
fn decode(body: &[u8], known: &[u16]) -> Result<Decoded, DropReason> {
    let mut at = 1;
    let malformed = DropReason::Malformed;
    let decoded = match body.first() {
        Some(&CURSOR) => {
            let clock = read_varint(body, &mut at)
                .and_then(|c| u32::try_from(c).ok())
                .ok_or(malformed)?;
            let cursor = match body.get(at) {
                Some(0) => {
                    at += 1;
                    None
                }
                Some(1) => {
                    let xy = body.get(at + 1..at + 9).ok_or(malformed)?;
                    at += 9;
                    let x = f32::from_le_bytes(xy[..4].try_into().expect("4 bytes"));
                    let y = f32::from_le_bytes(xy[4..].try_into().expect("4 bytes"));
                    if !x.is_finite() || !y.is_finite() {
                        return Err(malformed);
                    }
                    Some(Vec2::new(x, y))
                }
                _ => return Err(malformed),
            };
            Decoded::Cursor { clock, cursor }
        }
        Some(&STATE) => {
            let len = read_varint(body, &mut at).ok_or(malformed)? as usize;
            if len > MAX_NAME_LEN {
                return Err(DropReason::Oversized);
            }
            let name = body.get(at..at + len).ok_or(malformed)?;
            let name = std::str::from_utf8(name).map_err(|_| malformed)?.to_owned();
            at += len;
            let color: [u8; 4] = body
                .get(at..at + 4)
                .ok_or(malformed)?
                .try_into()
                .expect("4 bytes");
            at += 4;
            let count = read_varint(body, &mut at).ok_or(malformed)? as usize;
            if count > known.len() {
                return Err(DropReason::Unknown);
            }
            let mut extras = Vec::with_capacity(count);
            for _ in 0..count {
                let index = read_varint(body, &mut at).ok_or(malformed)?;
                let index = u16::try_from(index).map_err(|_| DropReason::Unknown)?;
                if !known.contains(&index) || extras.iter().any(|(i, _)| *i == index) {
                    return Err(DropReason::Unknown);
                }
                let len = read_varint(body, &mut at).ok_or(malformed)? as usize;
                if len > MAX_EXTRA_LEN {
                    return Err(DropReason::Oversized);
                }
                let bytes = body.get(at..at + len).ok_or(malformed)?.to_vec();
                at += len;
                extras.push((index, bytes));
            }
            Decoded::State {
                name,
                color,
                extras,
            }
        }
        Some(&BYE) => Decoded::Bye,
        _ => return Err(malformed),
    };
    if at != body.len() {
        return Err(malformed);
    }
    Ok(decoded)
}

/// What [`send_presence`] publishes from, and when.
#[derive(SystemParam)]
struct Publishing<'w> {
    time: Res<'w, Time<Real>>,
    config: Res<'w, PresenceConfig>,
    presence: Res<'w, LocalPresence>,
    registry: Res<'w, SyncRegistry>,
}

fn send_presence(
    publishing: Publishing,
    mut sender: ResMut<PresenceSender>,
    mut joined: MessageReader<PeerJoined>,
    mut exits: MessageReader<AppExit>,
    mut outbox: ResMut<Outbox>,
) {
    let Publishing {
        time,
        config,
        presence,
        registry,
    } = publishing;
    if exits.read().next().is_some() {
        outbox.push(
            Recipients::All,
            Channel::Reliable,
            Message::Presence(Bytes::from_static(&[BYE])),
        );
        return;
    }
    let now = time.elapsed();
    let heartbeat = sender
        .last_heartbeat
        .is_none_or(|last| now >= last + config.heartbeat);
    if heartbeat {
        sender.last_heartbeat = Some(now);
    }
    let sent = sender.sent.as_ref();
    let cursor_changed = sent.is_none_or(|s| s.cursor != presence.cursor);
    let state_changed = sent.is_none_or(|s| {
        s.name != presence.name || s.color != presence.color || s.extras != presence.extras
    });
    // Newly joined peers get everything at once: one of them alone, several as all.
    let new_peers: Vec<_> = joined.read().map(|j| j.peer).collect();
    let to_new = match new_peers.as_slice() {
        [] => None,
        [peer] => Some(Recipients::Peer(*peer)),
        _ => Some(Recipients::All),
    };
    let state_to = (heartbeat || state_changed)
        .then_some(Recipients::All)
        .or(to_new);
    let cursor_to = (heartbeat || cursor_changed)
        .then_some(Recipients::All)
        .or(to_new);
    if let Some(to) = state_to {
        outbox.push(
            to,
            Channel::Reliable,
            Message::Presence(encode_state(&presence, &registry).into()),
        );
    }
    if let Some(to) = cursor_to {
        sender.clock = sender.clock.wrapping_add(1);
        outbox.push(
            to,
            Channel::Unreliable,
            Message::Presence(encode_cursor(sender.clock, presence.cursor).into()),
        );
    }
    if cursor_changed || state_changed {
        sender.sent = Some(presence.clone());
    }
}

fn receive_presence(world: &mut World) {
    let messages = std::mem::take(&mut world.resource_mut::<Inbox>().presence);
    if messages.is_empty() {
        return;
    }
    let now = world.resource::<Time<Real>>().elapsed();
    world.resource_scope(|world, registry: Mut<SyncRegistry>| {
        let types: Vec<(u16, InsertFn, RemoveFn)> = registry
            .presence_types()
            .map(|(index, _, (insert, remove))| (index, insert, remove))
            .collect();
        let known: Vec<u16> = types.iter().map(|(index, _, _)| *index).collect();
        for (peer, _channel, body) in messages {
            let Some(entity) = world.resource::<Peers>().entity(peer) else {
                continue;
            };
            let Ok(mut entity) = world.get_entity_mut(entity) else {
                continue;
            };
            if entity.get::<PeerLink>() != Some(&PeerLink::Connected) {
                continue;
            }
            let drop = |entity: &mut EntityWorldMut, reason: DropReason| {
                debug!("dropped a presence message from peer `{peer}`: {reason:?}");
                if let Some(mut stats) = entity.get_mut::<PeerStats>() {
                    stats.count_drop(reason);
                }
            };
            let decoded = match decode(&body, &known) {
                Ok(decoded) => decoded,
                Err(reason) => {
                    drop(&mut entity, reason);
                    continue;
                }
            };
            let mut heard = entity.get::<Heard>().cloned().unwrap_or_default();
            heard.last = now;
            match decoded {
                Decoded::Bye => {
                    debug!("peer `{peer}` said goodbye");
                    remove_presence(&mut entity, &registry);
                    heard.removed = true;
                    entity.insert(heard);
                    continue;
                }
                Decoded::Cursor { clock, cursor } => {
                    let stale = heard.cursor_clock.is_some_and(|last| {
                        clock.wrapping_sub(last).wrapping_sub(1) >= u32::MAX / 2
                    });
                    if stale {
                        drop(&mut entity, DropReason::Stale);
                    } else {
                        heard.cursor_clock = Some(clock);
                        if entity.get::<PeerCursor>().map(|c| c.0) != Some(cursor) {
                            entity.insert(PeerCursor(cursor));
                        }
                    }
                }
                Decoded::State {
                    name,
                    color,
                    extras,
                } => {
                    let presence = PeerPresence {
                        name,
                        color: Color::Srgba(Srgba::from_u8_array(color)),
                    };
                    if entity.get::<PeerPresence>() != Some(&presence) {
                        entity.insert(presence);
                    }
                    for &(index, insert, remove) in &types {
                        match extras.iter().find(|(i, _)| *i == index) {
                            Some((_, bytes)) => {
                                if let Err(error) = insert(&mut entity, bytes) {
                                    debug!("dropped a presence value from peer `{peer}`: {error}");
                                    drop(&mut entity, DropReason::Malformed);
                                }
                            }
                            None => remove(&mut entity),
                        }
                    }
                    heard.removed = false;
                }
            }
            if entity.contains::<Away>() {
                entity.remove::<Away>();
            }
            entity.insert(heard);
        }
    });
}

fn remove_presence(entity: &mut EntityWorldMut, registry: &SyncRegistry) {
    entity.remove::<(PeerPresence, PeerCursor, Away)>();
    for (_, _, (_, remove)) in registry.presence_types() {
        remove(entity);
    }
}

fn expire_presence(world: &mut World) {
    let now = world.resource::<Time<Real>>().elapsed();
    let config = world.resource::<PresenceConfig>().clone();
    let mut away = Vec::new();
    let mut gone = Vec::new();
    let mut query = world.query_filtered::<(Entity, &mut Heard, Has<Away>), With<Peer>>();
    for (entity, mut heard, is_away) in query.iter_mut(world) {
        if heard.removed {
            continue;
        }
        let silent = now.saturating_sub(heard.last);
        if silent >= config.remove_after {
            heard.removed = true;
            gone.push(entity);
        } else if silent >= config.away_after && !is_away {
            away.push(entity);
        }
    }
    for entity in away {
        world.entity_mut(entity).insert(Away);
    }
    if gone.is_empty() {
        return;
    }
    world.resource_scope(|world, registry: Mut<SyncRegistry>| {
        for entity in gone {
            remove_presence(&mut world.entity_mut(entity), &registry);
        }
    });
}

/// Starts the silence clock of every peer when its handshake finishes.
pub(crate) fn start_heard(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut joined: MessageReader<PeerJoined>,
) {
    for joined in joined.read() {
        if let Ok(mut entity) = commands.get_entity(joined.entity) {
            entity.insert(Heard {
                last: time.elapsed(),
                ..Heard::default()
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let cursor = encode_cursor(300, Some(Vec2::new(1.5, -2.0)));
        assert_eq!(
            decode(&cursor, &[]),
            Ok(Decoded::Cursor {
                clock: 300,
                cursor: Some(Vec2::new(1.5, -2.0))
            })
        );
        let mut presence = LocalPresence {
            name: "ada".into(),
            ..default()
        };
        presence.extras.insert(TypeId::of::<Away>(), vec![7, 8]);
        let mut registry = SyncRegistry::default();
        registry.register::<u8>("other".into(), Route::Durable, TypeFns::EMPTY);
        let fns = TypeFns {
            presence: Some((|_, _| Ok(()), |_| {})),
            ..TypeFns::EMPTY
        };
        registry.register::<Away>("away".into(), Route::Presence, fns);
        let state = encode_state(&presence, &registry);
        assert_eq!(
            decode(&state, &[1]),
            Ok(Decoded::State {
                name: "ada".into(),
                color: [255; 4],
                extras: vec![(1, vec![7, 8])]
            })
        );
        assert_eq!(decode(&state, &[]), Err(DropReason::Unknown));
        assert_eq!(decode(&state, &[0]), Err(DropReason::Unknown));
        for body in [&cursor, &state] {
            for cut in 0..body.len() {
                assert!(decode(&body[..cut], &[1]).is_err(), "cut at {cut}");
            }
            let mut long = body.clone();
            long.push(0);
            assert!(decode(&long, &[1]).is_err());
        }
        let nan = encode_cursor(1, Some(Vec2::new(f32::NAN, 0.0)));
        assert_eq!(decode(&nan, &[]), Err(DropReason::Malformed));
    }
}
