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

mod direct;

use crate::config::{NatsSettings, Storage, StreamSettings};
pub use direct::Range;

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
    /// A durable exists with a configuration the request contradicts.
    #[error("durable `{durable}` already exists and differs: {detail}")]
    ConsumerConflict {
        /// The durable name.
        durable: String,
        /// What differs.
        detail: String,
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
    /// A second connection for history reads, so bulk transfers never delay live reads,
    /// acknowledgements and publishes (and a slow-consumer cut of one leaves the other alone).
    bulk: async_nats::Client,
    /// How long a request (or a history read) may stay unanswered.
    request_timeout: Duration,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl Store {
    /// Connects to NATS (the main connection and the bulk-read connection), waiting up to
    /// `connect_timeout` for each.
    pub async fn connect(settings: &NatsSettings) -> Result<Store, StoreError> {
        let client = connect_one(settings, &settings.connection_name).await?;
        let bulk = connect_one(settings, &format!("{}-history", settings.connection_name)).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .build(client.clone());
        Ok(Store {
            client,
            js,
            bulk,
            request_timeout: settings.request_timeout,
        })
    }

    /// Whether the connection to NATS is up right now.
    pub fn is_connected(&self) -> bool {
        use async_nats::connection::State;
        self.client.connection_state() == State::Connected
            && self.bulk.connection_state() == State::Connected
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
    /// when empty). The reader pulls at most `batch` messages and about `max_bytes` ahead of
    /// its caller.
    pub async fn read(
        &self,
        stream: &str,
        start: StartAt,
        filter_subjects: &[String],
        batch: usize,
        max_bytes: usize,
    ) -> Result<Reader, StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        let mut filter_subjects = filter_subjects.to_vec();
        if start == StartAt::LastPerSubject && filter_subjects.is_empty() {
            // JetStream wants an explicit filter for last-per-subject delivery.
            filter_subjects = self.stream_state(stream).await?.subjects;
        }
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
            filter_subjects,
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
            .max_bytes_per_batch(max_bytes.max(1))
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
            consumer_sequence: 0,
        })
    }
}

/// Opens one connection named `name` to the servers of `settings.url` (comma-separated).
async fn connect_one(
    settings: &NatsSettings,
    name: &str,
) -> Result<async_nats::Client, StoreError> {
    let servers = settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| StoreError::Unavailable(format!("invalid NATS URL `{u}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout))
        .retry_on_initial_connect()
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        });
    let unreachable = || {
        StoreError::Unavailable(format!(
            "no connection to {} within {:?}",
            settings.url, settings.connect_timeout
        ))
    };
    let client = match tokio::time::timeout(
        settings.connect_timeout,
        async_nats::connect_with_options(servers, options),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
        Err(_) => return Err(unreachable()),
    };
    // `retry_on_initial_connect` returns before the handshake: wait until it completes.
    let flush = tokio::time::timeout(settings.connect_timeout, client.flush()).await;
    if !matches!(flush, Ok(Ok(()))) {
        return Err(unreachable());
    }
    Ok(client)
}

/// Where a new consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerStart {
    /// Only messages stored after creation.
    New,
    /// Every retained message.
    All,
    /// A reader-style start.
    At(StartAt),
}

/// What a consumer-backed subscription asks JetStream for.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// The durable name; `None` for an ephemeral consumer (removed when idle).
    pub durable: Option<String>,
    /// Subject filters (empty: all).
    pub subjects: Vec<String>,
    /// Where a newly created consumer starts.
    pub start: ConsumerStart,
    /// Redelivery deadline for unacknowledged deliveries.
    pub ack_wait: Duration,
    /// Bound on unacknowledged deliveries across all clients of the consumer.
    pub max_ack_pending: i64,
}

/// A durable's (or consumer's) progress, as the admin API reports it.
#[derive(Debug, Clone)]
pub struct ConsumerState {
    /// The stream.
    pub stream: String,
    /// The consumer's name (the durable name).
    pub name: String,
    /// Subject filters.
    pub subjects: Vec<String>,
    /// Stream sequence of the last delivery.
    pub delivered_sequence: u64,
    /// Every message up to this stream sequence has been acknowledged.
    pub ack_floor_sequence: u64,
    /// Matching messages not yet delivered.
    pub pending: u64,
    /// Delivered but unacknowledged.
    pub in_flight: u64,
    /// Pull requests waiting (clients attached and ready).
    pub waiting: u64,
    /// Creation time.
    pub created: DateTime<Utc>,
}

