//! Logs (tracing), traces (OpenTelemetry over OTLP when configured), and Prometheus metrics
//! on HTTP `/metrics` beside `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

use crate::store::Store;

pub mod metrics;
pub mod trace;

pub use metrics::{DeliveryCounters, Path, METRICS};

/// Installs the tracing subscriber for the client commands: logs on stderr, `RUST_LOG` filters
/// (default `default_level`, e.g. `warn`), and `JETWATCH_LOG_FORMAT=json` switches to JSON
/// lines.
pub fn init_tracing(default_level: &str) {
    let _ = tracing_subscriber::registry()
        .with(log_layer(default_level))
        .try_init();
}

/// The log layer: stderr, text or JSON lines, filtered by `RUST_LOG` (default `default_level`).
fn log_layer<S>(default_level: &str) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let json = std::env::var("JETWATCH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if json {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_filter(filter).boxed()
    }
}

/// Keeps span export running; flushes what is queued when dropped.
#[derive(Debug, Default)]
pub struct TraceGuard(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("jetwatch: flushing spans failed: {e}");
            }
        }
    }
}

/// Installs logging for the gateway and, with `telemetry.otlp_endpoint`, span export over
/// OTLP/gRPC (jetwatch's own spans at `info` and above, whatever `RUST_LOG` says for logs).
/// Call from within the tokio runtime. Fails if the endpoint is not a valid URL.
pub fn init_gateway_tracing(
    default_level: &str,
    settings: &crate::config::TelemetrySettings,
) -> Result<TraceGuard, String> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    let Some(endpoint) = &settings.otlp_endpoint else {
        init_tracing(default_level);
        return Ok(TraceGuard(None));
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(|e| format!("telemetry.otlp_endpoint: {e}"))?;
    let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_max_queue_size(settings.max_queued_spans)
                .with_scheduled_delay(Duration::from_millis(500))
                .build(),
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
            opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(settings.sample_ratio),
        )))
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .build();
    let tracer = provider.tracer("jetwatch");
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(
            tracing_subscriber::filter::Targets::new()
                .with_target("jetwatch", tracing::Level::INFO),
        );
    let _ = tracing_subscriber::registry()
        .with(log_layer(default_level))
        .with(spans)
        .try_init();
    trace::set_exporting();
    Ok(TraceGuard(Some(provider)))
}

