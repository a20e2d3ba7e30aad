//! Attribute types and the `Jetwatch-Ce-Types` header: what a header's canonical string loses.
//!
//! The header lists only what differs from the default reading a plain NATS reader would apply
//! (see the module docs of [`crate::codec`]), so an event of strings and text has no such header
//! at all. Syntax: comma-separated `key=value` items; `key` is an attribute name and `value` its
//! type (`boolean`, `integer`, `string`, `binary`, `uri`, `uriref`, `timestamp`), or `key` is
//! `data` and `value` is `text`, `binary` or `proto:<type URL>` with the type URL
//! percent-encoded (the header-value rules plus `,`, `=` and `;`).

use std::borrow::Cow;

use base64::Engine as _;
use chrono::{DateTime, Datelike, Utc};

use super::error::CodecError;
use super::header_value;
use super::media_type;
use crate::event::{format_timestamp, AttributeValue, Data};

/// The name of jetwatch's type header.
pub const TYPES_HEADER: &str = "Jetwatch-Ce-Types";

/// The seven CloudEvents attribute types, as named in the `Jetwatch-Ce-Types` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttrType {
    Boolean,
    Integer,
    String,
    Binary,
    Uri,
    UriRef,
    Timestamp,
}

impl AttrType {
    pub(crate) fn of(value: &AttributeValue) -> AttrType {
        match value {
            AttributeValue::Boolean(_) => AttrType::Boolean,
            AttributeValue::Integer(_) => AttrType::Integer,
            AttributeValue::String(_) => AttrType::String,
            AttributeValue::Binary(_) => AttrType::Binary,
            AttributeValue::Uri(_) => AttrType::Uri,
            AttributeValue::UriRef(_) => AttrType::UriRef,
            AttributeValue::Timestamp(_) => AttrType::Timestamp,
        }
    }

    /// The type an attribute has when nothing says otherwise: the spec's own typed attributes
    /// keep their types (`time` is a Timestamp, `dataschema` a URI), everything else is a String.
    pub(crate) fn default_for(attribute: &str) -> AttrType {
        match attribute {
            "time" => AttrType::Timestamp,
            "dataschema" => AttrType::Uri,
            _ => AttrType::String,
        }
    }

    fn name(self) -> &'static str {
        match self {
            AttrType::Boolean => "boolean",
            AttrType::Integer => "integer",
            AttrType::String => "string",
            AttrType::Binary => "binary",
            AttrType::Uri => "uri",
            AttrType::UriRef => "uriref",
            AttrType::Timestamp => "timestamp",
        }
    }

    fn parse(name: &str) -> Option<AttrType> {
        Some(match name {
            "boolean" => AttrType::Boolean,
            "integer" => AttrType::Integer,
            "string" => AttrType::String,
            "binary" => AttrType::Binary,
            "uri" => AttrType::Uri,
            "uriref" => AttrType::UriRef,
            "timestamp" => AttrType::Timestamp,
            _ => return None,
        })
    }

    /// Reads a canonical string as a value of this type.
    pub(crate) fn read(
        self,
        attribute: &str,
        text: Cow<'_, str>,
    ) -> Result<AttributeValue, CodecError> {
        let bad =
            |what: &str| CodecError::invalid(attribute, format!("`{text}` is not a valid {what}"));
        Ok(match self {
            AttrType::String => AttributeValue::String(text.into_owned()),
            AttrType::Uri => AttributeValue::Uri(text.into_owned()),
            AttrType::UriRef => AttributeValue::UriRef(text.into_owned()),
            AttrType::Boolean => match &*text {
                "true" => AttributeValue::Boolean(true),
                "false" => AttributeValue::Boolean(false),
                _ => return Err(bad("Boolean (`true` or `false`)")),
            },
            AttrType::Integer => {
                AttributeValue::Integer(text.parse().map_err(|_| bad("32-bit Integer"))?)
            }
            AttrType::Binary => AttributeValue::Binary(
                base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|_| bad("Binary (base64)"))?
                    .into(),
            ),
            AttrType::Timestamp => AttributeValue::Timestamp(
                parse_timestamp(&text).ok_or_else(|| bad("Timestamp (RFC 3339)"))?,
            ),
        })
    }
}

