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
//! has sent it. When the client stops reading, the task waits for a permit (holding nothing
//! beyond its window) while the shared reader and other subscribers go on; a task that falls
//! behind the ring simply catches up later.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

use super::hub::{Hub, RingRead};
use super::{
    decode_stored, lost, outage, Control, Item, Matcher, Shared, Stop, StoredEvent, Window,
};
use crate::error::Error;
use crate::store::{Reader, StartAt, StoreError};

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
    pub(super) tx: mpsc::Sender<Result<Item, Error>>,
    pub(super) control: mpsc::Receiver<Control>,
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
                Some(last) => match task.snapshot(last).await {
                    Ok(()) => task.run().await,
                    Err(stop) => Err(stop),
                },
                None => task.run().await,
            };
            if let Err(Stop::Fail(e)) = result {
                tracing::info!(error = %e, "subscription ended with an error");
                let _ = tx.send(Err(e)).await;
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
    tx: mpsc::Sender<Result<Item, Error>>,
    control: mpsc::Receiver<Control>,
    window: Window,
}

impl Task {
    fn new(p: Params) -> Task {
        Task {
            _guard: p.hub.enter(),
            hub: p.hub,
            shared: p.shared,
            matcher: p.matcher,
            cursor: p.cursor,
            heartbeat: p.heartbeat,
            next_bookmark: p.heartbeat.map(|h| Instant::now() + h),
            batch: p.batch,
            tx: p.tx,
            control: p.control,
            window: p.window,
        }
    }

