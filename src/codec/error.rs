//! The codec's errors: [`CodecError`] for messages that cannot be read or written, and
//! [`InvalidEvent`] for events that break the CloudEvents rules jetwatch enforces on publish.

use std::fmt;

/// A NATS message or JSON document that cannot be turned into an event, or an event that cannot
/// be written as a NATS message or JSON document.
///
/// Every variant's message names what was wrong; [`CodecError::attribute`] names the attribute
/// when the error concerns one.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A required attribute is absent (binary mode: its `ce-` header; JSON: its member).
    #[error("attribute `{attribute}` is missing: {detail}")]
    MissingAttribute {
        /// The attribute's name, e.g. `id`.
        attribute: String,
        /// Where it was looked for.
        detail: String,
    },
    /// The same attribute arrived more than once (two `ce-` headers that differ only in case, or
    /// one header with several values).
    #[error("attribute `{attribute}` is given more than once")]
    DuplicateAttribute {
        /// The attribute's name.
        attribute: String,
    },
    /// A header or member names an attribute that CloudEvents does not allow: names are lower-case
    /// `a`–`z` and `0`–`9`, non-empty, and `data` is reserved.
    #[error("`{name}` is not a valid attribute name: {reason}")]
    InvalidAttributeName {
        /// The offending name, as it arrived (without the `ce-` prefix).
        name: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// An attribute's value cannot be read or written as its type requires (a `time` that is
    /// not RFC 3339, an integer out of range, an undecodable header value, ...).
    #[error("attribute `{attribute}`: {reason}")]
    InvalidAttribute {
        /// The attribute's name.
        attribute: String,
        /// What is wrong with the value.
        reason: String,
    },
    /// The event is not CloudEvents 1.0, the only version jetwatch handles.
    #[error(
        "attribute `specversion`: `{version}` is not supported; jetwatch handles CloudEvents \
         1.0 only"
    )]
    UnsupportedSpecVersion {
        /// The version the message declared.
        version: String,
    },
    /// A structured-mode message uses an event format other than JSON.
    #[error(
        "structured content type `{content_type}` is not supported; jetwatch reads \
         application/cloudevents+json"
    )]
    UnsupportedFormat {
        /// The `Content-Type` header's value.
        content_type: String,
    },
    /// The `Jetwatch-Ce-Types` header is malformed or contradicts the message.
    #[error("header `Jetwatch-Ce-Types`: {reason}")]
    TypesHeader {
        /// What is wrong with it.
        reason: String,
    },
    /// The payload cannot be the event's data as declared (e.g. text that is not UTF-8, invalid
    /// base64 in `data_base64`).
    #[error("attribute `data`: {reason}")]
    InvalidData {
        /// What is wrong with the data.
        reason: String,
    },
    /// The message's headers are malformed (e.g. a header with an empty name).
    #[error("malformed headers: {reason}")]
    Headers {
        /// What is wrong.
        reason: String,
    },
    /// The message reads as an event, but one that breaks a rule of [`super::check_stored`]
    /// (a control character in a string, protobuf data that is not protobuf).
    #[error("{0}")]
    Rule(#[source] super::InvalidEvent),
    /// A structured-mode payload or a JSON event is not a JSON object.
    #[error("not a CloudEvents JSON event: {source}")]
    Json {
        /// The JSON parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl CodecError {
    /// The attribute the error concerns, if it concerns one.
    pub fn attribute(&self) -> Option<&str> {
        match self {
            CodecError::MissingAttribute { attribute, .. }
            | CodecError::DuplicateAttribute { attribute }
            | CodecError::InvalidAttribute { attribute, .. } => Some(attribute),
            CodecError::InvalidAttributeName { name, .. } => Some(name),
            CodecError::UnsupportedSpecVersion { .. } => Some("specversion"),
            CodecError::InvalidData { .. } => Some("data"),
            CodecError::Rule(invalid) => Some(&invalid.attribute),
            CodecError::UnsupportedFormat { .. }
            | CodecError::Headers { .. }
            | CodecError::TypesHeader { .. }
            | CodecError::Json { .. } => None,
        }
    }

    pub(crate) fn invalid(attribute: impl Into<String>, reason: impl Into<String>) -> Self {
        CodecError::InvalidAttribute {
            attribute: attribute.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn missing(attribute: impl Into<String>, detail: impl Into<String>) -> Self {
        CodecError::MissingAttribute {
            attribute: attribute.into(),
            detail: detail.into(),
        }
    }

    pub(crate) fn types(reason: impl Into<String>) -> Self {
        CodecError::TypesHeader {
            reason: reason.into(),
        }
    }
}

/// An event that breaks a rule jetwatch enforces on publish. Nothing is stored.
///
/// Displays as ``attribute `id`: is required``: the attribute, then the rule. An event over the
/// size limit is the one case that is not a malformed event but a limit; it is told apart by
/// [`InvalidEvent::is_too_large`] (the gRPC layer answers RESOURCE_EXHAUSTED for it and
/// INVALID_ARGUMENT for everything else).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidEvent {
    /// The attribute at fault, by its CloudEvents name (`data` for the payload).
    pub attribute: String,
    /// The rule it breaks, in words a publisher can act on.
    pub reason: String,
    /// Set when the event is over the size limit rather than malformed.
    pub too_large: Option<TooLarge>,
}

/// The measurements behind a size-limit refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge {
    /// The event's encoded size in bytes (NATS headers plus payload).
    pub size: usize,
    /// The configured limit in bytes.
    pub limit: usize,
}

impl InvalidEvent {
    /// An event that breaks the rule `reason` on `attribute`.
    pub fn new(attribute: impl Into<String>, reason: impl Into<String>) -> Self {
        InvalidEvent {
            attribute: attribute.into(),
            reason: reason.into(),
            too_large: None,
        }
    }

    /// An event whose encoded size is over the limit; `attribute` is its largest part.
    pub fn too_large(attribute: impl Into<String>, size: usize, limit: usize) -> Self {
        InvalidEvent {
            attribute: attribute.into(),
            reason: format!(
                "the event is {size} bytes once encoded (NATS headers and payload), over the \
                 limit of {limit} bytes; make the data or this attribute smaller"
            ),
            too_large: Some(TooLarge { size, limit }),
        }
    }

    /// Whether the event was refused for its size (a limit) rather than its content.
    pub fn is_too_large(&self) -> bool {
        self.too_large.is_some()
    }
}

impl fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "attribute `{}`: {}", self.attribute, self.reason)
    }
}
