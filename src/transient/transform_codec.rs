//! A compact wire encoding for `Transform` on the transient route.
//!
//! - [`TransformEncoding::Lossless`] (the default): a flags byte, the translation as
//!   three `f32`, then the rotation (four `f32`) only if it is not the identity and the
//!   scale (three `f32`) only if it is not one. Exact.
//! - [`TransformEncoding::Quantized`]: the translation as three zigzag varints of
//!   `round(v / precision)` (the lowest bit of the first carries "scale follows"), the
//!   rotation as *smallest three* in 32 bits (2 bits for the dropped component, 3 × 10
//!   bits), then the scale as three `f32` only if it is not one. Error bounds: each
//!   translation axis is off by at most `precision / 2`; the rotation by at most about
//!   0.16° (each kept component within ±0.00070 of the unit quaternion's). With the
//!   default 1 cm precision, a transform within ±81.9 m per axis takes 6 bytes of
//!   translation + 4 of rotation.

use bevy::prelude::*;

use crate::net::wire::{read_varint, write_varint};
use crate::transient::TransientCodec;

/// How `Transform` travels.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum TransformEncoding {
    /// Exact `f32`s (the default).
    #[default]
    Lossless,
    /// Quantized translation and smallest-three rotation. See the module docs.
    Quantized {
        /// The translation step, in world units (e.g. 0.01 for 1 cm).
        position_precision: f32,
    },
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn read_f32s<const N: usize>(bytes: &[u8], at: &mut usize) -> Option<[f32; N]> {
    let mut out = [0.0; N];
    for value in &mut out {
        let chunk: [u8; 4] = bytes.get(*at..*at + 4)?.try_into().ok()?;
        *value = f32::from_le_bytes(chunk);
        if !value.is_finite() {
            return None;
        }
        *at += 4;
    }
    Some(out)
}

const ROTATION: u8 = 1;
const SCALE: u8 = 2;

/// Appends a lossless transform.
pub fn encode_lossless(transform: &Transform, out: &mut Vec<u8>) {
    let rotation = transform.rotation != Quat::IDENTITY;
    let scale = transform.scale != Vec3::ONE;
    out.push((u8::from(rotation) * ROTATION) | (u8::from(scale) * SCALE));
    put_f32s(out, &transform.translation.to_array());
    if rotation {
        put_f32s(out, &transform.rotation.to_array());
    }
    if scale {
        put_f32s(out, &transform.scale.to_array());
    }
}

fn put_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
}

/// Decodes a lossless transform; `None` if malformed or not finite.
pub fn decode_lossless(bytes: &[u8]) -> Option<Transform> {
    let (&flags, _) = bytes.split_first()?;
    if flags & !(ROTATION | SCALE) != 0 {
        return None;
    }
    let mut at = 1;
    let translation = Vec3::from_array(read_f32s::<3>(bytes, &mut at)?);
    let rotation = if flags & ROTATION != 0 {
        normalized(Quat::from_array(read_f32s::<4>(bytes, &mut at)?))?
    } else {
        Quat::IDENTITY
    };
    let scale = if flags & SCALE != 0 {
        Vec3::from_array(read_f32s::<3>(bytes, &mut at)?)
    } else {
        Vec3::ONE
    };
    (at == bytes.len()).then_some(Transform {
        translation,
        rotation,
        scale,
    })
}

const ROT_BITS: u32 = 10;
const ROT_MAX: f32 = ((1 << ROT_BITS) - 1) as f32;
const RANGE: f32 = std::f32::consts::FRAC_1_SQRT_2;

/// Smallest-three: drop the largest component (its sign made positive), keep three.
fn pack_rotation(q: Quat) -> u32 {
    let q = q.normalize();
    let c = q.to_array();
    let (largest, _) = c.iter().enumerate().fold((0, -1.0f32), |(bi, bv), (i, v)| {
        if v.abs() > bv { (i, v.abs()) } else { (bi, bv) }
    });
    let sign = if c[largest] < 0.0 { -1.0 } else { 1.0 };
    let mut packed = largest as u32;
    for (i, v) in c.iter().enumerate() {
        if i == largest {
            continue;
        }
        let unit = ((v * sign + RANGE) / (2.0 * RANGE)).clamp(0.0, 1.0);
        packed = (packed << ROT_BITS) | (unit * ROT_MAX).round() as u32;
    }
    packed
}

fn unpack_rotation(packed: u32) -> Option<Quat> {
    let largest = (packed >> (3 * ROT_BITS)) as usize & 3;
    let mut c = [0.0f32; 4];
    let mut shift = 2 * ROT_BITS as i32;
    let mut sum = 0.0;
    for (i, value) in c.iter_mut().enumerate() {
        if i == largest {
            continue;
        }
        let raw = (packed >> shift) & ((1 << ROT_BITS) - 1);
        shift -= ROT_BITS as i32;
        *value = raw as f32 / ROT_MAX * 2.0 * RANGE - RANGE;
        sum += *value * *value;
    }
    c[largest] = (1.0 - sum).max(0.0).sqrt();
    normalized(Quat::from_array(c))
}

/// A unit quaternion, or `None` for one with no direction.
fn normalized(q: Quat) -> Option<Quat> {
    let length = q.length();
    (length.is_finite() && length > 1e-6).then(|| q / length)
}

