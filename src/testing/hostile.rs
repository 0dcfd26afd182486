//! What a hostile peer sends: bytes that declare gigabytes, integers that yrs would
//! read otherwise than they say, nesting that recursion cannot survive, updates that
//! build on nothing, floods of asks, and plain garbage on every message kind.
//!
//! The hostile tests, the fuzzers' seeds, the chaos run's sprayer and the browser
//! check (`board --hostile`) all send these. A peer that receives [`datagrams`] must
//! refuse and count each, stay within a small multiple of their size in memory and
//! time, and keep converging with the honest peers: natively and in the browser,
//! where a panic aborts the tab.
//!
//! ```
//! use bevy_peer_sync::testing::hostile;
//!
//! let spray = hostile::datagrams(7);
//! assert!(spray.len() > 300);
//! // The whole spray is a few MB: a nested bomb of 711 bytes asked for 800 MiB.
//! let bytes: usize = spray.iter().map(|(_, d)| d.len()).sum();
//! assert!(bytes < 4 << 20, "{bytes}");
//! ```

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::net::transport::Channel;
use crate::net::wire::{self, Message, PROTOCOL_VERSION};

/// Appends `n` as an LEB128 varint.
pub fn varint(out: &mut Vec<u8>, n: u64) {
    wire::write_varint(out, n);
}

/// A `Doc` wire body: document `doc` (0 the room's, 1 the entities'), y-sync message
/// `kind` (0 step 1, 1 step 2, 2 update) with `payload`.
pub fn doc_body(doc: u8, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = vec![doc, 0, kind];
    varint(&mut body, payload.len() as u64);
    body.extend_from_slice(payload);
    body
}

/// A state vector that declares 2^25 entries and holds none: 4 bytes (yrs reserved
/// and zeroed 64 MiB for it).
pub fn state_vector_bomb() -> Vec<u8> {
    let mut sv = Vec::new();
    varint(&mut sv, 1 << 25);
    sv
}

/// One item under key `k` of root map `m`: `Any` maps nested 100 deep, each declaring
/// 2^22 entries, cut short after the first key of each (711 bytes; it cost 800 MiB).
pub fn nested_map_bomb() -> Vec<u8> {
    let mut update = vec![1, 1, 7, 0, 8 | 0b0010_0000, 1, 1, b'm', 1, b'k', 1];
    for _ in 0..100 {
        update.push(118);
        varint(&mut update, 1 << 22);
        update.extend([1, b'k']);
    }
    update
}

/// A key whose length is written in six bytes (2^35 to a 64-bit reader, 8 to yrs'
/// wrapping 32-bit one), then a value nested `depth` deep: yrs would decode the
/// nesting by recursion.
pub fn wrapped_length(depth: usize) -> Vec<u8> {
    let mut update = vec![1, 1, 7, 0, 8 | 0b0010_0000, 1, 1, b'm'];
    update.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x01]);
    update.extend(b"kkkkkkkk");
    update.push(1);
    for _ in 0..depth {
        update.extend([117, 1]);
    }
    update.extend([126, 0]);
    update
}

/// Shared types nested `levels` deep, each the parent of the next, the outermost
/// deleted: yrs deletes nested types by recursion.
pub fn deep_types(levels: u64) -> Vec<u8> {
    let mut update = vec![1];
    varint(&mut update, levels);
    update.extend([1, 0]);
    update.extend([7, 1, 1, b'a', 0]);
    for k in 1..levels {
        update.extend([7, 0, 1]);
        varint(&mut update, k - 1);
        update.push(0);
    }
    update.extend([1, 1, 1, 0, 1]);
    update
}

/// `updates` live updates of `client`, each nesting `per_update` shared types one in
/// the next (the first in the last of the update before), then one deleting the
/// outermost. Each nests no deeper than one update may, but together they nest
/// `updates * per_update` deep, and yrs deletes nested types by recursion: some
/// thousands deep overflow the stack (a tab's in the browser, whoever deletes).
/// The first is under root array `a` (see [`deep_types_across_updates_in`]).
pub fn deep_types_across_updates(client: u64, updates: u64, per_update: u64) -> Vec<Vec<u8>> {
    deep_types_across_updates_in(0, client, updates, per_update)
}

