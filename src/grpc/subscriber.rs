//! `jetwatch.v1.Subscriber`: `Watch` and `Subscribe`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::convert::open_from_pb;
use super::frame::Frame;
use super::pb::jetwatch::v1 as api;
use super::status::to_status;
use crate::config::SubscribeSettings;
use crate::engine::{Batch, Control, Engine, Item, StoredEvent, Subscription, Window};
use crate::error::Error;
use crate::telemetry::metrics::{EndLabels, Kind, KindLabels};
use crate::telemetry::{DeliveryCounters, Path, METRICS};

/// The Subscriber service.
#[derive(Debug, Clone)]
pub struct SubscriberService {
    engine: Engine,
    default_stream: String,
    defaults: SubscribeSettings,
    /// Cancelled at shutdown: open streams end with UNAVAILABLE.
    shutdown: CancellationToken,
}

impl SubscriberService {
    /// Serves subscriptions from `engine`.
    pub fn new(
        engine: Engine,
        default_stream: String,
        defaults: SubscribeSettings,
        shutdown: CancellationToken,
    ) -> SubscriberService {
        SubscriberService {
            engine,
            default_stream,
            defaults,
            shutdown,
        }
    }
}

/// A subscription's responses, ready for the wire.
pub(crate) type ResponseStream = Responses<Grpc>;

/// How a transport writes a subscription's items: gRPC frames here, Server-Sent Events and
/// NDJSON chunks in [`crate::http`]. The stream logic (runs, window, shutdown, expiry,
/// revocation, metrics) is the same for every transport; only the bytes differ.
pub(crate) trait Wire: Send + 'static {
    /// One piece of the response.
    type Frame: Send + 'static;
    /// How the response ends when the subscription fails.
    type End: Send + 'static;
    /// The first frame: the subscription is open.
    fn opened(&self, id: &str, start_sequence: u64, last_sequence: u64) -> Self::Frame;
    /// A first delivery of a run; `more` says whether more of the run follows at once.
    fn first_delivery(&self, event: Arc<StoredEvent>, more: bool) -> Self::Frame;
    /// The first deliveries of a prefix of `run` in one frame, and how many events it holds,
    /// when the transport has them encoded already.
    fn shared_run(&self, _run: &[Arc<StoredEvent>]) -> Option<(Self::Frame, usize)> {
        None
    }
    /// Any other item.
    fn item(&self, item: &Item) -> Self::Frame;
    /// The bytes one delivery of `event` puts on the wire (for the metrics).
    fn delivery_bytes(&self, event: &StoredEvent) -> u64;
    /// The end of a failed subscription, from the one error table.
    fn end(&self, status: Status) -> Self::End;
}

/// The gRPC transport: protobuf frames, each event's encoding made once and shared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grpc;

impl Wire for Grpc {
    type Frame = Frame;
    type End = Status;

    fn opened(&self, id: &str, start_sequence: u64, last_sequence: u64) -> Frame {
        Frame::Message(Box::new(api::SubscribeResponse {
            response: Some(api::subscribe_response::Response::Opened(api::Opened {
                subscription_id: id.to_owned(),
                start_sequence,
                last_sequence,
            })),
        }))
    }

    fn first_delivery(&self, event: Arc<StoredEvent>, more: bool) -> Frame {
        Frame::first_delivery(event, more)
    }

    fn shared_run(&self, run: &[Arc<StoredEvent>]) -> Option<(Frame, usize)> {
        Frame::shared_run(run)
    }

    fn item(&self, item: &Item) -> Frame {
        Frame::of(item)
    }

    fn delivery_bytes(&self, event: &StoredEvent) -> u64 {
        // The body is encoded once per event (and cached); this only reads its length.
        super::frame::delivery_body(event).len() as u64 + 2
    }

    fn end(&self, status: Status) -> Status {
        status
    }
}

/// A subscription's responses in a transport's frames.
pub(crate) type Responses<W> =
    Pin<Box<dyn Stream<Item = Result<<W as Wire>::Frame, <W as Wire>::End>> + Send>>;

