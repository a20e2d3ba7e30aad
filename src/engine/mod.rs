//! The subscription engine: turns an `Open` into a stream of deliveries.
//!
//! Ephemeral subscriptions are served by the stream's [`hub`]: one shared JetStream read per
//! stream, a byte-bounded ring of recent events, and per-subscriber cursors with catch-up reads
//! for subscribers behind the ring (see [`subscription`]). The number of JetStream consumers
//! therefore does not grow with the number of live subscribers.
//!
//! The engine speaks domain types only: it receives an [`OpenRequest`] and hands back a
//! [`Subscription`] whose bounded channel yields [`Item`]s; the gRPC layer converts them.

mod hub;
mod subscription;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Error;
use crate::event::Event;
use crate::store::{StartAt, Store};

use hub::Hub;

/// An event as stored in a stream, decoded once and shared by every subscriber.
#[derive(Debug)]
pub struct StoredEvent {
    /// Stream sequence.
    pub sequence: u64,
    /// The NATS subject it is stored on.
    pub subject: String,
    /// When JetStream stored it.
    pub stored_at: DateTime<Utc>,
    /// The decoded CloudEvent.
    pub event: Event,
    /// Approximate bytes held in memory (headers plus payload), for the history bound.
    pub size: usize,
}

/// Where a subscription starts (DESIGN §3 `StartPosition`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events published from now on.
    New,
    /// Every retained event.
    Earliest,
    /// From this sequence, inclusive.
    Sequence(u64),
    /// From the first event stored at or after this time.
    Time(DateTime<Utc>),
    /// The last event of every matching subject, then `SnapshotEnd`, then live.
    Snapshot,
    /// A durable's stored position.
    Resume,
}

/// What to do when the start is older than the retained history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnExpired {
    /// Fail with `HistoryExpired`.
    #[default]
    Fail,
    /// Start at the first retained event.
    FromEarliest,
    /// Start with a snapshot.
    FromSnapshot,
}

/// How deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckMode {
    /// Acknowledged as sent.
    Auto,
    /// The client acknowledges each sequence.
    Explicit,
}

/// A validated request to open a subscription.
#[derive(Debug, Clone)]
pub struct OpenRequest {
    /// The stream.
    pub stream: String,
    /// NATS subject patterns (empty: all).
    pub subjects: Vec<String>,
    /// Where to start (`None`: `New`, or `Resume` for an existing durable).
    pub start: Option<Start>,
    /// Durable name, if any.
    pub durable: Option<String>,
    /// Acknowledgement mode.
    pub ack_mode: AckMode,
    /// The window, in deliveries.
    pub max_in_flight: u32,
    /// Bookmark interval (`None`: no bookmarks).
    pub heartbeat: Option<Duration>,
    /// Recovery when history expired.
    pub on_expired: OnExpired,
}

/// What a subscription yields, in order.
#[derive(Debug, Clone)]
pub enum Item {
    /// One event.
    Delivery {
        /// The event, shared with other subscribers.
        event: Arc<StoredEvent>,
        /// 1 on first delivery.
        delivery_count: u32,
    },
    /// Every matching event up to `sequence` has been delivered.
    Bookmark {
        /// The sequence.
        sequence: u64,
        /// Events stored after it not yet examined.
        pending: u64,
    },
    /// The snapshot is complete as of `sequence`.
    SnapshotEnd {
        /// The sequence.
        sequence: u64,
    },
}

/// An open subscription: its identity and its bounded stream of items.
#[derive(Debug)]
pub struct Subscription {
    /// A unique id, for logs and metrics.
    pub id: String,
    /// The first sequence it may deliver.
    pub start_sequence: u64,
    /// The stream's last sequence when it opened.
    pub last_sequence: u64,
    /// Items; an `Err` ends the subscription. Capacity is the window.
    pub items: mpsc::Receiver<Result<Item, Error>>,
}

/// The subscription engine of one gateway.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// JetStream access.
    store: Store,
    /// Settings (streams, fan-out bounds, defaults).
    settings: Settings,
    /// One hub per stream, created on first use.
    hubs: Mutex<HashMap<String, Arc<Hub>>>,
    /// Cancelled at shutdown: stops hubs and subscriptions.
    shutdown: CancellationToken,
}

