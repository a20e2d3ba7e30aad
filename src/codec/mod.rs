//! The CloudEvents codec: domain [`Event`]s to and from NATS messages and the JSON event format,
//! validation, and the dedup key.
//!
//! **Boundary: pure.** No I/O, no clock, no async; `async_nats` is used only for its
//! `HeaderMap`/`HeaderName`/`HeaderValue` data types. The JetStream layer publishes what
//! [`encode`] returns and hands every stored message to [`decode`]; the gRPC layer calls
//! [`validate`] before publishing.
//!
//! # Writing: binary content mode
//!
//! [`encode`] writes the CloudEvents NATS protocol binding's (1.0.3) binary content mode: every
//! attribute, the four required ones and every extension, in its own `ce-<name>` header
//! (`datacontenttype` in `ce-datacontenttype`), the data as the payload. Header values are the
//! attribute's canonical string, percent-encoded as the binding says: space, `"`, `%`, and every
//! byte of anything outside printable ASCII (UTF-8 bytes of non-ASCII characters, control
//! characters), with upper-case hex digits. What an operator sees with `nats stream get`:
//!
//! ```text
//! ce-specversion: 1.0
//! ce-id: 42
//! ce-source: /clusters/eu1/widgets
//! ce-type: com.example.widget.modified
//! ce-subject: caf%C3%A9%20w1
//! ce-time: 2024-01-02T03:04:05.500Z
//! ce-generation: 7
//! ce-datacontenttype: application/json
//! Jetwatch-Ce-Types: generation=integer
//!
//! {"spec":{"size":3}}
//! ```
//!
//! ## `Jetwatch-Ce-Types`: what the string form loses
//!
//! A header holds a string, so a reader of `ce-generation: 7` cannot know whether the
//! publisher's value was the Integer 7 or the String "7", nor whether the payload was text,
//! bytes or a protobuf `Any`. jetwatch records that in one header of its own, `Jetwatch-Ce-Types`,
//! listing only what differs from the *default reading* below: comma-separated `name=type`
//! items, with `type` one of `boolean`, `integer`, `string`, `binary`, `uri`, `uriref`,
//! `timestamp`, and one `data=` item: `text`, `binary`, or `proto:<type URL>` (the type URL
//! percent-encoded like a header value, plus `,`, `=` and `;`). Examples:
//!
//! ```text
//! Jetwatch-Ce-Types: generation=integer,deleted=boolean,owner=uriref
//! Jetwatch-Ce-Types: data=proto:type.googleapis.com/example.v1.Widget
//! Jetwatch-Ce-Types: data=text              (text data with no textual datacontenttype)
//! ```
//!
//! An event whose extensions are all strings and whose data reads back by default has no such
//! header. Every item must name an attribute the message carries; an unknown type is an error.
//!
//! **The default reading** (a message without the header, e.g. from a plain NATS producer):
//! extensions and `subject`/`datacontenttype` are Strings, `time` is a Timestamp and
//! `dataschema` a URI (the spec's own types); an empty payload is no data; a non-empty payload
//! is Text when `datacontenttype` is textual (`text/*`, `application/json`, `*+json`,
//! `application/xml`, `*+xml`) and the bytes are UTF-8, and Binary otherwise.
//!
//! With the header, all seven attribute types and every data form (bytes, text, JSON text,
//! protobuf `Any`) survive [`encode`] then [`decode`] exactly, including empty data (`Some`
//! empty text is not `None`).
//!
//! # Reading: either content mode
//!
//! [`decode`] follows the binding: a `Content-Type` header of `application/cloudevents`
//! (matched case-insensitively, parameters such as `; charset=utf-8` ignored) means structured
//! mode, read with the JSON event format (other formats, e.g. `+protobuf`, are refused);
//! otherwise it is binary mode and `ce-specversion` is required. Header values are first
//! unquoted (RFC 7230 double-quoted strings with backslash escapes, which older binding
//! versions allowed), then percent-decoded once; the result must be UTF-8 (an overlong
//! `%C0%A0` is refused). Strict where the spec is clear: `specversion` must be `1.0`; `id`,
//! `source` and `type` must be present; a message with neither `ce-specversion` nor a
//! structured content type (and not the legacy case below) is an error naming what is missing;
//! attribute names must be lower-case `a`–`z`/`0`–`9` and not `data`; an attribute given twice
//! is an error; `time` must parse as RFC 3339.
//!
//! ## Leniencies, for producers that deviate from the binding
//!
//! - **Header names case-insensitively.** `Ce-Id`, `CE-ID` and `ce-id` are all `id` (the
//!   binding says header names are case-insensitive; Go clients that canonicalise headers write
//!   `Ce-Id`). Two spellings of one attribute in one message are a duplicate, not a merge.
//! - **Unprefixed `content-type` for `datacontenttype`.** The Java SDK's NATS binding writes
//!   `datacontenttype` as `content-type` (percent-encoded) and reads it back from there; Go's
//!   JetStream binding reads it from there too. A non-structured `Content-Type` header is taken as
//!   `datacontenttype` unless `ce-datacontenttype` is present, which wins.
//! - **Values that were not percent-encoded.** Go's JetStream binding writes raw values
//!   (`fmt.Sprint`). Raw UTF-8 is accepted as it is, and a `%` not followed by two hex digits is
//!   kept literally (`100%` stays `100%`). A raw value containing a valid-looking escape
//!   (`%41`) is still decoded, as the binding requires.
//! - **Structured mode without a `Content-Type` header.** The 1.0.2 binding (structured only,
//!   no headers) and the SDKs that follow it (the Rust SDK's NATS binding; Go's NATS and
//!   JetStream bindings, which treat every message without `ce-specversion` as structured)
//!   publish a bare JSON event. A message with no `ce-` header at all whose payload is a JSON
//!   object is read as a structured JSON event. A message that has `ce-` headers but no
//!   `ce-specversion` is an error.
//! - **Other headers are ignored** (`Nats-Msg-Id`, tracing headers, ...).
//!
//! # The JSON event format
//!
//! [`event_from_json`] and [`event_to_json`] go through the CloudEvents SDK's serde
//! implementation of `cloudevents::Event` (see the `json` module for the places where this
//! module corrects what the SDK would lose). JSON has only strings, numbers and booleans, so
//! extensions read as Integer (whole numbers in the 32-bit range; others are refused), Boolean
//! or String; `time` reads as a Timestamp and `dataschema` as a URI. Data: `data_base64` is
//! Binary; `data` is Text: the JSON text of the value when `datacontenttype` is JSON (`json` or
//! `+json` subtype) or absent (the format's default), the string itself otherwise. Writing is
//! the reverse: Text becomes a JSON value when the content type is JSON (or absent) and the text
//! parses, a string otherwise; Binary and protobuf data become `data_base64` (the `Any`'s type
//! URL has no place in the JSON format and is lost); typed extensions other than Integer and
//! Boolean become their canonical strings. JSON text is normalised on the way (object keys
//! sorted, insignificant whitespace dropped).
//!
//! # Validation
//!
//! [`validate`] enforces what the spec makes mandatory, with an [`InvalidEvent`] that names the
//! attribute and the rule: `id`, `source`, `type` non-empty; `specversion` = `1.0`; attribute
//! names `a`–`z`/`0`–`9`, non-empty, not `data` nor a required attribute's name (longer than 20
//! characters is allowed: the limit is only a SHOULD); `time` a Timestamp, `dataschema` a URI
//! (absolute), `subject` and `datacontenttype` Strings; `source` and every URI-reference value an
//! RFC 3986 URI-reference (no spaces, controls, non-ASCII or invalid `%` escapes: percent-encode
//! them); `datacontenttype` an RFC 2046 media type; Strings free of control characters
//! (U+0000–U+001F, U+007F–U+009F) and noncharacters, as the type system requires; Timestamps
//! within RFC 3339's years 0000–9999; a protobuf `Any` with a type URL; and the size limit.

