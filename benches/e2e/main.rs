//! End-to-end benchmarks: the jetwatch gateway next to raw JetStream, on a real nats-server.
//!
//! `cargo bench --bench e2e` starts a nats-server with a temporary store (through
//! [`jetwatch::devnats`]), runs the release `jetwatch serve` binary as a separate process against
//! it, and measures every scenario twice: through the gateway's gRPC API, and with async-nats
//! talking to JetStream directly on the same server. Each scenario prints its figures as it
//! goes; a summary table with ratios and goals comes at the end.
//!
//! Scenarios, one module each beside this file:
//! - `publish`: `PublishStream` next to pipelined raw JetStream publishes.
//! - `watch`: replay of one subscriber (Watch from earliest) next to a raw pull consumer.
//! - `fanout`: aggregate delivery rate to 1, 16, 256 and 1,000 live subscribers (and 4,000,
//!   and 256 at 64 B and 4 KiB), with the CPU time per million deliveries of the gateway and of
//!   the clients (this process): on a small machine the clients can bound both runs.
//! - `latency`: publish → delivery latency at a fixed rate with 100 subscribers.
//! - `memory`: memory per idle Watch, and RSS growth with a stalled subscriber.
//! - `snapshot`: a snapshot of 100,000 resources next to a raw last-per-subject consumer.
//! - `pushdown`: one resource among many subjects, with and without subject pushdown.
//! - `burst`: bursts larger than the history to 256 and 1,000 watchers (no gap, bounded
//!   consumers), with history sizes of 1 MiB, 32 MiB and 512 MiB.
//! - `security`: PublishStream and fan-out to 256 watchers with TLS, client certificates and
//!   grants, next to the same runs on a plain gateway.
//! - `metrics`: fan-out to 256 watchers with metrics on and off (`telemetry.metrics`): what
//!   counting costs in gateway CPU per delivery.
//! - `push`: deliveries per second from a push subscription to a local webhook receiver with 1
//!   and 64 in flight, and publish → webhook latency at 500 ev/s.
//! - `http`: deliveries per second to 256 Server-Sent Events watchers next to 256 gRPC
//!   watchers on the same gateway, and the gateway's CPU per million deliveries for each.
//! - `failover`: a 3-node NATS cluster, the R3 stream's leader killed under steady publishing
//!   and a live watcher: how long publishing is unavailable and deliveries stall.
//! - `soak` (only when named in `JETWATCH_BENCH`): publishing, watchers, durables and
//!   snapshots opening and closing at random for `JETWATCH_SOAK_SECS` (default 1,800), with
//!   RSS, descriptors, tasks and JetStream consumers printed over time.
//!
//! Environment:
//! - `JETWATCH_BENCH`: comma-separated scenarios to run (default: all of them, in the order
//!   above).
//! - `JETWATCH_BENCH_SCALE`: a multiplier for event and subscriber counts (default 1.0); `0.1`
//!   gives a quick run.
//!
//! Everything runs on loopback. The bench client, the gateway and nats-server share the
//! machine's cores, so the figures compare the two paths under the same conditions rather than
//! measure either path alone. Each scenario gets its own nats-server and gateway.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt;
use hdrhistogram::Histogram;
use jetwatch::devnats::NatsServer;
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use jetwatch::subject::SubjectTemplate;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use api::publisher_client::PublisherClient;
use api::start_position::Position;
use api::subscribe_response::Response;
use api::subscriber_client::SubscriberClient;

/// The `source` of every bench event.
const SOURCE: &str = "/bench";
/// The `type` of every bench event.
const TYPE: &str = "com.example.bench.modified";
/// The `datacontenttype` of every bench event.
const CONTENT_TYPE: &str = "application/json";
/// The extension carrying the publish time (nanoseconds since the bench started).
const SENT_ATTRIBUTE: &str = "sentns";
/// The stream the gateway declares and serves.
const GATEWAY_STREAM: &str = "events";
/// A stream with the gateway stream's configuration, for raw runs that must not wake the
/// gateway's shared reader.
const RAW_STREAM: &str = "raw";
/// Publishes awaiting acknowledgement: the raw publisher's window and the gateway's
/// `publish.max_pending_acks`.
const PUBLISH_WINDOW: usize = 256;
/// Messages per pull request: raw readers and the gateway's `fanout.batch`.
const BATCH: usize = 256;
/// `Open.max_in_flight` of the throughput scenarios' Watch clients.
const WATCH_WINDOW: u32 = 1024;
/// Subscribers sharing one gRPC channel (HTTP/2 connection) or one NATS connection.
const SUBSCRIBERS_PER_CONNECTION: usize = 100;
/// The longest any step may take: a hang becomes an error, never an endless wait.
const DEADLINE: Duration = Duration::from_secs(600);
/// Data bytes of the events of the throughput scenarios.
const EVENT_BYTES: usize = 512;
/// Data bytes of small events (flowing past a stalled subscriber; the fan-out size scale).
const SMALL_EVENT_BYTES: usize = 64;
/// Data bytes of large events (the fan-out size scale).
const LARGE_EVENT_BYTES: usize = 4096;

