//! [`Watcher`]: a watch that survives disconnects.
//!
//! It reconnects after UNAVAILABLE (a lost gateway, a gateway shutting down, a lost NATS) or a
//! broken connection, with exponential backoff and jitter, and resumes from the last delivered
//! sequence or bookmark + 1, so its caller sees every matching event once, in order, across any
//! number of disconnects. When the resume point has expired from the stream it follows
//! [`WatchOptions::on_expired`]. Each of these is an item of the watch, so a caller can say
//! what happened ([`WatchItem::Disconnected`], [`WatchItem::Opened`] with `resumed`,
//! [`WatchItem::Restarted`]).
//!
//! A snapshot cannot resume half-way (its deliveries are not in sequence order): a disconnect
//! before [`WatchItem::SnapshotEnd`] takes the snapshot again from its start, and the next
//! [`WatchItem::Opened`] is not `resumed`. After the snapshot's end the watch resumes as any
//! other.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Code;

use crate::connection::{connect_to, ClientError, Connection};
use crate::convert::{event_from_pb, timestamp_from_pb, timestamp_to_pb};
use crate::event::Event;
use crate::pb::jetwatch::v1 as api;

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only events published from now on.
    #[default]
    New,
    /// Every retained event.
    Earliest,
    /// The current state of every resource, then changes.
    Snapshot,
    /// This stream sequence, inclusive.
    Sequence(u64),
    /// The first event stored at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `new`, `earliest`, `snapshot`, a sequence, or an RFC 3339 time.
    fn from_str(s: &str) -> Result<StartFrom, String> {
        Ok(match s {
            "new" => StartFrom::New,
            "earliest" => StartFrom::Earliest,
            "snapshot" => StartFrom::Snapshot,
            other => match other.parse::<u64>() {
                Ok(seq) => StartFrom::Sequence(seq),
                Err(_) => StartFrom::Time(
                    chrono::DateTime::parse_from_rfc3339(other)
                        .map_err(|_| {
                            format!(
                                "`{other}` is not new, earliest, snapshot, a sequence or an \
                                 RFC 3339 time"
                            )
                        })?
                        .with_timezone(&chrono::Utc),
                ),
            },
        })
    }
}

/// What a [`Watcher`] does when the position it starts or resumes from is older than the
/// stream's retained history (the gateway answers OUT_OF_RANGE `HISTORY_EXPIRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExpiredPolicy {
    /// Return the error: events were lost and the caller decides.
    #[default]
    Fail,
    /// Go on from the first retained event ([`WatchItem::Restarted`] says how far it jumped).
    FromEarliest,
    /// Start again with a snapshot of the current state ([`WatchItem::Restarted`], then the
    /// snapshot's deliveries and [`WatchItem::SnapshotEnd`]): what a cache must do.
    Resnapshot,
}

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// The stream; empty means the gateway's default stream.
    pub stream: String,
    /// NATS subject patterns; empty means all.
    pub subjects: Vec<String>,
    /// A CESQL filter.
    pub sql: Option<String>,
    /// Attributes that must equal these values (the `exact` filter); all filters given must
    /// match.
    pub exact: BTreeMap<String, String>,
    /// Attributes that must start with these values (the `prefix` filter).
    pub prefix: BTreeMap<String, String>,
    /// Where to start.
    pub from: StartFrom,
    /// A durable name, to keep the position in JetStream.
    pub durable: Option<String>,
    /// Acknowledge each delivery with [`Watcher::ack`] once it has been handled, instead of
    /// the gateway counting it as consumed when it sends it. With a durable, only what was
    /// acknowledged is consumed: deliveries received but not handled (a client that stops
    /// early or is interrupted) come back on the next open.
    pub explicit_acks: bool,
    /// The window: unacknowledged deliveries (explicit acks) or queued-but-unsent events;
    /// `None` uses the gateway's default.
    pub window: Option<u32>,
    /// Interval between bookmarks; `None` uses the gateway's default, zero disables them.
    pub heartbeat: Option<Duration>,
    /// What to do when the start or resume position has expired.
    pub on_expired: ExpiredPolicy,
}

