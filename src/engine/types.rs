//! The engine's domain types: what a subscription is asked for and what it yields.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::event::Event;
use crate::filter::Filter;

/// Heap bytes an entry of the shared history costs beyond its content (allocator and
/// collection overhead), so that `fanout.history_bytes` bounds real memory. Measured: a
/// 64-byte event costs about 1.9 KiB of resident memory in the ring.
const ENTRY_OVERHEAD: usize = 1024;

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
    /// The HTTP API's JSON of this delivery (Server-Sent Events and NDJSON), made once on
    /// first delivery over HTTP and shared likewise. Opaque to the engine.
    pub json: std::sync::OnceLock<bytes::Bytes>,
    /// The transport's encoding of the block of consecutive events of the shared history this
    /// event came in (one read of the shared reader), and its place in it ([`Segment`]): set
    /// by the shared reader's [`BlockEncoder`].
    pub segment: std::sync::OnceLock<(Arc<Segment>, usize)>,
}

/// A transport's encoding of consecutive events of the shared history, made once for every
/// subscriber: in a fan-out every unfiltered subscriber sends the same runs of events, so the
/// bytes of a run can go to every one of them without being copied. Opaque to the engine.
#[derive(Debug)]
pub struct Segment {
    /// The events' responses, end to end.
    pub bytes: bytes::Bytes,
    /// Where each event's response starts in `bytes`, and (last) where the last one ends.
    pub offsets: Box<[usize]>,
}

impl Segment {
    /// The bytes of the responses of the events at `from..to` of this segment.
    pub fn responses(&self, from: usize, to: usize) -> bytes::Bytes {
        self.bytes.slice(self.offsets[from]..self.offsets[to])
    }
}

/// The transport's hook for the shared history: the shared reader calls it with the events of
/// each read (up to `fanout.batch` consecutive messages, two events or more) before they enter
/// the ring, while the stream has subscribers, and the hook may record a [`Segment`] on them.
pub type BlockEncoder = fn(&[Arc<StoredEvent>]);

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
    /// Who opens it (`None` when authentication is off).
    pub caller: Option<Arc<crate::auth::Identity>>,
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

/// What a subscription task hands its transport in one channel message: one item, or a run
/// of first deliveries (one channel operation and one wake-up for many events).
#[derive(Debug)]
pub enum Batch {
    /// One item.
    One(Item),
    /// First deliveries (`delivery_count` 1) of these events, in sequence order, all read by
    /// one path (for the metrics); each holds one window permit until the transport has sent
    /// it.
    Deliveries(Vec<Arc<StoredEvent>>, crate::telemetry::Path),
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

/// Decodes a stored message once. Messages that are not CloudEvents, or break the rule of
/// [`crate::codec::check_stored`], are skipped: counted, logged, never delivered.
pub fn decode_stored(raw: crate::store::RawMessage) -> Option<Arc<StoredEvent>> {
    let decoded = crate::codec::decode(raw.headers.as_ref(), raw.payload).and_then(|event| {
        crate::codec::check_stored(raw.headers.as_ref(), &event)?;
        Ok(event)
    });
    match decoded {
        Ok(event) => Some(Arc::new(StoredEvent {
            sequence: raw.sequence,
            subject: raw.subject,
            stored_at: raw.stored_at,
            // What the entry really holds, counted generously: the message as NATS delivered
            // it (its header map is freed once decoded, its payload may live on in the
            // event), the decoded event, the transport's encoding once it is made (about the
            // message's size, whether its own or its part of its read's shared segment), and
            // the allocations around them (map nodes, strings, the Arc).
            size: 2 * raw.size + event.approximate_size() + ENTRY_OVERHEAD,
            wire: std::sync::OnceLock::new(),
            json: std::sync::OnceLock::new(),
            segment: std::sync::OnceLock::new(),
            event,
        })),
        Err(e) => {
            skipped_malformed(raw.sequence, &raw.subject, &e);
            None
        }
    }
}

/// Counts a skipped message and logs it, at most one line per 10 s (a producer writing
/// garbage must not flood the log): the line gives the latest message and how many were
/// skipped since the last line.
fn skipped_malformed(sequence: u64, subject: &str, error: &crate::codec::CodecError) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST_LOG: AtomicU64 = AtomicU64::new(0);
    static SINCE_LOG: AtomicU64 = AtomicU64::new(0);
    crate::telemetry::METRICS.malformed_skipped.inc();
    let skipped = SINCE_LOG.fetch_add(1, Ordering::Relaxed) + 1;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_LOG.load(Ordering::Relaxed);
    if now >= last + 10
        && LAST_LOG
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        SINCE_LOG.fetch_sub(skipped, Ordering::Relaxed);
        tracing::warn!(sequence, subject, %error, skipped,
            "skipping stored messages that are not valid CloudEvents \
             (jetwatch_malformed_messages_skipped_total counts them)");
    }
}
