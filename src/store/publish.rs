//! Publishing: pipelined publishes and dead-letter copies.

use async_nats::{jetstream, HeaderMap};

use super::error::publish_error;
use super::{Drops, Link, Store, StoreError};
use crate::codec::Encoded;

/// A publish's size as NATS counts it and the limit it was checked against.
#[derive(Debug, Clone, Copy)]
pub struct Checked {
    size: usize,
    limit: usize,
}

/// The outcome of an acknowledged publish.
#[derive(Debug, Clone, Copy)]
pub struct PublishAck {
    /// Stream sequence of the stored (or, for a duplicate, the original) event.
    pub sequence: u64,
    /// Whether the event repeated one in the duplicate window.
    pub duplicate: bool,
}

impl Store {
    /// The size of a publish as NATS counts it (with the headers [`Store::publish`] adds),
    /// checked against `max_bytes` and the connected server's `max_payload` (read each time: a
    /// reconnect may land on a server with another limit).
    pub fn check_size(
        &self,
        encoded: &Encoded,
        msg_id: &str,
        expected_subject_sequence: Option<u64>,
        max_bytes: usize,
    ) -> Result<Checked, StoreError> {
        let size = publish_size(encoded, msg_id, expected_subject_sequence);
        let limit = self.max_payload().min(max_bytes);
        if size > limit {
            return Err(StoreError::TooLarge { size, limit });
        }
        Ok(Checked { size, limit })
    }

    /// Checks one publish's size ([`Store::check_size`]) and sends it, returning a future for
    /// its acknowledgement, so callers can pipeline.
    pub async fn publish(
        &self,
        subject: String,
        encoded: Encoded,
        msg_id: &str,
        expected_subject_sequence: Option<u64>,
        max_bytes: usize,
    ) -> Result<PendingAck, StoreError> {
        let checked = self.check_size(&encoded, msg_id, expected_subject_sequence, max_bytes)?;
        self.publish_checked(subject, encoded, msg_id, expected_subject_sequence, checked)
            .await
    }

    /// Sends one publish that passed [`Store::check_size`] and returns a future for its
    /// acknowledgement. A server whose limit changed since still enforces its own (the error
    /// then names the size and limit checked).
    pub async fn publish_checked(
        &self,
        subject: String,
        encoded: Encoded,
        msg_id: &str,
        expected_subject_sequence: Option<u64>,
        checked: Checked,
    ) -> Result<PendingAck, StoreError> {
        self.connected_for("publishing")?;
        // Taken before sending: a drop after this may lose the acknowledgement.
        let drops = self.drops(Link::Main);
        let expected = expected_subject_sequence;
        let Checked { size, limit } = checked;
        let mut msg = jetstream::message::PublishMessage::build()
            .payload(encoded.payload)
            .headers(encoded.headers)
            .message_id(msg_id);
        if let Some(expected) = expected {
            msg = msg.expected_last_subject_sequence(expected);
        }
        let fut = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(|e| publish_error(e, expected, size, limit))?;
        Ok(PendingAck {
            fut,
            drops,
            expected,
            size,
            limit,
        })
    }

    /// Publishes `encoded` on `subject` (for dead-lettering), awaiting the acknowledgement.
    pub async fn publish_copy(&self, subject: String, encoded: Encoded) -> Result<u64, StoreError> {
        self.connected_for("publishing a copy")?;
        let size = message_size(&encoded.headers, encoded.payload.len());
        let limit = self.max_payload();
        let msg = jetstream::message::PublishMessage::build()
            .payload(encoded.payload)
            .headers(encoded.headers);
        let ack = self
            .js
            .send_publish(subject, msg)
            .await
            .map_err(|e| publish_error(e, None, size, limit))?;
        let ack = ack.await.map_err(|e| publish_error(e, None, size, limit))?;
        Ok(ack.sequence)
    }
}

/// A publish sent and awaiting its acknowledgement.
#[derive(Debug)]
pub struct PendingAck {
    /// The acknowledgement from JetStream.
    fut: jetstream::context::PublishAckFuture,
    /// The main connection's drops since the publish was sent.
    drops: Drops,
    /// What the publish expected, its size and the limit, to explain a refusal.
    expected: Option<u64>,
    size: usize,
    limit: usize,
}

impl PendingAck {
    /// Waits for JetStream's acknowledgement. A drop of the connection before it arrives fails
    /// the wait at once as UNAVAILABLE: the acknowledgement is lost (async-nats would wait for
    /// `nats.request_timeout`), though the event may be stored; publishing it again with the
    /// same source and id is deduplicated.
    pub async fn ack(self) -> Result<PublishAck, StoreError> {
        let PendingAck {
            fut,
            mut drops,
            expected,
            size,
            limit,
        } = self;
        let acked = tokio::select! {
            biased;
            acked = fut => acked,
            () = drops.dropped() => {
                return Err(StoreError::unavailable(
                    "the connection to NATS dropped before the publish was acknowledged; it may \
                     be stored: publish it again with the same source and id (deduplicated)",
                ))
            }
        };
        let ack = acked.map_err(|e| publish_error(e, expected, size, limit))?;
        Ok(PublishAck {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

const MSG_ID: &str = "Nats-Msg-Id";
const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";

/// The size NATS counts against `max_payload` for a message with `headers` and a payload of
/// `payload` bytes: the header block as sent (`NATS/1.0`, one `Name: value` line per value, a
/// blank line) plus the payload.
pub fn message_size(headers: &HeaderMap, payload: usize) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| header_size(name.as_ref(), v.as_str().len()))
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + fields + "\r\n".len() + payload
}

impl Store {
    /// Refuses to publish while the connection is down. The client library would queue the
    /// message and send it on reconnect, storing an event whose publish was already answered
    /// UNAVAILABLE; refusing up front keeps "refused" meaning "not stored". (A connection lost
    /// between this check and the send can still leave such a message; publishing again with
    /// the same source and id is deduplicated within the stream's duplicate window.)
    fn connected_for(&self, doing: &str) -> Result<(), StoreError> {
        // The publishing connection's own state (the history connection does not matter here).
        if self.client.connection_state() == async_nats::connection::State::Connected {
            Ok(())
        } else {
            Err(StoreError::Unavailable {
                context: format!("{doing}: not connected to NATS (reconnecting)"),
                source: None,
            })
        }
    }
}

/// The size NATS counts against `max_payload` for [`Store::publish`] of `encoded`: its headers
/// and payload plus the headers the publish adds (`Nats-Msg-Id`, and
/// `Nats-Expected-Last-Subject-Sequence` when `expected` is set).
pub fn publish_size(encoded: &Encoded, msg_id: &str, expected: Option<u64>) -> usize {
    message_size(&encoded.headers, encoded.payload.len())
        + header_size(MSG_ID, msg_id.len())
        + expected.map_or(0, |e| {
            header_size(EXPECTED_LAST_SUBJECT_SEQUENCE, digits(e))
        })
}

/// One header line: `name: value\r\n`.
fn header_size(name: &str, value: usize) -> usize {
    name.len() + 2 + value + 2
}

fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |d| d as usize + 1)
}
