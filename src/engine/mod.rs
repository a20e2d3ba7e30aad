//! The subscription engine: turns an `Open` into a stream of deliveries.
//!
//! Two paths, chosen at open:
//!
//! - **Shared** (ephemeral subscriptions with AUTO acks — every `Watch` without a durable):
//!   served by the stream's [`hub`]: one shared JetStream read per stream, a byte-bounded ring
//!   of recent events, and per-subscriber cursors with catch-up reads for subscribers behind
//!   the ring (see [`subscription`]). The number of JetStream consumers does not grow with the
//!   number of live subscribers.
//! - **Consumer-backed** (durables, and ephemeral subscriptions with EXPLICIT acks): a
//!   JetStream pull consumer per durable (shared by its clients as competing consumers) or per
//!   explicit ephemeral subscription, so positions, acks and redelivery live in JetStream
//!   (see [`consumer`]).
//!
//! Both paths honour the same window ([`Window`]): a delivery takes a permit, which comes back
//! when the delivery is sent (AUTO) or acknowledged (EXPLICIT); `Credit` adds permits.
//!
//! The engine speaks domain types only: it receives an [`OpenRequest`] and hands back a
//! [`Subscription`] whose bounded channel yields [`Item`]s; the gRPC layer converts them.

mod catchup;
mod consumer;
mod hub;
mod subscription;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Error;
use crate::event::Event;
use crate::filter::Filter;
use crate::store::Store;

use hub::Hub;

/// Heap bytes an entry of the shared history costs beyond its content (allocator and
/// collection overhead), so that `fanout.history_bytes` bounds real memory. Measured: a
/// 64-byte event costs about 1.9 KiB of resident memory in the ring.
const ENTRY_OVERHEAD: usize = 1024;

/// Items queued beyond the window (bookmarks, snapshot end, the final error).
const CONTROL_SLACK: usize = 8;

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
    /// Approximate bytes held in memory (the message, the decoded event, the transport's
    /// encoding and overhead), for the history bound.
    pub size: usize,
    /// The transport's encoding of this event, made once on first delivery and shared by every
    /// subscriber it is delivered to. Opaque to the engine.
    pub wire: std::sync::OnceLock<bytes::Bytes>,
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
    /// Attribute filter (`None`: everything).
    pub filter: Option<Filter>,
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
    /// Redelivery deadline (EXPLICIT).
    pub ack_wait: Duration,
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

/// What a client says after `Open`.
#[derive(Debug, Clone)]
pub enum Control {
    /// Acknowledge these sequences.
    Ack(Vec<u64>),
    /// Redeliver these sequences after the delay.
    Nack(Vec<u64>, Duration),
    /// Give up on these sequences (dead-letter them with the reason).
    Term(Vec<u64>, String),
    /// Widen the window by this many deliveries.
    Credit(u32),
}

/// What a subscription delivers: its subject patterns and attribute filter, and the stream's
/// tombstone predicate (for snapshots).
#[derive(Debug, Clone, Default)]
pub(crate) struct Matcher {
    /// NATS subject patterns; empty matches every subject.
    pub(crate) subjects: Vec<String>,
    /// The attribute filter.
    pub(crate) filter: Option<Filter>,
    /// Marks deletion events, left out of snapshots.
    pub(crate) tombstone: Option<Filter>,
}

impl Matcher {
    /// Whether the subscription delivers `event` (subjects first: they are cheapest).
    pub(crate) fn matches(&self, event: &StoredEvent) -> bool {
        (self.subjects.is_empty()
            || self
                .subjects
                .iter()
                .any(|p| crate::wildcard::matches(p, &event.subject)))
            && self.filter.as_ref().is_none_or(|f| f.matches(&event.event))
    }

    /// Whether `event` is a tombstone (a deletion) of its stream.
    pub(crate) fn is_tombstone(&self, event: &StoredEvent) -> bool {
        self.tombstone
            .as_ref()
            .is_some_and(|f| f.matches(&event.event))
    }
}

