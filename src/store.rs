//! The JetStream layer: the only module that performs NATS I/O.
//!
//! It connects, declares streams, publishes encoded events, reports stream state and opens
//! readers (ephemeral pull consumers positioned at a sequence, a time or the last message per
//! subject). Everything above it speaks in stream sequences and [`RawMessage`]s; async-nats
//! errors are classified into [`StoreError`] here and nowhere else.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::codec::Encoded;
use crate::config::{NatsSettings, Storage, StreamSettings};

/// How long an abandoned ephemeral reader lingers on the server before NATS removes it
/// (covers a gateway that dies without cleaning up).
const READER_INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// Errors of the JetStream layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// NATS cannot be reached, a request timed out, or the connection broke.
    #[error("NATS is unavailable: {0}")]
    Unavailable(String),
    /// The stream does not exist on the server.
    #[error("stream `{0}` does not exist")]
    StreamNotFound(String),
    /// The durable consumer does not exist.
    #[error("durable `{durable}` does not exist on stream `{stream}`")]
    ConsumerNotFound {
        /// The stream.
        stream: String,
        /// The durable name.
        durable: String,
    },
    /// `expected_subject_sequence` did not match the subject's last sequence.
    #[error("the subject's last sequence is {current}, not the expected one")]
    WrongLastSequence {
        /// The subject's current last sequence (0 when the subject has no event).
        current: u64,
    },
    /// The message exceeds the server's `max_payload`.
    #[error("the event exceeds the NATS server's max_payload")]
    TooLarge,
    /// A declared stream conflicts with the existing one in a way JetStream cannot update.
    #[error("stream `{stream}`: cannot change `{field}` of an existing stream ({detail})")]
    StreamConflict {
        /// The stream.
        stream: String,
        /// The configuration field that cannot change.
        field: String,
        /// The existing and declared values, or the server's explanation.
        detail: String,
    },
    /// Any other JetStream API error, with the server's description.
    #[error("JetStream refused the request: {0}")]
    Api(String),
}

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At this stream sequence (inclusive).
    Sequence(u64),
    /// At the first message stored at or after this time.
    Time(DateTime<Utc>),
    /// The last message of every subject, then everything newer.
    LastPerSubject,
}

/// A stored message as read from a stream.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Stream sequence.
    pub sequence: u64,
    /// The subject it is stored on.
    pub subject: String,
    /// When JetStream stored it.
    pub stored_at: DateTime<Utc>,
    /// Messages matching the reader's filter still to come after this one.
    pub pending: u64,
    /// Headers (`ce-*` for binary mode events).
    pub headers: Option<HeaderMap>,
    /// Payload.
    pub payload: Bytes,
}

/// A stream's state, as the admin API and the subscription engine need it.
#[derive(Debug, Clone)]
pub struct StreamState {
    /// Stream name.
    pub name: String,
    /// Subjects it captures.
    pub subjects: Vec<String>,
    /// First retained sequence (last + 1 when empty).
    pub first_sequence: u64,
    /// Last stored sequence (0 when nothing was ever stored).
    pub last_sequence: u64,
    /// Retained messages.
    pub messages: u64,
    /// Retained bytes.
    pub bytes: u64,
    /// Distinct subjects.
    pub subject_count: u64,
    /// JetStream consumers on the stream.
    pub consumer_count: usize,
    /// Time of the first retained message.
    pub first_time: DateTime<Utc>,
    /// Time of the last message.
    pub last_time: DateTime<Utc>,
    /// `file` or `memory`.
    pub storage: String,
    /// Replicas.
    pub replicas: usize,
}

/// The outcome of an acknowledged publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishAck {
    /// Stream sequence of the stored (or, for a duplicate, the original) event.
    pub sequence: u64,
    /// Whether the event repeated one in the duplicate window.
    pub duplicate: bool,
}

