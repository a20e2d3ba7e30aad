//! One shared-path subscription's task: a cursor moving through the stream.
//!
//! The loop reads the hub's ring from the cursor; when the cursor is before the ring's start
//! it catches up with its own JetStream read, narrowed to the subscription's subjects, until
//! the read reaches the ring again. The cursor only ever moves past a sequence once that
//! sequence has been delivered (or did not match, or does not exist), so switching between the
//! ring and a catch-up read can neither skip nor repeat an event.
//!
//! A `snapshot` start first reads the last message of every matching subject (a JetStream
//! last-per-subject read), sends `SnapshotEnd`, and then continues with the cursor just past
//! the snapshot, which makes the hand-off to live changes exact.
//!
//! Backpressure: every delivery takes a permit from the window, returned when the transport
//! has sent it. Deliveries go to the transport in runs ([`Batch::Deliveries`]): permits are
//! taken several at a time, and a run is handed over whenever the task is about to wait (for
//! the ring, a read, a permit) or reaches `batch` events, so batching never delays an event.
//! When the client stops reading, the task waits for a permit (holding nothing beyond its
//! window) while the shared reader and other subscribers go on; a task that falls behind the
//! ring simply catches up later.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::hub::{Hub, RingRead};
use super::snapshot::SnapshotBoundary;
use super::{
    decode_stored, lost, outage, Batch, Control, Item, Matcher, Shared, Stop, StoredEvent, Window,
};
use crate::error::Error;
use crate::store::{StartAt, StoreError};
use crate::telemetry::Path;

/// Everything a subscription task needs.
pub(super) struct Params {
    pub(super) id: String,
    pub(super) hub: Arc<Hub>,
    pub(super) shared: Shared,
    pub(super) matcher: Matcher,
    pub(super) cursor: u64,
    /// `Some(stream last sequence at open)` for a snapshot start.
    pub(super) snapshot: Option<u64>,
    pub(super) heartbeat: Option<Duration>,
    pub(super) batch: usize,
    pub(super) tx: mpsc::Sender<Result<Batch, Box<Error>>>,
    pub(super) control: mpsc::Receiver<Box<Control>>,
    pub(super) window: Window,
}

/// Starts the task.
pub(super) fn spawn(p: Params) {
    let span = tracing::info_span!("subscription", subscription.id = %p.id, stream = %p.hub.stream);
    tokio::spawn(
        async move {
            let tx = p.tx.clone();
            let snapshot = p.snapshot;
            let mut task = Task::new(p);
            tracing::debug!(cursor = task.cursor, "subscription started");
            let result = match snapshot {
                // Boxed, like catch-up below: the task's future stays small while it waits for
                // live events, which is what most subscriptions do most of the time.
                Some(last) => match Box::pin(task.snapshot(last)).await {
                    Ok(()) => task.run().await,
                    Err(stop) => Err(stop),
                },
                None => task.run().await,
            };
            if let Err(Stop::Fail(e)) = result {
                tracing::info!(error = %e, "subscription ended with an error");
                let _ = tx.send(Err(Box::new(e))).await;
            }
        }
        .instrument(span),
    );
}

struct Task {
    hub: Arc<Hub>,
    /// Counts this subscription on the hub while the task lives.
    _guard: super::hub::HubGuard,
    shared: Shared,
    matcher: Matcher,
    /// The next sequence this subscription wants.
    cursor: u64,
    heartbeat: Option<Duration>,
    next_bookmark: Option<Instant>,
    batch: usize,
    tx: mpsc::Sender<Result<Batch, Box<Error>>>,
    control: mpsc::Receiver<Box<Control>>,
    window: Window,
    /// Window permits taken and not yet used by a delivery.
    permits: usize,
    /// Deliveries gathered for the next run, each holding a permit.
    run: Vec<Arc<StoredEvent>>,
    /// The read the current run comes from (runs never mix them).
    path: Path,
}

