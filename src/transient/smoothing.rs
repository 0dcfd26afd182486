//! Receiver-side smoothing for transient values: an interpolation buffer that plays
//! remote values back a little in the past, so motion stays smooth when datagrams
//! arrive unevenly, with extrapolation across a short gap and a snap after a long one.
//!
//! Opt a type in with [`SmoothAppExt::smooth_component`]; `Transform` implements
//! [`Smooth`] out of the box.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;

use crate::entity::{NetId, Owner};
use crate::net::peer::{LocalPeer, PeerId};
use crate::schedule::{PeerSyncSystems, StageAppExt};

/// A value that can be blended between two samples.
pub trait Smooth: Clone + Send + Sync + 'static {
    /// The value at `t` between `a` (0) and `b` (1). `t` above 1 extrapolates.
    fn blend(a: &Self, b: &Self, t: f32) -> Self;
}

impl Smooth for Transform {
    fn blend(a: &Self, b: &Self, t: f32) -> Self {
        Transform {
            translation: a.translation.lerp(b.translation, t),
            rotation: if t <= 1.0 {
                a.rotation.slerp(b.rotation, t)
            } else {
                b.rotation
            },
            scale: a.scale.lerp(b.scale, t.min(1.0)),
        }
    }
}

/// Playback settings for one smoothed type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SmoothingConfig {
    /// How far behind the newest estimate values are played back. Two or three send
    /// intervals absorb jitter and single losses.
    pub delay: Duration,
    /// How long past the newest sample motion is extrapolated before it holds.
    pub max_extrapolation: Duration,
    /// Samples further apart than this are not blended: the value snaps.
    pub snap_after: Duration,
}

impl Default for SmoothingConfig {
    fn default() -> Self {
        Self {
            delay: Duration::from_millis(50),
            max_extrapolation: Duration::from_millis(100),
            snap_after: Duration::from_millis(500),
        }
    }
}

/// The interpolation buffer of one remote entity's `T`.
#[derive(Component, Debug)]
pub struct Interpolated<T> {
    /// Samples as (sender time, value), oldest first.
    samples: VecDeque<(Duration, T)>,
    /// Whose clock the samples are on: a new sender (a new owner) starts afresh.
    source: Option<PeerId>,
    /// Smallest seen (local arrival − sender time), in nanoseconds: the clock offset
    /// with the least delay. Negative when the sender's clock started first (it has
    /// run longer than this app).
    offset: Option<i128>,
    config: SmoothingConfig,
}

impl<T> Interpolated<T> {
    /// An empty buffer.
    pub fn new(config: SmoothingConfig) -> Self {
        Self {
            samples: VecDeque::new(),
            source: None,
            offset: None,
            config,
        }
    }

    /// Adds a sample from `from`, sent at its time `sent` and received at local time
    /// `arrival`. Samples from another sender than the last (the entity changed
    /// owner) replace the buffer: the two clocks do not compare.
    pub(crate) fn push_sample(
        &mut self,
        from: PeerId,
        sent: Duration,
        arrival: Duration,
        value: T,
    ) {
        if self.source != Some(from) {
            self.source = Some(from);
            self.samples.clear();
            self.offset = None;
        }
        let offset = arrival.as_nanos() as i128 - sent.as_nanos() as i128;
        self.offset = Some(match self.offset {
            // Follow a faster path at once, a slower one slowly (clock drift).
            Some(current) if offset >= current => current + (offset - current) / 64,
            _ => offset,
        });
        let at = self
            .samples
            .iter()
            .rposition(|(t, _)| *t < sent)
            .map_or(0, |i| i + 1);
        self.samples.insert(at, (sent, value));
        while self.samples.len() > 32 {
            self.samples.pop_front();
        }
    }
}

impl<T: Smooth> Interpolated<T> {
    /// The value to show at local time `now`, if any sample arrived.
    pub fn sample(&mut self, now: Duration) -> Option<T> {
        let offset = self.offset?;
        // `now` on the sender's clock, minus the playback delay.
        let target = now.as_nanos() as i128 - offset - self.config.delay.as_nanos() as i128;
        let target = Duration::from_nanos(u64::try_from(target.max(0)).unwrap_or(u64::MAX));
        // Drop samples no longer needed (keep one before the target).
        while self.samples.len() > 2 && self.samples[1].0 <= target {
            self.samples.pop_front();
        }
        let (first_t, first) = self.samples.front()?;
        if target <= *first_t || self.samples.len() == 1 {
            return Some(first.clone());
        }
        let (a_t, a) = &self.samples[0];
        let (b_t, b) = &self.samples[1];
        let span = b_t.saturating_sub(*a_t);
        if span.is_zero() || span > self.config.snap_after {
            return Some(b.clone());
        }
        let past_b = target.saturating_sub(*b_t);
        if past_b > self.config.max_extrapolation {
            // Too long without news: hold at the extrapolation limit.
            let t = 1.0 + self.config.max_extrapolation.as_secs_f32() / span.as_secs_f32();
            return Some(T::blend(a, b, t));
        }
        let t = target.saturating_sub(*a_t).as_secs_f32() / span.as_secs_f32();
        Some(T::blend(a, b, t))
    }
}

/// The smoothing settings of type `T`.
#[derive(Resource)]
struct Smoothing<T> {
    config: SmoothingConfig,
    _type: PhantomData<fn() -> T>,
}