/// State of one response stream.
struct Out<W: Wire> {
    wire: W,
    opened: Option<W::Frame>,
    items: mpsc::Receiver<Result<Batch, Box<Error>>>,
    /// The rest of the run of deliveries being sent, and the run's length (its window
    /// permits return together when the run is done).
    run: std::vec::IntoIter<Arc<StoredEvent>>,
    run_len: usize,
    /// The subscription's window, told about each item sent.
    window: Window,
    /// Where sent sequences are reported (subscriptions that acknowledge as sent).
    sent: Option<mpsc::Sender<u64>>,
    /// Keeps the control channel open for Watch (which has no client messages).
    _control: Option<mpsc::Sender<Box<Control>>>,
    /// The subscription's place in its identity's limit, given back when the stream ends.
    _slot: crate::auth::SubscriptionSlot,
    /// Errors found on the request side (e.g. a second `Open`).
    control: Option<mpsc::Receiver<Error>>,
    shutdown: CancellationToken,
    /// The last sequence delivered (or passed by a bookmark): what a client resumes after.
    last_delivered: u64,
    /// When the caller's credential expires: the stream ends then (UNAUTHENTICATED,
    /// `TOKEN_EXPIRED`) so the client resumes with a new one.
    expires: Option<tokio::time::Instant>,
    /// Cancelled when the caller's static token is revoked: the stream ends (UNAUTHENTICATED).
    revoked: Option<CancellationToken>,
    done: bool,
    /// Metrics and logs of the subscription's life.
    life: Lifecycle,
    /// The read the run in hand came from, its bytes so far, and when its oldest event was
    /// stored (counted when the run is done).
    run_path: Path,
    run_bytes: u64,
    run_oldest: Option<chrono::DateTime<chrono::Utc>>,
    /// The span of the run in hand, when spans are exported: it links to the traces of the
    /// events it carries and ends when the run is sent.
    run_span: Option<tracing::Span>,
}

/// Links a delivery span makes at most (to the traces of the events it carries).
const MAX_SPAN_LINKS: usize = 32;

/// A span for delivering `events` of a subscription, when spans are exported and one of them
/// carries a trace.
fn delivery_span<'a>(
    life: &Lifecycle,
    path: Path,
    events: impl Iterator<Item = &'a StoredEvent> + Clone,
) -> Option<tracing::Span> {
    if !crate::telemetry::trace::exporting()
        || !events
            .clone()
            .any(|e| e.event.attributes.contains_key("traceparent"))
    {
        return None;
    }
    let span = tracing::info_span!(
        parent: &life.span,
        "jetwatch.deliver",
        otel.kind = "producer",
        stream = %life.labels.stream,
        path = ?path,
    );
    crate::telemetry::trace::link_events(&span, events.map(|e| &e.event), MAX_SPAN_LINKS);
    Some(span)
}

/// One subscription's metrics and log span, from its open to its end (on drop).
struct Lifecycle {
    labels: KindLabels,
    counters: DeliveryCounters,
    span: tracing::Span,
    /// How it ended: `client_gone` unless the stream ended with an error.
    reason: std::borrow::Cow<'static, str>,
    /// The gRPC code it ended with, for the call metrics (`CANCELLED` when the client left).
    code: &'static str,
    /// The gRPC method, for the call metrics (`None`: not a gRPC call).
    method: Option<&'static str>,
    opened: std::time::Instant,
    /// Whether the engine opened it (one refused at open is counted by the call layer).
    is_open: bool,
}

impl Lifecycle {
    /// A subscription about to open: counted when [`Lifecycle::opened`] says it did. `method`
    /// is the gRPC method, counted in the call metrics (`None` for other transports).
    fn new(
        req: &crate::engine::OpenRequest,
        peer: Option<std::net::SocketAddr>,
        method: Option<&'static str>,
    ) -> Lifecycle {
        let kind = if req.durable.is_some() {
            Kind::durable
        } else if req.ack_mode == crate::engine::AckMode::Explicit {
            Kind::explicit
        } else {
            Kind::ephemeral
        };
        let span = tracing::info_span!(
            "subscription",
            id = tracing::field::Empty,
            peer = peer.map(|p| p.to_string()).unwrap_or_default(),
            identity = req.caller.as_ref().map(|c| c.id.as_str()).unwrap_or(""),
            stream = %req.stream,
            durable = req.durable.as_deref().unwrap_or(""),
            start = ?req.start,
        );
        Lifecycle {
            labels: KindLabels {
                stream: req.stream.clone(),
                kind,
            },
            counters: DeliveryCounters::of(&req.stream),
            span,
            reason: "client_gone".into(),
            code: "CANCELLED",
            method,
            opened: std::time::Instant::now(),
            is_open: false,
        }
    }

