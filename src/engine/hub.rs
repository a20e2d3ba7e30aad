//! The shared reader of one stream and its in-memory history (the "hub").
//!
//! One task per stream reads every new message from JetStream once, decodes it once and appends
//! it to a ring of recent events bounded by bytes. Subscribers never get events pushed to them:
//! each one pulls from the ring at its own pace through a cursor (the next stream sequence it
//! wants), so a slow subscriber can never block the reader or other subscribers. A subscriber
//! whose cursor falls before the ring's start catches up with its own JetStream read and then
//! comes back to the ring; the cursor makes that hand-off gap- and duplicate-free.
//!
//! The events of each read go to the transport's [`BlockEncoder`] before they enter the ring
//! (see `append`), so subscribers that send the same runs send the same bytes.
//!
//! The ring's coverage is `[start, next)`: every message the stream holds with a sequence in
//! that range is in the ring (messages JetStream deleted are simply absent). `start` grows when
//! old events are evicted, `next` when the reader appends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use parking_lot::RwLock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::catchup::{Catchup, Limits};
use super::{BlockEncoder, StoredEvent};
use crate::store::{StartAt, Store};
use crate::telemetry::StreamGauges;

/// The bounded history of recent events.
#[derive(Debug)]
pub(crate) struct Ring {
    /// Events in sequence order.
    events: VecDeque<Arc<StoredEvent>>,
    /// First sequence covered.
    start: u64,
    /// One past the last sequence covered.
    next: u64,
    /// Sum of the events' sizes.
    bytes: usize,
    /// Eviction threshold for `bytes`.
    max_bytes: usize,
}

/// What a subscriber found in the ring.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RingRead {
    /// The cursor is before the ring's start: catch up from JetStream.
    Behind {
        /// The ring's start at the time of the read.
        start: u64,
    },
    /// Events at or after the cursor were copied out (possibly none); `next` is the ring's end.
    Events {
        /// One past the last covered sequence.
        next: u64,
    },
}

impl Ring {
    /// An empty ring that starts covering at `next`.
    pub(crate) fn new(next: u64, max_bytes: usize) -> Ring {
        Ring {
            events: VecDeque::new(),
            start: next,
            next,
            bytes: 0,
            max_bytes,
        }
    }

    /// Appends an event (sequences must increase) and evicts the oldest beyond the byte bound;
    /// the newest event is always kept.
    pub(crate) fn push(&mut self, event: Arc<StoredEvent>) {
        self.next = event.sequence + 1;
        self.bytes += event.size;
        self.events.push_back(event);
        while self.bytes > self.max_bytes && self.events.len() > 1 {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= old.size;
                self.start = old.sequence + 1;
            }
        }
    }

    /// Records that every sequence below `next` has been read (a message that was skipped).
    pub(crate) fn advance(&mut self, next: u64) {
        if next > self.next {
            self.next = next;
            if self.events.is_empty() {
                self.start = self.start.max(next);
            }
        }
    }

    /// Copies up to `max` events with sequence ≥ `cursor` into `out`.
    pub(crate) fn read_from(
        &self,
        cursor: u64,
        max: usize,
        out: &mut Vec<Arc<StoredEvent>>,
    ) -> RingRead {
        if cursor < self.start {
            return RingRead::Behind { start: self.start };
        }
        let first = self.events.partition_point(|e| e.sequence < cursor);
        out.extend(self.events.range(first..).take(max).cloned());
        RingRead::Events { next: self.next }
    }

    /// First covered sequence.
    pub(crate) fn start(&self) -> u64 {
        self.start
    }

    /// One past the last covered sequence.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events held.
    pub(crate) fn len(&self) -> usize {
        self.events.len()
    }

    /// The oldest sequence held (0 when empty).
    pub(crate) fn oldest(&self) -> u64 {
        self.events.front().map_or(0, |e| e.sequence)
    }
}

/// One stream's shared reader and history.
#[derive(Debug)]
pub(crate) struct Hub {
    /// The stream.
    pub(crate) stream: String,
    /// Recent events.
    pub(crate) ring: RwLock<Ring>,
    /// Announces the ring's new end after each appended batch.
    tail: watch::Sender<u64>,
    /// The stream's gauges, kept current.
    pub(crate) gauges: Arc<StreamGauges>,
    /// History reads for subscribers behind the ring.
    pub(crate) catchup: Arc<Catchup>,
}