/// [`deep_types_across_updates`] in document `doc`: the first type under root array
/// `a` of the room's document (`0`), or under key `e` of the entity document's root
/// map `entities` (`1`, the only root peers may write there).
pub fn deep_types_across_updates_in(
    doc: u8,
    client: u64,
    updates: u64,
    per_update: u64,
) -> Vec<Vec<u8>> {
    let mut out = nested_chain(doc, updates, per_update, |_| client, |u| u * per_update);
    let mut delete = vec![0, 1];
    varint(&mut delete, client);
    delete.extend([1, 0, 1]);
    out.push(delete);
    out
}

/// `updates` updates of `per_update` array types each, every type in the one before
/// (the first under a root of `doc`: see [`deep_types_across_updates_in`]); update `u`
/// from `client(u)`, starting at `clock(u)`.
fn nested_chain(
    doc: u8,
    updates: u64,
    per_update: u64,
    client: impl Fn(u64) -> u64,
    clock: impl Fn(u64) -> u64,
) -> Vec<Vec<u8>> {
    let mut parent = None;
    (0..updates)
        .map(|u| {
            let (c, start) = (client(u), clock(u));
            let mut update = vec![1];
            varint(&mut update, per_update);
            varint(&mut update, c);
            varint(&mut update, start);
            for k in start..start + per_update {
                match (parent, doc) {
                    // An array under key `e` of root map `entities`.
                    (None, 1) => {
                        update.extend([0b0010_0000 | 7, 1, 8]);
                        update.extend(b"entities");
                        update.extend([1, b'e', 0]);
                    }
                    _ => array_in(&mut update, parent),
                }
                parent = Some((c, k));
            }
            update.push(0);
            update
        })
        .collect()
}

/// One block: an array type under root `a` (`None`), or in the type `parent`.
fn array_in(update: &mut Vec<u8>, parent: Option<(u64, u64)>) {
    match parent {
        None => update.extend([7, 1, 1, b'a', 0]),
        Some((client, clock)) => {
            update.extend([7, 0]);
            varint(update, client);
            varint(update, clock);
            update.push(0);
        }
    }
}

/// [`deep_types_across_updates`], but each update from a client of its own
/// (`first_client` on), so that sent in reverse none leaves a hole: each builds on an
/// item the receiver does not have yet, and yrs keeps it pending until the first
/// comes, then integrates the whole chain at once. In document `doc` (see
/// [`deep_types_across_updates_in`]).
pub fn deep_types_across_clients(
    doc: u8,
    first_client: u64,
    updates: u64,
    per_update: u64,
) -> Vec<Vec<u8>> {
    nested_chain(doc, updates, per_update, |u| first_client + u, |_| 0)
}

/// `rounds` updates, each with three clients: a collected block of client 9,001 at
/// clock `k` (the last round's left origin), 32 types of client 9,002 nested one in the
/// next (the first in the last round's type of client 9,003, or under root `a`), and a
/// type of client 9,003 whose left origin is the next round's collected block (not
/// sent yet) and whose right origin is this round's deepest type. yrs keeps that type
/// pending until the block comes, then places it beside its right origin (a collected
/// left origin is no origin): each round nests 32 deeper than the last.
pub fn collected_left_origins(rounds: u64) -> Vec<Vec<u8>> {
    let (gc, chain, ty) = (9_001, 9_002, 9_003);
    (0..rounds)
        .map(|k| {
            let mut update = vec![3];
            // The collected block.
            update.push(1);
            varint(&mut update, gc);
            varint(&mut update, k);
            update.extend([0, 1]);
            // The chain.
            update.push(32);
            varint(&mut update, chain);
            varint(&mut update, 32 * k);
            array_in(&mut update, k.checked_sub(1).map(|last| (ty, last)));
            for clock in 32 * k + 1..32 * (k + 1) {
                array_in(&mut update, Some((chain, clock - 1)));
            }
            // The type beside the chain's end, once its left origin turns out collected.
            update.push(1);
            varint(&mut update, ty);
            varint(&mut update, k);
            update.push(0xc7);
            varint(&mut update, gc);
            varint(&mut update, k + 1);
            varint(&mut update, chain);
            varint(&mut update, 32 * k + 31);
            update.push(0);
            update.push(0);
            update
        })
        .collect()
}

