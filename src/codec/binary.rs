//! Binary content mode: attributes in `ce-` headers, data as the payload; and the choice between
//! binary and structured mode when reading.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;

use super::error::CodecError;
use super::types::{self, AttrType, DataForm, Types, TYPES_HEADER};
use super::{header_value, json, media_type, names, Encoded};
use crate::event::{AttributeValue, Data, Event};

const CE_PREFIX: &str = "ce-";

/// Writes an event in binary content mode.
pub(crate) fn encode(event: &Event) -> Result<Encoded, CodecError> {
    let mut headers = HeaderMap::new();
    let required = [
        ("ce-id", &event.id),
        ("ce-source", &event.source),
        ("ce-specversion", &event.spec_version),
        ("ce-type", &event.ty),
    ];
    for (header, value) in required {
        headers.insert(HeaderName::from_static(header), value_of(value));
    }
    for (name, value) in &event.attributes {
        names::check_attribute(name, value)?;
        let header = HeaderName::try_from(format!("{CE_PREFIX}{name}")).map_err(|_| {
            CodecError::InvalidAttributeName {
                name: name.clone(),
                reason: "not usable in a NATS header name".into(),
            }
        })?;
        headers.insert(header, value_of(&types::canonical(value)));
    }
    if let Some(types) = types_header(event) {
        headers.insert(
            HeaderName::from_static(TYPES_HEADER),
            HeaderValue::from(types),
        );
    }
    let payload = match &event.data {
        None => Bytes::new(),
        Some(Data::Binary(b)) => b.clone(),
        Some(Data::Text(s)) => Bytes::copy_from_slice(s.as_bytes()),
        Some(Data::Proto { value, .. }) => value.clone(),
    };
    Ok(Encoded { headers, payload })
}

/// A header value holding `value` percent-encoded. Percent-encoding leaves only printable ASCII,
/// so the value never contains the CR or LF that `HeaderValue` refuses.
fn value_of(value: &str) -> HeaderValue {
    HeaderValue::from(header_value::encode(value).into_owned())
}

/// The exact number of bytes `encode` produces for an event's headers (as NATS writes them:
/// `NATS/1.0\r\n`, one `name: value\r\n` line each, a blank line) plus its payload, and the
/// name of the event's largest part (an attribute, or `data`).
pub(crate) fn encoded_size(event: &Event) -> (usize, &str) {
    const LINE: usize = ": \r\n".len();
    let mut total = "NATS/1.0\r\n\r\n".len();
    let mut largest = (
        "data",
        event.data.as_ref().map_or(0, |d| d.as_bytes().len()),
    );
    total += largest.1;
    let required = [
        ("id", event.id.as_str()),
        ("source", &event.source),
        ("specversion", &event.spec_version),
        ("type", &event.ty),
    ];
    let optional = event.attributes.iter().map(|(name, value)| {
        let len = match value {
            AttributeValue::Binary(b) => b.len().div_ceil(3) * 4,
            AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s) => {
                header_value::encoded_len(s)
            }
            other => other.to_canonical_string().len(),
        };
        (name.as_str(), len)
    });
    let required = required
        .into_iter()
        .map(|(name, value)| (name, header_value::encoded_len(value)));
    for (name, len) in required.chain(optional) {
        total += CE_PREFIX.len() + name.len() + LINE + len;
        if len > largest.1 {
            largest = (name, len);
        }
    }
    if let Some(types) = types_header(event) {
        total += TYPES_HEADER.len() + LINE + types.len();
    }
    (total, largest.0)
}

/// Reads a NATS message in either content mode.
pub(crate) fn decode(headers: Option<&HeaderMap>, payload: Bytes) -> Result<Event, CodecError> {
    let mut scan = Scan::default();
    if let Some(headers) = headers {
        scan.scan(headers)?;
    }
    if let Some(content_type) = scan.structured {
        if !media_type::is_cloudevents_json(content_type) {
            return Err(CodecError::UnsupportedFormat {
                content_type: content_type.to_owned(),
            });
        }
        return json::event_from_json(&payload);
    }
    match headers {
        Some(headers) if scan.has_spec_version => decode_binary(headers, &scan, payload),
        _ if !scan.has_ce_headers && looks_like_json_object(&payload) => {
            // Structured mode without a Content-Type header: what the 1.0.2 binding and the
            // SDKs that follow it (Go's NATS/JetStream bindings, the Rust SDK) write.
            json::event_from_json(&payload)
        }
        _ => Err(CodecError::missing(
            "specversion",
            "the message has no `ce-specversion` header (binary mode) and no \
             `Content-Type: application/cloudevents+json` header (structured mode)",
        )),
    }
}

/// The data of a message that does not say how to read it (see [`types::default_data_form`]),
/// checking UTF-8 only once.
fn default_data(content_type: Option<&str>, payload: Bytes) -> Option<Data> {
    if payload.is_empty() {
        None
    } else if content_type.is_some_and(media_type::is_textual) {
        Some(match String::from_utf8(Vec::from(payload)) {
            Ok(text) => Data::Text(text),
            Err(e) => Data::Binary(Bytes::from(e.into_bytes())),
        })
    } else {
        Some(Data::Binary(payload))
    }
}

fn looks_like_json_object(payload: &[u8]) -> bool {
    payload.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// What a first pass over the headers finds.
#[derive(Debug, Default)]
struct Scan<'h> {
    /// A `Content-Type` announcing structured mode.
    structured: Option<&'h str>,
    /// An unprefixed `Content-Type` that is not structured: stands for `datacontenttype`.
    content_type: Option<&'h str>,
    /// The `Jetwatch-Ce-Types` header.
    types: Option<&'h str>,
    /// Whether a `ce-specversion` header is present.
    has_spec_version: bool,
    /// Whether any `ce-` header is present.
    has_ce_headers: bool,
}

