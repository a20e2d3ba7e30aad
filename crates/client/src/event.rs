//! The domain CloudEvent: what every layer of jetwatch passes around.
//!
//! It mirrors the CloudEvents protobuf format (the richest of the formats): the four required
//! attributes as fields, every optional attribute and extension in one typed map, and data as
//! bytes, text or a protobuf `Any`. The gRPC layer converts to and from the generated protobuf
//! types by hand; the codec converts to and from NATS messages and JSON. This module does no I/O
//! and knows no wire format.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};

/// The only CloudEvents version jetwatch accepts.
pub const SPEC_VERSION: &str = "1.0";

/// A CloudEvent (CloudEvents 1.0).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Event {
    /// `id`: unique within the scope of `source`.
    pub id: String,
    /// `source`: a URI-reference naming the context the event happened in.
    pub source: String,
    /// `specversion`: always `1.0` once validated.
    pub spec_version: String,
    /// `type`: what happened, e.g. `com.example.widget.modified`.
    pub ty: String,
    /// Every optional attribute (`datacontenttype`, `dataschema`, `subject`, `time`) and every
    /// extension, by name. A BTreeMap so that encodings are deterministic.
    pub attributes: BTreeMap<String, AttributeValue>,
    /// The payload, if any.
    pub data: Option<Data>,
}

/// A typed attribute value: the seven CloudEvents attribute types.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// `Boolean`.
    Boolean(bool),
    /// `Integer` (signed 32 bits).
    Integer(i32),
    /// `String`.
    String(String),
    /// `Binary`.
    Binary(Bytes),
    /// `URI` (absolute).
    Uri(String),
    /// `URI-reference`.
    UriRef(String),
    /// `Timestamp`.
    Timestamp(DateTime<Utc>),
}

/// The event's payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// Opaque bytes.
    Binary(Bytes),
    /// Text (including JSON text).
    Text(String),
    /// A protobuf message packed as `google.protobuf.Any`.
    Proto {
        /// The `Any`'s type URL.
        type_url: String,
        /// The encoded message.
        value: Bytes,
    },
}

impl Data {
    /// The payload as bytes, the way it travels on NATS.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Data::Binary(b) => b,
            Data::Text(s) => s.as_bytes(),
            Data::Proto { value, .. } => value,
        }
    }
}

/// A borrowed view of any attribute, required ones included; what filters evaluate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AttributeRef<'a> {
    /// A string-typed attribute (including the required ones).
    String(&'a str),
    /// Any other typed attribute.
    Typed(&'a AttributeValue),
}

impl AttributeRef<'_> {
    /// The attribute's canonical string form (CloudEvents §"Type System").
    pub fn to_canonical_string(&self) -> String {
        match self {
            AttributeRef::String(s) => (*s).to_owned(),
            AttributeRef::Typed(v) => v.to_canonical_string(),
        }
    }
}

impl AttributeValue {
    /// The canonical string form (CloudEvents §"Type System"): `true`/`false`, decimal
    /// integers, base64 for binary, RFC 3339 for timestamps, the text itself otherwise.
    pub fn to_canonical_string(&self) -> String {
        match self {
            AttributeValue::Boolean(b) => b.to_string(),
            AttributeValue::Integer(i) => i.to_string(),
            AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s) => {
                s.clone()
            }
            AttributeValue::Binary(b) => base64::engine::general_purpose::STANDARD.encode(b),
            AttributeValue::Timestamp(t) => format_timestamp(t),
        }
    }

    /// The string form when the value is string-like (string, URI, URI-reference).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// The type's name as the CloudEvents spec writes it, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            AttributeValue::Boolean(_) => "Boolean",
            AttributeValue::Integer(_) => "Integer",
            AttributeValue::String(_) => "String",
            AttributeValue::Binary(_) => "Binary",
            AttributeValue::Uri(_) => "URI",
            AttributeValue::UriRef(_) => "URI-reference",
            AttributeValue::Timestamp(_) => "Timestamp",
        }
    }
}

/// Formats a timestamp as RFC 3339 in UTC with as many fractional digits as it needs.
pub fn format_timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

impl fmt::Display for AttributeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_canonical_string())
    }
}

impl Event {
    /// Looks up any attribute by its CloudEvents name (`id`, `source`, `specversion`, `type`,
    /// or an optional attribute or extension). Names are case-sensitive (lower case).
    pub fn attribute(&self, name: &str) -> Option<AttributeRef<'_>> {
        match name {
            "id" => Some(AttributeRef::String(&self.id)),
            "source" => Some(AttributeRef::String(&self.source)),
            "specversion" => Some(AttributeRef::String(&self.spec_version)),
            "type" => Some(AttributeRef::String(&self.ty)),
            other => self.attributes.get(other).map(AttributeRef::Typed),
        }
    }

    /// The `subject` attribute, if it is set and string-like.
    pub fn subject(&self) -> Option<&str> {
        self.attributes
            .get("subject")
            .and_then(AttributeValue::as_str)
    }

    /// The `datacontenttype` attribute, if set.
    pub fn data_content_type(&self) -> Option<&str> {
        self.attributes
            .get("datacontenttype")
            .and_then(AttributeValue::as_str)
    }

    /// Sets (or replaces) an optional attribute or extension.
    pub fn set(&mut self, name: impl Into<String>, value: AttributeValue) -> &mut Self {
        self.attributes.insert(name.into(), value);
        self
    }

    /// The approximate size of the event in bytes (attribute names and values plus data), for
    /// limits and memory accounting.
    pub fn approximate_size(&self) -> usize {
        let attrs: usize = self
            .attributes
            .iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        AttributeValue::Boolean(_) => 5,
                        AttributeValue::Integer(_) => 11,
                        AttributeValue::String(s)
                        | AttributeValue::Uri(s)
                        | AttributeValue::UriRef(s) => s.len(),
                        AttributeValue::Binary(b) => b.len() * 4 / 3 + 4,
                        AttributeValue::Timestamp(_) => 35,
                    }
            })
            .sum();
        let data = match &self.data {
            None => 0,
            Some(Data::Proto { type_url, value }) => type_url.len() + value.len(),
            Some(d) => d.as_bytes().len(),
        };
        self.id.len() + self.source.len() + self.spec_version.len() + self.ty.len() + attrs + data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_strings_follow_the_type_system() {
        let t = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.5+01:00").unwrap();
        let cases = [
            (AttributeValue::Boolean(true), "true"),
            (AttributeValue::Integer(-42), "-42"),
            (AttributeValue::Binary(Bytes::from_static(b"hi")), "aGk="),
            (
                AttributeValue::Timestamp(t.with_timezone(&Utc)),
                "2024-01-02T02:04:05.500Z",
            ),
            (AttributeValue::UriRef("/a/b".into()), "/a/b"),
        ];
        for (v, want) in cases {
            assert_eq!(v.to_canonical_string(), want, "{v:?}");
        }
    }

    #[test]
    fn required_attributes_are_addressable_by_name() {
        let mut e = Event {
            id: "1".into(),
            source: "/s".into(),
            spec_version: SPEC_VERSION.into(),
            ty: "t".into(),
            ..Event::default()
        };
        e.set("subject", AttributeValue::String("w1".into()));
        assert_eq!(e.attribute("type"), Some(AttributeRef::String("t")));
        assert_eq!(e.subject(), Some("w1"));
        assert_eq!(e.attribute("missing"), None);
    }
}
