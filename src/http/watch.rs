//! `GET /v1/streams/{stream}/events`: a watch as Server-Sent Events or NDJSON.
//!
//! The query says what to watch (`from`, `subject` (repeatable), `filter` (CESQL),
//! `durable`, `heartbeat`, `on_expired`, `max_in_flight`); it becomes the same `Open` a gRPC
//! `Watch` sends, checked by the same code with the same limits. The subscription is the
//! engine's, served by the same response loop as gRPC ([`crate::grpc::subscriber::respond`]):
//! same window, same runs, same end at shutdown, expiry and revocation.
//!
//! **Server-Sent Events** (`Accept: text/event-stream`): a delivery is a plain `message`
//! event whose `id:` is the stream sequence, so a browser's `EventSource` resumes after a
//! disconnect with `Last-Event-ID` by itself (the gateway starts just after it; a durable
//! resumes from its own position instead). Snapshots arrive in sequence order, so resuming
//! in the middle of one loses nothing. Named events: `opened` (with `id: start - 1` unless a
//! snapshot or a durable), `bookmark` and `snapshot_end` (with an `id:`, so resuming continues
//! after them), and `end` (with `id: last_delivered_sequence`) when the gateway ends the stream
//! (shutdown, lost NATS, an expired token), after which `EventSource` reconnects. A refusal at
//! open that may pass later is such a stream too (`retry:` and `end`): `EventSource` gives up
//! for good on any other answer. Idle streams get a comment every `http.keepalive_interval`.
//!
//! **NDJSON** (anything else): one JSON object per line: a delivery is
//! `{"event":{...},"sequence":N,"subject":"..."}` (the event in the JSON event format), the
//! others `{"opened":{...}}`, `{"bookmark":{...}}`, `{"snapshot_end":{...}}` and a last
//! `{"error":{...}}` when the gateway ends the stream.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::json;

use super::error::{error_json, respond};
use super::Api;
use crate::engine::{Item, StoredEvent};
use crate::error::Error;
use crate::grpc::pb::jetwatch::v1 as api;
use crate::grpc::subscriber::{self, Lifecycle, Wire};

/// `/v1/streams/{stream}/events`, or `/v1/events` (no stream: the default one).
pub(super) async fn watch(
    State(api): State<Arc<Api>>,
    stream: Option<Path<String>>,
    request: Request,
) -> Response {
    handle(api, stream.map(|Path(s)| s).unwrap_or_default(), request).await
}

async fn handle(api: Arc<Api>, stream: String, request: Request) -> Response {
    let sse = wants_sse(request.headers());
    match open(&api, stream, request).await {
        Ok(response) => response,
        // A browser's EventSource gives up for good on any answer but 200 with
        // text/event-stream, and retries only after a stream that ends. So a refusal that is
        // worth retrying (NATS unavailable, shutting down, a limit) is a stream that says so
        // and ends at once; the browser tries again after `retry:`.
        Err(e) if sse && retry_later(&e) => {
            let (_, error) = error_json(&tonic::Status::from(e));
            let wait = error["retry_after_ms"]
                .as_u64()
                .map_or(api.settings.sse_retry, Duration::from_millis)
                .max(api.settings.sse_retry);
            let mut body = BytesMut::new();
            body.put_slice(format!("retry: {}\n", wait.as_millis()).as_bytes());
            body.put_slice(&Sse::named("end", None, &error));
            (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/event-stream"),
                    ),
                    (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
                ],
                body.freeze(),
            )
                .into_response()
        }
        Err(e) => respond(e),
    }
}

/// Whether a watch refused at open may succeed if asked again later, unchanged.
fn retry_later(e: &Error) -> bool {
    matches!(
        e,
        Error::Unavailable { .. }
            | Error::ShuttingDown
            | Error::RateLimited { .. }
            | Error::ResourceExhausted(_)
    )
}

/// The JSON of one delivery, made once per event and shared by every HTTP watcher.
fn delivery_json(event: &StoredEvent) -> &Bytes {
    event.json.get_or_init(|| {
        let body = match crate::codec::event_to_json(&event.event) {
            Ok(e) => json!({"sequence": event.sequence, "subject": event.subject, "event": e}),
            // Stored events were checked when read; this cannot happen, but a watcher must
            // still learn where the stream is.
            Err(e) => json!({
                "sequence": event.sequence,
                "subject": event.subject,
                "error": format!("the event cannot be written as JSON: {e}"),
            }),
        };
        Bytes::from(body.to_string())
    })
}

