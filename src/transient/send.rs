//! The owner's side: changed and refreshed values staged on each send tick, packed
//! into datagrams; commits to the entity document.

use std::time::Duration;

use bevy::ecs::component::Mutable;
use bevy::prelude::*;

use super::pack::{pack, tick_after};
use super::{CommitTransient, TransientConfig, TransientState, TransientType};
use crate::entity::{DocWrites, NetId, Owner};
use crate::net::peer::LocalPeer;
use crate::net::session::{Outbox, Recipients};
use crate::net::transport::Channel;
use crate::net::wire::Message;
use crate::registry::SyncRegistry;

pub(super) fn advance_send_clock(
    time: Res<Time<Real>>,
    config: Res<TransientConfig>,
    mut state: ResMut<TransientState>,
) {
    let interval = Duration::from_secs_f64(1.0 / config.send_rate.max(1.0));
    state.clock += time.delta();
    state.accumulator += time.delta();
    state.due = state.accumulator >= interval;
    if state.due {
        // Never queue a burst after a stall: one send per due frame.
        state.accumulator = state.accumulator.saturating_sub(interval).min(interval);
        // Milliseconds, wrapping after 49 days (see `tick_after`); strictly after the
        // last tick even when two sends fall in one millisecond.
        let now = state.clock.as_millis() as u32;
        state.tick = if tick_after(now, state.tick) {
            now
        } else {
            state.tick.wrapping_add(1)
        };
    }
}

/// Replicated entities whose `T` changed since the system last ran.
type ChangedValues<T> = (Changed<T>, With<NetId>);

/// Marks changed owned values and, on a send tick, stages what goes out.
pub(super) fn stage_transient<T: Component>(
    mut kind: ResMut<TransientType<T>>,
    mut state: ResMut<TransientState>,
    config: Res<TransientConfig>,
    local: Res<LocalPeer>,
    changed: Query<(Entity, &Owner), ChangedValues<T>>,
    owned: Query<(Entity, &NetId, &Owner, &T)>,
) {
    let me = Some(local.replica());
    // One pass over the changed values, not a lookup of each: on a receiver every
    // remote value changes every frame and none is its own.
    for (entity, owner) in &changed {
        if owner.0 == me {
            kind.resend.insert(entity, config.resend_ticks + 1);
        }
    }
    if !state.due {
        return;
    }
    let index = kind.index;
    let codec = kind.codec;
    let encode = |value: &T, out: &mut Vec<u8>| (codec.encode)(value, codec.param, out);
    let mut sent = bevy::platform::collections::HashSet::new();
    kind.resend.retain(|entity, left| {
        if let Ok((_, id, owner, value)) = owned.get(*entity)
            && owner.0 == me
        {
            let mut bytes = Vec::with_capacity(16);
            encode(value, &mut bytes);
            sent.insert(*entity);
            state.outgoing.push((index, *id, bytes));
            *left -= 1;
            *left > 0
        } else {
            false
        }
    });
    // Round-robin refresh: a slice of everything owned each tick.
    let ticks_per_period = (config.refresh_period.as_secs_f64() * config.send_rate).max(1.0);
    let all: Vec<(Entity, NetId)> = owned
        .iter()
        .filter(|(_, _, owner, _)| owner.0 == me)
        .map(|(e, id, _, _)| (e, *id))
        .collect();
    if all.is_empty() {
        return;
    }
    let slice = ((all.len() as f64 / ticks_per_period).ceil() as usize).max(1);
    for step in 0..slice.min(all.len()) {
        let (entity, id) = all[(kind.cursor + step) % all.len()];
        if sent.contains(&entity) {
            continue;
        }
        if let Ok((_, _, _, value)) = owned.get(entity) {
            let mut bytes = Vec::with_capacity(16);
            encode(value, &mut bytes);
            state.outgoing.push((index, id, bytes));
        }
    }
    kind.cursor = (kind.cursor + slice) % all.len();
}

/// Sends this tick's entries.
pub(super) fn pack_transient(
    mut state: ResMut<TransientState>,
    local: Res<LocalPeer>,
    registry: Res<SyncRegistry>,
    mut outbox: ResMut<Outbox>,
) {
    if state.outgoing.is_empty() {
        return;
    }
    let entries = std::mem::take(&mut state.outgoing);
    for datagram in pack(state.tick, local.replica(), entries, registry.framing()) {
        outbox.push(
            Recipients::All,
            Channel::Unreliable,
            Message::Transient(datagram),
        );
    }
}

/// Stages committed values of `T` for the durable document.
pub(super) fn commit_transient<T: Component<Mutability = Mutable>>(
    kind: Res<TransientType<T>>,
    local: Res<LocalPeer>,
    mut commits: MessageReader<CommitTransient>,
    mut values: Query<(&NetId, &Owner, &mut T)>,
    mut staged: ResMut<DocWrites>,
) {
    for commit in commits.read() {
        let Ok((id, owner, mut value)) = values.get_mut(commit.entity) else {
            continue;
        };
        if owner.0 != Some(local.replica()) {
            warn!("cannot commit `{id}`: this peer does not own it");
            continue;
        }
        let mut bytes = Vec::new();
        (kind.codec.encode)(&value, kind.codec.param, &mut bytes);
        // The owner takes the value as committed (a lossy codec, quantized say, rounds
        // it): every peer then holds the same committed state, the owner included.
        if let Some(committed) = (kind.codec.decode)(&bytes, kind.codec.param) {
            *value = committed;
        }
        staged.push(*id, kind.index, yrs::Any::Buffer(bytes.into()));
    }
}