impl WatchOptions {
    /// The filters given, all of which must match.
    fn filter(&self) -> Option<api::Filter> {
        use api::filter::Filter;
        let map = |m: &BTreeMap<String, String>| api::AttributeMap {
            attributes: m.clone().into_iter().collect(),
        };
        let mut filters: Vec<api::Filter> = Vec::new();
        if let Some(sql) = &self.sql {
            filters.push(api::Filter {
                filter: Some(Filter::Sql(sql.clone())),
            });
        }
        if !self.exact.is_empty() {
            filters.push(api::Filter {
                filter: Some(Filter::Exact(map(&self.exact))),
            });
        }
        if !self.prefix.is_empty() {
            filters.push(api::Filter {
                filter: Some(Filter::Prefix(map(&self.prefix))),
            });
        }
        match filters.len() {
            0 => None,
            1 => filters.pop(),
            _ => Some(api::Filter {
                filter: Some(Filter::All(api::FilterList { filters })),
            }),
        }
    }

    /// The `Open` request these options describe.
    pub fn to_open(&self) -> api::Open {
        api::Open {
            stream: self.stream.clone(),
            subjects: self.subjects.clone(),
            filter: self.filter(),
            start: Some(start_position(self.from)),
            durable: self.durable.clone().unwrap_or_default(),
            ack_mode: if self.explicit_acks {
                api::AckMode::Explicit as i32
            } else {
                api::AckMode::Unspecified as i32
            },
            max_in_flight: self.window.unwrap_or(0),
            heartbeat: self.heartbeat.map(|d| prost_types::Duration {
                seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
            }),
            // The watcher applies the policy itself, so that it can say what it did.
            on_expired: api::OnExpired::Fail as i32,
            ack_wait: None,
        }
    }
}

pub(crate) fn start_position(from: StartFrom) -> api::StartPosition {
    use api::start_position::Position;
    let position = match from {
        StartFrom::New => Position::New(()),
        StartFrom::Earliest => Position::Earliest(()),
        StartFrom::Snapshot => Position::Snapshot(()),
        StartFrom::Sequence(s) => Position::Sequence(s),
        StartFrom::Time(t) => Position::Time(timestamp_to_pb(&t)),
    };
    api::StartPosition {
        position: Some(position),
    }
}

/// One item of a watch.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// An event.
    Delivery {
        /// Stream sequence.
        sequence: u64,
        /// NATS subject.
        subject: String,
        /// When it was stored.
        stored_at: Option<chrono::DateTime<chrono::Utc>>,
        /// 1 on first delivery.
        delivery_count: u32,
        /// The event.
        event: Box<Event>,
    },
    /// Every matching event up to `sequence` has been delivered.
    Bookmark {
        /// The sequence.
        sequence: u64,
        /// Events after it not yet examined.
        pending: u64,
    },
    /// The snapshot is complete: every resource's state as of `sequence` was delivered.
    SnapshotEnd {
        /// The sequence it covers.
        sequence: u64,
    },
    /// The subscription opened, first or again after a disconnect (`resumed`).
    Opened {
        /// First sequence it may deliver.
        start_sequence: u64,
        /// The stream's last sequence at the time.
        last_sequence: u64,
        /// Whether this is a reopen after a disconnect, continuing where the watch was.
        resumed: bool,
    },
    /// The stream broke or the gateway could not be reached; the watcher reconnects after
    /// `retry_in` (the next call to [`Watcher::next`] waits it out).
    Disconnected {
        /// What went wrong.
        error: String,
        /// Consecutive failed attempts so far.
        attempt: u32,
        /// The wait before the next attempt (exponential backoff with jitter).
        retry_in: Duration,
        /// The sequence the watch will resume from, if it has a position yet.
        resume_from: Option<u64>,
    },
    /// The start or resume position had expired and the watch started again as
    /// [`WatchOptions::on_expired`] says: events in between were lost to this watch.
    Restarted {
        /// The sequence that was asked for.
        expired: u64,
        /// The first sequence the stream still holds.
        first_sequence: u64,
        /// How it starts now (earliest or snapshot).
        from: StartFrom,
    },
}

