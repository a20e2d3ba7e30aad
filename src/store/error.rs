//! The JetStream layer's errors, classified by async-nats error kinds and JetStream error codes,
//! never by the wording of a message.

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishError,
    PublishErrorKind, RequestError, RequestErrorKind,
};
use async_nats::jetstream::stream::{
    ConsumerError, ConsumerErrorKind, LastRawMessageErrorKind, RawMessageError,
};
use async_nats::jetstream::{self, ErrorCode};

/// A boxed underlying error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the JetStream layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS cannot be reached, a request timed out, the connection broke, or a read lost
    /// messages on the way: worth retrying.
    #[error("NATS is unavailable: {context}")]
    Unavailable {
        /// What was being done, and what went wrong.
        context: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The durable belongs to another identity.
    #[error("durable `{durable}` of stream `{stream}` belongs to another identity")]
    NotOwner {
        /// The stream.
        stream: String,
        /// The durable.
        durable: String,
    },
    /// The stream does not exist on the server.
    #[error("stream `{stream}` does not exist")]
    StreamNotFound {
        /// The stream.
        stream: String,
    },
    /// The durable consumer does not exist.
    #[error("durable `{durable}` does not exist on stream `{stream}`")]
    ConsumerNotFound {
        /// The stream.
        stream: String,
        /// The durable name.
        durable: String,
    },
    /// A durable exists with a configuration the request contradicts.
    #[error("durable `{durable}` already exists and differs: {detail}")]
    ConsumerConflict {
        /// The durable name.
        durable: String,
        /// What differs.
        detail: String,
    },
    /// The expected last sequence of the subject did not match.
    #[error("the subject's last sequence is {current}, not the expected {expected}")]
    WrongLastSequence {
        /// What the publish expected.
        expected: u64,
        /// The subject's current last sequence (0 when the subject has no event).
        current: u64,
    },
    /// The message (headers and payload, as NATS counts it) exceeds the server's `max_payload`.
    #[error("the message is {size} bytes, more than the NATS server's max_payload of {limit}")]
    TooLarge {
        /// Headers plus payload.
        size: usize,
        /// The server's `max_payload`.
        limit: usize,
    },
    /// A declared stream conflicts with the server's in a way JetStream cannot update.
    #[error("stream `{stream}`: cannot change `{field}` ({detail})")]
    StreamConflict {
        /// The stream.
        stream: String,
        /// The configuration field.
        field: String,
        /// The existing and declared values, or what the server said.
        detail: String,
        /// The server's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A JetStream resource limit (consumers, streams, storage) was reached: retry later.
    #[error("a JetStream limit was reached while {context}")]
    LimitReached {
        /// What was being done.
        context: String,
        /// The server's error.
        #[source]
        source: BoxError,
    },
    /// Any other refusal by the JetStream API.
    #[error("JetStream refused {context}")]
    Api {
        /// What was being done.
        context: String,
        /// The server's or client's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// An [`StoreError::Unavailable`] without an underlying error.
    pub(crate) fn unavailable(context: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            context: context.into(),
            source: None,
        }
    }

    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::LimitReached { .. }
        )
    }
}

/// What an async-nats failure means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The connection, a timeout, or nobody answering.
    Unavailable,
    /// The JetStream API answered with this error code.
    Code(ErrorCode),
    /// The message does not exist (a message lookup).
    NoMessage,
    /// Anything else.
    Other,
}

/// The async-nats errors the store meets, each classified by its kind.
pub(crate) trait Classify: std::error::Error + Send + Sync + Sized + 'static {
    /// What the error means.
    fn classify(&self) -> Cause;
}

fn jetstream_code(e: &jetstream::Error) -> Cause {
    Cause::Code(e.error_code())
}

/// Finds the first classifiable error in `e`'s source chain.
fn cause_of_source(e: &(dyn std::error::Error + 'static)) -> Option<Cause> {
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(js) = s.downcast_ref::<jetstream::Error>() {
            return Some(jetstream_code(js));
        }
        if let Some(r) = s.downcast_ref::<RequestError>() {
            return Some(r.classify());
        }
        next = s.source();
    }
    None
}

impl Classify for RequestError {
    fn classify(&self) -> Cause {
        match self.kind() {
            RequestErrorKind::TimedOut | RequestErrorKind::NoResponders => Cause::Unavailable,
            // An API error answered by the server, or else a request that could not be sent:
            // the connection is gone.
            RequestErrorKind::Other => cause_of_source(self).unwrap_or(Cause::Unavailable),
            RequestErrorKind::InvalidSubject => Cause::Other,
        }
    }
}

impl Classify for GetStreamError {
    fn classify(&self) -> Cause {
        match self.kind() {
            GetStreamErrorKind::JetStream(e) => jetstream_code(&e),
            GetStreamErrorKind::Request => cause_of_source(self).unwrap_or(Cause::Unavailable),
            _ => Cause::Other,
        }
    }
}

impl Classify for ConsumerError {
    fn classify(&self) -> Cause {
        match self.kind() {
            ConsumerErrorKind::JetStream(e) => jetstream_code(&e),
            ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request => Cause::Unavailable,
            _ => Cause::Other,
        }
    }
}

impl Classify for CreateStreamError {
    fn classify(&self) -> Cause {
        match self.kind() {
            CreateStreamErrorKind::JetStream(e) => jetstream_code(&e),
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                Cause::Unavailable
            }
            _ => Cause::Other,
        }
    }
}

