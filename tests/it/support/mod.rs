//! Helpers shared by the test modules.

pub mod alloc;
pub mod traces;
pub mod webrtc;