/// Appends a quantized transform.
pub fn encode_quantized(transform: &Transform, precision: f32, out: &mut Vec<u8>) {
    let scale = transform.scale != Vec3::ONE;
    let q = |v: f32| (v / precision).round() as i64;
    let t = transform.translation;
    write_varint(out, (zigzag(q(t.x)) << 1) | u64::from(scale));
    write_varint(out, zigzag(q(t.y)));
    write_varint(out, zigzag(q(t.z)));
    out.extend_from_slice(&pack_rotation(transform.rotation).to_le_bytes());
    if scale {
        put_f32s(out, &transform.scale.to_array());
    }
}

/// Decodes a quantized transform; `None` if malformed.
pub fn decode_quantized(bytes: &[u8], precision: f32) -> Option<Transform> {
    let mut at = 0;
    let first = read_varint(bytes, &mut at)?;
    let scale_follows = first & 1 == 1;
    let x = unzigzag(first >> 1) as f32 * precision;
    let y = unzigzag(read_varint(bytes, &mut at)?) as f32 * precision;
    let z = unzigzag(read_varint(bytes, &mut at)?) as f32 * precision;
    let packed = u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let rotation = unpack_rotation(packed)?;
    let scale = if scale_follows {
        Vec3::from_array(read_f32s::<3>(bytes, &mut at)?)
    } else {
        Vec3::ONE
    };
    (at == bytes.len()).then_some(Transform {
        translation: Vec3::new(x, y, z),
        rotation,
        scale,
    })
}

/// The length of the lossless transform at the start of `bytes`.
pub fn measure_lossless(bytes: &[u8]) -> Option<usize> {
    let flags = *bytes.first()?;
    let len =
        1 + 12 + 16 * usize::from(flags & ROTATION != 0) + 12 * usize::from(flags & SCALE != 0);
    (len <= bytes.len()).then_some(len)
}

/// The length of the quantized transform at the start of `bytes`.
pub fn measure_quantized(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    let first = read_varint(bytes, &mut at)?;
    read_varint(bytes, &mut at)?;
    read_varint(bytes, &mut at)?;
    let len = at + 4 + if first & 1 == 1 { 12 } else { 0 };
    (len <= bytes.len()).then_some(len)
}

/// The transient codec for an encoding: what [`sync_transform`] registers, for a game
/// that registers `Transform` itself, e.g. without smoothing:
///
/// ```
/// # use bevy::prelude::*;
/// use bevy_peer_sync::prelude::*;
/// use bevy_peer_sync::transient::transform_codec;
///
/// let mut app = App::new();
/// app.add_plugins(MinimalPlugins)
///     .add_plugins(PeerSyncPlugin::with_custom_transport());
/// let encoding = TransformEncoding::Quantized { position_precision: 0.01 };
/// app.sync_transient_with::<Transform>("Transform@0.01", transform_codec::codec(encoding));
/// ```
///
/// [`sync_transform`]: crate::transient::TransientAppExt::sync_transform
pub fn codec(encoding: TransformEncoding) -> TransientCodec<Transform> {
    match encoding {
        TransformEncoding::Lossless => TransientCodec {
            encode: |t, _, out| encode_lossless(t, out),
            decode: |bytes, _| decode_lossless(bytes),
            param: 0.0,
            measure: Some(measure_lossless),
        },
        TransformEncoding::Quantized { position_precision } => TransientCodec {
            encode: encode_quantized,
            decode: |bytes, precision| decode_quantized(bytes, precision),
            param: position_precision,
            measure: Some(measure_quantized),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Transform {
        Transform {
            translation: Vec3::new(12.345, -3.21, 40.0),
            rotation: Quat::from_euler(EulerRot::XYZ, 0.3, -1.2, 2.5),
            scale: Vec3::ONE,
        }
    }

    #[test]
    fn lossless_is_exact() {
        let mut bytes = Vec::new();
        let mut t = sample();
        t.scale = Vec3::new(1.0, 2.0, 3.0);
        encode_lossless(&t, &mut bytes);
        assert_eq!(decode_lossless(&bytes), Some(t));
        assert_eq!(measure_lossless(&bytes), Some(bytes.len()));
        assert_eq!(bytes.len(), 1 + 12 + 16 + 12);
    }

    #[test]
    fn quantized_stays_within_its_bounds_and_size() {
        let mut bytes = Vec::new();
        let t = sample();
        encode_quantized(&t, 0.01, &mut bytes);
        assert!(bytes.len() <= 10, "{} bytes", bytes.len());
        assert_eq!(
            measure_quantized(&[bytes.clone(), vec![9, 9]].concat()),
            Some(bytes.len())
        );
        let back = decode_quantized(&bytes, 0.01).unwrap();
        assert!((back.translation - t.translation).abs().max_element() <= 0.005 + 1e-4);
        assert!(back.rotation.angle_between(t.rotation).to_degrees() < 0.2);
    }

    #[test]
    fn garbage_never_panics() {
        let mut state = 0x1234_5678u32;
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 17;
                    state ^= state << 5;
                    state as u8
                })
                .collect();
            let _ = decode_lossless(&bytes);
            let _ = decode_quantized(&bytes, 0.01);
        }
    }
}
