//! Real WebRTC rooms for tests: an in-process signaling server on 127.0.0.1 and
//! `App`s with `MinimalPlugins` and `PeerSyncPlugin`, no ICE servers.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::net::signaling::{LocalSignalingServer, start_signaling_server};
use bevy_peer_sync::prelude::*;

/// How many peers `app` has finished a handshake with.
pub fn connected(app: &mut App) -> usize {
    let world = app.world_mut();
    world
        .query::<&PeerLink>()
        .iter(world)
        .filter(|l| **l == PeerLink::Connected)
        .count()
}

/// One frame of every app, then a millisecond for the sockets.
pub fn update_all(apps: &mut [App]) {
    for app in apps.iter_mut() {
        app.update();
    }
    std::thread::sleep(Duration::from_millis(1));
}

/// `peers` apps in room `room`, each set up by `setup`, once they form a full mesh
/// (30 s at most). Keep the server alive as long as the apps.
pub fn webrtc_room(
    room: &str,
    peers: usize,
    setup: impl Fn(&mut App),
) -> (LocalSignalingServer, Vec<App>, Duration) {
    let server = start_signaling_server(([127, 0, 0, 1], 0)).expect("signaling server starts");
    let url = server.room_url(room);
    let mut apps: Vec<App> = (0..peers)
        .map(|_| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins)
                .add_plugins(PeerSyncPlugin::new(url.clone()));
            setup(&mut app);
            app
        })
        .collect();
    let start = Instant::now();
    while !apps.iter_mut().all(|app| connected(app) == peers - 1) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "peers did not connect in 30 s"
        );
        update_all(&mut apps);
    }
    (server, apps, start.elapsed())
}
