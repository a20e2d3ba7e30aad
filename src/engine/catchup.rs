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
use tokio::sync::Semaphore;

use super::{decode_stored, StoredEvent};
use crate::store::{Store, StoreError};

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
}

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
    Hit(Arc<Block>),
    Wait(Shared<BoxFuture<'static, Loaded>>),
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
}

impl Catchup {
    pub(crate) fn new(stream: String, store: Store, limits: Limits) -> Arc<Catchup> {
        Arc::new(Catchup {
            stream,
            store,
            reads: limits.reads,
            batch: limits.batch.max(1) as u64,
            read_bytes: limits.read_bytes,
            cache_bytes: limits.cache_bytes,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// A block of every subject that covers `cursor`, shared with other subscribers.
    pub(crate) async fn shared(self: &Arc<Self>, cursor: u64) -> Result<Arc<Block>, StoreError> {
        if self.cache_bytes == 0 {
            return self.read(cursor, None).await.map(Arc::new);
        }
        loop {
            let wait = match self.lookup(cursor) {
                Lookup::Hit(block) => return Ok(block),
                Lookup::Wait(read) => read,
            };
            match wait.await {
                Ok(block) if block.covers(cursor) || block.exhausted => return Ok(block),
                // A short block (bounded by bytes) that ends before the cursor: look again.
                Ok(_) => {}
                Err(e) => {
                    return Err(match &*e {
                        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
                        other => StoreError::Api(other.to_string()),
                    })
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

    /// Bytes held by the cache.
    pub(crate) fn cached_bytes(&self) -> usize {
        self.cache.lock().bytes
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
                    return Lookup::Wait(read.clone())
                }
                Slot::Loading(_) => {}
            }
        }
        if let Some(Slot::Loading(read)) = cache.slots.get(&start) {
            return Lookup::Wait(read.clone());
        }
        let this = self.clone();
        let read = async move { this.load(start).await }.boxed().shared();
        cache.put(start, Some(Slot::Loading(read.clone())));
        Lookup::Wait(read)
    }

    /// Reads the shared block at `start` and files it in the cache.
    async fn load(self: Arc<Self>, start: u64) -> Loaded {
        let result = self.read(start, None).await;
        let mut cache = self.cache.lock();
        match result {
            // Nothing stored from `start`: nothing worth keeping.
            Ok(block) if block.end == block.start => {
                cache.put(start, None);
                Ok(Arc::new(block))
            }
            Ok(block) => {
                let block = Arc::new(block);
                cache.clock += 1;
                let used = cache.clock;
                cache.put(
                    start,
                    Some(Slot::Ready {
                        block: block.clone(),
                        used,
                    }),
                );
                evict(&mut cache, self.cache_bytes, start);
                Ok(block)
            }
            Err(e) => {
                cache.put(start, None);
                Err(Arc::new(e))
            }
        }
    }

    /// One history read within the budget, decoded.
    async fn read(&self, from: u64, subject: Option<&str>) -> Result<Block, StoreError> {
        let _permit = self
            .reads
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the gateway is shutting down".into()))?;
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
    /// Puts `slot` at `key` (removes what is there when `None`), keeping `bytes` true.
    fn put(&mut self, key: u64, slot: Option<Slot>) {
        let old = match slot {
            Some(slot) => {
                if let Slot::Ready { block, .. } = &slot {
                    self.bytes += block.bytes;
                }
                self.slots.insert(key, slot)
            }
            None => self.slots.remove(&key),
        };
        if let Some(Slot::Ready { block, .. }) = old {
            self.bytes -= block.bytes;
        }
    }
}

/// Drops least recently used ready blocks until the cache fits `max` (the block at `keep`,
/// just read, stays even when alone larger than `max`).
fn evict(cache: &mut Cache, max: usize, keep: u64) {
    while cache.bytes > max {
        let oldest = cache
            .slots
            .iter()
            .filter_map(|(&k, s)| match s {
                Slot::Ready { used, .. } if k != keep => Some((*used, k)),
                _ => None,
            })
            .min();
        let Some((_, key)) = oldest else { return };
        cache.put(key, None);
    }
}
