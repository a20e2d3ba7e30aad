//! Readers: short-lived, unacknowledged consumers (the shared reader, snapshots).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;

use super::error::store_error;
use super::{
    deliver_policy, unpack_delivery, Drops, Link, RawMessage, StartAt, Store, StoreError,
    INACTIVE_THRESHOLD,
};

/// The idle heartbeat asked of every reader's pulls.
const READER_HEARTBEAT: Duration = Duration::from_secs(1);

impl Store {
    /// Opens a reader on `stream` from `start`, restricted to `filter_subjects` (all subjects
    /// when empty). The reader pulls at most `batch` messages and about `max_bytes` ahead of
    /// its caller.
    pub async fn read(
        &self,
        stream: &str,
        start: StartAt,
        filter_subjects: &[String],
        batch: usize,
        max_bytes: usize,
    ) -> Result<Reader, StoreError> {
        // Opening takes a few requests, each bounded; the whole is bounded too, so a connection
        // that stalls between them (a slow-consumer cut, a reconnect) cannot hold a caller.
        let limit = self.request_timeout * 3;
        let store = self.clone();
        let filter_subjects = filter_subjects.to_vec();
        let stream_name = stream.to_owned();
        // Named here rather than by the server, so that a consumer whose creation was not
        // confirmed (the answer lost with a dropped connection) can still be deleted.
        let name = format!("jetwatch-read-{}", uuid::Uuid::new_v4().simple());
        let consumer_name = name.clone();
        // Any drop of the connection from here on may lose messages on their way.
        let drops = self.drops(Link::Main);
        let opening = async move {
            let stream = stream_name.as_str();
            let name = consumer_name;
            let context = "opening a reader";
            let handle = store.stream_handle(stream).await?;
            let mut filter_subjects = filter_subjects;
            // A last-per-subject read's first pull is sized by the stream's stored messages
            // (see `Budget::Counted`).
            let mut first_guess = 0;
            if start == StartAt::LastPerSubject {
                let state = store.stream_state(stream).await?;
                if filter_subjects.is_empty() {
                    // JetStream wants an explicit filter for last-per-subject delivery.
                    filter_subjects = state.subjects;
                }
                first_guess = usize::try_from(state.bytes / state.messages.max(1))
                    .unwrap_or(usize::MAX)
                    .saturating_mul(2);
            }
            let config = consumer::pull::Config {
                name: Some(name.clone()),
                deliver_policy: deliver_policy(start),
                ack_policy: consumer::AckPolicy::None,
                filter_subjects,
                inactive_threshold: INACTIVE_THRESHOLD,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            };
            let mut consumer: consumer::PullConsumer = handle
                .create_consumer(config)
                .await
                .map_err(|e| store_error(stream, context, e))?;
            let initial_pending = consumer
                .info()
                .await
                .map_err(|e| store_error(stream, context, e))?
                .num_pending;
            // Pulls go out from here on, over an inbox of our own on the main connection.
            // nats-server passes over a message a last-per-subject pull's byte limit stops
            // at, instead of leaving it for the next pull: such pulls carry no byte limit and
            // ask for as many messages as keep about `max_bytes` in flight.
            let budget = if start == StartAt::LastPerSubject {
                Budget::Counted {
                    largest: None,
                    guess: first_guess.clamp(1024, store.max_payload() + MAX_CONTROL_LINE),
                }
            } else {
                Budget::ServerBytes
            };
            let pulls =
                Pulls::start(&store.client, stream, &name, batch, max_bytes, budget).await?;
            Ok(Reader {
                stream: handle,
                name,
                pulls,
                initial_pending,
                consumer_sequence: 0,
                pending: initial_pending,
                permit: None,
                drops,
            })
        };
        let stream = stream.to_owned();
        // Opening runs in a task of its own, so that a caller that gives up half-way (a
        // subscriber that went away) does not leave the consumer behind: the task finishes,
        // and the reader it made, dropped unclaimed, deletes the consumer.
        let store = self.clone();
        let opening = tokio::spawn(async move {
            let opening = store.unless_dropped(Link::Main, "opening a reader", opening);
            let opened = match tokio::time::timeout(limit, opening).await {
                Ok(opened) => opened,
                Err(_) => Err(StoreError::unavailable(format!(
                    "opening a reader of stream `{stream}` took longer than {limit:?}"
                ))),
            };
            if opened.is_err() {
                // The consumer may exist without its creation having been confirmed: delete
                // it (NATS would after `INACTIVE_THRESHOLD`), without holding up the caller.
                tokio::spawn(async move {
                    if let Ok(handle) = store.stream_handle(&stream).await {
                        let _ = handle.delete_consumer(&name).await;
                    }
                });
            }
            opened
        });
        opening
            .await
            .unwrap_or_else(|e| Err(StoreError::unavailable(format!("opening a reader: {e}"))))
    }
}

