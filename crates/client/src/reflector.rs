//! [`Reflector`]: the current state of every matching resource, kept up to date.
//!
//! It watches from a snapshot (the last event of every resource), then applies every change:
//! an event replaces its resource's entry, a deletion removes it. Readers consult the map while
//! it runs. After a disconnect it resumes where it was (the [`Watcher`] guarantees no gap and
//! no duplicate); when its position has expired from the stream it takes a new snapshot and
//! swaps the map only once that snapshot is complete, so readers never see a half-built state.
//!
//! With a checkpoint file ([`ReflectorOptions::checkpoint_file`]) it stores its map and the
//! sequence the map reflects every [`ReflectorOptions::checkpoint_interval`] (and on
//! [`Reflector::save_checkpoint`]); a reflector started on that file later resumes from the
//! stored position instead of taking a snapshot: a large cache restarts without reading every
//! resource again. A checkpoint whose position has expired from the stream falls back to a
//! snapshot; an unreadable one is reported and ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::connection::{ClientError, Connection};
use crate::convert::{event_from_pb, event_to_pb, timestamp_from_pb, timestamp_to_pb};
use crate::event::Event;
use crate::pb::jetwatch::v1 as api;
use crate::watcher::{ExpiredPolicy, StartFrom, WatchItem, WatchOptions, Watcher};

/// Decides whether an event deletes its resource.
pub type DeletionRule = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

/// What a [`Reflector`] reflects.
#[derive(Clone)]
pub struct ReflectorOptions {
    /// The stream, subjects and filters (`from` and `on_expired` are the reflector's own:
    /// a snapshot, and a new snapshot when the position expired).
    pub watch: WatchOptions,
    /// Which events delete their resource. The default: a `type` ending in `.deleted`
    /// (ignoring case), the convention of the gateway's example `tombstone` setting; use the
    /// same rule as the stream's `tombstone` so that snapshots and changes agree.
    pub is_deletion: DeletionRule,
    /// Where to keep a checkpoint of the map and its position (none by default). Written
    /// whole through a temporary file and a rename, so a crash leaves the previous one.
    pub checkpoint_file: Option<PathBuf>,
    /// How often the checkpoint is written when the map has changed (default 10 s).
    pub checkpoint_interval: Duration,
}

impl std::fmt::Debug for ReflectorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectorOptions")
            .field("watch", &self.watch)
            .field("checkpoint_file", &self.checkpoint_file)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .finish_non_exhaustive()
    }
}

impl Default for ReflectorOptions {
    fn default() -> ReflectorOptions {
        ReflectorOptions {
            watch: WatchOptions::default(),
            is_deletion: Arc::new(|e: &Event| e.ty.to_ascii_lowercase().ends_with(".deleted")),
            checkpoint_file: None,
            checkpoint_interval: Duration::from_secs(10),
        }
    }
}

/// One resource's current state: its last event.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The NATS subject that names the resource.
    pub subject: String,
    /// The stream sequence of its last event.
    pub sequence: u64,
    /// When that event was stored.
    pub stored_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The event.
    pub event: Arc<Event>,
}

/// Where the reflector is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Progress {
    /// Before the first complete snapshot.
    Starting,
    /// The map reflects the stream up to this sequence.
    At(u64),
    /// The watch failed for good.
    Failed(String),
}

#[derive(Debug)]
struct Shared {
    resources: RwLock<HashMap<String, Resource>>,
    progress: watch::Sender<Progress>,
    /// The checkpoint's sequence this reflector resumed from (0: it took a snapshot).
    resumed_from: AtomicU64,
    checkpoint_file: Option<PathBuf>,
    /// Serialises checkpoint writes.
    checkpoint_lock: tokio::sync::Mutex<()>,
}

/// A map of the current state of every matching resource, kept up to date by a background
/// task until dropped. Cloning gives another handle on the same map.
#[derive(Debug, Clone)]
pub struct Reflector {
    shared: Arc<Shared>,
    task: Arc<TaskGuard>,
}