/// The JSON of a delivery: the shared one, with `delivery_count` added to a redelivery's.
fn delivery(event: &StoredEvent, delivery_count: u32) -> Bytes {
    let shared = delivery_json(event);
    if delivery_count <= 1 {
        return shared.clone();
    }
    let mut body: serde_json::Value = serde_json::from_slice(shared).unwrap_or_default();
    body["delivery_count"] = delivery_count.into();
    Bytes::from(body.to_string())
}

/// Server-Sent Events.
struct Sse {
    retry: Duration,
    /// Whether the start is a position a reconnect can continue from (not a snapshot, not a
    /// durable): then `opened` carries `id: start - 1`, so a client that loses the stream
    /// before its first event resumes without missing what was stored meanwhile.
    resumable: bool,
    /// Whether an `id:` was sent: then `end` carries `id: last_delivered_sequence` too.
    id_sent: std::cell::Cell<bool>,
}

impl Sse {
    /// A plain message event whose `id:` is `sequence`.
    fn message(sequence: u64, json: &[u8]) -> Bytes {
        use std::fmt::Write as _;
        let mut out = BytesMut::with_capacity(json.len() + 40);
        let _ = write!(out, "id: {sequence}\ndata: ");
        // JSON text has no raw newlines, so it is one `data:` line.
        out.put_slice(json);
        out.put_slice(b"\n\n");
        out.freeze()
    }

    fn named(name: &str, id: Option<u64>, data: &serde_json::Value) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_slice(b"event: ");
        out.put_slice(name.as_bytes());
        out.put_u8(b'\n');
        if let Some(id) = id {
            out.put_slice(format!("id: {id}\n").as_bytes());
        }
        out.put_slice(b"data: ");
        out.put_slice(data.to_string().as_bytes());
        out.put_slice(b"\n\n");
        out.freeze()
    }
}

impl Wire for Sse {
    type Frame = Bytes;
    type End = Bytes;

    fn opened(&self, id: &str, start_sequence: u64, last_sequence: u64) -> Bytes {
        let mut out = BytesMut::new();
        out.put_slice(format!("retry: {}\n", self.retry.as_millis()).as_bytes());
        let resume_after = self.resumable.then(|| start_sequence.saturating_sub(1));
        self.id_sent.set(resume_after.is_some());
        out.put_slice(&Sse::named(
            "opened",
            resume_after,
            &json!({"subscription_id": id, "start_sequence": start_sequence,
                    "last_sequence": last_sequence}),
        ));
        out.freeze()
    }

    fn first_delivery(&self, event: Arc<StoredEvent>, _more: bool) -> Bytes {
        self.id_sent.set(true);
        Sse::message(event.sequence, delivery_json(&event))
    }

    fn item(&self, item: &Item) -> Bytes {
        self.id_sent.set(true);
        match item {
            Item::Delivery {
                event,
                delivery_count,
            } => Sse::message(event.sequence, &delivery(event, *delivery_count)),
            Item::Bookmark { sequence, pending } => Sse::named(
                "bookmark",
                Some(*sequence),
                &json!({"sequence": sequence, "pending": pending}),
            ),
            Item::SnapshotEnd { sequence } => Sse::named(
                "snapshot_end",
                Some(*sequence),
                &json!({ "sequence": sequence }),
            ),
        }
    }

    fn delivery_bytes(&self, event: &StoredEvent) -> u64 {
        delivery_json(event).len() as u64 + 16
    }

    fn end(&self, status: tonic::Status) -> Bytes {
        let (_, error) = error_json(&status);
        // Where the stream got to, once it has said where it was: a reconnect continues there.
        let id = self
            .id_sent
            .get()
            .then(|| {
                error["metadata"]["last_delivered_sequence"]
                    .as_str()?
                    .parse()
                    .ok()
            })
            .flatten();
        Sse::named("end", id, &error)
    }
}

/// Newline-delimited JSON.
struct Ndjson;

impl Ndjson {
    fn line(value: &serde_json::Value) -> Bytes {
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn raw_line(json: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(json.len() + 1);
        out.put_slice(json);
        out.put_u8(b'\n');
        out.freeze()
    }
}

impl Wire for Ndjson {
    type Frame = Bytes;
    type End = Bytes;

