//! Every metric the gateway exposes, with the official Prometheus client (`prometheus-client`,
//! OpenMetrics text on `/metrics`).
//!
//! One process-wide registry ([`METRICS`]): the hot paths (publish, delivery) reach it without
//! plumbing, and cache the label-set handles they use (a counter handle is an `Arc`ed atomic),
//! so counting a delivery run is one atomic add, not a map lookup. Labels are bounded: stream
//! names, durable names (up to `telemetry.max_durables`), outcomes, paths, gRPC methods and
//! codes; never an event, a resource or an ephemeral subscription.

use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A stream.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// The stream's name.
    pub stream: String,
}

impl StreamLabels {
    /// Labels of `stream`.
    pub fn of(stream: &str) -> StreamLabels {
        StreamLabels {
            stream: stream.to_owned(),
        }
    }
}

/// How a publish ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Stored as a new event.
    stored,
    /// Acknowledged as a duplicate within the duplicate window (nothing new stored).
    duplicate,
    /// Refused as invalid (not a valid CloudEvent, too large, malformed request).
    invalid,
    /// Refused: the resource's last sequence was not the expected one.
    rejected_sequence,
    /// Refused: not authenticated, not allowed, or over a rate limit.
    denied,
    /// Failed: JetStream unavailable, or another error.
    error,
}

/// A publish outcome on a stream.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PublishLabels {
    /// The stream (empty when the request named none that exists).
    pub stream: String,
    /// How it ended.
    pub outcome: Outcome,
}

/// Which read served a delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Path {
    /// The stream's shared reader and history ring (live watchers).
    shared,
    /// A catch-up read of older history.
    catchup,
    /// A snapshot read (the last event of every resource).
    snapshot,
    /// A JetStream consumer of its own (durables, explicit acknowledgements).
    consumer,
}

impl Path {
    /// Every path, in the order of [`Path::index`].
    pub const ALL: [Path; 4] = [Path::shared, Path::catchup, Path::snapshot, Path::consumer];

    /// A dense index for per-path arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Deliveries of a stream by path.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    /// The stream.
    pub stream: String,
    /// The read that served them.
    pub path: Path,
}

/// A client's settlement of a delivery.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Settlement {
    /// Acknowledged (explicitly, or as sent in AUTO mode).
    ack,
    /// Negatively acknowledged: redeliver.
    nack,
    /// Terminated: never redeliver.
    term,
}

/// Settlements of a stream by kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SettlementLabels {
    /// The stream.
    pub stream: String,
    /// The kind.
    pub kind: Settlement,
}

/// Why an event went to the dead-letter subject.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum DeadReason {
    /// A client terminated it.
    terminated,
    /// It was delivered `max_deliver` times without an acknowledgement.
    max_deliveries,
}

/// Dead letters of a stream by reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// The stream.
    pub stream: String,
    /// Why.
    pub reason: DeadReason,
}

/// What kind of subscription.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Kind {
    /// Ephemeral, acknowledged as sent (live watchers on the shared reader).
    ephemeral,
    /// Ephemeral with explicit acknowledgements (its own consumer).
    explicit,
    /// On a durable (position kept in JetStream).
    durable,
}

/// Subscriptions of a stream by kind.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The stream.
    pub stream: String,
    /// The kind.
    pub kind: Kind,
}

/// How subscriptions ended.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndLabels {
    /// The stream.
    pub stream: String,
    /// `client_gone` (the client cancelled or disconnected), `shutdown`, or the gRPC code the
    /// stream ended with (e.g. `unavailable`, `unauthenticated`, `out_of_range`).
    pub reason: String,
}

/// A durable subscription.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurableLabels {
    /// The stream.
    pub stream: String,
    /// The durable's name.
    pub durable: String,
}

/// A gRPC method and the code it answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// The gRPC status code name, e.g. `OK`, `INVALID_ARGUMENT`.
    pub code: String,
}