/// Opting types into smoothing.
pub trait SmoothAppExt {
    /// Plays remote values of transient type `T` back through an [`Interpolated`]
    /// buffer instead of applying them as they arrive.
    fn smooth_component<T: Component<Mutability = Mutable> + Smooth>(
        &mut self,
        config: SmoothingConfig,
    ) -> &mut Self;
}

impl SmoothAppExt for App {
    fn smooth_component<T: Component<Mutability = Mutable> + Smooth>(
        &mut self,
        config: SmoothingConfig,
    ) -> &mut Self {
        self.insert_resource(Smoothing::<T> {
            config,
            _type: PhantomData,
        })
        .add_stage_systems(
            PeerSyncSystems::Apply,
            (attach_buffers::<T>, play_back::<T>)
                .chain()
                .after(crate::transient::ApplyTransient),
        )
    }
}

/// Replicated entities without a buffer for `T` yet.
type Unbuffered<T> = (With<NetId>, Without<Interpolated<T>>);
/// Buffered entities whose owner changed since the system last ran.
type Rebuffered<T> = (With<Interpolated<T>>, Changed<Owner>);

/// Gives remote-owned entities a buffer, and takes it from locally owned ones.
fn attach_buffers<T: Component + Smooth>(
    mut commands: Commands,
    settings: Res<Smoothing<T>>,
    local: Res<LocalPeer>,
    without: Query<(Entity, &Owner), Unbuffered<T>>,
    // Only entities whose owner changed: the others keep what they have (this ran
    // over every buffered entity every frame).
    with: Query<(Entity, &Owner), Rebuffered<T>>,
) {
    let me = Some(local.replica());
    for (entity, owner) in &without {
        if owner.0 != me {
            commands
                .entity(entity)
                .insert(Interpolated::<T>::new(settings.config));
        }
    }
    for (entity, owner) in &with {
        if owner.0 == me {
            commands.entity(entity).remove::<Interpolated<T>>();
        }
    }
}

fn play_back<T: Component<Mutability = Mutable> + Smooth>(
    mut commands: Commands,
    time: Res<Time<Real>>,
    mut query: Query<(Entity, &mut Interpolated<T>, Option<&mut T>)>,
) {
    let now = time.elapsed();
    for (entity, mut buffer, value) in &mut query {
        let Some(sample) = buffer.sample(now) else {
            continue;
        };
        match value {
            Some(mut value) => *value = sample,
            None => {
                commands.entity(entity).insert(sample);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(x: f32) -> Transform {
        Transform::from_xyz(x, 0.0, 0.0)
    }

    /// Delay 50 ms, extrapolation up to 100 ms, snap after 500 ms.
    fn buffer() -> Interpolated<Transform> {
        let ms = Duration::from_millis;
        Interpolated::new(SmoothingConfig {
            delay: ms(50),
            max_extrapolation: ms(100),
            snap_after: ms(500),
        })
    }

    #[test]
    fn interpolates_extrapolates_and_snaps() {
        let ms = Duration::from_millis;
        let mut buffer = buffer();
        buffer.push_sample(PeerId(1), ms(0), ms(1_000), at(0.0));
        buffer.push_sample(PeerId(1), ms(100), ms(1_100), at(10.0));
        // Target sender time = now - 1000 - 50.
        assert!((buffer.sample(ms(1_100)).unwrap().translation.x - 5.0).abs() < 1e-3);
        // 50 ms past the newest sample: extrapolated.
        assert!((buffer.sample(ms(1_200)).unwrap().translation.x - 15.0).abs() < 1e-3);
        // Long past: held at the extrapolation limit.
        assert!((buffer.sample(ms(5_000)).unwrap().translation.x - 20.0).abs() < 1e-3);
        // A sample after a long gap snaps instead of sliding.
        buffer.push_sample(PeerId(1), ms(2_000), ms(3_000), at(100.0));
        assert_eq!(buffer.sample(ms(3_100)).unwrap().translation.x, 100.0);
    }

    /// Samples from a new sender (the entity changed owner) are on another clock: the
    /// buffer starts afresh instead of mixing the two.
    #[test]
    fn a_new_sender_starts_the_buffer_afresh() {
        let ms = Duration::from_millis;
        let mut buffer = buffer();
        buffer.push_sample(PeerId(1), ms(600_000), ms(1_000), at(0.0));
        buffer.push_sample(PeerId(1), ms(600_100), ms(1_100), at(10.0));
        // The new owner's clock is far behind the old one's.
        buffer.push_sample(PeerId(2), ms(5_000), ms(1_200), at(20.0));
        buffer.push_sample(PeerId(2), ms(5_100), ms(1_300), at(30.0));
        assert!((buffer.sample(ms(1_300)).unwrap().translation.x - 25.0).abs() < 1e-3);
    }

    /// A sender whose clock started long before ours (its app has run longer: we
    /// joined late) is played back the same way, not frozen on its first sample.
    #[test]
    fn a_sender_clock_ahead_of_ours_plays_back() {
        let ms = Duration::from_millis;
        let mut buffer = buffer();
        buffer.push_sample(PeerId(1), ms(600_000), ms(1_000), at(0.0));
        buffer.push_sample(PeerId(1), ms(600_100), ms(1_100), at(10.0));
        assert!((buffer.sample(ms(1_100)).unwrap().translation.x - 5.0).abs() < 1e-3);
        assert!((buffer.sample(ms(1_200)).unwrap().translation.x - 15.0).abs() < 1e-3);
    }
}