/// A review's recipe in three updates, given an array `under`: client `client` sends
/// a string waiting for an item of client `client + 1` (so yrs keeps both its blocks
/// pending) and a collected block at clock 1; then the missing item, the string again
/// and, at clock 1, an array in `under` (yrs takes it: it integrated nothing there);
/// then client `client + 2` nests 31 arrays in that clock (its 31st at clock 30).
/// Counted as the collected block it was first said to be, clock 1 sat at level 0 and
/// the 31 at 1 to 31. (Sent first, third, second: the 31 wait in yrs for the array.)
pub fn pending_collected_block_retaken(client: u64, under: (u64, u64)) -> Vec<Vec<u8>> {
    let (c, x, d) = (client, client + 1, client + 2);
    let string_after_x = |update: &mut Vec<u8>| {
        update.push(0x84);
        varint(update, x);
        update.extend([0, 1, b'x']);
    };
    let mut first = vec![1, 2];
    varint(&mut first, c);
    first.push(0);
    string_after_x(&mut first);
    first.extend([0, 1, 0]);
    let mut second = vec![2, 1];
    varint(&mut second, x);
    second.extend([0, 4, 1, 1, b't', 1, b'y', 2]);
    varint(&mut second, c);
    second.push(0);
    string_after_x(&mut second);
    array_in(&mut second, Some(under));
    second.push(0);
    let mut third = vec![1, 31];
    varint(&mut third, d);
    third.push(0);
    array_in(&mut third, Some((c, 1)));
    for clock in 1..31 {
        array_in(&mut third, Some((d, clock - 1)));
    }
    third.push(0);
    vec![first, second, third]
}

/// A review's recipe, one round: a collected block of `over.0` at clock `over.1` (a
/// type the receiver holds: yrs drops the block, having those clocks), and client
/// `client`'s 32 arrays, the first in `over`, each next in the one before. Looked up
/// in the update itself, `over` was a collected block, so the 32 were counted
/// relative to it while yrs put them under the real type: 32 deeper each round.
pub fn collected_over_a_type(over: (u64, u64), client: u64) -> Vec<u8> {
    let mut update = vec![2, 1];
    varint(&mut update, over.0);
    varint(&mut update, over.1);
    update.extend([0, 1, 32]);
    varint(&mut update, client);
    update.push(0);
    array_in(&mut update, Some(over));
    for clock in 1..32 {
        array_in(&mut update, Some((client, clock - 1)));
    }
    update.push(0);
    update
}