/// A JetStream pull consumer with explicit acknowledgements.
#[derive(Clone)]
pub struct Consumer {
    consumer: consumer::PullConsumer,
    client: async_nats::Client,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("name", &self.consumer.cached_info().name)
            .finish()
    }
}

/// One delivery from a [`Consumer`], with the handle that acknowledges it.
#[derive(Debug)]
pub struct Delivered {
    /// The message.
    pub raw: RawMessage,
    /// How many times JetStream has delivered it (1 on first delivery).
    pub delivery_count: u32,
    /// Acknowledges it.
    pub acker: Acker,
}

/// Acknowledges one delivery (publishes to its reply subject).
#[derive(Debug, Clone)]
pub struct Acker {
    client: async_nats::Client,
    reply: async_nats::Subject,
}

impl Acker {
    async fn send(&self, body: &'static [u8]) -> Result<(), StoreError> {
        self.client
            .publish(self.reply.clone(), Bytes::from_static(body))
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Acknowledges: never redelivered.
    pub async fn ack(&self) -> Result<(), StoreError> {
        self.send(b"+ACK").await
    }

    /// Asks for redelivery after `delay` (at once when zero).
    pub async fn nak(&self, delay: Duration) -> Result<(), StoreError> {
        let body = if delay.is_zero() {
            Bytes::from_static(b"-NAK")
        } else {
            Bytes::from(format!("-NAK {{\"delay\": {}}}", delay.as_nanos()))
        };
        self.client
            .publish(self.reply.clone(), body)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Gives up: never redelivered.
    pub async fn term(&self) -> Result<(), StoreError> {
        self.send(b"+TERM").await
    }
}

/// The deliveries of one pull request.
pub struct Pull {
    batch: consumer::pull::Batch,
    client: async_nats::Client,
}

impl fmt::Debug for Pull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pull").finish_non_exhaustive()
    }
}

impl Pull {
    /// The next delivery; `None` when the pull request is complete or expired.
    pub async fn next(&mut self) -> Option<Result<Delivered, StoreError>> {
        let msg = match self.batch.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(StoreError::Unavailable(e.to_string()))),
        };
        let (sequence, pending, published, delivered) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.pending, i.published, i.delivered),
            Err(e) => return Some(Err(StoreError::Api(e.to_string()))),
        };
        let Some(reply) = msg.message.reply.clone() else {
            return Some(Err(StoreError::Api(
                "a delivery without a reply subject".into(),
            )));
        };
        let msg = msg.message;
        Some(Ok(Delivered {
            raw: RawMessage {
                sequence,
                subject: msg.subject.to_string(),
                stored_at: published,
                pending,
                headers: msg.headers,
                payload: msg.payload,
            },
            delivery_count: u32::try_from(delivered).unwrap_or(u32::MAX),
            acker: Acker {
                client: self.client.clone(),
                reply,
            },
        }))
    }
}

impl Consumer {
    /// Asks for up to `max` deliveries, waiting at most `expires` for them.
    pub async fn pull(&self, max: usize, expires: Duration) -> Result<Pull, StoreError> {
        let batch = self
            .consumer
            .batch()
            .max_messages(max.max(1))
            .expires(expires)
            .messages()
            .await
            .map_err(api)?;
        Ok(Pull {
            batch,
            client: self.client.clone(),
        })
    }

    /// The consumer's current state.
    pub async fn state(&mut self) -> Result<ConsumerState, StoreError> {
        let info = self.consumer.info().await.map_err(api)?;
        Ok(consumer_state(info))
    }

    /// The consumer's state when it was opened.
    pub fn cached_state(&self) -> ConsumerState {
        consumer_state(self.consumer.cached_info())
    }
}

