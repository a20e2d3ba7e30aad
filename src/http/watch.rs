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
use crate::grpc::subscriber::{self, Wire};

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
            body.put_slice(&Format::Sse.control("end", None, error));
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

/// The JSON of a redelivery: the shared one, with `delivery_count` added.
fn redelivery_json(event: &StoredEvent, delivery_count: u32) -> Vec<u8> {
    let mut body: serde_json::Value =
        serde_json::from_slice(delivery_json(event)).unwrap_or_default();
    body["delivery_count"] = delivery_count.into();
    body.to_string().into_bytes()
}

/// How a watch over HTTP is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Server-Sent Events.
    Sse,
    /// Newline-delimited JSON.
    Ndjson,
}

impl Format {
    /// The bytes a delivery adds around its JSON, at most (`id: ` and 20 digits, `data: `).
    const fn framing(self) -> usize {
        match self {
            Format::Sse => 34,
            Format::Ndjson => 1,
        }
    }

    /// Appends a delivery of `sequence` whose JSON is `json`.
    fn delivery(self, sequence: u64, json: &[u8], out: &mut BytesMut) {
        use std::fmt::Write as _;
        if self == Format::Sse {
            let _ = write!(out, "id: {sequence}\ndata: ");
        }
        // JSON text has no raw newlines: one `data:` line, one NDJSON line.
        out.put_slice(json);
        out.put_slice(match self {
            Format::Sse => b"\n\n",
            Format::Ndjson => b"\n",
        });
    }

    /// Anything but a delivery: a named event (SSE) or a `{"name": data}` line (NDJSON).
    fn control(self, name: &str, id: Option<u64>, data: serde_json::Value) -> Bytes {
        use std::fmt::Write as _;
        let mut out = BytesMut::with_capacity(64);
        match self {
            Format::Sse => {
                let _ = writeln!(out, "event: {name}");
                if let Some(id) = id {
                    let _ = writeln!(out, "id: {id}");
                }
                let _ = write!(out, "data: {data}\n\n");
            }
            Format::Ndjson => {
                let _ = writeln!(out, "{}", json!({ name: data }));
            }
        }
        out.freeze()
    }
}

/// One piece of an HTTP watch's body: a first delivery, written straight from the event's
/// shared JSON into the body chunk (no buffer of its own), or bytes made for anything else.
enum Piece {
    Delivery(Arc<StoredEvent>),
    Bytes(Bytes),
}

impl Piece {
    fn len(&self, format: Format) -> usize {
        match self {
            Piece::Delivery(event) => delivery_json(event).len() + format.framing(),
            Piece::Bytes(b) => b.len(),
        }
    }

    fn write(&self, format: Format, out: &mut BytesMut) {
        match self {
            Piece::Delivery(event) => format.delivery(event.sequence, delivery_json(event), out),
            Piece::Bytes(b) => out.put_slice(b),
        }
    }
}

/// The HTTP transport of a watch (see the module docs).
struct HttpWire {
    format: Format,
    /// SSE's reconnection delay (`retry:`).
    retry: Duration,
    /// Whether the start is a position a reconnect can continue from (not a snapshot, not a
    /// durable): then SSE's `opened` carries `id: start - 1`, so a client that loses the stream
    /// before its first event resumes without missing what was stored meanwhile.
    resumable: bool,
    /// Whether an SSE `id:` was sent: then `end` carries `id: last_delivered_sequence` too.
    id_sent: std::cell::Cell<bool>,
}

impl Wire for HttpWire {
    type Frame = Piece;
    type End = Piece;

    fn opened(&self, id: &str, start_sequence: u64, last_sequence: u64) -> Piece {
        let resume_after = self.resumable.then(|| start_sequence.saturating_sub(1));
        self.id_sent.set(resume_after.is_some());
        let opened = self.format.control(
            "opened",
            resume_after,
            json!({"subscription_id": id, "start_sequence": start_sequence,
                   "last_sequence": last_sequence}),
        );
        if self.format == Format::Ndjson {
            return Piece::Bytes(opened);
        }
        let mut out = BytesMut::new();
        out.put_slice(format!("retry: {}\n", self.retry.as_millis()).as_bytes());
        out.put_slice(&opened);
        Piece::Bytes(out.freeze())
    }

    fn first_delivery(&self, event: Arc<StoredEvent>, _more: bool) -> Piece {
        self.id_sent.set(true);
        Piece::Delivery(event)
    }