/// A sixth review's recipe, `rounds` rounds of three updates: client `R` sends a
/// string waiting for an item of client `B` (so yrs keeps it pending) and a
/// collected block at clock 1; `B` sends that item under root `t`, so yrs integrates
/// `R`'s blocks, the collected one too; then client `C` sends an array whose left
/// origin is that collected block and whose right origin is the last round's deepest
/// array (the first round's: an array under root `a`), and 31 arrays nested in it.
/// yrs places the array beside its right origin (a collected left origin is no
/// origin): each round nests 31 deeper than the last. Counted while the collected
/// block still read as not placed, each round's arrays were relative to it and went in.
pub fn drained_collected_left_origins(rounds: u64) -> Vec<Vec<u8>> {
    let mut base = vec![1, 1];
    varint(&mut base, 9_599);
    base.push(0);
    array_in(&mut base, None);
    base.push(0);
    let mut out = vec![base];
    let mut right = (9_599, 0);
    for k in 0..rounds {
        let (r, b, c) = (9_600 + 3 * k, 9_601 + 3 * k, 9_602 + 3 * k);
        let mut pending = vec![1, 2];
        varint(&mut pending, r);
        pending.extend([0, 0x84]);
        varint(&mut pending, b);
        pending.extend([0, 1, b'x', 0, 1, 0]);
        let mut brings = vec![1, 1];
        varint(&mut brings, b);
        brings.extend([0, 4, 1, 1, b't', 1, b'y', 0]);
        let mut beside = vec![1, 32];
        varint(&mut beside, c);
        beside.extend([0, 0xc7]);
        varint(&mut beside, r);
        varint(&mut beside, 1);
        varint(&mut beside, right.0);
        varint(&mut beside, right.1);
        beside.push(0);
        for clock in 1..32 {
            array_in(&mut beside, Some((c, clock - 1)));
        }
        beside.push(0);
        out.extend([pending, brings, beside]);
        right = (c, 31);
    }
    out
}

/// A seventh review's recipe, one round: a collected block of client `gc` and, in
/// the same update, client `client`'s array whose left origin is that block and whose
/// right origin is `beside` (an item the receiver holds), with 31 arrays nested in it.
/// yrs places the array beside `beside`, wherever that sits; counted relative to the
/// collected block (not placed yet, looked up), each round went 31 deeper.
pub fn collected_left_origin_beside_a_held_item(
    gc: u64,
    beside: (u64, u64),
    client: u64,
) -> Vec<u8> {
    let mut update = vec![2, 1];
    varint(&mut update, gc);
    update.extend([0, 0, 1]);
    update.push(32);
    varint(&mut update, client);
    update.extend([0, 0xc7]);
    varint(&mut update, gc);
    update.push(0);
    varint(&mut update, beside.0);
    varint(&mut update, beside.1);
    update.push(0);
    for clock in 1..32 {
        array_in(&mut update, Some((client, clock - 1)));
    }
    update.push(0);
    update
}

/// A seventh review's recipe: one update of client `client` that yrs keeps pending
/// (its first block builds on item `on`, not sent yet), holding `pairs` collected
/// blocks, each followed by a deleted item (so that each is a run of its own).
pub fn pending_collected_blocks(client: u64, pairs: u64, on: (u64, u64)) -> Vec<u8> {
    let mut update = vec![1];
    varint(&mut update, 1 + 2 * pairs);
    varint(&mut update, client);
    update.push(0);
    update.push(0x81);
    varint(&mut update, on.0);
    varint(&mut update, on.1);
    update.push(1);
    for k in 0..pairs {
        update.extend([0, 1]);
        update.push(0x81);
        varint(&mut update, client);
        varint(&mut update, 1 + 2 * k);
        update.push(1);
    }
    update.push(0);
    update
}

/// An eighth review's recipe, all of one client (so it may go live): a collected block
/// at clock 0, a chain of 32 arrays (clocks 1 to 32, the first under root `a`), then
/// `rounds` updates each describing the last round's deepest array again, as a
/// deleted item beside the collected block (level 0), with 32 arrays nested in it. yrs
/// keeps the array (it holds those clocks) and nests the 32 in it; counted from the
/// description, they started again from 0, and each round went 32 deeper.
pub fn type_redescribed_beside_a_collected_block(client: u64, rounds: u64) -> Vec<Vec<u8>> {
    let mut gc = vec![1, 1];
    varint(&mut gc, client);
    gc.extend([0, 0, 1, 0]);
    let mut chain = vec![1, 32];
    varint(&mut chain, client);
    chain.push(1);
    array_in(&mut chain, None);
    for clock in 2..=32 {
        array_in(&mut chain, Some((client, clock - 1)));
    }
    chain.push(0);
    let mut out = vec![gc, chain];
    for round in 1..=rounds {
        let over = 32 * round;
        let mut update = vec![1, 33];
        varint(&mut update, client);
        varint(&mut update, over);
        update.push(0x81);
        varint(&mut update, client);
        update.extend([0, 1]);
        for clock in over + 1..=over + 32 {
            array_in(&mut update, Some((client, clock - 1)));
        }
        update.push(0);
        out.push(update);
    }
    out
}

