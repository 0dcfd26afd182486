//! The gate in front of yrs: every byte a peer sends for a document is read here,
//! iteratively and without allocating, before yrs decodes any of it.
//!
//! yrs 0.28 trusts its input more than a peer-to-peer room can: it reserves what a
//! length prefix declares, recurses through nested values, reads integers wider than
//! their field (a six-byte "u32" wraps), and panics (in debug builds, on wasm32 an
//! abort) on clocks that overflow or blocks of one client that overlap. So an input
//! passes only if it is exactly what an honest yrs encoder writes, read the way yrs
//! reads it:
//!
//! - every integer fits its field as written (a `u32` in at most five bytes, a client
//!   id below 2^53, an `Any` integer in at most nine bytes);
//! - every count is one the remaining bytes can hold, every length fits in them, and
//!   the input ends where its layout does (no trailing bytes);
//! - per client of an update: listed once, one contiguous run of blocks of non-zero
//!   length, clocks below 2^31; origins of the same client before the item; no skip
//!   blocks, no sub-documents, only the shared types yrs defines; `Any` values nested
//!   at most [`MAX_ANY_DEPTH`](super::nesting::MAX_ANY_DEPTH) deep;
//! - what yrs will allocate for it, estimated per element from yrs' own structures,
//!   is at most [`COST_PER_BYTE`] times its size (plus [`COST_SLACK`]).
//!
//! "Cannot tell" is a refusal: a layout this reader does not know is refused, never
//! passed to yrs to judge.

use bevy::platform::collections::HashSet;

use super::levels::{Level, Lookup, MAX_TYPE_DEPTH, Shape};
use super::nesting::MAX_ANY_DEPTH;

/// Estimated heap bytes yrs may allocate per byte of input, at most (see
/// [`Cost`]). Honest updates measured in this module's tests stay below half of it
/// (about 14 for a document of many small edits); the smallest hostile elements cost
/// more (an item of four bytes, about 44).
pub(crate) const COST_PER_BYTE: usize = 32;
/// Estimated heap bytes any input may cost besides its per-byte allowance (a run of a
/// frame's worth of typing, merged, costs yrs quadratically in the run: see
/// [`Walk::run`]).
pub(crate) const COST_SLACK: usize = 1024 * 1024;
/// Client ids are JavaScript-safe integers (below 2^53), as yrs makes them.
const MAX_CLIENT: u64 = (1 << 53) - 1;
/// Clocks stay below 2^31: yrs subtracts them as `i32` when it integrates.
const MAX_CLOCK: u64 = (1 << 31) - 1;

const GC: u8 = 0;
const HAS_ORIGIN: u8 = 0b1000_0000;
const HAS_RIGHT_ORIGIN: u8 = 0b0100_0000;
const HAS_PARENT_SUB: u8 = 0b0010_0000;

/// Estimated heap cost of what yrs builds, in bytes, per element (from the sizes of
/// yrs 0.28's structures on a 64-bit target, rounded up).
struct Cost;

impl Cost {
    const CLIENT: usize = 64;
    const GC: usize = 32;
    const ITEM: usize = 176;
    const TYPE: usize = 160;
    const VALUE: usize = 40;
    const ENTRY: usize = 80;
    const BYTES: usize = 24;
    const RANGE: usize = 16;
}

/// Why an input was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Not the layout (cut short, trailing bytes, an integer wider than its field, an
    /// unknown tag): malformed.
    Layout,
    /// Well formed, but something yrs must not be given: a skip block, a sub-document,
    /// a client listed twice, a clock past 2^31, nesting past the limit.
    Unsafe,
    /// Would cost the receiver more than [`COST_PER_BYTE`] times its size.
    TooCostly,
}

type Checked<T> = Result<T, Refusal>;

