//! The sync schema: which component types this build synchronises, on which route, in
//! which order. Both sides of a link must agree on it; the handshake compares hashes.

use std::fmt;

use bevy::prelude::*;

/// How a component type travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Route {
    /// Stored in the shared yrs document, sent on the reliable channel: merges under
    /// concurrent edits, reaches late joiners. For spawns, ownership, inventories, text.
    Durable,
    /// Sent by the owner on the unreliable channel, latest wins: for positions, cursors
    /// and anything that changes every frame.
    Transient,
    /// Part of a peer's presence: published from
    /// [`LocalPresence`](crate::presence::LocalPresence), shown on that peer's entity
    /// everywhere else (see [`presence`](crate::presence)).
    Presence,
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Route::Durable => "durable",
            Route::Transient => "transient",
            Route::Presence => "presence",
        })
    }
}

/// One registered type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaEntry {
    /// The name the type travels under (its Rust type path unless overridden).
    pub name: String,
    /// Its route.
    pub route: Route,
}

impl fmt::Display for SchemaEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.route)
    }
}

/// Everything registered with `sync_component`, in registration order.
#[derive(Resource, Debug, Default, Clone)]
pub struct SyncRegistry {
    entries: Vec<SchemaEntry>,
}

impl SyncRegistry {
    /// Appends a type. Returns its index, which is its id on the wire.
    ///
    /// # Panics
    /// If `name` is registered already: one name, one route.
    pub fn register(&mut self, name: impl Into<String>, route: Route) -> u16 {
        let name = name.into();
        assert!(
            self.index_of(&name).is_none(),
            "sync type `{name}` is registered twice; register each type once"
        );
        let index =
            u16::try_from(self.entries.len()).expect("fewer than 65,536 sync types are registered");
        self.entries.push(SchemaEntry { name, route });
        index
    }

    /// The entries in registration order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// The index of a registered name.
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.entries
            .iter()
            .position(|e| e.name == name)
            .map(|i| i as u16)
    }

    /// The schema as it travels in the handshake, `"name:route"` in order.
    pub fn schema_strings(&self) -> Vec<String> {
        self.entries.iter().map(ToString::to_string).collect()
    }

    /// A stable hash (FNV-1a, 64 bit) of the schema, order included.
    pub fn schema_hash(&self) -> u64 {
        schema_hash(&self.schema_strings())
    }
}

/// FNV-1a over the entries, each followed by a newline. Stable across builds and
/// platforms, unlike `std`'s hasher.
pub(crate) fn schema_hash(entries: &[String]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in entries
        .iter()
        .flat_map(|e| e.bytes().chain(std::iter::once(b'\n')))
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_changes_the_hash() {
        let mut a = SyncRegistry::default();
        a.register("x", Route::Durable);
        a.register("y", Route::Transient);
        let mut b = SyncRegistry::default();
        b.register("y", Route::Transient);
        b.register("x", Route::Durable);
        assert_ne!(a.schema_hash(), b.schema_hash());
        assert_eq!(a.schema_hash(), a.clone().schema_hash());
    }
}
