//! Framing: what one datagram looks like on either channel.
//!
//! Every datagram starts with a two-byte header, `[protocol version][message kind]`,
//! followed by the body. Those two bytes are frozen for all versions, so a peer can
//! always tell "this is a different protocol version" apart from "this is garbage".
//!
//! | kind | name | channel | body |
//! |---|---|---|---|
//! | 1 | `Hello` | reliable | bincode [`Hello`] |
//! | 2 | `Fragment` | reliable | `u32` message id, `u16` index, `u16` count (LE), bytes |
//! | 3 | `Payload` | either | raw application bytes |
//! | 4 | `Ping` | unreliable | `u32` nonce (LE) |
//! | 5 | `Pong` | unreliable | `u32` nonce (LE) |
//! | 6 | `Doc` | reliable | y-sync message (`yrs::sync::Message`, lib0 v1) |
//! | 7 | `Transient` | unreliable | latest-wins component values |
//! | 8 | `Presence` | either | presence (awareness) state |
//!
//! Reliable messages larger than [`FRAGMENT_SIZE`] are split into `Fragment`s (the
//! native WebRTC stack refuses messages over [`MAX_DATAGRAM`] bytes) and reassembled
//! by a [`Reassembler`], up to [`WireLimits::max_message_size`]. Decoding never panics:
//! any input yields a [`Frame`] or a typed [`DecodeError`].

pub(crate) mod codec;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use thiserror::Error;

use crate::net::stats::DropReason;
use crate::net::transport::Channel;

/// The protocol version in byte 0 of every datagram.
pub const PROTOCOL_VERSION: u8 = 6;

/// Bytes of header in front of every body.
pub const HEADER_SIZE: usize = 2;

/// The largest datagram the native WebRTC stack (webrtc-rs) accepts on a data channel.
pub const MAX_DATAGRAM: usize = 65_535;

/// Reliable messages larger than this travel as fragments of at most this many payload
/// bytes. 16 KiB is the size every browser's SCTP stack interoperates with.
pub const FRAGMENT_SIZE: usize = 16 * 1024;

/// Bytes of a fragment's own header (after the two-byte frame header).
const FRAGMENT_HEADER: usize = 8;

/// Unreliable datagrams are kept at or under this size so they fit one IP packet on
/// common paths (MTU 1,280 minus DTLS, SCTP, UDP and IP overhead).
pub const SAFE_UNRELIABLE_SIZE: usize = 1_200;

/// Limits applied to everything a peer sends us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireLimits {
    /// The largest reliable message after reassembly. Larger ones are refused.
    pub max_message_size: usize,
}

impl Default for WireLimits {
    fn default() -> Self {
        Self {
            max_message_size: 32 * 1024 * 1024,
        }
    }
}

impl WireLimits {
    fn max_fragments(&self) -> usize {
        self.max_message_size
            .div_ceil(FRAGMENT_SIZE)
            .min(u16::MAX as usize)
    }
}

/// The message kinds, byte 1 of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Handshake: protocol and schema.
    Hello = 1,
    /// A piece of a large reliable message.
    Fragment = 2,
    /// Application bytes (see [`crate::net::session::SendPayload`]).
    Payload = 3,
    /// Round-trip probe.
    Ping = 4,
    /// Answer to a [`Kind::Ping`].
    Pong = 5,
    /// y-sync traffic of the shared document.
    Doc = 6,
    /// Latest-wins component values.
    Transient = 7,
    /// Presence (awareness) state.
    Presence = 8,
    /// The sender refuses the recipient from now on, saying why.
    Bye = 9,
}