    /// The engine opened it as `id`.
    fn opened(&mut self, id: &str, start_sequence: u64) {
        self.is_open = true;
        self.span.record("id", id);
        if self.counters.counting() {
            let m = &*METRICS;
            m.subscriptions.get_or_create(&self.labels).inc();
            m.subscriptions_opened.get_or_create(&self.labels).inc();
        }
        self.span
            .in_scope(|| tracing::info!(start_sequence, "subscription opened"));
    }

    /// It ends with `status`.
    fn failed(&mut self, status: &Status, shutdown: bool) {
        self.code = super::metrics::code_name(status.code() as i32);
        self.reason = if shutdown {
            "shutdown".into()
        } else {
            self.code.to_ascii_lowercase().into()
        };
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if !self.is_open {
            return;
        }
        if self.counters.counting() {
            let m = &*METRICS;
            m.subscriptions.get_or_create(&self.labels).dec();
            m.subscriptions_ended
                .get_or_create(&EndLabels {
                    stream: self.labels.stream.clone(),
                    reason: self.reason.to_string(),
                })
                .inc();
            if let Some(method) = self.method {
                super::metrics::Call {
                    method,
                    started: self.opened,
                }
                .done(self.code);
            }
        }
        let (reason, lived) = (self.reason.as_ref(), self.opened.elapsed());
        self.span
            .in_scope(|| tracing::info!(reason, ?lived, "subscription ended"));
    }
}

/// The instant `identity`'s credential expires, if it does.
fn expiry(identity: Option<&crate::auth::Identity>) -> Option<tokio::time::Instant> {
    let at = identity?.expires_at?;
    let left = at
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some(tokio::time::Instant::now() + left)
}

fn token_revoked() -> Error {
    Error::Unauthenticated {
        expired: false,
        message: "the token was revoked".into(),
    }
}

fn expired() -> Error {
    Error::Unauthenticated {
        expired: true,
        message: "the token has expired; resume with a new one".into(),
    }
}