fn consumer_state(info: &consumer::Info) -> ConsumerState {
    let mut subjects = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        subjects.push(info.config.filter_subject.clone());
    }
    ConsumerState {
        stream: info.stream_name.clone(),
        name: info.name.clone(),
        subjects,
        delivered_sequence: info.delivered.stream_sequence,
        ack_floor_sequence: info.ack_floor.stream_sequence,
        pending: info.num_pending,
        in_flight: info.num_ack_pending as u64,
        waiting: info.num_waiting as u64,
        created: info.created,
    }
}

fn deliver_policy(start: ConsumerStart) -> consumer::DeliverPolicy {
    match start {
        ConsumerStart::New => consumer::DeliverPolicy::New,
        ConsumerStart::All => consumer::DeliverPolicy::All,
        ConsumerStart::At(StartAt::Sequence(s)) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        ConsumerStart::At(StartAt::Time(t)) => {
            consumer::DeliverPolicy::ByStartTime { start_time: t }
        }
        ConsumerStart::At(StartAt::LastPerSubject) => consumer::DeliverPolicy::LastPerSubject,
    }
}

impl Store {
    /// Opens the durable `spec.durable` (creating it from `spec` when it does not exist), or
    /// creates an ephemeral consumer. Returns the consumer and whether it was created now.
    pub async fn open_consumer(
        &self,
        stream: &str,
        spec: &ConsumerSpec,
    ) -> Result<(Consumer, bool), StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        if let Some(name) = &spec.durable {
            match handle.get_consumer::<consumer::pull::Config>(name).await {
                Ok(c) => {
                    let existing = consumer_state(c.cached_info());
                    let mut want = spec.subjects.clone();
                    let mut have = existing.subjects.clone();
                    if want.is_empty() {
                        // No filter means the whole stream, however the consumer spells it.
                        want = self.stream_state(stream).await?.subjects;
                        if have.is_empty() {
                            have.clone_from(&want);
                        }
                    }
                    want.sort();
                    have.sort();
                    if want != have {
                        return Err(StoreError::ConsumerConflict {
                            durable: name.clone(),
                            detail: format!(
                                "it filters subjects {have:?}, this request asks for {want:?}"
                            ),
                        });
                    }
                    return Ok((
                        Consumer {
                            consumer: c,
                            client: self.client.clone(),
                        },
                        false,
                    ));
                }
                Err(e) if e.to_string().contains("consumer not found") => {}
                Err(e) => return Err(not_found_or(stream, e)),
            }
        }
        let mut filter_subjects = spec.subjects.clone();
        if spec.start == ConsumerStart::At(StartAt::LastPerSubject) && filter_subjects.is_empty() {
            filter_subjects = self.stream_state(stream).await?.subjects;
        }
        let config = consumer::pull::Config {
            durable_name: spec.durable.clone(),
            name: spec.durable.clone(),
            deliver_policy: deliver_policy(spec.start),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: -1,
            max_ack_pending: spec.max_ack_pending,
            filter_subjects,
            inactive_threshold: if spec.durable.is_some() {
                Duration::ZERO
            } else {
                READER_INACTIVE_THRESHOLD
            },
            ..Default::default()
        };
        let c = handle
            .create_consumer(config)
            .await
            .map_err(|e| not_found_or(stream, e))?;
        Ok((
            Consumer {
                consumer: c,
                client: self.client.clone(),
            },
            true,
        ))
    }

    /// The durable consumers of `stream`.
    pub async fn durables(&self, stream: &str) -> Result<Vec<ConsumerState>, StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        let mut out = Vec::new();
        let mut consumers = handle.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| not_found_or(stream, e))?;
            if info.config.durable_name.is_some() {
                out.push(consumer_state(&info));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The state of the durable `name` on `stream`.
    pub async fn durable(&self, stream: &str, name: &str) -> Result<ConsumerState, StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        match handle.consumer_info(name).await {
            Ok(info) if info.config.durable_name.is_some() => Ok(consumer_state(&info)),
            Ok(_) => Err(consumer_not_found(stream, name)),
            Err(e) if e.to_string().contains("consumer not found") => {
                Err(consumer_not_found(stream, name))
            }
            Err(e) => Err(not_found_or(stream, e)),
        }
    }

    /// Deletes the durable `name`.
    pub async fn delete_durable(&self, stream: &str, name: &str) -> Result<(), StoreError> {
        self.durable(stream, name).await?;
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        handle.delete_consumer(name).await.map_err(api)?;
        Ok(())
    }

    /// Moves the durable `name` to `start`: JetStream cannot reposition a consumer, so it is
    /// re-created with the same configuration and the new start (its clients' next pulls
    /// continue from there; their unacknowledged deliveries are forgotten).
    pub async fn seek_durable(
        &self,
        stream: &str,
        name: &str,
        start: ConsumerStart,
    ) -> Result<ConsumerState, StoreError> {
        let handle = self.js.get_stream_no_info(stream).await.map_err(api)?;
        let info = match handle.consumer_info(name).await {
            Ok(info) if info.config.durable_name.is_some() => info,
            Ok(_) => return Err(consumer_not_found(stream, name)),
            Err(e) if e.to_string().contains("consumer not found") => {
                return Err(consumer_not_found(stream, name))
            }
            Err(e) => return Err(not_found_or(stream, e)),
        };
        let mut config: consumer::pull::Config = pull_config(&info.config);
        config.deliver_policy = deliver_policy(start);
        handle.delete_consumer(name).await.map_err(api)?;
        let mut c = handle.create_consumer(config).await.map_err(api)?;
        let info = c.info().await.map_err(api)?;
        Ok(consumer_state(info))
    }

    /// Publishes `encoded` on `subject` (for dead-lettering), awaiting the acknowledgement.
    pub async fn publish_copy(&self, subject: String, encoded: Encoded) -> Result<u64, StoreError> {
        let msg = jetstream::message::PublishMessage::build()
            .payload(encoded.payload)
            .headers(encoded.headers);
        let ack = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(publish_error)?;
        let ack = ack.await.map_err(publish_error)?;
        Ok(ack.sequence)
    }
}

