//! A stored event's `Delivery` encoding, written straight from the event.
//!
//! Each event is encoded once and shared by every subscriber ([`super::frame`]), but a snapshot
//! of a million resources still encodes a million events, one for each delivery. Building the
//! generated `Delivery` first copies every string of the event into it and puts the attributes
//! in a `HashMap` (a hash and an allocation each), only to encode and drop it: about a tenth of
//! the gateway's CPU in a snapshot. This writes the same protobuf from the event as it is.
//!
//! The output is what prost writes for [`delivery_to_pb`](super::convert::delivery_to_pb)`(event,
//! 0)`: the same fields with the same numbers and wire types, default values of plain fields
//! left out, oneof members always written (even empty), map entries without default keys. Only
//! the order of map entries may differ (prost's map is a `HashMap`), which protobuf allows.
//! prost has no encoder for borrowed data, hence the few lines by hand; the tests compare the two
//! encodings field for field.

use bytes::BufMut;
use chrono::{DateTime, Utc};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};

use crate::engine::StoredEvent;
use crate::event::{AttributeValue, Data, Event};

// `jetwatch.v1.Delivery` (`delivery_count`, 4, is written per delivery by the frame encoder).
const DELIVERY_EVENT: u32 = 1;
const DELIVERY_SEQUENCE: u32 = 2;
const DELIVERY_SUBJECT: u32 = 3;
const DELIVERY_STORED_AT: u32 = 5;

// `io.cloudevents.v1.CloudEvent`.
const EVENT_ID: u32 = 1;
const EVENT_SOURCE: u32 = 2;
const EVENT_SPEC_VERSION: u32 = 3;
const EVENT_TYPE: u32 = 4;
const EVENT_ATTRIBUTES: u32 = 5;
const EVENT_BINARY_DATA: u32 = 6;
const EVENT_TEXT_DATA: u32 = 7;
const EVENT_PROTO_DATA: u32 = 8;

// A map entry; `google.protobuf.Any`.
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const ANY_TYPE_URL: u32 = 1;
const ANY_VALUE: u32 = 2;

// `CloudEventAttributeValue`'s oneof.
const ATTR_BOOLEAN: u32 = 1;
const ATTR_INTEGER: u32 = 2;
const ATTR_STRING: u32 = 3;
const ATTR_BYTES: u32 = 4;
const ATTR_URI: u32 = 5;
const ATTR_URI_REF: u32 = 6;
const ATTR_TIMESTAMP: u32 = 7;

// `google.protobuf.Timestamp`.
const TIMESTAMP_SECONDS: u32 = 1;
const TIMESTAMP_NANOS: u32 = 2;

/// The `Delivery` of `stored` without `delivery_count`, encoded.
pub(super) fn encode(stored: &StoredEvent) -> Vec<u8> {
    let measured = Measured::of(stored);
    let mut buf = Vec::with_capacity(measured.len);
    measured.encode_into(&mut buf);
    debug_assert_eq!(buf.len(), measured.len);
    buf
}

/// [`encode`]'s bytes of an event, measured and ready to be written: the lengths are
/// computed once (the event's is needed both for the total and for its field header).
pub(super) struct Measured<'a> {
    stored: &'a StoredEvent,
    event_len: usize,
    /// The length of [`encode`]'s bytes.
    pub(super) len: usize,
}