/// A cursor that reads integers and lengths the way yrs does, refusing what yrs would
/// read differently from what it says.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    cost: usize,
    limit: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            at: 0,
            cost: 0,
            limit: bytes
                .len()
                .saturating_mul(COST_PER_BYTE)
                .saturating_add(COST_SLACK),
        }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    #[inline(always)]
    fn charge(&mut self, cost: usize) -> Checked<()> {
        self.cost = self.cost.saturating_add(cost);
        if self.cost > self.limit {
            return Err(Refusal::TooCostly);
        }
        Ok(())
    }

    #[inline(always)]
    fn u8(&mut self) -> Checked<u8> {
        let byte = *self.bytes.get(self.at).ok_or(Refusal::Layout)?;
        self.at += 1;
        Ok(byte)
    }

    /// An unsigned varint of at most `max_bytes` bytes whose value fits `max_bits`.
    #[inline(always)]
    fn var(&mut self, max_bytes: usize, max_bits: u32) -> Checked<u64> {
        // Most are one byte.
        if let Some(&byte) = self.bytes.get(self.at)
            && byte < 0x80
        {
            self.at += 1;
            return Ok(u64::from(byte));
        }
        self.var_long(max_bytes, max_bits)
    }

    fn var_long(&mut self, max_bytes: usize, max_bits: u32) -> Checked<u64> {
        // Up to eight bytes at once (a client id takes eight): where the first byte
        // without the high bit is, then its 7-bit groups packed together. Every field
        // this reader takes fits eight bytes (at most 53 bits).
        if let Some(word) = self.bytes.get(self.at..self.at + 8) {
            let word = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            let ends = !word & 0x8080_8080_8080_8080;
            if ends == 0 {
                return Err(Refusal::Layout);
            }
            let len = ends.trailing_zeros() as usize / 8 + 1;
            if len > max_bytes {
                return Err(Refusal::Layout);
            }
            let mut value = 0;
            for i in 0..len {
                value |= ((word >> (8 * i)) & 0x7f) << (7 * i);
            }
            // Bits past `max_bits` would be lost (or wrapped) by yrs' reader.
            if max_bits < 64 && value >> max_bits != 0 {
                return Err(Refusal::Layout);
            }
            self.at += len;
            return Ok(value);
        }
        let mut value = 0u64;
        for i in 0..max_bytes {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            let shift = 7 * i as u32;
            // Bits past `max_bits` would be lost (or wrapped) by yrs' reader.
            if shift + (64 - bits.leading_zeros()) > max_bits {
                return Err(Refusal::Layout);
            }
            value |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Refusal::Layout)
    }

    /// A `u32` field (yrs' `read_var::<u32>`).
    fn u32(&mut self) -> Checked<u64> {
        self.var(5, 32)
    }

    /// A count of elements, each at least `min_bytes` long.
    fn count(&mut self, min_bytes: usize) -> Checked<u64> {
        let count = self.u32()?;
        if count > (self.remaining() / min_bytes.max(1)) as u64 {
            return Err(Refusal::Layout);
        }
        Ok(count)
    }

    /// A client id (below 2^53).
    fn client(&mut self) -> Checked<u64> {
        let client = self.var(8, 53)?;
        if client > MAX_CLIENT {
            return Err(Refusal::Unsafe);
        }
        Ok(client)
    }

    /// A clock (below 2^31).
    fn clock(&mut self) -> Checked<u64> {
        let clock = self.u32()?;
        if clock > MAX_CLOCK {
            return Err(Refusal::Unsafe);
        }
        Ok(clock)
    }

    /// A buffer or string: a `u32` length, then that many bytes.
    fn buf(&mut self) -> Checked<&'a [u8]> {
        let len = self.u32()? as usize;
        if len > self.remaining() {
            return Err(Refusal::Layout);
        }
        let bytes = &self.bytes[self.at..self.at + len];
        self.at += len;
        self.charge(len + Cost::BYTES)?;
        Ok(bytes)
    }

    /// A UTF-8 string.
    fn string(&mut self) -> Checked<&'a str> {
        std::str::from_utf8(self.buf()?).map_err(|_| Refusal::Layout)
    }

    fn skip(&mut self, len: usize) -> Checked<()> {
        if len > self.remaining() {
            return Err(Refusal::Layout);
        }
        self.at += len;
        Ok(())
    }

    fn end(&self) -> Checked<()> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Refusal::Layout)
        }
    }
}

