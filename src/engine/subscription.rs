//! One ephemeral subscription's task: a cursor moving through the stream.
//!
//! The loop reads the hub's ring from the cursor; when the cursor is before the ring's start
//! it catches up with its own JetStream read, narrowed to the subscription's subjects, until
//! the read reaches the ring again. The cursor only ever moves past a sequence once that
//! sequence has been delivered (or did not match, or does not exist), so switching between the
//! ring and a catch-up read can neither skip nor repeat an event.
//!
//! Backpressure: the task sends into a channel whose capacity is the window; when the client
//! stops reading, the task stops too (holding at most a window of events) while the shared
//! reader and other subscribers go on. A task that falls behind the ring simply catches up
//! later.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::hub::{Hub, RingRead};
use super::{decode_stored, Item, StoredEvent};
use crate::error::Error;
use crate::store::{StartAt, Store, StoreError};

/// Everything a subscription task needs.
pub(super) struct Params {
    pub(super) id: String,
    pub(super) hub: Arc<Hub>,
    pub(super) store: Store,
    pub(super) subjects: Vec<String>,
    pub(super) cursor: u64,
    pub(super) heartbeat: Option<Duration>,
    pub(super) batch: usize,
    pub(super) tx: mpsc::Sender<Result<Item, Error>>,
    pub(super) shutdown: CancellationToken,
}

/// Why the loop stopped.
enum Stop {
    /// The client went away or the gateway is shutting down: nothing more to say.
    Quiet,
    /// End the stream with this error.
    Fail(Error),
}

impl From<StoreError> for Stop {
    fn from(e: StoreError) -> Stop {
        Stop::Fail(e.into())
    }
}

/// Starts the task.
pub(super) fn spawn(p: Params) {
    let span = tracing::info_span!("subscription", subscription.id = %p.id, stream = %p.hub.stream);
    tokio::spawn(
        async move {
            let tx = p.tx.clone();
            let mut task = Task::new(p);
            tracing::debug!(cursor = task.cursor, "subscription started");
            if let Err(Stop::Fail(e)) = task.run().await {
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
    store: Store,
    subjects: Vec<String>,
    /// The next sequence this subscription wants.
    cursor: u64,
    heartbeat: Option<Duration>,
    next_bookmark: Option<Instant>,
    batch: usize,
    tx: mpsc::Sender<Result<Item, Error>>,
    shutdown: CancellationToken,
}

impl Task {
    fn new(p: Params) -> Task {
        Task {
            _guard: p.hub.enter(),
            hub: p.hub,
            store: p.store,
            subjects: p.subjects,
            cursor: p.cursor,
            heartbeat: p.heartbeat,
            next_bookmark: p.heartbeat.map(|h| Instant::now() + h),
            batch: p.batch,
            tx: p.tx,
            shutdown: p.shutdown,
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
                        () = self.shutdown.cancelled() => return Err(Stop::Quiet),
                        () = self.tx.closed() => return Err(Stop::Quiet),
                    }
                }
                RingRead::Events { .. } => {
                    for event in buf.drain(..) {
                        let sequence = event.sequence;
                        if self.matches(&event) {
                            self.send(Item::Delivery {
                                event,
                                delivery_count: 1,
                            })
                            .await?;
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

    /// Delivers everything matching in `[cursor, ring start)` from JetStream, then returns so
    /// the loop continues from the ring.
    async fn catch_up(&mut self) -> Result<(), Stop> {
        let target = self.hub.ring.read().start();
        tracing::debug!(cursor = self.cursor, target, "catching up from JetStream");
        let mut reader = self
            .store
            .read(
                &self.hub.stream,
                StartAt::Sequence(self.cursor),
                &self.subjects,
                self.batch,
            )
            .await?;
        if reader.initial_pending() == 0 {
            // Nothing matching exists from the cursor to the stream's end, which is at or
            // past the ring's start: continue from the ring.
            self.cursor = self.cursor.max(target);
            return Ok(());
        }
        loop {
            let next = tokio::select! {
                m = reader.next() => m,
                () = self.shutdown.cancelled() => return Err(Stop::Quiet),
                () = self.tx.closed() => return Err(Stop::Quiet),
            };
            let raw = match next {
                Some(r) => r?,
                None => {
                    return Err(Stop::Fail(Error::Unavailable {
                        reason: "the catch-up read ended".into(),
                    }))
                }
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
                if self.matches(&event) {
                    self.send(Item::Delivery {
                        event,
                        delivery_count: 1,
                    })
                    .await?;
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

    fn matches(&self, event: &StoredEvent) -> bool {
        self.subjects.is_empty()
            || self
                .subjects
                .iter()
                .any(|p| crate::wildcard::matches(p, &event.subject))
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
            () = self.shutdown.cancelled() => Err(Stop::Quiet),
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
