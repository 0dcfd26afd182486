//! Helpers shared by the test modules.

pub mod traces;
pub mod webrtc;
