//! The transient datagram body (see the [route docs](super#datagram-body)) and the
//! sender clock's order.

use bevy::log::warn;
use bytes::Bytes;

use crate::entity::NetId;
use crate::net::peer::ReplicaId;
use crate::net::wire::{HEADER_SIZE, SAFE_UNRELIABLE_SIZE, read_varint, write_varint};
use crate::registry::Framing;

/// Whether sender tick `a` comes after `b`, in serial-number order (RFC 1982): the
/// send clock wraps, and two ticks of one sender are never half its range apart.
pub(crate) fn tick_after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// Packs entries `(type index, entity, encoded value)` into datagram bodies of at most
/// [`SAFE_UNRELIABLE_SIZE`] bytes with their header. `framing[type]` says whether that
/// type's values delimit themselves.
pub fn pack(
    tick: u32,
    sender: ReplicaId,
    mut entries: Vec<(u16, NetId, Vec<u8>)>,
    framing: &[Framing],
) -> Vec<Bytes> {
    entries.sort_by_key(|(t, id, _)| (*t, id.creator != sender, id.creator, id.counter));
    let budget = SAFE_UNRELIABLE_SIZE - HEADER_SIZE;
    let group_header_room = 6;
    let mut datagrams = Vec::new();
    let mut group = Vec::with_capacity(budget);
    let mut i = 0;
    while i < entries.len() {
        let mut body = Vec::with_capacity(budget);
        write_varint(&mut body, u64::from(tick));
        while i < entries.len() {
            let type_index = entries[i].0;
            let prefixed = !matches!(
                framing.get(usize::from(type_index)),
                Some(Framing::Measured(_))
            );
            group.clear();
            let mut count = 0u64;
            let mut previous = 0u64;
            let mut j = i;
            while j < entries.len() && entries[j].0 == type_index {
                let (_, id, value) = &entries[j];
                let mark = group.len();
                let foreign = id.creator != sender;
                let delta = if foreign {
                    id.counter
                } else {
                    id.counter.wrapping_sub(previous)
                };
                write_varint(&mut group, (delta << 1) | u64::from(foreign));
                if foreign {
                    write_varint(&mut group, id.creator.0);
                }
                if prefixed {
                    write_varint(&mut group, value.len() as u64);
                }
                group.extend_from_slice(value);
                if body.len() + group_header_room + group.len() > budget {
                    group.truncate(mark);
                    break;
                }
                if !foreign {
                    previous = id.counter;
                }
                count += 1;
                j += 1;
            }
            if count == 0 {
                if body.len() > 5 {
                    break; // start a new datagram
                }
                warn!(
                    "a transient value of `{}` bytes does not fit one datagram; dropped",
                    entries[i].2.len()
                );
                i += 1;
                continue;
            }
            write_varint(&mut body, u64::from(type_index));
            write_varint(&mut body, count);
            body.extend_from_slice(&group);
            i = j;
            if j < entries.len() && entries[j].0 == type_index {
                break; // this type continues in the next datagram
            }
        }
        datagrams.push(Bytes::from(body));
    }
    datagrams
}

/// One decoded value: its type index, entity and encoded value.
pub type Entry = (u16, NetId, Bytes);

/// Decodes a datagram body into entries. `None` if it is malformed anywhere.
/// `framing` has one element per registered type (see [`pack`]); a type that is not
/// transient there makes the datagram malformed.
pub fn unpack(body: &Bytes, sender: ReplicaId, framing: &[Framing]) -> Option<(u32, Vec<Entry>)> {
    let mut at = 0;
    let tick = u32::try_from(read_varint(body, &mut at)?).ok()?;
    let mut entries = Vec::new();
    while at < body.len() {
        let type_index = u16::try_from(read_varint(body, &mut at)?).ok()?;
        let measure = match framing.get(usize::from(type_index))? {
            Framing::NotTransient => return None,
            Framing::Prefixed => None,
            Framing::Measured(measure) => Some(*measure),
        };
        let count = read_varint(body, &mut at)?;
        if count as usize > body.len() {
            return None;
        }
        let mut previous = 0u64;
        for _ in 0..count {
            let key = read_varint(body, &mut at)?;
            let foreign = key & 1 == 1;
            let id = if foreign {
                NetId {
                    creator: ReplicaId(read_varint(body, &mut at)?),
                    counter: key >> 1,
                }
            } else {
                previous = previous.checked_add(key >> 1)?;
                NetId {
                    creator: sender,
                    counter: previous,
                }
            };
            let len = match measure {
                Some(measure) => measure(body.get(at..)?)?,
                None => read_varint(body, &mut at)? as usize,
            };
            let end = at.checked_add(len).filter(|end| *end <= body.len())?;
            entries.push((type_index, id, body.slice(at..end)));
            at = end;
        }
    }
    Some((tick, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Measure;

    fn id(creator: u64, counter: u64) -> NetId {
        NetId {
            creator: ReplicaId(creator),
            counter,
        }
    }

    #[test]
    fn packs_under_the_datagram_limit_and_unpacks_the_same() {
        let me = ReplicaId(7);
        let mut entries = Vec::new();
        for n in 1..=500u64 {
            entries.push((0u16, id(7, n), vec![n as u8; 10]));
        }
        entries.push((1u16, id(9, 3), vec![1, 2, 3]));
        let framing = [Framing::Prefixed, Framing::Prefixed];
        let datagrams = pack(42, me, entries.clone(), &framing);
        assert!(datagrams.len() > 1);
        let mut back = Vec::new();
        for d in &datagrams {
            assert!(
                d.len() + HEADER_SIZE <= SAFE_UNRELIABLE_SIZE,
                "{} bytes",
                d.len()
            );
            let (tick, decoded) = unpack(d, me, &framing).unwrap();
            assert_eq!(tick, 42);
            back.extend(decoded.into_iter().map(|(t, i, b)| (t, i, b.to_vec())));
        }
        back.sort_by_key(|(t, i, _)| (*t, *i));
        entries.sort_by_key(|(t, i, _)| (*t, *i));
        assert_eq!(back, entries);
        // 500 ten-byte values: one byte of id and one of length each, plus headers.
        let total: usize = datagrams.iter().map(|d| d.len()).sum();
        assert!(total < 500 * 12 + 100, "{total}");
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let one: &[Framing] = &[Framing::Prefixed];
        assert!(unpack(&Bytes::new(), ReplicaId(1), one).is_none());
        let unknown_type = Bytes::from_static(&[1, 5, 1]);
        assert!(unpack(&unknown_type, ReplicaId(1), one).is_none());
        let past_the_end = Bytes::from_static(&[1, 0, 1, 2, 9]);
        assert!(unpack(&past_the_end, ReplicaId(1), one).is_none());
        let mut state = 99u32;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (state >> 24) as u8
                })
                .collect();
            let fixed: Measure = |b| (b.len() >= 3).then_some(3);
            let _ = unpack(
                &Bytes::from(bytes),
                ReplicaId(1),
                &[
                    Framing::Prefixed,
                    Framing::Measured(fixed),
                    Framing::NotTransient,
                ],
            );
        }
    }
}