impl Classify for RawMessageError {
    fn classify(&self) -> Cause {
        match self.kind() {
            LastRawMessageErrorKind::NoMessageFound => Cause::NoMessage,
            LastRawMessageErrorKind::JetStream(e) => match e.error_code() {
                ErrorCode::NO_MESSAGE_FOUND => Cause::NoMessage,
                _ => jetstream_code(&e),
            },
            LastRawMessageErrorKind::Other => cause_of_source(self).unwrap_or(Cause::Unavailable),
            LastRawMessageErrorKind::InvalidSubject => Cause::Other,
        }
    }
}

impl Classify for async_nats::jetstream::context::ConsumerInfoError {
    fn classify(&self) -> Cause {
        use async_nats::jetstream::context::ConsumerInfoErrorKind as K;
        match self.kind() {
            K::JetStream(e) => jetstream_code(&e),
            K::NotFound => Cause::Code(ErrorCode::CONSUMER_NOT_FOUND),
            K::StreamNotFound => Cause::Code(ErrorCode::STREAM_NOT_FOUND),
            K::TimedOut | K::NoResponders | K::Request | K::Offline => Cause::Unavailable,
            K::InvalidName => Cause::Other,
        }
    }
}

impl Classify for async_nats::jetstream::consumer::StreamError {
    fn classify(&self) -> Cause {
        Cause::Unavailable
    }
}

impl Classify for async_nats::jetstream::consumer::pull::BatchError {
    fn classify(&self) -> Cause {
        Cause::Unavailable
    }
}

/// Turns a classified async-nats error met while `context` on `stream` into a [`StoreError`].
pub(crate) fn store_error<E: Classify>(stream: &str, context: &str, e: E) -> StoreError {
    match e.classify() {
        Cause::Unavailable => StoreError::Unavailable {
            context: context.to_owned(),
            source: Some(Box::new(e)),
        },
        Cause::Code(ErrorCode::STREAM_NOT_FOUND) => StoreError::StreamNotFound {
            stream: stream.to_owned(),
        },
        // The cluster cannot serve the stream right now (no leader, offline replicas).
        Cause::Code(
            ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::CLUSTER_NOT_LEADER
            | ErrorCode::CLUSTER_NO_PEERS
            | ErrorCode::STREAM_OFFLINE
            | ErrorCode::STREAM_OFFLINE_REASON,
        ) => StoreError::Unavailable {
            context: context.to_owned(),
            source: Some(Box::new(e)),
        },
        Cause::Code(
            ErrorCode::MAXIMUM_CONSUMERS_LIMIT
            | ErrorCode::MAXIMUM_STREAMS_LIMIT
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | ErrorCode::MEMORY_RESOURCES_EXCEEDED,
        ) => StoreError::LimitReached {
            context: context.to_owned(),
            source: Box::new(e),
        },
        _ => StoreError::Api {
            context: context.to_owned(),
            source: Box::new(e),
        },
    }
}

/// Like [`store_error`], for operations on the durable `durable`: a missing consumer is
/// [`StoreError::ConsumerNotFound`].
pub(crate) fn durable_error<E: Classify>(
    stream: &str,
    durable: &str,
    context: &str,
    e: E,
) -> StoreError {
    if e.classify() == Cause::Code(ErrorCode::CONSUMER_NOT_FOUND) {
        return StoreError::ConsumerNotFound {
            stream: stream.to_owned(),
            durable: durable.to_owned(),
        };
    }
    store_error(stream, context, e)
}

/// What a failed publish means. `expected` is the publish's expected subject sequence, `size`
/// the message's size as NATS counts it and `limit` the server's `max_payload`.
pub(crate) fn publish_error(
    e: PublishError,
    expected: Option<u64>,
    size: usize,
    limit: usize,
) -> StoreError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => StoreError::WrongLastSequence {
            expected: expected.unwrap_or(0),
            current: current_sequence(&e).unwrap_or(0),
        },
        PublishErrorKind::MaxPayloadExceeded => StoreError::TooLarge { size, limit },
        // "No responders": no stream leader answers right now (an election, a restart) or no
        // stream captures the subject; the declared streams capture every rendered subject, so
        // it is the former.
        PublishErrorKind::StreamNotFound
        | PublishErrorKind::TimedOut
        | PublishErrorKind::BrokenPipe => StoreError::Unavailable {
            context: "publishing".into(),
            source: Some(Box::new(e)),
        },
        _ => match cause_of_source(&e) {
            Some(Cause::Code(code)) if code == ErrorCode::STORAGE_RESOURCES_EXCEEDED => {
                StoreError::LimitReached {
                    context: "publishing".into(),
                    source: Box::new(e),
                }
            }
            _ => StoreError::Api {
                context: "the publish".into(),
                source: Box::new(e),
            },
        },
    }
}

/// The subject's current sequence from a wrong-last-sequence refusal. The server states it
/// only in the error's description ("wrong last sequence: N"); the kind was decided by the
/// error code before this is read.
fn current_sequence(e: &PublishError) -> Option<u64> {
    let mut next = std::error::Error::source(e);
    while let Some(s) = next {
        if let Some(js) = s.downcast_ref::<jetstream::Error>() {
            let text = js.to_string();
            let digits: String = text
                .split_once(':')?
                .1
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits.parse().ok();
        }
        next = s.source();
    }
    None
}
