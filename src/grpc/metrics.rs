//! A tower layer that counts every gRPC call by method and status code and times it
//! (`jetwatch_grpc_requests_total`, `jetwatch_grpc_duration_seconds`). A streaming call counts
//! when its response ends: its code is in the trailers; a stream the client drops first counts
//! as `CANCELLED`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;

use crate::telemetry::metrics::{GrpcLabels, MethodLabels};
use crate::telemetry::METRICS;

/// The methods counted by name; any other path is counted as `other` (bounded labels).
const METHODS: &[&str] = &[
    "/jetwatch.v1.Publisher/Publish",
    "/jetwatch.v1.Publisher/PublishStream",
    "/jetwatch.v1.Subscriber/Subscribe",
    "/jetwatch.v1.Subscriber/Watch",
    "/jetwatch.v1.Admin/ListStreams",
    "/jetwatch.v1.Admin/GetStream",
    "/jetwatch.v1.Admin/ListSubscriptions",
    "/jetwatch.v1.Admin/GetSubscription",
    "/jetwatch.v1.Admin/DeleteSubscription",
    "/jetwatch.v1.Admin/SeekSubscription",
    "/jetwatch.v1.Admin/GetServerInfo",
    "/jetwatch.v1.Admin/CreatePushSubscription",
    "/jetwatch.v1.Admin/UpdatePushSubscription",
    "/jetwatch.v1.Admin/GetPushSubscription",
    "/jetwatch.v1.Admin/ListPushSubscriptions",
    "/jetwatch.v1.Admin/PausePushSubscription",
    "/jetwatch.v1.Admin/ResumePushSubscription",
    "/jetwatch.v1.Admin/DeletePushSubscription",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The subscriber's streams: counted when the subscription ends, not by wrapping their bodies.
pub(crate) const SUBSCRIBER_STREAMS: [&str; 2] = [
    "/jetwatch.v1.Subscriber/Subscribe",
    "/jetwatch.v1.Subscriber/Watch",
];

/// Counts and times gRPC calls.
#[derive(Debug, Clone, Copy, Default)]
pub struct MetricsLayer;

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> MetricsService<S> {
        MetricsService { inner }
    }
}

/// The service [`MetricsLayer`] wraps around the server's routes.
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !crate::telemetry::metrics::enabled() {
            return Box::pin(inner.call(request));
        }
        let path = request.uri().path();
        let method = METHODS
            .iter()
            .find(|m| **m == path)
            .copied()
            .unwrap_or("other");
        let started = Instant::now();
        Box::pin(async move {
            let response = inner.call(request).await?;
            let call = Call { method, started };
            // A trailers-only response (an error before any message) has its code here.
            if let Some(code) = grpc_status(response.headers()) {
                call.done(code);
                return Ok(response);
            }
            if SUBSCRIBER_STREAMS.contains(&method) {
                // Counted by the subscription when it ends (`subscriber::Lifecycle`): its
                // frames, one per delivery, pass unwrapped.
                return Ok(response);
            }
            Ok(response.map(|body| {
                tonic::body::Body::new(Observed {
                    inner: body,
                    call: Some(call),
                })
            }))
        })
    }
}

/// A call not yet counted.
pub(crate) struct Call {
    pub(crate) method: &'static str,
    pub(crate) started: Instant,
}

impl Call {
    /// Counts the call as ended with `code`.
    pub(crate) fn done(self, code: &str) {
        let m = &*METRICS;
        m.grpc_requests
            .get_or_create(&GrpcLabels {
                method: self.method.to_owned(),
                code: code.to_owned(),
            })
            .inc();
        m.grpc_duration
            .get_or_create(&MethodLabels {
                method: self.method.to_owned(),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// The code name of a `grpc-status` header.
fn grpc_status(headers: &http::HeaderMap) -> Option<&'static str> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(code))
}

pub(crate) fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// A response body that counts its call when the trailers pass (or when dropped before).
struct Observed {
    inner: tonic::body::Body,
    call: Option<Call>,
}

impl http_body::Body for Observed {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(call) = self.call.take() {
                        call.done(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.done("INTERNAL");
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.done("OK");
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.done("CANCELLED");
        }
    }
}
