//! Readers: short-lived, unacknowledged consumers (the shared reader, snapshots).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{consumer, stream};
use futures::StreamExt;

use super::error::store_error;
use super::{
    deliver_policy, unpack, Drops, Link, RawMessage, StartAt, Store, StoreError, INACTIVE_THRESHOLD,
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
            if start == StartAt::LastPerSubject && filter_subjects.is_empty() {
                // JetStream wants an explicit filter for last-per-subject delivery.
                filter_subjects = store.stream_state(stream).await?.subjects;
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
            let messages = consumer
                .stream()
                .max_messages_per_batch(batch.max(1))
                .max_bytes_per_batch(max_bytes.max(1))
                // Idle heartbeats tell a lost consumer (its server died, a cluster lost the
                // node holding it) from a quiet stream: after two missed ones the read ends
                // with an error and the caller re-opens it elsewhere. One second keeps the
                // delivery stall of a node loss close to the stream's leader election.
                .heartbeat(READER_HEARTBEAT)
                .expires(Duration::from_secs(30))
                .messages()
                .await
                .map_err(|e| store_error(stream, context, e))?;
            Ok(Reader {
                stream: handle,
                name,
                messages,
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
    /// The pulled messages.
    messages: consumer::pull::Stream,
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
        let next = tokio::select! {
            biased;
            next = self.messages.next() => next?,
            () = self.drops.dropped() => {
                crate::telemetry::METRICS.reads_interrupted.inc();
                return Some(Err(StoreError::unavailable(
                    "the connection to NATS dropped: messages on their way may be lost",
                )));
            }
        };
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                return Some(Err(StoreError::Unavailable {
                    context: "reading".into(),
                    source: Some(Box::new(e)),
                }))
            }
        };
        let (raw, consumer_sequence, _) = match unpack(msg) {
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