    fn opened(&self, id: &str, start_sequence: u64, last_sequence: u64) -> Bytes {
        Ndjson::line(&json!({"opened": {"subscription_id": id,
            "start_sequence": start_sequence, "last_sequence": last_sequence}}))
    }

    fn first_delivery(&self, event: Arc<StoredEvent>, _more: bool) -> Bytes {
        Ndjson::raw_line(delivery_json(&event))
    }

    fn item(&self, item: &Item) -> Bytes {
        match item {
            Item::Delivery {
                event,
                delivery_count,
            } => Ndjson::raw_line(&delivery(event, *delivery_count)),
            Item::Bookmark { sequence, pending } => {
                Ndjson::line(&json!({"bookmark": {"sequence": sequence, "pending": pending}}))
            }
            Item::SnapshotEnd { sequence } => {
                Ndjson::line(&json!({"snapshot_end": {"sequence": sequence}}))
            }
        }
    }

    fn delivery_bytes(&self, event: &StoredEvent) -> u64 {
        delivery_json(event).len() as u64 + 1
    }

    fn end(&self, status: tonic::Status) -> Bytes {
        let (_, error) = error_json(&status);
        Ndjson::line(&json!({ "error": error }))
    }
}

/// What the query asks for.
struct Query {
    open: api::Open,
    access_token: Option<String>,
}

fn parse_query(uri: &http::Uri) -> Result<Query, Error> {
    use api::start_position::Position;
    let mut open = api::Open::default();
    let mut access_token = None;
    for (name, value) in super::query_pairs(uri) {
        match name.as_str() {
            "subject" => open.subjects.push(value),
            "filter" => {
                open.filter = Some(api::Filter {
                    filter: Some(api::filter::Filter::Sql(value)),
                })
            }
            "from" => {
                let position = match value.as_str() {
                    "new" => Position::New(()),
                    "earliest" => Position::Earliest(()),
                    "snapshot" => Position::Snapshot(()),
                    "resume" => Position::Resume(()),
                    v => match v.parse::<u64>() {
                        Ok(seq) => Position::Sequence(seq),
                        Err(_) => match chrono::DateTime::parse_from_rfc3339(v) {
                            Ok(t) => Position::Time(prost_types::Timestamp {
                                seconds: t.timestamp(),
                                nanos: t.timestamp_subsec_nanos() as i32,
                            }),
                            Err(_) => {
                                return Err(Error::invalid(
                                    "from",
                                    format!(
                                        "`{v}`: use new, earliest, snapshot, resume, a sequence \
                                         number or an RFC 3339 time"
                                    ),
                                ))
                            }
                        },
                    },
                };
                open.start = Some(api::StartPosition {
                    position: Some(position),
                });
            }
            "durable" => open.durable = value,
            "heartbeat" => {
                let d = humantime::parse_duration(&value).map_err(|e| {
                    Error::invalid("heartbeat", format!("`{value}` is not a duration: {e}"))
                })?;
                open.heartbeat = Some(prost_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: d.subsec_nanos() as i32,
                });
            }
            "on_expired" => {
                open.on_expired = match value.as_str() {
                    "fail" => api::OnExpired::Fail,
                    "earliest" => api::OnExpired::FromEarliest,
                    "snapshot" => api::OnExpired::FromSnapshot,
                    v => {
                        return Err(Error::invalid(
                            "on_expired",
                            format!("`{v}`: use fail, earliest or snapshot"),
                        ))
                    }
                } as i32
            }
            "max_in_flight" => {
                open.max_in_flight = value.parse().map_err(|_| {
                    Error::invalid("max_in_flight", format!("`{value}` is not a number"))
                })?
            }
            "access_token" => access_token = Some(value),
            other => {
                return Err(Error::invalid(
                    other,
                    "unknown query parameter; a watch takes from, subject, filter, durable, \
                     heartbeat, on_expired, max_in_flight",
                ))
            }
        }
    }
    Ok(Query { open, access_token })
}

/// Whether the client asked for Server-Sent Events.
fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// The sequence a reconnecting `EventSource` last saw.
fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        Error::invalid(
            "last-event-id",
            format!("`{text}` is not a stream sequence (the ids this gateway sends are)"),
        )
    })
}