/// Checks a v1 update from a peer (a live update, or a y-sync step 2); the levels of
/// its items (see [`levels`](super::levels)), for [`Levels::admit`](super::levels::Levels::admit).
pub(crate) fn update(bytes: &[u8]) -> Checked<Shape> {
    walk(bytes, false).map(|(_, shape)| shape)
}

/// The levels of the items of an update of this peer's own (committed by yrs): read
/// the same way, but nothing refused for its cost or nesting. `None` for a layout the
/// check does not know (a sub-document, say).
pub(crate) fn local_shape(bytes: &[u8]) -> Option<Shape> {
    walk(bytes, true).map(|(_, shape)| shape).ok()
}

/// What reading an update's blocks keeps track of.
#[derive(Default)]
struct Walk {
    /// Where each item sits.
    shape: Shape,
    /// This peer's own update: nothing refused for cost or nesting.
    local: bool,
    /// The run of items of one client, each continuing the last, that yrs squashes
    /// into one when the transaction commits: `(content kind, content bytes so far)`.
    /// Squashing copies the run's content into each item from the right, and frees
    /// the copies only at the end: a cost of the square of the run, charged as the
    /// run grows.
    run: Option<(u8, usize)>,
}

/// [`update`], and the estimated cost of the update.
#[cfg(test)]
fn update_cost(bytes: &[u8]) -> Checked<usize> {
    walk(bytes, false).map(|(cost, _)| cost)
}

/// Reads an update: its estimated cost, and the levels of its items.
fn walk(bytes: &[u8], local: bool) -> Checked<(usize, Shape)> {
    let mut r = Reader::new(bytes);
    if local {
        r.limit = usize::MAX;
    }
    let clients = r.count(3)?;
    let mut seen: HashSet<u64> = HashSet::new();
    let mut walk = Walk {
        local,
        shape: Shape::for_bytes(bytes.len()),
        ..Walk::default()
    };
    for _ in 0..clients {
        let blocks = r.count(2)?;
        let client = r.client()?;
        if blocks == 0 || !seen.insert(client) {
            return Err(Refusal::Unsafe);
        }
        r.charge(Cost::CLIENT)?;
        walk.run = None;
        let mut clock = r.clock()?;
        for _ in 0..blocks {
            let len = block(&mut r, &mut walk, client, clock)?;
            clock = clock.checked_add(len).ok_or(Refusal::Unsafe)?;
            if len == 0 || clock > MAX_CLOCK {
                return Err(Refusal::Unsafe);
            }
        }
    }
    delete_set(&mut r)?;
    r.end()?;
    walk.shape.finish(local).map_err(|()| Refusal::Unsafe)?;
    Ok((r.cost, walk.shape))
}