/// An ephemeral, unacknowledged reader of a stream (a JetStream pull consumer). Deleted when
/// dropped; NATS also removes it after [`INACTIVE_THRESHOLD`] should the gateway die.
pub struct Reader {
    /// The stream, to delete the consumer on drop.
    stream: stream::Stream<()>,
    /// The consumer's name.
    name: String,
    /// The pull requests and the messages they bring.
    pulls: Pulls,
    /// Matching messages pending when the reader was created.
    initial_pending: u64,
    /// The consumer sequence of the last message received: each delivery's must be one more,
    /// or a message was lost on the way (such a consumer never redelivers).
    consumer_sequence: u64,
    /// Messages still to come after the last one received.
    pending: u64,
    /// A permit of a budget of consumers, returned once the consumer is deleted.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// The drops of the connection since the reader was opened.
    drops: Drops,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("consumer", &self.name)
            .finish()
    }
}

impl Reader {
    /// Matching messages pending when the reader was created: 0 means there was nothing to
    /// read at that moment.
    pub fn initial_pending(&self) -> u64 {
        self.initial_pending
    }

    /// Matching messages still to come after the last one received (when nothing was received
    /// yet: pending when the reader was created).
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// The next message; `None` only if the underlying subscription ended. A message lost
    /// between the server and the gateway (a slow-consumer drop, a reconnect) ends the read
    /// with [`StoreError::Unavailable`] instead of passing over it: the caller re-opens from
    /// the last sequence it received.
    ///
    /// A drop of the connection ends the read too, even when nothing arrives after it:
    /// messages on their way were lost, and async-nats carries on with the same consumer
    /// after reconnecting, so a lost message at the end of a burst would otherwise go
    /// unnoticed until the next one arrived, which on a quiet stream may be never.
    pub async fn next(&mut self) -> Option<Result<RawMessage, StoreError>> {
        let msg = loop {
            if let Err(e) = self.pulls.top_up().await {
                return Some(Err(e));
            }
            let Pulls {
                inbox,
                heard,
                watchdog,
                ..
            } = &mut self.pulls;
            let msg = tokio::select! {
                biased;
                msg = inbox.next() => msg?,
                () = self.drops.dropped() => {
                    crate::telemetry::METRICS.reads_interrupted.inc();
                    return Some(Err(StoreError::unavailable(
                        "the connection to NATS dropped: messages on their way may be lost",
                    )));
                }
                () = silence(*heard, watchdog.as_mut()) => {
                    crate::telemetry::METRICS.reads_interrupted.inc();
                    return Some(Err(StoreError::unavailable(format!(
                        "the server sent nothing, not even a heartbeat, for {:?}: its consumer \
                         is gone",
                        READER_HEARTBEAT * 2
                    ))));
                }
            };
            match self.pulls.take(msg) {
                Ok(Some(msg)) => break msg,
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        };
        let (raw, consumer_sequence, _) = match unpack_delivery(msg) {
            Ok(unpacked) => unpacked,
            Err(e) => return Some(Err(e)),
        };
        if consumer_sequence != self.consumer_sequence + 1 {
            crate::telemetry::METRICS.reads_interrupted.inc();
            return Some(Err(StoreError::unavailable(format!(
                "messages were lost on the way from the server (delivery {consumer_sequence} \
                 after {})",
                self.consumer_sequence
            ))));
        }
        self.consumer_sequence = consumer_sequence;
        self.pending = raw.pending;
        Some(Ok(raw))
    }
}

impl Reader {
    /// Deletes the consumer and waits for the server to confirm (or the request to time out),
    /// for callers that count the consumers they hold.
    pub async fn close(mut self) {
        let name = std::mem::take(&mut self.name);
        let _ = self.stream.delete_consumer(&name).await;
        drop(self.permit.take());
    }

    /// Keeps `permit` (of a budget of JetStream consumers) until the consumer is deleted, so
    /// the budget holds at every instant, whether the reader is closed or dropped.
    pub fn hold(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let stream = self.stream.clone();
        let name = std::mem::take(&mut self.name);
        let permit = self.permit.take();
        if name.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = stream.delete_consumer(&name).await;
                drop(permit);
            });
        }
    }
}

