//! `POST /v1/streams/{stream}/events`: CloudEvents in the CloudEvents HTTP protocol binding.
//!
//! - **Binary mode** (any other content type): attributes in `ce-*` headers, `Content-Type`
//!   is `datacontenttype`, the body is the data. Read by the same decoder as stored NATS
//!   messages (the NATS binding's headers are the HTTP binding's).
//! - **Structured mode** (`application/cloudevents+json`): the body is one event in the JSON
//!   event format.
//! - **Batch** (`application/cloudevents-batch+json`): a JSON array of events.
//!
//! Every event of a request goes through every check of the publish path (rate budget for the
//! whole batch, CloudEvents rules, subject, grant, size as NATS counts it:
//! [`crate::publish::Publisher::prepare_all`]) before any is sent: a request with one event
//! that fails stores nothing. Then they are published in order, pipelined like
//! `PublishStream`; each has its own result (NATS lost half-way, an expected sequence that
//! does not match), and a batch answers 207 when any was refused then. Publishing is
//! idempotent by (`source`, `id`) within the stream's duplicate window, so a client that lost
//! the answer sends the same request again.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};

use super::error::{error_json, respond};
use super::Api;
use crate::codec::{self, CodecError, InvalidEvent};
use crate::error::Error;
use crate::event::Event;
use crate::publish::{PublishRequest, Published};
use crate::telemetry::trace::TraceHeaders;

const BATCH: &str = "application/cloudevents-batch+json";

/// `/v1/streams/{stream}/events`, or `/v1/events` (no stream: the default one).
pub(super) async fn publish(
    State(api): State<Arc<Api>>,
    stream: Option<Path<String>>,
    request: Request,
) -> Response {
    handle(api, stream.map(|Path(s)| s).unwrap_or_default(), request).await
}

async fn handle(api: Arc<Api>, stream: String, request: Request) -> Response {
    let prepared = match prepare(&api, request).await {
        Ok(p) => p,
        Err(e) => {
            // Counted like a gRPC publish refused before it reached JetStream.
            api.publisher.refused(&stream, &e);
            return respond(e);
        }
    };
    match send(&api, stream, prepared).await {
        Ok(response) => response,
        Err(e) => respond(e),
    }
}

/// A request read and checked, ready to send.
struct Prepared {
    events: Vec<Event>,
    batch: bool,
    expected_subject_sequence: Option<u64>,
    caller: Option<Arc<crate::auth::Identity>>,
    trace: Option<TraceHeaders>,
}

/// How the body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Binary,
    Structured,
    Batch,
}

fn mode_of(headers: &HeaderMap) -> Result<Mode, Error> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or_default())
        .unwrap_or_default();
    // The batch type also starts with `application/cloudevents`: it is asked first.
    if codec::is_cloudevents_batch_json(content_type) {
        Ok(Mode::Batch)
    } else if codec::is_cloudevents_json(content_type) {
        Ok(Mode::Structured)
    } else if codec::is_structured_cloudevent(content_type) {
        Err(Error::invalid(
            "content-type",
            format!(
                "`{content_type}`: this gateway reads the JSON event format only \
                 (application/cloudevents+json, {BATCH}) or binary mode"
            ),
        ))
    } else {
        Ok(Mode::Binary)
    }
}

/// Query parameters a publish takes.
struct Query {
    expected_subject_sequence: Option<u64>,
    access_token: Option<String>,
}

fn query_of(uri: &http::Uri) -> Result<Query, Error> {
    let mut q = Query {
        expected_subject_sequence: None,
        access_token: None,
    };
    for (name, value) in super::query_pairs(uri) {
        match name.as_str() {
            "expected_subject_sequence" => {
                q.expected_subject_sequence = Some(value.parse().map_err(|_| {
                    Error::invalid(
                        "expected_subject_sequence",
                        format!("`{value}` is not a sequence number"),
                    )
                })?)
            }
            "access_token" => q.access_token = Some(value),
            other => {
                return Err(Error::invalid(
                    other,
                    "unknown query parameter; a publish takes expected_subject_sequence",
                ))
            }
        }
    }
    Ok(q)
}

