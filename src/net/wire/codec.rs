//! The one place that knows the body codec.
//!
//! Message bodies are serde types encoded with bincode 2 (varint integers, little
//! endian). bincode is pinned at `=2.0.1` and flagged unmaintained upstream, so nothing
//! outside this module names it: swapping the codec means rewriting these two functions.

use serde::{Serialize, de::DeserializeOwned};

/// Upper bound on what one decoded body may claim to allocate. Length prefixes larger
/// than this are refused before any allocation, so a hostile `u64::MAX` length costs
/// nothing.
const ALLOCATION_LIMIT: usize = 64 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<ALLOCATION_LIMIT>()
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    bincode::serde::encode_into_std_write(value, out, config())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Decodes a whole body. Trailing bytes are an error: a body is exactly one value.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "`{}` trailing bytes after the body",
            bytes.len() - used
        ));
    }
    Ok(value)
}