/// Parses an RFC 3339 timestamp into UTC.
pub(crate) fn parse_timestamp(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Whether a timestamp can be written in RFC 3339 (four-digit years).
pub(crate) fn timestamp_in_range(t: &DateTime<Utc>) -> bool {
    (0..=9999).contains(&t.year())
}

/// An attribute's canonical string, borrowed when the value already is one.
pub(crate) fn canonical(value: &AttributeValue) -> Cow<'_, str> {
    match value.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(value.to_canonical_string()),
    }
}

/// Checks that a value survives its canonical string: timestamps must have four-digit years.
pub(crate) fn check_writable(name: &str, value: &AttributeValue) -> Result<(), CodecError> {
    match value {
        AttributeValue::Timestamp(t) if !timestamp_in_range(t) => Err(CodecError::invalid(
            name,
            format!(
                "timestamp {} is outside RFC 3339's years 0000 to 9999",
                format_timestamp(t)
            ),
        )),
        _ => Ok(()),
    }
}

/// How the payload is to be read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataForm<'a> {
    /// No data (only ever the default reading of an empty payload).
    None,
    /// UTF-8 text.
    Text,
    /// Opaque bytes.
    Binary,
    /// A protobuf `Any` with this (decoded) type URL.
    Proto(Cow<'a, str>),
}

/// How data is read when nothing says otherwise: an empty payload is no data, a textual
/// content type with UTF-8 bytes is text, anything else is bytes.
pub(crate) fn default_data_form(content_type: Option<&str>, payload: &[u8]) -> DataForm<'static> {
    if payload.is_empty() {
        DataForm::None
    } else if content_type.is_some_and(media_type::is_textual)
        && std::str::from_utf8(payload).is_ok()
    {
        DataForm::Text
    } else {
        DataForm::Binary
    }
}

