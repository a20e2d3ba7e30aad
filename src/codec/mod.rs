//! CloudEvents ⇄ NATS messages (binary content mode) and validation. Pure: no I/O.
//!
//! Interim implementation covering the required attributes and string extensions; the complete
//! codec replaces it behind the same API.

use async_nats::HeaderMap;
use bytes::Bytes;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::{Digest, Sha256};

use crate::event::{AttributeValue, Data, Event, SPEC_VERSION};

const ENCODE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// An event as a NATS message: headers and payload.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// `ce-*` headers.
    pub headers: HeaderMap,
    /// The event's data.
    pub payload: Bytes,
}

/// Why a message could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A required attribute header is missing or malformed.
    #[error("attribute `{attribute}`: {reason}")]
    Attribute {
        /// The attribute.
        attribute: String,
        /// What is wrong.
        reason: String,
    },
}

impl CodecError {
    /// The attribute concerned, if any.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            CodecError::Attribute { attribute, .. } => Some(attribute),
        }
    }
}

/// An event that fails validation.
#[derive(Debug, Clone, thiserror::Error)]
#[error("attribute `{attribute}`: {reason}")]
pub struct InvalidEvent {
    /// The attribute at fault.
    pub attribute: String,
    /// The rule it breaks.
    pub reason: String,
}

impl InvalidEvent {
    /// Whether the event was refused only for its size.
    pub fn is_too_large(&self) -> bool {
        self.reason.starts_with("event is too large")
    }
}

/// Encodes `event` in binary content mode.
pub fn encode(event: &Event) -> Result<Encoded, CodecError> {
    let mut headers = HeaderMap::new();
    let mut put = |name: &str, value: &str| {
        headers.insert(
            format!("ce-{name}").as_str(),
            utf8_percent_encode(value, ENCODE).to_string().as_str(),
        );
    };
    put("id", &event.id);
    put("source", &event.source);
    put("specversion", &event.spec_version);
    put("type", &event.ty);
    for (name, value) in &event.attributes {
        put(name, &value.to_canonical_string());
    }
    let payload = match &event.data {
        None => Bytes::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
        Some(Data::Proto { value, .. }) => value.clone(),
    };
    Ok(Encoded { headers, payload })
}

/// Decodes a binary content mode message.
pub fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Event, CodecError> {
    let missing = |a: &str| CodecError::Attribute {
        attribute: a.into(),
        reason: "header missing".into(),
    };
    let headers = headers.ok_or_else(|| missing("specversion"))?;
    let mut event = Event::default();
    for (name, values) in headers.iter() {
        let name = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        let Some(attr) = name.strip_prefix("ce-") else {
            continue;
        };
        let Some(raw) = values.first() else { continue };
        let value = percent_decode_str(raw.as_str())
            .decode_utf8_lossy()
            .into_owned();
        match attr {
            "id" => event.id = value,
            "source" => event.source = value,
            "specversion" => event.spec_version = value,
            "type" => event.ty = value,
            "time" => {
                let t = chrono::DateTime::parse_from_rfc3339(&value).map_err(|e| {
                    CodecError::Attribute {
                        attribute: "time".into(),
                        reason: e.to_string(),
                    }
                })?;
                event.set(
                    "time",
                    AttributeValue::Timestamp(t.with_timezone(&chrono::Utc)),
                );
            }
            "dataschema" => {
                event.set("dataschema", AttributeValue::Uri(value));
            }
            other => {
                event.set(other, AttributeValue::String(value));
            }
        }
    }
    if event.spec_version.is_empty() {
        return Err(missing("specversion"));
    }
    if !payload.is_empty() {
        event.data = Some(match String::from_utf8(payload.to_vec()) {
            Ok(s) => Data::Text(s),
            Err(_) => Data::Binary(payload),
        });
    }
    Ok(event)
}

/// The `Nats-Msg-Id` for an event: hex SHA-256 over the length-prefixed source and id.
pub fn dedup_key(source: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update((source.len() as u64).to_be_bytes());
    h.update(source.as_bytes());
    h.update(id.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Validates required attributes and the size limit.
pub fn validate(event: &Event, max_size: usize) -> Result<(), InvalidEvent> {
    let bad = |a: &str, r: &str| {
        Err(InvalidEvent {
            attribute: a.into(),
            reason: r.into(),
        })
    };
    if event.id.is_empty() {
        return bad("id", "is required and must not be empty");
    }
    if event.source.is_empty() {
        return bad("source", "is required and must not be empty");
    }
    if event.spec_version != SPEC_VERSION {
        return bad("specversion", "must be 1.0");
    }
    if event.ty.is_empty() {
        return bad("type", "is required and must not be empty");
    }
    if max_size > 0 && event.approximate_size() > max_size {
        return bad("data", "event is too large");
    }
    Ok(())
}