impl Task {
    fn new(p: Params) -> Task {
        Task {
            _guard: p.hub.enter(),
            hub: p.hub,
            shared: p.shared.for_subscription(),
            matcher: p.matcher,
            cursor: p.cursor,
            heartbeat: p.heartbeat,
            next_bookmark: p.heartbeat.map(|h| Instant::now() + h),
            batch: p.batch,
            tx: p.tx,
            control: p.control,
            window: p.window,
            permits: 0,
            run: Vec::new(),
            // Until it reads from the ring: a subscriber that starts behind it is replaying,
            // not slow.
            path: Path::catchup,
        }
    }

    async fn run(&mut self) -> Result<(), Stop> {
        let mut tail = self.hub.watch_tail();
        // Grows on first use: an idle subscriber allocates nothing for it.
        let mut buf: Vec<Arc<StoredEvent>> = Vec::new();
        let mut ticker = self.heartbeat.map(|h| {
            let mut t = tokio::time::interval_at(Instant::now() + h, h);
            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
            t
        });
        let mut outage_rx = self.shared.outage.clone();
        loop {
            // Mark the tail as seen before reading, so an append after the read wakes us.
            tail.borrow_and_update();
            let read = self
                .hub
                .ring
                .read()
                .read_from(self.cursor, self.batch, &mut buf);
            match read {
                RingRead::Behind { .. } => Box::pin(self.catch_up()).await?,
                RingRead::Events { next } if buf.is_empty() => {
                    self.cursor = self.cursor.max(next);
                    self.flush().await?;
                    tokio::select! {
                        changed = tail.changed() => {
                            if changed.is_err() {
                                return Err(Stop::Quiet);
                            }
                        }
                        () = tick(&mut ticker) => self.bookmark().await?,
                        Some(c) = self.control.recv() => self.on_control(*c),
                        () = outage(&mut outage_rx) => return Err(lost()),
                        () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                        () = self.tx.closed() => return Err(Stop::Quiet),
                    }
                }
                RingRead::Events { .. } => {
                    self.path = Path::shared;
                    for event in buf.drain(..) {
                        let sequence = event.sequence;
                        if self.matcher.matches(&event) {
                            self.deliver(event).await?;
                        }
                        self.cursor = sequence + 1;
                    }
                    // Hand the run over before looking at the ring again: a run waits for
                    // nothing.
                    self.flush().await?;
                    if let Some(t) = ticker.as_mut() {
                        if t.tick().now_or_never().is_some() {
                            self.bookmark().await?;
                        }
                    }
                }
            }
        }
    }

