//! The panic hook of the fuzz targets.
//!
//! libfuzzer-sys aborts on every panic, from its panic hook, even on one the crate
//! catches (it runs yrs under `catch_unwind` where yrs may panic). Here a panic is
//! printed (with a backtrace, the first few times per location) and unwinds; one
//! that leaves the harness still aborts the process (libfuzzer-sys catches it and
//! aborts): that is a finding. `FUZZ_STRICT_PANICS=1` keeps libfuzzer-sys' hook, so
//! caught panics are findings too.

use std::collections::HashMap;
use std::sync::{Mutex, Once};

static INSTALL: Once = Once::new();
static SEEN: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

pub fn install() {
    INSTALL.call_once(|| {
        if std::env::var_os("FUZZ_STRICT_PANICS").is_some_and(|v| v == "1") {
            return;
        }
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map_or_else(|| "?".to_owned(), |l| format!("{}:{}", l.file(), l.line()));
            let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
            let count = seen
                .get_or_insert_with(HashMap::new)
                .entry(at.clone())
                .or_default();
            *count += 1;
            if *count <= 3 || count.is_power_of_two() {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!("==panic #{count} at {at}: {message}");
                if *count == 1 {
                    eprintln!("{}", std::backtrace::Backtrace::force_capture());
                }
            }
        }));
    });
}