/// The gateway's configuration file: the settings the bench relies on, spelled out.
fn gateway_config() -> String {
    format!(
        "[server]\nshutdown_grace = \"1s\"\n\n\
         [publish]\nmax_pending_acks = {PUBLISH_WINDOW}\n\n\
         [subscribe]\nmax_in_flight_limit = 10000\n\n\
         [fanout]\nbatch = {BATCH}\n"
    )
}

fn main() {
    let options = match Options::from_env() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("e2e bench: {e:#}");
            std::process::exit(2);
        }
    };
    // Starts the clock the latency stamps are measured on.
    now_ns();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!(
        "jetwatch end-to-end bench: scenarios {}, scale {}",
        options
            .scenarios
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(","),
        options.scale
    );
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut failed = false;
    for &scenario in &options.scenarios {
        println!("\n== {} ==", scenario.name());
        let scenario_started = Instant::now();
        match runtime.block_on(scenario.run(&options)) {
            Ok(r) => rows.extend(r),
            Err(e) => {
                failed = true;
                eprintln!("{} failed: {e:#}", scenario.name());
            }
        }
        println!("({} took {:.1} s)", scenario.name(), secs(scenario_started));
    }
    println!(
        "\n== summary (scale {}, {:.0} s) ==",
        options.scale,
        secs(started)
    );
    print_table(&rows);
    if failed {
        std::process::exit(1);
    }
}

// ---------------------------------------------------------------------------------------------
// Options and scenarios
// ---------------------------------------------------------------------------------------------

/// What to run, from `JETWATCH_BENCH` and `JETWATCH_BENCH_SCALE`.
#[derive(Debug)]
struct Options {
    /// Scenarios in the order they run.
    scenarios: Vec<Scenario>,
    /// Multiplier for event and subscriber counts.
    scale: f64,
}