impl Kind {
    fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        Ok(match byte {
            1 => Self::Hello,
            2 => Self::Fragment,
            3 => Self::Payload,
            4 => Self::Ping,
            5 => Self::Pong,
            6 => Self::Doc,
            7 => Self::Transient,
            8 => Self::Presence,
            9 => Self::Bye,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    /// Whether this kind may arrive on `channel`.
    pub fn allowed_on(self, channel: Channel) -> bool {
        match self {
            Self::Hello | Self::Fragment | Self::Doc | Self::Bye => channel == Channel::Reliable,
            Self::Ping | Self::Pong | Self::Transient => channel == Channel::Unreliable,
            Self::Payload | Self::Presence => true,
        }
    }
}

/// The handshake each side sends first on the reliable channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// `CARGO_PKG_VERSION` of the sender's `bevy_peer_sync`, for log lines.
    pub crate_version: String,
    /// The sender's replica id (stable across its reconnects): its key's (see
    /// [`identity`](crate::net::identity)), or the hello is refused.
    pub replica: u64,
    /// The sender's replica key (public half).
    pub key: [u8; 32],
    /// The sender's session key for this run (public half): its yrs client ids are
    /// derived from it.
    pub session: [u8; 32],
    /// A nonce the sender chose for this link, the same in each of its hellos on it.
    pub nonce: [u8; 16],
    /// Once the sender has the recipient's hello: its proof, for both nonces.
    pub proof: Option<crate::net::identity::Proof>,
    /// Hash of `schema`, order included.
    pub schema_hash: u64,
    /// The sender's registered sync types, in registration order (`"name:route"`).
    pub schema: Vec<String>,
    /// The sender has received the recipient's hello.
    pub heard: bool,
    /// The sender does not know yet that the recipient has its hello: answer with a
    /// hello that has `heard` set. A side repeats its hello until it knows (see
    /// `session`): the first datagrams of a data channel can be lost.
    pub waiting: bool,
    /// The sender's synced documents were empty when this link opened: on joining,
    /// send it your whole state; it sends no y-sync step 1 (it has nothing to name),
    /// which saves a round trip for a peer joining a room. The same in every hello
    /// of one link. A joiner says it to one peer at a time, so that it is sent one
    /// whole state, not one per peer in the room.
    pub fresh: bool,
}

/// Limits on a [`Hello`] from a peer.
const MAX_SCHEMA_ENTRIES: usize = 1_024;
const MAX_SCHEMA_ENTRY_LEN: usize = 512;

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Handshake.
    Hello(Hello),
    /// Application bytes.
    Payload(Bytes),
    /// Round-trip probe with a nonce.
    Ping(u32),
    /// Answer to a ping, echoing its nonce.
    Pong(u32),
    /// A y-sync message, still encoded (decoded by the shared document).
    Doc(Bytes),
    /// A transient batch, still encoded (decoded by the transient route).
    Transient(Bytes),
    /// A presence update, still encoded (decoded by presence).
    Presence(Bytes),
    /// The sender refuses the recipient from now on; the reason, at most
    /// [`MAX_BYE_LEN`] bytes of UTF-8.
    Bye(String),
}

/// The longest reason a [`Message::Bye`] carries.
pub const MAX_BYE_LEN: usize = 1_024;

impl Message {
    /// The kind byte of this message.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::Hello,
            Self::Payload(_) => Kind::Payload,
            Self::Ping(_) => Kind::Ping,
            Self::Pong(_) => Kind::Pong,
            Self::Doc(_) => Kind::Doc,
            Self::Transient(_) => Kind::Transient,
            Self::Presence(_) => Kind::Presence,
            Self::Bye(_) => Kind::Bye,
        }
    }
}

/// One piece of a fragmented reliable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fragment {
    /// Which message this belongs to (per sender).
    pub message_id: u32,
    /// Position of this piece, from 0.
    pub index: u16,
    /// How many pieces the message has (at least 2).
    pub count: u16,
    /// The bytes of this piece.
    pub payload: Bytes,
}

/// A decoded datagram: a whole message or a piece of one.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A complete message.
    Message(Message),
    /// A piece to feed to a [`Reassembler`].
    Fragment(Fragment),
}

