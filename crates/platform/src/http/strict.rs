//! How [`super::Json`] reads a body: serde's derived `Deserialize`, held to what a client
//! means at every depth, not only at the top.
//!
//! - an object is an object: serde's derived structs also take an array of their fields in
//!   order (`"price": [100, "EUR"]`), which no client means;
//! - a field the type does not know is refused wherever it is (`price.extra`), also in types
//!   that ignore unknown fields elsewhere: the contract types (`Money`, …) are shared with
//!   events, whose consumers must ignore fields added later, so the rule belongs to the
//!   request, not to the type;
//! - no string (value or key) holds a control character other than tab, line feed and
//!   carriage return: Postgres refuses NUL in text, and none of the others belongs in what
//!   a client sends.
//!
//! One wrapper around the deserializer does it for every request type: [`Strict`] passes
//! every call on and wraps what comes back (visitors, maps, sequences, enums), so the rules
//! hold all the way down. Errors are serde's, so `serde_path_to_error` names the field.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, Unexpected, VariantAccess, Visitor};

/// The control character a string may not hold, if `c` is one.
pub(super) fn forbidden_in_text(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

/// `c` as a client can read it in a detail: `U+0000 (NUL)`.
pub(super) fn describe(c: char) -> String {
    const C0: [&str; 32] = [
        "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "TAB", "LF", "VT", "FF", "CR", "SO", "SI", "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB",
        "CAN", "EM", "SUB", "ESC", "FS", "GS", "RS", "US",
    ];
    match c as u32 {
        n @ 0..=31 => format!("U+{n:04X} ({})", C0[n as usize]),
        0x7f => "U+007F (DEL)".to_owned(),
        n => format!("U+{n:04X}"),
    }
}

/// A deserializer that keeps the rules above; `control` is set when a string broke the
/// last one (a `400`, where the others are a `422`).
pub(super) struct Strict<'a, D> {
    pub de: D,
    pub control: &'a Cell<bool>,
}

impl<'a, D> Strict<'a, D> {
    fn visitor<V>(&self, inner: V, object: bool) -> Wrap<'a, V> {
        Wrap { inner, control: self.control, object }
    }
}

macro_rules! forward {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            let visitor = self.visitor(visitor, false);
            self.de.$method(visitor)
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Strict<'_, D> {
    type Error = D::Error;

    forward! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64
        deserialize_char deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf deserialize_option
        deserialize_unit deserialize_seq deserialize_map deserialize_identifier
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_newtype_struct(name, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_tuple(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(self, name: &'static str, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_tuple_struct(name, len, visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(self, name: &'static str, fields: &'static [&'static str], visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, true);
        self.de.deserialize_struct(name, fields, visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(self, name: &'static str, variants: &'static [&'static str], visitor: V) -> Result<V::Value, D::Error> {
        let visitor = self.visitor(visitor, false);
        self.de.deserialize_enum(name, variants, visitor)
    }

    /// A derived struct skips the value of a field it does not know this way.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, D::Error> {
        Err(de::Error::custom("unknown field: the request has no such field (see /openapi.json)"))
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// A visitor that checks strings and wraps what it is handed; `object`: it reads a struct,
/// which must come as a JSON object.
struct Wrap<'a, V> {
    inner: V,
    control: &'a Cell<bool>,
    object: bool,
}

impl<'a, V> Wrap<'a, V> {
    fn check<E: de::Error>(&self, s: &str) -> Result<(), E> {
        match s.chars().find(|&c| forbidden_in_text(c)) {
            Some(c) => {
                self.control.set(true);
                Err(E::custom(format!("the string contains the control character {}; only tab, line feed and carriage return are allowed", describe(c))))
            }
            None => Ok(()),
        }
    }

    fn strict<D>(&self, de: D) -> Strict<'a, D> {
        Strict { de, control: self.control }
    }
}

macro_rules! pass {
    ($($method:ident($ty:ty))*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.inner.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.expecting(f)
    }

    pass! {
        visit_bool(bool) visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
        visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128) visit_f32(f32) visit_f64(f64)
        visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
    }

    fn visit_char<E: de::Error>(self, v: char) -> Result<Self::Value, E> {
        self.check(v.encode_utf8(&mut [0; 4]))?;
        self.inner.visit_char(v)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        self.check(v)?;
        self.inner.visit_str(v)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        self.check(v)?;
        self.inner.visit_borrowed_str(v)
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        self.check(&v)?;
        self.inner.visit_string(v)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.inner.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let de = self.strict(de);
        self.inner.visit_some(de)
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let de = self.strict(de);
        self.inner.visit_newtype_struct(de)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        if self.object {
            return Err(de::Error::invalid_type(Unexpected::Seq, &"a JSON object"));
        }
        let seq = Access { inner: seq, control: self.control };
        self.inner.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let map = Access { inner: map, control: self.control };
        self.inner.visit_map(map)
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        let data = Access { inner: data, control: self.control };
        self.inner.visit_enum(data)
    }
}

/// A map, sequence, enum or variant whose parts are read strictly too.
struct Access<'a, A> {
    inner: A,
    control: &'a Cell<bool>,
}