impl Options {
    fn from_env() -> Result<Options> {
        let scenarios = match std::env::var("JETWATCH_BENCH") {
            Ok(list) if !list.trim().is_empty() => list
                .split(',')
                .map(|name| {
                    Scenario::parse(name.trim()).with_context(|| {
                        format!(
                            "JETWATCH_BENCH: unknown scenario `{}`; choose from {}",
                            name.trim(),
                            Scenario::ALL.map(Scenario::name).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?,
            _ => Scenario::ALL
                .into_iter()
                .filter(|s| *s != Scenario::Soak)
                .collect(),
        };
        let scale = match std::env::var("JETWATCH_BENCH_SCALE") {
            Ok(s) => s
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .with_context(|| format!("JETWATCH_BENCH_SCALE: `{s}` is not a positive number"))?,
            Err(_) => 1.0,
        };
        Ok(Options { scenarios, scale })
    }

    /// `n` scaled, and at least `min`.
    fn scaled(&self, n: usize, min: usize) -> usize {
        ((n as f64 * self.scale).round() as usize).max(min)
    }
}

/// A benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    /// Publish throughput: `PublishStream` next to pipelined JetStream publishes.
    Publish,
    /// Replay throughput of one subscriber: Watch from earliest next to a pull consumer.
    Watch,
    /// Aggregate delivery rate to N live subscribers.
    Fanout,
    /// Publish-to-delivery latency at a fixed rate with 100 subscribers.
    Latency,
    /// Gateway memory per idle subscription, and with a stalled subscriber.
    Memory,
    /// Snapshot throughput over many resources.
    Snapshot,
    /// Finding one resource in a stream of many subjects, with and without subject pushdown.
    Pushdown,
    /// A burst larger than the history to many live watchers: no gap, bounded consumers.
    Burst,
    /// What TLS and authentication cost.
    Security,
    /// What metrics cost on the fan-out path.
    Metrics,
    /// Push subscriptions to a local webhook.
    Push,
    /// The stream leader of a 3-node cluster killed under load.
    Failover,
    /// Server-Sent Events watchers next to gRPC watchers.
    Http,
    /// A long random workload, sampled for leaks (not in the default set).
    Soak,
}

impl Scenario {
    /// Every scenario; all but the last run by default.
    const ALL: [Scenario; 14] = [
        Scenario::Publish,
        Scenario::Watch,
        Scenario::Fanout,
        Scenario::Latency,
        Scenario::Memory,
        Scenario::Snapshot,
        Scenario::Pushdown,
        Scenario::Burst,
        Scenario::Security,
        Scenario::Metrics,
        Scenario::Push,
        Scenario::Http,
        Scenario::Failover,
        Scenario::Soak,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Publish => "publish",
            Scenario::Watch => "watch",
            Scenario::Fanout => "fanout",
            Scenario::Latency => "latency",
            Scenario::Memory => "memory",
            Scenario::Snapshot => "snapshot",
            Scenario::Pushdown => "pushdown",
            Scenario::Burst => "burst",
            Scenario::Security => "security",
            Scenario::Metrics => "metrics",
            Scenario::Push => "push",
            Scenario::Http => "http",
            Scenario::Failover => "failover",
            Scenario::Soak => "soak",
        }
    }

    fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    async fn run(self, o: &Options) -> Result<Vec<Row>> {
        match self {
            Scenario::Publish => publish::run(o).await,
            Scenario::Watch => watch::run(o).await,
            Scenario::Fanout => fanout::run(o).await,
            Scenario::Latency => latency::run(o).await,
            Scenario::Memory => memory::run(o).await,
            Scenario::Snapshot => snapshot::run(o).await,
            Scenario::Pushdown => pushdown::run(o).await,
            Scenario::Burst => burst::run(o).await,
            Scenario::Security => security::run(o).await,
            Scenario::Metrics => metrics::run(o).await,
            Scenario::Push => push::run(o).await,
            Scenario::Http => http::run(o).await,
            Scenario::Failover => failover::run(o).await,
            Scenario::Soak => soak::run(o).await,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios: one module each, under benches/e2e/
// ---------------------------------------------------------------------------------------------

mod burst;
mod failover;
mod fanout;
mod http;
mod latency;
mod memory;
mod metrics;
mod publish;
mod push;
mod pushdown;
mod security;
mod snapshot;
mod soak;
mod watch;

/// `m` events published raw to [`RAW_STREAM`] while `n` raw live consumers read them all:
/// the aggregate deliveries per second and the most JetStream consumers seen.
async fn raw_fan_out(
    env: &Env,
    n: usize,
    m: usize,
    label: &str,
    data: &Bytes,
) -> Result<(f64, usize)> {
    let tasks = open_raw_readers(env, n)
        .await?
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                r.drain(m as u64, |_| {}).await?;
                let done = Instant::now();
                r.close().await?;
                Ok(done)
            })
        })
        .collect();
    let publisher = RawPublisher::new(&env.js, RAW_STREAM)?;
    let (time, consumers) = deliver_to_all(
        &env.js,
        RAW_STREAM,
        tasks,
        publisher.publish(m, None, |i| BenchEvent::new(label, i, 1_000, data)),
    )
    .await
    .with_context(|| format!("raw fan-out to {n}"))?;
    Ok((rate(n * m, time), consumers))
}

// ---------------------------------------------------------------------------------------------
// The environment: nats-server and the gateway process
// ---------------------------------------------------------------------------------------------

/// A nats-server with a temporary store and a gateway process on it. Dropping it kills the
/// gateway, stops the server and removes the store (fields drop in this order).
struct Env {
    /// The gateway under test.
    gateway: Gateway,
    /// A raw JetStream context for producers, raw readers and stream inspection.
    js: jetstream::Context,
    /// The server.
    nats: NatsServer,
    /// Holds the store, the gateway's configuration file and its log.
    _dir: tempfile::TempDir,
}

impl Env {
    /// Starts nats-server, then the gateway, waits for the gateway's health check, and creates
    /// the raw stream with the gateway stream's configuration.
    async fn start() -> Result<Env> {
        Env::start_with("").await
    }

    /// Like [`Env::start`], with `fanout` appended to the gateway's `[fanout]` section.
    async fn start_with(fanout: &str) -> Result<Env> {
        Env::start_tls(fanout, None).await
    }

    /// Like [`Env::start_with`]; clients reach the gateway with `tls` when set.
    async fn start_tls(
        fanout: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Result<Env> {
        let dir = tempfile::tempdir()?;
        let store = dir.path().join("nats");
        let nats = tokio::task::block_in_place(|| NatsServer::start(&store, 0))
            .context("cannot start nats-server")?;
        let mut gateway = Gateway::spawn(&nats.url(), dir.path(), fanout)?;
        gateway.tls = tls;
        gateway.wait_ready().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        create_raw_stream(&js).await?;
        Ok(Env {
            gateway,
            js,
            nats,
            _dir: dir,
        })
    }

    /// A new NATS connection.
    async fn nats_client(&self) -> Result<async_nats::Client> {
        Ok(async_nats::connect(self.nats.url()).await?)
    }
}

/// The gateway under test: a `jetwatch serve` child process, killed on drop.
struct Gateway {
    /// The process.
    child: Child,
    /// Its gRPC address.
    addr: SocketAddr,
    /// Its Prometheus metrics address.
    metrics: SocketAddr,
    /// Its stdout and stderr, quoted when it fails to start.
    log: PathBuf,
    /// TLS for clients, when the gateway serves TLS.
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Gateway {
    /// Spawns `jetwatch serve` against `nats_url`, with its configuration and log in `dir`.
    fn spawn(nats_url: &str, dir: &Path, fanout: &str) -> Result<Gateway> {
        let binary = gateway_binary()?;
        let config = dir.join("gateway.toml");
        std::fs::write(&config, gateway_config() + fanout)?;
        let log = dir.join("gateway.log");
        let out = std::fs::File::create(&log)?;
        let (addr, metrics) = (free_address()?, free_address()?);
        let child = Command::new(&binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--nats-url", nats_url])
            .args(["--listen", &addr.to_string()])
            .args(["--metrics-listen", &metrics.to_string()])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        Ok(Gateway {
            child,
            addr,
            metrics,
            log,
            tls: None,
        })
    }

    /// Waits until the gRPC health check answers SERVING.
    async fn wait_ready(&mut self) -> Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the gateway exited with {status}; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(channel) = self.channel().await {
                let check = HealthClient::new(channel)
                    .check(HealthCheckRequest::default())
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the gateway was not serving within 30 s; its log:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the gateway's output (the file goes away with the environment).
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A new gRPC channel: its own HTTP/2 connection.
    async fn channel(&self) -> Result<Channel> {
        Ok(match &self.tls {
            None => {
                Endpoint::from_shared(format!("http://{}", self.addr))?
                    .connect()
                    .await?
            }
            Some(tls) => {
                Endpoint::from_shared(format!("https://{}", self.addr))?
                    .tls_config(tls.clone())?
                    .connect()
                    .await?
            }
        })
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory now, in KiB.
    fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }

    /// Resident memory after a short pause that lets queued work finish, in KiB.
    async fn settled_rss_kib(&self) -> Result<u64> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rss_kib()
    }

    /// The sum of a metric's samples on the gateway's `/metrics` page.
    async fn metric(&self, name: &str) -> Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.metrics).await?;
        tcp.write_all(
            format!(
                "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                self.metrics
            )
            .as_bytes(),
        )
        .await?;
        let mut page = String::new();
        tcp.read_to_string(&mut page).await?;
        let samples: Vec<f64> = page
            .lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .collect();
        // A metric that is not there (renamed, say) must not read as 0.
        ensure!(
            !samples.is_empty(),
            "the gateway exports no metric `{name}`"
        );
        Ok(samples.iter().sum())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One run through the gateway or straight to JetStream (a read of a stream, or a run of
/// publishes): throughput and the CPU time of the process doing the work.
#[derive(Debug, Clone, Copy)]
struct Read {
    /// Events per second.
    rate: f64,
    /// CPU seconds of the reading process per million events.
    cpu: f64,
}

impl Read {
    /// A read of `events` that started at `started` and took `cpu_seconds` of CPU time.
    fn measured(events: usize, started: Instant, cpu_seconds: f64) -> Read {
        Read {
            rate: rate(events, started.elapsed()),
            cpu: cpu_seconds * 1e6 / events as f64,
        }
    }

    /// The better of two reads: the higher rate, the lower CPU time.
    fn max(self, other: Read) -> Read {
        Read {
            rate: self.rate.max(other.rate),
            cpu: self.cpu.min(other.cpu),
        }
    }

    /// Prints two gateway runs and two raw ones, and returns the table's rows for the better
    /// of each pair: their rates, named `name`, against `goal`, and their CPU seconds per
    /// million events.
    fn compared(
        name: &str,
        goal: Goal,
        (gateway_what, gateway): (&str, [Read; 2]),
        (raw_what, raw): (&str, [Read; 2]),
    ) -> Vec<Row> {
        let (gateway, raw) = Read::best_of(gateway_what, gateway, raw_what, raw);
        vec![
            Row::new(name, Figure::Rate(gateway.rate))
                .raw(Figure::Rate(raw.rate))
                .goal(goal),
            Row::new(
                format!("{name} CPU s per 1M events"),
                Figure::Seconds(gateway.cpu),
            )
            .raw(Figure::Seconds(raw.cpu)),
        ]
    }

    /// Prints two gateway runs and two raw ones, and returns the better of each pair.
    fn best_of(
        gateway_what: &str,
        gateway: [Read; 2],
        raw_what: &str,
        raw: [Read; 2],
    ) -> (Read, Read) {
        println!(
            "{gateway_what}: {} and {} ev/s, {:.2} and {:.2} gateway CPU s per 1M; {raw_what}: \
             {} and {} ev/s, {:.2} and {:.2} raw client CPU s per 1M",
            thousands(gateway[0].rate),
            thousands(gateway[1].rate),
            gateway[0].cpu,
            gateway[1].cpu,
            thousands(raw[0].rate),
            thousands(raw[1].rate),
            raw[0].cpu,
            raw[1].cpu,
        );
        (gateway[0].max(gateway[1]), raw[0].max(raw[1]))
    }
}

/// The `jetwatch` binary cargo built for this bench (`target/release/jetwatch`).
fn gateway_binary() -> Result<PathBuf> {
    let path = PathBuf::from(env!("CARGO_BIN_EXE_jetwatch"));
    ensure!(
        path.is_file(),
        "the gateway binary {} is missing; build it with `cargo build --release` (from {})",
        path.display(),
        env!("CARGO_MANIFEST_DIR")
    );
    Ok(path)
}

/// A loopback address with a port that is free now.
fn free_address() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Resident memory of process `pid` (`VmRSS`), in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc status")
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14,
    // stime 15, in clock ticks of USER_HZ (100 on Linux).
    let rest = stat.rsplit_once(')').context("no command in /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc stat")?
            .parse::<u64>()? as f64)
    };
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

/// Records the largest RSS of `pid` in `peak` every 50 ms until `stop`.
async fn sample_rss(pid: u32, peak: Arc<AtomicU64>, stop: CancellationToken) {
    loop {
        if let Ok(kib) = rss_kib(pid) {
            peak.fetch_max(kib, Ordering::Relaxed);
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Creates [`RAW_STREAM`] with the configuration the gateway gave its own stream.
async fn create_raw_stream(js: &jetstream::Context) -> Result<()> {
    let mut events = js.get_stream(GATEWAY_STREAM).await?;
    let mut config: stream::Config = events.info().await?.config.clone();
    config.name = RAW_STREAM.into();
    config.subjects = vec![format!("{RAW_STREAM}.>")];
    config.description = Some("jetwatch bench: raw JetStream runs".into());
    js.create_stream(config).await?;
    Ok(())
}

/// Fails unless `stream` holds exactly `n` messages (nothing deduplicated or lost).
async fn ensure_stored(js: &jetstream::Context, stream: &str, n: usize) -> Result<()> {
    let stored = js.get_stream(stream).await?.info().await?.state.messages;
    ensure!(
        stored == n as u64,
        "`{stream}` holds {stored} messages, expected {n}"
    );
    Ok(())
}

/// The number of JetStream consumers on `stream`.
async fn consumer_count(js: &jetstream::Context, stream: &str) -> Result<usize> {
    Ok(js
        .get_stream(stream)
        .await?
        .info()
        .await?
        .state
        .consumer_count)
}

/// Opens `count` connections (at least one) with `connect`.
async fn connections<T, F, Fut>(count: usize, mut connect: F) -> Result<Vec<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut out = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        out.push(connect().await?);
    }
    Ok(out)
}

/// Connections for `subscribers`: one per [`SUBSCRIBERS_PER_CONNECTION`].
fn connections_for(subscribers: usize) -> usize {
    subscribers.div_ceil(SUBSCRIBERS_PER_CONNECTION)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

/// One bench event: the attributes both producers write, so the gateway and the raw path store
/// the same `ce-*` headers, payload and dedup key.
#[derive(Debug, Clone)]
struct BenchEvent {
    /// Unique per run label and index, so deduplication never interferes.
    id: String,
    /// The `subject` attribute: the resource the event is about.
    resource: String,
    /// The JSON data.
    data: Bytes,
    /// Publish time (see [`now_ns`]) for latency runs.
    sent_ns: Option<u64>,
}

impl BenchEvent {
    /// Event `i` of the run `label`, about resource `i % resources`.
    fn new(label: &str, i: usize, resources: usize, data: &Bytes) -> BenchEvent {
        BenchEvent {
            id: format!("{label}-{i}"),
            resource: format!("r{}", i % resources),
            data: data.clone(),
            sent_ns: None,
        }
    }

    /// The same event, stamped with the time now.
    fn stamped(mut self) -> BenchEvent {
        self.sent_ns = Some(now_ns());
        self
    }

    /// The CloudEvents protobuf form, for the gateway.
    fn to_pb(&self) -> ce::CloudEvent {
        use ce::cloud_event::cloud_event_attribute_value::Attr;
        let string = |s: String| ce::cloud_event::CloudEventAttributeValue {
            attr: Some(Attr::CeString(s)),
        };
        let mut attributes = std::collections::HashMap::new();
        attributes.insert("subject".into(), string(self.resource.clone()));
        attributes.insert("datacontenttype".into(), string(CONTENT_TYPE.into()));
        if let Some(t) = self.sent_ns {
            attributes.insert(SENT_ATTRIBUTE.into(), string(t.to_string()));
        }
        ce::CloudEvent {
            id: self.id.clone(),
            source: SOURCE.into(),
            spec_version: "1.0".into(),
            r#type: TYPE.into(),
            attributes,
            data: Some(ce::cloud_event::Data::TextData(
                String::from_utf8_lossy(&self.data).into_owned(),
            )),
        }
    }

    /// The binary content mode headers, as the gateway writes them.
    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("ce-specversion", "1.0");
        h.insert("ce-id", self.id.as_str());
        h.insert("ce-source", SOURCE);
        h.insert("ce-type", TYPE);
        h.insert("ce-subject", self.resource.as_str());
        h.insert("ce-datacontenttype", CONTENT_TYPE);
        if let Some(t) = self.sent_ns {
            h.insert(format!("ce-{SENT_ATTRIBUTE}"), t.to_string());
        }
        h
    }
}

/// JSON data of exactly `size` bytes (at least the JSON frame's 10).
fn payload(size: usize) -> Bytes {
    let frame = "{\"pad\":\"\"}";
    Bytes::from(format!(
        "{{\"pad\":\"{}\"}}",
        "x".repeat(size.saturating_sub(frame.len()))
    ))
}

/// Nanoseconds since the bench started (monotonic; producers and consumers share the clock).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// Producers
// ---------------------------------------------------------------------------------------------

/// Publishes `n` events made by `event` through one gRPC `PublishStream` and checks every
/// answer.
async fn publish_grpc(
    channel: &Channel,
    n: usize,
    event: impl Fn(usize) -> BenchEvent + Send + 'static,
) -> Result<()> {
    let requests = futures::stream::iter(0..n).map(move |i| api::PublishRequest {
        event: Some(event(i).to_pb()),
        ..Default::default()
    });
    let mut responses = PublisherClient::new(channel.clone())
        .publish_stream(requests)
        .await?
        .into_inner();
    let mut answered = 0;
    while let Some(r) = responses.message().await? {
        if let Some(e) = r.error {
            bail!("publish {answered} failed: {}", e.message);
        }
        ensure!(!r.duplicate, "publish {answered} was a duplicate");
        answered += 1;
    }
    ensure!(answered == n, "{answered} of {n} publishes were answered");
    Ok(())
}

/// Publishes bench events straight to JetStream in binary content mode, on the subjects the
/// gateway's default template gives them, keeping [`PUBLISH_WINDOW`] acknowledgements pending.
struct RawPublisher {
    /// The JetStream context.
    js: jetstream::Context,
    /// `<stream>.{source}.{subject}`, as the gateway renders it.
    template: SubjectTemplate,
}

impl RawPublisher {
    /// A publisher into `stream` (whose subjects are `<stream>.>`).
    fn new(js: &jetstream::Context, stream: &str) -> Result<RawPublisher> {
        Ok(RawPublisher {
            js: js.clone(),
            template: SubjectTemplate::default_for(stream)?,
        })
    }

    /// Publishes events `0..n` made by `event`; with `pace`, event `i` is sent no earlier than
    /// `i × pace` after the start. Fails on any error or duplicate.
    async fn publish(
        &self,
        n: usize,
        pace: Option<Duration>,
        mut event: impl FnMut(usize) -> BenchEvent,
    ) -> Result<()> {
        let start = tokio::time::Instant::now();
        let mut pending = VecDeque::with_capacity(PUBLISH_WINDOW);
        for i in 0..n {
            if let Some(pace) = pace {
                tokio::time::sleep_until(start + pace * i as u32).await;
            }
            if pending.len() == PUBLISH_WINDOW {
                if let Some(ack) = pending.pop_front() {
                    await_ack(ack).await?;
                }
            }
            let e = event(i);
            let subject = self.template.render_with(|name| match name {
                "source" => Some(SOURCE.into()),
                "subject" => Some(e.resource.as_str().into()),
                _ => None,
            })?;
            let message = jetstream::message::PublishMessage::build()
                .payload(e.data.clone())
                .headers(e.headers())
                .message_id(jetwatch::codec::dedup_key(SOURCE, &e.id));
            pending.push_back(self.js.send_publish(subject, message).await?);
        }
        for ack in pending {
            await_ack(ack).await?;
        }
        Ok(())
    }
}

/// Awaits one publish acknowledgement and refuses a duplicate.
async fn await_ack(ack: jetstream::context::PublishAckFuture) -> Result<()> {
    let ack = ack.await?;
    ensure!(!ack.duplicate, "sequence {} was a duplicate", ack.sequence);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Consumers
// ---------------------------------------------------------------------------------------------

/// Opens a Watch of the gateway's stream from `start` with window `window` (0: the server's
/// default) and waits for `Opened`.
async fn open_watch(
    channel: &Channel,
    start: Position,
    window: u32,
) -> Result<Streaming<api::SubscribeResponse>> {
    let open = api::Open {
        start: Some(api::StartPosition {
            position: Some(start),
        }),
        max_in_flight: window,
        ..Default::default()
    };
    let mut stream = SubscriberClient::new(channel.clone())
        .watch(open)
        .await?
        .into_inner();
    match stream.message().await? {
        Some(api::SubscribeResponse {
            response: Some(Response::Opened(_)),
        }) => Ok(stream),
        other => bail!("expected Opened, got {other:?}"),
    }
}

/// Opens `n` live Watch streams (start `new`) with window `window`, over one channel per
/// [`SUBSCRIBERS_PER_CONNECTION`] subscribers.
async fn open_watches(
    gateway: &Gateway,
    n: usize,
    window: u32,
) -> Result<Vec<Streaming<api::SubscribeResponse>>> {
    let channels = connections(connections_for(n), || gateway.channel()).await?;
    let mut watches = Vec::with_capacity(n);
    for i in 0..n {
        let channel = &channels[i % channels.len()];
        watches.push(open_watch(channel, Position::New(()), window).await?);
    }
    Ok(watches)
}

/// Where [`drain_watch`] stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// After this many deliveries.
    Deliveries(u64),
    /// At `SnapshotEnd`.
    SnapshotEnd,
}

/// Reads a Watch until `until`, calling `on_delivery` for each delivery; returns the number of
/// deliveries.
async fn drain_watch(
    stream: &mut Streaming<api::SubscribeResponse>,
    until: Until,
    mut on_delivery: impl FnMut(&api::Delivery),
) -> Result<u64> {
    let mut delivered = 0u64;
    loop {
        if until == Until::Deliveries(delivered) {
            return Ok(delivered);
        }
        let response = stream
            .message()
            .await?
            .with_context(|| format!("the Watch ended after {delivered} deliveries"))?;
        match response.response {
            Some(Response::Delivery(d)) => {
                delivered += 1;
                on_delivery(&d);
            }
            Some(Response::SnapshotEnd(_)) if until == Until::SnapshotEnd => return Ok(delivered),
            _ => {}
        }
    }
}

/// A raw JetStream reader configured like the gateway's own readers: an ephemeral pull
/// consumer without acknowledgements, in memory, pulling [`BATCH`] messages per request.
struct RawReader {
    /// The stream, to delete the consumer.
    stream: stream::Stream,
    /// The consumer's name.
    name: String,
    /// Messages pulled.
    messages: consumer::pull::Stream,
    /// Messages pending when it was created.
    pending: u64,
}

impl RawReader {
    /// Creates the consumer on `stream` with `deliver` (last-per-subject reads filter on the
    /// stream's subjects, as JetStream requires).
    async fn open(
        js: &jetstream::Context,
        stream: &str,
        deliver: consumer::DeliverPolicy,
    ) -> Result<RawReader> {
        let stream = js.get_stream(stream).await?;
        let filter_subjects = if deliver == consumer::DeliverPolicy::LastPerSubject {
            stream.cached_info().config.subjects.clone()
        } else {
            Vec::new()
        };
        let mut c: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: deliver,
                ack_policy: consumer::AckPolicy::None,
                filter_subjects,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            })
            .await?;
        let pending = c.info().await?.num_pending;
        let name = c.cached_info().name.clone();
        let messages = c
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await?;
        Ok(RawReader {
            stream,
            name,
            messages,
            pending,
        })
    }

    /// Reads `n` messages, calling `on_message` for each.
    async fn drain(
        &mut self,
        n: u64,
        mut on_message: impl FnMut(&async_nats::Message),
    ) -> Result<()> {
        for read in 0..n {
            let m = self
                .messages
                .next()
                .await
                .with_context(|| format!("the raw reader ended after {read} messages"))??;
            on_message(&m.message);
        }
        Ok(())
    }

    /// Stops pulling and deletes the consumer.
    async fn close(self) -> Result<()> {
        drop(self.messages);
        self.stream.delete_consumer(&self.name).await?;
        Ok(())
    }
}

/// Opens `n` raw readers of [`RAW_STREAM`] that start with the next message stored, over one
/// NATS connection per [`SUBSCRIBERS_PER_CONNECTION`] readers.
async fn open_raw_readers(env: &Env, n: usize) -> Result<Vec<RawReader>> {
    let clients = connections(connections_for(n), || env.nats_client()).await?;
    let mut readers = Vec::with_capacity(n);
    for i in 0..n {
        let js = jetstream::new(clients[i % clients.len()].clone());
        readers.push(RawReader::open(&js, RAW_STREAM, consumer::DeliverPolicy::New).await?);
    }
    Ok(readers)
}

/// Opens `n` live Watch streams on `env`'s gateway, publishes `m` events (raw, pipelined) and
/// waits until every watcher has them all. Returns the aggregate deliveries/s and the most
/// JetStream consumers seen on the stream meanwhile.
async fn gateway_fan_out(
    env: &Env,
    n: usize,
    m: usize,
    label: &str,
    data: &Bytes,
) -> Result<(f64, usize)> {
    let tasks = open_watches(&env.gateway, n, WATCH_WINDOW)
        .await?
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                drain_watch(&mut w, Until::Deliveries(m as u64), |_| {}).await?;
                Ok(Instant::now())
            })
        })
        .collect();
    let publisher = RawPublisher::new(&env.js, GATEWAY_STREAM)?;
    let (elapsed, consumers) = deliver_to_all(
        &env.js,
        GATEWAY_STREAM,
        tasks,
        publisher.publish(m, None, |i| BenchEvent::new(label, i, 1_000, data)),
    )
    .await?;
    Ok((rate(n * m, elapsed), consumers))
}

