//! Consumer-free reads of a stream's history: JetStream's batched direct get.
//!
//! A batched direct get (`$JS.API.DIRECT.GET.<stream>` with `batch`) asks any replica of the
//! stream for up to `batch` stored messages from a sequence (optionally only those on one
//! subject pattern), bounded by `max_bytes`, and the server answers on our inbox with one
//! message each and an end-of-batch status. No consumer is created, so any number of
//! subscribers can read history without the server holding state for them.
//!
//! Every answer carries `Nats-Last-Sequence`, the sequence of the previous message of the same
//! answer (0 for the first). That chain is what makes these reads safe: a message lost on the
//! way (a slow-consumer drop, a reconnect) breaks it, and a [`Range`] only ever claims the
//! prefix whose chain is intact. So a caller may move its cursor to [`Range::end`] knowing that
//! every stored message in between was handed to it.
//!
//! async-nats offers single-message direct gets only (its `DirectGetBuilder` has no `batch`,
//! `max_bytes` or `start_time`), so the batched form is spoken here over a plain inbox
//! subscription on the gateway's bulk connection.

use async_nats::{HeaderMap, StatusCode};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use serde::Serialize;

use super::error::{store_error, Cause, Classify};
use super::{Link, RawMessage, Store, StoreError};

/// A verified run of a stream's messages.
#[derive(Debug)]
pub struct Range {
    /// The messages, in sequence order.
    pub messages: Vec<RawMessage>,
    /// Every stored message with a sequence in `[from, end)` (on the requested subject
    /// pattern, if any) is in `messages`, as the answering replica knew the stream.
    pub end: u64,
    /// The replica had nothing more after `end` when it answered. Only a hint: a replica can
    /// lag its leader, so a caller that would skip sequences because of it must confirm with
    /// [`Store::first_at_or_after`].
    pub exhausted: bool,
}

/// The JSON body of a batched direct get (nats-server `JSApiMsgGetRequest`).
#[derive(Debug, Serialize)]
struct BatchRequest<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_time: Option<String>,
    batch: usize,
    max_bytes: usize,
}

const SEQUENCE: &str = "Nats-Sequence";
const SUBJECT: &str = "Nats-Subject";
const TIME_STAMP: &str = "Nats-Time-Stamp";
const NUM_PENDING: &str = "Nats-Num-Pending";
const LAST_SEQUENCE: &str = "Nats-Last-Sequence";

/// The end-of-batch status.
const END_OF_BATCH: u16 = 204;

