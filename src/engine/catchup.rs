//! History reads for subscribers behind the shared history ring.
//!
//! A subscriber whose cursor is before the ring's start reads the stream's history through
//! [`Catchup`], one block at a time, until it reaches the ring again. Blocks come from
//! batched direct gets ([`Store::read_range`]): no JetStream consumer is created, however many
//! subscribers are behind, and each block is verified (see `store::direct`), so a subscriber
//! moves its cursor over a block's range knowing it saw every stored message in it.
//!
//! - **Shared blocks.** Subscribers without a subject pattern to push down read blocks of
//!   every subject, aligned to `fanout.batch` sequences, through a per-stream cache bounded by
//!   `fanout.catchup_cache_bytes` (least recently used out first). Subscribers catching up
//!   over the same range (the common case after a burst: hundreds of watchers fall behind
//!   together) share one read and one decode per block; a block being read is awaited by
//!   everyone who needs it, never read twice at once.
//! - **Filtered reads.** A subscriber with exactly one subject pattern reads only that
//!   pattern's messages (pushed down to JetStream), for itself, unless a cached shared block
//!   already covers its cursor.
//! - **Budget.** Every read, shared or filtered, first takes a permit from one gateway-wide
//!   semaphore of `fanout.catchup_reads` permits (tokio's semaphore is fair: first come,
//!   first served), and asks for at most `fanout.read_bytes`. So the history bytes in
//!   flight on the NATS connection are bounded whatever the number of subscribers behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{decode_stored, StoredEvent};
use crate::store::{Reader, StartAt, Store, StoreError};
use crate::telemetry::StreamGauges;

/// A verified run of a stream's history, decoded.
#[derive(Debug)]
pub(crate) struct Block {
    /// Events in sequence order (messages that are not CloudEvents are left out).
    pub(crate) events: Vec<Arc<StoredEvent>>,
    /// Every stored message of the read (on its subject pattern, if any) with a sequence in
    /// `[start, end)` was read.
    pub(crate) start: u64,
    /// See `start`.
    pub(crate) end: u64,
    /// The answering replica had nothing after `end` (a hint; see [`Store::read_range`]).
    pub(crate) exhausted: bool,
    /// Memory held, counted like the ring's entries.
    bytes: usize,
}

impl Block {
    /// The events at or after `cursor`.
    pub(crate) fn from(&self, cursor: u64) -> &[Arc<StoredEvent>] {
        let first = self.events.partition_point(|e| e.sequence < cursor);
        &self.events[first..]
    }

    fn covers(&self, cursor: u64) -> bool {
        self.start <= cursor && cursor < self.end
    }
}

/// Blocks read ahead of a subscriber catching up through shared blocks.
const READ_AHEAD: usize = 2;

/// What a shared read ends with, cloneable so every waiter gets it.
type Loaded = Result<Arc<Block>, Arc<StoreError>>;

/// One stream's history reads and shared block cache.
#[derive(Debug)]
pub(crate) struct Catchup {
    stream: String,
    store: Store,
    /// Gateway-wide permits for reads in flight.
    reads: Arc<Semaphore>,
    /// Messages per read; shared blocks start at multiples of it.
    batch: u64,
    /// Largest answer per read.
    read_bytes: usize,
    /// Bound of the cache (0: no sharing).
    cache_bytes: usize,
    cache: Mutex<Cache>,
    /// Gateway-wide permits for history-read consumers.
    consumers: Arc<Semaphore>,
    /// Consumers kept between blocks.
    idle: Mutex<Vec<Idle>>,
    /// How long a read may stay silent.
    timeout: Duration,
    /// The stream's gauges (cache bytes).
    gauges: Arc<StreamGauges>,
}

/// A history-read consumer kept between blocks, positioned at `next`.
struct Idle {
    /// The first sequence it can deliver next: every message before it was read.
    next: u64,
    reader: Reader,
    /// Its share of the consumer budget.
    permit: OwnedSemaphorePermit,
    used: std::time::Instant,
}

impl std::fmt::Debug for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idle").field("next", &self.next).finish()
    }
}

/// How long a history-read consumer stays idle before it is let go.
const IDLE_READER: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
struct Cache {
    /// Blocks by start sequence.
    slots: BTreeMap<u64, Slot>,
    /// Bytes of the ready blocks.
    bytes: usize,
    /// Advances on every use, for least-recently-used eviction.
    clock: u64,
}