/// Runs `publish` while every subscriber task counts its deliveries, and samples the stream's
/// JetStream consumers meanwhile. Returns the time from the first publish until the last
/// subscriber got its last event, and the most consumers seen.
async fn deliver_to_all(
    js: &jetstream::Context,
    stream: &str,
    subscribers: Vec<JoinHandle<Result<Instant>>>,
    publish: impl Future<Output = Result<()>>,
) -> Result<(Duration, usize)> {
    let stop = CancellationToken::new();
    let sampler = {
        let (js, stream, stop) = (js.clone(), stream.to_owned(), stop.clone());
        tokio::spawn(async move {
            let mut most = 0;
            loop {
                if let Ok(n) = consumer_count(&js, &stream).await {
                    most = most.max(n);
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                    () = stop.cancelled() => return most,
                }
            }
        })
    };
    let started = Instant::now();
    within("publishing", publish).await?;
    let mut last = started;
    for done in within("deliveries", join_tasks(subscribers)).await? {
        last = last.max(done);
    }
    stop.cancel();
    Ok((last - started, sampler.await?))
}

/// Runs `publish` while subscriber tasks record latencies; merges their histograms and says
/// how long the subscribers took to finish after the last publish (a long tail means they
/// could not keep up with the publish rate, so the figures measure a queue).
async fn collect_histograms(
    subscribers: Vec<JoinHandle<Result<Histogram<u64>>>>,
    publish: impl Future<Output = Result<()>>,
) -> Result<(Histogram<u64>, Duration)> {
    within("publishing", publish).await?;
    let published = Instant::now();
    let mut all = latency_histogram();
    for h in within("deliveries", join_tasks(subscribers)).await? {
        all.add(h)?;
    }
    Ok((all, published.elapsed()))
}

