//! Fuzz target `doc_live`: see `harness::doc_live` and `fuzz/README.md`.
#![no_main]

#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;
mod panics;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    panics::install();
    harness::doc_live(data);
});