/// A subscription's window: permits for deliveries not yet sent (AUTO) or not yet
/// acknowledged (EXPLICIT).
#[derive(Debug, Clone)]
pub struct Window {
    permits: Arc<Semaphore>,
    /// Whether a permit returns when the delivery is sent (AUTO) rather than acknowledged.
    release_on_send: bool,
}

impl Window {
    fn new(size: u32, mode: AckMode) -> Window {
        Window {
            permits: Arc::new(Semaphore::new(size as usize)),
            release_on_send: mode == AckMode::Auto,
        }
    }

    /// Takes one permit, waiting until one is free.
    async fn acquire(&self) {
        if let Ok(p) = self.permits.acquire().await {
            p.forget();
        }
    }

    /// Waits until at least one permit is free, without taking it.
    async fn wait_available(&self) {
        let _permit = self.permits.acquire().await;
    }

    /// Permits free now.
    fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Returns `n` permits.
    fn release(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Called by the transport once `item` has been handed to the client.
    pub fn sent(&self, item: &Item) {
        if self.release_on_send && matches!(item, Item::Delivery { .. }) {
            self.release(1);
        }
    }
}

/// An open subscription: its identity, its bounded stream of items and its control channel.
#[derive(Debug)]
pub struct Subscription {
    /// A unique id, for logs and metrics.
    pub id: String,
    /// The first sequence it may deliver.
    pub start_sequence: u64,
    /// The stream's last sequence when it opened.
    pub last_sequence: u64,
    /// Items; an `Err` ends the subscription.
    pub items: mpsc::Receiver<Result<Item, Error>>,
    /// Acks, nacks, terms and credit from the client.
    pub control: mpsc::Sender<Control>,
    /// The window; the transport reports sent items to it.
    pub window: Window,
    /// For subscriptions that acknowledge as sent through JetStream (durables in AUTO mode):
    /// the transport reports each sent delivery's sequence here. Its capacity is the window,
    /// so reporting never waits.
    pub sent: Option<mpsc::Sender<u64>>,
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
    /// True while NATS has been lost for longer than `nats.outage_grace`.
    outage: watch::Receiver<bool>,
    /// Each stream's compiled tombstone predicate.
    tombstones: HashMap<String, Filter>,
    /// Permits for history reads in flight (`fanout.catchup_reads`), for every stream.
    history_reads: Arc<Semaphore>,
    /// Permits for snapshot reads (`fanout.snapshot_reads`), for every stream.
    snapshot_reads: Arc<Semaphore>,
    /// Permits for history-read consumers (`fanout.catchup_consumers`), for every stream.
    history_consumers: Arc<Semaphore>,
}

/// What every subscription task shares with the engine.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) shutdown: CancellationToken,
    pub(crate) outage: watch::Receiver<bool>,
    /// Permits for snapshot reads: a snapshot holds one while its reader lives.
    pub(crate) snapshot_reads: Arc<Semaphore>,
    /// Largest answer of one read (`fanout.read_bytes`).
    pub(crate) read_bytes: usize,
}

impl Engine {
    /// Creates the engine; everything it spawns stops when `shutdown` is cancelled.
    pub fn new(store: Store, settings: Settings, shutdown: CancellationToken) -> Engine {
        let outage =
            spawn_outage_monitor(store.clone(), settings.nats.outage_grace, shutdown.clone());
        let tombstones = settings
            .streams
            .iter()
            .filter_map(|s| Some((s.name.clone(), s.tombstone_filter().ok()??)))
            .collect();
        Engine {
            inner: Arc::new(Inner {
                store,
                history_reads: Arc::new(Semaphore::new(settings.fanout.catchup_reads)),
                snapshot_reads: Arc::new(Semaphore::new(settings.fanout.snapshot_reads)),
                history_consumers: Arc::new(Semaphore::new(settings.fanout.catchup_consumers)),
                settings,
                hubs: Mutex::new(HashMap::new()),
                shutdown,
                outage,
                tombstones,
            }),
        }
    }

    fn shared(&self) -> Shared {
        Shared {
            store: self.inner.store.clone(),
            shutdown: self.inner.shutdown.clone(),
            outage: self.inner.outage.clone(),
            snapshot_reads: self.inner.snapshot_reads.clone(),
            read_bytes: self.inner.settings.fanout.read_bytes,
        }
    }