/// Stops the background task when the last handle goes.
#[derive(Debug)]
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Reflector {
    /// Starts reflecting `options` through `conn` (on the current tokio runtime).
    pub fn start(conn: impl Into<Connection>, options: ReflectorOptions) -> Reflector {
        let (progress, _) = watch::channel(Progress::Starting);
        let shared = Arc::new(Shared {
            resources: RwLock::new(HashMap::new()),
            progress,
            resumed_from: AtomicU64::new(0),
            checkpoint_file: options.checkpoint_file.clone(),
            checkpoint_lock: tokio::sync::Mutex::new(()),
        });
        let task = tokio::spawn(run(conn.into(), options, shared.clone()));
        Reflector {
            shared,
            task: Arc::new(TaskGuard(task)),
        }
    }

    /// Waits until the first snapshot is complete (the map holds every resource), or returns
    /// the error that ended the watch.
    pub async fn wait_until_ready(&self) -> Result<(), ClientError> {
        self.wait_for(|p| !matches!(p, Progress::Starting)).await
    }

    /// Waits until the map reflects the stream at least up to `sequence` (e.g. a sequence a
    /// publish returned: read your own writes).
    pub async fn wait_for_sequence(&self, sequence: u64) -> Result<(), ClientError> {
        self.wait_for(|p| matches!(p, Progress::At(s) if *s >= sequence))
            .await
    }

    async fn wait_for(&self, done: impl Fn(&Progress) -> bool) -> Result<(), ClientError> {
        let mut rx = self.shared.progress.subscribe();
        let progress = rx
            .wait_for(|p| done(p) || matches!(p, Progress::Failed(_)))
            .await
            .map_err(|_| ClientError::Protocol("the reflector stopped".into()))?
            .clone();
        match progress {
            Progress::Failed(e) => Err(ClientError::Protocol(format!("the reflector failed: {e}"))),
            _ => Ok(()),
        }
    }

    /// The stream sequence the map reflects, once ready.
    pub fn sequence(&self) -> Option<u64> {
        match &*self.shared.progress.borrow() {
            Progress::At(s) => Some(*s),
            _ => None,
        }
    }

    /// The checkpoint position this reflector resumed from, if it started from a checkpoint
    /// rather than a snapshot.
    pub fn resumed_from(&self) -> Option<u64> {
        Some(self.shared.resumed_from.load(Ordering::Relaxed)).filter(|s| *s > 0)
    }

    /// Writes the checkpoint now (with [`ReflectorOptions::checkpoint_file`]; otherwise
    /// nothing), e.g. before the application exits.
    pub async fn save_checkpoint(&self) -> std::io::Result<()> {
        save_checkpoint(&self.shared).await
    }

    /// The resource named by this NATS subject.
    pub fn get(&self, subject: &str) -> Option<Resource> {
        self.shared.resources.read().get(subject).cloned()
    }

    /// Every resource, in no particular order.
    pub fn list(&self) -> Vec<Resource> {
        self.shared.resources.read().values().cloned().collect()
    }

    /// How many resources there are.
    pub fn len(&self) -> usize {
        self.shared.resources.read().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the background task has ended (after a failure; see [`Self::wait_until_ready`]).
    pub fn is_finished(&self) -> bool {
        self.task.0.is_finished()
    }
}

/// The background task: applies the watch to the map until it fails.
async fn run(conn: Connection, options: ReflectorOptions, shared: Arc<Shared>) {
    let mut watch = options.watch.clone();
    watch.on_expired = ExpiredPolicy::Resnapshot;
    watch.from = StartFrom::Snapshot;
    // A snapshot being collected: swapped in whole at its end.
    let mut building: Option<HashMap<String, Resource>> = Some(HashMap::new());
    if let Some(path) = &options.checkpoint_file {
        match load_checkpoint(path).await {
            Ok(Some((sequence, resources))) => {
                *shared.resources.write() = resources;
                shared.resumed_from.store(sequence, Ordering::Relaxed);
                shared.progress.send_replace(Progress::At(sequence));
                watch.from = StartFrom::Sequence(sequence + 1);
                building = None;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(
                path = %path.display(), error = %e,
                "the reflector's checkpoint cannot be read; taking a snapshot"
            ),
        }
    }
    let mut watcher = Watcher::watch(conn, &watch);
    let is_deletion = options.is_deletion;
    let mut ticks =
        tokio::time::interval(options.checkpoint_interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut saved_at = shared.progress.borrow().clone();
    loop {
        let item = tokio::select! {
            item = watcher.next() => item,
            _ = ticks.tick(), if shared.checkpoint_file.is_some() => {
                let now = shared.progress.borrow().clone();
                if now != saved_at && matches!(now, Progress::At(_)) {
                    if let Err(e) = save_checkpoint(&shared).await {
                        tracing::warn!(error = %e, "cannot write the reflector's checkpoint");
                    }
                    saved_at = now;
                }
                continue;
            }
        };
        let item = match item {
            Ok(item) => item,
            Err(e) => {
                shared
                    .progress
                    .send_replace(Progress::Failed(e.to_string()));
                return;
            }
        };
        match item {
            WatchItem::Delivery {
                sequence,
                subject,
                stored_at,
                event,
                ..
            } => {
                let deleted = is_deletion(&event);
                let resource = Resource {
                    subject: subject.clone(),
                    sequence,
                    stored_at,
                    event: Arc::from(event),
                };
                match &mut building {
                    Some(map) => apply(map, resource, deleted),
                    None => {
                        apply(&mut shared.resources.write(), resource, deleted);
                        shared.progress.send_replace(Progress::At(sequence));
                    }
                }
            }
            WatchItem::SnapshotEnd { sequence } => {
                if let Some(map) = building.take() {
                    *shared.resources.write() = map;
                }
                shared.progress.send_replace(Progress::At(sequence));
            }
            WatchItem::Bookmark { sequence, .. } if building.is_none() => {
                shared.progress.send_if_modified(|p| match p {
                    Progress::At(s) if *s < sequence => {
                        *s = sequence;
                        true
                    }
                    _ => false,
                });
            }
            // A snapshot starts (again, after an expired position or an interrupted
            // snapshot): collect it from scratch.
            WatchItem::Restarted { .. } => building = Some(HashMap::new()),
            WatchItem::Opened { .. } if building.is_some() => building = Some(HashMap::new()),
            WatchItem::Bookmark { .. }
            | WatchItem::Opened { .. }
            | WatchItem::Disconnected { .. } => {}
        }
    }
}

/// The first bytes of a checkpoint file.
const CHECKPOINT_MAGIC: &[u8] = b"jetwatch reflector checkpoint v1\n";

/// Writes the map and its position: the magic line, a `Bookmark` with the sequence, then one
/// `Delivery` per resource, each length-delimited protobuf (the API's own messages).
async fn save_checkpoint(shared: &Shared) -> std::io::Result<()> {
    use prost::Message;
    let Some(path) = shared.checkpoint_file.clone() else {
        return Ok(());
    };
    let _one_at_a_time = shared.checkpoint_lock.lock().await;
    // The position and the map are read under the map's lock, so they agree.
    let bytes = {
        let resources = shared.resources.read();
        let Progress::At(sequence) = *shared.progress.borrow() else {
            return Ok(());
        };
        let mut buf = Vec::with_capacity(64 + resources.len() * 256);
        buf.extend_from_slice(CHECKPOINT_MAGIC);
        api::Bookmark {
            sequence,
            pending: resources.len() as u64,
        }
        .encode_length_delimited(&mut buf)
        .map_err(std::io::Error::other)?;
        for r in resources.values() {
            api::Delivery {
                event: Some(event_to_pb(&r.event)),
                sequence: r.sequence,
                subject: r.subject.clone(),
                delivery_count: 1,
                stored_at: r.stored_at.as_ref().map(timestamp_to_pb),
            }
            .encode_length_delimited(&mut buf)
            .map_err(std::io::Error::other)?;
        }
        buf
    };
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, &path).await
}

/// Reads a checkpoint: its sequence and resources, or `None` when there is no file.
async fn load_checkpoint(path: &Path) -> std::io::Result<Option<(u64, HashMap<String, Resource>)>> {
    use prost::Message;
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let invalid = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    let mut buf = bytes
        .strip_prefix(CHECKPOINT_MAGIC)
        .ok_or_else(|| invalid("not a reflector checkpoint".into()))?;
    let head = api::Bookmark::decode_length_delimited(&mut buf)
        .map_err(|e| invalid(format!("position: {e}")))?;
    let mut resources =
        HashMap::with_capacity(usize::try_from(head.pending).unwrap_or(0).min(1 << 20));
    while !buf.is_empty() {
        let d = api::Delivery::decode_length_delimited(&mut buf)
            .map_err(|e| invalid(format!("resource: {e}")))?;
        let event = d
            .event
            .ok_or_else(|| invalid("a resource without an event".into()))?;
        let event = event_from_pb(event, "event").map_err(|e| invalid(e.to_string()))?;
        resources.insert(
            d.subject.clone(),
            Resource {
                subject: d.subject,
                sequence: d.sequence,
                stored_at: d.stored_at.as_ref().and_then(timestamp_from_pb),
                event: Arc::new(event),
            },
        );
    }
    if resources.len() as u64 != head.pending {
        return Err(invalid(format!(
            "{} resources where {} were written",
            resources.len(),
            head.pending
        )));
    }
    Ok(Some((head.sequence, resources)))
}

fn apply(map: &mut HashMap<String, Resource>, resource: Resource, deleted: bool) {
    if deleted {
        map.remove(&resource.subject);
    } else {
        map.insert(resource.subject.clone(), resource);
    }
}