impl<'a, A> Access<'a, A> {
    fn seed<S>(&self, inner: S) -> Seed<'a, S> {
        Seed { inner, control: self.control }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

impl<'a, 'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<'a, A> {
    type Error = A::Error;
    type Variant = Access<'a, A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let seed = self.seed(seed);
        let (value, variant) = self.inner.variant_seed(seed)?;
        Ok((value, Access { inner: variant, control: self.control }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<'_, A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.inner.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.inner.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.inner.tuple_variant(len, Wrap { inner: visitor, control: self.control, object: false })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], visitor: V) -> Result<V::Value, A::Error> {
        self.inner.struct_variant(fields, Wrap { inner: visitor, control: self.control, object: true })
    }
}

/// A seed whose deserializer is strict.
struct Seed<'a, S> {
    inner: S,
    control: &'a Cell<bool>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<'_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Strict { de, control: self.control })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Money {
        amount_minor: i64,
        currency: String,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Product {
        name: String,
        price: Money,
        tags: Option<Vec<String>>,
        kind: Option<Kind>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        Boxed { size: i32 },
    }

    /// The path and message of the refusal, and whether it was a control character.
    fn read(json: &str) -> Result<Product, (String, bool)> {
        let control = Cell::new(false);
        let mut de = serde_json::Deserializer::from_str(json);
        serde_path_to_error::deserialize(Strict { de: &mut de, control: &control }).map_err(|e| (format!("{}: {}", e.path(), e.inner()), control.get()))
    }

    #[test]
    fn well_formed_bodies_read_as_before() {
        let p = read(r#"{"name":"Lamp\twith\r\nlines","price":{"amount_minor":5,"currency":"EUR"},"tags":["a"],"kind":{"boxed":{"size":2}}}"#).unwrap();
        assert_eq!(p.price, Money { amount_minor: 5, currency: "EUR".into() });
        assert_eq!(p.kind, Some(Kind::Boxed { size: 2 }));
        assert_eq!(read(r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR"},"kind":"plain","tags":null}"#).unwrap().kind, Some(Kind::Plain));
    }

    #[test]
    fn nested_objects_are_objects_without_unknown_fields() {
        let (at, control) = read(r#"{"name":"x","price":[100,"EUR"]}"#).unwrap_err();
        assert!(at.starts_with("price: invalid type: sequence, expected a JSON object"), "{at}");
        assert!(!control);
        let (at, _) = read(r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR","extra":{"deep":[1]}}}"#).unwrap_err();
        assert!(at.starts_with("price.extra: unknown field"), "{at}");
        let (at, _) = read(r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR"},"kind":{"boxed":[2]}}"#).unwrap_err();
        assert!(at.contains("expected a JSON object"), "{at}");
        let (at, _) = read(r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR"},"color":1}"#).unwrap_err();
        assert!(at.contains("unknown field `color`"), "{at}");
    }

    #[test]
    fn control_characters_are_refused_in_values_and_keys_at_any_depth() {
        for (json, at, what) in [
            (r#"{"name":"a\u0000b","price":{"amount_minor":5,"currency":"EUR"}}"#, "name", "U+0000 (NUL)"),
            (r#"{"name":"x","price":{"amount_minor":5,"currency":"E\u001bR"}}"#, "price.currency", "U+001B (ESC)"),
            (r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR"},"tags":["ok","\u007f"]}"#, "tags[1]", "U+007F (DEL)"),
            (r#"{"name":"x","price":{"amount_minor":5,"currency":"EUR","k\u0001":1}}"#, "price", "U+0001 (SOH)"),
            (r#"{"name":"\b","price":{"amount_minor":5,"currency":"EUR"}}"#, "name", "U+0008 (BS)"),
        ] {
            let (msg, control) = read(json).unwrap_err();
            assert!(control, "{json}: {msg}");
            assert!(msg.starts_with(at) && msg.contains(what), "{json}: {msg}");
        }
    }
}