/// Acknowledgements a [`Watcher`] queues before waiting for the stream to take them.
const ACKS_IN_FLIGHT: usize = 256;

/// A `Watch` that survives disconnects.
#[derive(Debug)]
pub struct Watcher {
    /// How to reach and authenticate to the gateways.
    conn: Connection,
    /// Gateways to try, in turn.
    addrs: Vec<String>,
    /// The one in use.
    current: usize,
    open: api::Open,
    on_expired: ExpiredPolicy,
    stream: Option<tonic::Streaming<api::SubscribeResponse>>,
    /// The request side of a `Subscribe` stream (explicit acknowledgements), while open.
    requests: Option<tokio::sync::mpsc::Sender<api::SubscribeRequest>>,
    /// The next sequence to ask for after a reconnect.
    resume_from: Option<u64>,
    /// Whether the watch has been open before (the next open is a resume).
    opened_before: bool,
    /// Whether a snapshot is under way: its deliveries are not in sequence order, so a
    /// disconnect before its end starts it again rather than resuming from a sequence.
    snapshotting: bool,
    /// A wait owed before the next attempt (set when a disconnect was reported).
    wait: Option<Duration>,
    /// Consecutive failures.
    attempt: u32,
    backoff: Duration,
    initial_backoff: Duration,
    /// Longest wait between reconnect attempts.
    max_backoff: Duration,
}

impl Watcher {
    /// A watcher of `options` through `conn`, opened on first use. `conn.addr` may list
    /// several gateways, comma-separated: after a failure the watcher resumes on the next one.
    pub fn watch(conn: impl Into<Connection>, options: &WatchOptions) -> Watcher {
        let mut watcher = Watcher::new(conn, options.to_open());
        watcher.on_expired = options.on_expired;
        watcher
    }

    /// A watcher that opens `open` as given through `conn` (one gateway address, or several
    /// comma-separated) on first use.
    pub fn new(conn: impl Into<Connection>, open: api::Open) -> Watcher {
        let conn = conn.into();
        let initial_backoff = Duration::from_millis(100);
        Watcher {
            addrs: conn.addrs(),
            conn,
            current: 0,
            open,
            on_expired: ExpiredPolicy::Fail,
            stream: None,
            requests: None,
            resume_from: None,
            opened_before: false,
            snapshotting: false,
            wait: None,
            attempt: 0,
            backoff: initial_backoff,
            initial_backoff,
            max_backoff: Duration::from_secs(10),
        }
    }

    /// Sets the reconnect backoff: the first wait and the longest (default 100 ms and 10 s).
    /// Each wait is the backoff with up to half of it taken off at random (jitter), so that
    /// many watchers of a restarted gateway do not all come back at once.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Watcher {
        self.initial_backoff = initial;
        self.backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// The sequence a reconnect would resume from (one past the last delivery or bookmark).
    pub fn resume_from(&self) -> Option<u64> {
        self.resume_from
    }

