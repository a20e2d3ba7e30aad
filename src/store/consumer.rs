//! Consumers with explicit acknowledgements: durables (kept in JetStream, shared by their
//! clients) and ephemeral EXPLICIT subscriptions, their deliveries and acknowledgements, and
//! the durables' administration.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::consumer;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::error::{durable_error, store_error, Cause, Classify};
use super::{
    deliver_policy, unpack, Drops, Link, RawMessage, StartAt, Store, StoreError, INACTIVE_THRESHOLD,
};

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
    /// The identity creating the consumer, kept in its metadata (`jetwatch.owner`). When set,
    /// an existing durable opens only for its owner (or `admin`), checked before anything
    /// else about it is compared or revealed.
    pub owner: Option<String>,
    /// The opener may attach to any identity's durable.
    pub admin: bool,
}

/// The consumer metadata key holding the identity that created a durable.
const OWNER_KEY: &str = "jetwatch.owner";

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
    /// Delivered more than once and still unacknowledged.
    pub redelivered: u64,
    /// Pull requests waiting (clients attached and ready).
    pub waiting: u64,
    /// Creation time.
    pub created: DateTime<Utc>,
    /// The identity that created it, when authentication was on.
    pub owner: Option<String>,
}

/// A JetStream pull consumer with explicit acknowledgements.
#[derive(Clone)]
pub struct Consumer {
    consumer: consumer::PullConsumer,
    client: async_nats::Client,
    /// Follows the connection's drops, for its pulls.
    drops: Drops,
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
    async fn send(&self, body: Bytes, what: &str) -> Result<(), StoreError> {
        self.client
            .publish(self.reply.clone(), body)
            .await
            .map_err(|e| StoreError::Unavailable {
                context: what.to_owned(),
                source: Some(Box::new(e)),
            })
    }

    /// Acknowledges: never redelivered.
    pub async fn ack(&self) -> Result<(), StoreError> {
        self.send(Bytes::from_static(b"+ACK"), "acknowledging a delivery")
            .await
    }

    /// Asks for redelivery after `delay` (at once when zero).
    pub async fn nak(&self, delay: Duration) -> Result<(), StoreError> {
        let body = if delay.is_zero() {
            Bytes::from_static(b"-NAK")
        } else {
            Bytes::from(format!("-NAK {{\"delay\": {}}}", delay.as_nanos()))
        };
        self.send(body, "asking for a redelivery").await
    }

    /// Says the delivery is still being worked on: its ack deadline starts again.
    pub async fn in_progress(&self) -> Result<(), StoreError> {
        self.send(
            Bytes::from_static(b"+WPI"),
            "extending a delivery's deadline",
        )
        .await
    }

    /// Gives up: never redelivered.
    pub async fn term(&self) -> Result<(), StoreError> {
        self.send(Bytes::from_static(b"+TERM"), "terminating a delivery")
            .await
    }
}

/// The deliveries of one pull request.
pub struct Pull {
    batch: consumer::pull::Batch,
    client: async_nats::Client,
    /// The connection's drops since the pull was sent.
    drops: Drops,
}

impl fmt::Debug for Pull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pull").finish_non_exhaustive()
    }
}