/// One block of `client` starting at `clock`; its length in clock ticks.
fn block(r: &mut Reader, walk: &mut Walk, client: u64, clock: u64) -> Checked<u64> {
    let info = r.u8()?;
    if info == GC {
        walk.run = None;
        r.charge(Cost::GC)?;
        let len = r.u32()?;
        // Nothing nests in a collected block (yrs collects what builds on one).
        walk.shape.push(
            client,
            clock as u32,
            clock.saturating_add(len).min(u64::from(u32::MAX)) as u32,
            Level::Collected,
        );
        return Ok(len);
    }
    if info & 0b1111 == 10 {
        // A skip: honest encoders never send one, and yrs integrates one as a hole
        // that later blocks can break its block store on.
        return Err(Refusal::Unsafe);
    }
    r.charge(Cost::ITEM)?;
    let mut left = None;
    let mut right = None;
    for flag in [HAS_ORIGIN, HAS_RIGHT_ORIGIN] {
        if info & flag != 0 {
            let origin = r.client()?;
            let origin_clock = r.clock()?;
            if origin == client && origin_clock >= clock {
                return Err(Refusal::Unsafe);
            }
            if flag == HAS_ORIGIN {
                left = Some((origin, origin_clock));
            } else {
                right = Some((origin, origin_clock));
            }
        }
    }
    // Where the item sits (see `levels`): under a root type, one below its parent
    // (named by id), or beside its left origin (else its right one), as yrs places it.
    let level = if info & (HAS_ORIGIN | HAS_RIGHT_ORIGIN) == 0 {
        let level = match r.u32()? {
            1 => {
                let name = r.string()?;
                walk.shape.push_root(name);
                Level::Known(1)
            }
            0 => Level::after((r.client()?, r.clock()? as u32), 1),
            _ => return Err(Refusal::Layout),
        };
        if info & HAS_PARENT_SUB != 0 {
            r.string()?;
        }
        level
    } else {
        // Beside its origins: the deeper of the two when it has both (see
        // `Shape::beside`).
        let id = |(client, clock): (u64, u64)| Level::after((client, clock as u32), 0);
        match (left, right) {
            // A left origin collected in this very update: yrs places the item beside
            // the right one, wherever that sits, and no honest encoder writes one
            // there (an item beside a collected block is collected with it): not to
            // be nested in, and refused if it is a type.
            (Some(left), Some(_))
                if walk.shape.find((left.0, left.1 as u32)) == Some(Level::Collected) =>
            {
                Level::Disputed
            }
            (Some(left), Some(right)) => {
                let left = walk.shape.settle(id(left));
                let right = walk.shape.settle(id(right));
                walk.shape.beside(left, right)
            }
            (Some(origin), None) | (None, Some(origin)) => id(origin),
            (None, None) => return Err(Refusal::Layout),
        }
    };
    let level = walk.shape.settle(level);
    let kind = info & 0b1111;
    let start = r.at;
    let len = content(r, kind)?;
    if kind == 7 {
        match level {
            Level::Known(depth) if depth > MAX_TYPE_DEPTH && !walk.local => {
                return Err(Refusal::Unsafe);
            }
            Level::Known(_) => {}
            Level::Disputed if !walk.local => return Err(Refusal::Unsafe),
            other => walk.shape.push_type((client, clock as u32), other),
        }
    }
    walk.shape.push(
        client,
        clock as u32,
        clock.saturating_add(len).min(u64::from(u32::MAX)) as u32,
        level,
    );
    // Squashed with the item before it at commit when it continues it.
    let bytes = r.at - start;
    let continues = left == Some((client, clock.wrapping_sub(1)));
    walk.run = match walk.run {
        Some((run_kind, so_far)) if continues && run_kind == kind => {
            let so_far = so_far + bytes;
            r.charge(so_far)?;
            Some((kind, so_far))
        }
        _ => Some((kind, bytes)),
    };
    Ok(len)
}

/// An item's content; its length in clock ticks.
fn content(r: &mut Reader, kind: u8) -> Checked<u64> {
    match kind {
        1 => r.u32(), // deleted
        // JSON strings: yrs reads one more than it writes, so an item of them would
        // not survive being relayed; yrs itself never makes one.
        2 => Err(Refusal::Unsafe),
        3 => r.buf().map(|_| 1), // binary
        4 => {
            let text = r.string()?;
            Ok(super::v1::utf16_len(text.as_bytes()))
        }
        5 => r.string().map(|_| 1), // embed (JSON)
        6 => {
            r.string()?; // format: key, JSON value
            r.string().map(|_| 1)
        }
        7 => {
            r.charge(Cost::TYPE)?;
            match r.u8()? {
                3 => {
                    r.string()?; // an XML element's name
                }
                0..=6 => {}
                // Weak links, sub-documents, undefined: not what this crate syncs.
                _ => return Err(Refusal::Unsafe),
            }
            Ok(1)
        }
        8 => {
            let count = r.count(1)?;
            for _ in 0..count {
                any(r)?;
            }
            Ok(count)
        }
        // 9 is a sub-document: yrs spawns a document for it.
        9 => Err(Refusal::Unsafe),
        _ => Err(Refusal::Layout),
    }
}

