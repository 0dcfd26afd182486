//! Local-first saves: a peer saves, restarts from its save, and merges with the room;
//! damaged saves are refused whole with a clear error and never touch the state.

use std::path::PathBuf;
use std::time::Duration;

use bevy::prelude::*;
use bevy_peer_sync::persistence::{Persistence, PersistenceFailed, PersistencePlugin, decode_save};
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use bevy_peer_sync::yrs::Text;
use serde::{Deserialize, Serialize};

#[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Label(String);

fn temp_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bevy_peer_sync-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("room.bpsy")
}

fn setup_with_save(path: PathBuf) -> impl FnOnce(&mut App) {
    move |app: &mut App| {
        app.sync_component::<Label>(Route::Durable)
            .add_plugins(PersistencePlugin::file(path).with_autosave(Duration::from_millis(100)));
    }
}

fn note(app: &App) -> String {
    app.world().resource::<SharedDoc>().text_string("note")
}

fn labels(app: &mut App) -> Vec<String> {
    let world = app.world_mut();
    let mut labels: Vec<String> = world
        .query::<&Label>()
        .iter(world)
        .map(|l| l.0.clone())
        .collect();
    labels.sort();
    labels
}

fn failures(app: &mut App) -> Vec<String> {
    app.world_mut()
        .resource_mut::<Messages<PersistenceFailed>>()
        .drain()
        .map(|f| f.error)
        .collect()
}

#[test]
fn a_save_survives_a_restart_and_merges_with_the_room() {
    let path = temp_path("restart");
    let mut room = TestRoom::new(71);
    let a = room.add_peer(setup_with_save(path.clone()));
    room.step();
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("note")
            .insert(&mut doc.transact_mut(), 0, "written alone");
    }
    room.app_mut(a)
        .world_mut()
        .spawn((Replicated, Label("mine".into())));
    room.step_n(10);
    assert!(room.app(a).world().resource::<Persistence>().saves() >= 1);
    drop(room);

    // Restart from the save, alone: state is back before anyone is met.
    let mut room = TestRoom::new(72);
    let a = room.add_peer(setup_with_save(path.clone()));
    room.step_n(2);
    assert_eq!(
        room.app(a).world().resource::<Persistence>().loaded(),
        Some(true)
    );
    assert_eq!(note(room.app(a)), "written alone");
    assert_eq!(labels(room.app_mut(a)), ["mine"]);

    // A peer with its own history joins: both merge.
    let b = room.add_peer(|app| {
        app.sync_component::<Label>(Route::Durable);
    });
    {
        let doc = room.app(b).world().resource::<SharedDoc>();
        doc.text("note").insert(&mut doc.transact_mut(), 0, "B: ");
    }
    room.app_mut(b)
        .world_mut()
        .spawn((Replicated, Label("theirs".into())));
    assert!(room.step_until(30, |room| {
        note(room.app(a)) == note(room.app(b))
            && labels(room.app_mut(a)).len() == 2
            && labels(room.app_mut(a)) == labels(room.app_mut(b))
    }));
    assert!(note(room.app(a)).contains("written alone") && note(room.app(a)).contains("B: "));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn damaged_saves_are_refused_whole_and_set_aside() {
    let path = temp_path("damaged");
    let mut room = TestRoom::new(73);
    let a = room.add_peer(setup_with_save(path.clone()));
    room.step();
    {
        let doc = room.app(a).world().resource::<SharedDoc>();
        doc.text("note")
            .insert(&mut doc.transact_mut(), 0, "good state");
    }
    room.app_mut(a)
        .world_mut()
        .spawn((Replicated, Label("x".into())));
    room.step_n(10);
    drop(room);
    let good = std::fs::read(&path).unwrap();
    assert!(decode_save(&good).is_ok());

    // Every truncation and a spread of byte flips: each refused by the decoder.
    for cut in 0..good.len() {
        assert!(decode_save(&good[..cut]).is_err(), "truncated at {cut}");
    }
    for at in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        assert!(decode_save(&bad).is_err(), "flip at {at}");
    }

    // A peer starting from a damaged save: clear error, no panic, the room's state
    // (from a peer that has it) wins, the damaged file is kept aside.
    for (what, bad) in [
        ("truncated", good[..good.len() / 2].to_vec()),
        ("flipped", {
            let mut bad = good.clone();
            bad[good.len() / 3] ^= 0xff;
            bad
        }),
        ("not a save", b"hello, world".to_vec()),
    ] {
        std::fs::write(&path, &bad).unwrap();
        let mut room = TestRoom::new(74);
        let holder = room.add_peer(|app| {
            app.sync_component::<Label>(Route::Durable);
        });
        {
            let doc = room.app(holder).world().resource::<SharedDoc>();
            doc.text("note")
                .insert(&mut doc.transact_mut(), 0, "room state");
        }
        let a = room.add_peer(setup_with_save(path.clone()));
        room.step_n(2);
        let errors = failures(room.app_mut(a));
        assert_eq!(errors.len(), 1, "{what}: {errors:?}");
        assert!(
            errors[0].contains("could not be loaded"),
            "{what}: {}",
            errors[0]
        );
        assert!(errors[0].contains(".corrupt"), "{what}: {}", errors[0]);
        assert_eq!(
            std::fs::read(path.with_extension("bpsy.corrupt")).unwrap(),
            bad,
            "{what}"
        );
        assert!(
            room.step_until(20, |room| note(room.app(a)) == "room state"),
            "{what}"
        );
        assert!(
            labels(room.app_mut(a)).is_empty(),
            "{what}: nothing of the bad save applied"
        );
        // The next save is a good one.
        room.step_n(10);
        assert!(
            decode_save(&std::fs::read(&path).unwrap()).is_ok(),
            "{what}"
        );
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