/// Why an outgoing message could not be encoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EncodeError {
    /// The body codec failed.
    #[error("message body could not be encoded: {0}")]
    Body(String),
    /// The message is larger than its channel can carry.
    #[error("message of `{size}` bytes is over the `{limit}`-byte limit of its channel")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// Why an incoming datagram was refused. Decoding returns this instead of panicking,
/// whatever the bytes.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header.
    #[error("datagram of `{len}` bytes is shorter than its header")]
    Truncated {
        /// Length received.
        len: usize,
    },
    /// Over a size limit.
    #[error("datagram of `{size}` bytes is over the `{limit}`-byte limit")]
    Oversized {
        /// Size received or claimed.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// Another protocol version.
    #[error(
        "protocol version `{got}`, this build speaks `{}`",
        crate::net::wire::PROTOCOL_VERSION
    )]
    Version {
        /// The version byte received.
        got: u8,
    },
    /// A kind byte this version does not know.
    #[error("unknown message kind `{0}`")]
    UnknownKind(u8),
    /// A kind sent on a channel it does not belong to.
    #[error("message kind `{kind:?}` is not allowed on the {channel:?} channel")]
    WrongChannel {
        /// The kind.
        kind: Kind,
        /// The channel it came on.
        channel: Channel,
    },
    /// The body did not decode.
    #[error("malformed `{kind:?}` body: {reason}")]
    Body {
        /// The kind.
        kind: Kind,
        /// What the decoder said.
        reason: String,
    },
    /// Fragments that do not form a message.
    #[error("bad fragment: {0}")]
    Fragment(&'static str),
}

impl From<&DecodeError> for DropReason {
    fn from(error: &DecodeError) -> Self {
        match error {
            DecodeError::Truncated { .. } | DecodeError::Body { .. } => Self::Malformed,
            DecodeError::Oversized { .. } => Self::Oversized,
            DecodeError::Version { .. } => Self::WrongVersion,
            DecodeError::UnknownKind(_) => Self::UnknownKind,
            DecodeError::WrongChannel { .. } => Self::WrongChannel,
            DecodeError::Fragment(_) => Self::BadFragment,
        }
    }
}

/// Encodes one message into a datagram (which may still need [`fragment`]ing).
pub fn encode(message: &Message) -> Result<Bytes, EncodeError> {
    let header = [PROTOCOL_VERSION, message.kind() as u8];
    // Each body copied once, into a buffer of its size.
    let out = match message {
        Message::Hello(hello) => {
            let mut out = header.to_vec();
            codec::encode_into(hello, &mut out).map_err(EncodeError::Body)?;
            out
        }
        Message::Payload(bytes)
        | Message::Doc(bytes)
        | Message::Transient(bytes)
        | Message::Presence(bytes) => [&header[..], bytes].concat(),
        Message::Ping(nonce) | Message::Pong(nonce) => [&header[..], &nonce.to_le_bytes()].concat(),
        Message::Bye(reason) => {
            let end = reason.floor_char_boundary(MAX_BYE_LEN);
            [&header[..], &reason.as_bytes()[..end]].concat()
        }
    };
    Ok(Bytes::from(out))
}

/// Splits an encoded reliable datagram into fragments if it is larger than
/// [`FRAGMENT_SIZE`]; a small one is returned as it is.
pub fn fragment(frame: Bytes, message_id: u32) -> Result<Vec<Bytes>, EncodeError> {
    if frame.len() <= FRAGMENT_SIZE {
        return Ok(vec![frame]);
    }
    let count = frame.len().div_ceil(FRAGMENT_SIZE);
    let count = u16::try_from(count).map_err(|_| EncodeError::TooLarge {
        size: frame.len(),
        limit: FRAGMENT_SIZE * u16::MAX as usize,
    })?;
    let mut pieces = Vec::with_capacity(count as usize);
    for (index, chunk) in frame.chunks(FRAGMENT_SIZE).enumerate() {
        let mut piece = BytesMut::with_capacity(HEADER_SIZE + FRAGMENT_HEADER + chunk.len());
        piece.put_u8(PROTOCOL_VERSION);
        piece.put_u8(Kind::Fragment as u8);
        piece.put_u32_le(message_id);
        piece.put_u16_le(index as u16);
        piece.put_u16_le(count);
        piece.put_slice(chunk);
        pieces.push(piece.freeze());
    }
    Ok(pieces)
}

