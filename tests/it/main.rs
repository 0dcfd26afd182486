//! The integration tests: one binary (Bevy is linked once), one module per behaviour.
//! Each runs `App`s over the in-memory transport ([`bevy_peer_sync::testing::TestRoom`])
//! unless its name says WebRTC; nothing leaves this machine.

mod support;

#[global_allocator]
static ALLOCATOR: support::alloc::Counting = support::alloc::Counting;

mod budgets;
mod connection;
mod durable;
mod foundation;
mod fuzz_corpus;
mod hostile;
mod names;
mod persistence;
mod presence;
mod traces;
mod transient;
mod trust;
mod webrtc;
mod webrtc_loss;