impl<'a> Measured<'a> {
    pub(super) fn of(stored: &'a StoredEvent) -> Measured<'a> {
        let event_len = event_len(&stored.event);
        Measured {
            stored,
            event_len,
            len: field_len(DELIVERY_EVENT, event_len)
                + varint_field_len(DELIVERY_SEQUENCE, stored.sequence)
                + string_len(DELIVERY_SUBJECT, &stored.subject)
                + field_len(DELIVERY_STORED_AT, timestamp_len(&stored.stored_at)),
        }
    }

    /// Appends [`encode`]'s bytes to `buf`.
    pub(super) fn encode_into(&self, buf: &mut Vec<u8>) {
        let stored = self.stored;
        put_header(DELIVERY_EVENT, self.event_len, buf);
        put_event(&stored.event, buf);
        put_varint_field(DELIVERY_SEQUENCE, stored.sequence, buf);
        put_string(DELIVERY_SUBJECT, &stored.subject, buf);
        put_header(DELIVERY_STORED_AT, timestamp_len(&stored.stored_at), buf);
        put_timestamp(&stored.stored_at, buf);
    }
}

fn event_len(e: &Event) -> usize {
    let attributes: usize = e
        .attributes
        .iter()
        .map(|(k, v)| field_len(EVENT_ATTRIBUTES, entry_len(k, v)))
        .sum();
    let data = match &e.data {
        None => 0,
        Some(Data::Binary(b)) => field_len(EVENT_BINARY_DATA, b.len()),
        Some(Data::Text(t)) => field_len(EVENT_TEXT_DATA, t.len()),
        Some(Data::Proto { type_url, value }) => {
            field_len(EVENT_PROTO_DATA, any_len(type_url, value))
        }
    };
    string_len(EVENT_ID, &e.id)
        + string_len(EVENT_SOURCE, &e.source)
        + string_len(EVENT_SPEC_VERSION, &e.spec_version)
        + string_len(EVENT_TYPE, &e.ty)
        + attributes
        + data
}

fn put_event(e: &Event, buf: &mut Vec<u8>) {
    put_string(EVENT_ID, &e.id, buf);
    put_string(EVENT_SOURCE, &e.source, buf);
    put_string(EVENT_SPEC_VERSION, &e.spec_version, buf);
    put_string(EVENT_TYPE, &e.ty, buf);
    for (k, v) in &e.attributes {
        put_header(EVENT_ATTRIBUTES, entry_len(k, v), buf);
        put_string(ENTRY_KEY, k, buf);
        put_header(ENTRY_VALUE, value_len(v), buf);
        put_value(v, buf);
    }
    match &e.data {
        None => {}
        Some(Data::Binary(b)) => put_bytes(EVENT_BINARY_DATA, b, buf),
        Some(Data::Text(t)) => put_bytes(EVENT_TEXT_DATA, t.as_bytes(), buf),
        Some(Data::Proto { type_url, value }) => {
            put_header(EVENT_PROTO_DATA, any_len(type_url, value), buf);
            put_string(ANY_TYPE_URL, type_url, buf);
            if !value.is_empty() {
                put_bytes(ANY_VALUE, value, buf);
            }
        }
    }
}

/// A map entry: the key (left out when empty, like any default) and the value message (never
/// default: its oneof is always set).
fn entry_len(key: &str, value: &AttributeValue) -> usize {
    string_len(ENTRY_KEY, key) + field_len(ENTRY_VALUE, value_len(value))
}

fn value_len(v: &AttributeValue) -> usize {
    match v {
        AttributeValue::Boolean(_) => key_len(ATTR_BOOLEAN) + 1,
        AttributeValue::Integer(i) => varint_len(ATTR_INTEGER, i64::from(*i) as u64),
        AttributeValue::String(s) => field_len(ATTR_STRING, s.len()),
        AttributeValue::Binary(b) => field_len(ATTR_BYTES, b.len()),
        AttributeValue::Uri(s) => field_len(ATTR_URI, s.len()),
        AttributeValue::UriRef(s) => field_len(ATTR_URI_REF, s.len()),
        AttributeValue::Timestamp(t) => field_len(ATTR_TIMESTAMP, timestamp_len(t)),
    }
}

fn put_value(v: &AttributeValue, buf: &mut Vec<u8>) {
    match v {
        AttributeValue::Boolean(b) => {
            encode_key(ATTR_BOOLEAN, WireType::Varint, buf);
            encode_varint(u64::from(*b), buf);
        }
        AttributeValue::Integer(i) => {
            encode_key(ATTR_INTEGER, WireType::Varint, buf);
            encode_varint(i64::from(*i) as u64, buf);
        }
        AttributeValue::String(s) => put_bytes(ATTR_STRING, s.as_bytes(), buf),
        AttributeValue::Binary(b) => put_bytes(ATTR_BYTES, b, buf),
        AttributeValue::Uri(s) => put_bytes(ATTR_URI, s.as_bytes(), buf),
        AttributeValue::UriRef(s) => put_bytes(ATTR_URI_REF, s.as_bytes(), buf),
        AttributeValue::Timestamp(t) => {
            put_header(ATTR_TIMESTAMP, timestamp_len(t), buf);
            put_timestamp(t, buf);
        }
    }
}

fn any_len(type_url: &str, value: &[u8]) -> usize {
    let value = if value.is_empty() {
        0
    } else {
        field_len(ANY_VALUE, value.len())
    };
    string_len(ANY_TYPE_URL, type_url) + value
}

/// `google.protobuf.Timestamp`'s fields, as the client crate's `timestamp_to_pb` makes them.
fn timestamp_parts(t: &DateTime<Utc>) -> (i64, i32) {
    (
        t.timestamp(),
        i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    )
}

fn timestamp_len(t: &DateTime<Utc>) -> usize {
    let (seconds, nanos) = timestamp_parts(t);
    varint_field_len(TIMESTAMP_SECONDS, seconds as u64)
        + varint_field_len(TIMESTAMP_NANOS, i64::from(nanos) as u64)
}

fn put_timestamp(t: &DateTime<Utc>, buf: &mut Vec<u8>) {
    let (seconds, nanos) = timestamp_parts(t);
    put_varint_field(TIMESTAMP_SECONDS, seconds as u64, buf);
    put_varint_field(TIMESTAMP_NANOS, i64::from(nanos) as u64, buf);
}

/// A length-delimited field of `len` bytes, written whatever its content.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A plain string field: left out when empty.
fn string_len(tag: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        field_len(tag, s.len())
    }
}