/// Least milliseconds between two slow-subscriber warnings (`telemetry.slow_warning_interval`).
static SLOW_WARNING_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10_000);
/// When the last one was logged (milliseconds since the Unix epoch).
static SLOW_WARNED_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sets the least time between two slow-subscriber warnings.
pub fn set_slow_warning_interval(interval: Duration) {
    SLOW_WARNING_MS.store(
        u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Whether a slow-subscriber warning may be logged now (at most one per interval for the
/// whole process, so thousands of slow watchers cannot flood the log); the others are counted
/// in `jetwatch_warnings_suppressed_total`.
pub fn may_warn_slow() -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = u64::try_from(chrono::Utc::now().timestamp_millis()).unwrap_or(0);
    let last = SLOW_WARNED_AT.load(Relaxed);
    if now.saturating_sub(last) >= SLOW_WARNING_MS.load(Relaxed)
        && SLOW_WARNED_AT
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
    {
        return true;
    }
    METRICS.warnings_suppressed.inc();
    false
}

/// One stream's gauges: handles on the process's metrics, kept current by the engine.
#[derive(Debug, Clone)]
pub struct StreamGauges {
    /// Live subscribers served by the stream's shared reader.
    pub subscribers: prometheus_client::metrics::gauge::Gauge,
    /// Subscribers catching up on history older than the ring.
    pub behind: prometheus_client::metrics::gauge::Gauge,
    /// Bytes of recent events held in the history ring.
    pub history_bytes: prometheus_client::metrics::gauge::Gauge,
    /// Events held in the history ring.
    pub history_events: prometheus_client::metrics::gauge::Gauge,
    /// The oldest sequence the ring holds.
    pub history_oldest: prometheus_client::metrics::gauge::Gauge,
    /// Bytes of history blocks kept for subscribers catching up.
    pub catchup_cache_bytes: prometheus_client::metrics::gauge::Gauge,
    /// History reads (blocks for subscribers catching up) running.
    pub catchup_reads: prometheus_client::metrics::gauge::Gauge,
}

/// Counts one in a gauge while it lives (a subscriber catching up, a history read running).
#[derive(Debug)]
pub struct InProgress(prometheus_client::metrics::gauge::Gauge);

impl InProgress {
    /// Adds one to `gauge` until dropped.
    pub fn new(gauge: &prometheus_client::metrics::gauge::Gauge) -> InProgress {
        gauge.inc();
        InProgress(gauge.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Hands out the gauges of each stream.
#[derive(Debug, Clone, Default)]
pub struct Gauges;

impl Gauges {
    /// The gauges of `stream`.
    pub fn stream(&self, stream: &str) -> std::sync::Arc<StreamGauges> {
        let m = &*METRICS;
        let l = metrics::StreamLabels::of(stream);
        std::sync::Arc::new(StreamGauges {
            subscribers: m.live_subscribers.get_or_create(&l).clone(),
            behind: m.subscribers_behind.get_or_create(&l).clone(),
            history_bytes: m.history_bytes.get_or_create(&l).clone(),
            history_events: m.history_events.get_or_create(&l).clone(),
            history_oldest: m.history_oldest_sequence.get_or_create(&l).clone(),
            catchup_cache_bytes: m.catchup_cache_bytes.get_or_create(&l).clone(),
            catchup_reads: m.catchup_reads.get_or_create(&l).clone(),
        })
    }
}

/// What `/metrics` and `/readyz` read.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The NATS connection (RTT, durables).
    pub store: Store,
    /// Declared streams (their durables are reported).
    pub streams: Vec<String>,
    /// Durables reported at most (the metric's label set stays bounded).
    pub max_durables: usize,
    /// True while the gateway is ready: NATS connected, streams declared, not shutting down.
    pub ready: tokio::sync::watch::Receiver<bool>,
    /// The durables the last scrape reported (removed from the metrics when they are gone).
    pub reported: std::sync::Arc<parking_lot::Mutex<Vec<metrics::DurableLabels>>>,
}

/// Serves `/metrics`, `/healthz` (alive: 200 while the process serves) and `/readyz` (200 when
/// ready, 503 otherwise) on `addr` until `shutdown`; returns the bound address.
pub async fn serve_http(
    addr: SocketAddr,
    state: HttpState,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    use axum::http::{header, StatusCode};
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let metrics_state = state.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let state = metrics_state.clone();
                async move {
                    if !metrics::enabled() {
                        return (
                            StatusCode::NOT_FOUND,
                            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                            "metrics are off (telemetry.metrics = false)\n".to_owned(),
                        );
                    }
                    (
                        StatusCode::OK,
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        render(&state).await,
                    )
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ready = *state.ready.borrow();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: NATS unreachable, streams not declared, or shutting down\n",
                        )
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = serve.await {
            tracing::warn!(error = %e, "metrics server failed");
        }
    });
    Ok(bound)
}

/// Refreshes what is read at scrape time (NATS round trip, durables), then encodes every
/// metric as OpenMetrics text.
async fn render(state: &HttpState) -> String {
    let m = &*METRICS;
    m.nats_connected.set(i64::from(state.store.is_connected()));
    if let Some(rtt) = state.store.rtt(Duration::from_secs(1)).await {
        m.nats_rtt.set(rtt.as_secs_f64());
    }
    refresh_durables(state).await;
    let mut registry = prometheus_client::registry::Registry::default();
    let (rss, fds) = process_usage();
    let tasks = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
    let gauge = |v: i64| {
        let g: prometheus_client::metrics::gauge::Gauge = Default::default();
        g.set(v);
        g
    };
    registry.register_with_unit(
        "process_resident_memory",
        "Resident memory size",
        prometheus_client::registry::Unit::Bytes,
        gauge(rss as i64),
    );
    registry.register(
        "process_open_fds",
        "Number of open file descriptors",
        gauge(fds as i64),
    );
    registry.register(
        "jetwatch_runtime_alive_tasks",
        "Tasks alive in the gateway's async runtime",
        gauge(tasks as i64),
    );
    let mut out = String::new();
    let ours = m.registry();
    if prometheus_client::encoding::text::encode_registry(&mut out, &registry).is_err()
        || prometheus_client::encoding::text::encode_registry(&mut out, &ours).is_err()
    {
        tracing::warn!("cannot encode the metrics");
    }
    out.push_str("# EOF\n");
    out
}

/// Reads every durable's counts from JetStream (up to `max_durables`) into the durable
/// gauges, replacing what the last scrape found, so deleted durables disappear.
async fn refresh_durables(state: &HttpState) {
    let m = &*METRICS;
    let mut found = Vec::new();
    for stream in &state.streams {
        match state.store.durables(stream).await {
            Ok(durables) => found.extend(durables),
            Err(e) => tracing::debug!(stream, error = %e, "cannot list durables for metrics"),
        }
        if found.len() >= state.max_durables {
            found.truncate(state.max_durables);
            break;
        }
    }
    let now = chrono::Utc::now();
    let current: Vec<metrics::DurableLabels> = found
        .iter()
        .map(|d| metrics::DurableLabels {
            stream: d.stream.clone(),
            durable: d.name.clone(),
        })
        .collect();
    // Durables gone since the last scrape leave the metrics (only this gateway's own).
    let gone: Vec<metrics::DurableLabels> = {
        let mut reported = state.reported.lock();
        let gone = reported
            .iter()
            .filter(|l| !current.contains(l))
            .cloned()
            .collect();
        *reported = current;
        gone
    };
    for labels in &gone {
        m.durable_pending.remove(labels);
        m.durable_ack_pending.remove(labels);
        m.durable_redelivered.remove(labels);
        m.durable_oldest_unacked_age.remove(labels);
    }
    for d in &found {
        let labels = metrics::DurableLabels {
            stream: d.stream.clone(),
            durable: d.name.clone(),
        };
        m.durable_pending
            .get_or_create(&labels)
            .set(d.pending as i64);
        m.durable_ack_pending
            .get_or_create(&labels)
            .set(d.in_flight as i64);
        m.durable_redelivered
            .get_or_create(&labels)
            .set(d.redelivered as i64);
        let age = match state.store.oldest_unacked(d).await {
            Ok(Some(at)) => (now - at).num_milliseconds().max(0) as f64 / 1000.0,
            Ok(None) => 0.0,
            Err(e) => {
                tracing::debug!(durable = d.name, error = %e, "cannot read the oldest unacknowledged event");
                continue;
            }
        };
        m.durable_oldest_unacked_age.get_or_create(&labels).set(age);
    }
}

/// Resident memory in bytes and open file descriptors of this process (Linux `/proc`; zeros
/// elsewhere).
fn process_usage() -> (u64, usize) {
    let rss_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    (rss_kib * 1024, fds)
}