impl Engine {
    /// Creates the engine; everything it spawns stops when `shutdown` is cancelled.
    pub fn new(store: Store, settings: Settings, shutdown: CancellationToken) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                settings,
                hubs: Mutex::new(HashMap::new()),
                shutdown,
            }),
        }
    }

    /// Opens a subscription. Errors are returned before anything is streamed.
    pub async fn open(&self, req: OpenRequest) -> Result<Subscription, Error> {
        let inner = &self.inner;
        if inner.settings.stream(&req.stream).is_none() {
            return Err(Error::StreamNotFound(req.stream));
        }
        if req.durable.is_some() {
            return Err(Error::Unimplemented("durable subscriptions".into()));
        }
        if req.ack_mode == AckMode::Explicit {
            return Err(Error::Unimplemented("EXPLICIT acknowledgements".into()));
        }
        let state = inner.store.stream_state(&req.stream).await?;
        let cursor = match req.start.unwrap_or(Start::New) {
            Start::New => state.last_sequence + 1,
            Start::Earliest => state.first_sequence.max(1),
            Start::Sequence(0) => {
                return Err(Error::invalid(
                    "open.start.sequence",
                    "stream sequences start at 1",
                ))
            }
            Start::Sequence(s) if s < state.first_sequence => match req.on_expired {
                OnExpired::Fail => {
                    return Err(Error::HistoryExpired {
                        requested: s,
                        first_sequence: state.first_sequence,
                    })
                }
                OnExpired::FromEarliest => state.first_sequence,
                OnExpired::FromSnapshot => {
                    return Err(Error::Unimplemented("snapshot start".into()))
                }
            },
            Start::Sequence(s) => s,
            Start::Time(t) => {
                self.resolve_time(&req.stream, t, state.last_sequence)
                    .await?
            }
            Start::Snapshot => return Err(Error::Unimplemented("snapshot start".into())),
            Start::Resume => {
                return Err(Error::invalid(
                    "open.start.resume",
                    "resume needs a durable name",
                ))
            }
        };
        let hub = self.hub(&req.stream).await?;
        let (tx, rx) = mpsc::channel(req.max_in_flight.max(1) as usize);
        let id = uuid::Uuid::new_v4().to_string();
        subscription::spawn(subscription::Params {
            id: id.clone(),
            hub,
            store: inner.store.clone(),
            subjects: req.subjects,
            cursor,
            heartbeat: req.heartbeat,
            batch: inner.settings.fanout.batch,
            tx,
            shutdown: inner.shutdown.clone(),
        });
        Ok(Subscription {
            id,
            start_sequence: cursor,
            last_sequence: state.last_sequence,
            items: rx,
        })
    }

    /// The first sequence stored at or after `t` (or `last + 1` when there is none).
    async fn resolve_time(&self, stream: &str, t: DateTime<Utc>, last: u64) -> Result<u64, Error> {
        let mut reader = self
            .inner
            .store
            .read(stream, StartAt::Time(t), &[], 1)
            .await?;
        if reader.initial_pending() == 0 {
            return Ok(last + 1);
        }
        match reader.next().await {
            Some(Ok(raw)) => Ok(raw.sequence),
            Some(Err(e)) => Err(e.into()),
            None => Ok(last + 1),
        }
    }

    /// The hub of `stream`, started on first use at the stream's current end.
    async fn hub(&self, stream: &str) -> Result<Arc<Hub>, Error> {
        let mut hubs = self.inner.hubs.lock().await;
        if let Some(h) = hubs.get(stream) {
            return Ok(h.clone());
        }
        let state = self.inner.store.stream_state(stream).await?;
        let hub = Hub::start(
            stream.to_owned(),
            state.last_sequence + 1,
            self.inner.settings.fanout.history_bytes,
            self.inner.settings.fanout.batch,
            self.inner.store.clone(),
            self.inner.shutdown.clone(),
        );
        hubs.insert(stream.to_owned(), hub.clone());
        Ok(hub)
    }

    /// Live subscribers per stream, for metrics.
    pub async fn subscriber_counts(&self) -> Vec<(String, usize, usize)> {
        let hubs = self.inner.hubs.lock().await;
        hubs.values()
            .map(|h| {
                (
                    h.stream.clone(),
                    h.subscribers.load(std::sync::atomic::Ordering::Relaxed),
                    h.ring.read().bytes(),
                )
            })
            .collect()
    }
}

/// Decodes a stored message once; messages that are not CloudEvents are skipped (and logged).
pub(crate) fn decode_stored(raw: crate::store::RawMessage) -> Option<Arc<StoredEvent>> {
    let header_bytes: usize = raw
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    AsRef::<str>::as_ref(k).len()
                        + v.iter().map(|x| x.as_str().len()).sum::<usize>()
                })
                .sum()
        })
        .unwrap_or(0);
    let size = raw.payload.len() + header_bytes + raw.subject.len() + 64;
    match crate::codec::decode(raw.headers.as_ref(), raw.payload) {
        Ok(event) => Some(Arc::new(StoredEvent {
            sequence: raw.sequence,
            subject: raw.subject,
            stored_at: raw.stored_at,
            event,
            size,
        })),
        Err(e) => {
            tracing::warn!(sequence = raw.sequence, subject = %raw.subject, error = %e,
                "skipping a stored message that is not a CloudEvent");
            None
        }
    }
}