/// Decodes one datagram received on `channel`.
pub fn decode(datagram: &Bytes, channel: Channel) -> Result<Frame, DecodeError> {
    decode_frame(datagram, channel, MAX_DATAGRAM)
}

fn decode_frame(
    datagram: &Bytes,
    channel: Channel,
    size_limit: usize,
) -> Result<Frame, DecodeError> {
    if datagram.len() > size_limit {
        return Err(DecodeError::Oversized {
            size: datagram.len(),
            limit: size_limit,
        });
    }
    let [version, kind, ..] = datagram[..] else {
        return Err(DecodeError::Truncated {
            len: datagram.len(),
        });
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version { got: version });
    }
    let kind = Kind::from_byte(kind)?;
    if !kind.allowed_on(channel) {
        return Err(DecodeError::WrongChannel { kind, channel });
    }
    let body = datagram.slice(HEADER_SIZE..);
    let message = match kind {
        Kind::Hello => {
            let hello: Hello =
                codec::decode(&body).map_err(|reason| DecodeError::Body { kind, reason })?;
            if hello.schema.len() > MAX_SCHEMA_ENTRIES
                || hello
                    .schema
                    .iter()
                    .any(|entry| entry.len() > MAX_SCHEMA_ENTRY_LEN)
                || hello.crate_version.len() > MAX_SCHEMA_ENTRY_LEN
                || hello.proof.as_ref().is_some_and(|proof| {
                    proof.replica_signature.len() != 64
                        || proof.session_signature.len() != 64
                        || proof.room_mac.as_ref().is_some_and(|mac| mac.len() != 32)
                })
            {
                return Err(DecodeError::Body {
                    kind,
                    reason: "schema or proof over its limits".into(),
                });
            }
            Message::Hello(hello)
        }
        Kind::Fragment => {
            if body.len() < FRAGMENT_HEADER {
                return Err(DecodeError::Truncated {
                    len: datagram.len(),
                });
            }
            let message_id = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
            let index = u16::from_le_bytes([body[4], body[5]]);
            let count = u16::from_le_bytes([body[6], body[7]]);
            return Ok(Frame::Fragment(Fragment {
                message_id,
                index,
                count,
                payload: body.slice(FRAGMENT_HEADER..),
            }));
        }
        Kind::Payload => Message::Payload(body),
        Kind::Ping | Kind::Pong => {
            let nonce: [u8; 4] = body[..].try_into().map_err(|_| DecodeError::Body {
                kind,
                reason: format!("expected 4 bytes, got `{}`", body.len()),
            })?;
            let nonce = u32::from_le_bytes(nonce);
            if kind == Kind::Ping {
                Message::Ping(nonce)
            } else {
                Message::Pong(nonce)
            }
        }
        Kind::Doc => Message::Doc(body),
        Kind::Transient => Message::Transient(body),
        Kind::Presence => Message::Presence(body),
        Kind::Bye => {
            if body.len() > MAX_BYE_LEN {
                return Err(DecodeError::Oversized {
                    size: body.len(),
                    limit: MAX_BYE_LEN,
                });
            }
            // Invalid UTF-8 becomes U+FFFD (three bytes for one): cut to the limit
            // again, so that what is read re-encodes as it was read.
            let mut reason = String::from_utf8_lossy(&body).into_owned();
            reason.truncate(reason.floor_char_boundary(MAX_BYE_LEN));
            Message::Bye(reason)
        }
    };
    Ok(Frame::Message(message))
}