/// An HTTP API route and the status it answered.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// `publish`, `watch`, or `other` (unknown paths and methods).
    pub route: &'static str,
    /// The HTTP status code, e.g. `200`, `400`.
    pub code: u16,
}

/// A gRPC method.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `/package.Service/Method`.
    pub method: String,
}

/// A push subscription and an attempt's status class.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// The push subscription.
    pub subscription: String,
    /// `2xx`, `4xx`, `5xx`, `timeout` or `error`.
    pub class: String,
}

/// A push subscription.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriptionLabels {
    /// The push subscription.
    pub subscription: String,
}

/// Latency buckets: 100 µs to ~6.5 s, doubling.
fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// Every metric of the gateway.
#[derive(Debug)]
pub struct Metrics {
    /// Publishes by stream and outcome.
    pub publish_events: Family<PublishLabels, Counter>,
    /// Bytes of published events (as encoded for NATS) by stream and outcome.
    pub publish_bytes: Family<PublishLabels, Counter>,
    /// Time from a publish's receipt to JetStream's acknowledgement, by stream.
    pub publish_duration: Family<StreamLabels, Histogram, fn() -> Histogram>,
    /// Deliveries sent by stream and path.
    pub delivered_events: Family<PathLabels, Counter>,
    /// Bytes of deliveries sent (protobuf, as on the wire) by stream and path.
    pub delivered_bytes: Family<PathLabels, Counter>,
    /// Time from an event's storing to its delivery being handed to the transport, by stream
    /// and path (`shared` is the live fan-out; replays show their age): one observation per
    /// run of deliveries (its oldest event).
    pub delivery_latency: Family<PathLabels, Histogram, fn() -> Histogram>,
    /// Settlements by stream and kind.
    pub settlements: Family<SettlementLabels, Counter>,
    /// Redeliveries (delivery count above 1) by stream.
    pub redeliveries: Family<StreamLabels, Counter>,
    /// Events copied to the dead-letter subject by stream and reason.
    pub dead_letters: Family<DeadLetterLabels, Counter>,
    /// Open subscriptions by stream and kind.
    pub subscriptions: Family<KindLabels, Gauge>,
    /// Subscriptions opened by stream and kind.
    pub subscriptions_opened: Family<KindLabels, Counter>,
    /// Subscriptions ended by stream and reason.
    pub subscriptions_ended: Family<EndLabels, Counter>,
    /// Live subscribers served by a stream's shared reader.
    pub live_subscribers: Family<StreamLabels, Gauge>,
    /// Subscribers reading history older than the ring (catching up), by stream.
    pub subscribers_behind: Family<StreamLabels, Gauge>,
    /// History bytes held in a stream's ring.
    pub history_bytes: Family<StreamLabels, Gauge>,
    /// Events held in a stream's ring.
    pub history_events: Family<StreamLabels, Gauge>,
    /// The oldest sequence a stream's ring holds.
    pub history_oldest_sequence: Family<StreamLabels, Gauge>,
    /// Bytes of history blocks cached for subscribers catching up, by stream.
    pub catchup_cache_bytes: Family<StreamLabels, Gauge>,
    /// History reads for subscribers catching up running now, by stream.
    pub catchup_reads: Family<StreamLabels, Gauge>,
    /// Durables: matching events not yet delivered.
    pub durable_pending: Family<DurableLabels, Gauge>,
    /// Durables: delivered, not yet acknowledged.
    pub durable_ack_pending: Family<DurableLabels, Gauge>,
    /// Durables: events delivered more than once and not yet acknowledged.
    pub durable_redelivered: Family<DurableLabels, Gauge>,
    /// Durables: age in seconds of the oldest event not yet acknowledged (0 when none): the
    /// consumer lag to alert on.
    pub durable_oldest_unacked_age: Family<DurableLabels, Gauge<f64, AtomicU64>>,
    /// 1 while the NATS connection is up.
    pub nats_connected: Gauge,
    /// Times the NATS connection was re-established.
    pub nats_reconnects: Counter,
    /// Round trip to the NATS server, measured at each scrape (seconds).
    pub nats_rtt: Gauge<f64, AtomicU64>,
    /// History reads (batched direct gets) for subscribers behind the shared history.
    pub history_reads: Counter,
    /// Reads that lost messages on the way from NATS and were re-issued.
    pub reads_interrupted: Counter,
    /// Stored messages skipped because they are not valid CloudEvents.
    pub malformed_skipped: Counter,
    /// gRPC calls by method and status code (streams counted when they end).
    pub grpc_requests: Family<GrpcLabels, Counter>,
    /// HTTP API requests by route and status (a watch counts when it opens or is refused).
    pub http_requests: Family<HttpLabels, Counter>,
    /// gRPC call duration by method (streams: their whole life).
    pub grpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
    /// Slow-subscriber warnings suppressed by the rate limit.
    pub warnings_suppressed: Counter,
    /// Push delivery attempts by subscription and status class.
    pub push_attempts: Family<PushLabels, Counter>,
    /// Push attempt duration by subscription.
    pub push_duration: Family<SubscriptionLabels, Histogram, fn() -> Histogram>,
    /// Push events given up on (dead-lettered) by subscription.
    pub push_dead_letters: Family<SubscriptionLabels, Counter>,
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            publish_events: Family::default(),
            publish_bytes: Family::default(),
            publish_duration: Family::new_with_constructor(latency),
            delivered_events: Family::default(),
            delivered_bytes: Family::default(),
            delivery_latency: Family::new_with_constructor(latency),
            settlements: Family::default(),
            redeliveries: Family::default(),
            dead_letters: Family::default(),
            subscriptions: Family::default(),
            subscriptions_opened: Family::default(),
            subscriptions_ended: Family::default(),
            live_subscribers: Family::default(),
            subscribers_behind: Family::default(),
            history_bytes: Family::default(),
            history_events: Family::default(),
            history_oldest_sequence: Family::default(),
            catchup_cache_bytes: Family::default(),
            catchup_reads: Family::default(),
            durable_pending: Family::default(),
            durable_ack_pending: Family::default(),
            durable_redelivered: Family::default(),
            durable_oldest_unacked_age: Family::default(),
            nats_connected: Gauge::default(),
            nats_reconnects: Counter::default(),
            nats_rtt: Gauge::default(),
            history_reads: Counter::default(),
            reads_interrupted: Counter::default(),
            malformed_skipped: Counter::default(),
            grpc_requests: Family::default(),
            http_requests: Family::default(),
            grpc_duration: Family::new_with_constructor(latency),
            warnings_suppressed: Counter::default(),
            push_attempts: Family::default(),
            push_duration: Family::new_with_constructor(latency),
            push_dead_letters: Family::default(),
        }
    }

    /// The registry that renders these metrics (the families are shared handles).
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("jetwatch");
        r.register(
            "publish_events",
            "Publishes by stream and outcome",
            self.publish_events.clone(),
        );
        r.register_with_unit(
            "publish",
            "Bytes of published events (encoded for NATS) by stream and outcome",
            Unit::Bytes,
            self.publish_bytes.clone(),
        );
        r.register_with_unit(
            "publish_duration",
            "Time from a publish's receipt to JetStream's acknowledgement",
            Unit::Seconds,
            self.publish_duration.clone(),
        );
        r.register(
            "delivered_events",
            "Deliveries sent by stream and path (shared, catchup, snapshot, consumer)",
            self.delivered_events.clone(),
        );
        r.register_with_unit(
            "delivered",
            "Bytes of deliveries sent (protobuf) by stream and path",
            Unit::Bytes,
            self.delivered_bytes.clone(),
        );
        r.register_with_unit(
            "delivery_latency",
            "Time from an event's storing to its delivery by path (one observation per run of deliveries)",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
        r.register(
            "settlements",
            "Deliveries settled by clients, by kind (ack, nack, term)",
            self.settlements.clone(),
        );
        r.register(
            "redeliveries",
            "Deliveries of an event more than once",
            self.redeliveries.clone(),
        );
        r.register(
            "dead_letters",
            "Events copied to the dead-letter subject, by reason",
            self.dead_letters.clone(),
        );
        r.register(
            "subscriptions",
            "Open subscriptions by stream and kind (ephemeral, explicit, durable)",
            self.subscriptions.clone(),
        );
        r.register(
            "subscriptions_opened",
            "Subscriptions opened by stream and kind",
            self.subscriptions_opened.clone(),
        );
        r.register(
            "subscriptions_ended",
            "Subscriptions ended by stream and reason (client_gone, shutdown, or the gRPC code)",
            self.subscriptions_ended.clone(),
        );
        r.register(
            "live_subscribers",
            "Live subscribers served by a stream's shared reader",
            self.live_subscribers.clone(),
        );
        r.register(
            "subscribers_behind",
            "Subscribers reading history older than the ring (catching up)",
            self.subscribers_behind.clone(),
        );
        r.register_with_unit(
            "history",
            "Bytes of recent events held in a stream's history ring",
            Unit::Bytes,
            self.history_bytes.clone(),
        );
        r.register(
            "history_events",
            "Events held in a stream's history ring",
            self.history_events.clone(),
        );
        r.register(
            "history_oldest_sequence",
            "The oldest sequence a stream's history ring holds",
            self.history_oldest_sequence.clone(),
        );
        r.register_with_unit(
            "catchup_cache",
            "Bytes of history blocks cached for subscribers catching up",
            Unit::Bytes,
            self.catchup_cache_bytes.clone(),
        );
        r.register(
            "catchup_reads",
            "History reads for subscribers catching up running now",
            self.catchup_reads.clone(),
        );
        r.register(
            "durable_pending_events",
            "Durables: matching events not yet delivered",
            self.durable_pending.clone(),
        );
        r.register(
            "durable_ack_pending_events",
            "Durables: events delivered and not yet acknowledged",
            self.durable_ack_pending.clone(),
        );
        r.register(
            "durable_redelivered_events",
            "Durables: events delivered more than once and not yet acknowledged",
            self.durable_redelivered.clone(),
        );
        r.register_with_unit(
            "durable_oldest_unacked_age",
            "Durables: age of the oldest event not yet acknowledged (0 when none)",
            Unit::Seconds,
            self.durable_oldest_unacked_age.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the NATS connection is up",
            self.nats_connected.clone(),
        );
        r.register(
            "nats_reconnects",
            "Times the NATS connection was re-established",
            self.nats_reconnects.clone(),
        );
        r.register_with_unit(
            "nats_rtt",
            "Round trip to the NATS server, measured at each scrape",
            Unit::Seconds,
            self.nats_rtt.clone(),
        );
        r.register(
            "history_reads",
            "History reads (batched direct gets) for subscribers behind the shared history",
            self.history_reads.clone(),
        );
        r.register(
            "reads_interrupted",
            "Reads that lost messages on the way from NATS and were re-issued",
            self.reads_interrupted.clone(),
        );
        r.register(
            "malformed_messages_skipped",
            "Stored messages skipped because they are not valid CloudEvents",
            self.malformed_skipped.clone(),
        );
        r.register(
            "grpc_requests",
            "gRPC calls by method and status code (a stream counts when it ends)",
            self.grpc_requests.clone(),
        );
        r.register(
            "http_requests",
            "HTTP API requests by route and status code (a watch counts when it opens)",
            self.http_requests.clone(),
        );
        r.register_with_unit(
            "grpc_duration",
            "gRPC call duration by method (a stream's whole life)",
            Unit::Seconds,
            self.grpc_duration.clone(),
        );
        r.register(
            "push_attempts",
            "Push delivery attempts by subscription and status class (2xx, 4xx, 5xx, timeout, error)",
            self.push_attempts.clone(),
        );
        r.register_with_unit(
            "push_duration",
            "Push delivery attempt duration by subscription",
            Unit::Seconds,
            self.push_duration.clone(),
        );
        r.register(
            "push_dead_letters",
            "Push events given up on (dead-lettered) by subscription",
            self.push_dead_letters.clone(),
        );
        r.register(
            "warnings_suppressed",
            "Slow-subscriber warnings left out by the log rate limit",
            self.warnings_suppressed.clone(),
        );
        r
    }
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Whether the hot paths count (`telemetry.metrics`).
static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the per-delivery and per-call counting on or off (`telemetry.metrics`).
pub fn set_enabled(on: bool) {
    ENABLED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether metrics are kept.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// A subscription's delivery counters, looked up once when it opens (none when metrics are
/// off).
#[derive(Debug, Clone)]
pub struct DeliveryCounters(Option<Box<Handles>>);

#[derive(Debug, Clone)]
struct Handles {
    events: [Counter; 4],
    bytes: [Counter; 4],
    latency: [Histogram; 4],
    redeliveries: Counter,
}

impl DeliveryCounters {
    /// The counters of `stream`.
    pub fn of(stream: &str) -> DeliveryCounters {
        if !enabled() {
            return DeliveryCounters(None);
        }
        let m = &*METRICS;
        let labels = |path| PathLabels {
            stream: stream.to_owned(),
            path,
        };
        DeliveryCounters(Some(Box::new(Handles {
            events: Path::ALL.map(|p| m.delivered_events.get_or_create(&labels(p)).clone()),
            bytes: Path::ALL.map(|p| m.delivered_bytes.get_or_create(&labels(p)).clone()),
            latency: Path::ALL.map(|p| m.delivery_latency.get_or_create(&labels(p)).clone()),
            redeliveries: m
                .redeliveries
                .get_or_create(&StreamLabels::of(stream))
                .clone(),
        })))
    }

    /// Counts `events` deliveries of `bytes` sent by `path`; `oldest` is when the oldest of
    /// them was stored.
    pub fn sent(
        &self,
        path: Path,
        events: u64,
        bytes: u64,
        oldest: Option<chrono::DateTime<chrono::Utc>>,
    ) {
        let Some(h) = &self.0 else { return };
        h.events[path.index()].inc_by(events);
        h.bytes[path.index()].inc_by(bytes);
        if let Some(at) = oldest {
            let age = (chrono::Utc::now() - at).num_microseconds().unwrap_or(0);
            h.latency[path.index()].observe(age.max(0) as f64 / 1e6);
        }
    }

    /// Counts a redelivery.
    pub fn redelivered(&self) {
        if let Some(h) = &self.0 {
            h.redeliveries.inc();
        }
    }

    /// Whether it counts (metrics are on): callers skip work only counting needs.
    pub fn counting(&self) -> bool {
        self.0.is_some()
    }
}

/// A subscription's settlement and dead-letter counters, looked up once when it opens.
#[derive(Debug, Clone)]
pub struct SettlementCounters {
    settled: [Counter; 3],
    dead: [Counter; 2],
}

impl SettlementCounters {
    /// The counters of `stream`.
    pub fn of(stream: &str) -> SettlementCounters {
        let m = &*METRICS;
        let settled = |kind| {
            m.settlements
                .get_or_create(&SettlementLabels {
                    stream: stream.to_owned(),
                    kind,
                })
                .clone()
        };
        let dead = |reason| {
            m.dead_letters
                .get_or_create(&DeadLetterLabels {
                    stream: stream.to_owned(),
                    reason,
                })
                .clone()
        };
        SettlementCounters {
            settled: [
                settled(Settlement::ack),
                settled(Settlement::nack),
                settled(Settlement::term),
            ],
            dead: [
                dead(DeadReason::terminated),
                dead(DeadReason::max_deliveries),
            ],
        }
    }

    /// Counts a settlement.
    pub fn settled(&self, kind: Settlement) {
        self.settled[kind as usize].inc();
    }

    /// Counts an event given up on (copied to the dead-letter subject when there is one).
    pub fn dead_letter(&self, reason: DeadReason) {
        self.dead[reason as usize].inc();
    }
}
