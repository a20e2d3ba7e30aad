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
mod lifecycle;
mod snapshot;
mod start;
mod subscription;
mod types;
mod window;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch, Mutex, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::error::Error;
use crate::filter::Filter;
use crate::store::Store;
use crate::telemetry::Gauges;

use hub::Hub;
pub(crate) use lifecycle::{lost, outage, Shared, Stop};
pub(crate) use start::{consumer_start, resolve as resolve_start};
pub use types::{
    decode_stored, AckMode, Batch, BlockEncoder, Control, Item, OnExpired, OpenRequest, Segment,
    Start, StoredEvent,
};
pub(crate) use window::Matcher;
pub use window::Window;

/// Items queued beyond the window (bookmarks, snapshot end, the final error).
const CONTROL_SLACK: usize = 8;

/// An open subscription: its identity, its bounded stream of items and its control channel.
#[derive(Debug)]
pub struct Subscription {
    /// A unique id, for logs and metrics.
    pub id: String,
    /// The first sequence it may deliver.
    pub start_sequence: u64,
    /// The stream's last sequence when it opened.
    pub last_sequence: u64,
    /// Items, alone or in runs; an `Err` ends the subscription.
    pub items: mpsc::Receiver<Result<Batch, Box<Error>>>,
    /// Acks, nacks, terms and credit from the client.
    pub control: mpsc::Sender<Box<Control>>,
    /// The window; the transport reports sent items to it.
    pub window: Window,
    /// For subscriptions that acknowledge as sent through JetStream (durables in AUTO mode):
    /// the transport reports each sent delivery's sequence here. Its capacity is the widest
    /// window `Credit` can open, so reporting never waits.
    pub sent: Option<mpsc::Sender<u64>>,
    /// Counts it against its identity's subscription limit until dropped.
    pub slot: crate::auth::SubscriptionSlot,
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
    /// Where the engine publishes its gauges.
    gauges: Gauges,
    /// Identities' grants.
    auth: Arc<crate::auth::Auth>,
    /// The transport's encoder of complete history blocks, if it shares them.
    blocks: Option<BlockEncoder>,
}

impl Engine {
    /// The gateway's identities and grants.
    pub fn auth(&self) -> &Arc<crate::auth::Auth> {
        &self.inner.auth
    }

    /// Creates the engine, which keeps `gauges` current; everything it spawns stops when
    /// `shutdown` is cancelled. `blocks` is the transport's encoder of blocks of the shared
    /// history ([`BlockEncoder`]), if it shares them.
    pub fn new(
        store: Store,
        settings: Settings,
        shutdown: CancellationToken,
        gauges: Gauges,
        auth: Arc<crate::auth::Auth>,
        blocks: Option<BlockEncoder>,
    ) -> Engine {
        let outage = lifecycle::spawn_outage_monitor(
            store.connection(),
            settings.nats.outage_grace,
            shutdown.clone(),
        );
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
                gauges,
                outage,
                tombstones,
                auth,
                blocks,
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
            snapshot_batch: self.inner.settings.fanout.snapshot_batch,
        }
    }

    /// Opens a subscription. Errors are returned before anything is streamed.
    pub async fn open(&self, mut req: OpenRequest) -> Result<Subscription, Error> {
        let inner = &self.inner;
        // The caller reads only what it is granted: its subjects are cut down to the grant
        // here, so every path below (shared reads, catch-up, snapshots, consumers) reads
        // within it, and JetStream filters by it where it can.
        let caller = req.caller.as_deref();
        let scope = inner
            .auth
            .scope(caller, crate::config::Action::Subscribe, &req.stream);
        let Some(subjects) = crate::auth::restrict(&req.subjects, &scope) else {
            crate::auth::audit(caller, "subscribe", &req.stream, "denied");
            return Err(Error::denied(
                crate::config::Action::Subscribe,
                &req.stream,
                req.subjects.first().map(String::as_str),
            ));
        };
        req.subjects = subjects;
        let slot = inner.auth.admit_subscription(caller)?;
        let Some(stream_settings) = inner.settings.stream(&req.stream) else {
            return Err(Error::StreamNotFound(req.stream));
        };
        // A pattern the stream can never hold would be a silent, empty subscription.
        for (i, pattern) in req.subjects.iter().enumerate() {
            let possible = stream_settings
                .subjects
                .iter()
                .any(|s| crate::wildcard::intersect(pattern, s).is_some());
            if !possible {
                return Err(Error::invalid(
                    format!("open.subjects[{i}]"),
                    format!(
                        "`{pattern}` matches none of stream `{}`'s subjects ({})",
                        req.stream,
                        stream_settings.subjects.join(", ")
                    ),
                ));
            }
        }
        if *inner.outage.borrow() {
            return Err(Error::Unavailable {
                reason: "the gateway has lost its NATS connection".into(),
            });
        }
        let (tx, rx) = mpsc::channel(req.max_in_flight as usize + CONTROL_SLACK);
        let (control_tx, control_rx) = mpsc::channel(64);
        let limit = inner.settings.subscribe.max_in_flight_limit;
        let window = Window::new(req.max_in_flight, limit, req.ack_mode);
        let id = uuid::Uuid::new_v4().to_string();
        let matcher = Matcher {
            subjects: req.subjects.clone(),
            filter: req.filter.clone(),
            tombstone: inner.tombstones.get(&req.stream).cloned(),
        };
        if req.durable.is_some() || req.ack_mode == AckMode::Explicit {
            let (sent_tx, sent_rx) = if req.ack_mode == AckMode::Auto {
                // Holds every delivery the widest window can have in flight, so reporting a
                // sent delivery never waits and is never dropped.
                let (tx, rx) = mpsc::channel(limit as usize + CONTROL_SLACK);
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            // Durables belong to the identity that created them; only it, or an admin of the
            // stream, may attach to one.
            let owner = match req.caller.as_deref() {
                Some(c) if inner.auth.enabled() => Some(consumer::Owner {
                    id: c.id.clone(),
                    admin: inner.auth.allows_any(
                        Some(c),
                        crate::config::Action::Admin,
                        &req.stream,
                    ),
                }),
                _ => None,
            };
            let opened = consumer::open(consumer::Params {
                owner,
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
                slot,
            });
        }
        let state = inner.store.stream_state(&req.stream).await?;
        let start = match req.start.unwrap_or(Start::New) {
            Start::Resume => {
                return Err(Error::invalid(
                    "open.start.resume",
                    "resume needs a durable name",
                ))
            }
            requested => start::resolve(
                requested,
                req.on_expired,
                state.first_sequence,
                "open.start",
            )?,
        };
        let snapshot = start == Start::Snapshot;
        let cursor = match start {
            Start::New | Start::Resume => state.last_sequence + 1,
            Start::Earliest | Start::Snapshot => state.first_sequence.max(1),
            Start::Sequence(s) => s,
            Start::Time(t) => {
                self.resolve_time(&req.stream, t, state.last_sequence)
                    .await?
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
            slot,
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
            hub::Ring::new(state.last_sequence + 1, fanout.history_bytes),
            catchup::Limits {
                reads: self.inner.history_reads.clone(),
                batch: fanout.batch,
                read_bytes: fanout.read_bytes,
                cache_bytes: fanout.catchup_cache_bytes,
                consumers: self.inner.history_consumers.clone(),
                timeout: self.inner.settings.nats.request_timeout,
            },
            self.inner.gauges.stream(stream),
            self.inner.store.clone(),
            self.inner.blocks,
            self.inner.shutdown.clone(),
        );
        hubs.insert(stream.to_owned(), hub.clone());
        Ok(hub)
    }
}