/// An eighth review's recipe: `clients` clients from `first` on, one collected block
/// each (about 7 bytes a client).
pub fn one_block_clients(first: u64, clients: u64) -> Vec<u8> {
    let mut update = Vec::new();
    varint(&mut update, clients);
    for client in first..first + clients {
        update.push(1);
        varint(&mut update, client);
        update.extend([0, 0, 1]);
    }
    update.push(0);
    update
}

/// `items` text items in a row, each continuing the last: yrs squashes the run at
/// commit at a cost of its square.
pub fn squash_run(items: u64) -> Vec<u8> {
    let mut update = vec![1];
    varint(&mut update, items);
    update.extend([1, 0]);
    update.extend([4, 1, 1, b't', 2, b'a', b'a']);
    for k in 1..items {
        update.extend([0b1000_0100, 1]);
        varint(&mut update, 2 * k - 1);
        update.extend([2, b'a', b'a']);
    }
    update.push(0);
    update
}

/// One live update of client `client` at clock 0: a string item whose left origin is
/// an item (client 999,999, clock 5) nobody has. yrs kept such updates pending for
/// ever, merging each later one into them.
pub fn update_building_on_nothing(client: u64) -> Vec<u8> {
    let mut update = vec![1, 1];
    varint(&mut update, client);
    update.extend([0, 0x80 | 4]);
    varint(&mut update, 999_999);
    update.extend([5, 1, b'x', 0]);
    update
}

/// One wire message as the datagrams it travels in (fragments past 16 KiB).
fn frames(message: Message, message_id: u32) -> Vec<(Channel, Bytes)> {
    let channel = if message.kind().allowed_on(Channel::Reliable) {
        Channel::Reliable
    } else {
        Channel::Unreliable
    };
    let frame = wire::encode(&message).expect("hostile messages encode");
    let pieces = match channel {
        Channel::Reliable => wire::fragment(frame, message_id).expect("below the fragment limit"),
        Channel::Unreliable => vec![frame],
    };
    pieces.into_iter().map(|bytes| (channel, bytes)).collect()
}

