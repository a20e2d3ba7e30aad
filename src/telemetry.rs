//! Logs (tracing) and Prometheus metrics on HTTP `/metrics`.
//!
//! Counters are process-wide atomics updated on the hot paths; gauges are read when scraped.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events stored.
    pub published: AtomicU64,
    /// Publishes acknowledged as duplicates.
    pub duplicates: AtomicU64,
    /// Publishes refused or failed.
    pub publish_errors: AtomicU64,
    /// Deliveries sent to subscribers.
    pub deliveries: AtomicU64,
    /// Subscriptions opened.
    pub subscriptions_opened: AtomicU64,
    /// History reads (batched direct gets) for subscribers behind the shared history.
    pub history_reads: AtomicU64,
    /// Reads that lost messages on the way (slow-consumer drops, reconnects) and were
    /// re-issued from the last message received.
    pub reads_interrupted: AtomicU64,
    /// Stored messages skipped because they are not valid CloudEvents (put on a stream by
    /// another NATS client); counted once per read that met them.
    pub malformed_skipped: AtomicU64,
}

/// The counters.
pub static COUNTERS: Counters = Counters {
    published: AtomicU64::new(0),
    duplicates: AtomicU64::new(0),
    publish_errors: AtomicU64::new(0),
    deliveries: AtomicU64::new(0),
    subscriptions_opened: AtomicU64::new(0),
    history_reads: AtomicU64::new(0),
    reads_interrupted: AtomicU64::new(0),
    malformed_skipped: AtomicU64::new(0),
};

/// Installs the tracing subscriber: `RUST_LOG` filters (default `default_level`, e.g.
/// `info`), and `JETWATCH_LOG_FORMAT=json` switches to JSON lines.
pub fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("JETWATCH_LOG_FORMAT").is_ok_and(|v| v == "json");
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Picks one gauge of a stream.
type GaugeField = fn(&StreamGauges) -> &AtomicU64;

/// One stream's gauges, published by the engine as they change.
#[derive(Debug, Default)]
pub struct StreamGauges {
    /// Live subscribers served by the stream's shared reader.
    pub subscribers: AtomicU64,
    /// Bytes of recent events held in the history ring.
    pub history_bytes: AtomicU64,
    /// Bytes of history blocks kept for subscribers catching up.
    pub catchup_cache_bytes: AtomicU64,
}

/// The gauges of one gateway, by stream: the engine writes them, `/metrics` reads them.
#[derive(Debug, Clone, Default)]
pub struct Gauges(Arc<parking_lot::Mutex<std::collections::BTreeMap<String, Arc<StreamGauges>>>>);

impl Gauges {
    /// The gauges of `stream`, created at zero on first use.
    pub fn stream(&self, stream: &str) -> Arc<StreamGauges> {
        self.0.lock().entry(stream.to_owned()).or_default().clone()
    }

    fn all(&self) -> Vec<(String, Arc<StreamGauges>)> {
        self.0
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Serves `/metrics` on `addr` until `shutdown`; returns the bound address.
pub async fn serve_metrics(
    addr: SocketAddr,
    gauges: Gauges,
    store: Store,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (gauges, store) = (gauges.clone(), store.clone());
            async move { render(&gauges, &store) }
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

fn render(gauges: &Gauges, store: &Store) -> String {
    let c = &COUNTERS;
    let mut out = String::new();
    let counters: [(&str, &str, &AtomicU64); 8] = [
        ("jetwatch_published_total", "Events stored.", &c.published),
        (
            "jetwatch_publish_duplicates_total",
            "Publishes acknowledged as duplicates.",
            &c.duplicates,
        ),
        (
            "jetwatch_publish_errors_total",
            "Publishes refused or failed.",
            &c.publish_errors,
        ),
        (
            "jetwatch_deliveries_total",
            "Deliveries sent to subscribers.",
            &c.deliveries,
        ),
        (
            "jetwatch_subscriptions_opened_total",
            "Subscriptions opened.",
            &c.subscriptions_opened,
        ),
        (
            "jetwatch_history_reads_total",
            "History reads (batched direct gets) for subscribers behind the shared history.",
            &c.history_reads,
        ),
        (
            "jetwatch_reads_interrupted_total",
            "Reads that lost messages on the way from NATS and were re-issued from the last \
             message received.",
            &c.reads_interrupted,
        ),
        (
            "jetwatch_malformed_messages_skipped_total",
            "Stored messages skipped because they are not valid CloudEvents (put on a stream by \
             another NATS client), once per read that met them.",
            &c.malformed_skipped,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP jetwatch_nats_connected 1 when the NATS connection is up.\n\
         # TYPE jetwatch_nats_connected gauge\njetwatch_nats_connected {}",
        u8::from(store.is_connected())
    );
    // Process figures under their usual Prometheus names, for watching a long run for leaks.
    let (rss, fds) = process_usage();
    let tasks = tokio::runtime::Handle::try_current().map_or(0, |h| h.metrics().num_alive_tasks());
    let _ = writeln!(
        out,
        "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP jetwatch_runtime_alive_tasks Tasks alive in the gateway's async runtime.\n\
         # TYPE jetwatch_runtime_alive_tasks gauge\njetwatch_runtime_alive_tasks {tasks}"
    );
    let streams = gauges.all();
    let gauge_families: [(&str, &str, GaugeField); 3] = [
        (
            "jetwatch_live_subscribers",
            "Live subscribers served by a stream's shared reader.",
            |g| &g.subscribers,
        ),
        (
            "jetwatch_history_bytes",
            "Bytes of recent events held for a stream.",
            |g| &g.history_bytes,
        ),
        (
            "jetwatch_catchup_cache_bytes",
            "Bytes of history blocks kept for subscribers catching up on a stream.",
            |g| &g.catchup_cache_bytes,
        ),
    ];
    for (name, help, field) in gauge_families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (stream, g) in &streams {
            let _ = writeln!(
                out,
                "{name}{{stream=\"{stream}\"}} {}",
                field(g).load(Ordering::Relaxed)
            );
        }
    }
    out
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
