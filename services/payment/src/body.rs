//! Request bodies that must be JSON objects.
//!
//! serde's derived structs also accept an array of their fields in order (`[5]` for
//! `{"quantity": 5}`), which no client means and the API does not document. Wrapping a body
//! type in [`Object`] refuses anything but an object as a wrong type (422), like any other.
//! (The platform's `Json` extractor would be the place for this; until it does it, each
//! service that takes bodies carries this file.)

use std::fmt;
use std::marker::PhantomData;

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `T`, read only from a JSON object.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(OnlyMaps(PhantomData)).map(Object)
    }
}

struct OnlyMaps<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OnlyMaps<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::deserialize(MapAccessDeserializer::new(map))
    }
}