/// The connection to NATS and its JetStream context.
#[derive(Clone)]
pub struct Store {
    /// The core connection (connection state, server info).
    client: async_nats::Client,
    /// The JetStream API.
    js: jetstream::Context,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl Store {
    /// Connects to NATS, waiting up to `connect_timeout` for the first connection.
    pub async fn connect(settings: &NatsSettings) -> Result<Store, StoreError> {
        let options = async_nats::ConnectOptions::new()
            .name(&settings.connection_name)
            .connection_timeout(settings.connect_timeout)
            .request_timeout(Some(settings.request_timeout))
            .retry_on_initial_connect()
            .event_callback(|event| async move {
                tracing::info!(%event, "nats connection event");
            });
        let connect = async_nats::connect_with_options(settings.url.as_str(), options);
        let client = match tokio::time::timeout(settings.connect_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no connection to {} within {:?}",
                    settings.url, settings.connect_timeout
                )))
            }
        };
        // `retry_on_initial_connect` returns before the handshake: wait until it completes.
        let flush = tokio::time::timeout(settings.connect_timeout, client.flush()).await;
        if !matches!(flush, Ok(Ok(()))) {
            return Err(StoreError::Unavailable(format!(
                "no connection to {} within {:?}",
                settings.url, settings.connect_timeout
            )));
        }
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .build(client.clone());
        Ok(Store { client, js })
    }

    /// Whether the connection to NATS is up right now.
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// The server's `max_payload` in bytes.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Creates the stream, or updates it to the declared configuration. Fields JetStream cannot
    /// change (storage type) give [`StoreError::StreamConflict`] naming the field.
    pub async fn ensure_stream(&self, s: &StreamSettings) -> Result<(), StoreError> {
        let config = stream::Config {
            name: s.name.clone(),
            subjects: s.subjects.clone(),
            storage: match s.storage {
                Storage::File => stream::StorageType::File,
                Storage::Memory => stream::StorageType::Memory,
            },
            num_replicas: s.replicas,
            max_age: s.max_age,
            max_bytes: s.max_bytes,
            max_messages: -1,
            max_messages_per_subject: s.max_messages_per_subject,
            duplicate_window: s.duplicate_window,
            allow_direct: true,
            description: Some("jetwatch CloudEvents stream".into()),
            ..Default::default()
        };
        match self.js.get_stream(&s.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(api)?;
                if info.config.storage != config.storage {
                    return Err(StoreError::StreamConflict {
                        stream: s.name.clone(),
                        field: "storage".into(),
                        detail: format!(
                            "existing {:?}, declared {:?}; recreate the stream to change it",
                            info.config.storage, config.storage
                        ),
                    });
                }
                self.js
                    .update_stream(&config)
                    .await
                    .map_err(|e| StoreError::StreamConflict {
                        stream: s.name.clone(),
                        field: "configuration".into(),
                        detail: e.to_string(),
                    })?;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                self.js.create_stream(config).await.map_err(|e| {
                    StoreError::Api(format!("cannot create stream `{}`: {e}", s.name))
                })?;
            }
            Err(e) => return Err(StoreError::Unavailable(e.to_string())),
        }
        Ok(())
    }

    /// Sends one publish and returns a future for its acknowledgement, so callers can pipeline.
    pub async fn publish(
        &self,
        subject: String,
        encoded: Encoded,
        msg_id: &str,
        expected_subject_sequence: Option<u64>,
    ) -> Result<PendingAck, StoreError> {
        let mut msg = jetstream::message::PublishMessage::build()
            .payload(encoded.payload)
            .headers(encoded.headers)
            .message_id(msg_id);
        if let Some(expected) = expected_subject_sequence {
            msg = msg.expected_last_subject_sequence(expected);
        }
        let fut = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(publish_error)?;
        Ok(PendingAck { fut })
    }

    /// The state of `stream`.
    pub async fn stream_state(&self, stream: &str) -> Result<StreamState, StoreError> {
        let handle = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| not_found_or(stream, e))?;
        Ok(state_from_info(handle.cached_info()))
    }

    /// The states of every stream on the server.
    pub async fn stream_states(&self) -> Result<Vec<StreamState>, StoreError> {
        let mut out = Vec::new();
        let mut streams = self.js.streams();
        while let Some(info) = streams.next().await {
            out.push(state_from_info(&info.map_err(api)?));
        }
        Ok(out)
    }

    /// Opens a reader on `stream` from `start`, restricted to `filter_subjects` (all subjects
    /// when empty). The reader pulls at most `batch` messages ahead of its caller.
    pub async fn read(
        &self,
        stream: &str,
        start: StartAt,
        filter_subjects: &[String],
        batch: usize,
    ) -> Result<Reader, StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        let deliver_policy = match start {
            StartAt::Sequence(s) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: s.max(1),
            },
            StartAt::Time(t) => consumer::DeliverPolicy::ByStartTime { start_time: t },
            StartAt::LastPerSubject => consumer::DeliverPolicy::LastPerSubject,
        };
        let config = consumer::pull::Config {
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            filter_subjects: filter_subjects.to_vec(),
            inactive_threshold: READER_INACTIVE_THRESHOLD,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        let mut consumer: consumer::PullConsumer = handle
            .create_consumer(config)
            .await
            .map_err(|e| not_found_or(stream, e))?;
        let initial_pending = consumer.info().await.map_err(api)?.num_pending;
        let name = consumer.cached_info().name.clone();
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch.max(1))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(Reader {
            stream: handle,
            name,
            messages,
            initial_pending,
        })
    }
}