mod binary;
mod error;
mod header_value;
mod json;
mod media_type;
pub(crate) use media_type::{
    is_cloudevents_batch_json, is_cloudevents_json, is_structured_cloudevent,
};
mod types;
mod validate;

use sha2::{Digest, Sha256};

pub use error::{CodecError, InvalidEvent, TooLarge};
pub use types::TYPES_HEADER;

use crate::event::Event;

/// An event as a NATS message: binary-mode headers and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The `ce-` headers, and `Jetwatch-Ce-Types` when types need recording.
    pub headers: async_nats::HeaderMap,
    /// The event's data (empty when it has none).
    pub payload: bytes::Bytes,
}

/// An attribute value as a `ce-` header value (the HTTP binding's percent-encoding).
pub fn http_header_value(value: &str) -> std::borrow::Cow<'_, str> {
    header_value::encode(value)
}

impl Encoded {
    /// Bytes of the message: header names and values plus the payload.
    pub fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, values)| {
                values
                    .iter()
                    .map(|v| AsRef::<str>::as_ref(name).len() + v.as_str().len() + 4)
                    .sum::<usize>()
            })
            .sum();
        headers + self.payload.len()
    }
}

/// Writes an event as a NATS message in binary content mode (see the module docs).
///
/// Fails only for events that cannot be written faithfully: an attribute name that is not a
/// valid CloudEvents name, or a timestamp outside RFC 3339's four-digit years. Call [`validate`]
/// first to enforce everything else.
pub fn encode(event: &Event) -> Result<Encoded, CodecError> {
    binary::encode(event)
}