    /// Opens a subscription. Errors are returned before anything is streamed.
    pub async fn open(&self, req: OpenRequest) -> Result<Subscription, Error> {
        let inner = &self.inner;
        let Some(stream_settings) = inner.settings.stream(&req.stream) else {
            return Err(Error::StreamNotFound(req.stream));
        };
        if *inner.outage.borrow() {
            return Err(Error::Unavailable {
                reason: "the gateway has lost its NATS connection".into(),
            });
        }
        let (tx, rx) = mpsc::channel(req.max_in_flight as usize + CONTROL_SLACK);
        let (control_tx, control_rx) = mpsc::channel(64);
        let window = Window::new(req.max_in_flight, req.ack_mode);
        let id = uuid::Uuid::new_v4().to_string();
        let matcher = Matcher {
            subjects: req.subjects.clone(),
            filter: req.filter.clone(),
            tombstone: inner.tombstones.get(&req.stream).cloned(),
        };
        crate::telemetry::COUNTERS
            .subscriptions_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if req.durable.is_some() || req.ack_mode == AckMode::Explicit {
            let (sent_tx, sent_rx) = if req.ack_mode == AckMode::Auto {
                let (tx, rx) = mpsc::channel(req.max_in_flight as usize + CONTROL_SLACK);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let opened = consumer::open(consumer::Params {
                sent: sent_rx,
                id: id.clone(),
                req,
                matcher,
                settings: &inner.settings,
                dead_letter_subject: stream_settings.dead_letter_subject.clone(),
                shared: self.shared(),
                tx,
                control: control_rx,
                window: window.clone(),
            })
            .await?;
            return Ok(Subscription {
                id,
                start_sequence: opened.start_sequence,
                last_sequence: opened.last_sequence,
                items: rx,
                control: control_tx,
                window,
                sent: sent_tx,
            });
        }
        let state = inner.store.stream_state(&req.stream).await?;
        let mut snapshot = false;
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
                    snapshot = true;
                    state.first_sequence
                }
            },
            Start::Sequence(s) => s,
            Start::Time(t) => {
                self.resolve_time(&req.stream, t, state.last_sequence)
                    .await?
            }
            Start::Snapshot => {
                snapshot = true;
                state.first_sequence.max(1)
            }
            Start::Resume => {
                return Err(Error::invalid(
                    "open.start.resume",
                    "resume needs a durable name",
                ))
            }
        };
        let hub = self.hub(&req.stream).await?;
        subscription::spawn(subscription::Params {
            id: id.clone(),
            hub,
            shared: self.shared(),
            matcher,
            cursor,
            snapshot: snapshot.then_some(state.last_sequence),
            heartbeat: req.heartbeat,
            batch: inner.settings.fanout.batch,
            tx,
            control: control_rx,
            window: window.clone(),
        });
        Ok(Subscription {
            id,
            start_sequence: cursor,
            last_sequence: state.last_sequence,
            items: rx,
            control: control_tx,
            window,
            sent: None,
        })
    }

    /// The first sequence stored at or after `t` (or `last + 1` when there is none).
    async fn resolve_time(&self, stream: &str, t: DateTime<Utc>, last: u64) -> Result<u64, Error> {
        let first = self.inner.store.first_sequence_at(stream, t).await?;
        Ok(first.unwrap_or(last + 1))
    }

    /// The hub of `stream`, started on first use at the stream's current end.
    async fn hub(&self, stream: &str) -> Result<Arc<Hub>, Error> {
        let mut hubs = self.inner.hubs.lock().await;
        if let Some(h) = hubs.get(stream) {
            return Ok(h.clone());
        }
        let state = self.inner.store.stream_state(stream).await?;
        let fanout = &self.inner.settings.fanout;
        let hub = Hub::start(
            stream.to_owned(),
            state.last_sequence + 1,
            fanout.history_bytes,
            catchup::Limits {
                reads: self.inner.history_reads.clone(),
                batch: fanout.batch,
                read_bytes: fanout.read_bytes,
                cache_bytes: fanout.catchup_cache_bytes,
                consumers: self.inner.history_consumers.clone(),
                timeout: self.inner.settings.nats.request_timeout,
            },
            self.inner.store.clone(),
            self.inner.shutdown.clone(),
        );
        hubs.insert(stream.to_owned(), hub.clone());
        Ok(hub)
    }

    /// Per stream with a shared reader: live subscribers, history bytes and catch-up cache
    /// bytes, for metrics.
    pub async fn hub_stats(&self) -> Vec<(String, usize, usize, usize)> {
        let hubs = self.inner.hubs.lock().await;
        hubs.values()
            .map(|h| {
                (
                    h.stream.clone(),
                    h.subscribers.load(std::sync::atomic::Ordering::Relaxed),
                    h.ring.read().bytes(),
                    h.catchup.cached_bytes(),
                )
            })
            .collect()
    }
}