enum Slot {
    /// Being read; every subscriber that needs it awaits the same read.
    Loading(Shared<BoxFuture<'static, Loaded>>),
    /// Read, with the clock of its last use.
    Ready { block: Arc<Block>, used: u64 },
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slot::Loading(_) => f.write_str("Loading"),
            Slot::Ready { block, used } => f
                .debug_struct("Ready")
                .field("start", &block.start)
                .field("end", &block.end)
                .field("used", used)
                .finish(),
        }
    }
}

/// What the cache says about a cursor.
enum Lookup {
    /// A ready block covers it.
    Hit(Arc<Block>),
    /// A read will: one already on its way, or (`started`) one started by this lookup.
    Wait {
        read: Shared<BoxFuture<'static, Loaded>>,
        started: bool,
    },
}

/// Limits of one stream's history reads.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Gateway-wide permits for reads in flight.
    pub(crate) reads: Arc<Semaphore>,
    /// Messages per read.
    pub(crate) batch: usize,
    /// Largest answer per read.
    pub(crate) read_bytes: usize,
    /// Bound of the shared block cache.
    pub(crate) cache_bytes: usize,
    /// Gateway-wide permits for history-read consumers.
    pub(crate) consumers: Arc<Semaphore>,
    /// How long a read may stay silent.
    pub(crate) timeout: Duration,
}

impl Catchup {
    pub(crate) fn new(
        stream: String,
        store: Store,
        limits: Limits,
        gauges: Arc<StreamGauges>,
    ) -> Arc<Catchup> {
        Arc::new(Catchup {
            stream,
            store,
            reads: limits.reads,
            batch: limits.batch.max(1) as u64,
            read_bytes: limits.read_bytes,
            cache_bytes: limits.cache_bytes,
            cache: Mutex::new(Cache::default()),
            consumers: limits.consumers,
            idle: Mutex::new(Vec::new()),
            timeout: limits.timeout,
            gauges,
        })
    }

    /// A block of every subject that covers `cursor`, shared with other subscribers. The
    /// blocks after it, up to [`READ_AHEAD`] of them and not past `until` (where the shared
    /// history starts), are read in the background meanwhile, so a subscriber catching up alone
    /// never waits for a round trip per block.
    pub(crate) async fn shared(
        self: &Arc<Self>,
        cursor: u64,
        until: u64,
    ) -> Result<Arc<Block>, StoreError> {
        if self.cache_bytes == 0 {
            return self.read(cursor, None).await.map(Arc::new);
        }
        loop {
            let wait = match self.lookup(cursor) {
                Lookup::Hit(block) => {
                    self.read_ahead(block.end, until);
                    return Ok(block);
                }
                Lookup::Wait { read, .. } => read,
            };
            match wait.await {
                Ok(block) if block.covers(cursor) || block.exhausted => {
                    if !block.exhausted {
                        self.read_ahead(block.end, until);
                    }
                    return Ok(block);
                }
                // A short block (bounded by bytes) that ends before the cursor: look again.
                Ok(_) => {}
                Err(e) => {
                    // Every waiter gets its own copy of the shared read's failure.
                    return Err(if e.is_transient() {
                        StoreError::unavailable(e.to_string())
                    } else {
                        StoreError::Api {
                            context: "a shared history read".into(),
                            source: e.to_string().into(),
                        }
                    });
                }
            }
        }
    }

    /// The messages on `subject` from `cursor`, read for one subscriber (or a cached shared
    /// block, when one covers `cursor`).
    pub(crate) async fn filtered(
        &self,
        cursor: u64,
        subject: &str,
    ) -> Result<Arc<Block>, StoreError> {
        if let Some(block) = self.cached(cursor) {
            return Ok(block);
        }
        self.read(cursor, Some(subject)).await.map(Arc::new)
    }

    fn cached(&self, cursor: u64) -> Option<Arc<Block>> {
        let mut cache = self.cache.lock();
        cache.clock += 1;
        let clock = cache.clock;
        match cache.slots.range_mut(..=cursor).next_back() {
            Some((_, Slot::Ready { block, used })) if block.covers(cursor) => {
                *used = clock;
                Some(block.clone())
            }
            _ => None,
        }
    }

    /// Starts background reads of the blocks from `from` on, up to [`READ_AHEAD`] blocks and
    /// not past `until`. Each counts against the read budget like any other.
    fn read_ahead(self: &Arc<Self>, mut from: u64, until: u64) {
        for _ in 0..READ_AHEAD {
            if from >= until {
                return;
            }
            match self.lookup(from) {
                Lookup::Hit(block) => from = block.end,
                Lookup::Wait { read, started } => {
                    if started {
                        // Nobody awaits it yet: a task drives it.
                        tokio::spawn(read);
                    }
                    // The block's end is unknown until it is read: assume a full one.
                    from = from - from % self.batch + self.batch;
                }
            }
        }
    }

