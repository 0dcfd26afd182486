//! The real path: an in-process signaling server on 127.0.0.1, three matchbox peers in
//! this process with no ICE servers, handshake and round trips on both channels.
//! Nothing leaves this machine.

use crate::support::webrtc as support;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::entity::NetId;
use bevy_peer_sync::prelude::*;
use bytes::Bytes;
use support::{connected, update_all, webrtc_room};

fn drain(app: &mut App) -> Vec<PayloadReceived> {
    app.world_mut()
        .resource_mut::<Messages<PayloadReceived>>()
        .drain()
        .collect()
}

#[test]
fn three_peers_handshake_and_round_trip_over_webrtc() {
    let (server, mut apps, handshake) = webrtc_room("webrtc_test", 3, |_| {});
    println!("3-peer mesh connected and handshaken in {handshake:?}");

    // Round trip on each channel: peer 0 sends, every other peer echoes.
    for channel in Channel::ALL {
        let start = Instant::now();
        let mut echoes = 0;
        let mut last_send = None::<Instant>;
        while echoes < 2 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no round trip on {channel:?}"
            );
            // Unreliable may lose a datagram: resend every 200 ms until both echo.
            if last_send.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
                apps[0].world_mut().write_message(SendPayload {
                    to: Recipients::All,
                    channel,
                    payload: Bytes::from_static(b"ping"),
                });
                last_send = Some(Instant::now());
            }
            update_all(&mut apps);
            for app in &mut apps[1..] {
                for got in drain(app) {
                    if got.payload[..] == *b"ping" {
                        app.world_mut().write_message(SendPayload {
                            to: Recipients::Peer(got.from),
                            channel,
                            payload: Bytes::from_static(b"pong"),
                        });
                    }
                }
            }
            echoes += drain(&mut apps[0])
                .iter()
                .filter(|p| p.payload[..] == *b"pong")
                .count();
        }
        println!("{channel:?} round trip to 2 peers in {:?}", start.elapsed());
    }

    // A peer leaving is seen by the others.
    let leaver = apps.pop().expect("three apps");
    drop(leaver);
    let start = Instant::now();
    while !apps.iter_mut().all(|app| connected(app) == 1) {
        assert!(start.elapsed() < Duration::from_secs(20), "leave not seen");
        update_all(&mut apps);
    }
    drop(server);
}

#[derive(Component, serde::Serialize, serde::Deserialize, Clone, PartialEq, Debug)]
struct Tag(u32);

#[test]
fn two_hundred_moving_entities_arrive_over_webrtc() {
    use bevy_peer_sync::entity::NetEntities;

    let (_server, mut apps, _) = webrtc_room("transient_test", 2, |app| {
        app.sync_component::<Tag>(Route::Durable)
            .sync_transform(TransformEncoding::Quantized {
                position_precision: 0.001,
            });
    });
    let entities: Vec<Entity> = (0..200)
        .map(|n| {
            apps[0]
                .world_mut()
                .spawn((Replicated, Tag(n), Transform::default()))
                .id()
        })
        .collect();
    // Move everything for 2 s at about 60 Hz.
    let start = Instant::now();
    let mut frame = 0u32;
    while start.elapsed() < Duration::from_secs(2) {
        frame += 1;
        for (n, entity) in entities.iter().enumerate() {
            let mut transform = apps[0].world_mut().get_mut::<Transform>(*entity).unwrap();
            transform.translation = Vec3::new(n as f32, frame as f32 * 0.01, 0.0);
        }
        for app in apps.iter_mut() {
            app.update();
        }
        std::thread::sleep(Duration::from_millis(16));
    }
    // Settle: the receiver plays back slightly in the past.
    let settle = Instant::now();
    let expected: Vec<(NetId, Vec3)> = entities
        .iter()
        .map(|e| {
            let world = apps[0].world();
            (
                *world.get::<NetId>(*e).unwrap(),
                world.get::<Transform>(*e).unwrap().translation,
            )
        })
        .collect();
    loop {
        update_all(&mut apps);
        let world = apps[1].world();
        let net = world.resource::<NetEntities>();
        let arrived = expected.iter().all(|(id, position)| {
            net.entity(*id)
                .and_then(|e| world.get::<Transform>(e))
                .is_some_and(|t| (t.translation - *position).abs().max_element() < 0.001)
        });
        if arrived {
            break;
        }
        assert!(
            settle.elapsed() < Duration::from_secs(5),
            "final positions did not arrive"
        );
    }
    println!(
        "200 entities, {frame} frames, final positions arrived {:?} after the last move",
        settle.elapsed()
    );
}

/// Runs every app until `done` holds, or fails with `what` after `limit`.
fn run_until(
    apps: &mut [App],
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&mut [App]) -> bool,
) {
    let start = Instant::now();
    while !done(apps) {
        assert!(start.elapsed() < limit, "{what} (waited {limit:?})");
        update_all(apps);
    }
}

fn note(app: &App) -> String {
    app.world().resource::<SharedDoc>().text_string("note")
}

