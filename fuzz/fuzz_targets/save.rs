//! Fuzz target `save`: see `harness::save` and `fuzz/README.md`.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;
mod panics;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    panics::install();
    harness::save(data);
});