/// A histogram of latencies in microseconds, 1 µs to 60 s, 3 significant digits.
fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Records the time since `sent` (nanoseconds, [`now_ns`]) in microseconds.
fn record_latency(h: &mut Histogram<u64>, sent: Option<u64>) {
    if let Some(sent) = sent {
        h.saturating_record((now_ns().saturating_sub(sent) / 1_000).max(1));
    }
}

/// The publish time carried by a delivered CloudEvent.
fn sent_of_pb(e: &ce::CloudEvent) -> Option<u64> {
    use ce::cloud_event::cloud_event_attribute_value::Attr;
    match e.attributes.get(SENT_ATTRIBUTE)?.attr.as_ref()? {
        Attr::CeString(s) => s.parse().ok(),
        _ => None,
    }
}

/// The publish time carried by a raw message's headers.
fn sent_of_headers(h: Option<&HeaderMap>) -> Option<u64> {
    h?.get(format!("ce-{SENT_ATTRIBUTE}").as_str())?
        .as_str()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------------
// Measuring and reporting
// ---------------------------------------------------------------------------------------------

/// Awaits `work`, failing after [`DEADLINE`].
async fn within<T>(what: &str, work: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(DEADLINE, work)
        .await
        .with_context(|| format!("{what} did not finish within {} s", DEADLINE.as_secs()))?
}

/// Waits for every task and returns their results, failing on the first error.
async fn join_tasks<T>(tasks: Vec<JoinHandle<Result<T>>>) -> Result<Vec<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for result in futures::future::join_all(tasks).await {
        out.push(result??);
    }
    Ok(out)
}

