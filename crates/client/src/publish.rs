//! [`Publisher`]: one event at a time, or many pipelined over one stream.

use tonic::transport::Channel;

use crate::connection::{connect, status_from_pb, ClientError, Connection};
use crate::convert::event_to_pb;
use crate::event::Event;
use crate::pb::jetwatch::v1 as api;

/// The outcome of one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Stream.
    pub stream: String,
    /// Subject it was stored on.
    pub subject: String,
    /// Its sequence.
    pub sequence: u64,
    /// Whether it was a duplicate (an event with the same `source` and `id` published within
    /// the stream's duplicate window): nothing new was stored.
    pub duplicate: bool,
}

impl From<api::PublishResponse> for PublishOutcome {
    fn from(r: api::PublishResponse) -> PublishOutcome {
        PublishOutcome {
            stream: r.stream,
            subject: r.subject,
            sequence: r.sequence,
            duplicate: r.duplicate,
        }
    }
}

/// Publishes events to one gateway over one connection.
#[derive(Debug, Clone)]
pub struct Publisher {
    conn: Connection,
    client: api::publisher_client::PublisherClient<Channel>,
}

impl Publisher {
    /// Connects to the first gateway of `conn`.
    pub async fn connect(conn: impl Into<Connection>) -> Result<Publisher, ClientError> {
        let conn = conn.into();
        let client = api::publisher_client::PublisherClient::new(connect(&conn).await?);
        Ok(Publisher { conn, client })
    }

    /// Publishes one event to `stream` (empty: the gateway's default stream) and waits until
    /// it is stored.
    pub async fn publish(
        &mut self,
        stream: &str,
        event: &Event,
    ) -> Result<PublishOutcome, ClientError> {
        self.publish_expecting(stream, event, None).await
    }

    /// Publishes one event only if its resource's last stored sequence is
    /// `expected_subject_sequence` (0: the resource has no event yet); otherwise the gateway
    /// answers FAILED_PRECONDITION and stores nothing (optimistic concurrency).
    pub async fn publish_expecting(
        &mut self,
        stream: &str,
        event: &Event,
        expected_subject_sequence: Option<u64>,
    ) -> Result<PublishOutcome, ClientError> {
        let request = api::PublishRequest {
            event: Some(event_to_pb(event)),
            stream: stream.to_owned(),
            expected_subject_sequence,
        };
        let response = self
            .client
            .publish(self.conn.request(request))
            .await?
            .into_inner();
        match response.error {
            Some(e) => Err(status_from_pb(e).into()),
            None => Ok(response.into()),
        }
    }

    /// Publishes `events` pipelined over one `PublishStream` (the gateway stores them while
    /// more arrive) and returns one result per event, in order: an event the gateway refuses
    /// does not stop the others.
    pub async fn publish_all(
        &mut self,
        stream: &str,
        events: &[Event],
    ) -> Result<Vec<Result<PublishOutcome, tonic::Status>>, ClientError> {
        let requests: Vec<api::PublishRequest> = events
            .iter()
            .map(|e| api::PublishRequest {
                event: Some(event_to_pb(e)),
                stream: stream.to_owned(),
                expected_subject_sequence: None,
            })
            .collect();
        let mut responses = self
            .client
            .publish_stream(self.conn.request(futures::stream::iter(requests)))
            .await?
            .into_inner();
        let mut out = Vec::with_capacity(events.len());
        while let Some(r) = responses.message().await? {
            out.push(match r.error {
                Some(e) => Err(status_from_pb(e)),
                None => Ok(r.into()),
            });
        }
        if out.len() != events.len() {
            return Err(ClientError::Protocol(format!(
                "{} results for {} events",
                out.len(),
                events.len()
            )));
        }
        Ok(out)
    }
}
