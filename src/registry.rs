//! One registry of every synced type, whatever its route: the name it is stored and
//! sent under, its route, its wire index, and the functions that move its values (a
//! per-type function table). Both sides of a link must agree on the schema (names and
//! routes, in order): the handshake compares it by hash.
//!
//! ## Names
//! A type's name is its key in the entity document, in the handshake's schema and in
//! saves. By default it is the type's name without its module path (`Inventory`, or
//! `Wrapper<Inventory>` for a generic), so moving a type to another module changes
//! nothing on the wire or on disk. Pin a name of your own with [`Route::named`],
//! which also tells apart two types of the same name in different modules:
//!
//! ```
//! use bevy::prelude::*;
//! use bevy_peer_sync::prelude::*;
//! use serde::{Deserialize, Serialize};
//!
//! mod items {
//!     #[derive(bevy::prelude::Component, serde::Serialize, serde::Deserialize)]
//!     #[derive(Clone, PartialEq)]
//!     pub struct Inventory(pub Vec<String>);
//! }
//!
//! #[derive(Component, Serialize, Deserialize, Clone, PartialEq)]
//! struct Inventory { gold: u32 }
//!
//! let mut app = App::new();
//! app.add_plugins(MinimalPlugins)
//!     .add_plugins(PeerSyncPlugin::with_custom_transport())
//!     .sync_component::<Inventory>(Route::Durable)
//!     .sync_component::<items::Inventory>(Route::Durable.named("bag"));
//! let registry = app.world().resource::<SyncRegistry>();
//! assert_eq!(registry.index_of("Inventory"), Some(0));
//! assert_eq!(registry.index_of("bag"), Some(1));
//! ```
//!
//! Two types under one name are refused when the second is registered (a panic at
//! start-up that names both and says to call `.named(..)`).

use std::any::TypeId;
use std::borrow::Cow;
use std::fmt;

use bevy::ecs::component::Mutable;
use bevy::platform::collections::HashMap;
use bevy::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

use yrs::{Any, Map, MapRef, Out, ReadTxn, Transaction};

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

impl Route {
    /// This route, with the type stored and sent under `name` instead of its default
    /// name (see [Names](self#names)). Give a type a name before its first release and
    /// keep it: the name is its key in every saved and shared document.
    pub fn named(self, name: impl Into<Cow<'static, str>>) -> SyncOptions {
        SyncOptions {
            route: self,
            name: Some(name.into()),
        }
    }
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

/// How one type is synced: its [`Route`] and, if chosen, its name. A plain `Route`
/// converts into options with the default name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncOptions {
    /// The route.
    pub route: Route,
    /// The name (see [Names](self#names)); `None` for the default.
    pub name: Option<Cow<'static, str>>,
}

impl From<Route> for SyncOptions {
    fn from(route: Route) -> Self {
        Self { route, name: None }
    }
}

/// Registration of synced component types.
///
/// Implemented for [`App`]; add the plugin ([`crate::PeerSyncPlugin`]) first. Types
/// with codecs of their own are registered by the route:
/// [`TransientAppExt`](crate::transient::TransientAppExt) for transient ones and `Transform`.
pub trait SyncAppExt {
    /// Synchronises component `T` on a route (`Route::Durable`, or
    /// `Route::Durable.named("inventory")` to choose its name).
    ///
    /// Register the same types in the same order on every build: the handshake
    /// refuses peers whose registrations differ.
    ///
    /// ```
    /// use bevy::prelude::*;
    /// use bevy_peer_sync::prelude::*;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Component, Serialize, Deserialize, Clone, PartialEq, Debug)]
    /// struct Inventory {
    ///     gold: u32,
    ///     items: Vec<String>,
    /// }
    ///
    /// let mut app = App::new();
    /// app.add_plugins(MinimalPlugins)
    ///     .add_plugins(PeerSyncPlugin::with_custom_transport())
    ///     .sync_component::<Inventory>(Route::Durable.named("inventory"));
    /// ```
    ///
    /// # Panics
    /// If `T`, or another type under the same name, is registered already.
    fn sync_component<T>(&mut self, options: impl Into<SyncOptions>) -> &mut Self
    where
        T: Component<Mutability = Mutable> + Serialize + DeserializeOwned + Clone + PartialEq;
}

/// A type's name without module paths: `a::b::Inventory` is `Inventory`,
/// `a::Wrapper<b::Item>` is `Wrapper<Item>`.
pub(crate) fn default_name<T: ?Sized>() -> String {
    bevy::utils::prelude::ShortName::of::<T>().to_string()
}