/// The whole spray, in the order it is sent: every document bomb on both documents
/// and every message kind, floods of asks and of updates that build on nothing,
/// broken fragments, and `seed`-chosen garbage. Every datagram is one a receiver must
/// refuse or answer at a bounded price; none may be judged honest state.
pub fn datagrams(seed: u64) -> Vec<(Channel, Bytes)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    let mut id = 0xB0B0_0000u32;
    let mut doc = |out: &mut Vec<(Channel, Bytes)>, body: Vec<u8>| {
        id += 1;
        out.extend(frames(Message::Doc(Bytes::from(body)), id));
    };
    for d in [0, 1] {
        doc(&mut out, doc_body(d, 0, &state_vector_bomb()));
        for kind in [1, 2] {
            doc(&mut out, doc_body(d, kind, &nested_map_bomb()));
            doc(&mut out, doc_body(d, kind, &wrapped_length(10_000)));
            doc(&mut out, doc_body(d, kind, &deep_types(2_000)));
            doc(&mut out, doc_body(d, kind, &squash_run(20_000)));
            // JSON content, which yrs reads one string longer than it writes.
            doc(
                &mut out,
                doc_body(d, kind, &[1, 1, 1, 0, 2, 1, 1, b't', 0, 1, b'x', 0]),
            );
            // Cut short, and padded.
            let mut cut = update_building_on_nothing(77);
            cut.pop();
            doc(&mut out, doc_body(d, kind, &cut));
            let mut padded = update_building_on_nothing(78);
            padded.extend([0; 9]);
            doc(&mut out, doc_body(d, kind, &padded));
        }
        for n in 0..50 {
            doc(
                &mut out,
                doc_body(d, 2, &update_building_on_nothing(5_000 + n)),
            );
        }
        // 12,000 types deep, 30 an update: past a tab's stack when deleted. (As
        // catch-up: live, another's blocks are refused before anything else.)
        for update in deep_types_across_updates_in(d, 6_000 + u64::from(d), 400, 30) {
            doc(&mut out, doc_body(d, 1, &update));
        }
        // Asks for everything, again and again.
        for _ in 0..20 {
            doc(&mut out, doc_body(d, 0, &[0]));
        }
        // Unknown documents and y-sync kinds, and no body at all.
        doc(&mut out, doc_body(9, 0, &[0]));
        doc(&mut out, doc_body(d, 7, &[0]));
        doc(&mut out, vec![d]);
    }
    // Datagrams that are not messages: empty, one byte, another version, unknown and
    // misplaced kinds, short pings.
    let header = |kind: u8| vec![PROTOCOL_VERSION, kind];
    let mut raw: Vec<(Channel, Vec<u8>)> = vec![
        (Channel::Reliable, vec![]),
        (Channel::Unreliable, vec![PROTOCOL_VERSION]),
        (
            Channel::Unreliable,
            vec![PROTOCOL_VERSION + 1, 4, 0, 0, 0, 0],
        ),
        (Channel::Reliable, header(200)),
        (Channel::Unreliable, [header(6), vec![0, 0, 0, 0]].concat()),
        (Channel::Reliable, [header(7), vec![0; 8]].concat()),
        (Channel::Unreliable, [header(4), vec![1, 2, 3]].concat()),
        (Channel::Reliable, [header(1), vec![0xff; 40]].concat()),
    ];
    // Fragments: a count of 65,535 (2 GiB announced), a gap, a piece past the count,
    // a lone last piece.
    let fragment = |message: u32, index: u16, count: u16, len: usize| {
        let mut bytes = header(2);
        bytes.extend(message.to_le_bytes());
        bytes.extend(index.to_le_bytes());
        bytes.extend(count.to_le_bytes());
        bytes.extend(std::iter::repeat_n(0xAB, len));
        (Channel::Reliable, bytes)
    };
    raw.push(fragment(1, 0, u16::MAX, 16 * 1024));
    raw.push(fragment(1, 1, u16::MAX, 16 * 1024));
    raw.push(fragment(2, 0, 4, 16 * 1024));
    raw.push(fragment(2, 2, 4, 16 * 1024));
    raw.push(fragment(3, 9, 4, 100));
    raw.push(fragment(4, 3, 4, 100));
    // Presence that lies about its lengths, and transient batches that do.
    let mut presence_name = vec![1];
    varint(&mut presence_name, 1 << 40);
    raw.push((Channel::Reliable, [header(8), presence_name].concat()));
    raw.push((
        Channel::Unreliable,
        [header(8), vec![0, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
    ));
    raw.push((Channel::Unreliable, [header(8), vec![9; 30]].concat()));
    let mut transient = Vec::new();
    varint(&mut transient, 5);
    varint(&mut transient, 1 << 30);
    raw.push((Channel::Unreliable, [header(7), transient].concat()));
    // Seeded garbage on every kind and both channels.
    for _ in 0..200 {
        let channel = if rng.random_bool(0.5) {
            Channel::Reliable
        } else {
            Channel::Unreliable
        };
        // Anything but a `Bye`, which would end the link and the test with it.
        let kind = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11][rng.random_range(0..11usize)];
        let len = rng.random_range(0..600usize);
        let mut bytes = header(kind);
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        raw.push((channel, bytes));
    }
    out.extend(raw.into_iter().map(|(c, b)| (c, Bytes::from(b))));
    out
}
