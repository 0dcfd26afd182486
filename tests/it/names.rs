//! Stable names: a type's key in the entity document, the handshake's schema and saves
//! is a name the game chooses, or by default the type's name without its module path,
//! so moving a type between modules (or renaming it, with a pinned name) changes
//! nothing on the wire or on disk.

use bevy::prelude::*;
use bevy_peer_sync::durable::EntityDoc;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::{Map, Out, ReadTxn, Transact};

/// The type as the first build had it.
mod before {
    #[derive(
        bevy::prelude::Component, serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug,
    )]
    pub struct Inventory {
        pub gold: u32,
    }
}

/// The same type after a refactor moved it (and, for the pinned case, renamed it).
mod after {
    pub mod items {
        #[derive(
            bevy::prelude::Component, serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug,
        )]
        pub struct Inventory {
            pub gold: u32,
        }

        #[derive(
            bevy::prelude::Component, serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug,
        )]
        pub struct Bag {
            pub gold: u32,
        }
    }
}

/// The component keys of every entity in `peer`'s entity document.
fn keys_in_document(room: &TestRoom, peer: usize) -> Vec<String> {
    let doc = room.app(peer).world().resource::<EntityDoc>();
    let txn = doc.doc().transact();
    let mut keys = Vec::new();
    let Some(root) = txn.get_map("entities") else {
        return keys;
    };
    for (_, entity) in root.iter(&txn) {
        if let Out::YMap(entity) = entity
            && let Some(Out::YMap(components)) = entity.get(&txn, "components")
        {
            keys.extend(components.keys(&txn).map(str::to_owned));
        }
    }
    keys
}

/// Peer a runs the old build, peer b the new one: they shake hands, sync, and store
/// the value under one key. (With `std::any::type_name`, the keys were
/// `names::before::Inventory` and `names::after::items::Inventory`, and the handshake
/// refused the other build.)
#[test]
fn a_type_moved_to_another_module_keeps_its_key() {
    let mut room = TestRoom::new(11);
    let a = room.add_peer(|app| {
        app.sync_component::<before::Inventory>(Route::Durable);
    });
    let b = room.add_peer(|app| {
        app.sync_component::<after::items::Inventory>(Route::Durable);
    });
    assert!(room.step_until(10, TestRoom::fully_connected));
    for peer in [a, b] {
        let registry = room.app(peer).world().resource::<SyncRegistry>();
        assert_eq!(
            registry.schema_strings(),
            vec!["Inventory:durable".to_owned()]
        );
    }
    room.app_mut(a)
        .world_mut()
        .spawn((Replicated, before::Inventory { gold: 7 }));
    room.step_n(5);
    let world = room.app_mut(b).world_mut();
    let seen = world
        .query::<&after::items::Inventory>()
        .single(world)
        .expect("b sees a's inventory")
        .clone();
    assert_eq!(seen, after::items::Inventory { gold: 7 });
    assert_eq!(keys_in_document(&room, a), vec!["Inventory".to_owned()]);
    assert_eq!(keys_in_document(&room, b), vec!["Inventory".to_owned()]);
}

/// A pinned name outlives a rename of the type itself.
#[test]
fn a_pinned_name_survives_a_rename() {
    let mut room = TestRoom::new(12);
    let a = room.add_peer(|app| {
        app.sync_component::<before::Inventory>(Route::Durable.named("inventory"));
    });
    let b = room.add_peer(|app| {
        app.sync_component::<after::items::Bag>(Route::Durable.named("inventory"));
    });
    assert!(room.step_until(10, TestRoom::fully_connected));
    room.app_mut(a)
        .world_mut()
        .spawn((Replicated, before::Inventory { gold: 3 }));
    room.step_n(5);
    let world = room.app_mut(b).world_mut();
    let seen = world
        .query::<&after::items::Bag>()
        .single(world)
        .unwrap()
        .clone();
    assert_eq!(seen, after::items::Bag { gold: 3 });
    assert_eq!(keys_in_document(&room, b), vec!["inventory".to_owned()]);
}

/// Two types of one name in one build must be told apart: the second is refused
/// with a message that says how.
#[test]
#[should_panic(expected = "give one of them its own name with `Route::Durable.named(..)`")]
fn two_types_of_one_name_are_refused_at_start_up() {
    let mut room = TestRoom::new(13);
    room.add_peer(|app| {
        app.sync_component::<before::Inventory>(Route::Durable)
            .sync_component::<after::items::Inventory>(Route::Durable);
    });
}
