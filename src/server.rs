//! Wiring: connect to NATS, declare streams, and serve gRPC (Publisher, Subscriber, Admin,
//! health, reflection) and HTTP metrics until shutdown.
//!
//! Shutdown contract:
//! - one [`CancellationToken`] is shared by every task and by tonic's graceful shutdown;
//! - when it is cancelled, health turns NOT_SERVING, no new gRPC streams are accepted, open
//!   subscriptions end with UNAVAILABLE carrying `last_delivered_sequence`, and unary
//!   publishes in flight complete;
//! - the caller bounds the whole drain with `server.shutdown_grace` (see [`Gateway::stopped`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::config::Settings;
use crate::engine::Engine;
use crate::grpc::admin::AdminService;
use crate::grpc::frame::SubscriberServer;
use crate::grpc::gather::Gathered;
use crate::grpc::pb::jetwatch::v1::{admin_server::AdminServer, publisher_server::PublisherServer};
use crate::grpc::publisher::PublisherService;
use crate::grpc::subscriber::SubscriberService;
use crate::publish::Publisher;
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Names of the jetwatch services, as health checking and reflection report them.
pub const SERVICE_NAMES: [&str; 3] = [
    "jetwatch.v1.Publisher",
    "jetwatch.v1.Subscriber",
    "jetwatch.v1.Admin",
];

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// NATS could not be reached or a stream could not be declared.
    #[error(transparent)]
    Nats(#[from] StoreError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anything else (reflection descriptors, publisher set-up).
    #[error("{0}")]
    Other(String),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Gateway {
    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Waits until the server has stopped after shutdown, at most `grace`; returns false if
    /// the grace period ran out (the caller exits anyway).
    pub async fn stopped(self, grace: Duration) -> bool {
        match tokio::time::timeout(grace, self.task).await {
            Ok(Ok(Ok(()))) => true,
            Ok(Ok(Err(e))) => {
                tracing::error!(error = %e, "gRPC server failed");
                true
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "gRPC server task failed");
                true
            }
            Err(_) => {
                tracing::warn!(
                    ?grace,
                    "shutdown grace period ran out; exiting with streams open"
                );
                false
            }
        }
    }
}