/// Events per second for `n` events in `elapsed`.
fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Seconds since `started`.
fn secs(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// `x` rounded, with thousands separators.
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A measured value and its unit.
#[derive(Debug, Clone, Copy)]
enum Figure {
    /// Events per second.
    Rate(f64),
    /// Milliseconds.
    Millis(f64),
    /// KiB.
    KiB(f64),
    /// MiB.
    MiB(f64),
    /// A plain count.
    Count(f64),
    /// Seconds (of CPU time).
    Seconds(f64),
}

impl Figure {
    fn value(self) -> f64 {
        match self {
            Figure::Rate(v)
            | Figure::Millis(v)
            | Figure::KiB(v)
            | Figure::MiB(v)
            | Figure::Count(v)
            | Figure::Seconds(v) => v,
        }
    }
}

impl fmt::Display for Figure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Figure::Rate(v) => write!(f, "{} ev/s", thousands(v)),
            Figure::Millis(v) => write!(f, "{v:.2} ms"),
            Figure::KiB(v) => write!(f, "{v:.1} KiB"),
            Figure::MiB(v) => write!(f, "{v:.1} MiB"),
            Figure::Count(v) => write!(f, "{v:.0}"),
            Figure::Seconds(v) => write!(f, "{v:.2} s"),
        }
    }
}