/// One `Any` value, nested ones included, with an explicit stack.
fn any(r: &mut Reader) -> Checked<()> {
    // Per open array or map: values still to read in it, and whether each has a key.
    let mut open: Vec<(u64, bool)> = Vec::new();
    loop {
        r.charge(Cost::VALUE)?;
        match r.u8()? {
            127 | 126 | 121 | 120 => {} // undefined, null, false, true
            125 => {
                // A signed varint: in at most nine bytes it cannot overflow an i64.
                for i in 0.. {
                    if i == 9 {
                        return Err(Refusal::Layout);
                    }
                    if r.u8()? & 0x80 == 0 {
                        break;
                    }
                }
            }
            124 => r.skip(4)?,
            123 | 122 => r.skip(8)?,
            119 => {
                r.string()?;
            }
            116 => {
                r.buf()?;
            }
            tag @ (118 | 117) => {
                let is_map = tag == 118;
                let len = r.count(if is_map { 2 } else { 1 })?;
                if len > 0 {
                    if open.len() >= MAX_ANY_DEPTH {
                        return Err(Refusal::Unsafe);
                    }
                    open.push((len, is_map));
                }
            }
            _ => return Err(Refusal::Layout),
        }
        // The value just read fills one slot of the innermost open container (unless
        // it opened one); close the containers that are full.
        loop {
            let Some((left, is_map)) = open.last_mut() else {
                return Ok(());
            };
            if *left == 0 {
                open.pop();
                continue;
            }
            *left -= 1;
            if *is_map {
                r.charge(Cost::ENTRY)?;
                r.string()?;
            }
            break;
        }
    }
}

/// The delete set at the end of an update.
fn delete_set(r: &mut Reader) -> Checked<()> {
    let clients = r.count(2)?;
    let mut seen: HashSet<u64> = HashSet::new();
    for _ in 0..clients {
        let client = r.client()?;
        if !seen.insert(client) {
            return Err(Refusal::Unsafe);
        }
        r.charge(Cost::CLIENT)?;
        let ranges = r.count(2)?;
        // Each range after the last, not overlapping it: yrs looks ranges up as if so,
        // and visits every block of each.
        let mut end = 0;
        for _ in 0..ranges {
            let clock = r.clock()?;
            let len = r.u32()?;
            if len == 0 || clock + len > MAX_CLOCK || clock < end {
                return Err(Refusal::Unsafe);
            }
            end = clock + len;
            r.charge(Cost::RANGE)?;
        }
    }
    Ok(())
}

/// Checks an encoded state vector (the body of a y-sync step 1).
pub(crate) fn state_vector(bytes: &[u8]) -> Checked<()> {
    let mut r = Reader::new(bytes);
    let clients = r.count(2)?;
    let mut seen: HashSet<u64> = HashSet::new();
    for _ in 0..clients {
        let client = r.client()?;
        r.clock()?;
        if !seen.insert(client) {
            return Err(Refusal::Unsafe);
        }
        r.charge(Cost::CLIENT)?;
    }
    r.end()
}

/// What a y-sync message holds, once checked: its inner tag and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SyncKind {
    /// Step 1: a state vector.
    Step1,
    /// Step 2: the diff that answers a step 1.
    Step2,
    /// A live update.
    Update,
}

