//! `jetwatch.v1.Publisher`: unary and pipelined publishing.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use super::auth::caller;
use super::convert::event_from_pb;
use super::pb::jetwatch::v1 as api;
use crate::auth::Identity;
use crate::error::Error;
use crate::publish::{InFlight, PublishRequest, Published, Publisher};
use crate::telemetry::trace::TraceHeaders;

/// The Publisher service.
#[derive(Debug, Clone)]
pub struct PublisherService {
    publisher: Publisher,
    /// Publishes one `PublishStream` may have awaiting acknowledgement (pipelining depth).
    max_pending_acks: usize,
}

impl PublisherService {
    /// Serves `publisher`, pipelining at most `max_pending_acks` publishes per stream.
    pub fn new(publisher: Publisher, max_pending_acks: usize) -> PublisherService {
        PublisherService {
            publisher,
            max_pending_acks,
        }
    }
}

fn request_from_pb(
    req: api::PublishRequest,
    caller: Option<Arc<Identity>>,
    trace: Option<TraceHeaders>,
) -> Result<PublishRequest, Error> {
    let event = req
        .event
        .ok_or_else(|| Error::invalid("event", "a PublishRequest needs an event"))?;
    Ok(PublishRequest {
        event: event_from_pb(event, "event")?,
        stream: req.stream,
        expected_subject_sequence: req.expected_subject_sequence,
        caller,
        trace,
    })
}

/// The W3C trace context of a call's metadata, when it has a `traceparent`.
fn trace_of(metadata: &tonic::metadata::MetadataMap) -> Option<TraceHeaders> {
    TraceHeaders::of_call(|name| metadata.get(name).and_then(|v| v.to_str().ok()))
}

fn response_to_pb(p: Published) -> api::PublishResponse {
    api::PublishResponse {
        stream: p.stream,
        subject: p.subject,
        sequence: p.sequence,
        duplicate: p.duplicate,
        error: None,
    }
}

/// A failed publish inside a `PublishStream`: the same code, message and details as a unary
/// call's status.
fn error_response(e: Error) -> api::PublishResponse {
    let status = Status::from(e);
    let error = tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| {
        tonic_types::pb::Status {
            code: status.code() as i32,
            message: status.message().to_owned(),
            details: Vec::new(),
        }
    });
    api::PublishResponse {
        error: Some(error),
        ..Default::default()
    }
}

/// A publish sent (or refused before sending), in request order.
enum Pending {
    Sent(InFlight),
    Refused(Error),
    /// The request stream broke (a message too large or not protobuf): answer the requests
    /// before it, then end the stream with this.
    Broken(Status),
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<api::PublishResponse, Status>> + Send>>;

#[tonic::async_trait]
impl api::publisher_server::Publisher for PublisherService {
    async fn publish(
        &self,
        request: Request<api::PublishRequest>,
    ) -> Result<Response<api::PublishResponse>, Status> {
        let caller = caller(&request);
        let trace = trace_of(request.metadata());
        let message = request.into_inner();
        let named = message.stream.clone();
        let req = request_from_pb(message, caller, trace)
            .inspect_err(|e| self.publisher.refused(&named, e))?;
        let published = self.publisher.publish(req).await?;
        Ok(Response::new(response_to_pb(published)))
    }

    type PublishStreamStream = ResponseStream;

    async fn publish_stream(
        &self,
        request: Request<Streaming<api::PublishRequest>>,
    ) -> Result<Response<Self::PublishStreamStream>, Status> {
        let caller = caller(&request);
        // The stream's metadata is the trace context of every event it carries.
        let trace = trace_of(request.metadata());
        let mut inbound = request.into_inner();
        // The queue bounds publishes awaiting acknowledgement; the output channel bounds
        // answers the client has not read yet.
        let (queue_tx, mut queue_rx) = mpsc::channel::<Pending>(self.max_pending_acks);
        let (out_tx, out_rx) = mpsc::channel(self.max_pending_acks);
        let publisher = self.publisher.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let req = match next {
                    Ok(req) => req,
                    Err(status) => {
                        let _ = queue_tx
                            .send(Pending::Broken(super::status::from_request_read(status)))
                            .await;
                        break;
                    }
                };
                let named = req.stream.clone();
                let pending = match request_from_pb(req, caller.clone(), trace.clone()) {
                    Ok(req) => match publisher.send(req).await {
                        Ok(f) => Pending::Sent(f),
                        // Counted by the publish path.
                        Err(e) => Pending::Refused(e),
                    },
                    Err(e) => {
                        publisher.refused(&named, &e);
                        Pending::Refused(e)
                    }
                };
                if queue_tx.send(pending).await.is_err() {
                    break;
                }
            }
        });
        tokio::spawn(async move {
            while let Some(pending) = queue_rx.recv().await {
                let response = match pending {
                    Pending::Sent(f) => match f.wait().await {
                        Ok(p) => response_to_pb(p),
                        Err(e) => error_response(e),
                    },
                    Pending::Refused(e) => error_response(e),
                    Pending::Broken(status) => {
                        let _ = out_tx.send(Err(status)).await;
                        break;
                    }
                };
                if out_tx.send(Ok(response)).await.is_err() {
                    // The client went away; publishes already sent are stored regardless.
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}
