//! The network layer: peers as entities, the wire format, the session with each peer
//! (handshake, routing, pings), per-peer counters, connection life, the transport
//! boundary with its backends, and the signaling server.

pub mod connection;
pub mod peer;
pub mod session;
#[cfg(not(target_arch = "wasm32"))]
pub mod signaling;
pub mod stats;
pub mod transport;
pub mod wire;
