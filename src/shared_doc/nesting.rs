//! How deeply a yrs v1 update nests `Any` values, read without recursion.
//!
//! yrs decodes `Any` arrays and maps recursively with no depth limit, and encodes and
//! drops them the same way, so an update holding a value nested a million deep (4 MB
//! of `[[[[…]]]]`, well inside the size limit) overflows the stack and aborts the
//! process: no `catch_unwind` helps. So every update from a peer is measured with
//! this iterative reader before yrs decodes it, and one nested deeper than
//! [`MAX_ANY_DEPTH`] is refused (dropped and counted as malformed).
//!
//! The reader follows the v1 update layout of yrs 0.28 (blocks by client, item
//! headers, contents) only as far as it must to find every `Any`; where the bytes stop
//! making sense to it, it says so (`None`) and yrs' own decoder judges them.

/// Nesting of `Any` arrays and maps an update may hold. Game state nests a few levels;
/// yrs' recursion costs far below a thread's stack at this depth.
pub const MAX_ANY_DEPTH: usize = 100;

struct Bytes<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn u8(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(byte)
    }

    /// An unsigned or signed variable-length integer (7 bits a byte, high bit set on
    /// all but the last); unsigned values are returned.
    fn var(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    fn skip(&mut self, len: u64) -> Option<()> {
        let end = self.at.checked_add(usize::try_from(len).ok()?)?;
        (end <= self.bytes.len()).then(|| self.at = end)
    }

    /// A string or buffer: its length, then its bytes.
    fn buf(&mut self) -> Option<()> {
        let len = self.var()?;
        self.skip(len)
    }
}

/// The deepest `Any` nesting in v1 update `bytes` (0 for none, 1 for a flat array or
/// map); `None` if the bytes do not follow the layout.
pub fn any_depth(bytes: &[u8]) -> Option<usize> {
    let mut r = Bytes { bytes, at: 0 };
    let mut deepest = 0;
    for _ in 0..r.var()? {
        let blocks = r.var()?;
        r.var()?; // client
        r.var()?; // clock
        for _ in 0..blocks {
            deepest = deepest.max(block(&mut r)?);
        }
    }
    // The delete set that follows holds no values.
    Some(deepest)
}

const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;

/// One block; the deepest `Any` in it.
fn block(r: &mut Bytes) -> Option<usize> {
    let info = r.u8()?;
    if info == 0 || info == 10 {
        // GC or skip: a length.
        r.var()?;
        return Some(0);
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
        1 => r.var().map(|_| 0), // deleted: a length
        2 => {
            // JSON: a count, then one string more than it says (as yrs reads it).
            for _ in 0..=r.var()? {
                r.buf()?;
            }
            Some(0)
        }
        3..=5 => r.buf().map(|_| 0), // binary, string, embed
        6 => {
            r.buf()?; // format: key and value
            r.buf().map(|_| 0)
        }
        7 => {
            // A type: its kind, and an XML element's name.
            if r.u8()? == 3 {
                r.buf()?;
            }
            Some(0)
        }
        8 => {
            let mut deepest = 0;
            for _ in 0..r.var()? {
                deepest = deepest.max(any(r)?);
            }
            Some(deepest)
        }
        9 => {
            r.buf()?; // sub-document guid, then its options
            any(r)
        }
        _ => None,
    }
}

