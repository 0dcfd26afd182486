//! Connection life over the in-memory transport: the state a game sees, and a peer
//! that goes offline, keeps editing, and comes back without losing anything.

use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::durable::{EntityDocConfig, OwnerLeftPolicy};
use bevy_peer_sync::entity::NetEntities;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::Text;
use serde::{Deserialize, Serialize};

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Card {
    x: i64,
    y: i64,
    label: String,
}

#[derive(Component, Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
struct Pos(f32);

fn setup(app: &mut App) {
    app.sync_component::<Card>(Route::Durable)
        .sync_component::<Pos>(Route::Transient)
        .insert_resource(EntityDocConfig {
            owner_left: OwnerLeftPolicy::Orphan,
            hold_timeout: Duration::from_secs(2),
            ..Default::default()
        });
}

fn connection(room: &TestRoom, peer: usize) -> ConnectionState {
    room.app(peer).world().resource::<Connection>().state()
}

fn note(room: &TestRoom, peer: usize) -> String {
    room.app(peer)
        .world()
        .resource::<SharedDoc>()
        .text_string("note")
}

fn type_note(room: &mut TestRoom, peer: usize, at: u32, text: &str) {
    let doc = room.app(peer).world().resource::<SharedDoc>();
    doc.text("note").insert(&mut doc.transact_mut(), at, text);
}

fn cards(room: &mut TestRoom, peer: usize) -> Vec<(NetId, Card)> {
    let world = room.app_mut(peer).world_mut();
    let mut cards: Vec<_> = world
        .query::<(&NetId, &Card)>()
        .iter(world)
        .map(|(id, card)| (*id, card.clone()))
        .collect();
    cards.sort_by_key(|(id, _)| *id);
    cards
}

#[test]
fn offline_edits_on_both_sides_merge_on_rejoin() {
    let mut room = TestRoom::new(61);
    let a = room.add_peer(setup);
    let b = room.add_peer(setup);
    assert_eq!(connection(&room, a), ConnectionState::Connecting);
    assert!(room.step_until(5, TestRoom::fully_connected));
    assert_eq!(connection(&room, a), ConnectionState::Connected);

    // B spawns a card; it owns it.
    let on_b = room
        .app_mut(b)
        .world_mut()
        .spawn((
            Replicated,
            Card {
                x: 0,
                y: 0,
                label: "card".into(),
            },
            Pos(0.0),
        ))
        .id();
    type_note(&mut room, a, 0, "shared note");
    room.step_n(3);
    let id = *room.app(b).world().get::<NetId>(on_b).unwrap();
    let on_a = room
        .app(a)
        .world()
        .resource::<NetEntities>()
        .entity(id)
        .unwrap();

    // B drops off the network. It sees itself offline; A sees it leave.
    room.disconnect(b);
    room.step_n(2);
    assert_eq!(connection(&room, b), ConnectionState::Offline);
    assert_eq!(room.connected_count(a), 0);
    let changes: Vec<ConnectionStateChanged> = room
        .app_mut(b)
        .world_mut()
        .resource_mut::<Messages<ConnectionStateChanged>>()
        .drain()
        .collect();
    assert_eq!(changes.last().unwrap().to, ConnectionState::Offline);

    // Both edit while apart: the same text, and different fields of one component
    // (A claims the card B left orphaned; B goes on editing what it owned).
    room.app_mut(a)
        .world_mut()
        .write_message(ClaimOwnership { entity: on_a });
    room.step_n(2);
    type_note(&mut room, a, 0, "A: ");
    type_note(&mut room, b, 11, " (B was here)");
    room.app_mut(a).world_mut().get_mut::<Card>(on_a).unwrap().x = 10;
    room.app_mut(b)
        .world_mut()
        .get_mut::<Card>(on_b)
        .unwrap()
        .label = "renamed offline".into();
    *room.app_mut(a).world_mut().get_mut::<Pos>(on_a).unwrap() = Pos(42.0);
    room.step_n(10);
    assert_eq!(
        note(&room, b),
        "shared note (B was here)",
        "B edits offline"
    );

    room.reconnect(b);
    assert!(room.step_until(10, TestRoom::fully_connected));
    assert_eq!(connection(&room, b), ConnectionState::Connected);
    assert!(
        room.step_until(120, |room| {
            note(room, a) == note(room, b)
                && cards(room, a) == cards(room, b)
                && room.app(b).world().get::<Pos>(on_b) == Some(&Pos(42.0))
        }),
        "converged: {:?} / {:?}",
        cards(&mut room, a),
        cards(&mut room, b)
    );
    assert_eq!(note(&room, a), "A: shared note (B was here)");
    let card = &cards(&mut room, a)[0].1;
    assert_eq!(
        (card.x, card.label.as_str()),
        (10, "renamed offline"),
        "both fields survive"
    );
    let replica_a = room.app(a).world().resource::<LocalPeer>().replica();
    assert_eq!(
        room.app(b).world().get::<Owner>(on_b).unwrap().0,
        Some(replica_a),
        "the claim stands"
    );
}

#[test]
fn undo_reverts_only_the_local_peers_edit_on_every_peer() {
    use bevy_peer_sync::undo::{Redo, Undo, UndoPlugin};
    let with_undo = |app: &mut App| {
        app.add_plugins(UndoPlugin::texts(["note"]));
    };
    let mut room = TestRoom::new(62);
    let a = room.add_peer(with_undo);
    let b = room.add_peer(with_undo);
    assert!(room.step_until(5, TestRoom::fully_connected));
    type_note(&mut room, a, 0, "base");
    room.step_n(60);
    type_note(&mut room, a, 4, " by A");
    room.step_n(3);
    type_note(&mut room, b, 0, "B says: ");
    room.step_n(3);
    assert_eq!(note(&room, a), "B says: base by A");

    room.app_mut(a).world_mut().write_message(Undo);
    room.step_n(3);
    for peer in [a, b] {
        assert_eq!(
            note(&room, peer),
            "B says: base",
            "peer {peer} after A's undo"
        );
    }
    room.app_mut(a).world_mut().write_message(Redo);
    room.step_n(3);
    for peer in [a, b] {
        assert_eq!(
            note(&room, peer),
            "B says: base by A",
            "peer {peer} after redo"
        );
    }
    // B's undo takes back only B's edit.
    room.app_mut(b).world_mut().write_message(Undo);
    room.step_n(3);
    for peer in [a, b] {
        assert_eq!(note(&room, peer), "base by A", "peer {peer} after B's undo");
    }
}
