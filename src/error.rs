//! The service-level error: what a publish or a subscription can fail with, in domain terms.
//!
//! Each layer has its own error enum (`StoreError`, `CodecError`/`InvalidEvent`,
//! `FilterError`, `ConfigError`); this one is what the engine and the publish path return to
//! the gRPC layer, which turns it into a gRPC status in exactly one place
//! (`grpc::status`). Messages say what was wrong and what to do, never internal secrets.

use crate::codec::InvalidEvent;
use crate::store::StoreError;

/// A failed request, in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is malformed or unsupported.
    #[error("invalid `{field}`: {reason}")]
    InvalidArgument {
        /// The request field, dotted (e.g. `open.start.sequence`).
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// The event breaks a CloudEvents rule.
    #[error("invalid event: {0}")]
    InvalidEvent(#[source] InvalidEvent),
    /// The event is larger than the configured limit.
    #[error("the event is {size} bytes, more than the limit of {limit} bytes")]
    EventTooLarge {
        /// The event's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A gRPC request message is larger than `server.max_request_bytes`.
    #[error(
        "the request message is {size} bytes, more than this gateway's limit of {limit} bytes \
         (server.max_request_bytes)"
    )]
    RequestTooLarge {
        /// The message's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A gRPC request message is not valid protobuf for its type (or nests deeper than
    /// protobuf decoding allows).
    #[error("the request message cannot be decoded: {0}")]
    MalformedRequest(String),
    /// The caller is not authenticated (no credential, an invalid one, or an expired one).
    #[error("{message}")]
    Unauthenticated {
        /// The credential was valid and has expired (resume with a new one).
        expired: bool,
        /// What is wrong.
        message: String,
    },
    /// The caller may not do this. Says nothing of whether the target exists.
    #[error("permission denied: {action} on stream `{stream}`{}", subject.as_ref().map(|s| format!(", subject `{s}`")).unwrap_or_default())]
    PermissionDenied {
        /// `publish`, `subscribe` or `admin`.
        action: String,
        /// The stream.
        stream: String,
        /// The subject, when one is concerned.
        subject: Option<String>,
    },
    /// The stream is not one the gateway serves.
    #[error("stream `{0}` is not declared on this gateway")]
    StreamNotFound(String),
    /// No such durable subscription.
    #[error("durable `{durable}` does not exist on stream `{stream}`")]
    DurableNotFound {
        /// The stream.
        stream: String,
        /// The durable.
        durable: String,
    },
    /// `expected_subject_sequence` did not match.
    #[error(
        "the subject's last event has sequence {current}, not the expected {expected}; \
         re-read the resource and retry with the current sequence"
    )]
    SequenceMismatch {
        /// What the client expected.
        expected: u64,
        /// What the subject's last sequence is.
        current: u64,
    },
    /// The start position is older than the retained history.
    #[error(
        "sequence {requested} is no longer retained; the first available sequence is \
         {first_sequence} (set on_expired to recover automatically)"
    )]
    HistoryExpired {
        /// The requested sequence.
        requested: u64,
        /// The stream's first retained sequence.
        first_sequence: u64,
    },
    /// A limit was reached (subscriptions, window).
    #[error("{0}")]
    ResourceExhausted(String),
    /// A rate limit was reached; retry after the duration.
    #[error("{message}")]
    RateLimited {
        /// What was limited.
        message: String,
        /// When a retry may succeed.
        retry_after: std::time::Duration,
    },
    /// NATS is unreachable or lost for longer than the grace period.
    #[error("NATS is unavailable ({reason}); retry, possibly on another gateway")]
    Unavailable {
        /// What failed.
        reason: String,
    },
    /// The gateway is shutting down.
    #[error("the gateway is shutting down; reconnect to another gateway")]
    ShuttingDown,
    /// A push subscription of that name does not exist.
    #[error("no push subscription `{0}`")]
    PushNotFound(String),
    /// Something of that name exists already.
    #[error("{what} `{name}` exists already; update it instead")]
    AlreadyExists {
        /// What kind of thing.
        what: String,
        /// Its name.
        name: String,
    },
    /// The request is valid but the world is not as it needs (e.g. an endpoint refused the
    /// webhook handshake).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The operation is part of the API but not available in this build.
    #[error("{0} is not implemented yet")]
    Unimplemented(String),
    /// An unexpected failure; the text is safe to show.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for [`Error::PermissionDenied`].
    pub fn denied(action: crate::config::Action, stream: &str, subject: Option<&str>) -> Error {
        Error::PermissionDenied {
            action: action.to_string(),
            stream: stream.to_owned(),
            subject: subject.map(str::to_owned),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<crate::auth::Limited> for Error {
    fn from(l: crate::auth::Limited) -> Error {
        match l {
            crate::auth::Limited::PublishRate(retry_after) => Error::RateLimited {
                message: l.to_string(),
                retry_after,
            },
            crate::auth::Limited::Subscriptions(_) => Error::ResourceExhausted(l.to_string()),
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::Unavailable { ref context, .. } => Error::Unavailable {
                // `Error::Unavailable` says "NATS is unavailable" itself.
                reason: format!("{context}{}", causes(&e)),
            },
            e @ StoreError::LimitReached { .. } => Error::Unavailable {
                reason: error_chain(&e),
            },
            StoreError::StreamNotFound { stream } => Error::StreamNotFound(stream),
            StoreError::NotOwner { stream, .. } => Error::PermissionDenied {
                action: "subscribe".into(),
                stream,
                subject: None,
            },
            StoreError::ConsumerNotFound { stream, durable } => {
                Error::DurableNotFound { stream, durable }
            }
            e @ StoreError::ConsumerConflict { .. } => {
                Error::invalid("open.durable", e.to_string())
            }
            StoreError::WrongLastSequence { expected, current } => {
                Error::SequenceMismatch { expected, current }
            }
            StoreError::TooLarge { size, limit } => Error::EventTooLarge { size, limit },
            e @ (StoreError::StreamConflict { .. } | StoreError::Api { .. }) => {
                Error::Internal(error_chain(&e))
            }
        }
    }
}

/// An error and its causes, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    format!("{e}{}", causes(e))
}

/// `e`'s causes, each as `: cause`, leaving out a cause whose text an earlier one already
/// says (many errors repeat their source's message in their own).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = String::new();
    let mut said = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let message = s.to_string();
        if !said.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
            said.push_str(&message);
        }
        source = s.source();
    }
    text
}
