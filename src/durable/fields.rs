//! The entity document's layout (see the [route docs](super#document-layout)) and
//! how component values are written to it field by field and read back.

use std::collections::HashMap;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use yrs::{Any, Map, MapPrelim, MapRef, Out, Transaction, TransactionMut};

use crate::net::peer::ReplicaId;
use crate::registry::WHOLE_VALUE;

/// The root map: one entry per entity.
pub(super) const ENTITIES: &str = "entities";
/// An entity's owner (a replica's hex id).
pub(super) const OWNER: &str = "owner";
/// Everyone who has owned the entity.
pub(super) const OWNERS: &str = "owners";
/// Pending ownership requests.
pub(super) const REQUESTS: &str = "requests";
/// The entity's components, by type name.
pub(super) const COMPONENTS: &str = "components";

/// Records a new owner, and adds it to everyone who has owned the entity.
pub(super) fn set_owner(entity_map: &MapRef, txn: &mut TransactionMut, owner: ReplicaId) {
    let owners = child_map(entity_map, txn, OWNERS);
    if !owners.contains_key(txn, &owner.to_string()) {
        owners.insert(txn, owner.to_string(), true);
    }
    entity_map.insert(txn, OWNER, owner.to_string());
}

pub(super) fn entity_map(
    root: &MapRef,
    txn: &mut TransactionMut,
    key: &str,
    owner: ReplicaId,
) -> MapRef {
    if let Some(Out::YMap(map)) = root.get(txn, key) {
        return map;
    }
    let map = root.insert(txn, key, MapPrelim::default());
    map.insert(txn, COMPONENTS, MapPrelim::default());
    set_owner(&map, txn, owner);
    map
}

pub(super) fn child_map(parent: &MapRef, txn: &mut TransactionMut, key: &str) -> MapRef {
    if let Some(Out::YMap(map)) = parent.get(txn, key) {
        return map;
    }
    parent.insert(txn, key, MapPrelim::default())
}

/// Writes the fields of `value` that differ from what the map holds.
pub(super) fn write_fields(map: &MapRef, txn: &mut TransactionMut, value: Any) {
    let fields: Vec<(String, Any)> = match value {
        Any::Map(fields) => fields.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        other => vec![(WHOLE_VALUE.to_owned(), other)],
    };
    for (field, value) in fields {
        let same = matches!(map.get(txn, &field), Some(Out::Any(ref current)) if *current == value);
        if !same {
            map.insert(txn, field, value);
        }
    }
}

/// Reads a component's fields map back into `T`, the inverse of [`write_fields`].
pub(super) fn read_value<T: DeserializeOwned>(
    map: &MapRef,
    txn: &Transaction,
) -> Result<T, String> {
    let fields: Vec<(&str, Any)> = map
        .iter(txn)
        .filter_map(|(key, value)| match value {
            Out::Any(any) => Some((key, any)),
            _ => None,
        })
        .collect();
    if let [(key, whole)] = &fields[..]
        && *key == WHOLE_VALUE
    {
        return yrs::encoding::serde::from_any(whole).map_err(|e| e.to_string());
    }
    // Straight from the fields, without building a map of them first; types that
    // take a map other than as fields (an enum with data, a newtype around a map) do
    // not take this form, and read the map as `to_any` made it.
    let direct = T::deserialize(serde::de::value::MapDeserializer::new(
        fields.iter().map(|(key, value)| (*key, value)),
    ));
    direct.or_else(|_: yrs::encoding::read::Error| {
        let map: HashMap<String, Any> = fields
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect();
        yrs::encoding::serde::from_any(&Any::Map(Arc::new(map))).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use yrs::{Doc, Transact};

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Fields {
        x: i64,
        label: String,
        tag: Option<u8>,
        nested: Point,
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Point(f32, f32);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    enum Shape {
        Dot,
        Circle { radius: f64 },
        Line(Point, Point),
    }

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Wrapped(BTreeMap<String, i32>);

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    #[serde(deny_unknown_fields)]
    struct Strict {
        a: u32,
    }

    /// Writes `value` as a component's fields map and reads it back as a `T`.
    fn read_back<T: DeserializeOwned>(value: Any) -> Result<T, String> {
        let doc = Doc::new();
        let root = doc.get_or_insert_map("root");
        {
            let mut txn = doc.transact_mut();
            let map = child_map(&root, &mut txn, "value");
            write_fields(&map, &mut txn, value);
        }
        let txn = doc.transact();
        let Some(Out::YMap(map)) = root.get(&txn, "value") else {
            panic!("the fields map was written");
        };
        read_value::<T>(&map, &txn)
    }

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> Result<T, String> {
        read_back(yrs::encoding::serde::to_any(value).unwrap())
    }

    /// Every serde shape a component can take comes back from its fields map as it
    /// went in: fields read directly, whole values and map-shaped non-structs through
    /// the general path.
    #[test]
    fn component_values_come_back_from_their_fields() {
        let fields = Fields {
            x: -3,
            label: "card".into(),
            tag: None,
            nested: Point(1.5, -2.0),
        };
        assert_eq!(round_trip(&fields).unwrap(), fields);
        for shape in [
            Shape::Dot,
            Shape::Circle { radius: 2.5 },
            Shape::Line(Point(0.0, 1.0), Point(2.0, 3.0)),
        ] {
            assert_eq!(round_trip(&shape).unwrap(), shape);
        }
        let wrapped = Wrapped(BTreeMap::from([("a".into(), 1), ("b".into(), 2)]));
        assert_eq!(round_trip(&wrapped).unwrap(), wrapped);
        assert_eq!(round_trip(&7u32).unwrap(), 7);
        assert_eq!(round_trip(&Strict { a: 4 }).unwrap(), Strict { a: 4 });
        // A value of another shape is an error, not a panic.
        assert!(read_back::<Fields>(Any::from("not a struct")).is_err());
    }
}