/// What a row must reach.
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// Informational.
    None,
    /// Gateway ÷ raw at least this.
    RatioAtLeast(f64),
    /// The gateway figure at most this.
    AtMost(Figure),
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Goal::None => f.write_str("-"),
            Goal::RatioAtLeast(r) => write!(f, "ratio >= {r}"),
            Goal::AtMost(x) => write!(f, "<= {x}"),
        }
    }
}

/// One line of the summary table.
#[derive(Debug, Clone)]
struct Row {
    /// What was measured.
    name: String,
    /// The gateway's figure.
    gateway: Figure,
    /// Raw JetStream's figure, when there is one.
    raw: Option<Figure>,
    /// The goal.
    goal: Goal,
}

impl Row {
    fn new(name: impl Into<String>, gateway: Figure) -> Row {
        Row {
            name: name.into(),
            gateway,
            raw: None,
            goal: Goal::None,
        }
    }

    fn raw(mut self, raw: Figure) -> Row {
        self.raw = Some(raw);
        self
    }

    fn goal(mut self, goal: Goal) -> Row {
        self.goal = goal;
        self
    }

    /// Gateway ÷ raw, for rates.
    fn ratio(&self) -> Option<f64> {
        let (Figure::Rate(_), Some(Figure::Rate(raw))) = (self.gateway, self.raw) else {
            return None;
        };
        (raw > 0.0).then(|| self.gateway.value() / raw)
    }

