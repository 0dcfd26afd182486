//! Large updates of this peer's, cut into pieces a receiver can decode one by one.
//!
//! A late joiner's catch-up is the whole document as one update, and yrs decodes all
//! of it (a third of the work) before it integrates any of it. Sent as several
//! updates of about [`SyncedDoc::piece_size`](super::SyncedDoc::piece_size) bytes, the
//! receiver decodes the next piece while another thread integrates the last.
//!
//! Each piece is a whole update of its own, accepted or refused as a whole like any
//! other. The cuts fall between blocks; the pieces of one client's history follow each
//! other in order on the reliable channel, so none leaves a hole, and the delete set
//! travels with the last. A piece can still need a block of another client from a
//! later piece (the whole update would have integrated them together): yrs keeps it
//! pending until that piece is in, as with any update that arrives before what it
//! builds on.

use yrs::StateVector;
use yrs::block::ClientID;

use super::v1::{self, Reader};

/// The default [`SyncedDoc::piece_size`](super::SyncedDoc::piece_size): a piece and
/// its headers fit one datagram (no [fragments](crate::net::wire::FRAGMENT_SIZE)), and the
/// first is decoded in a few dozen microseconds.
pub const PIECE_SIZE: usize = crate::net::wire::FRAGMENT_SIZE - 256;

/// One client's blocks within a piece.
struct Run {
    client: u64,
    clock: u64,
    blocks: u64,
    bytes: std::ops::Range<usize>,
}

/// Cuts `update` (encoded by this peer's yrs, ending per client at `ends`: the state
/// vector it was encoded at) into updates whose blocks take at most `size` bytes (a
/// larger block goes alone), cut between blocks.
///
/// `None` when it would be one piece anyway, or when the blocks read do not reach the
/// clocks in `ends` (a layout this reader gets wrong would give pieces wrong clocks,
/// and so every receiver a corrupt document): then it is sent whole.
pub(crate) fn split(update: &[u8], size: usize, ends: &StateVector) -> Option<Vec<Vec<u8>>> {
    if update.len() < size.saturating_mul(2) {
        return None;
    }
    let mut r = Reader::new(update);
    let mut pieces: Vec<Vec<Run>> = Vec::new();
    let mut piece: Vec<Run> = Vec::new();
    let mut piece_start = r.at;
    for _ in 0..r.var()? {
        let blocks = r.var()?;
        let client = r.var()?;
        let mut clock = r.var()?;
        let mut run = Run {
            client,
            clock,
            blocks: 0,
            bytes: r.at..r.at,
        };
        for _ in 0..blocks {
            let (start, start_clock) = (r.at, clock);
            clock = clock.checked_add(v1::block(&mut r, true)?.len)?;
            let piece_has_blocks = run.blocks > 0 || !piece.is_empty();
            if r.at - piece_start > size && piece_has_blocks {
                // This block would make the piece too large: it starts the next one.
                let next = Run {
                    client,
                    clock: start_clock,
                    blocks: 0,
                    bytes: start..start,
                };
                let full = std::mem::replace(&mut run, next);
                if full.blocks > 0 {
                    piece.push(full);
                }
                pieces.push(std::mem::take(&mut piece));
                piece_start = start;
            }
            run.blocks += 1;
            run.bytes.end = r.at;
        }
        if run.blocks > 0 {
            piece.push(run);
        }
        if u64::from(ends.get(&ClientID::new(client))) != clock {
            return None;
        }
    }
    let delete_set = &update[r.at..];
    if !piece.is_empty() || pieces.is_empty() {
        pieces.push(piece);
    }
    if pieces.len() < 2 {
        return None;
    }
    let last = pieces.len() - 1;
    let encoded = pieces
        .into_iter()
        .enumerate()
        .map(|(i, runs)| {
            let mut out = Vec::with_capacity(size + 64);
            var(&mut out, runs.len() as u64);
            for run in runs {
                var(&mut out, run.blocks);
                var(&mut out, run.client);
                var(&mut out, run.clock);
                out.extend_from_slice(&update[run.bytes]);
            }
            if i == last {
                out.extend_from_slice(delete_set);
            } else {
                out.push(0); // an empty delete set
            }
            out
        })
        .collect();
    Some(encoded)
}

fn var(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests {
    use yrs::types::Attrs;
    use yrs::updates::decoder::Decode;
    use yrs::{
        Any, Array, Doc, GetString, Map, MapPrelim, Options, ReadTxn, Text, Transact, Update,
        XmlElementPrelim, XmlFragment,
    };

    use super::*;

    fn doc(client: u64) -> Doc {
        Doc::with_options(Options {
            client_id: ClientID::new(client),
            ..Options::default()
        })
    }

    fn exchange(from: &Doc, to: &Doc) {
        let update = from
            .transact()
            .encode_diff_v1(&to.transact().state_vector());
        to.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
    }

    /// Pieces of a document three clients edited, every kind of content and deletions
    /// included, rebuild the same document whatever size they are cut to.
    #[test]
    fn pieces_rebuild_the_document() {
        let [a, b, c] = [doc(1), doc(2), doc(3)];
        for (i, d) in [&a, &b, &c].into_iter().enumerate() {
            let text = d.get_or_insert_text("text");
            let map = d.get_or_insert_map("map");
            let array = d.get_or_insert_array("array");
            let xml = d.get_or_insert_xml_fragment("xml");
            let mut txn = d.transact_mut();
            // Every edit at a multiple of the 19 bytes of `WORDS` (indices are in bytes).
            const WORDS: &str = "héllo 🦀 wörld ";
            for n in 0..50 {
                let at = if n % 2 == 0 { 0 } else { text.len(&txn) };
                text.insert(&mut txn, at, WORDS);
                map.insert(&mut txn, format!("k{i}-{n}"), Any::from(n as f64));
                array.push_back(&mut txn, "x");
            }
            let bold = Attrs::from([("bold".into(), Any::Bool(true))]);
            text.format(&mut txn, 19, 57, bold);
            text.remove_range(&mut txn, 38, 95);
            array.remove_range(&mut txn, 3, 10);
            map.insert(&mut txn, format!("inner{i}"), MapPrelim::default());
            xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            drop(txn);
            // Interleave the clients' histories.
            exchange(&a, d);
            exchange(d, &a);
        }
        exchange(&a, &b);
        exchange(&c, &b);
        let txn = b.transact();
        let whole = txn.encode_diff_v1(&StateVector::default());
        let ends = txn.state_vector();
        drop(txn);
        let expected = b.get_or_insert_text("text").get_string(&b.transact());
        for size in [1, 7, 100, 1_000] {
            let pieces = split(&whole, size, &ends).expect("cut");
            assert!(pieces.len() > 2, "{size}: {} pieces", pieces.len());
            let fresh = Doc::new();
            for piece in &pieces {
                fresh
                    .transact_mut()
                    .apply_update(Update::decode_v1(piece).unwrap())
                    .unwrap();
            }
            let txn = fresh.transact();
            assert_eq!(txn.state_vector(), ends, "{size}");
            assert_eq!(
                txn.encode_diff_v1(&StateVector::default()),
                whole,
                "{size}: the same blocks and deletions"
            );
            assert!(txn.store().pending_update().is_none());
            drop(txn);
            assert_eq!(
                fresh
                    .get_or_insert_text("text")
                    .get_string(&fresh.transact()),
                expected
            );
        }
        // Small updates, and a layout the ends do not match, go whole.
        assert!(split(&whole, whole.len(), &ends).is_none());
        assert!(split(&whole, 100, &StateVector::default()).is_none());
    }
}