    async fn reopen(&mut self) -> Result<(), ClientError> {
        let mut open = self.open.clone();
        if let Some(seq) = self.resume_from {
            if open.durable.is_empty() {
                open.start = Some(start_position(StartFrom::Sequence(seq)));
            }
        }
        self.snapshotting = matches!(
            open.start,
            Some(api::StartPosition {
                position: Some(api::start_position::Position::Snapshot(())),
            })
        );
        let addr = self
            .addrs
            .get(self.current)
            .ok_or_else(|| ClientError::Protocol("no gateway address given".into()))?;
        let channel = connect_to(&self.conn, addr).await?;
        let mut client = api::subscriber_client::SubscriberClient::new(channel);
        if open.ack_mode == api::AckMode::Explicit as i32 {
            // Acknowledgements need the client's side of the stream: `Subscribe`.
            let (tx, rx) = tokio::sync::mpsc::channel(ACKS_IN_FLIGHT);
            let first = api::SubscribeRequest {
                request: Some(api::subscribe_request::Request::Open(open)),
            };
            tx.try_send(first)
                .map_err(|_| ClientError::Protocol("cannot queue the open request".into()))?;
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            self.stream = Some(
                client
                    .subscribe(self.conn.request(requests))
                    .await?
                    .into_inner(),
            );
            self.requests = Some(tx);
        } else {
            self.stream = Some(client.watch(self.conn.request(open)).await?.into_inner());
        }
        Ok(())
    }

    /// Acknowledges `sequence` (with [`WatchOptions::explicit_acks`]): the delivery is
    /// handled and, for a durable, consumed. An acknowledgement that cannot reach the gateway
    /// (the stream broke) is dropped: the delivery comes back after the reconnect.
    pub async fn ack(&mut self, sequence: u64) -> Result<(), ClientError> {
        let Some(requests) = &self.requests else {
            return Err(ClientError::Protocol(
                "acknowledgements need WatchOptions::explicit_acks".into(),
            ));
        };
        let ack = api::SubscribeRequest {
            request: Some(api::subscribe_request::Request::Ack(api::Ack {
                sequences: vec![sequence],
            })),
        };
        let _ = requests.send(ack).await;
        Ok(())
    }

