//! A reader of yrs' v1 update layout (yrs 0.28, the same as Yjs'), without recursion
//! and without building blocks: what [`pieces`](super::pieces) cuts this peer's own
//! large updates with. (Peers' updates are read by [`check`](super::check), which
//! refuses what it cannot follow.)
//!
//! ```text
//! update  = var(clients) { var(blocks) var(client) var(clock) block* }* delete set
//! block   = info (GC or skip: var(len))
//!           | info [origin id] [right origin id] [parent [parent sub]] content
//! ```
//! It reads only as far as it must. Where the bytes stop making sense to it, it says
//! so (`None`) and yrs' own decoder judges them.

/// An item has a left origin.
pub(crate) const HAS_ORIGIN: u8 = 0b1000_0000;
/// An item has a right origin.
pub(crate) const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
/// An item without origins names a key in its parent map.
pub(crate) const HAS_PARENT_SUB: u8 = 0b0010_0000;
const GC: u8 = 0;
const SKIP: u8 = 10;

/// A cursor over update bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    /// The next byte to read.
    pub(crate) at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    #[inline(always)]
    fn u8(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// An unsigned variable-length integer (7 bits a byte, high bit set on all but
    /// the last).
    #[inline(always)]
    pub(crate) fn var(&mut self) -> Option<u64> {
        let rest = self.bytes.get(self.at..)?;
        match rest {
            [byte, ..] if *byte < 0x80 => {
                self.at += 1;
                Some(u64::from(*byte))
            }
            [a, b, c, d, e, f, g, h, ..] => {
                // Up to eight bytes at once (a client id takes eight): where the first
                // byte without the high bit is, then its 7-bit groups packed together.
                let word = u64::from_le_bytes([*a, *b, *c, *d, *e, *f, *g, *h]);
                let ends = !word & 0x8080_8080_8080_8080;
                if ends == 0 {
                    return self.var_slow();
                }
                let len = ends.trailing_zeros() as usize / 8 + 1;
                let mut value = 0;
                for i in 0..len {
                    value |= ((word >> (8 * i)) & 0x7f) << (7 * i);
                }
                self.at += len;
                Some(value)
            }
            _ => self.var_slow(),
        }
    }

    fn var_slow(&mut self) -> Option<u64> {
        let rest = self.bytes.get(self.at..)?;
        let mut value = 0u64;
        for (i, &byte) in rest.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.at += i + 1;
                return Some(value);
            }
        }
        None
    }

    #[inline(always)]
    fn skip(&mut self, len: u64) -> Option<&'a [u8]> {
        let start = self.at;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let bytes = self.bytes.get(start..end)?;
        self.at = end;
        Some(bytes)
    }

    /// A string or buffer: its length, then its bytes.
    #[inline(always)]
    fn buf(&mut self) -> Option<&'a [u8]> {
        let len = self.var()?;
        self.skip(len)
    }
}

/// What one block holds, as far as the callers ask.
pub(crate) struct Block {
    /// The clock ticks it spans (yrs' `Block::len`), when asked for.
    pub(crate) len: u64,
}

/// Reads one block. `measure` asks for its length in clock ticks, which for a string
/// means counting its UTF-16 code units.
pub(crate) fn block(r: &mut Reader, measure: bool) -> Option<Block> {
    let info = r.u8()?;
    let flat = |len| Some(Block { len });
    if info == GC || info == SKIP {
        return flat(r.var()?);
    }
    if info & HAS_ORIGIN != 0 {
        r.var()?;
        r.var()?;
    }
    if info & HAS_RIGHT_ORIGIN != 0 {
        r.var()?;
        r.var()?;
    }
    if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        if r.var()? == 1 {
            r.buf()?; // root type name
        } else {
            r.var()?; // parent id
            r.var()?;
        }
        if info & HAS_PARENT_SUB != 0 {
            r.buf()?;
        }
    }
    match info & 0b1111 {
        1 => flat(r.var()?), // deleted: a length
        2 => {
            // JSON: a count, then one string more than it says (as yrs reads it).
            let count = r.var()?;
            for _ in 0..=count {
                r.buf()?;
            }
            flat(count + 1)
        }
        3 | 5 => r.buf().and_then(|_| flat(1)), // binary, embed
        4 => {
            let text = r.buf()?;
            flat(if measure { utf16_len(text) } else { 0 })
        }
        6 => {
            r.buf()?; // format: key and value
            r.buf().and_then(|_| flat(1))
        }
        7 => {
            // A type: its kind, and an XML element's name.
            if r.u8()? == 3 {
                r.buf()?;
            }
            flat(1)
        }
        8 => {
            let count = r.var()?;
            for _ in 0..count {
                any(r)?;
            }
            Some(Block { len: count })
        }
        9 => {
            r.buf()?; // sub-document guid, then its options
            any(r)?;
            Some(Block { len: 1 })
        }
        _ => None,
    }
}