    fn item(&self, item: &Item) -> Piece {
        self.id_sent.set(true);
        match item {
            Item::Delivery {
                event,
                delivery_count: 0 | 1,
            } => Piece::Delivery(event.clone()),
            Item::Delivery {
                event,
                delivery_count,
            } => {
                let json = redelivery_json(event, *delivery_count);
                let mut out = BytesMut::with_capacity(json.len() + self.format.framing());
                self.format.delivery(event.sequence, &json, &mut out);
                Piece::Bytes(out.freeze())
            }
            Item::Bookmark { sequence, pending } => Piece::Bytes(self.format.control(
                "bookmark",
                Some(*sequence),
                json!({"sequence": sequence, "pending": pending}),
            )),
            Item::SnapshotEnd { sequence } => Piece::Bytes(self.format.control(
                "snapshot_end",
                Some(*sequence),
                json!({ "sequence": sequence }),
            )),
        }
    }

    fn delivery_bytes(&self, event: &StoredEvent) -> u64 {
        (delivery_json(event).len() + self.format.framing()) as u64
    }

    fn end(&self, status: tonic::Status) -> Piece {
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
        let name = match self.format {
            Format::Sse => "end",
            Format::Ndjson => "error",
        };
        Piece::Bytes(self.format.control(name, id, error))
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
    let req = crate::grpc::convert::open_from_pb(
        open,
        api.publisher.default_stream(),
        &api.subscribe,
        true,
    )
    .map_err(query_field)?;
    let (format, content_type) = if sse {
        (Format::Sse, "text/event-stream")
    } else {
        (Format::Ndjson, "application/x-ndjson")
    };
    let wire = HttpWire {
        format,
        retry: api.settings.sse_retry,
        resumable,
        id_sent: std::cell::Cell::new(false),
    };
    let items = subscriber::watch(
        &api.engine,
        wire,
        req,
        caller,
        peer_of(&head),
        None,
        api.shutdown.clone(),
    )
    .await?;
    let keepalive = sse.then_some(api.settings.keepalive_interval);
    let body = body_of(items, format, keepalive);
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

/// An SSE comment, for idle streams.
const KEEPALIVE: &[u8] = b": keep-alive\n\n";

/// The response body: every frame, then the end frame if the subscription failed, the frames
/// ready together written into one chunk; with `keepalive`, a comment when nothing was
/// written for that long.
fn body_of(
    items: subscriber::Responses<HttpWire>,
    format: Format,
    keepalive: Option<Duration>,
) -> axum::body::Body {
    let chunks = items
        .map(|r| r.unwrap_or_else(|end| end))
        .ready_chunks(CHUNK_FRAMES)
        .map(move |pieces| {
            let mut chunk = BytesMut::with_capacity(pieces.iter().map(|p| p.len(format)).sum());
            for piece in &pieces {
                piece.write(format, &mut chunk);
            }
            chunk.freeze()
        });
    let chunks = match keepalive {
        Some(every) => with_keepalive(chunks, every).left_stream(),
        None => chunks.right_stream(),
    };
    axum::body::Body::from_stream(chunks.map(Ok::<Bytes, std::convert::Infallible>))
}

/// `chunks` with a keep-alive comment whenever nothing was written for a whole `every`. One
/// timer per stream, re-armed once per `every` (never per chunk): a busy stream only sets a
/// flag.
fn with_keepalive(
    chunks: impl Stream<Item = Bytes> + Send + 'static,
    every: Duration,
) -> impl Stream<Item = Bytes> + Send + 'static {
    struct State<S> {
        chunks: std::pin::Pin<Box<S>>,
        tick: std::pin::Pin<Box<tokio::time::Sleep>>,
        wrote: bool,
    }
    let state = State {
        chunks: Box::pin(chunks),
        tick: Box::pin(tokio::time::sleep(every)),
        wrote: false,
    };
    futures::stream::unfold(state, move |mut st| async move {
        loop {
            tokio::select! {
                biased;
                next = st.chunks.next() => {
                    st.wrote = true;
                    return next.map(|chunk| (chunk, st));
                }
                () = st.tick.as_mut() => {
                    st.tick.as_mut().reset(tokio::time::Instant::now() + every);
                    if !std::mem::take(&mut st.wrote) {
                        return Some((Bytes::from_static(KEEPALIVE), st));
                    }
                }
            }
        }
    })
}