/// Appends `value` as an LEB128 varint (7 bits a byte, low first).
pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads an LEB128 varint at `*at`, moving `*at` past it; `None` if it runs off the
/// end or overflows 64 bits.
pub fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    // Most varints on the wire (ids, lengths, small deltas) are one byte.
    let first = *bytes.get(*at)?;
    if first & 0x80 == 0 {
        *at += 1;
        return Some(u64::from(first));
    }
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Rebuilds fragmented reliable messages from one peer.
///
/// The reliable channel is ordered, so an honest peer's fragments arrive as one
/// unbroken run `0..count`. Anything else (a gap, a second message starting inside the
/// first, a message over the size limit) drops the partial message and is an error.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    message_id: u32,
    count: u16,
    next: u16,
    buffer: Vec<u8>,
}

impl Reassembler {
    /// Feeds one fragment; returns the whole datagram once its last piece is in.
    pub fn push(
        &mut self,
        fragment: Fragment,
        limits: &WireLimits,
    ) -> Result<Option<Bytes>, DecodeError> {
        let result = self.push_inner(fragment, limits);
        if result.is_err() {
            self.partial = None;
        }
        result
    }

    fn push_inner(
        &mut self,
        fragment: Fragment,
        limits: &WireLimits,
    ) -> Result<Option<Bytes>, DecodeError> {
        if fragment.count < 2 || fragment.index >= fragment.count {
            return Err(DecodeError::Fragment("index or count out of range"));
        }
        if fragment.payload.is_empty() || fragment.payload.len() > FRAGMENT_SIZE {
            return Err(DecodeError::Fragment("piece size out of range"));
        }
        if fragment.count as usize > limits.max_fragments() {
            return Err(DecodeError::Oversized {
                size: fragment.count as usize * FRAGMENT_SIZE,
                limit: limits.max_message_size,
            });
        }
        let partial = match &mut self.partial {
            Some(partial) => {
                if partial.message_id != fragment.message_id || partial.count != fragment.count {
                    return Err(DecodeError::Fragment(
                        "a new message started inside another",
                    ));
                }
                if partial.next != fragment.index {
                    return Err(DecodeError::Fragment("pieces out of sequence"));
                }
                partial
            }
            None => {
                if fragment.index != 0 {
                    return Err(DecodeError::Fragment("message does not start at piece 0"));
                }
                self.partial.insert(Partial {
                    message_id: fragment.message_id,
                    count: fragment.count,
                    next: 0,
                    buffer: Vec::new(),
                })
            }
        };
        if partial.buffer.len() + fragment.payload.len() > limits.max_message_size {
            return Err(DecodeError::Oversized {
                size: partial.buffer.len() + fragment.payload.len(),
                limit: limits.max_message_size,
            });
        }
        partial.buffer.extend_from_slice(&fragment.payload);
        partial.next += 1;
        if partial.next < partial.count {
            return Ok(None);
        }
        let done = self
            .partial
            .take()
            .expect("the partial message was just updated");
        Ok(Some(Bytes::from(done.buffer)))
    }

    /// Whether a message is half received.
    pub fn is_pending(&self) -> bool {
        self.partial.is_some()
    }
}