/// Checks a y-sync message (`yrs::sync::Message::Sync`, lib0 v1): the outer and inner
/// tags, the payload's length, and a step 1's state vector (which yrs decodes with the
/// message). A step 2's or update's payload is only copied by yrs' message decoder;
/// [`update`] checks it before it is decoded (see `decode_update`). Every other message
/// kind (awareness, auth, custom) is refused: this crate sends none of them.
pub(crate) fn sync_message(bytes: &[u8]) -> Checked<SyncKind> {
    let mut r = Reader::new(bytes);
    if r.u8()? != 0 {
        return Err(Refusal::Layout);
    }
    let kind = match r.u8()? {
        0 => SyncKind::Step1,
        1 => SyncKind::Step2,
        2 => SyncKind::Update,
        _ => return Err(Refusal::Layout),
    };
    let payload = r.buf()?;
    r.end()?;
    if kind == SyncKind::Step1 {
        state_vector(payload)?;
    }
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use yrs::types::Attrs;
    use yrs::updates::encoder::Encode;
    use yrs::{
        Any, Array, ArrayPrelim, Doc, GetString, Map, MapPrelim, ReadTxn, StateVector, Text,
        Transact, WriteTxn, XmlElementPrelim, XmlFragment, XmlTextPrelim,
    };

    use super::*;

    /// Every update yrs writes in the shapes this crate and its games produce passes,
    /// well under the cost limit.
    #[test]
    fn honest_updates_pass() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("note");
        let map = doc.get_or_insert_map("entities");
        let array = doc.get_or_insert_array("list");
        let mut updates = Vec::new();
        let mut edit = |f: &dyn Fn(&mut yrs::TransactionMut)| {
            let before = doc.transact().state_vector();
            f(&mut doc.transact_mut());
            updates.push(doc.transact().encode_diff_v1(&before));
        };
        edit(&|txn| text.insert(txn, 0, "héllo wörld 😀"));
        edit(&|txn| text.remove_range(txn, 1, 3));
        edit(&|txn| text.format(txn, 0, 2, Attrs::from([("bold".into(), true.into())])));
        edit(&|txn| {
            let entity = map.insert(txn, "e-1", MapPrelim::default());
            entity.insert(txn, "owner", "00ff");
            let nested = Any::from(HashMap::from([(
                "xs".to_owned(),
                Any::Array(Arc::from(vec![
                    Any::from(1.5),
                    Any::Null,
                    Any::from(-7_i64),
                ])),
            )]));
            entity.insert(txn, "value", nested);
            entity.insert(txn, "bytes", Any::Buffer(Arc::from(vec![1u8, 2, 3])));
        });
        edit(&|txn| {
            array.insert_range(txn, 0, [1, 2, 3]);
            array.insert(txn, 0, ArrayPrelim::from([true, false]));
        });
        edit(&|txn| {
            map.remove(txn, "e-1");
        });
        edit(&|txn| {
            let xml = txn.get_or_insert_xml_fragment("xml");
            let element = xml.insert(txn, 0, XmlElementPrelim::empty("p"));
            element.insert(txn, 0, XmlTextPrelim::new("x"));
        });
        updates.push(doc.transact().encode_diff_v1(&StateVector::default()));
        updates.push(
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default()),
        );
        for update in &updates {
            assert_eq!(super::update(update).map(drop), Ok(()), "{update:?}");
        }
        let sv = doc.transact().state_vector().encode_v1();
        assert_eq!(state_vector(&sv), Ok(()));
        let _ = text.get_string(&doc.transact());
    }

    /// A whole document of many small edits (the costliest honest shape: short items,
    /// small values) is estimated at a fraction of the limit per byte.
    #[test]
    fn honest_updates_cost_a_fraction_of_the_limit() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("entities");
        for n in 0..2_000u32 {
            let mut txn = doc.transact_mut();
            text.insert(&mut txn, n % 7, "x");
            let entity = map.insert(&mut txn, format!("e-{n}"), MapPrelim::default());
            entity.insert(&mut txn, "x", Any::from(f64::from(n)));
            entity.insert(&mut txn, "on", Any::from(n % 2 == 0));
        }
        let whole = doc.transact().encode_diff_v1(&StateVector::default());
        let cost = update_cost(&whole).unwrap();
        assert!(
            cost < whole.len() * COST_PER_BYTE / 2,
            "{cost} for {} bytes",
            whole.len()
        );
    }

    /// Truncated and extended honest updates are refused, never passed.
    #[test]
    fn cut_or_padded_updates_are_refused() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        text.insert(&mut doc.transact_mut(), 0, "abcdef");
        doc.get_or_insert_map("m").insert(
            &mut doc.transact_mut(),
            "k",
            Any::from(vec![Any::from(1)]),
        );
        let whole = doc.transact().encode_diff_v1(&StateVector::default());
        for cut in 0..whole.len() {
            assert!(update(&whole[..cut]).is_err(), "cut at {cut}");
        }
        let mut padded = whole.clone();
        padded.push(0);
        assert_eq!(update(&padded).map(drop), Err(Refusal::Layout));
    }

    /// Integers wider than their field, as yrs would wrap them, are refused.
    #[test]
    fn integers_that_yrs_would_read_otherwise_are_refused() {
        // One client, with its block count written in six bytes (2^35 to a u64 reader,
        // 8 to yrs' u32 one).
        assert_eq!(
            update(&[1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01, 1, 0]).map(drop),
            Err(Refusal::Layout)
        );
        // A client id of 2^53.
        let mut sv = vec![1];
        sv.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10, 0]);
        assert!(state_vector(&sv).is_err());
        // Counts that the bytes cannot hold.
        assert_eq!(
            state_vector(&[0x80, 0x80, 0x80, 0x10]),
            Err(Refusal::Layout)
        );
    }
}