impl Hub {
    /// Creates the hub for `stream` with the (empty) history `ring` and spawns its reader,
    /// which runs until `shutdown`.
    pub(crate) fn start(
        stream: String,
        ring: Ring,
        limits: Limits,
        gauges: Arc<StreamGauges>,
        store: Store,
        encode: Option<BlockEncoder>,
        shutdown: CancellationToken,
    ) -> Arc<Hub> {
        let (tail, _) = watch::channel(ring.next());
        let (batch, read_bytes) = (limits.batch, limits.read_bytes);
        let hub = Arc::new(Hub {
            catchup: Catchup::new(stream.clone(), store.clone(), limits, gauges.clone()),
            stream,
            ring: RwLock::new(ring),
            tail,
            gauges,
        });
        let span = tracing::info_span!("shared_reader", stream = %hub.stream);
        let reader = Reader {
            hub: hub.clone(),
            store,
            batch,
            read_bytes,
            encode,
        };
        tokio::spawn(reader.run(shutdown).instrument(span));
        hub
    }

    /// A receiver that changes whenever the ring's end moves.
    pub(crate) fn watch_tail(&self) -> watch::Receiver<u64> {
        self.tail.subscribe()
    }

    /// Counts a subscriber in; the guard counts it out.
    pub(crate) fn enter(self: &Arc<Self>) -> HubGuard {
        self.gauges.subscribers.inc();
        HubGuard(self.clone())
    }
}

/// Keeps a subscriber counted on a hub.
#[derive(Debug)]
pub(crate) struct HubGuard(Arc<Hub>);

impl Drop for HubGuard {
    fn drop(&mut self) {
        self.0.gauges.subscribers.dec();
    }
}

/// The shared reader of a stream.
struct Reader {
    hub: Arc<Hub>,
    store: Store,
    batch: usize,
    read_bytes: usize,
    /// The transport's encoder of the events of each read, if it shares them.
    encode: Option<BlockEncoder>,
}

/// A message the shared reader received, decoded.
enum Received {
    /// A CloudEvent, for the ring.
    Event(Arc<StoredEvent>),
    /// Anything else (not a CloudEvent): moves the ring's end past its sequence.
    Skipped(u64),
}

/// Appends the messages one read received to the ring, in order. First, when someone watches
/// and the read holds two events or more, hands its events to the transport's encoder: no
/// subscriber can see an event before its shared encoding exists, so every delivery of it
/// uses those bytes and it is never encoded twice.
fn append(
    ring: &RwLock<Ring>,
    received: Vec<Received>,
    encode: Option<BlockEncoder>,
    watched: bool,
) {
    if let (Some(encode), true) = (encode, watched) {
        let events: Vec<Arc<StoredEvent>> = received
            .iter()
            .filter_map(|r| match r {
                Received::Event(e) => Some(e.clone()),
                Received::Skipped(_) => None,
            })
            .collect();
        if events.len() >= 2 {
            encode(&events);
        }
    }
    let mut ring = ring.write();
    for r in received {
        match r {
            Received::Event(e) => ring.push(e),
            Received::Skipped(sequence) => ring.advance(sequence + 1),
        }
    }
}

