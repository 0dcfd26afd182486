//! Replicated entities and their identity, shared by every route: [`Replicated`]
//! marks an entity for sync, [`NetId`] names it on every peer, [`Owner`] says who may
//! write it, and [`NetEntities`] maps ids to local entities.
//!
//! Ids are `(creator replica, counter)`, so two peers spawning at once never collide.

use std::fmt;

use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use yrs::Any;

use crate::net::peer::ReplicaId;

/// Marks an entity for replication. Insert it when you spawn; the plugin adds its
/// [`NetId`] and [`Owner`].
#[derive(Component, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replicated;

/// The network id of a replicated entity, the same on every peer.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetId {
    /// The replica that spawned it.
    pub creator: ReplicaId,
    /// Its spawn counter on that replica.
    pub counter: u64,
}

impl fmt::Display for NetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.creator, self.counter)
    }
}

impl NetId {
    /// Parses the [`Display`](fmt::Display) form, `"<replica hex>-<counter>"`.
    pub fn parse(text: &str) -> Option<Self> {
        let (creator, counter) = text.split_once('-')?;
        Some(Self {
            creator: ReplicaId::parse(creator)?,
            counter: counter.parse().ok()?,
        })
    }
}

/// Who may write a replicated entity. `None` while orphaned.
#[derive(Component, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(pub Option<ReplicaId>);

/// Maps network ids to local entities.
#[derive(Resource, Debug, Default)]
pub struct NetEntities {
    pub(crate) map: HashMap<NetId, Entity>,
    pub(crate) next_counter: u64,
}

impl NetEntities {
    /// The local entity of a network id.
    pub fn entity(&self, id: NetId) -> Option<Entity> {
        self.map.get(&id).copied()
    }

    /// How many replicated entities exist locally.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// What a route writes to the entity document this frame, by the writer's wire index
/// (see [`crate::registry`]): the durable route its components, the transient route
/// its committed values. Written in one transaction by the durable route.
#[derive(Resource, Default)]
pub(crate) struct DocWrites {
    /// `(entity, type, value)`; a value of [`DocWrites::SPAWN`] marks a new entity.
    pub(crate) values: Vec<(NetId, u16, Any)>,
    /// `(entity, type)` removed.
    pub(crate) removed: Vec<(NetId, u16)>,
}

impl DocWrites {
    /// The type index of the marker a new entity is written with.
    pub(crate) const SPAWN: u16 = u16::MAX;

    /// Stages `value` as `id`'s value of type `index`.
    pub(crate) fn push(&mut self, id: NetId, index: u16, value: Any) {
        self.values.push((id, index, value));
    }
}