/// Connects, declares streams, binds the listeners and starts serving in the background.
/// Everything stops when `shutdown` is cancelled.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Gateway, StartError> {
    // Everything that can fail without NATS fails first: identity sources and TLS files.
    let auth = Arc::new(
        crate::auth::Auth::new(&settings.auth).map_err(|e| StartError::Other(e.to_string()))?,
    );
    if let Some(path) = &settings.auth.tokens_file {
        auth.spawn_token_reloader(path.clone(), settings.auth.reload_interval);
    }
    let tls = crate::tls::ReloadingTls::from_settings(&settings.tls)
        .map_err(|e| StartError::Other(format!("TLS: {e}")))?;
    let store = Store::connect(&settings.nats).await?;
    for s in &settings.streams {
        store.ensure_stream(s).await?;
    }
    tracing::info!(url = %settings.nats.url, streams = settings.streams.len(), "NATS ready");
    let publisher = Publisher::new(store.clone(), &settings, auth.clone())
        .map_err(|e| StartError::Other(e.to_string()))?;
    let gauges = telemetry::Gauges;
    telemetry::set_slow_warning_interval(settings.telemetry.slow_warning_interval);
    telemetry::metrics::set_enabled(settings.telemetry.metrics);
    let engine = Engine::new(
        store.clone(),
        settings.clone(),
        shutdown.clone(),
        gauges.clone(),
        auth.clone(),
        // Deliveries of whole history blocks go out as the same bytes to every subscriber.
        Some(crate::grpc::frame::encode_block),
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartError::Other(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::grpc::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| StartError::Other(e.to_string()))?;

    let listen = settings.server.listen;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
    let grpc_addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: listen,
        source,
    })?;
    // Ready: NATS connected, streams declared, not shutting down.
    let (ready_tx, ready) = tokio::sync::watch::channel(true);
    let metrics_addr = telemetry::serve_http(
        settings.server.metrics_listen,
        telemetry::HttpState {
            store: store.clone(),
            streams: settings.streams.iter().map(|s| s.name.clone()).collect(),
            max_durables: settings.telemetry.max_durables,
            ready,
            reported: Default::default(),
        },
        shutdown.clone(),
    )
    .await
    .map_err(|source| StartError::Bind {
        addr: settings.server.metrics_listen,
        source,
    })?;

    // Health follows the NATS connection and the streams: after NATS comes back, the streams
    // are declared again (a server that lost its store has none) before serving resumes.
    // Health changes go through one lock that shutdown takes too, so a late "serving" can
    // never follow "not serving" at shutdown.
    let health_lock = Arc::new(tokio::sync::Mutex::new(false));
    {
        let (health, shutdown, ready_tx) = (health.clone(), shutdown.clone(), ready_tx.clone());
        let (store, streams) = (store.clone(), settings.streams.clone());
        let health_lock = health_lock.clone();
        let mut connected = store.connection();
        tokio::spawn(async move {
            let mut was_down = false;
            loop {
                tokio::select! {
                    r = connected.changed() => if r.is_err() { return },
                    () = shutdown.cancelled() => return,
                }
                let up = *connected.borrow_and_update();
                tracing::warn!(connected = up, "NATS connection state changed");
                if !up {
                    was_down = true;
                    let stopping = health_lock.lock().await;
                    if !*stopping {
                        ready_tx.send_replace(false);
                        set_health(&health, ServingStatus::NotServing).await;
                    }
                    continue;
                }
                let mut declared = !was_down;
                while !declared && *connected.borrow() && !shutdown.is_cancelled() {
                    declared = true;
                    for s in &streams {
                        if let Err(e) = store.ensure_stream(s).await {
                            tracing::warn!(stream = s.name, error = %e, "cannot declare the stream; retrying");
                            declared = false;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            break;
                        }
                    }
                }
                if declared {
                    was_down = false;
                    let stopping = health_lock.lock().await;
                    if !*stopping {
                        ready_tx.send_replace(true);
                        set_health(&health, ServingStatus::Serving).await;
                    }
                }
            }
        });
    }

    let http_api = settings.http.enabled.then(|| {
        Arc::new(crate::http::Api {
            publisher: publisher.clone(),
            engine: engine.clone(),
            settings: settings.http.clone(),
            subscribe: settings.subscribe.clone(),
            max_pending_acks: settings.publish.max_pending_acks,
            shutdown: shutdown.clone(),
        })
    });
    let subscriber = SubscriberService::new(
        engine,
        settings.publish.default_stream.clone(),
        settings.subscribe.clone(),
        shutdown.clone(),
    );
    let publisher = PublisherService::new(publisher, settings.publish.max_pending_acks);
    let admin_domain = crate::admin::Admin::new(store.clone(), settings.clone(), auth.clone());
    admin_domain
        .push_declare()
        .await
        .map_err(|e| StartError::Other(format!("push.subscriptions: {e}")))?;
    crate::push::spawn(store, settings.push.clone(), shutdown.clone());
    let admin = AdminService::new(admin_domain);

    let signal = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: refusing new streams, ending open ones");
            let mut stopping = health_lock.lock().await;
            *stopping = true;
            ready_tx.send_replace(false);
            set_health(&health, ServingStatus::NotServing).await;
        }
    };
    let limit = settings.server.max_request_bytes;
    let router = tonic::transport::Server::builder()
        // gRPC-Web (browsers) arrives over HTTP/1.1 as well as HTTP/2.
        .accept_http1(true)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_max_local_error_reset_streams(Some(settings.server.http2_max_local_resets))
        // Browsers' cross-origin requests (HTTP API and gRPC-Web), when origins are allowed.
        .layer(tower::util::option_layer(crate::http::cors(&settings.http)))
        // The HTTP/JSON API under /v1/; everything else is gRPC or gRPC-Web.
        .layer(crate::http::HttpLayer::new(http_api))
        // gRPC-Web requests become gRPC before anything else looks at them.
        .layer(tonic_web::GrpcWebLayer::new())
        // Every call is counted with the code the client sees.
        .layer(crate::grpc::metrics::MetricsLayer)
        // Requests tonic cannot read (too large, not protobuf) are answered with the
        // contract's codes, not tonic's OUT_OF_RANGE and INTERNAL.
        .layer(tower::util::MapResponseLayer::new(
            crate::grpc::status::rewrite_request_read_errors,
        ))
        .layer(crate::grpc::auth::AuthLayer::new(auth.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(PublisherServer::new(publisher).max_decoding_message_size(limit))
        .add_service(SubscriberServer::new(subscriber, limit))
        .add_service(AdminServer::new(admin).max_decoding_message_size(limit));
    // Accepted sockets get TCP_NODELAY here: the builder's `tcp_nodelay` applies only to
    // listeners tonic binds itself, and Nagle's algorithm would hold small responses back.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Responses reach the socket in few writes: see `grpc::gather`.
    let gather = settings.server.write_buffer_bytes;
    let task = match tls {
        Some(tls) => {
            tls.spawn_reloader(settings.tls.reload_interval);
            let incoming = crate::tls::tls_incoming(
                incoming,
                tls,
                settings.tls.handshake_timeout,
                settings.tls.max_handshakes,
            )
            .map(move |tls| tls.map(|tls| Gathered::new(tls, gather)));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        }
        None => {
            let incoming = incoming.map(move |tcp| tcp.map(|tcp| Gathered::new(tcp, gather)));
            tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal))
        }
    };
    tracing::info!(%grpc_addr, %metrics_addr, "jetwatch gateway serving");
    Ok(Gateway {
        grpc_addr,
        metrics_addr,
        task,
    })
}

async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICE_NAMES {
        health.set_service_status(name, status).await;
    }
}
