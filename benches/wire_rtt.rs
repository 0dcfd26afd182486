//! Round-trip time over the unreliable channel: bevy_peer_sync between two `App`s vs
//! raw `matchbox_socket` between two sockets, in the same run, on this machine.
//!
//! `cargo bench --bench wire_rtt` prints the median and p99 of 100 round trips each.
//! An in-process signaling server on 127.0.0.1, no ICE servers: nothing leaves the
//! machine.

#[path = "support/raw_matchbox.rs"]
mod raw_matchbox;

use std::time::{Duration, Instant};

use bevy::prelude::*;
use bevy_peer_sync::net::signaling::start_signaling_server;
use bevy_peer_sync::prelude::*;
use bytes::Bytes;

const ROUND_TRIPS: usize = 100;
const TIMEOUT: Duration = Duration::from_secs(30);

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

fn connected(app: &mut App) -> bool {
    let world = app.world_mut();
    world
        .query::<&PeerLink>()
        .iter(world)
        .any(|l| *l == PeerLink::Connected)
}

fn peer_sync(url: &str) -> Vec<Duration> {
    let mut apps: Vec<App> = (0..2)
        .map(|_| {
            let mut app = App::new();
            app.add_plugins(MinimalPlugins)
                .add_plugins(PeerSyncPlugin::new(url));
            app
        })
        .collect();
    // Peer 1 echoes every payload straight back, within its frame.
    apps[1].add_systems(
        Update,
        |mut received: MessageReader<PayloadReceived>, mut send: MessageWriter<SendPayload>| {
            for got in received.read() {
                send.write(SendPayload {
                    to: Recipients::Peer(got.from),
                    channel: Channel::Unreliable,
                    payload: got.payload.clone(),
                });
            }
        },
    );
    let start = Instant::now();
    while !apps.iter_mut().all(connected) {
        assert!(start.elapsed() < TIMEOUT, "apps did not connect");
        apps.iter_mut().for_each(App::update);
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    let mut nonce = 0u32;
    while samples.len() < ROUND_TRIPS {
        nonce += 1;
        let sent = Instant::now();
        apps[0].world_mut().write_message(SendPayload {
            to: Recipients::All,
            channel: Channel::Unreliable,
            payload: Bytes::copy_from_slice(&nonce.to_le_bytes()),
        });
        loop {
            if sent.elapsed() > Duration::from_millis(500) {
                break;
            }
            apps.iter_mut().for_each(App::update);
            let echoed = apps[0]
                .world_mut()
                .resource_mut::<Messages<PayloadReceived>>()
                .drain()
                .any(|p| p.payload[..] == nonce.to_le_bytes());
            if echoed {
                samples.push(sent.elapsed());
                break;
            }
        }
    }
    samples
}

fn main() {
    let server = start_signaling_server(([127, 0, 0, 1], 0)).expect("signaling server starts");
    let mut raw = raw_matchbox::round_trips(&server.room_url("raw"), ROUND_TRIPS);
    let mut ours = peer_sync(&server.room_url("ours"));
    println!(
        "unreliable round trip, {ROUND_TRIPS} samples each (release, this machine, loopback via host candidates)"
    );
    println!("{:<28} {:>12} {:>12}", "", "median", "p99");
    for (name, samples) in [
        ("raw matchbox_socket", &mut raw),
        ("bevy_peer_sync (App to App)", &mut ours),
    ] {
        let median = percentile(samples, 0.5);
        let p99 = percentile(samples, 0.99);
        println!("{name:<28} {median:>12.2?} {p99:>12.2?}");
    }
}