/// An invalid `Open` field, named by the query parameter that set it.
fn query_field(e: Error) -> Error {
    match e {
        Error::InvalidArgument { field, reason } => {
            let rest = field.strip_prefix("open.").unwrap_or(&field);
            let field = match rest.split(['.', '[']).next().unwrap_or(rest) {
                "subjects" => rest.replacen("subjects", "subject", 1),
                "filter" => "filter".to_owned(),
                "start" => "from".to_owned(),
                other => other.to_owned(),
            };
            Error::InvalidArgument { field, reason }
        }
        other => other,
    }
}

fn peer_of(head: &http::Request<()>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = head.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|t| t.get_ref().remote_addr())
        })
}

async fn open(api: &Api, stream: String, request: Request) -> Result<Response, Error> {
    let head = http::Request::from_parts(request.into_parts().0, ());
    let Query {
        mut open,
        access_token,
    } = parse_query(head.uri())?;
    let caller = api.identify(&head, access_token.as_deref())?;
    let sse = wants_sse(head.headers());
    open.stream = stream;
    if let Some(seen) = last_event_id(head.headers())? {
        // A durable resumes from its own stored position; anything else just after the last
        // event the client saw.
        if open.durable.is_empty() {
            let next = seen.checked_add(1).ok_or_else(|| {
                Error::invalid("last-event-id", "is past the last possible sequence")
            })?;
            open.start = Some(api::StartPosition {
                position: Some(api::start_position::Position::Sequence(next)),
            });
        }
    }
    let resumable = open.durable.is_empty()
        && open.on_expired != api::OnExpired::FromSnapshot as i32
        && !matches!(
            open.start.as_ref().and_then(|s| s.position.as_ref()),
            Some(api::start_position::Position::Snapshot(()))
        );
    let mut req =
        crate::grpc::convert::open_from_pb(open, &api.default_stream, &api.subscribe, true)
            .map_err(query_field)?;
    let expires = subscriber::expiry(caller.as_deref());
    let revoked = api.engine.auth().revocation(caller.as_deref());
    req.caller = caller;
    let life = Lifecycle::new(&req, peer_of(&head), None);
    let sub = api.engine.open(req).await?;
    let shutdown = api.shutdown.clone();
    let (content_type, body): (&str, axum::body::Body) = if sse {
        let items = subscriber::respond(
            Sse {
                retry: api.settings.sse_retry,
                resumable,
                id_sent: std::cell::Cell::new(false),
            },
            sub,
            life,
            true,
            None,
            shutdown,
            expires,
            revoked,
        );
        (
            "text/event-stream",
            body_of(with_keepalive(items, api.settings.keepalive_interval)),
        )
    } else {
        let items = subscriber::respond(Ndjson, sub, life, true, None, shutdown, expires, revoked);
        ("application/x-ndjson", body_of(items))
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Proxies that buffer responses (nginx) must pass events on at once.
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

/// Frames gathered into one body chunk at most: what is ready is written together (one chunk,
/// one write), nothing waits for more.
const CHUNK_FRAMES: usize = 64;

/// The response body: every frame, then the end frame if the subscription failed.
fn body_of(items: impl Stream<Item = Result<Bytes, Bytes>> + Send + 'static) -> axum::body::Body {
    let chunks = items
        .map(|r| r.unwrap_or_else(|end| end))
        .ready_chunks(CHUNK_FRAMES)
        .map(|frames| {
            let chunk = match <[Bytes; 1]>::try_from(frames) {
                Ok([one]) => one,
                Err(frames) => {
                    let mut chunk = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
                    for f in &frames {
                        chunk.put_slice(f);
                    }
                    chunk.freeze()
                }
            };
            Ok::<Bytes, std::convert::Infallible>(chunk)
        });
    axum::body::Body::from_stream(chunks)
}

/// `items` with a keep-alive comment whenever nothing was written for `every`.
fn with_keepalive(
    items: impl Stream<Item = Result<Bytes, Bytes>> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Result<Bytes, Bytes>> + Send + 'static {
    let items = Box::pin(items);
    futures::stream::unfold(Some(items), move |state| async move {
        let mut items = state?;
        tokio::select! {
            next = items.next() => next.map(|n| (n, Some(items))),
            () = tokio::time::sleep(every) => {
                Some((Ok(Bytes::from_static(b": keep-alive\n\n")), Some(items)))
            }
        }
    })
}