#[cfg(test)]
mod speed {
    use std::time::Instant;

    use yrs::updates::decoder::Decode;
    use yrs::{Any, Doc, Map, MapPrelim, ReadTxn, StateVector, Text, Transact, Update};

    /// How long the check takes against yrs decoding and applying the same update.
    /// Prints; asserts nothing (`cargo test --release -- --ignored --nocapture speed`).
    #[test]
    #[ignore]
    fn speed_of_the_check_against_yrs() {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        let map = doc.get_or_insert_map("entities");
        {
            let mut txn = doc.transact_mut();
            for n in 0..20_000u32 {
                text.insert(&mut txn, (n * 7) % (n + 1), "ab");
            }
            for n in 0..1_000u32 {
                let entity = map.insert(&mut txn, format!("e-{n}"), MapPrelim::default());
                entity.insert(&mut txn, "owner", "00ff00ff");
                let components = entity.insert(&mut txn, "components", MapPrelim::default());
                let card = components.insert(&mut txn, "Card", MapPrelim::default());
                card.insert(&mut txn, "x", Any::from(f64::from(n)));
                card.insert(&mut txn, "label", "a card");
            }
        }
        let whole = doc.transact().encode_diff_v1(&StateVector::default());
        let best = |f: &dyn Fn()| {
            (0..20)
                .map(|_| {
                    let start = Instant::now();
                    f();
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        let check = best(&|| assert!(super::update(&whole).is_ok()));
        let decode = best(&|| {
            Update::decode_v1(&whole).unwrap();
        });
        let apply = best(&|| {
            let fresh = Doc::new();
            fresh
                .transact_mut()
                .apply_update(Update::decode_v1(&whole).unwrap())
                .unwrap();
        });
        let shape = super::update(&whole).unwrap();
        let admit = best(&|| {
            let _ = crate::doc::levels::Levels::default().admit(&shape);
        });
        let record = best(&|| {
            let mut levels = crate::doc::levels::Levels::default();
            levels.record(&shape, |_| u32::MAX, |_| u32::MAX);
        });
        println!(
            "{} bytes: check {check:?}, yrs decode {decode:?}, yrs decode + apply {apply:?}; levels: admit {admit:?}, record {record:?}",
            whole.len()
        );
    }
}
