//! How deeply a yrs v1 update nests `Any` values, read without recursion.
//!
//! yrs decodes `Any` arrays and maps recursively with no depth limit, and encodes and
//! drops them the same way, so an update holding a value nested a million deep (4 MB
//! of `[[[[…]]]]`, well inside the size limit) overflows the stack and aborts the
//! process: no `catch_unwind` helps. So every update from a peer is read by the
//! iterative check ([`super::check`]) before yrs decodes it, and one nested deeper
//! than [`MAX_ANY_DEPTH`] is refused (dropped and counted as malformed).

/// Nesting of `Any` arrays and maps an update may hold. Game state nests a few levels;
/// yrs' recursion costs far below a thread's stack at this depth.
pub const MAX_ANY_DEPTH: usize = 100;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use yrs::types::Attrs;
    use yrs::{
        Any, Array, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text, Transact,
        XmlElementPrelim, XmlFragment,
    };

    use crate::doc::check::{self, Refusal};
    use crate::doc::v1::HAS_PARENT_SUB;

    fn nested(depth: usize) -> Any {
        (0..depth).fold(Any::Null, |inner, _| Any::Array(Arc::from([inner])))
    }

    /// Updates of every kind of content yrs writes for shared types pass the check.
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
        }
        let update = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check::update(&update).map(drop), Ok(()));
        // Garbage is refused, not left for yrs to judge.
        assert_eq!(check::update(&[3, 200, 1]).map(drop), Err(Refusal::Layout));
        // A sub-document (yrs spawns a document for five bytes of it) is refused.
        map.insert(&mut doc.transact_mut(), "sub", Doc::new());
        let with_sub = doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default());
        assert_eq!(check::update(&with_sub).map(drop), Err(Refusal::Unsafe));
        assert_eq!(text.get_string(&doc.transact()), "hellorld");
    }

    /// A value nested a million deep (which yrs would decode by recursion until the
    /// stack overflows) is read without recursion, and refused by `decode_update`.
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
        // (Nesting the whole value in one array of one value each.)
        for _ in 0..1_000_000 {
            update.push(117);
            varint(&mut update, 1);
        }
        update.extend([126, 0]);
        assert_eq!(check::update(&update).map(drop), Err(Refusal::Unsafe));
        assert_eq!(
            super::super::decode_update(&update, &Default::default()).err(),
            Some(crate::net::stats::DropReason::Malformed)
        );
        // The same at a depth games use goes through.
        let mut shallow = vec![1, 1, 7, 0, 8 | HAS_PARENT_SUB, 1, 1, b'm', 1, b'k', 1];
        shallow.extend([117, 1, 117, 1, 126, 0]);
        assert_eq!(check::update(&shallow).map(drop), Ok(()));
        assert!(super::super::decode_update(&shallow, &Default::default()).is_ok());
    }

    /// An item whose left origin is a collected block sits where yrs puts it: beside
    /// its right origin. (A review's recipe: counted at the collected block's level,
    /// the types nested under it started again from the root, without limit.)
    #[test]
    fn an_item_after_a_collected_block_counts_beside_its_right_origin() {
        let mut update = vec![1, 35, 1, 0];
        update.extend([0, 1]); // 1:0, collected
        update.extend([7, 1, 1, b'r', 0]); // 1:1, an array under root `r`
        for clock in 2..32u8 {
            update.extend([7, 0, 1, clock - 1, 0]); // each in the one before
        }
        update.extend([4, 0, 1, 31, 1, b'x']); // 1:32, a string in 1:31: level 32
        update.extend([0xc7, 1, 0, 1, 32, 0]); // 1:33, origins 1:0 and 1:32
        update.extend([7, 0, 1, 33, 0]); // 1:34, in 1:33: level 33
        update.push(0);
        assert_eq!(check::update(&update).map(drop), Err(Refusal::Unsafe));
        // The same without the last type would be within the limit, but a type beside
        // a block collected in its own update is no honest encoder's: refused too.
        let mut within = update.clone();
        within.truncate(within.len() - 6);
        within[1] = 34;
        within.push(0);
        assert_eq!(check::update(&within).map(drop), Err(Refusal::Unsafe));
    }
}