/// The subject JetStream takes pull requests on (the store uses the default API prefix).
fn pull_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

/// nats-server's default `max_control_line`: the most a delivery's subject and reply add to
/// its size as a pull counts it.
const MAX_CONTROL_LINE: usize = 4096;

/// How a reader's pulls keep to their byte budget.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Budget {
    /// Each pull carries the budget as its `max_bytes` and the server stops at it. A message
    /// larger than a whole pull's budget is then pulled alone.
    ServerBytes,
    /// Pulls carry no byte limit; each asks for as many messages as the budget holds at the
    /// size of the largest message seen so far, and the first at `guess`: twice the stream's
    /// average stored message, at least 1 KiB, at most the largest the server accepts.
    Counted {
        largest: Option<usize>,
        guess: usize,
    },
}

/// How long a pull request stays open on the server; when it expires the server says so and
/// the next pull goes out.
const PULL_EXPIRES: Duration = Duration::from_secs(30);

/// A reader's pull requests, spoken over an inbox subscription of its own.
///
/// async-nats' pull stream runs a task per consumer to send pulls and wraps every delivery in
/// a `jetstream::Message`, cloning the JetStream context (a `String` and several `Arc`s) for
/// each: measurable per message on a snapshot or a long history read. A reader needs neither
/// (it never acknowledges, and ends on any loss), so it keeps the pull protocol here: a pull
/// asks for `batch` messages or `max_bytes`, whichever comes first; the next goes out once half
/// of what is outstanding has arrived; the server ends a pull early with a status carrying what
/// it did not deliver (`Nats-Pending-Messages`, `Nats-Pending-Bytes`), and sends idle
/// heartbeats while a pull waits, so silence means the consumer is gone.
struct Pulls {
    client: async_nats::Client,
    /// The reader's inbox: deliveries, heartbeats and pull statuses.
    inbox: async_nats::Subscriber,
    /// The inbox's subject, the reply subject of every pull.
    reply: async_nats::Subject,
    /// Where pulls go.
    subject: async_nats::Subject,
    /// The body of every pull kept to `max_bytes` by the server (the same each time).
    request: bytes::Bytes,
    /// How pulls keep to `max_bytes`.
    budget: Budget,
    /// The server refused to send the next message within a whole pull's `max_bytes`: the next
    /// pull asks for that one message alone.
    oversized: bool,
    /// Messages the last pull asked for.
    asked: usize,
    batch: usize,
    max_bytes: usize,
    /// Messages and bytes the outstanding pulls may still bring.
    messages: usize,
    bytes: usize,
    /// When the server was last heard from (or a pull last went out).
    heard: tokio::time::Instant,
    /// Fires when nothing has been heard for two heartbeats.
    watchdog: std::pin::Pin<Box<tokio::time::Sleep>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Resolves once nothing has been heard from the server since `heard` for two heartbeats.
///
/// The watchdog is re-armed only when it fires, not for every message heard: re-arming a tokio
/// timer takes the timer driver's lock, and a reader hears tens of thousands of messages a
/// second.
async fn silence(
    heard: tokio::time::Instant,
    mut watchdog: std::pin::Pin<&mut tokio::time::Sleep>,
) {
    loop {
        watchdog.as_mut().await;
        let deadline = heard + READER_HEARTBEAT * 2;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        watchdog.as_mut().reset(deadline);
    }
}

/// The body of a pull of `batch` messages, at most `max_bytes` (no limit when 0).
fn pull_request(batch: usize, max_bytes: usize) -> bytes::Bytes {
    let request = PullRequest {
        batch,
        max_bytes,
        expires: PULL_EXPIRES.as_nanos(),
        idle_heartbeat: READER_HEARTBEAT.as_nanos(),
    };
    bytes::Bytes::from(serde_json::to_vec(&request).expect("a pull request serializes"))
}

/// The body of a pull request (nats-server `JSApiConsumerGetNextRequest`).
#[derive(serde::Serialize)]
struct PullRequest {
    batch: usize,
    #[serde(skip_serializing_if = "is_zero")]
    max_bytes: usize,
    /// Nanoseconds.
    expires: u128,
    /// Nanoseconds.
    idle_heartbeat: u128,
}

impl Pulls {
    /// Subscribes an inbox and sends the first pull.
    async fn start(
        client: &async_nats::Client,
        stream: &str,
        consumer: &str,
        batch: usize,
        max_bytes: usize,
        budget: Budget,
    ) -> Result<Pulls, StoreError> {
        let (reply, inbox) = Store::inbox(client, "a reader's deliveries").await?;
        let (batch, max_bytes) = (batch.max(1), max_bytes.max(1));
        let request = pull_request(batch, max_bytes);
        let now = tokio::time::Instant::now();
        let mut pulls = Pulls {
            client: client.clone(),
            inbox,
            reply,
            subject: pull_subject(stream, consumer).into(),
            request,
            budget,
            oversized: false,
            asked: 0,
            batch,
            max_bytes,
            messages: 0,
            bytes: 0,
            heard: now,
            watchdog: Box::pin(tokio::time::sleep_until(now + READER_HEARTBEAT * 2)),
        };
        pulls.top_up().await?;
        Ok(pulls)
    }