impl<'h> Scan<'h> {
    fn scan(&mut self, headers: &'h HeaderMap) -> Result<(), CodecError> {
        for (name, values) in headers.iter() {
            let name: &str = name.as_ref();
            if let Some(attr) = strip_ce_prefix(name) {
                self.has_ce_headers = true;
                self.has_spec_version |= attr.eq_ignore_ascii_case("specversion");
            } else if name.eq_ignore_ascii_case("content-type") {
                for value in values {
                    let value = value.as_str();
                    let slot = if media_type::is_structured_cloudevent(value) {
                        &mut self.structured
                    } else {
                        &mut self.content_type
                    };
                    if slot.replace(value).is_some_and(|old| old != value) {
                        return Err(CodecError::DuplicateAttribute {
                            attribute: "datacontenttype".into(),
                        });
                    }
                }
            } else if name.eq_ignore_ascii_case(TYPES_HEADER) {
                if values.len() > 1 || self.types.is_some() {
                    return Err(CodecError::types("the header appears more than once"));
                }
                self.types = values.first().map(HeaderValue::as_str);
            }
        }
        Ok(())
    }
}

/// The attribute name of a `ce-` header (prefix matched case-insensitively).
fn strip_ce_prefix(name: &str) -> Option<&str> {
    let prefix = name.get(..CE_PREFIX.len())?;
    prefix
        .eq_ignore_ascii_case(CE_PREFIX)
        .then(|| &name[CE_PREFIX.len()..])
}

fn decode_binary(
    headers: &HeaderMap,
    scan: &Scan<'_>,
    payload: Bytes,
) -> Result<Event, CodecError> {
    let mut types = match scan.types {
        Some(value) => Types::parse(value)?,
        None => Types::default(),
    };
    let mut event = Event::default();
    let mut required: [Option<String>; 4] = Default::default();
    let mut attributes = BTreeMap::new();
    for (name, values) in headers.iter() {
        let Some(raw_name) = strip_ce_prefix(name.as_ref()) else {
            continue;
        };
        let attr: Cow<'_, str> = if raw_name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(raw_name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(raw_name)
        };
        let [value] = values.as_slice() else {
            return Err(CodecError::DuplicateAttribute {
                attribute: attr.into_owned(),
            });
        };
        let text = header_value::decode(value.as_str())
            .map_err(|e| CodecError::invalid(attr.as_ref(), e.reason()))?;
        let slot = match attr.as_ref() {
            "id" => Some(0),
            "source" => Some(1),
            "specversion" => Some(2),
            "type" => Some(3),
            _ => None,
        };
        let ty = types.type_of(&attr);
        if let Some(i) = slot {
            if ty != AttrType::String {
                return Err(CodecError::types(format!("`{attr}` must be a string")));
            }
            if required[i].replace(text.into_owned()).is_some() {
                return Err(CodecError::DuplicateAttribute {
                    attribute: attr.into_owned(),
                });
            }
            continue;
        }
        names::checked(&attr)?;
        let value = ty.read(&attr, text)?;
        if attributes.insert(attr.into_owned(), value).is_some() {
            return Err(CodecError::DuplicateAttribute {
                attribute: raw_name.to_ascii_lowercase(),
            });
        }
    }
    types.check_all_seen()?;
    if let Some(content_type) = scan.content_type {
        if !attributes.contains_key("datacontenttype") {
            let text = header_value::decode(content_type)
                .map_err(|e| CodecError::invalid("datacontenttype", e.reason()))?;
            attributes.insert(
                "datacontenttype".into(),
                AttributeValue::String(text.into_owned()),
            );
        }
    }
    let [id, source, spec_version, ty] = required;
    let missing = |attr: &str| {
        CodecError::missing(
            attr,
            format!("the binary-mode message has no `ce-{attr}` header"),
        )
    };
    event.spec_version = spec_version.ok_or_else(|| missing("specversion"))?;
    if event.spec_version != crate::event::SPEC_VERSION {
        return Err(CodecError::UnsupportedSpecVersion {
            version: event.spec_version,
        });
    }
    event.id = id.ok_or_else(|| missing("id"))?;
    event.source = source.ok_or_else(|| missing("source"))?;
    event.ty = ty.ok_or_else(|| missing("type"))?;
    event.data = match types.data.take() {
        None => {
            let content_type = attributes.get("datacontenttype").map(types::canonical);
            default_data(content_type.as_deref(), payload)
        }
        Some(DataForm::None) => None,
        Some(DataForm::Binary) => Some(Data::Binary(payload)),
        Some(DataForm::Text) => Some(Data::Text(String::from_utf8(Vec::from(payload)).map_err(
            |_| CodecError::InvalidData {
                reason: "the payload is text but not valid UTF-8".into(),
            },
        )?)),
        Some(DataForm::Proto(type_url)) => Some(Data::Proto {
            type_url: type_url.into_owned(),
            value: payload,
        }),
    };
    event.attributes = attributes;
    Ok(event)
}

/// The `Jetwatch-Ce-Types` value for `event`, when its string form loses anything.
fn types_header(event: &Event) -> Option<String> {
    let content_type = event
        .attributes
        .get("datacontenttype")
        .map(types::canonical);
    let attrs = event.attributes.iter().map(|(k, v)| (k.as_str(), v));
    types::write(attrs, content_type.as_deref(), event.data.as_ref())
}