fn pull_config(c: &consumer::Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: c.durable_name.clone(),
        name: c.name.clone(),
        description: c.description.clone(),
        deliver_policy: c.deliver_policy,
        ack_policy: c.ack_policy,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        filter_subject: c.filter_subject.clone(),
        filter_subjects: c.filter_subjects.clone(),
        max_ack_pending: c.max_ack_pending,
        inactive_threshold: c.inactive_threshold,
        ..Default::default()
    }
}

fn consumer_not_found(stream: &str, name: &str) -> StoreError {
    StoreError::ConsumerNotFound {
        stream: stream.to_owned(),
        durable: name.to_owned(),
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
    /// The consumer sequence of the last message received: each delivery's must be one more,
    /// or a message was lost on the way (such a consumer never redelivers).
    consumer_sequence: u64,
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

    /// The next message; `None` only if the underlying subscription ended. A message lost
    /// between the server and the gateway (a slow-consumer drop, a reconnect) ends the read
    /// with [`StoreError::Unavailable`] instead of passing over it: the caller re-opens from
    /// the last sequence it received.
    pub async fn next(&mut self) -> Option<Result<RawMessage, StoreError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(StoreError::Unavailable(e.to_string()))),
        };
        let info = match msg.info() {
            Ok(i) => i,
            Err(e) => return Some(Err(StoreError::Api(e.to_string()))),
        };
        if info.consumer_sequence != self.consumer_sequence + 1 {
            crate::telemetry::COUNTERS
                .reads_interrupted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Some(Err(StoreError::Unavailable(format!(
                "messages were lost on the way from the server (delivery {} after {})",
                info.consumer_sequence, self.consumer_sequence
            ))));
        }
        self.consumer_sequence = info.consumer_sequence;
        let (sequence, pending, stored_at) = (info.stream_sequence, info.pending, info.published);
        let msg = msg.message;
        Some(Ok(RawMessage {
            sequence,
            subject: msg.subject.to_string(),
            stored_at,
            pending,
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
            // The server says "wrong last sequence: N" (followed by its error codes).
            let text = error_chain(&e);
            let current = text
                .rsplit("wrong last sequence:")
                .next()
                .map(|rest| {
                    rest.trim_start()
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect::<String>()
                })
                .and_then(|digits| digits.parse().ok())
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

/// An error and its sources, as one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
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