/// A varint field, written whatever its value.
fn varint_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

/// A plain varint field: left out when 0.
fn varint_field_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        varint_len(tag, value)
    }
}

fn put_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    put_header(tag, bytes.len(), buf);
    buf.put_slice(bytes);
}

fn put_string(tag: u32, s: &str, buf: &mut Vec<u8>) {
    if !s.is_empty() {
        put_bytes(tag, s.as_bytes(), buf);
    }
}

fn put_varint_field(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bytes::Bytes;
    use prost::Message;

    use super::*;
    use crate::grpc::convert::delivery_to_pb;
    use crate::grpc::pb::jetwatch::v1 as api;

    fn stored(event: Event, sequence: u64, subject: &str, stored_at: DateTime<Utc>) -> StoredEvent {
        StoredEvent {
            sequence,
            subject: subject.into(),
            stored_at,
            event,
            size: 0,
            wire: Default::default(),
            json: Default::default(),
            segment: Default::default(),
        }
    }

    fn every_attribute_type() -> BTreeMap<String, AttributeValue> {
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:11:12.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let before_1970 = DateTime::parse_from_rfc3339("1969-07-20T20:17:40.5Z")
            .unwrap()
            .with_timezone(&Utc);
        [
            ("yes", AttributeValue::Boolean(true)),
            ("no", AttributeValue::Boolean(false)),
            ("zero", AttributeValue::Integer(0)),
            ("big", AttributeValue::Integer(i32::MAX)),
            ("negative", AttributeValue::Integer(-7)),
            ("empty", AttributeValue::String(String::new())),
            ("text", AttributeValue::String("héllo \"w\"".into())),
            ("nothing", AttributeValue::Binary(Bytes::new())),
            (
                "bytes",
                AttributeValue::Binary(Bytes::from_static(&[0, 1, 255])),
            ),
            (
                "dataschema",
                AttributeValue::Uri("https://example.com/s".into()),
            ),
            ("ref", AttributeValue::UriRef("/widgets/w1".into())),
            ("time", AttributeValue::Timestamp(t)),
            ("epoch", AttributeValue::Timestamp(DateTime::UNIX_EPOCH)),
            ("landing", AttributeValue::Timestamp(before_1970)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn events() -> Vec<StoredEvent> {
        let base = Event {
            id: "e1".into(),
            source: "/widgets".into(),
            spec_version: "1.0".into(),
            ty: "com.example.widget.modified".into(),
            ..Event::default()
        };
        let now = Utc::now();
        let payloads = [
            None,
            Some(Data::Text(String::new())),
            Some(Data::Text("{\"n\":1}".into())),
            Some(Data::Binary(Bytes::new())),
            Some(Data::Binary(Bytes::from(vec![7u8; 300]))),
            Some(Data::Proto {
                type_url: "type.googleapis.com/x.Y".into(),
                value: Bytes::from_static(b"\x08\x01"),
            }),
            Some(Data::Proto {
                type_url: String::new(),
                value: Bytes::new(),
            }),
        ];
        let mut out = Vec::new();
        for data in payloads {
            let mut e = base.clone();
            e.data = data.clone();
            out.push(stored(e.clone(), 1, "events.w1", now));
            e.attributes = every_attribute_type();
            out.push(stored(e, u64::MAX, "events._widgets.w1", now));
        }
        // Defaults everywhere: empty strings, sequence 0, the epoch.
        out.push(stored(Event::default(), 0, "", DateTime::UNIX_EPOCH));
        out
    }

    #[test]
    fn the_direct_encoding_decodes_to_what_the_generated_code_writes() {
        for event in events() {
            let direct = encode(&event);
            let generated = delivery_to_pb(&event, 0);
            let decoded = api::Delivery::decode(direct.as_slice()).expect("valid protobuf");
            assert_eq!(decoded, generated, "{event:?}");
            assert_eq!(direct.len(), generated.encoded_len(), "{event:?}");
        }
    }

    #[test]
    fn without_a_map_the_bytes_are_the_generated_code_s_bytes() {
        // With no attributes, field order is the only freedom, and both write in field order.
        for event in events()
            .into_iter()
            .filter(|e| e.event.attributes.is_empty())
        {
            assert_eq!(
                encode(&event),
                delivery_to_pb(&event, 0).encode_to_vec(),
                "{event:?}"
            );
        }
    }
}