/// Reads the body, at most `limit` bytes (refused from `Content-Length` before reading when
/// it says more).
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, Error> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = declared.filter(|&size| size > limit) {
        return Err(Error::RequestTooLarge { size, limit });
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::RequestTooLarge {
            size: limit + 1,
            limit,
        }),
        Err(e) => Err(Error::MalformedRequest(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn invalid_event(e: &CodecError, index: Option<usize>) -> Error {
    let attribute = e.attribute().unwrap_or("event").to_owned();
    let reason = match index {
        Some(i) => format!("event [{i}] of the batch: {e}"),
        None => e.to_string(),
    };
    Error::InvalidEvent(InvalidEvent::new(attribute, reason))
}

/// The events of a request body.
fn events_of(
    mode: Mode,
    headers: &HeaderMap,
    body: Bytes,
    max_batch: usize,
) -> Result<Vec<Event>, Error> {
    match mode {
        Mode::Structured => Ok(vec![
            codec::event_from_json(&body).map_err(|e| invalid_event(&e, None))?
        ]),
        Mode::Batch => {
            let items: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&body)
                .map_err(|e| {
                    Error::MalformedRequest(format!(
                        "a {BATCH} body is a JSON array of events: {e}"
                    ))
                })?;
            if items.len() > max_batch {
                return Err(Error::invalid(
                    "batch",
                    format!(
                        "{} events; a batch carries at most {max_batch} (http.max_batch_events)",
                        items.len()
                    ),
                ));
            }
            if items.is_empty() {
                return Err(Error::invalid("batch", "the batch is empty"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    codec::event_from_json(raw.get().as_bytes())
                        .map_err(|e| invalid_event(&e, Some(i)))
                })
                .collect()
        }
        Mode::Binary => {
            // The CloudEvents HTTP binding's binary mode is the NATS binding's: `ce-*` headers,
            // percent-encoded values, `Content-Type` for `datacontenttype`.
            let mut nats = async_nats::HeaderMap::new();
            for (name, value) in headers {
                let name = name.as_str();
                if !(name.starts_with("ce-") || name == "content-type") {
                    continue;
                }
                let value = value.to_str().map_err(|_| {
                    Error::InvalidEvent(InvalidEvent::new(
                        name.trim_start_matches("ce-"),
                        "the header value is not ASCII; percent-encode it as the HTTP binding says",
                    ))
                })?;
                nats.append(name, value);
            }
            if !headers.contains_key("ce-specversion") {
                return Err(Error::InvalidEvent(InvalidEvent::new(
                    "specversion",
                    "binary mode needs the `ce-specversion`, `ce-id`, `ce-source` and `ce-type` \
                     headers; or send application/cloudevents+json (structured mode) or \
                     application/cloudevents-batch+json",
                )));
            }
            Ok(vec![
                codec::decode(Some(&nats), body).map_err(|e| invalid_event(&e, None))?
            ])
        }
    }
}

/// The W3C trace context of the request's headers, when it has a `traceparent`.
fn trace_of(headers: &HeaderMap) -> Option<TraceHeaders> {
    TraceHeaders::of_call(|name| headers.get(name).and_then(|v| v.to_str().ok()))
}

fn published_json(p: &Published) -> Value {
    json!({
        "stream": p.stream,
        "subject": p.subject,
        "sequence": p.sequence,
        "duplicate": p.duplicate,
    })
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn prepare(api: &Api, request: Request) -> Result<Prepared, Error> {
    let (parts, body) = request.into_parts();
    let head = http::Request::from_parts(parts, ());
    let query = query_of(head.uri())?;
    let caller = api.identify(&head, query.access_token.as_deref())?;
    let headers = head.headers();
    let mode = mode_of(headers)?;
    let body = read_body(body, headers, api.settings.max_body_bytes).await?;
    let events = events_of(mode, headers, body, api.settings.max_batch_events)?;
    if mode == Mode::Batch && query.expected_subject_sequence.is_some() {
        return Err(Error::invalid(
            "expected_subject_sequence",
            "applies to one event; a batch cannot carry it",
        ));
    }
    Ok(Prepared {
        events,
        batch: mode == Mode::Batch,
        expected_subject_sequence: query.expected_subject_sequence,
        caller,
        trace: trace_of(headers),
    })
}

async fn send(api: &Api, stream: String, prepared: Prepared) -> Result<Response, Error> {
    let Prepared {
        events,
        batch,
        expected_subject_sequence,
        caller,
        trace,
    } = prepared;
    let requests = events
        .into_iter()
        .map(|event| PublishRequest {
            event,
            stream: stream.clone(),
            expected_subject_sequence,
            caller: caller.clone(),
            trace: trace.clone(),
        })
        .collect();
    // Every event passes every check (rate, rules, subject, grant, size) before any is sent.
    let ready = match api.publisher.prepare_all(requests) {
        Ok(ready) => ready,
        Err((index, e)) if batch => return Ok(batch_refused(index, e)),
        Err((_, e)) => return Err(e),
    };
    let mut results: Vec<Result<Published, Error>> = Vec::with_capacity(ready.len());
    let mut pending = VecDeque::new();
    for ready in ready {
        pending.push_back(api.publisher.send_ready(ready).await);
        while pending.len() >= api.max_pending_acks.max(1) {
            if let Some(sent) = pending.pop_front() {
                results.push(wait(sent).await);
            }
        }
    }
    while let Some(sent) = pending.pop_front() {
        results.push(wait(sent).await);
    }
    if !batch {
        return match results.pop() {
            Some(Ok(p)) => Ok(json_response(StatusCode::OK, &published_json(&p))),
            Some(Err(e)) => Err(e),
            None => Err(Error::Internal("no result".into())),
        };
    }
    let mut refused = 0;
    let results: Vec<Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(p) => published_json(&p),
            Err(e) => {
                refused += 1;
                let (_, error) = error_json(&tonic::Status::from(e));
                json!({ "error": error })
            }
        })
        .collect();
    let status = if refused == 0 {
        StatusCode::OK
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok(json_response(
        status,
        &json!({ "results": results, "refused": refused }),
    ))
}

/// A batch refused whole because of its event `index`: the error, with `index` beside it.
fn batch_refused(index: usize, e: Error) -> Response {
    let status = tonic::Status::from(e);
    let (code, mut error) = error_json(&status);
    error["index"] = index.into();
    let message = format!(
        "event [{index}] of the batch: {}; nothing of the batch was stored",
        status.message()
    );
    error["message"] = message.into();
    json_response(code, &json!({ "error": error }))
}

async fn wait(sent: Result<crate::publish::InFlight, Error>) -> Result<Published, Error> {
    match sent {
        Ok(in_flight) => in_flight.wait().await,
        Err(e) => Err(e),
    }
}