/// The response stream of a subscription: `Opened`, then items; ends with UNAVAILABLE carrying
/// `last_delivered_sequence` at shutdown or when the engine reports a lost NATS.
#[allow(clippy::too_many_arguments)]
fn respond<W: Wire>(
    wire: W,
    sub: Subscription,
    mut life: Lifecycle,
    keep_control: bool,
    control: Option<mpsc::Receiver<Error>>,
    shutdown: CancellationToken,
    expires: Option<tokio::time::Instant>,
    revoked: Option<CancellationToken>,
) -> Responses<W> {
    life.opened(&sub.id, sub.start_sequence);
    let opened = wire.opened(&sub.id, sub.start_sequence, sub.last_sequence);
    let state = Out {
        wire,
        opened: Some(opened),
        items: sub.items,
        run: Vec::new().into_iter(),
        run_len: 0,
        window: sub.window,
        sent: sub.sent,
        _control: keep_control.then_some(sub.control),
        _slot: sub.slot,
        control,
        // Children, checked and waited on as often as the stream goes idle: see
        // `engine::Shared::for_subscription`.
        shutdown: shutdown.child_token(),
        last_delivered: sub.start_sequence.saturating_sub(1),
        expires,
        revoked: revoked.map(|r| r.child_token()),
        done: false,
        life,
        run_path: Path::shared,
        run_bytes: 0,
        run_oldest: None,
        run_span: None,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(opened) = st.opened.take() {
            return Some((Ok(opened), st));
        }
        loop {
            // The run in hand goes first: no channel operation, no wake-up per event.
            if let Some(frame) = st.next_of_run() {
                return Some((Ok(frame), st));
            }
            // Fast path: an item is ready and nothing ended the stream. Only an empty channel waits
            // on shutdown and the request side, which costs a registration each time.
            let ready = if st.shutdown.is_cancelled()
                || st
                    .expires
                    .is_some_and(|at| tokio::time::Instant::now() >= at)
                || st.revoked.as_ref().is_some_and(|r| r.is_cancelled())
            {
                None
            } else {
                st.items.try_recv().ok()
            };
            let expires = st.expires;
            let revocation = st.revoked.as_ref();
            let next = match ready {
                Some(item) => item,
                None => tokio::select! {
                    biased;
                    () = st.shutdown.cancelled() => Err(Box::new(Error::ShuttingDown)),
                    () = async move {
                        match expires {
                            Some(at) => tokio::time::sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    } => Err(Box::new(expired())),
                    () = async move {
                        match revocation {
                            Some(r) => r.cancelled().await,
                            None => std::future::pending().await,
                        }
                    } => Err(Box::new(token_revoked())),
                    Some(e) = recv_control(&mut st.control) => Err(Box::new(e)),
                    item = st.items.recv() => match item {
                        Some(r) => r,
                        None => Err(Box::new(Error::Unavailable { reason: "the subscription stopped".into() })),
                    },
                },
            };
            let next = match next {
                Ok(Batch::Deliveries(run, path)) => {
                    st.run_len = run.len();
                    st.run_path = path;
                    st.run_bytes = 0;
                    st.run_oldest = run.first().map(|e| e.stored_at);
                    st.run_span = delivery_span(&st.life, path, run.iter().map(|e| &**e));
                    st.run = run.into_iter();
                    continue;
                }
                Ok(Batch::One(item)) => Ok(item),
                Err(e) => Err(*e),
            };
            return match next {
                Ok(item) => {
                    match &item {
                        Item::Delivery { event, .. } => {
                            st.last_delivered = st.last_delivered.max(event.sequence)
                        }
                        Item::Bookmark { sequence, .. } | Item::SnapshotEnd { sequence } => {
                            st.last_delivered = st.last_delivered.max(*sequence)
                        }
                    }
                    st.window.sent(&item);
                    if let Item::Delivery {
                        event,
                        delivery_count,
                    } = &item
                    {
                        if let Some(sent) = &st.sent {
                            // Capacity is the window: this never fails while the task lives.
                            let _ = sent.try_send(event.sequence);
                        }
                        let _span =
                            delivery_span(&st.life, Path::consumer, std::iter::once(&**event));
                        let bytes = st.wire.delivery_bytes(event);
                        st.life
                            .counters
                            .sent(Path::consumer, 1, bytes, Some(event.stored_at));
                        if *delivery_count > 1 {
                            st.life.counters.redelivered();
                        }
                    }
                    Some((Ok(st.wire.item(&item)), st))
                }
                Err(e) => {
                    st.done = true;
                    // Whatever ends an open subscription says where it got to, so the client can
                    // resume without a gap.
                    let shutdown = matches!(e, Error::ShuttingDown);
                    let status = to_status(e, Some(st.last_delivered));
                    st.life.failed(&status, shutdown);
                    Some((Err(st.wire.end(status)), st))
                }
            };
        }
    }))
}

impl<W: Wire> Out<W> {
    /// The next delivery of the run in hand, if any: one frame for as many of its next events
    /// as the transport has encoded together, or one event's.
    fn next_of_run(&mut self) -> Option<W::Frame> {
        if let Some((frame, n)) = self.wire.shared_run(self.run.as_slice()) {
            let events = &self.run.as_slice()[..n];
            self.last_delivered = self.last_delivered.max(events[n - 1].sequence);
            if self.life.counters.counting() {
                self.run_bytes += events
                    .iter()
                    .map(|e| self.wire.delivery_bytes(e))
                    .sum::<u64>();
            }
            self.run.nth(n - 1);
            if self.run.len() == 0 {
                self.run_done();
            }
            return Some(frame);
        }
        let event = self.run.next()?;
        self.last_delivered = self.last_delivered.max(event.sequence);
        if self.life.counters.counting() {
            self.run_bytes += self.wire.delivery_bytes(&event);
        }
        let more = self.run.len() > 0;
        if !more {
            self.run_done();
        }
        Some(self.wire.first_delivery(event, more))
    }

    /// The last delivery of a run was handed over: its permits return, and it is counted.
    fn run_done(&mut self) {
        self.window.sent_deliveries(self.run_len);
        self.life.counters.sent(
            self.run_path,
            self.run_len as u64,
            self.run_bytes,
            self.run_oldest,
        );
        // Let the run's buffer go: an idle stream holds none.
        self.run = Vec::new().into_iter();
        self.run_span = None;
    }
}