/// Builds the `Jetwatch-Ce-Types` value for an event, or `None` when every attribute and the
/// data read back correctly by default.
pub(crate) fn write<'a>(
    attributes: impl Iterator<Item = (&'a str, &'a AttributeValue)>,
    content_type: Option<&str>,
    data: Option<&Data>,
) -> Option<String> {
    let mut out = String::new();
    let mut item = |key: &str, value: &str| {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    };
    for (name, value) in attributes {
        let ty = AttrType::of(value);
        if ty != AttrType::default_for(name) {
            item(name, ty.name());
        }
    }
    let payload: &[u8] = data.map_or(&[], Data::as_bytes);
    let default = default_data_form(content_type, payload);
    match data {
        None => {}
        Some(Data::Text(_)) if default == DataForm::Text => {}
        Some(Data::Text(_)) => item("data", "text"),
        Some(Data::Binary(_)) if default == DataForm::Binary => {}
        Some(Data::Binary(_)) => item("data", "binary"),
        Some(Data::Proto { type_url, .. }) => {
            let encoded = header_value::encode_with(type_url, header_value::TYPES_ITEM);
            item("data", &format!("proto:{encoded}"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The parsed `Jetwatch-Ce-Types` header.
#[derive(Debug, Default)]
pub(crate) struct Types<'a> {
    /// Attribute types that differ from the default, by attribute name.
    attributes: Vec<(&'a str, AttrType)>,
    /// Whether each listed attribute was found among the message's headers.
    seen: Vec<bool>,
    /// The data form, when it differs from the default.
    pub(crate) data: Option<DataForm<'a>>,
}

impl<'a> Types<'a> {
    /// Parses the header's value.
    pub(crate) fn parse(value: &'a str) -> Result<Types<'a>, CodecError> {
        let mut types = Types::default();
        for item in value.split(',').map(|i| i.trim_matches([' ', '\t'])) {
            if item.is_empty() {
                continue;
            }
            let Some((key, ty)) = item.split_once('=') else {
                return Err(CodecError::types(format!(
                    "item `{item}` is not `name=type`"
                )));
            };
            if key == "data" {
                if types.data.is_some() {
                    return Err(CodecError::types("`data` is listed twice"));
                }
                types.data = Some(match ty {
                    "text" => DataForm::Text,
                    "binary" => DataForm::Binary,
                    _ => match ty.strip_prefix("proto:") {
                        Some(url) => DataForm::Proto(
                            percent_encoding::percent_decode_str(url)
                                .decode_utf8()
                                .map_err(|_| {
                                    CodecError::types("the proto type URL is not valid UTF-8")
                                })?,
                        ),
                        None => return Err(CodecError::types(format!("unknown data form `{ty}`"))),
                    },
                });
                continue;
            }
            let Some(parsed) = AttrType::parse(ty) else {
                return Err(CodecError::types(format!(
                    "unknown type `{ty}` for `{key}`"
                )));
            };
            if types.attributes.iter().any(|(k, _)| *k == key) {
                return Err(CodecError::types(format!("`{key}` is listed twice")));
            }
            types.attributes.push((key, parsed));
            types.seen.push(false);
        }
        Ok(types)
    }

    /// The type to read `attribute` as, marking it as seen.
    pub(crate) fn type_of(&mut self, attribute: &str) -> AttrType {
        match self.attributes.iter().position(|(k, _)| *k == attribute) {
            Some(i) => {
                self.seen[i] = true;
                self.attributes[i].1
            }
            None => AttrType::default_for(attribute),
        }
    }

    /// Fails if the header types an attribute the message does not carry.
    pub(crate) fn check_all_seen(&self) -> Result<(), CodecError> {
        match self.seen.iter().position(|seen| !seen) {
            Some(i) => Err(CodecError::types(format!(
                "it types `{}` but the message has no `ce-{}` header",
                self.attributes[i].0, self.attributes[i].0
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn lists_only_what_the_default_reading_gets_wrong() {
        let attrs = [
            ("count".to_owned(), AttributeValue::Integer(3)),
            ("flag".to_owned(), AttributeValue::Boolean(true)),
            ("note".to_owned(), AttributeValue::String("x".into())),
            ("time".to_owned(), AttributeValue::Timestamp(Utc::now())),
            ("when".to_owned(), AttributeValue::Timestamp(Utc::now())),
        ];
        let iter = || attrs.iter().map(|(k, v)| (k.as_str(), v));
        let text = Data::Text("{}".into());
        assert_eq!(
            write(iter(), Some("application/json"), Some(&text)).as_deref(),
            Some("count=integer,flag=boolean,when=timestamp")
        );
        assert_eq!(
            write(iter(), None, Some(&text)).as_deref(),
            Some("count=integer,flag=boolean,when=timestamp,data=text")
        );
        let proto = Data::Proto {
            type_url: "t.example/a,b=c".into(),
            value: Bytes::new(),
        };
        assert_eq!(
            write(std::iter::empty(), None, Some(&proto)).as_deref(),
            Some("data=proto:t.example/a%2Cb%3Dc")
        );
        assert_eq!(
            write(std::iter::empty(), Some("text/plain"), Some(&text)),
            None
        );
    }

    #[test]
    fn parses_what_it_writes_and_refuses_nonsense() {
        let mut t = Types::parse("count=integer, flag=boolean,data=proto:t.example/a%2Cb").unwrap();
        assert_eq!(t.type_of("count"), AttrType::Integer);
        assert_eq!(t.type_of("time"), AttrType::Timestamp);
        assert_eq!(t.data, Some(DataForm::Proto("t.example/a,b".into())));
        assert!(t.check_all_seen().is_err());
        t.type_of("flag");
        assert!(t.check_all_seen().is_ok());
        for bad in [
            "count",
            "count=float",
            "data=json",
            "a=string,a=string",
            "data=text,data=binary",
        ] {
            assert!(Types::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_every_type_from_its_canonical_string() {
        let read = |ty: AttrType, s: &str| ty.read("x", Cow::Borrowed(s));
        assert_eq!(
            read(AttrType::Boolean, "true").unwrap(),
            AttributeValue::Boolean(true)
        );
        assert_eq!(
            read(AttrType::Integer, "-7").unwrap(),
            AttributeValue::Integer(-7)
        );
        assert_eq!(
            read(AttrType::Binary, "aGk=").unwrap(),
            AttributeValue::Binary("hi".into())
        );
        assert!(read(AttrType::Boolean, "True").is_err());
        assert!(read(AttrType::Integer, "2147483648").is_err());
        assert!(read(AttrType::Binary, "!!").is_err());
        let err = read(AttrType::Timestamp, "yesterday").unwrap_err();
        assert_eq!(err.attribute(), Some("x"));
    }
}
