//! The baseline both WebRTC benches compare against: two raw `matchbox_socket`s
//! (no ICE servers) bouncing datagrams on the unreliable channel.

use std::time::{Duration, Instant};

use bytes::Bytes;
use matchbox_socket::{PeerState, RtcIceServerConfig, WebRtcSocket};

const TIMEOUT: Duration = Duration::from_secs(30);

fn open(url: &str) -> WebRtcSocket {
    let (socket, message_loop) = WebRtcSocket::builder(url)
        .ice_server(RtcIceServerConfig {
            urls: vec![],
            username: None,
            credential: None,
        })
        .add_reliable_channel()
        .add_unreliable_channel()
        .build();
    std::thread::spawn(move || futures::executor::block_on(message_loop));
    socket
}

/// `count` unreliable round trips between two raw sockets in room `url`, sorted.
/// A datagram lost for 500 ms is sent again under a new nonce.
pub fn round_trips(url: &str, count: usize) -> Vec<Duration> {
    let (mut a, mut b) = (open(url), open(url));
    let start = Instant::now();
    let mut a_peer = None;
    while a_peer.is_none() || b.connected_peers().count() == 0 {
        assert!(start.elapsed() < TIMEOUT, "raw sockets did not connect");
        for (peer, state) in a.update_peers() {
            if state == PeerState::Connected {
                a_peer = Some(peer);
            }
        }
        b.update_peers();
        std::thread::sleep(Duration::from_millis(1));
    }
    let a_peer = a_peer.expect("the loop ends once a has a peer");
    let mut samples = Vec::with_capacity(count);
    let mut nonce = 0u32;
    while samples.len() < count {
        nonce += 1;
        let sent = Instant::now();
        a.channel_mut(1)
            .send(Bytes::copy_from_slice(&nonce.to_le_bytes()), a_peer);
        while sent.elapsed() < Duration::from_millis(500) {
            for (from, packet) in b.channel_mut(1).receive() {
                b.channel_mut(1).send(packet, from);
            }
            if a.channel_mut(1)
                .receive()
                .iter()
                .any(|(_, p)| p[..] == nonce.to_le_bytes())
            {
                samples.push(sent.elapsed());
                break;
            }
            std::hint::spin_loop();
        }
    }
    samples.sort();
    samples
}