/// Watches the NATS connection: the returned flag turns true once it has been down for longer
/// than `grace`, and false again when it returns.
fn spawn_outage_monitor(
    store: Store,
    grace: Duration,
    shutdown: CancellationToken,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut down_since: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
                () = shutdown.cancelled() => return,
            }
            if store.is_connected() {
                down_since = None;
                tx.send_if_modified(|v| std::mem::replace(v, false));
            } else {
                let since = *down_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= grace && tx.send_if_modified(|v| !std::mem::replace(v, true))
                {
                    {
                        tracing::warn!(?grace, "NATS lost for longer than the outage grace period; ending subscriptions");
                    }
                }
            }
        }
    });
    rx
}

/// Why a subscription task stopped.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The client went away or the gateway is shutting down: nothing more to say.
    Quiet,
    /// End the stream with this error.
    Fail(Error),
}

impl From<Interrupt> for Stop {
    fn from(i: Interrupt) -> Stop {
        match i {
            Interrupt::Lost => lost(),
            Interrupt::Quiet => Stop::Quiet,
        }
    }
}

/// The end of a subscription whose NATS connection stayed away too long.
pub(crate) fn lost() -> Stop {
    Stop::Fail(Error::Unavailable {
        reason: "the NATS connection was lost for longer than the outage grace period".into(),
    })
}

/// Why a wait was cut short.
#[derive(Debug)]
pub(crate) enum Interrupt {
    /// NATS has been lost for longer than the outage grace period.
    Lost,
    /// The gateway is shutting down or the client went away.
    Quiet,
}

impl Shared {
    /// Sleeps `backoff` before a retry, unless NATS is lost for good, the gateway shuts down
    /// or the client (whose channel is `tx`) goes away.
    pub(crate) async fn pause<T>(
        &self,
        backoff: Duration,
        tx: &mpsc::Sender<T>,
    ) -> Result<(), Interrupt> {
        let mut outage_rx = self.outage.clone();
        tokio::select! {
            () = tokio::time::sleep(backoff) => Ok(()),
            () = outage(&mut outage_rx) => Err(Interrupt::Lost),
            () = self.shutdown.cancelled() => Err(Interrupt::Quiet),
            () = tx.closed() => Err(Interrupt::Quiet),
        }
    }
}

/// Waits until the outage flag is set.
pub(crate) async fn outage(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|down| *down).await.is_err() {
        std::future::pending::<()>().await;
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
    let raw_bytes = raw.payload.len() + header_bytes + raw.subject.len();
    match crate::codec::decode(raw.headers.as_ref(), raw.payload) {
        Ok(event) => Some(Arc::new(StoredEvent {
            sequence: raw.sequence,
            subject: raw.subject,
            stored_at: raw.stored_at,
            // What the entry really holds: the message as received (its header map lives on
            // until the entry is dropped), the decoded event, the transport's encoding once it
            // is made (about the message's size), and the allocations around them (map nodes,
            // strings, the Arc).
            size: 2 * raw_bytes + event.approximate_size() + ENTRY_OVERHEAD,
            wire: std::sync::OnceLock::new(),
            event,
        })),
        Err(e) => {
            tracing::warn!(sequence = raw.sequence, subject = %raw.subject, error = %e,
                "skipping a stored message that is not a CloudEvent");
            None
        }
    }
}