/// One `Any` value, nested ones included, with an explicit stack; its depth.
fn any(r: &mut Bytes) -> Option<usize> {
    // Per open array or map: values still to read in it, and whether each has a key
    // first. Each turn reads one value's header; a non-empty container is opened, and
    // then the next slot is found (closing the containers that are full).
    let mut open: Vec<(u64, bool)> = Vec::new();
    let mut deepest = 0;
    loop {
        match r.u8()? {
            127 | 126 | 121 | 120 => {} // undefined, null, false, true
            125 => {
                r.var()?;
            }
            124 => r.skip(4)?,
            123 | 122 => r.skip(8)?,
            119 | 116 => r.buf()?,
            tag @ (118 | 117) => {
                let len = r.var()?;
                if len > 0 {
                    open.push((len, tag == 118));
                    deepest = deepest.max(open.len());
                    if deepest > MAX_ANY_DEPTH {
                        // Deep enough to refuse; no need to read on.
                        return Some(deepest);
                    }
                } else {
                    deepest = deepest.max(open.len() + 1);
                }
            }
            _ => return None,
        }
        // The value just read completes one slot of the innermost open container
        // (unless it opened one); close the containers it fills.
        loop {
            let Some((left, is_map)) = open.last_mut() else {
                return Some(deepest);
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
    use std::collections::HashMap;
    use std::sync::Arc;

    use yrs::types::Attrs;
    use yrs::{
        Any, Array, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text, Transact,
        XmlElementPrelim, XmlFragment,
    };

    use super::*;

    fn nested(depth: usize) -> Any {
        (0..depth).fold(Any::Null, |inner, _| Any::Array(Arc::from([inner])))
    }

    /// Updates of every kind of content yrs writes are read through, and their nesting
    /// is found.
    #[test]
    fn reads_real_updates_and_finds_their_nesting() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("text");
        let map = doc.get_or_insert_map("map");
        let array = doc.get_or_insert_array("array");
        let xml = doc.get_or_insert_xml_fragment("xml");
        {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
            text.format(&mut txn, 0, 5, bold);
            text.remove_range(&mut txn, 5, 3);
            map.insert(&mut txn, "flat", 1.5);
            map.insert(&mut txn, "deep", nested(7));
            let fields = HashMap::from([("x".to_owned(), Any::from(-3)), ("s".into(), "a".into())]);
            map.insert(&mut txn, "fields", Any::Map(Arc::new(fields)));
            map.insert(&mut txn, "inner", MapPrelim::default());
            map.insert(&mut txn, "bytes", Any::Buffer(Arc::from(&b"\x75\x01"[..])));
            array.push_back(&mut txn, Any::from(1i64 << 40));
            array.push_back(&mut txn, "x");
            array.remove(&mut txn, 1);
            xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            map.insert(&mut txn, "sub", Doc::new());
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(any_depth(&update), Some(7));
        // Garbage is not an update this reader follows; yrs refuses it itself.
        assert_eq!(any_depth(&[3, 200, 1]), None);
        assert_eq!(text.get_string(&doc.transact()), "hellorld");
    }

    /// A value nested a million deep (which yrs would decode by recursion until the
    /// stack overflows) is measured without recursion, and refused by `decode_update`.
    #[test]
    fn a_value_nested_a_million_deep_is_refused_before_yrs_sees_it() {
        fn varint(out: &mut Vec<u8>, mut n: u64) {
            while n >= 0x80 {
                out.push((n as u8) | 0x80);
                n >>= 7;
            }
            out.push(n as u8);
        }
        // One client, one item: an `Any` under key `k` of root map `m`.
        let mut update = vec![1, 1, 7, 0, 8 | HAS_PARENT_SUB, 1, 1, b'm', 1, b'k', 1];
        for _ in 0..1_000_000 {
            update.push(117);
            varint(&mut update, 1);
        }
        update.extend([126, 0]);
        assert!(any_depth(&update).is_some_and(|depth| depth > MAX_ANY_DEPTH));
        assert_eq!(
            super::super::decode_update(&update, &Default::default()).err(),
            Some(crate::stats::DropReason::Malformed)
        );
        // The same at a depth games use goes through.
        let mut shallow = vec![1, 1, 7, 0, 8 | HAS_PARENT_SUB, 1, 1, b'm', 1, b'k', 1];
        shallow.extend([117, 1, 117, 1, 126, 0]);
        assert_eq!(any_depth(&shallow), Some(2));
        assert!(super::super::decode_update(&shallow, &Default::default()).is_ok());
    }
}
