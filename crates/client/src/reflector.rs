//! [`Reflector`]: the current state of every matching resource, kept up to date.
//!
//! It watches from a snapshot (the last event of every resource), then applies every change:
//! an event replaces its resource's entry, a deletion removes it. Readers consult the map while
//! it runs. After a disconnect it resumes where it was (the [`Watcher`] guarantees no gap and
//! no duplicate); when its position has expired from the stream it takes a new snapshot and
//! swaps the map only once that snapshot is complete, so readers never see a half-built state.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::connection::{ClientError, Connection};
use crate::event::Event;
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
}

impl std::fmt::Debug for ReflectorOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReflectorOptions")
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl Default for ReflectorOptions {
    fn default() -> ReflectorOptions {
        ReflectorOptions {
            watch: WatchOptions::default(),
            is_deletion: Arc::new(|e: &Event| e.ty.to_ascii_lowercase().ends_with(".deleted")),
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
        });
        let mut watch = options.watch.clone();
        watch.from = StartFrom::Snapshot;
        watch.on_expired = ExpiredPolicy::Resnapshot;
        let watcher = Watcher::watch(conn, &watch);
        let task = tokio::spawn(run(watcher, options.is_deletion, shared.clone()));
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
async fn run(mut watcher: Watcher, is_deletion: DeletionRule, shared: Arc<Shared>) {
    // A snapshot being collected: swapped in whole at its end.
    let mut building: Option<HashMap<String, Resource>> = Some(HashMap::new());
    loop {
        let item = match watcher.next().await {
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

fn apply(map: &mut HashMap<String, Resource>, resource: Resource, deleted: bool) {
    if deleted {
        map.remove(&resource.subject);
    } else {
        map.insert(resource.subject.clone(), resource);
    }
}