impl Pull {
    /// The next delivery; `None` when the pull request is complete or expired. A drop of the
    /// connection ends the pull with an error: the request or its deliveries may be lost
    /// (JetStream delivers lost ones again after their ack wait), and async-nats would leave
    /// the pull waiting for its expiry.
    pub async fn next(&mut self) -> Option<Result<Delivered, StoreError>> {
        let next = tokio::select! {
            biased;
            next = self.batch.next() => next?,
            () = self.drops.dropped() => {
                return Some(Err(StoreError::unavailable(
                    "the connection to NATS dropped during a pull",
                )));
            }
        };
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(StoreError::Unavailable {
                    context: "pulling deliveries".into(),
                    source: Some(e),
                }))
            }
        };
        let Some(reply) = msg.message.reply.clone() else {
            return Some(Err(StoreError::unavailable(
                "a delivery without a reply subject",
            )));
        };
        let (raw, _, delivered) = match unpack(msg) {
            Ok(unpacked) => unpacked,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(Delivered {
            raw,
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
        let drops = self.drops.renewed();
        let batch = self
            .consumer
            .batch()
            .max_messages(max.max(1))
            .expires(expires)
            .messages()
            .await
            .map_err(|e| store_error(self.stream(), "pulling deliveries", e))?;
        Ok(Pull {
            batch,
            client: self.client.clone(),
            drops,
        })
    }

    /// The consumer's current state.
    pub async fn state(&mut self) -> Result<ConsumerState, StoreError> {
        let (stream, name) = (self.stream().to_owned(), self.name().to_owned());
        let info = self
            .consumer
            .info()
            .await
            .map_err(|e| durable_error(&stream, &name, "reading the consumer's state", e))?;
        Ok(consumer_state(info))
    }

    /// The consumer's state when it was opened.
    pub fn cached_state(&self) -> ConsumerState {
        consumer_state(self.consumer.cached_info())
    }

    fn stream(&self) -> &str {
        &self.consumer.cached_info().stream_name
    }

    fn name(&self) -> &str {
        &self.consumer.cached_info().name
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
        redelivered: info.num_redelivered as u64,
        waiting: info.num_waiting as u64,
        created: info.created,
        owner: info.config.metadata.get(OWNER_KEY).cloned(),
    }
}

impl ConsumerStart {
    fn deliver_policy(self) -> consumer::DeliverPolicy {
        match self {
            ConsumerStart::New => consumer::DeliverPolicy::New,
            ConsumerStart::All => consumer::DeliverPolicy::All,
            ConsumerStart::At(start) => deliver_policy(start),
        }
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
        let handle = self.stream_handle(stream).await?;
        if let Some(name) = &spec.durable {
            let context = format!("opening durable `{name}`");
            match handle.consumer_info(name).await {
                Ok(_) => {
                    let c = handle
                        .get_consumer::<consumer::pull::Config>(name)
                        .await
                        .map_err(|e| StoreError::Unavailable {
                            context: context.clone(),
                            source: Some(e),
                        })?;
                    let existing = consumer_state(c.cached_info());
                    if let Some(owner) = &spec.owner {
                        if !spec.admin && existing.owner.as_deref() != Some(owner.as_str()) {
                            return Err(StoreError::NotOwner {
                                stream: stream.to_owned(),
                                durable: name.clone(),
                            });
                        }
                    }
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
                            drops: self.drops(Link::Main),
                        },
                        false,
                    ));
                }
                Err(e) => match durable_error(stream, name, &context, e) {
                    StoreError::ConsumerNotFound { .. } => {}
                    other => return Err(other),
                },
            }
        }
        let mut filter_subjects = spec.subjects.clone();
        if spec.start == ConsumerStart::At(StartAt::LastPerSubject) && filter_subjects.is_empty() {
            filter_subjects = self.stream_state(stream).await?.subjects;
        }
        let config = consumer::pull::Config {
            durable_name: spec.durable.clone(),
            name: spec.durable.clone(),
            deliver_policy: spec.start.deliver_policy(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_deliver: -1,
            max_ack_pending: spec.max_ack_pending,
            filter_subjects,
            inactive_threshold: if spec.durable.is_some() {
                Duration::ZERO
            } else {
                INACTIVE_THRESHOLD
            },
            metadata: spec
                .owner
                .iter()
                .map(|o| (OWNER_KEY.to_owned(), o.clone()))
                .collect(),
            ..Default::default()
        };
        let c = handle
            .create_consumer(config)
            .await
            .map_err(|e| store_error(stream, "creating a consumer", e))?;
        Ok((
            Consumer {
                consumer: c,
                client: self.client.clone(),
                drops: self.drops(Link::Main),
            },
            true,
        ))
    }

    /// The durable consumers of `stream`.
    pub async fn durables(&self, stream: &str) -> Result<Vec<ConsumerState>, StoreError> {
        let handle = self.stream_handle(stream).await?;
        let mut out = Vec::new();
        let mut consumers = handle.consumers();
        while let Some(info) = consumers.next().await {
            let info = info.map_err(|e| store_error(stream, "listing durables", e))?;
            if info.config.durable_name.is_some() {
                out.push(consumer_state(&info));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// When the oldest event `durable` has not acknowledged was stored: the first message
    /// after its ack floor on its subject filter (on the whole stream when it has several
    /// filters, which may make the age larger than it is). `None` when everything is
    /// acknowledged.
    pub async fn oldest_unacked(
        &self,
        durable: &ConsumerState,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        if durable.pending == 0 && durable.in_flight == 0 {
            return Ok(None);
        }
        let context = "reading a durable's oldest unacknowledged event";
        let subject = match durable.subjects.as_slice() {
            [one] => one.as_str(),
            _ => ">",
        };
        let handle = self
            .js
            .get_stream_no_info(&durable.stream)
            .await
            .map_err(|e| store_error(&durable.stream, context, e))?;
        match handle
            .get_first_raw_message_by_subject(subject, durable.ack_floor_sequence + 1)
            .await
        {
            Ok(m) => Ok(Some(m.time.with_timezone(&Utc))),
            Err(e) if e.classify() == Cause::NoMessage => Ok(None),
            Err(e) => Err(store_error(&durable.stream, context, e)),
        }
    }

    /// Changes the in-flight bound and ack deadline of the durable `name` (what a push
    /// subscription's update may change without losing its position).
    pub async fn update_durable_limits(
        &self,
        stream: &str,
        name: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<(), StoreError> {
        let info = self.durable_info(stream, name).await?;
        use consumer::FromConsumer;
        let mut config =
            consumer::pull::Config::try_from_consumer_config(info.config).map_err(|e| {
                StoreError::Unavailable {
                    context: "reading a durable's configuration".into(),
                    source: Some(e),
                }
            })?;
        config.ack_wait = ack_wait;
        config.max_ack_pending = max_ack_pending;
        self.stream_handle(stream)
            .await?
            .update_consumer(config)
            .await
            .map_err(|e| StoreError::Unavailable {
                context: format!("updating durable `{name}`"),
                source: Some(Box::new(e)),
            })?;
        Ok(())
    }

    /// The state of the durable `name` on `stream`.
    pub async fn durable(&self, stream: &str, name: &str) -> Result<ConsumerState, StoreError> {
        self.durable_info(stream, name)
            .await
            .map(|info| consumer_state(&info))
    }

    /// The JetStream information of the durable `name`; a consumer that is not durable is not
    /// found.
    async fn durable_info(&self, stream: &str, name: &str) -> Result<consumer::Info, StoreError> {
        let handle = self.stream_handle(stream).await?;
        match handle.consumer_info(name).await {
            Ok(info) if info.config.durable_name.is_some() => Ok(info),
            Ok(_) => Err(StoreError::ConsumerNotFound {
                stream: stream.to_owned(),
                durable: name.to_owned(),
            }),
            Err(e) => Err(durable_error(stream, name, "reading a durable", e)),
        }
    }

    /// A handle on `stream` (no request is made).
    pub(super) async fn stream_handle(
        &self,
        stream: &str,
    ) -> Result<async_nats::jetstream::stream::Stream<()>, StoreError> {
        self.js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| store_error(stream, "naming the stream", e))
    }

    /// Deletes the durable `name`.
    pub async fn delete_durable(&self, stream: &str, name: &str) -> Result<(), StoreError> {
        self.durable_info(stream, name).await?;
        let handle = self.stream_handle(stream).await?;
        handle
            .delete_consumer(name)
            .await
            .map_err(|e| durable_error(stream, name, "deleting a durable", e))?;
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
        let info = self.durable_info(stream, name).await?;
        let handle = self.stream_handle(stream).await?;
        let context = format!("seeking durable `{name}`");
        let mut config: consumer::pull::Config = pull_config(&info.config);
        config.deliver_policy = start.deliver_policy();
        handle
            .delete_consumer(name)
            .await
            .map_err(|e| durable_error(stream, name, &context, e))?;
        let mut c = handle
            .create_consumer(config)
            .await
            .map_err(|e| store_error(stream, &context, e))?;
        let info = c
            .info()
            .await
            .map_err(|e| durable_error(stream, name, &context, e))?;
        Ok(consumer_state(info))
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