impl Store {
    /// Reads up to `batch` messages (at most about `max_bytes`) stored at or after `from`, only
    /// those on `subject` when given (a NATS pattern). Never creates a consumer.
    ///
    /// A read cut short (a lost message, a silent server) returns the verified prefix when
    /// there is one, and [`StoreError::Unavailable`] when there is none.
    pub async fn read_range(
        &self,
        stream: &str,
        from: u64,
        subject: Option<&str>,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Range, StoreError> {
        let from = from.max(1);
        let request = BatchRequest {
            seq: Some(from),
            next_by_subj: subject,
            start_time: None,
            batch: batch.max(1),
            max_bytes: max_bytes.max(1),
        };
        self.direct_batch(stream, &request, from).await
    }

    /// The sequence of the first message stored at or after `t`, or `None` when there is none.
    pub async fn first_sequence_at(
        &self,
        stream: &str,
        t: DateTime<Utc>,
    ) -> Result<Option<u64>, StoreError> {
        let request = BatchRequest {
            seq: None,
            next_by_subj: None,
            start_time: Some(t.to_rfc3339_opts(SecondsFormat::Nanos, true)),
            batch: 1,
            max_bytes: 1,
        };
        let range = self.direct_batch(stream, &request, 1).await?;
        Ok(range.messages.first().map(|m| m.sequence))
    }

    /// The sequence of the first message at or after `from` (on `subject` when given), asked of
    /// the stream's leader, which every replica follows: the authority on whether messages
    /// exist. `None` when there is none.
    pub async fn first_at_or_after(
        &self,
        stream: &str,
        from: u64,
        subject: Option<&str>,
    ) -> Result<Option<u64>, StoreError> {
        let context = "asking the stream's leader for the next message";
        let handle = self
            .js
            .get_stream_no_info(stream)
            .await
            .map_err(|e| store_error(stream, context, e))?;
        let first = handle.get_first_raw_message_by_subject(subject.unwrap_or(">"), from.max(1));
        self.unless_dropped(Link::Main, context, async {
            match first.await {
                Ok(m) => Ok(Some(m.sequence)),
                Err(e) if e.classify() == Cause::NoMessage => Ok(None),
                Err(e) => Err(store_error(stream, context, e)),
            }
        })
        .await
    }

    /// Sends one batched direct get and collects its verified answer. `from` is where the
    /// coverage of an empty answer starts.
    async fn direct_batch(
        &self,
        stream: &str,
        request: &BatchRequest<'_>,
        from: u64,
    ) -> Result<Range, StoreError> {
        let body = serde_json::to_vec(request).map_err(|e| StoreError::Api {
            context: "encoding a direct get".into(),
            source: Box::new(e),
        })?;
        // Answers on their way when the connection drops are lost: stop waiting at once.
        let mut dropped = std::pin::pin!(self.dropped(Link::Bulk));
        let (inbox, mut answers) = Store::inbox(&self.bulk, "a history read").await?;
        self.bulk
            .publish_with_reply(format!("$JS.API.DIRECT.GET.{stream}"), inbox, body.into())
            .await
            .map_err(|e| StoreError::Unavailable {
                context: "sending a history read".into(),
                source: Some(Box::new(e)),
            })?;
        let mut messages: Vec<RawMessage> = Vec::new();
        crate::telemetry::METRICS.history_reads.inc();
        let interrupted = |messages: Vec<RawMessage>, why: String| {
            tracing::debug!(stream, from, why, "direct read cut short");
            crate::telemetry::METRICS.reads_interrupted.inc();
            match messages.last() {
                Some(last) => Ok(Range {
                    end: last.sequence + 1,
                    messages,
                    exhausted: false,
                }),
                None => Err(StoreError::unavailable(format!(
                    "a history read of stream `{stream}` was interrupted: {why}"
                ))),
            }
        };
        loop {
            let answer = tokio::select! {
                answer = tokio::time::timeout(self.request_timeout, answers.next()) => answer,
                () = &mut dropped => return interrupted(messages, "the connection dropped".into()),
            };
            let answer = match answer {
                Ok(Some(m)) => m,
                Ok(None) => return interrupted(messages, "the connection closed".into()),
                Err(_) => {
                    return interrupted(
                        messages,
                        format!("no answer within {:?}", self.request_timeout),
                    )
                }
            };
            let previous = messages.last().map_or(0, |m| m.sequence);
            match answer.status.map(|s| s.as_u16()) {
                None => {
                    let message =
                        match stored_message(answer.headers, answer.payload, answer.length) {
                            Ok(m) => m,
                            Err(why) => return interrupted(messages, why),
                        };
                    if message.last_sequence != previous {
                        return interrupted(
                            messages,
                            format!(
                                "message {} follows {} but {previous} arrived last",
                                message.raw.sequence, message.last_sequence
                            ),
                        );
                    }
                    messages.push(message.raw);
                }
                Some(END_OF_BATCH) => {
                    let headers = answer.headers.unwrap_or_default();
                    let last = number(&headers, LAST_SEQUENCE).unwrap_or(u64::MAX);
                    if last != previous {
                        return interrupted(
                            messages,
                            format!("the batch ended at {last} but {previous} arrived last"),
                        );
                    }
                    let pending = number(&headers, NUM_PENDING).unwrap_or(u64::MAX);
                    return Ok(Range {
                        end: messages.last().map_or(from, |m| m.sequence + 1),
                        messages,
                        exhausted: pending == 0,
                    });
                }
                Some(404) if messages.is_empty() => {
                    // Nothing stored at or after `from` (on the subject).
                    return Ok(Range {
                        messages,
                        end: from,
                        exhausted: true,
                    });
                }
                Some(code) if code == StatusCode::NO_RESPONDERS.as_u16() => {
                    return Err(StoreError::unavailable(format!(
                        "no server answers direct reads of stream `{stream}`"
                    )))
                }
                Some(code) => {
                    return Err(StoreError::Api {
                        context: format!("a history read of stream `{stream}`"),
                        source: format!("{code} {}", answer.description.unwrap_or_default()).into(),
                    })
                }
            }
        }
    }
}

/// A direct-get answer: the stored message and the sequence the server sent before it.
struct Answer {
    raw: RawMessage,
    last_sequence: u64,
}

fn stored_message(
    headers: Option<HeaderMap>,
    payload: bytes::Bytes,
    size: usize,
) -> Result<Answer, String> {
    let headers = headers.ok_or("a direct-get answer without headers")?;
    let sequence = number(&headers, SEQUENCE).ok_or("a direct-get answer without a sequence")?;
    let last_sequence =
        number(&headers, LAST_SEQUENCE).ok_or("a direct-get answer without a last sequence")?;
    let subject = headers
        .get(SUBJECT)
        .map(|v| v.as_str().to_owned())
        .ok_or("a direct-get answer without a subject")?;
    let stored_at = headers
        .get(TIME_STAMP)
        .and_then(|v| DateTime::parse_from_rfc3339(v.as_str()).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or("a direct-get answer without a valid time stamp")?;
    let pending = number(&headers, NUM_PENDING).unwrap_or(0);
    Ok(Answer {
        raw: RawMessage {
            sequence,
            subject,
            stored_at,
            pending,
            headers: Some(headers),
            payload,
            size,
        },
        last_sequence,
    })
}

fn number(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.as_str().trim().parse().ok())
}
