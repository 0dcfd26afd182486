//! Fuzz target `wire`: see `harness::wire` and `fuzz/README.md`.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;
mod panics;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    panics::install();
    harness::wire(data);
});