/// A publish sent and awaiting its acknowledgement.
#[derive(Debug)]
pub struct PendingAck {
    /// The acknowledgement from JetStream.
    fut: jetstream::context::PublishAckFuture,
}

impl PendingAck {
    /// Waits for JetStream's acknowledgement.
    pub async fn ack(self) -> Result<PublishAck, StoreError> {
        let ack = self.fut.await.map_err(publish_error)?;
        Ok(PublishAck {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// An ephemeral, unacknowledged reader of a stream (a JetStream pull consumer). Deleted when
/// dropped; NATS also removes it after [`READER_INACTIVE_THRESHOLD`] should the gateway die.
pub struct Reader {
    /// The stream, to delete the consumer on drop.
    stream: stream::Stream<()>,
    /// The consumer's name.
    name: String,
    /// The pulled messages.
    messages: consumer::pull::Stream,
    /// Matching messages pending when the reader was created.
    initial_pending: u64,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("consumer", &self.name)
            .finish()
    }
}

impl Reader {
    /// Matching messages pending when the reader was created: 0 means there was nothing to
    /// read at that moment.
    pub fn initial_pending(&self) -> u64 {
        self.initial_pending
    }

    /// The next message; `None` only if the underlying subscription ended.
    pub async fn next(&mut self) -> Option<Result<RawMessage, StoreError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(StoreError::Unavailable(e.to_string()))),
        };
        let info = match msg.info() {
            Ok(i) => (i.stream_sequence, i.pending, i.published),
            Err(e) => return Some(Err(StoreError::Api(e.to_string()))),
        };
        let msg = msg.split().0;
        Some(Ok(RawMessage {
            sequence: info.0,
            subject: msg.subject.to_string(),
            stored_at: info.2,
            pending: info.1,
            headers: msg.headers,
            payload: msg.payload,
        }))
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let name = std::mem::take(&mut self.name);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
            });
        }
    }
}

fn state_from_info(info: &stream::Info) -> StreamState {
    StreamState {
        name: info.config.name.clone(),
        subjects: info.config.subjects.clone(),
        first_sequence: info.state.first_sequence,
        last_sequence: info.state.last_sequence,
        messages: info.state.messages,
        bytes: info.state.bytes,
        subject_count: info.state.subjects_count,
        consumer_count: info.state.consumer_count,
        first_time: info.state.first_timestamp,
        last_time: info.state.last_timestamp,
        storage: match info.config.storage {
            stream::StorageType::File => "file".into(),
            stream::StorageType::Memory => "memory".into(),
        },
        replicas: info.config.num_replicas,
    }
}

fn publish_error(e: jetstream::context::PublishError) -> StoreError {
    match e.kind() {
        PublishErrorKind::WrongLastSequence => {
            // The server says "wrong last sequence: N".
            let text = e.to_string();
            let current = text
                .rsplit(|c: char| !c.is_ascii_digit())
                .find(|t| !t.is_empty())
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            StoreError::WrongLastSequence { current }
        }
        PublishErrorKind::MaxPayloadExceeded => StoreError::TooLarge,
        PublishErrorKind::StreamNotFound => {
            StoreError::Api("no stream captures the event's subject".into())
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Api(e.to_string()),
    }
}

/// Classifies any other async-nats error: time-outs and connection problems are
/// `Unavailable`, the rest `Api`.
pub(crate) fn api<E: fmt::Display>(e: E) -> StoreError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    if lower.contains("timed out")
        || lower.contains("timeout")
        || lower.contains("no responders")
        || lower.contains("broken pipe")
        || lower.contains("disconnected")
    {
        StoreError::Unavailable(text)
    } else {
        StoreError::Api(text)
    }
}

fn not_found_or<E: fmt::Display>(stream: &str, e: E) -> StoreError {
    let text = e.to_string();
    if text.contains("stream not found") || text.contains("10059") {
        StoreError::StreamNotFound(stream.to_owned())
    } else {
        api(e)
    }
}