/// Decodes a reassembled message (it must not itself be a fragment). Its size was
/// already bounded by [`WireLimits::max_message_size`] during reassembly.
pub fn decode_reassembled(datagram: &Bytes) -> Result<Message, DecodeError> {
    match decode_frame(datagram, Channel::Reliable, usize::MAX)? {
        Frame::Message(message) => Ok(message),
        Frame::Fragment(_) => Err(DecodeError::Fragment("a fragment inside a fragment")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind() {
        let messages = [
            Message::Hello(Hello {
                crate_version: "0.1.0".into(),
                replica: 5,
                schema_hash: 42,
                schema: vec!["a:durable".into()],
                key: [1; 32],
                session: [2; 32],
                nonce: [3; 16],
                proof: Some(crate::net::identity::Proof {
                    replica_signature: vec![4; 64],
                    session_signature: vec![5; 64],
                    room_mac: Some(vec![6; 32]),
                }),
                heard: false,
                waiting: true,
                fresh: true,
            }),
            Message::Payload(Bytes::from_static(b"hi")),
            Message::Ping(7),
            Message::Pong(8),
            Message::Doc(Bytes::from_static(&[0, 1])),
            Message::Bye("over budget".into()),
        ];
        for message in messages {
            let channel = if message.kind().allowed_on(Channel::Reliable) {
                Channel::Reliable
            } else {
                Channel::Unreliable
            };
            let bytes = encode(&message).unwrap();
            assert_eq!(decode(&bytes, channel).unwrap(), Frame::Message(message));
        }
    }

    #[test]
    fn fragments_reassemble() {
        let body: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let frame = encode(&Message::Payload(Bytes::from(body.clone()))).unwrap();
        let pieces = fragment(frame, 9).unwrap();
        assert!(pieces.len() > 1 && pieces.iter().all(|p| p.len() <= MAX_DATAGRAM));
        let mut reassembler = Reassembler::default();
        let mut out = None;
        for piece in pieces {
            let Frame::Fragment(f) = decode(&piece, Channel::Reliable).unwrap() else {
                panic!("expected a fragment");
            };
            out = reassembler.push(f, &WireLimits::default()).unwrap();
        }
        let message = decode_reassembled(&out.unwrap()).unwrap();
        assert_eq!(message, Message::Payload(Bytes::from(body)));
    }

    /// Found by the `wire` fuzz target: a reason of invalid UTF-8 grew past the limit
    /// once each bad byte became U+FFFD, and did not re-encode as it was read.
    #[test]
    fn a_bye_of_invalid_utf8_reads_within_its_limit() {
        let mut datagram = vec![PROTOCOL_VERSION, Kind::Bye as u8];
        datagram.extend(std::iter::repeat_n(0xff, MAX_BYE_LEN));
        let Ok(Frame::Message(message)) = decode(&Bytes::from(datagram), Channel::Reliable) else {
            panic!("a bye of any bytes within the limit reads");
        };
        let Message::Bye(reason) = &message else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_BYE_LEN);
        let again = encode(&message).unwrap();
        assert_eq!(
            decode(&again, Channel::Reliable).unwrap(),
            Frame::Message(message)
        );
    }

    #[test]
    fn refuses_a_message_over_the_limit() {
        let frame = encode(&Message::Payload(Bytes::from(vec![1u8; 100_000]))).unwrap();
        let limits = WireLimits {
            max_message_size: 50_000,
        };
        let mut reassembler = Reassembler::default();
        let mut failed = false;
        for piece in fragment(frame, 1).unwrap() {
            let Frame::Fragment(f) = decode(&piece, Channel::Reliable).unwrap() else {
                panic!("expected a fragment");
            };
            if reassembler.push(f, &limits).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed);
        assert!(!reassembler.is_pending());
    }

    #[test]
    fn wrong_version_and_kind_are_typed() {
        assert_eq!(
            decode(&Bytes::from_static(&[9, 3]), Channel::Reliable),
            Err(DecodeError::Version { got: 9 })
        );
        assert_eq!(
            decode(
                &Bytes::from_static(&[PROTOCOL_VERSION, 200]),
                Channel::Reliable
            ),
            Err(DecodeError::UnknownKind(200))
        );
        assert_eq!(
            decode(&Bytes::from_static(&[PROTOCOL_VERSION]), Channel::Reliable),
            Err(DecodeError::Truncated { len: 1 })
        );
        assert!(matches!(
            decode(&encode(&Message::Ping(1)).unwrap(), Channel::Reliable),
            Err(DecodeError::WrongChannel { .. })
        ));
    }
}