/// A client message after `Open`, as engine control.
fn control_from_pb(request: Option<api::subscribe_request::Request>) -> Result<Control, Error> {
    use api::subscribe_request::Request as R;
    match request {
        Some(R::Open(_)) => Err(Error::invalid(
            "request.open",
            "the subscription is already open; send `open` only once",
        )),
        Some(R::Ack(a)) => Ok(Control::Ack(a.sequences)),
        Some(R::Nack(n)) => {
            let delay = match n.delay {
                None => Duration::ZERO,
                Some(d) if d.seconds < 0 || d.nanos < 0 => {
                    return Err(Error::invalid("request.nack.delay", "must not be negative"))
                }
                Some(d) => Duration::new(d.seconds as u64, d.nanos as u32),
            };
            Ok(Control::Nack(n.sequences, delay))
        }
        Some(R::Term(t)) => Ok(Control::Term(t.sequences, t.reason)),
        Some(R::Credit(c)) => Ok(Control::Credit(c.credit)),
        None => Err(Error::invalid("request", "empty SubscribeRequest")),
    }
}

async fn recv_control(control: &mut Option<mpsc::Receiver<Error>>) -> Option<Error> {
    match control {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The methods of `jetwatch.v1.Subscriber`, served by [`super::frame::SubscriberServer`].
impl SubscriberService {
    pub(crate) async fn subscribe(
        &self,
        request: Request<Streaming<api::SubscribeRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        use api::subscribe_request::Request as R;
        let caller = super::auth::caller(&request);
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let open = match inbound.next().await {
            Some(Ok(api::SubscribeRequest {
                request: Some(R::Open(open)),
            })) => open,
            Some(Err(status)) => return Err(super::status::from_request_read(status)),
            _ => {
                return Err(
                    Error::invalid("request", "the first SubscribeRequest must be `open`").into(),
                )
            }
        };
        let mut req = open_from_pb(open, &self.default_stream, &self.defaults, false)?;
        let expires = expiry(caller.as_deref());
        let revoked = self.engine.auth().revocation(caller.as_deref());
        req.caller = caller;
        let life = Lifecycle::new(&req, peer, Some(super::metrics::SUBSCRIBER_STREAMS[0]));
        let sub = self.engine.open(req).await?;
        let (error_tx, error_rx) = mpsc::channel(1);
        let control = sub.control.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let msg = match next {
                    Ok(msg) => msg,
                    Err(status) => {
                        if let Some(e) = super::status::request_read_error(&status) {
                            let _ = error_tx.send(e).await;
                        }
                        break;
                    }
                };
                match control_from_pb(msg.request) {
                    Ok(c) => {
                        if control.send(Box::new(c)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = error_tx.send(e).await;
                        break;
                    }
                }
            }
        });
        Ok(Response::new(respond(
            Grpc,
            sub,
            life,
            false,
            Some(error_rx),
            self.shutdown.clone(),
            expires,
            revoked,
        )))
    }

    pub(crate) async fn watch(
        &self,
        request: Request<api::Open>,
    ) -> Result<Response<ResponseStream>, Status> {
        let caller = super::auth::caller(&request);
        let peer = request.remote_addr();
        let req = open_from_pb(
            request.into_inner(),
            &self.default_stream,
            &self.defaults,
            true,
        )?;
        let responses = watch(
            &self.engine,
            Grpc,
            req,
            caller,
            peer,
            Some(super::metrics::SUBSCRIBER_STREAMS[1]),
            self.shutdown.clone(),
        )
        .await?;
        Ok(Response::new(responses))
    }
}

/// Opens `req` for `caller` as a watch (no client messages after the open) and serves it over
/// `wire`: the gRPC `Watch` and the HTTP API's watches. `method` is the gRPC method counted in
/// the call metrics (`None` for other transports).
pub(crate) async fn watch<W: Wire>(
    engine: &Engine,
    wire: W,
    mut req: crate::engine::OpenRequest,
    caller: Option<Arc<crate::auth::Identity>>,
    peer: Option<std::net::SocketAddr>,
    method: Option<&'static str>,
    shutdown: CancellationToken,
) -> Result<Responses<W>, Error> {
    let expires = expiry(caller.as_deref());
    let revoked = engine.auth().revocation(caller.as_deref());
    req.caller = caller;
    let life = Lifecycle::new(&req, peer, method);
    let sub = engine.open(req).await?;
    Ok(respond(
        wire, sub, life, true, None, shutdown, expires, revoked,
    ))
}