/// Reads a NATS message, binary or structured mode, into an event (see the module docs for the
/// rules and the leniencies). `headers` is `None` for a message without headers. Never panics.
///
/// Binary data is not copied: the event's `Data::Binary` or `Data::Proto` shares `payload`.
pub fn decode(
    headers: Option<&async_nats::HeaderMap>,
    payload: bytes::Bytes,
) -> Result<Event, CodecError> {
    binary::decode(headers, payload)
}

/// The rule for whatever other NATS clients put on a stream, checked on every stored message
/// after [`decode`]: no header may have an empty name, no string attribute may hold a control
/// character or a Unicode noncharacter (as on publish), and protobuf data must be protobuf wire
/// format. Subscribers skip a message that breaks it, as they skip one [`decode`] refuses: it
/// could hand them text unsafe to print or data they cannot decode. The URI and type
/// leniencies above stay.
pub fn check_stored(
    headers: Option<&async_nats::HeaderMap>,
    event: &Event,
) -> Result<(), CodecError> {
    if let Some(headers) = headers {
        if headers
            .iter()
            .any(|(name, _)| AsRef::<str>::as_ref(name).is_empty())
        {
            return Err(CodecError::Headers {
                reason: "a header has an empty name".into(),
            });
        }
    }
    validate::check_readable(event).map_err(CodecError::Rule)
}

/// The `Nats-Msg-Id` value for an event: the lower-case hex SHA-256 of the source's length
/// (8 bytes, big-endian), the source and the id. Distinct `(source, id)` pairs give distinct
/// keys (the length prefix makes the encoding injective; SHA-256 makes collisions
/// impractical), and 64 hex characters are a legal header value.
pub fn dedup_key(source: &str, id: &str) -> String {
    let mut hash = Sha256::new();
    hash.update((source.len() as u64).to_be_bytes());
    hash.update(source.as_bytes());
    hash.update(id.as_bytes());
    let digest = hash.finalize();
    let mut out = String::with_capacity(64);
    for byte in digest {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// Checks an event against the CloudEvents rules jetwatch enforces on publish (see the module
/// docs) and against `max_size`, the limit in bytes on its encoded size (NATS headers as
/// [`encode`] writes them, plus the payload). The first broken rule is reported; a size
/// refusal is told apart by [`InvalidEvent::is_too_large`].
pub fn validate(event: &Event, max_size: usize) -> Result<(), InvalidEvent> {
    validate::validate(event, max_size)
}

/// Every rule of [`validate`] but the size, for callers that measure the size themselves (the
/// publish path measures the NATS message it sends, headers it adds included).
pub fn validate_rules(event: &Event) -> Result<(), InvalidEvent> {
    validate::validate_rules(event)
}

/// Reads an event in the CloudEvents JSON event format (structured mode).
pub fn event_from_json(json: &[u8]) -> Result<Event, CodecError> {
    json::event_from_json(json)
}

/// Writes an event in the CloudEvents JSON event format (structured mode).
pub fn event_to_json(event: &Event) -> Result<serde_json::Value, CodecError> {
    json::event_to_json(event)
}

/// Attribute-name rules shared by the codec and validation.
mod names {
    use super::error::CodecError;
    use crate::event::AttributeValue;

    /// [`check`] as a codec error naming the attribute.
    pub(crate) fn checked(name: &str) -> Result<(), CodecError> {
        check(name).map_err(|reason| CodecError::InvalidAttributeName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        })
    }

    /// Checks that an attribute of the map can be written: its name and its value.
    pub(crate) fn check_attribute(name: &str, value: &AttributeValue) -> Result<(), CodecError> {
        checked(name)?;
        super::types::check_writable(name, value)
    }

    /// Checks a name for the attribute map (optional attributes and extensions).
    pub(crate) fn check(name: &str) -> Result<(), &'static str> {
        if name.is_empty() {
            Err("an attribute name must not be empty")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            Err("attribute names use only lower-case letters a-z and digits 0-9")
        } else if name == "data" {
            Err("`data` is reserved for the event's payload")
        } else if matches!(name, "id" | "source" | "specversion" | "type") {
            Err("a required attribute is a field of the event, not an entry of its attribute map")
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