    /// Finds the block covering `cursor`, or the read that will, starting one if needed.
    fn lookup(self: &Arc<Self>, cursor: u64) -> Lookup {
        let mut cache = self.cache.lock();
        cache.clock += 1;
        let clock = cache.clock;
        let aligned = cursor - cursor % self.batch;
        let mut start = aligned;
        if let Some((&key, slot)) = cache.slots.range_mut(..=cursor).next_back() {
            match slot {
                Slot::Ready { block, used } if block.covers(cursor) => {
                    *used = clock;
                    return Lookup::Hit(block.clone());
                }
                // A block that ends before the cursor: read on from its end.
                Slot::Ready { block, .. } => start = start.max(block.end),
                // A read of this range is on its way.
                Slot::Loading(read) if cursor < key + self.batch => {
                    return Lookup::Wait {
                        read: read.clone(),
                        started: false,
                    }
                }
                Slot::Loading(_) => {}
            }
        }
        if let Some(Slot::Loading(read)) = cache.slots.get(&start) {
            return Lookup::Wait {
                read: read.clone(),
                started: false,
            };
        }
        let this = self.clone();
        let read = async move { this.load(start).await }.boxed().shared();
        cache.put(start, Some(Slot::Loading(read.clone())));
        Lookup::Wait {
            read,
            started: true,
        }
    }

    /// Reads the shared block at `start` and files it in the cache.
    async fn load(self: Arc<Self>, start: u64) -> Loaded {
        let running = crate::telemetry::InProgress::new(&self.gauges.catchup_reads);
        let result = self.read_block(start).await;
        drop(running);
        let mut cache = self.cache.lock();
        let mut evicted = Vec::new();
        let loaded = match result {
            // Nothing stored from `start`: nothing worth keeping.
            Ok(block) if block.end == block.start => {
                evicted.extend(cache.put(start, None));
                Ok(Arc::new(block))
            }
            Ok(block) => {
                let block = Arc::new(block);
                cache.clock += 1;
                let used = cache.clock;
                evicted.extend(cache.put(
                    start,
                    Some(Slot::Ready {
                        block: block.clone(),
                        used,
                    }),
                ));
                evicted.extend(evict(&mut cache, self.cache_bytes, start));
                Ok(block)
            }
            Err(e) => {
                evicted.extend(cache.put(start, None));
                Err(Arc::new(e))
            }
        };
        self.gauges.catchup_cache_bytes.set(cache.bytes as i64);
        drop(cache);
        drop(evicted);
        loaded
    }

    /// Reads the shared block at `start`: with a consumer already positioned there, else with
    /// a new one while the consumer budget allows (taking over the least recently used idle
    /// one if it must), else with a direct get.
    ///
    /// Sequential reads are what catching up is, and a consumer serves them at a fraction of
    /// a direct get's server cost (a direct get rewrites each message's headers); a consumer
    /// kept between blocks also reads ahead. Direct gets remain for when the budget is spent.
    async fn read_block(self: &Arc<Self>, start: u64) -> Result<Block, StoreError> {
        let (reader, permit) = match self.positioned_reader(start) {
            Some(idle) => (idle.reader, idle.permit),
            None => {
                let permit = match self.consumers.clone().try_acquire_owned() {
                    Ok(permit) => Some(permit),
                    Err(_) => match self.least_recent_reader() {
                        // Its consumer is gone before the permit serves another.
                        Some(idle) => {
                            idle.reader.close().await;
                            Some(idle.permit)
                        }
                        None => None,
                    },
                };
                let Some(permit) = permit else {
                    return self.read(start, None).await;
                };
                let reader = self
                    .store
                    .read(
                        &self.stream,
                        StartAt::Sequence(start),
                        &[],
                        self.batch as usize,
                        self.read_bytes,
                    )
                    .await?;
                (reader, permit)
            }
        };
        self.read_with(start, reader, permit).await
    }