    /// Whether the goal is met (`None` when there is no goal).
    fn met(&self) -> Option<bool> {
        match self.goal {
            Goal::None => None,
            Goal::RatioAtLeast(r) => Some(self.ratio().is_some_and(|x| x >= r)),
            Goal::AtMost(x) => Some(self.gateway.value() <= x.value()),
        }
    }
}

/// Prints the summary table.
fn print_table(rows: &[Row]) {
    let header = ["scenario", "gateway", "raw NATS", "ratio", "goal", "result"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.gateway.to_string(),
                r.raw.map_or("-".into(), |x| x.to_string()),
                r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
                r.goal.to_string(),
                match r.met() {
                    None => "-".into(),
                    Some(true) => "met".into(),
                    Some(false) => "MISSED".into(),
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in row.iter().zip(widths).enumerate() {
            let pad = w - c.chars().count();
            if i == 0 {
                out.push_str(&format!("{c}{}", " ".repeat(pad)));
            } else {
                out.push_str(&format!(" | {}{c}", " ".repeat(pad)));
            }
        }
        println!("{out}");
    };
    line(&header.map(String::from));
    println!(
        "{}",
        "-".repeat(widths.iter().sum::<usize>() + 3 * (widths.len() - 1))
    );
    for row in &cells {
        line(row);
    }
}
