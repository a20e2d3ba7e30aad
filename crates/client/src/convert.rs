//! Conversions between the protobuf CloudEvent and [`Event`], and of timestamps.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::{AttributeValue, Data, Event};
use crate::pb::io::cloudevents::v1 as ce;
use ce::cloud_event::cloud_event_attribute_value::Attr;

/// A protobuf field that does not hold what it must.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidField {
    /// The field's path, e.g. `event.attributes[time]`.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

/// Converts a protobuf CloudEvent to an [`Event`]. `field` prefixes error paths. Only the
/// shape is checked (every attribute has a type, timestamps are valid); whether the event is a
/// valid CloudEvent is the gateway's to say.
pub fn event_from_pb(pb: ce::CloudEvent, field: &str) -> Result<Event, InvalidField> {
    let mut attributes = std::collections::BTreeMap::new();
    for (name, value) in pb.attributes {
        let invalid = |reason: &str| InvalidField {
            field: format!("{field}.attributes[{name}]"),
            reason: reason.to_owned(),
        };
        let attr = value
            .attr
            .ok_or_else(|| invalid("the attribute value has no type set"))?;
        let v = match attr {
            Attr::CeBoolean(b) => AttributeValue::Boolean(b),
            Attr::CeInteger(i) => AttributeValue::Integer(i),
            Attr::CeString(s) => AttributeValue::String(s),
            Attr::CeBytes(b) => AttributeValue::Binary(Bytes::from(b)),
            Attr::CeUri(s) => AttributeValue::Uri(s),
            Attr::CeUriRef(s) => AttributeValue::UriRef(s),
            Attr::CeTimestamp(t) => AttributeValue::Timestamp(
                timestamp_from_pb(&t).ok_or_else(|| invalid("invalid timestamp"))?,
            ),
        };
        attributes.insert(name, v);
    }
    let data = pb.data.map(|d| match d {
        ce::cloud_event::Data::BinaryData(b) => Data::Binary(Bytes::from(b)),
        ce::cloud_event::Data::TextData(t) => Data::Text(t),
        ce::cloud_event::Data::ProtoData(any) => Data::Proto {
            type_url: any.type_url,
            value: Bytes::from(any.value),
        },
    });
    Ok(Event {
        id: pb.id,
        source: pb.source,
        spec_version: pb.spec_version,
        ty: pb.r#type,
        attributes,
        data,
    })
}

/// Converts an [`Event`] to the protobuf CloudEvent.
pub fn event_to_pb(e: &Event) -> ce::CloudEvent {
    let attributes = e
        .attributes
        .iter()
        .map(|(k, v)| {
            let attr = match v {
                AttributeValue::Boolean(b) => Attr::CeBoolean(*b),
                AttributeValue::Integer(i) => Attr::CeInteger(*i),
                AttributeValue::String(s) => Attr::CeString(s.clone()),
                AttributeValue::Binary(b) => Attr::CeBytes(b.to_vec()),
                AttributeValue::Uri(s) => Attr::CeUri(s.clone()),
                AttributeValue::UriRef(s) => Attr::CeUriRef(s.clone()),
                AttributeValue::Timestamp(t) => Attr::CeTimestamp(timestamp_to_pb(t)),
            };
            (
                k.clone(),
                ce::cloud_event::CloudEventAttributeValue { attr: Some(attr) },
            )
        })
        .collect();
    let data = e.data.as_ref().map(|d| match d {
        Data::Binary(b) => ce::cloud_event::Data::BinaryData(b.to_vec()),
        Data::Text(t) => ce::cloud_event::Data::TextData(t.clone()),
        Data::Proto { type_url, value } => ce::cloud_event::Data::ProtoData(prost_types::Any {
            type_url: type_url.clone(),
            value: value.to_vec(),
        }),
    });
    ce::CloudEvent {
        id: e.id.clone(),
        source: e.source.clone(),
        spec_version: e.spec_version.clone(),
        r#type: e.ty.clone(),
        attributes,
        data,
    }
}

/// A protobuf timestamp as a UTC time, if valid.
pub fn timestamp_from_pb(t: &prost_types::Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(t.nanos).ok()?;
    DateTime::from_timestamp(t.seconds, nanos)
}

/// A UTC time as a protobuf timestamp.
pub fn timestamp_to_pb(t: &DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
