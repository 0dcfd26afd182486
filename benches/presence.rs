//! Presence bytes per cursor update on the wire vs a y-protocols awareness update of
//! the same state, measured in the same run.
//!
//! `cargo bench --bench presence`. Target: ours ≤ 0.5× awareness.
//!
//! Ours: the whole datagram (2-byte frame header + cursor body) as it leaves
//! `PeerSyncPlugin`, counted on a live in-memory room where one peer moves its cursor
//! every frame for 10 s (pings and heartbeats, which also travel on that channel, are
//! reported apart). Awareness: `yrs::sync::Awareness` with the same name, colour and
//! cursor as a JSON state, one `AwarenessUpdate::encode_v1` per move (what
//! y-protocols sends; the y-websocket message framing, one or two bytes more, is not
//! counted).

use std::time::Instant;

use bevy::prelude::*;
use bevy_peer_sync::internals::encode_cursor;
use bevy_peer_sync::internals::wire::{self, Message};
use bevy_peer_sync::net::transport::Channel;
use bevy_peer_sync::prelude::*;
use bevy_peer_sync::testing::TestRoom;
use yrs::sync::Awareness;
use yrs::updates::encoder::Encode;

const FRAMES: usize = 600;

fn cursor_at(frame: usize) -> Vec2 {
    let t = frame as f32 / 60.0;
    Vec2::new(640.0 + 300.0 * t.cos(), 400.0 + 200.0 * (2.0 * t).sin())
}

fn main() {
    // Awareness: the full state on every move.
    let mut awareness = Awareness::new(yrs::Doc::new());
    let mut awareness_bytes = 0usize;
    let start = Instant::now();
    for frame in 0..FRAMES {
        let at = cursor_at(frame);
        let state = format!(
            r##"{{"user":{{"name":"ada","color":"#c82a1e"}},"cursor":{{"x":{},"y":{}}}}}"##,
            at.x, at.y
        );
        awareness.set_local_state_raw(state);
        awareness_bytes += awareness
            .update()
            .expect("local state encodes")
            .encode_v1()
            .len();
    }
    let awareness_time = start.elapsed();

    // Ours, encoded alone (same values).
    let start = Instant::now();
    let mut encoded_bytes = 0usize;
    for frame in 0..FRAMES {
        let body = encode_cursor(frame as u32 + 1, Some(cursor_at(frame)));
        encoded_bytes += wire::encode(&Message::Presence(body.into()))
            .expect("a cursor encodes")
            .len();
    }
    let ours_time = start.elapsed();

    // Ours, counted on the wire of a live room.
    let mut room = TestRoom::new(1);
    let a = room.add_peer(|_| {});
    room.add_peer(|_| {});
    assert!(room.step_until(10, TestRoom::fully_connected));
    {
        let mut me = room.app_mut(a).world_mut().resource_mut::<LocalPresence>();
        me.name = "ada".into();
        me.color = Color::srgb_u8(200, 42, 30);
    }
    room.step_n(2);
    let before = unreliable_out(&mut room, a);
    room.step_n(FRAMES);
    let idle = unreliable_out(&mut room, a) - before;
    let before = unreliable_out(&mut room, a);
    for frame in 0..FRAMES {
        room.app_mut(a)
            .world_mut()
            .resource_mut::<LocalPresence>()
            .cursor = Some(cursor_at(frame));
        room.step();
    }
    let moving = unreliable_out(&mut room, a) - before;
    let on_wire = (moving - idle) as f64 / FRAMES as f64;

    let per_awareness = awareness_bytes as f64 / FRAMES as f64;
    let per_ours = encoded_bytes as f64 / FRAMES as f64;
    println!("presence bytes per cursor update ({FRAMES} moves, same state)");
    println!(
        "  y-protocols awareness update: {per_awareness:6.1} B   ({:.2} µs to encode)",
        awareness_time.as_secs_f64() * 1e6 / FRAMES as f64
    );
    println!(
        "  bevy_peer_sync datagram:      {per_ours:6.1} B   ({:.2} µs to encode)  = {:.2}× awareness (target ≤ 0.5×)",
        ours_time.as_secs_f64() * 1e6 / FRAMES as f64,
        per_ours / per_awareness
    );
    println!(
        "  live room, unreliable bytes per move beyond an idle second of pings and heartbeats: {on_wire:.1} B ({:.1} B/s idle)",
        idle as f64 / (FRAMES as f64 / 60.0)
    );
    assert!(
        per_ours <= 0.5 * per_awareness,
        "presence is over half the awareness size"
    );
}

fn unreliable_out(room: &mut TestRoom, peer: usize) -> u64 {
    let world = room.app_mut(peer).world_mut();
    world
        .query::<&PeerStats>()
        .iter(world)
        .map(|s| s.channel(Channel::Unreliable).bytes_out)
        .sum()
}