    async fn run(&mut self) -> Result<(), Stop> {
        let mut tail = self.hub.watch_tail();
        let mut buf: Vec<Arc<StoredEvent>> = Vec::with_capacity(self.batch);
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
                RingRead::Behind { .. } => self.catch_up().await?,
                RingRead::Events { next } if buf.is_empty() => {
                    self.cursor = self.cursor.max(next);
                    tokio::select! {
                        changed = tail.changed() => {
                            if changed.is_err() {
                                return Err(Stop::Quiet);
                            }
                        }
                        () = tick(&mut ticker) => self.bookmark().await?,
                        Some(c) = self.control.recv() => self.on_control(c),
                        () = outage(&mut outage_rx) => return Err(lost()),
                        () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                        () = self.tx.closed() => return Err(Stop::Quiet),
                    }
                }
                RingRead::Events { .. } => {
                    for event in buf.drain(..) {
                        let sequence = event.sequence;
                        if self.matcher.matches(&event) {
                            self.deliver(event).await?;
                        }
                        self.cursor = sequence + 1;
                    }
                    if let Some(t) = ticker.as_mut() {
                        if t.tick().now_or_never().is_some() {
                            self.bookmark().await?;
                        }
                    }
                }
            }
        }
    }

    /// Opens a JetStream read, retrying while NATS is briefly away.
    async fn open_reader(&mut self, start: StartAt) -> Result<Reader, Stop> {
        let mut backoff = Duration::from_millis(50);
        loop {
            let stream = self.hub.stream.clone();
            match self
                .shared
                .store
                .read(&stream, start, &self.matcher.subjects, self.batch)
                .await
            {
                Ok(r) => return Ok(r),
                Err(e @ StoreError::Unavailable(_)) => {
                    tracing::debug!(error = %e, "cannot open a read; retrying");
                    self.shared.pause(backoff, &self.tx).await?;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(Stop::Fail(e.into())),
            }
        }
    }

    /// The next message of `reader`, or why to stop.
    async fn next_raw(
        &mut self,
        reader: &mut Reader,
    ) -> Result<Option<crate::store::RawMessage>, Stop> {
        let mut outage_rx = self.shared.outage.clone();
        loop {
            tokio::select! {
                m = reader.next() => return match m {
                    Some(Ok(raw)) => Ok(Some(raw)),
                    // A broken read is re-opened by the caller from the cursor.
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "read interrupted");
                        Ok(None)
                    }
                    None => Ok(None),
                },
                Some(c) = self.control.recv() => self.on_control(c),
                () = outage(&mut outage_rx) => return Err(lost()),
                () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                () = self.tx.closed() => return Err(Stop::Quiet),
            }
        }
    }

    /// Delivers everything matching in `[cursor, ring start)` from JetStream, then returns so
    /// the loop continues from the ring.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let target = self.hub.ring.read().start();
        tracing::debug!(cursor = self.cursor, target, "catching up from JetStream");
        let mut reader = self.open_reader(StartAt::Sequence(self.cursor)).await?;
        if reader.initial_pending() == 0 {
            // Nothing matching exists from the cursor to the stream's end, which is at or
            // past the ring's start: continue from the ring.
            self.cursor = self.cursor.max(target);
            return Ok(());
        }
        loop {
            let Some(raw) = self.next_raw(&mut reader).await? else {
                // Interrupted: the main loop re-opens from the cursor.
                return Ok(());
            };
            if raw.sequence < self.cursor {
                continue;
            }
            if raw.sequence >= self.hub.ring.read().start() {
                // The ring holds this one and everything after it: hand off.
                return Ok(());
            }
            let (sequence, pending) = (raw.sequence, raw.pending);
            if let Some(event) = decode_stored(raw) {
                if self.matcher.matches(&event) {
                    self.deliver(event).await?;
                }
            }
            self.cursor = sequence + 1;
            if pending == 0 {
                // Nothing more matched when this was sent, and the stream's end then was at
                // or past `target` (the read was opened after `target` was taken).
                self.cursor = self.cursor.max(target);
                return Ok(());
            }
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
        let mut end = last;
        'read: loop {
            let mut reader = self.open_reader(StartAt::LastPerSubject).await?;
            let mut remaining = reader.initial_pending();
            let mut seen: HashSet<String> = HashSet::new();
            while remaining > 0 {
                let Some(raw) = self.next_raw(&mut reader).await? else {
                    if seen.is_empty() {
                        // Interrupted before anything was read: start again.
                        continue 'read;
                    }
                    return Err(Stop::Fail(Error::Unavailable {
                        reason: "the snapshot read was interrupted".into(),
                    }));
                };
                remaining -= 1;
                if !seen.insert(raw.subject.clone()) {
                    break;
                }
                end = end.max(raw.sequence);
                if let Some(event) = decode_stored(raw) {
                    if self.matcher.matches(&event) && !self.matcher.is_tombstone(&event) {
                        self.deliver(event).await?;
                    }
                }
            }
            break;
        }
        self.cursor = end + 1;
        self.send(Item::SnapshotEnd { sequence: end }).await
    }

    fn on_control(&mut self, c: Control) {
        // Shared-path subscriptions acknowledge as sent; only credit matters.
        if let Control::Credit(n) = c {
            self.window.release(n as usize);
        }
    }

    /// Sends one delivery, waiting for a window permit first.
    async fn deliver(&mut self, event: Arc<StoredEvent>) -> Result<(), Stop> {
        if self.window.available() == 0 {
            let mut outage_rx = self.shared.outage.clone();
            loop {
                tokio::select! {
                    () = self.window.acquire() => break,
                    Some(c) = self.control.recv() => self.on_control(c),
                    () = outage(&mut outage_rx) => return Err(lost()),
                    () = self.shared.shutdown.cancelled() => return Err(Stop::Quiet),
                    () = self.tx.closed() => return Err(Stop::Quiet),
                }
            }
        } else {
            self.window.acquire().await;
        }
        self.send(Item::Delivery {
            event,
            delivery_count: 1,
        })
        .await
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

    async fn send(&mut self, item: Item) -> Result<(), Stop> {
        tokio::select! {
            r = self.tx.send(Ok(item)) => r.map_err(|_| Stop::Quiet),
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
