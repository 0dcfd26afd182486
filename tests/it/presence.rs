//! Presence over the in-memory transport with a pinned clock: it appears, updates,
//! goes away and comes back, times out, and a clean exit removes it at once.

use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::{FRAME, TestRoom};
use serde::{Deserialize, Serialize};

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
enum Activity {
    Idle,
    Typing,
}

fn setup(app: &mut App) {
    app.sync_component::<Activity>(Route::Presence)
        .insert_resource(PresenceConfig {
            heartbeat: Duration::from_millis(500),
            away_after: Duration::from_secs(2),
            remove_after: Duration::from_secs(5),
        });
}

type Seen = (String, Option<Vec2>, bool, Option<Activity>);

/// What peer `viewer` shows of peer `shown`.
fn seen(room: &mut TestRoom, viewer: usize, shown: usize) -> Option<Seen> {
    let id = room.peer_id(shown)?;
    let world = room.app_mut(viewer).world_mut();
    let mut query = world.query::<(
        &Peer,
        &PeerPresence,
        Option<&PeerCursor>,
        Has<Away>,
        Option<&Activity>,
    )>();
    query
        .iter(world)
        .find(|(peer, ..)| peer.id == id)
        .map(|(_, p, c, away, a)| (p.name.clone(), c.and_then(|c| c.0), away, a.cloned()))
}

fn me(room: &mut TestRoom, peer: usize) -> Mut<'_, LocalPresence> {
    room.app_mut(peer)
        .world_mut()
        .resource_mut::<LocalPresence>()
}

/// One frame for every peer but `frozen` (a hung tab: its link stays up, it says
/// nothing).
fn step_without(room: &mut TestRoom, frozen: usize, frames: usize) {
    for _ in 0..frames {
        room.network.advance(FRAME);
        for peer in 0..room.len() {
            if peer != frozen {
                room.app_mut(peer).update();
            }
        }
    }
}

#[test]
fn presence_appears_updates_goes_away_and_times_out() {
    let mut room = TestRoom::new(51);
    for _ in 0..3 {
        room.add_peer(setup);
    }
    {
        let mut ada = me(&mut room, 0);
        ada.name = "ada".into();
        ada.color = Color::srgb_u8(200, 40, 30);
        ada.insert(Activity::Idle);
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    room.step_n(2);
    for viewer in [1, 2] {
        assert_eq!(
            seen(&mut room, viewer, 0),
            Some(("ada".into(), None, false, Some(Activity::Idle))),
            "peer {viewer} sees ada"
        );
    }
    let color = {
        let world = room.app_mut(1).world_mut();
        world
            .query::<&PeerPresence>()
            .iter(world)
            .find(|p| p.name == "ada")
            .unwrap()
            .color
    };
    assert_eq!(color.to_srgba().to_u8_array(), [200, 40, 30, 255]);

    // The cursor follows every frame; a registered type and the name follow changes.
    for frame in 0..10 {
        me(&mut room, 0).cursor = Some(Vec2::new(frame as f32, 2.0 * frame as f32));
        room.step();
        assert_eq!(
            seen(&mut room, 1, 0).unwrap().1,
            Some(Vec2::new(frame as f32, 2.0 * frame as f32)),
            "cursor at frame {frame}"
        );
    }
    me(&mut room, 0).insert(Activity::Typing);
    me(&mut room, 0).name = "Ada L.".into();
    room.step_n(2);
    assert_eq!(
        seen(&mut room, 2, 0),
        Some((
            "Ada L.".into(),
            Some(Vec2::new(9.0, 18.0)),
            false,
            Some(Activity::Typing)
        ))
    );
    me(&mut room, 0).remove::<Activity>();
    room.step_n(2);
    assert_eq!(seen(&mut room, 2, 0).unwrap().3, None, "removed type goes");

    // Peer 0 hangs: away after 2 s, back when it speaks again.
    step_without(&mut room, 0, 60);
    assert!(!seen(&mut room, 1, 0).unwrap().2, "not away after 1 s");
    step_without(&mut room, 0, 70);
    assert!(seen(&mut room, 1, 0).unwrap().2, "away after 2.2 s");
    me(&mut room, 0).cursor = Some(Vec2::ZERO);
    room.step_n(2);
    assert!(!seen(&mut room, 1, 0).unwrap().2, "back once heard");

    // Silent for 5 s: presence removed, the peer entity stays while its link does.
    step_without(&mut room, 0, 5 * 60 + 10);
    assert_eq!(seen(&mut room, 1, 0), None);
    assert_eq!(room.connected_count(1), 2);
    room.step_n(40);
    assert_eq!(
        seen(&mut room, 1, 0).unwrap().0,
        "Ada L.",
        "restored by heartbeat"
    );
}

#[test]
fn a_clean_exit_removes_presence_at_once() {
    let mut room = TestRoom::new(52);
    for name in ["a", "b"] {
        let peer = room.add_peer(setup);
        me(&mut room, peer).name = name.into();
    }
    assert!(room.step_until(5, TestRoom::fully_connected));
    room.step_n(2);
    assert!(seen(&mut room, 1, 0).is_some());
    room.app_mut(0).world_mut().write_message(AppExit::Success);
    room.step();
    room.step();
    assert_eq!(
        seen(&mut room, 1, 0),
        None,
        "gone the frame after the goodbye"
    );
}

#[test]
fn garbage_presence_is_dropped_and_counted() {
    use bevy_peer_sync::internals::wire::{self, Message};
    use bevy_peer_sync::net::transport::{Packet, TransportIo};

    let mut room = TestRoom::new(53);
    room.add_peer(setup);
    room.add_peer(setup);
    me(&mut room, 0).name = "a".into();
    assert!(room.step_until(5, TestRoom::fully_connected));
    room.step_n(2);
    let from = room.peer_id(0).unwrap();
    let bodies: [&[u8]; 5] = [
        &[],
        &[9],
        &[1, 200, 1],
        &[0, 1, 1, 0, 0],
        &[1, 0, 0, 0, 0, 0, 5],
    ];
    for body in bodies {
        let frame = wire::encode(&Message::Presence(body.to_vec().into())).unwrap();
        room.app_mut(1)
            .world_mut()
            .resource_mut::<TransportIo>()
            .insert_received(Packet {
                peer: from,
                channel: Channel::Reliable,
                bytes: frame,
            });
        room.step();
    }
    let world = room.app_mut(1).world_mut();
    let stats = world.query::<&PeerStats>().single(world).unwrap();
    assert_eq!(stats.dropped_total(), bodies.len() as u64);
    assert_eq!(seen(&mut room, 1, 0).unwrap().0, "a", "state untouched");
}