    /// Reads one block from `reader`, which delivers the first message at or after `start`
    /// next, and keeps the reader for the following block when it can go on.
    async fn read_with(
        self: &Arc<Self>,
        start: u64,
        mut reader: Reader,
        permit: OwnedSemaphorePermit,
    ) -> Result<Block, StoreError> {
        let _read = self
            .reads
            .acquire()
            .await
            .map_err(|_| StoreError::unavailable("the gateway is shutting down"))?;
        // Each message is decoded as it arrives, not after the block: the same work, done
        // while the next messages are on their way. A loop that only gathered them drained
        // the client's channel faster than the connection filled it, and waited (a wake-up
        // from another thread) for nearly every message.
        let mut events = Vec::new();
        let mut taken = 0;
        let mut last = None;
        let mut bytes = 0;
        let mut pending = reader.pending();
        let mut failure = None;
        while taken < self.batch && bytes < self.read_bytes && pending > 0 {
            match tokio::time::timeout(self.timeout, reader.next()).await {
                Ok(Some(Ok(raw))) => {
                    pending = raw.pending;
                    bytes += raw.payload.len();
                    taken += 1;
                    last = Some(raw.sequence);
                    events.extend(decode_stored(raw));
                }
                Ok(Some(Err(e))) => {
                    failure = Some(e);
                    break;
                }
                Ok(None) | Err(_) => {
                    failure = Some(StoreError::unavailable(
                        "a history reader stopped answering",
                    ));
                    break;
                }
            }
        }
        let healthy = failure.is_none();
        if let (None, Some(e)) = (last, failure) {
            reader.close().await;
            drop(permit);
            return Err(e);
        }
        let end = last.map_or(start, |sequence| sequence + 1);
        let exhausted = healthy && pending == 0;
        if !healthy || exhausted {
            // The permit returns only once the consumer is gone.
            reader.close().await;
            drop(permit);
        } else {
            self.idle.lock().push(Idle {
                next: end,
                reader,
                permit,
                used: std::time::Instant::now(),
            });
            // Let it go if nobody reads on within the idle time.
            let this = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(IDLE_READER).await;
                let expired: Vec<Idle> = {
                    let mut idle = this.idle.lock();
                    let (keep, expired) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|r| r.used.elapsed() < IDLE_READER);
                    *idle = keep;
                    expired
                };
                for r in expired {
                    r.reader.close().await;
                }
            });
        }
        Ok(Block {
            bytes: events.iter().map(|e| e.size).sum(),
            events,
            start,
            end,
            exhausted,
        })
    }

    /// The idle reader positioned at `start`, if any (readers idle too long are let go).
    fn positioned_reader(&self, start: u64) -> Option<Idle> {
        let mut idle = self.idle.lock();
        let at = idle
            .iter()
            .position(|r| r.next == start && r.used.elapsed() < IDLE_READER)?;
        Some(idle.swap_remove(at))
    }

    /// The least recently used idle reader, to be replaced.
    fn least_recent_reader(&self) -> Option<Idle> {
        let mut idle = self.idle.lock();
        let at = idle
            .iter()
            .enumerate()
            .min_by_key(|(_, r)| r.used)
            .map(|(i, _)| i)?;
        Some(idle.swap_remove(at))
    }

    /// One history read within the budget, decoded.
    async fn read(&self, from: u64, subject: Option<&str>) -> Result<Block, StoreError> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| StoreError::unavailable("the gateway is shutting down"))?;
        let range = self
            .store
            .read_range(
                &self.stream,
                from,
                subject,
                self.batch as usize,
                self.read_bytes,
            )
            .await?;
        let events: Vec<Arc<StoredEvent>> = range
            .messages
            .into_iter()
            .filter_map(decode_stored)
            .collect();
        Ok(Block {
            bytes: events.iter().map(|e| e.size).sum(),
            events,
            start: from,
            end: range.end.max(from),
            exhausted: range.exhausted,
        })
    }
}

impl Cache {
    /// Puts `slot` at `key` (removes what is there when `None`), keeping `bytes` true; returns
    /// what was there, for the caller to drop (after the lock, when it may hold a block).
    fn put(&mut self, key: u64, slot: Option<Slot>) -> Option<Slot> {
        let old = match slot {
            Some(slot) => {
                if let Slot::Ready { block, .. } = &slot {
                    self.bytes += block.bytes;
                }
                self.slots.insert(key, slot)
            }
            None => self.slots.remove(&key),
        };
        if let Some(Slot::Ready { block, .. }) = &old {
            self.bytes -= block.bytes;
        }
        old
    }
}

/// Takes least recently used ready blocks out until the cache fits `max` (the block at `keep`,
/// just read, stays even when alone larger than `max`). The caller drops them once the cache's
/// lock is released: freeing a block's events (hundreds of allocations) would otherwise hold
/// every other catch-up waiting.
#[must_use]
fn evict(cache: &mut Cache, max: usize, keep: u64) -> Vec<Slot> {
    let mut evicted = Vec::new();
    while cache.bytes > max {
        let oldest = cache
            .slots
            .iter()
            .filter_map(|(&k, s)| match s {
                Slot::Ready { used, .. } if k != keep => Some((*used, k)),
                _ => None,
            })
            .min();
        let Some((_, key)) = oldest else { break };
        evicted.extend(cache.put(key, None));
    }
    evicted
}
