//! Consumer-backed subscriptions: durables, and ephemeral subscriptions with EXPLICIT acks.
//!
//! Each one is a JetStream pull consumer with explicit acknowledgement; positions, acks and
//! redelivery live in JetStream, so a durable survives gateway restarts and is shared by every
//! client (on any gateway) that opens it, as competing consumers.
//!
//! A client's task pulls only as many messages as its window has permits for. In EXPLICIT mode
//! a permit comes back when the client acks, nacks or terms the delivery, or when its ack
//! deadline passes (JetStream then redelivers it, possibly to another client); in AUTO mode the
//! task acknowledges each delivery as it queues it and the permit comes back when it is sent.
//! When the client goes away, its unacknowledged deliveries are released at once (NAK without
//! delay) instead of waiting for the deadline.
//!
//! Deliveries beyond `subscribe.max_deliver` and terminated ones are copied to the stream's
//! dead-letter subject (when configured) with the reason as extension attributes, and
//! terminated in JetStream so they are not redelivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::snapshot::SnapshotBoundary;
use super::{
    decode_stored, lost, outage, AckMode, Batch, Control, Item, Matcher, OpenRequest, Shared,
    Start, Stop, StoredEvent, Window,
};
use crate::config::Settings;
use crate::error::Error;
use crate::event::AttributeValue;
use crate::store::{Acker, Consumer, ConsumerSpec, ConsumerStart, Delivered, StartAt};
use crate::telemetry::metrics::{DeadReason, Settlement, SettlementCounters};

/// Longest single pull request; bounds how stale the window accounting can get.
const MAX_PULL_WAIT: Duration = Duration::from_secs(5);

/// Who opens a consumer-backed subscription, when authentication is on.
pub(super) struct Owner {
    /// The identity: recorded as a new durable's owner, compared with an existing one's.
    pub(super) id: String,
    /// An admin of the stream may attach to anyone's durable.
    pub(super) admin: bool,
}

pub(super) struct Params<'a> {
    pub(super) owner: Option<Owner>,
    pub(super) id: String,
    pub(super) req: OpenRequest,
    pub(super) matcher: Matcher,
    pub(super) settings: &'a Settings,
    pub(super) dead_letter_subject: Option<String>,
    pub(super) shared: Shared,
    pub(super) tx: mpsc::Sender<Result<Batch, Box<Error>>>,
    pub(super) control: mpsc::Receiver<Box<Control>>,
    pub(super) window: Window,
    /// AUTO mode: sequences the transport has sent (acknowledged then).
    pub(super) sent: Option<mpsc::Receiver<u64>>,
}

/// Where the subscription starts, as reported in `Opened`.
pub(super) struct Opened {
    pub(super) start_sequence: u64,
    pub(super) last_sequence: u64,
}