    /// Runs `work` while serving the client's control messages, unless NATS is lost for good,
    /// the gateway shuts down or the client goes away.
    async fn interruptible<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stop> {
        let mut work = std::pin::pin!(work);
        let mut outage_rx = self.shared.outage.clone();
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                Some(c) = self.control.recv() => self.on_control(*c),
                () = outage(&mut outage_rx) => return Err(lost()),
                () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                () = self.tx.closed() => return Err(Stop::Quiet),
            }
        }
    }

    /// Handles a failed read: a transient one pauses (doubling `backoff`) so the caller can
    /// retry; any other ends the subscription.
    async fn retry_after(&mut self, e: StoreError, backoff: &mut Duration) -> Result<(), Stop> {
        match e {
            e if e.is_transient() => {
                tracing::debug!(error = %e, cursor = self.cursor, "read failed; retrying");
                self.shared.pause(*backoff, &self.tx).await?;
                *backoff = (*backoff * 2).min(Duration::from_secs(1));
                Ok(())
            }
            e => Err(Stop::Fail(e.into())),
        }
    }

    /// The one subject pattern this subscription reads, when it has exactly one: catch-up reads
    /// then ask JetStream for that pattern only.
    fn pushdown(&self) -> Option<String> {
        match self.matcher.subjects.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    /// Delivers everything matching in `[cursor, ring start)` from the stream's history, then
    /// returns so the loop continues from the ring. The cursor only moves over sequences a
    /// verified history read covered, or that the stream's leader says hold no message.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let catchup = self.hub.catchup.clone();
        let pushdown = self.pushdown();
        let mut backoff = Duration::from_millis(50);
        let _behind = crate::telemetry::InProgress::new(&self.hub.gauges.behind);
        if self.path == Path::shared && self.cursor > 0 && crate::telemetry::may_warn_slow() {
            // It was live and the ring moved past it: it reads slower than events arrive.
            tracing::warn!(
                stream = %self.hub.stream,
                cursor = self.cursor,
                ring_start = self.hub.ring.read().start(),
                "a subscriber fell behind the history ring and catches up from JetStream \
                 (it reads slower than events arrive); later warnings within \
                 telemetry.slow_warning_interval are counted, not logged"
            );
        }
        self.flush().await?;
        self.path = Path::catchup;
        loop {
            let target = self.hub.ring.read().start();
            if self.cursor >= target {
                // The catch-up run goes before any live one.
                return self.flush().await;
            }
            let cursor = self.cursor;
            self.flush().await?;
            let read = match &pushdown {
                Some(subject) => {
                    self.interruptible(catchup.filtered(cursor, subject))
                        .await?
                }
                None => self.interruptible(catchup.shared(cursor, target)).await?,
            };
            let block = match read {
                Ok(block) => block,
                Err(e) => {
                    self.retry_after(e, &mut backoff).await?;
                    continue;
                }
            };
            for event in block.from(self.cursor) {
                let sequence = event.sequence;
                if self.matcher.matches(event) {
                    self.deliver(event.clone()).await?;
                }
                self.cursor = sequence + 1;
            }
            self.cursor = self.cursor.max(block.end);
            if block.exhausted && self.cursor < target {
                // The replica that answered holds nothing more, yet the ring starts later: the
                // messages in between were deleted, do not match, or that replica lags. Only
                // the stream's leader may say which.
                self.flush().await?;
                let store = self.shared.store.clone();
                let stream = self.hub.stream.clone();
                let next = self
                    .interruptible(store.first_at_or_after(
                        &stream,
                        self.cursor,
                        pushdown.as_deref(),
                    ))
                    .await?;
                match next {
                    Ok(None) => self.cursor = target,
                    Ok(Some(n)) if n >= target => self.cursor = target,
                    Ok(Some(_)) => {
                        // A lagging replica: read again once it has caught up.
                        let lag = StoreError::unavailable("the answering replica lags the leader");
                        self.retry_after(lag, &mut backoff).await?;
                        continue;
                    }
                    Err(e) => {
                        self.retry_after(e, &mut backoff).await?;
                        continue;
                    }
                }
            }
            backoff = Duration::from_millis(50);
            if self.next_bookmark.is_some_and(|at| Instant::now() >= at) {
                self.bookmark().await?;
            }
        }
    }

    /// Sends the last event of every matching subject, then `SnapshotEnd`, and moves the
    /// cursor just past the snapshot. `last` is the stream's last sequence before the read.
    ///
    /// JetStream delivers the last message of every subject (in sequence order) and then
    /// whatever is stored afterwards; its pending count at creation may already include a few
    /// of those later messages. So the snapshot ends after that count or at the first subject
    /// seen twice, whichever comes first: every message before that point is the last of its
    /// subject up to the snapshot's end, and the repeat is a live change, which the live path
    /// delivers after `SnapshotEnd`.
    async fn snapshot(&mut self, last: u64) -> Result<(), Stop> {
        let end;
        let mut backoff = Duration::from_millis(50);
        self.path = Path::snapshot;
        'read: loop {
            // A snapshot reads through a JetStream consumer: wait for one of the gateway's
            // few. The reader keeps the permit until its consumer is deleted.
            let permits = self.shared.snapshot_reads.clone();
            let Ok(permit) = self.interruptible(permits.acquire_owned()).await? else {
                return Err(Stop::Quiet);
            };
            let store = self.shared.store.clone();
            let stream = self.hub.stream.clone();
            let subjects = self.matcher.subjects.clone();
            let opened = self
                .interruptible(store.read(
                    &stream,
                    StartAt::LastPerSubject,
                    &subjects,
                    self.shared.snapshot_batch,
                    self.shared.read_bytes,
                ))
                .await?;
            let mut reader = match opened {
                Ok(r) => r,
                Err(e) => {
                    drop(permit);
                    self.retry_after(e, &mut backoff).await?;
                    continue;
                }
            };
            reader.hold(permit);
            let mut boundary = SnapshotBoundary::new(reader.initial_pending(), last);
            let mut taken = false;
            while !boundary.complete() {
                // A message at hand is taken at once; before waiting for the server, the run
                // gathered so far goes to the client.
                let ready = match reader.next().now_or_never() {
                    Some(ready) => ready,
                    None => {
                        self.flush().await?;
                        self.interruptible(reader.next()).await?
                    }
                };
                let raw = match ready {
                    Some(Ok(raw)) => raw,
                    failed => {
                        tracing::debug!(?failed, "snapshot read interrupted");
                        if !taken {
                            // Interrupted before anything was read: start again.
                            continue 'read;
                        }
                        // Everything delivered so far is the last event of its subject, in
                        // sequence order: resuming after the last delivered sequence misses
                        // nothing, so say so rather than skip the rest.
                        return Err(Stop::Fail(Error::Unavailable {
                            reason: "the snapshot read was interrupted".into(),
                        }));
                    }
                };
                taken = true;
                if !boundary.admit(&raw.subject, raw.sequence) {
                    break;
                }
                if let Some(event) = decode_stored(raw) {
                    if self.matcher.matches(&event) && !self.matcher.is_tombstone(&event) {
                        self.deliver(event).await?;
                    }
                }
            }
            end = boundary.end();
            break;
        }
        self.cursor = end + 1;
        self.send(Item::SnapshotEnd { sequence: end }).await
    }

    fn on_control(&mut self, c: Control) {
        // Shared-path subscriptions acknowledge as sent; only credit matters.
        if let Control::Credit(n) = c {
            self.window.credit(n);
        }
    }

    /// Adds one delivery to the run, waiting for a window permit first (after handing the run
    /// over, so the transport can send it and return permits); a full run is handed over.
    async fn deliver(&mut self, event: Arc<StoredEvent>) -> Result<(), Stop> {
        if self.permits == 0 {
            // Take what is free, up to a run's worth, in one semaphore operation.
            self.permits = self.window.try_take(self.batch);
            if self.permits == 0 {
                self.flush().await?;
                let window = self.window.clone();
                self.interruptible(window.acquire()).await?;
                self.permits = 1;
            }
        }
        self.permits -= 1;
        if self.run.capacity() == 0 {
            // Room for every delivery the permits in hand allow: one allocation per run.
            self.run.reserve_exact(self.permits + 1);
        }
        self.run.push(event);
        if self.run.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Hands the gathered run to the transport.
    async fn flush(&mut self) -> Result<(), Stop> {
        if self.run.is_empty() {
            return Ok(());
        }
        let run = std::mem::take(&mut self.run);
        self.send_batch(Batch::Deliveries(run, self.path)).await
    }

    async fn bookmark(&mut self) -> Result<(), Stop> {
        if let Some(h) = self.heartbeat {
            self.next_bookmark = Some(Instant::now() + h);
        }
        let sequence = self.cursor.saturating_sub(1);
        let end = self.hub.ring.read().next().saturating_sub(1);
        self.send(Item::Bookmark {
            sequence,
            pending: end.saturating_sub(sequence),
        })
        .await
    }

    /// Sends a bookmark or snapshot end, after the deliveries before it.
    async fn send(&mut self, item: Item) -> Result<(), Stop> {
        self.flush().await?;
        self.send_batch(Batch::One(item)).await
    }

    async fn send_batch(&mut self, item: Batch) -> Result<(), Stop> {
        // Fast path: room in the channel (the window guarantees it for deliveries). Waiting on
        // shutdown per item would register with the gateway-wide cancellation token each time,
        // a lock every subscription shares.
        let item = match self.tx.try_send(Ok(item)) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::Quiet),
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        tokio::select! {
            r = self.tx.send(item) => r.map_err(|_| Stop::Quiet),
            () = self.shared.shutdown.cancelled() => Err(Stop::Quiet),
        }
    }
}

/// Waits for the next tick, or forever without a ticker.
async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
