//! The HTTP/JSON API, served on the gRPC listener under `/v1/` (see `docs/http.md`):
//!
//! - `POST /v1/streams/{stream}/events` (or `/v1/events` for the default stream) publishes
//!   CloudEvents in the CloudEvents HTTP binding: binary mode (`ce-*` headers, the body is the
//!   data), structured mode (`application/cloudevents+json`) and batches
//!   (`application/cloudevents-batch+json`) ([`publish`]);
//! - `GET` on the same paths watches as Server-Sent Events (`Accept: text/event-stream`) or
//!   NDJSON (anything else), with the start, subjects, CESQL filter and durable name in the
//!   query ([`watch`]).
//!
//! Both go through the same domain code as gRPC: the publish path with its validation,
//! grants, rate limits and dedup; the engine's `Open` with its limits, grants and window;
//! identities from the same bearer tokens and client certificates; errors from the same table
//! ([`error`]), written as JSON.
//!
//! [`HttpLayer`] sits outermost on the gRPC server: requests under `/v1/` go to the axum
//! router, everything else (gRPC, gRPC-Web) passes on. CORS, when configured, answers for both.

pub(crate) mod error;
mod publish;
mod watch;

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::auth::Identity;
use crate::config::{HttpSettings, SubscribeSettings};
use crate::engine::Engine;
use crate::error::Error;
use crate::publish::Publisher;

/// The path prefix of the HTTP API.
pub const PREFIX: &str = "/v1/";

/// What the HTTP handlers share.
#[derive(Debug)]
pub(crate) struct Api {
    pub(crate) publisher: Publisher,
    pub(crate) engine: Engine,
    pub(crate) settings: HttpSettings,
    pub(crate) subscribe: SubscribeSettings,
    pub(crate) max_pending_acks: usize,
    pub(crate) shutdown: CancellationToken,
}

impl Api {
    /// The caller of `request`, or the error response: the same credentials as gRPC, plus the
    /// `access_token` query parameter when `http.allow_query_token` is on.
    pub(crate) fn identify(
        &self,
        request: &http::Request<()>,
        query_token: Option<&str>,
    ) -> Result<Option<Arc<Identity>>, Error> {
        if query_token.is_some() && !self.settings.allow_query_token {
            return Err(Error::invalid(
                "access_token",
                "tokens in the query are not accepted here (http.allow_query_token); send \
                 `Authorization: Bearer <token>`",
            ));
        }
        Ok(
            crate::grpc::auth::authenticate(self.engine.auth(), request, query_token)?
                .map(Arc::new),
        )
    }
}

/// The query parameters of a request, in order (a name may repeat).
pub(crate) fn query_pairs(uri: &http::Uri) -> Vec<(String, String)> {
    uri.query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default()
}

/// The API's routes.
pub(crate) fn router(api: Arc<Api>) -> axum::Router {
    axum::Router::new()
        .route("/v1/events", get(watch::watch).post(publish::publish))
        .route(
            "/v1/streams/{stream}/events",
            get(watch::watch).post(publish::publish),
        )
        .fallback(not_found)
        .with_state(api)
}

async fn not_found(request: Request) -> Response {
    error::respond(Error::Unimplemented(format!(
        "no HTTP route {} {}: the API has GET and POST on /v1/events and \
         /v1/streams/{{stream}}/events",
        request.method(),
        request.uri().path()
    )))
}

/// The CORS layer of `http.cors_allowed_origins`, if any origin is allowed.
pub fn cors(settings: &HttpSettings) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer, ExposeHeaders};
    if settings.cors_allowed_origins.is_empty() {
        return None;
    }
    let origin = if settings.cors_allowed_origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            settings
                .cors_allowed_origins
                .iter()
                .filter_map(|o| http::HeaderValue::from_str(o).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origin)
            .allow_methods([http::Method::GET, http::Method::POST])
            // gRPC-Web sends its own headers (x-grpc-web, grpc-timeout, x-user-agent), the
            // binary mode sends ce-*: whatever the browser asks to send is allowed.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(ExposeHeaders::list([
                http::HeaderName::from_static("grpc-status"),
                http::HeaderName::from_static("grpc-message"),
                http::HeaderName::from_static("grpc-status-details-bin"),
                http::header::RETRY_AFTER,
            ]))
            .max_age(settings.cors_max_age),
    )
}

/// The metrics label of a request (bounded: never the path itself).
fn route_of(method: &http::Method, path: &str) -> &'static str {
    let events = path == "/v1/events"
        || path
            .strip_prefix("/v1/streams/")
            .and_then(|rest| rest.strip_suffix("/events"))
            .is_some_and(|stream| !stream.is_empty() && !stream.contains('/'));
    match (events, method) {
        (true, &http::Method::POST) => "publish",
        (true, &http::Method::GET) => "watch",
        _ => "other",
    }
}

/// Sends requests under [`PREFIX`] to the HTTP API and everything else on to the gRPC
/// services (see the module docs).
#[derive(Debug, Clone)]
pub struct HttpLayer {
    router: Option<axum::Router>,
}

impl HttpLayer {
    /// The layer; `None` when the HTTP API is off (every request passes on).
    pub(crate) fn new(api: Option<Arc<Api>>) -> HttpLayer {
        HttpLayer {
            router: api.map(router),
        }
    }
}

impl<S> tower::Layer<S> for HttpLayer {
    type Service = HttpService<S>;

    fn layer(&self, inner: S) -> HttpService<S> {
        HttpService {
            inner,
            router: self.router.clone(),
        }
    }
}

/// The service [`HttpLayer`] wraps around the gRPC server.
#[derive(Debug, Clone)]
pub struct HttpService<S> {
    inner: S,
    router: Option<axum::Router>,
}

impl<S, B> tower::Service<http::Request<B>> for HttpService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match &self.router {
            Some(router) if request.uri().path().starts_with(PREFIX) => {
                let mut router = router.clone();
                let route = route_of(request.method(), request.uri().path());
                let request = request.map(axum::body::Body::new);
                Box::pin(async move {
                    let response = match router.call(request).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    };
                    if crate::telemetry::metrics::enabled() {
                        crate::telemetry::METRICS
                            .http_requests
                            .get_or_create(&crate::telemetry::metrics::HttpLabels {
                                route,
                                code: response.status().as_u16(),
                            })
                            .inc();
                    }
                    Ok(response.map(tonic::body::Body::new))
                })
            }
            _ => {
                // The clone is the one that is ready (tower's rule for cloned services).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
        }
    }
}