/// Opens (or creates) the consumer and starts the client's task.
pub(super) async fn open(p: Params<'_>) -> Result<Opened, Error> {
    let req = &p.req;
    let store = &p.shared.store;
    let state = store.stream_state(&req.stream).await?;
    let resolved = match req.start {
        None | Some(Start::Resume) => Start::Resume,
        Some(start) => {
            super::start::resolve(start, req.on_expired, state.first_sequence, "open.start")?
        }
    };
    let snapshot = resolved == Start::Snapshot;
    let start = super::start::consumer_start(resolved);
    if req.start == Some(Start::Resume) && req.durable.is_none() {
        return Err(Error::invalid(
            "open.start.resume",
            "resume needs a durable name",
        ));
    }
    let spec = ConsumerSpec {
        durable: req.durable.clone(),
        subjects: req.subjects.clone(),
        start,
        ack_wait: req.ack_wait,
        max_ack_pending: i64::from(p.settings.subscribe.max_in_flight_limit) * 4,
        owner: p.owner.as_ref().map(|o| o.id.clone()),
        admin: p.owner.as_ref().is_some_and(|o| o.admin),
    };
    if req.start == Some(Start::Resume) {
        // Resume never creates: the durable must exist.
        let name = req.durable.clone().unwrap_or_default();
        store.durable(&req.stream, &name).await?;
    }
    let (consumer, created) = match store.open_consumer(&req.stream, &spec).await {
        Ok(opened) => opened,
        Err(e @ crate::store::StoreError::NotOwner { .. }) => {
            let target = format!("{}/{}", req.stream, req.durable.as_deref().unwrap_or(""));
            crate::auth::audit(req.caller.as_deref(), "durable.open", &target, "denied");
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let cached = consumer.cached_state();
    // Only the client that created the consumer sees the snapshot boundary.
    let snapshot =
        (created && snapshot).then(|| SnapshotBoundary::new(cached.pending, state.last_sequence));
    let start_sequence = if created {
        match start {
            ConsumerStart::All => state.first_sequence,
            ConsumerStart::At(StartAt::Sequence(s)) => s,
            ConsumerStart::New => state.last_sequence + 1,
            _ => cached.delivered_sequence + 1,
        }
    } else {
        cached.ack_floor_sequence + 1
    };
    let span = tracing::info_span!(
        "subscription",
        subscription.id = %p.id,
        stream = %req.stream,
        durable = req.durable.as_deref().unwrap_or(""),
    );
    let task = Task {
        consumer,
        matcher: p.matcher,
        shared: p.shared.for_subscription(),
        mode: req.ack_mode,
        ack_wait: req.ack_wait,
        max_deliver: p.settings.subscribe.max_deliver,
        dead_letter_subject: p.dead_letter_subject,
        metrics: SettlementCounters::of(&req.stream),
        stream: req.stream.clone(),
        heartbeat: req.heartbeat,
        batch: p.settings.fanout.batch,
        tx: p.tx,
        control: p.control,
        sent: p.sent,
        window: p.window,
        in_flight: BTreeMap::new(),
        snapshot,
        last_delivered: start_sequence.saturating_sub(1),
    };
    tokio::spawn(task.run().instrument(span));
    Ok(Opened {
        start_sequence,
        last_sequence: state.last_sequence,
    })
}

/// A delivery awaiting the client's acknowledgement.
struct Pending {
    acker: Acker,
    event: Arc<StoredEvent>,
    delivery_count: u32,
    deadline: Instant,
}

struct Task {
    consumer: Consumer,
    /// The attribute filter (subjects are filtered by JetStream) and tombstone predicate.
    matcher: Matcher,
    shared: Shared,
    mode: AckMode,
    ack_wait: Duration,
    max_deliver: u32,
    dead_letter_subject: Option<String>,
    stream: String,
    /// Settlement and dead-letter counters of the stream.
    metrics: SettlementCounters,
    heartbeat: Option<Duration>,
    batch: usize,
    tx: mpsc::Sender<Result<Batch, Box<Error>>>,
    control: mpsc::Receiver<Box<Control>>,
    window: Window,
    /// AUTO mode: sequences the transport has sent.
    sent: Option<mpsc::Receiver<u64>>,
    /// Deliveries not yet acknowledged, by stream sequence (ordered, so releases
    /// go back in stream order).
    in_flight: BTreeMap<u64, Pending>,
    /// The snapshot under way, until `SnapshotEnd` is sent.
    snapshot: Option<SnapshotBoundary>,
    /// The last sequence delivered (for bookmarks).
    last_delivered: u64,
}

impl Task {
    async fn run(mut self) {
        let result = self.run_loop().await;
        // Settle what the client said before it left, then release what it still holds so
        // other clients get it at once.
        while let Ok(c) = self.control.try_recv() {
            let _ = self.on_control(*c).await;
        }
        while let Some(Ok(seq)) = self.sent.as_mut().map(mpsc::Receiver::try_recv) {
            self.on_sent(seq).await;
        }
        for (_, p) in std::mem::take(&mut self.in_flight) {
            let _ = p.acker.nak(Duration::ZERO).await;
        }
        if let Err(Stop::Fail(e)) = result {
            tracing::info!(error = %e, "subscription ended with an error");
            let _ = self.tx.send(Err(Box::new(e))).await;
        }
    }

    async fn run_loop(&mut self) -> Result<(), Stop> {
        if self.snapshot_complete() {
            self.finish_snapshot().await?;
        }
        let mut next_bookmark = self.heartbeat.map(|h| Instant::now() + h);
        let mut backoff = Duration::from_millis(50);
        loop {
            self.expire_in_flight();
            // Bookmarks keep coming whatever the window, so a client can tell a full window
            // from a dead stream.
            if let (Some(h), Some(at)) = (self.heartbeat, next_bookmark) {
                if Instant::now() >= at {
                    next_bookmark = Some(Instant::now() + h);
                    self.bookmark().await?;
                }
            }
            let credit = self.window.available().min(self.batch);
            let wait = self.heartbeat.unwrap_or(MAX_PULL_WAIT).min(MAX_PULL_WAIT);
            if credit == 0 {
                // Window full: wait for acks, credit, a deadline or the next bookmark.
                let until = self
                    .in_flight
                    .values()
                    .map(|p| p.deadline)
                    .chain(next_bookmark)
                    .min()
                    .unwrap_or_else(|| Instant::now() + wait);
                let window = self.window.clone();
                self.serve_until(async {
                    tokio::select! {
                        () = window.wait_available() => {}
                        () = tokio::time::sleep_until(until) => {}
                    }
                })
                .await?;
                continue;
            }
            let mut pull = match self.consumer.pull(credit, wait).await {
                Ok(p) => {
                    backoff = Duration::from_millis(50);
                    p
                }
                Err(e) => {
                    tracing::debug!(error = %e, "pull failed; retrying");
                    self.shared.pause(backoff, &self.tx).await?;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            loop {
                match self.serve_until(pull.next()).await? {
                    Some(Ok(d)) => self.on_delivery(d).await?,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "pull interrupted");
                        self.shared.pause(backoff, &self.tx).await?;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    async fn on_delivery(&mut self, d: Delivered) -> Result<(), Stop> {
        let Delivered {
            raw,
            delivery_count,
            acker,
        } = d;
        let sequence = raw.sequence;
        let Some(event) = decode_stored(raw) else {
            // Not a CloudEvent: nothing a client could do with it.
            let _ = acker.term().await;
            return Ok(());
        };
        if delivery_count > self.max_deliver {
            self.metrics.dead_letter(DeadReason::max_deliveries);
            self.dead_letter(&event, delivery_count, "maximum deliveries exceeded")
                .await;
            let _ = acker.term().await;
            return Ok(());
        }
        let in_snapshot = match self.snapshot.as_mut() {
            Some(boundary) if delivery_count > 1 => {
                boundary.count(sequence);
                true
            }
            Some(boundary) => {
                let admitted = boundary.admit(&event.subject, sequence);
                if !admitted {
                    self.finish_snapshot().await?;
                }
                admitted
            }
            None => false,
        };
        if !self.matcher.matches(&event) || (in_snapshot && self.matcher.is_tombstone(&event)) {
            // Not for this subscription: settle it without using the window.
            let _ = acker.ack().await;
            if self.snapshot_complete() {
                self.finish_snapshot().await?;
            }
            return Ok(());
        }
        let window = self.window.clone();
        self.serve_until(window.acquire()).await?;
        self.last_delivered = self.last_delivered.max(sequence);
        // AUTO: acknowledged once the transport reports it sent; EXPLICIT: by the client.
        self.in_flight.insert(
            sequence,
            Pending {
                acker,
                event: event.clone(),
                delivery_count,
                deadline: Instant::now() + self.ack_wait,
            },
        );
        self.send(Item::Delivery {
            event,
            delivery_count,
        })
        .await?;
        if self.snapshot_complete() {
            self.finish_snapshot().await?;
        }
        Ok(())
    }

    /// Awaits `work` while serving the client's control messages and sent reports, unless
    /// NATS is lost for good, the gateway shuts down or the client goes away.
    async fn serve_until<T>(
        &mut self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, Stop> {
        let mut work = std::pin::pin!(work);
        let mut outage_rx = self.shared.outage.clone();
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                Some(c) = self.control.recv() => self.on_control(*c).await?,
                Some(seq) = recv_sent(&mut self.sent) => self.on_sent(seq).await,
                () = outage(&mut outage_rx) => return Err(lost()),
                () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                () = self.tx.closed() => return Err(Stop::Quiet),
            }
        }
    }

    /// Whether a snapshot is under way and every message of it has been taken.
    fn snapshot_complete(&self) -> bool {
        self.snapshot
            .as_ref()
            .is_some_and(SnapshotBoundary::complete)
    }

    async fn finish_snapshot(&mut self) -> Result<(), Stop> {
        if let Some(boundary) = self.snapshot.take() {
            let sequence = boundary.end();
            self.send(Item::SnapshotEnd { sequence }).await?;
        }
        Ok(())
    }

    async fn on_control(&mut self, c: Control) -> Result<(), Stop> {
        match c {
            Control::Credit(n) => self.window.credit(n),
            Control::Ack(seqs) => {
                for s in seqs {
                    if let Some(p) = self.take(s) {
                        self.metrics.settled(Settlement::ack);
                        let _ = p.acker.ack().await;
                    }
                }
            }
            Control::Nack(seqs, delay) => {
                for s in seqs {
                    if let Some(p) = self.take(s) {
                        self.metrics.settled(Settlement::nack);
                        let _ = p.acker.nak(delay).await;
                    }
                }
            }
            Control::Term(seqs, reason) => {
                for s in seqs {
                    if let Some(p) = self.take(s) {
                        let reason = if reason.is_empty() {
                            "terminated by the client"
                        } else {
                            &reason
                        };
                        self.metrics.settled(Settlement::term);
                        self.metrics.dead_letter(DeadReason::terminated);
                        self.dead_letter(&p.event, p.delivery_count, reason).await;
                        let _ = p.acker.term().await;
                    }
                }
            }
        }
        Ok(())
    }

    /// AUTO: the transport sent `sequence`; acknowledge it (its permit came back on send).
    async fn on_sent(&mut self, sequence: u64) {
        if let Some(p) = self.in_flight.remove(&sequence) {
            self.metrics.settled(Settlement::ack);
            let _ = p.acker.ack().await;
        }
    }

    /// Removes an in-flight delivery and returns its window permit.
    fn take(&mut self, sequence: u64) -> Option<Pending> {
        let p = self.in_flight.remove(&sequence)?;
        self.window.release(1);
        Some(p)
    }

    /// Forgets deliveries whose ack deadline passed: JetStream redelivers them.
    fn expire_in_flight(&mut self) {
        if self.mode == AckMode::Auto {
            // Queued deliveries hold their permits until sent; nothing to expire.
            return;
        }
        let now = Instant::now();
        let before = self.in_flight.len();
        self.in_flight.retain(|_, p| p.deadline > now);
        self.window.release(before - self.in_flight.len());
    }

    async fn dead_letter(&self, event: &StoredEvent, deliveries: u32, reason: &str) {
        let Some(subject) = &self.dead_letter_subject else {
            tracing::info!(
                sequence = event.sequence,
                reason,
                "giving up on an event (no dead-letter subject configured)"
            );
            return;
        };
        let why = vec![
            (
                "deadletterreason",
                AttributeValue::String(reason.to_owned()),
            ),
            (
                "deadletterstream",
                AttributeValue::String(self.stream.clone()),
            ),
            (
                "deadlettersequence",
                AttributeValue::String(event.sequence.to_string()),
            ),
            (
                "deadletterdeliveries",
                AttributeValue::Integer(i32::try_from(deliveries).unwrap_or(i32::MAX)),
            ),
        ];
        if let Err(e) =
            crate::publish::dead_letter(&self.shared.store, subject, &event.event, why).await
        {
            tracing::warn!(error = %e, sequence = event.sequence, "dead-lettering failed");
        }
    }

    async fn bookmark(&mut self) -> Result<(), Stop> {
        let (sequence, pending) = match self.consumer.state().await {
            Ok(s) => (s.delivered_sequence.max(self.last_delivered), s.pending),
            Err(_) => return Ok(()),
        };
        self.send(Item::Bookmark { sequence, pending }).await
    }

    async fn send(&mut self, item: Item) -> Result<(), Stop> {
        tokio::select! {
            r = self.tx.send(Ok(Batch::One(item))) => r.map_err(|_| Stop::Quiet),
            () = self.shared.shutdown.cancelled() => Err(Stop::Quiet),
        }
    }
}

/// The next sent sequence, or never without a channel.
async fn recv_sent(sent: &mut Option<mpsc::Receiver<u64>>) -> Option<u64> {
    match sent {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