/// The key under which a value that is not a struct (or is stored as bytes, like a
/// committed transient value) sits alone in its fields map in the entity document.
pub(crate) const WHOLE_VALUE: &str = "_";

/// The single value of a fields map that holds a whole value, not fields.
pub(crate) fn whole_value<T: ReadTxn>(map: &MapRef, txn: &T) -> Option<Any> {
    match map.get(txn, WHOLE_VALUE) {
        Some(Out::Any(any)) => Some(any),
        _ => None,
    }
}

/// The wire index of registered type `T`, as a resource its route's systems read.
#[derive(Resource)]
pub(crate) struct WireIndex<T> {
    index: u16,
    _type: PhantomData<fn() -> T>,
}

impl<T> WireIndex<T> {
    pub(crate) fn get(&self) -> u16 {
        self.index
    }
}

/// Registers `T` under `name` on `route` with its function table, and inserts its
/// [`WireIndex`]. Returns the index.
///
/// # Panics
/// If `T` or `name` is registered already (see [`SyncRegistry::register`]).
pub(crate) fn register<T: 'static>(app: &mut App, name: String, route: Route, fns: TypeFns) -> u16 {
    let index = app
        .world_mut()
        .get_resource_or_init::<SyncRegistry>()
        .register::<T>(name, route, fns);
    app.insert_resource(WireIndex::<T> {
        index,
        _type: PhantomData,
    });
    index
}

/// A component value read from the entity document, not yet in the world.
pub(crate) type Decoded = Box<dyn std::any::Any + Send>;
/// Reads a value of one type from its fields map in the entity document.
pub(crate) type DecodeFn = for<'a> fn(&World, &MapRef, &Transaction<'a>) -> Result<Decoded, String>;
/// Puts values of one type, each decoded by that type's [`DecodeFn`], on their entities.
pub(crate) type ApplyFn = fn(&mut World, Vec<(Entity, Decoded)>);
/// Removes a component from an entity.
pub(crate) type RemoveFn = fn(&mut EntityWorldMut);
/// Decodes a presence value onto a peer's entity.
pub(crate) type InsertFn = fn(&mut EntityWorldMut, &[u8]) -> Result<(), String>;

/// Finds the length of the encoded value at the start of a slice, for codecs whose
/// values delimit themselves (they then travel without a length prefix).
pub type Measure = fn(&[u8]) -> Option<usize>;

/// How one type's values come out of the entity document and into the world.
#[derive(Clone, Copy)]
pub(crate) struct DocFns {
    pub(crate) decode: DecodeFn,
    pub(crate) apply: ApplyFn,
    pub(crate) remove: RemoveFn,
}

/// How a wire index's values are delimited in a transient datagram.
#[doc(hidden)]
#[derive(Clone, Copy, Debug)]
pub enum Framing {
    /// Not a transient type: a datagram naming it is refused.
    NotTransient,
    /// Each value has a varint length in front.
    Prefixed,
    /// Values delimit themselves.
    Measured(Measure),
}

/// The per-type function table.
#[derive(Clone, Copy)]
pub(crate) struct TypeFns {
    /// Durable types, and transient ones (their committed values).
    pub(crate) doc: Option<DocFns>,
    /// Transient types.
    pub(crate) framing: Framing,
    /// Presence types: `(insert, remove)` on a peer's entity.
    pub(crate) presence: Option<(InsertFn, RemoveFn)>,
}

impl TypeFns {
    /// A table with nothing in it, for a route to fill.
    pub(crate) const EMPTY: Self = Self {
        doc: None,
        framing: Framing::NotTransient,
        presence: None,
    };
}

/// One registered type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaEntry {
    /// The name the type is stored and travels under.
    pub name: String,
    /// Its route.
    pub route: Route,
}

impl fmt::Display for SchemaEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.route)
    }
}

/// Everything registered with [`SyncAppExt`], in registration order. A type's index
/// here is its wire index, on every route.
#[derive(Resource, Default)]
pub struct SyncRegistry {
    entries: Vec<SchemaEntry>,
    fns: Vec<TypeFns>,
    types: Vec<TypeId>,
    by_name: HashMap<String, u16>,
    by_type: HashMap<TypeId, u16>,
    framing: Vec<Framing>,
}

impl fmt::Debug for SyncRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncRegistry")
            .field("entries", &self.entries)
            .finish_non_exhaustive()
    }
}