fn type_note(app: &App, at: u32, text: &str) {
    use bevy_peer_sync::yrs::Text;
    let doc = app.world().resource::<SharedDoc>();
    doc.text("note").insert(&mut doc.transact_mut(), at, text);
}

fn state(app: &App) -> ConnectionState {
    app.world().resource::<Connection>().state()
}

#[test]
fn a_peer_that_drops_its_socket_reconnects_and_converges() {
    let (server, mut apps, _) = webrtc_room("reconnect", 2, |_| {});
    type_note(&apps[0], 0, "before");
    run_until(
        &mut apps,
        Duration::from_secs(10),
        "first edit arrives",
        |apps| note(&apps[1]) == "before",
    );

    // Peer 1 drops its socket; peer 0 sees the link close.
    apps[1].world_mut().write_message(SetOnline::Offline);
    run_until(
        &mut apps,
        Duration::from_secs(20),
        "the link closes on both sides",
        |apps| connected(&mut apps[0]) == 0 && state(&apps[1]) == ConnectionState::Offline,
    );
    // Both edit while apart.
    type_note(&apps[0], 0, "A+");
    type_note(&apps[1], 6, "+B");
    for _ in 0..20 {
        update_all(&mut apps);
    }

    let start = Instant::now();
    apps[1].world_mut().write_message(SetOnline::Online);
    run_until(
        &mut apps,
        Duration::from_secs(30),
        "peers reconnect and converge",
        |apps| {
            apps.iter_mut()
                .all(|app| connected(app) == 1 && note(app) == "A+before+B")
        },
    );
    println!("reconnected and converged in {:?}", start.elapsed());
    assert_eq!(state(&apps[1]), ConnectionState::Connected);
    drop(server);
}

#[test]
fn links_outlive_a_signaling_restart_and_the_room_refills() {
    use bevy_peer_sync::net::signaling::start_signaling_server;

    let (server, mut apps, _) = webrtc_room("restart", 2, |_| {});
    let addr = server.addr();
    server.stop();
    // matchbox keeps established data channels when signaling goes: the room goes on.
    type_note(&apps[0], 0, "still here");
    run_until(
        &mut apps,
        Duration::from_secs(10),
        "edits flow without signaling",
        |apps| note(&apps[1]) == "still here",
    );
    assert!(apps.iter_mut().all(|app| connected(app) == 1));

    // The server comes back on the same port; peers that rejoin it find each other.
    let server = start_signaling_server(addr).expect("the port is free again");
    for app in &mut apps {
        app.world_mut().write_message(SetOnline::Offline);
    }
    update_all(&mut apps);
    for app in &mut apps {
        app.world_mut().write_message(SetOnline::Online);
    }
    run_until(
        &mut apps,
        Duration::from_secs(30),
        "peers meet again on the new server",
        |apps| apps.iter_mut().all(|app| connected(app) == 1),
    );
    type_note(&apps[1], 0, "and ");
    run_until(
        &mut apps,
        Duration::from_secs(10),
        "edits flow again",
        |apps| note(&apps[0]) == "and still here",
    );
    drop(server);
}

#[test]
fn a_lone_peer_retries_a_lost_server_with_backoff_and_meets_the_next_player() {
    use bevy::prelude::*;
    use bevy_peer_sync::net::connection::ReconnectPolicy;
    use bevy_peer_sync::net::signaling::start_signaling_server;

    let server = start_signaling_server(([127, 0, 0, 1], 0)).expect("signaling server starts");
    let addr = server.addr();
    let url = server.room_url("retry");
    let new_app = |url: &str| {
        let mut app = App::new();
        app.add_plugins(MinimalPlugins)
            .add_plugins(PeerSyncPlugin::new(url).with_reconnect(ReconnectPolicy {
                first_delay: Duration::from_millis(100),
                max_delay: Duration::from_millis(800),
                max_attempts: None,
            }));
        app
    };
    let mut apps = vec![new_app(&url)];
    run_until(&mut apps, Duration::from_secs(10), "in the room", |apps| {
        state(&apps[0]) == ConnectionState::Connected
    });
    type_note(&apps[0], 0, "kept offline");

    // Alone and without signaling, the socket ends: the plugin retries with backoff.
    server.stop();
    run_until(&mut apps, Duration::from_secs(20), "reconnecting", |apps| {
        state(&apps[0]) == ConnectionState::Reconnecting
    });
    run_until(
        &mut apps,
        Duration::from_secs(20),
        "a few retries fail",
        |apps| apps[0].world().resource::<Connection>().attempt() >= 3,
    );

    let server = start_signaling_server(addr).expect("the port is free again");
    run_until(
        &mut apps,
        Duration::from_secs(20),
        "back in the room",
        |apps| state(&apps[0]) == ConnectionState::Connected,
    );
    apps.push(new_app(&url));
    run_until(
        &mut apps,
        Duration::from_secs(30),
        "the next player gets the note",
        |apps| note(&apps[1]) == "kept offline",
    );
    drop(server);
}