    /// The next item, reconnecting as needed. Errors that retrying cannot cure are returned
    /// (a refused open, an expired position under [`ExpiredPolicy::Fail`]); after one, the
    /// watcher is spent.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        loop {
            if let Some(wait) = self.wait.take() {
                tokio::time::sleep(wait).await;
            }
            if self.stream.is_none() {
                match self.reopen().await {
                    Ok(()) => {}
                    Err(e) if e.is_retryable() => return Ok(self.disconnected(e.to_string())),
                    Err(ClientError::Status(s)) if expired(&s).is_some() => {
                        if let Some(item) = self.restart(&s) {
                            return Ok(item);
                        }
                        return Err(s.into());
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.close();
                    return Ok(self.disconnected("the gateway ended the stream".into()));
                }
                Err(status) if interrupted(&status) => {
                    if let Some(last) = last_delivered(&status).filter(|_| !self.snapshotting) {
                        self.resume_from = Some(self.resume_from.unwrap_or(0).max(last + 1));
                    }
                    self.close();
                    return Ok(self.disconnected(status.message().to_owned()));
                }
                Err(status) if expired(&status).is_some() => {
                    // An expired position found after the open (a catch-up that fell behind
                    // the stream's retention).
                    self.close();
                    if let Some(item) = self.restart(&status) {
                        return Ok(item);
                    }
                    return Err(status.into());
                }
                Err(status) => return Err(status.into()),
            };
            self.attempt = 0;
            self.backoff = self.initial_backoff;
            return self.item(message);
        }
    }

    fn close(&mut self) {
        self.stream = None;
        self.requests = None;
    }

    /// Records a failed attempt and the wait before the next one.
    fn disconnected(&mut self, error: String) -> WatchItem {
        self.attempt += 1;
        // Equal jitter: between half the backoff and all of it.
        let half = self.backoff / 2;
        let retry_in = half + half.mul_f64(fastrand::f64());
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        self.wait = Some(retry_in);
        self.next_gateway();
        tracing::debug!(%error, attempt = self.attempt, ?retry_in, "watch disconnected");
        WatchItem::Disconnected {
            error,
            attempt: self.attempt,
            retry_in,
            resume_from: self.resume_from,
        }
    }

    /// Applies the expired-history policy: the item that says so, or `None` to fail.
    fn restart(&mut self, status: &tonic::Status) -> Option<WatchItem> {
        let first_sequence = expired(status)?;
        let from = match self.on_expired {
            ExpiredPolicy::Fail => return None,
            ExpiredPolicy::FromEarliest => StartFrom::Earliest,
            ExpiredPolicy::Resnapshot => StartFrom::Snapshot,
        };
        let expired = match (self.resume_from, &self.open.start) {
            (Some(seq), _) => seq,
            (
                None,
                Some(api::StartPosition {
                    position: Some(api::start_position::Position::Sequence(seq)),
                }),
            ) => *seq,
            _ => 0,
        };
        self.resume_from = None;
        self.open.start = Some(start_position(from));
        Some(WatchItem::Restarted {
            expired,
            first_sequence,
            from,
        })
    }

    /// Moves on to the next gateway, if there are several.
    fn next_gateway(&mut self) {
        if !self.addrs.is_empty() {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    fn item(&mut self, m: api::SubscribeResponse) -> Result<WatchItem, ClientError> {
        use api::subscribe_response::Response;
        let item = match m.response {
            Some(Response::Opened(o)) => {
                let resumed = self.opened_before && !self.snapshotting;
                self.opened_before = true;
                WatchItem::Opened {
                    start_sequence: o.start_sequence,
                    last_sequence: o.last_sequence,
                    resumed,
                }
            }
            Some(Response::Delivery(d)) => {
                let event = d
                    .event
                    .ok_or_else(|| ClientError::Protocol("a delivery without an event".into()))?;
                if !self.snapshotting {
                    self.resume_from = Some(d.sequence + 1);
                }
                WatchItem::Delivery {
                    sequence: d.sequence,
                    subject: d.subject,
                    stored_at: d.stored_at.as_ref().and_then(timestamp_from_pb),
                    delivery_count: d.delivery_count,
                    event: Box::new(
                        event_from_pb(event, "event")
                            .map_err(|e| ClientError::Protocol(e.to_string()))?,
                    ),
                }
            }
            Some(Response::Bookmark(b)) if !self.snapshotting => {
                self.resume_from = Some(self.resume_from.unwrap_or(0).max(b.sequence + 1));
                WatchItem::Bookmark {
                    sequence: b.sequence,
                    pending: b.pending,
                }
            }
            Some(Response::Bookmark(b)) => WatchItem::Bookmark {
                sequence: b.sequence,
                pending: b.pending,
            },
            Some(Response::SnapshotEnd(s)) => {
                // After a snapshot, a reconnect continues with the changes that follow it.
                self.snapshotting = false;
                self.resume_from = Some(s.sequence + 1);
                WatchItem::SnapshotEnd {
                    sequence: s.sequence,
                }
            }
            None => return Err(ClientError::Protocol("an empty response".into())),
        };
        Ok(item)
    }
}

/// Whether an open stream's error means "resume", not "give up": the gateway or NATS went
/// away (UNAVAILABLE), or the connection broke under the stream (a crashed gateway: tonic
/// reports the broken transport as UNKNOWN or INTERNAL with no jetwatch ErrorInfo).
fn interrupted(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            status.get_details_error_info().is_none()
        }
        _ => false,
    }
}

/// The stream's first sequence when `status` says the position asked for has expired.
fn expired(status: &tonic::Status) -> Option<u64> {
    use tonic_types::StatusExt;
    if status.code() != Code::OutOfRange {
        return None;
    }
    let info = status.get_details_error_info()?;
    if info.reason != "HISTORY_EXPIRED" {
        return None;
    }
    info.metadata.get("first_sequence")?.parse().ok()
}

fn last_delivered(status: &tonic::Status) -> Option<u64> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()?
        .metadata
        .get("last_delivered_sequence")?
        .parse()
        .ok()
}