impl SyncRegistry {
    /// Appends type `T` under `name` on `route`. Returns its wire index.
    ///
    /// # Panics
    /// If `T` or `name` is registered already: one type, one name, one route.
    pub(crate) fn register<T: 'static>(&mut self, name: String, route: Route, fns: TypeFns) -> u16 {
        let type_id = TypeId::of::<T>();
        let type_name = std::any::type_name::<T>();
        if let Some(&index) = self.by_type.get(&type_id) {
            panic!(
                "`{type_name}` is registered twice (first as `{}`); register each type once",
                self.entries[usize::from(index)]
            );
        }
        if let Some(&index) = self.by_name.get(&name) {
            panic!(
                "`{type_name}` would be synced as `{name}`, the name of a type registered before \
                 it (`{}`); give one of them its own name with `Route::{route:?}.named(..)`",
                self.entries[usize::from(index)]
            );
        }
        let index = u16::try_from(self.entries.len())
            .ok()
            .filter(|index| *index < u16::MAX)
            .expect("fewer than 65,535 sync types are registered");
        self.by_name.insert(name.clone(), index);
        self.by_type.insert(type_id, index);
        self.entries.push(SchemaEntry { name, route });
        self.types.push(type_id);
        self.fns.push(fns);
        self.framing.push(fns.framing);
        index
    }

    /// The entries in registration order.
    pub fn entries(&self) -> &[SchemaEntry] {
        &self.entries
    }

    /// The wire index of a registered name.
    pub fn index_of(&self, name: &str) -> Option<u16> {
        self.by_name.get(name).copied()
    }

    /// The wire index of registered type `T`.
    pub fn index_of_type<T: 'static>(&self) -> Option<u16> {
        self.by_type.get(&TypeId::of::<T>()).copied()
    }

    /// The name of the type at `index`.
    pub fn name(&self, index: u16) -> Option<&str> {
        self.entries
            .get(usize::from(index))
            .map(|e| e.name.as_str())
    }

    /// Per wire index, how transient datagrams delimit its values.
    pub(crate) fn framing(&self) -> &[Framing] {
        &self.framing
    }

    /// Presence types: `(wire index, type, (insert, remove))`.
    pub(crate) fn presence_types(
        &self,
    ) -> impl Iterator<Item = (u16, TypeId, (InsertFn, RemoveFn))> + '_ {
        self.fns
            .iter()
            .zip(&self.types)
            .enumerate()
            .filter_map(|(index, (fns, type_id))| Some((index as u16, *type_id, fns.presence?)))
    }

    /// Types the entity document holds values of: `(wire index, name, functions)`.
    pub(crate) fn doc_types(&self) -> impl Iterator<Item = (u16, &str, DocFns)> + '_ {
        self.entries
            .iter()
            .zip(&self.fns)
            .enumerate()
            .filter_map(|(index, (entry, fns))| Some((index as u16, entry.name.as_str(), fns.doc?)))
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

    struct X;
    struct Y;

    #[test]
    fn order_changes_the_hash() {
        let mut a = SyncRegistry::default();
        a.register::<X>("x".into(), Route::Durable, TypeFns::EMPTY);
        a.register::<Y>("y".into(), Route::Transient, TypeFns::EMPTY);
        let mut b = SyncRegistry::default();
        b.register::<Y>("y".into(), Route::Transient, TypeFns::EMPTY);
        b.register::<X>("x".into(), Route::Durable, TypeFns::EMPTY);
        assert_ne!(a.schema_hash(), b.schema_hash());
        assert_eq!(a.schema_hash(), schema_hash(&a.schema_strings()));
    }

    mod somewhere {
        pub struct Inventory;
        pub struct Wrapper<T>(pub T);
    }

    mod elsewhere {
        pub struct Inventory;
    }

    /// A type's default name has no module path, so moving the type keeps its key.
    #[test]
    fn default_names_have_no_module_path() {
        assert_eq!(default_name::<somewhere::Inventory>(), "Inventory");
        assert_eq!(default_name::<elsewhere::Inventory>(), "Inventory");
        assert_eq!(
            default_name::<somewhere::Wrapper<elsewhere::Inventory>>(),
            "Wrapper<Inventory>"
        );
    }

    #[test]
    #[should_panic(expected = "give one of them its own name")]
    fn two_types_under_one_name_are_refused() {
        let mut registry = SyncRegistry::default();
        registry.register::<somewhere::Inventory>(
            default_name::<somewhere::Inventory>(),
            Route::Durable,
            TypeFns::EMPTY,
        );
        registry.register::<elsewhere::Inventory>(
            default_name::<elsewhere::Inventory>(),
            Route::Durable,
            TypeFns::EMPTY,
        );
    }
}