    /// Sends the next pull once half of what is outstanding has arrived, or a pull of the next
    /// message alone when it is larger than a whole pull may bring.
    async fn top_up(&mut self) -> Result<(), StoreError> {
        let (body, asked, bytes) = if self.oversized {
            // One message, whatever its size (the server's `max_payload` bounds it).
            (pull_request(1, 0), 1, 0)
        } else {
            match self.budget {
                Budget::ServerBytes => {
                    if self.messages > self.batch / 2 && self.bytes > self.max_bytes / 2 {
                        return Ok(());
                    }
                    (self.request.clone(), self.batch, self.max_bytes)
                }
                Budget::Counted { largest, guess } => {
                    if self.messages > self.asked / 2 {
                        return Ok(());
                    }
                    let asked = (self.max_bytes / largest.unwrap_or(guess)).clamp(1, self.batch);
                    (pull_request(asked, 0), asked, 0)
                }
            }
        };
        self.client
            .publish_with_reply(self.subject.clone(), self.reply.clone(), body)
            .await
            .map_err(|e| StoreError::Unavailable {
                context: "sending a pull request".into(),
                source: Some(Box::new(e)),
            })?;
        self.oversized = false;
        self.asked = asked;
        self.messages += asked;
        self.bytes += bytes;
        // The server owes a delivery or a heartbeat within one heartbeat from now.
        self.heard = tokio::time::Instant::now();
        Ok(())
    }

    /// Takes one message of the inbox: a delivery, or `None` for a heartbeat or the end of a
    /// pull (then accounted for). Any other status ends the read.
    fn take(
        &mut self,
        msg: async_nats::Message,
    ) -> Result<Option<async_nats::Message>, StoreError> {
        use async_nats::StatusCode;
        self.heard = tokio::time::Instant::now();
        match msg.status {
            None | Some(StatusCode::OK) => {
                self.messages = self.messages.saturating_sub(1);
                self.bytes = self.bytes.saturating_sub(msg.length);
                if let Budget::Counted { largest, .. } = &mut self.budget {
                    *largest = Some(largest.unwrap_or(0).max(msg.length));
                }
                Ok(Some(msg))
            }
            Some(StatusCode::IDLE_HEARTBEAT) => Ok(None),
            Some(status @ (StatusCode::TIMEOUT | StatusCode::REQUEST_TERMINATED)) => {
                let description = msg.description.as_deref().unwrap_or("");
                let left = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .and_then(|v| v.as_str().parse::<usize>().ok())
                };
                let (messages, bytes) = (left("Nats-Pending-Messages"), left("Nats-Pending-Bytes"));
                if description == "Message Size Exceeds MaxBytes" {
                    // The pull's bytes ran out before the next message: the pull is over and
                    // the message waits for the next. If the pull brought nothing at all, the
                    // message is larger than any pull may bring: the next asks for it alone.
                    self.oversized = bytes.is_none_or(|left| left >= self.max_bytes);
                    self.messages = self.messages.saturating_sub(messages.unwrap_or(self.batch));
                    self.bytes = self.bytes.saturating_sub(bytes.unwrap_or(self.max_bytes));
                    return Ok(None);
                }
                // A pull that expired, or that the server ended (a leadership change): what it
                // did not deliver. Without those headers the server ended the consumer or
                // refused the pull (consumer deleted, limits exceeded), and the read is over.
                match messages {
                    Some(messages) => {
                        self.messages = self.messages.saturating_sub(messages);
                        self.bytes = self.bytes.saturating_sub(bytes.unwrap_or(self.max_bytes));
                        Ok(None)
                    }
                    None => Err(StoreError::unavailable(format!(
                        "the server ended the read: {status} {description}"
                    ))),
                }
            }
            Some(status) => Err(StoreError::unavailable(format!(
                "the server answered a pull with {status} {}",
                msg.description.as_deref().unwrap_or("")
            ))),
        }
    }
}