/// UTF-16 code units in UTF-8 `text` (yrs measures strings so, as Yjs does): one per
/// character, two for those outside the basic plane (the four-byte ones). That is
/// its bytes, less the continuation bytes (`10xxxxxx`), plus the four-byte leaders
/// (`11110xxx`), counted eight bytes at a time.
pub(crate) fn utf16_len(text: &[u8]) -> u64 {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let count = |b: &u8| -(i64::from(b & 0xc0 == 0x80)) + i64::from(b >= &0xf0);
    let mut words = text.chunks_exact(8);
    let mut units = text.len() as i64;
    for word in words.by_ref() {
        let x = u64::from_le_bytes(word.try_into().expect("chunks of eight"));
        // Bit 7 of each byte: set for a continuation byte, or for a leader of four.
        let continuation = x & !(x << 1) & HIGH;
        let four = x & (x << 1) & (x << 2) & (x << 3) & HIGH;
        units -= i64::from(continuation.count_ones());
        units += i64::from(four.count_ones());
    }
    units += words.remainder().iter().map(count).sum::<i64>();
    units as u64
}

/// Reads past one `Any` value, nested ones included, with an explicit stack (this
/// peer's own updates only: peers' are read by [`check`](super::check), which bounds
/// their nesting).
fn any(r: &mut Reader) -> Option<()> {
    // Per open array or map: values still to read in it, and whether each has a key
    // first. Each turn reads one value's header; a non-empty container is opened, and
    // then the next slot is found (closing the containers that are full).
    let mut open: Vec<(u64, bool)> = Vec::new();
    loop {
        match r.u8()? {
            127 | 126 | 121 | 120 => {} // undefined, null, false, true
            125 => {
                r.var()?;
            }
            124 => {
                r.skip(4)?;
            }
            123 | 122 => {
                r.skip(8)?;
            }
            119 | 116 => {
                r.buf()?;
            }
            tag @ (118 | 117) => {
                let len = r.var()?;
                if len > 0 {
                    open.push((len, tag == 118));
                }
            }
            _ => return None,
        }
        // The value just read completes one slot of the innermost open container
        // (unless it opened one); close the containers it fills.
        loop {
            let Some((left, is_map)) = open.last_mut() else {
                return Some(());
            };
            if *left == 0 {
                open.pop();
                continue;
            }
            // The next slot: a map's key comes first.
            *left -= 1;
            if *is_map {
                r.buf()?;
            }
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-at-once reading of variable-length integers agrees with the byte by
    /// byte one, at every length and where the bytes run out.
    #[test]
    fn variable_length_integers_read_alike_either_way() {
        let mut values: Vec<u64> = (0..64).map(|bit| 1u64 << bit).collect();
        values.extend(values.clone().iter().map(|v| v - 1));
        values.extend([0, 127, 128, 16_383, 16_384, u64::MAX, 0x0123_4567_89ab_cdef]);
        for value in values {
            let mut bytes = Vec::new();
            let mut n = value;
            while n >= 0x80 {
                bytes.push((n as u8) | 0x80);
                n >>= 7;
            }
            bytes.push(n as u8);
            // Alone, and followed by more bytes (so the fast path can take eight).
            for tail in [&[][..], &[0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x08]] {
                let input = [&bytes[..], tail].concat();
                let mut fast = Reader::new(&input);
                let mut slow = Reader::new(&input);
                assert_eq!(fast.var(), Some(value), "{value:#x}");
                assert_eq!(slow.var_slow(), Some(value), "{value:#x}");
                assert_eq!(fast.at, bytes.len());
                assert_eq!(slow.at, bytes.len());
            }
            // Cut short: no value, either way.
            let short = &bytes[..bytes.len() - 1];
            assert_eq!(Reader::new(short).var(), None, "{value:#x}");
            assert_eq!(Reader::new(short).var_slow(), None, "{value:#x}");
        }
    }

    #[test]
    fn strings_are_measured_in_utf16_code_units() {
        let long = "a🦀é日 plain ascii, then ö and 𝄞 ".repeat(9);
        for text in ["", "abc", "é", "日本語", "🦀", "a🦀é日", &long, &long[1..]] {
            assert_eq!(
                utf16_len(text.as_bytes()),
                text.encode_utf16().count() as u64,
                "{text}"
            );
        }
    }
}