impl Reader {
    /// Appends every message of the stream to the ring, in order, forever. On any error it
    /// re-opens its JetStream read at the ring's end, so nothing is skipped.
    async fn run(self, shutdown: CancellationToken) {
        let hub = self.hub.clone();
        let (store, batch, read_bytes) = (self.store.clone(), self.batch, self.read_bytes);
        let mut backoff = Duration::from_millis(50);
        loop {
            let next = hub.ring.read().next();
            let reader = tokio::select! {
                r = store.read(&hub.stream, StartAt::Sequence(next), &[], batch, read_bytes) => r,
                () = shutdown.cancelled() => return,
            };
            let mut reader = match reader {
                Ok(r) => {
                    backoff = Duration::from_millis(50);
                    r
                }
                Err(e) => {
                    tracing::warn!(error = %e, next, "shared reader cannot open; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            let mut healthy = true;
            while healthy {
                let mut result = tokio::select! {
                    m = reader.next() => m,
                    () = shutdown.cancelled() => return,
                };
                // Only this task appends: what the ring already covers is a repeat.
                let mut expected = hub.ring.read().next();
                let mut received = Vec::new();
                // Take everything already received (decoded outside the lock: subscribers are
                // never blocked by decoding), append it at once, then announce once.
                loop {
                    match result {
                        Some(Ok(raw)) => {
                            let seq = raw.sequence;
                            if seq >= expected {
                                expected = seq + 1;
                                received.push(match super::decode_stored(raw) {
                                    Some(event) => Received::Event(event),
                                    None => Received::Skipped(seq),
                                });
                            }
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "shared reader interrupted; re-opening");
                            healthy = false;
                            break;
                        }
                        None => {
                            healthy = false;
                            break;
                        }
                    }
                    if received.len() >= batch {
                        break;
                    }
                    match reader.next().now_or_never() {
                        Some(r) => result = r,
                        None => break,
                    }
                }
                if !received.is_empty() {
                    let watched = hub.gauges.subscribers.get() > 0;
                    append(&hub.ring, received, self.encode, watched);
                    let (next, bytes, events, oldest) = {
                        let ring = hub.ring.read();
                        (ring.next(), ring.bytes(), ring.len(), ring.oldest())
                    };
                    hub.gauges.history_bytes.set(bytes as i64);
                    hub.gauges.history_events.set(events as i64);
                    hub.gauges.history_oldest.set(oldest as i64);
                    hub.tail.send_replace(next);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    fn ev(sequence: u64, size: usize) -> Arc<StoredEvent> {
        Arc::new(StoredEvent {
            sequence,
            subject: "s".into(),
            stored_at: chrono::Utc::now(),
            event: Event::default(),
            size,
            wire: Default::default(),
            json: Default::default(),
            segment: Default::default(),
        })
    }

    #[test]
    fn the_ring_evicts_by_bytes_and_reports_its_coverage() {
        let mut ring = Ring::new(10, 100);
        for s in 10..20 {
            ring.push(ev(s, 30));
        }
        // 3 events of 30 bytes fit in 100.
        assert_eq!(ring.start(), 17);
        assert_eq!(ring.next(), 20);
        assert!(ring.bytes() <= 100);
        let mut out = Vec::new();
        assert_eq!(
            ring.read_from(12, 10, &mut out),
            RingRead::Behind { start: 17 }
        );
        assert_eq!(
            ring.read_from(18, 10, &mut out),
            RingRead::Events { next: 20 }
        );
        assert_eq!(out.iter().map(|e| e.sequence).collect::<Vec<_>>(), [18, 19]);
    }

    #[test]
    fn gaps_are_covered_and_reads_start_at_the_next_existing_event() {
        let mut ring = Ring::new(1, 1000);
        ring.push(ev(1, 1));
        ring.push(ev(5, 1));
        let mut out = Vec::new();
        assert_eq!(
            ring.read_from(2, 10, &mut out),
            RingRead::Events { next: 6 }
        );
        assert_eq!(out[0].sequence, 5);
        out.clear();
        assert_eq!(
            ring.read_from(6, 10, &mut out),
            RingRead::Events { next: 6 }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn the_newest_event_is_kept_even_when_larger_than_the_bound() {
        let mut ring = Ring::new(1, 10);
        ring.push(ev(1, 50));
        ring.push(ev(2, 50));
        assert_eq!(ring.start(), 2);
        assert_eq!(ring.next(), 3);
    }

    thread_local! {
        static ENCODED: std::cell::RefCell<Vec<Vec<u64>>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    fn record(events: &[Arc<StoredEvent>]) {
        ENCODED.with(|e| {
            e.borrow_mut()
                .push(events.iter().map(|e| e.sequence).collect())
        });
    }

    fn encoded() -> Vec<Vec<u64>> {
        ENCODED.with(|e| std::mem::take(&mut *e.borrow_mut()))
    }

    #[test]
    fn the_events_of_each_read_are_encoded_once_then_appended() {
        let ring = RwLock::new(Ring::new(3, 1 << 20));
        let read = |sequences: &[u64]| -> Vec<Received> {
            sequences
                .iter()
                .map(|&s| match s % 10 {
                    // Not a CloudEvent.
                    9 => Received::Skipped(s),
                    _ => Received::Event(ev(s, 1)),
                })
                .collect()
        };
        append(&ring, read(&[3, 4, 5]), Some(record), true);
        assert_eq!(encoded(), [vec![3, 4, 5]]);
        assert_eq!(ring.read().next(), 6);

        // Skipped messages are left out of the encoding but move the ring's end.
        append(&ring, read(&[6, 7, 8, 9]), Some(record), true);
        assert_eq!(encoded(), [vec![6, 7, 8]]);
        assert_eq!(ring.read().next(), 10);
        assert_eq!(ring.read().len(), 6);

        // A single event is not worth a shared encoding; nobody watching, nothing encoded.
        append(&ring, read(&[10]), Some(record), true);
        append(&ring, read(&[11, 12]), Some(record), false);
        append(&ring, read(&[13, 14]), None, true);
        assert!(encoded().is_empty());
        assert_eq!(ring.read().next(), 15);
    }
}
