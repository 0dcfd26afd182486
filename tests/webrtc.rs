//! The real path: an in-process signaling server on 127.0.0.1, three matchbox peers in
//! this process with no ICE servers, handshake and round trips on both channels.
//! Nothing leaves this machine.

#[path = "support/webrtc.rs"]
mod support;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::durable::NetId;
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
    use bevy_peer_sync::durable::NetEntities;

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
