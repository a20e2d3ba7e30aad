//! The `jetwatch` command's sub-commands, callable from tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::devnats::NatsServer;
use crate::server;

/// `println!` that returns the write's error instead of panicking, so a closed output
/// (`jetwatch ... | head -1`) ends the command quietly (see `main`).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?
    }};
}

/// jetwatch: a fan-out broker for resource-change CloudEvents on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "jetwatch", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway against an existing NATS server with JetStream.
    Serve(ServeArgs),
    /// Run a local nats-server with JetStream plus the gateway (stopped together on exit).
    Dev(DevArgs),
    /// Publish CloudEvents (JSON format; one object, an array, or one object per line).
    Publish(PublishArgs),
    /// Watch a stream like `kubectl get -w`: filtered, resumable, JSON lines or a table.
    Watch(WatchArgs),
    /// The current state of every matching resource (its last event), then exit, like
    /// `kubectl get`; `--source S --subject X` for one resource (exit code 3 if it has none).
    Get(GetArgs),
    /// List the gateway's streams with their sequences and counts.
    Streams(ClientArgs),
    /// List durable subscriptions with their positions.
    Subscriptions(SubscriptionsArgs),
}

/// Where the gateway is.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Gateway gRPC address.
    #[arg(
        long,
        short = 's',
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:50051",
        env = "JETWATCH_SERVER"
    )]
    pub server: String,
    /// Bearer token (a static token or a JWT) sent with every call.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "JETWATCH_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Read the bearer token from this file.
    #[arg(
        long,
        value_name = "FILE",
        env = "JETWATCH_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Use TLS, trusting this PEM CA bundle (an `https://` server address uses TLS with the
    /// system's roots).
    #[arg(long, value_name = "FILE", env = "JETWATCH_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(
        long,
        value_name = "FILE",
        env = "JETWATCH_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    #[arg(
        long,
        value_name = "FILE",
        env = "JETWATCH_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Name to verify the gateway's certificate against.
    #[arg(long, value_name = "NAME", env = "JETWATCH_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
}

impl ClientArgs {
    /// The client connection these flags describe.
    pub fn connection(&self) -> anyhow::Result<crate::grpc::client::Connection> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let tls =
            (self.tls_ca.is_some() || self.tls_cert.is_some() || self.tls_server_name.is_some())
                .then(|| crate::grpc::client::ClientTls {
                    ca_file: self.tls_ca.clone(),
                    cert_file: self.tls_cert.clone(),
                    key_file: self.tls_key.clone(),
                    server_name: self.tls_server_name.clone(),
                });
        Ok(crate::grpc::client::Connection {
            addr: self.server.clone(),
            token,
            tls,
        })
    }
}

/// Flags of `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The stream (default: the gateway's default stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// Read events from this file instead of standard input.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub file: Option<PathBuf>,
}

/// Which events `watch` and `get` show: stream and attribute filters.
#[derive(Debug, Args)]
pub struct SelectArgs {
    /// The stream (default: the gateway's default stream).
    #[arg(long, default_value = "")]
    pub stream: String,
    /// A CESQL filter, e.g. "type LIKE '%.deleted'".
    #[arg(long, value_name = "EXPRESSION")]
    pub filter: Option<String>,
    /// Only events whose attribute equals a value (repeatable), e.g. `--exact type=com.x.y`.
    #[arg(long, value_name = "ATTRIBUTE=VALUE", value_parser = attribute_value)]
    pub exact: Vec<(String, String)>,
}

/// Flags of `watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// NATS subject patterns to watch (repeatable).
    #[arg(long = "subject", value_name = "PATTERN")]
    pub subjects: Vec<String>,
    /// Where to start: new, earliest, snapshot, a sequence number, or an RFC 3339 time.
    #[arg(long, default_value = "new")]
    pub from: String,
    /// Watch through this durable (its position is kept by the gateway's JetStream).
    #[arg(long)]
    pub durable: Option<String>,
    /// Output: `json` (one line per event) or `table`.
    #[arg(long, short = 'o', default_value = "table")]
    pub output: String,
    /// Stop after this many events.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// Flags of `get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub select: SelectArgs,
    /// NATS subject patterns of the resources (repeatable).
    #[arg(long = "subject-pattern", value_name = "PATTERN")]
    pub subjects: Vec<String>,
    /// One resource: its CloudEvents `source` (with `--subject`).
    #[arg(long, requires = "subject")]
    pub source: Option<String>,
    /// One resource: its CloudEvents `subject` (with `--source`).
    #[arg(long, requires = "source")]
    pub subject: Option<String>,
    /// Output: `json` (one line per event) or `table`.
    #[arg(long, short = 'o', default_value = "table")]
    pub output: String,
}

/// `ATTRIBUTE=VALUE`.
fn attribute_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("`{s}`: expected ATTRIBUTE=VALUE")),
    }
}

/// Exit codes of the client commands (`2` is a usage error, from the flag parser).
pub mod exit {
    /// Any other failure.
    pub const FAILED: u8 = 1;
    /// `get`: the resource asked for does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The gateway cannot be reached or is unavailable (UNAVAILABLE); retrying may help.
    pub const UNAVAILABLE: u8 = 4;
    /// `publish`: the gateway refused some events (the others were stored).
    pub const REFUSED: u8 = 5;
}

/// `publish`: this many events were refused.
#[derive(Debug, thiserror::Error)]
#[error("{0} event(s) were refused")]
pub struct Refused(pub usize);

/// The exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use crate::grpc::client::ClientError;
    if e.is::<NotFound>() {
        return exit::NOT_FOUND;
    }
    if e.is::<Refused>() {
        return exit::REFUSED;
    }
    match e.downcast_ref::<ClientError>() {
        Some(ClientError::Connect { .. }) => exit::UNAVAILABLE,
        Some(ClientError::Status(s)) if s.code() == tonic::Code::Unavailable => exit::UNAVAILABLE,
        _ => exit::FAILED,
    }
}

/// `jetwatch get` found no resource (its exit code is [`exit::NOT_FOUND`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// Flags of `subscriptions`.
#[derive(Debug, Args)]
pub struct SubscriptionsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Only this stream's durables.
    #[arg(long, default_value = "")]
    pub stream: String,
}

/// Flags shared by `serve` and `dev`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file layered over the built-in defaults (see config/default.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated [default: nats://127.0.0.1:4222].
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9464].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Flags of `dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where the local nats-server keeps its JetStream data (kept between runs).
    #[arg(long, value_name = "DIR", default_value = ".jetwatch/dev")]
    pub data_dir: PathBuf,
    /// Port of the local nats-server (0 picks a free one).
    #[arg(long, value_name = "PORT", default_value_t = 4222)]
    pub nats_port: u16,
    /// A TOML configuration file layered over the built-in defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address [default: 127.0.0.1:9464].
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<SocketAddr>,
}

/// Loads settings and applies flag overrides.
pub fn settings_from(args: &ServeArgs) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(url) = &args.nats_url {
        settings.nats.url = url.clone();
    }
    if let Some(l) = args.listen {
        settings.server.listen = l;
    }
    if let Some(l) = args.metrics_listen {
        settings.server.metrics_listen = l;
    }
    settings.validate()?;
    Ok(settings)
}

/// Runs the gateway until `shutdown`, then drains within the grace period.
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let grace = settings.server.shutdown_grace;
    let gateway = server::start(settings, shutdown.clone()).await?;
    shutdown.cancelled().await;
    gateway.stopped(grace).await;
    Ok(())
}

/// Starts a local nats-server, runs the gateway against it until `shutdown`, then stops both.
pub async fn dev(args: DevArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    let port = args.nats_port;
    // Started from this thread, which lives as long as the process: the server is bound to
    // die with it (a blocking-pool thread would exit when idle and take the server along).
    let nats = NatsServer::start_owned(&data_dir, port)?;
    tracing::info!(url = %nats.url(), data_dir = %args.data_dir.display(), "local nats-server with JetStream started");
    let serve_args = ServeArgs {
        config: args.config,
        nats_url: Some(nats.url()),
        listen: args.listen,
        metrics_listen: args.metrics_listen,
    };
    let result = match settings_from(&serve_args) {
        Ok(settings) => serve(settings, shutdown).await,
        Err(e) => Err(e),
    };
    // Stop the child after the gateway, whether it ran or failed.
    tokio::task::spawn_blocking(move || drop(nats)).await?;
    tracing::info!("local nats-server stopped");
    result
}

/// `jetwatch publish`: publishes every event read, printing one JSON line per result.
pub async fn publish(args: PublishArgs) -> anyhow::Result<()> {
    let text = match &args.file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?,
        None => std::io::read_to_string(std::io::stdin())?,
    };
    let events = parse_events(&text)?;
    let conn = args.client.connection()?;
    let results = crate::grpc::client::publish_all(&conn, &args.stream, events).await?;
    let mut failed = 0;
    for r in results {
        let line = match r {
            Ok(p) => serde_json::json!({
                "stream": p.stream, "subject": p.subject, "sequence": p.sequence, "duplicate": p.duplicate
            }),
            Err(status) => {
                failed += 1;
                serde_json::json!({ "error": { "code": format!("{:?}", status.code()), "message": status.message() } })
            }
        };
        out!("{line}");
    }
    if failed > 0 {
        return Err(Refused(failed).into());
    }
    Ok(())
}

/// Parses a JSON object, a JSON array of objects, or one object per line.
fn parse_events(text: &str) -> anyhow::Result<Vec<crate::event::Event>> {
    let trimmed = text.trim_start();
    let values: Vec<serde_json::Value> = if trimmed.starts_with('[') {
        serde_json::from_str(trimmed)?
    } else {
        serde_json::Deserializer::from_str(trimmed)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()?
    };
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            crate::codec::event_from_json(v.to_string().as_bytes())
                .map_err(|e| anyhow::anyhow!("event #{}: {e}", i + 1))
        })
        .collect()
}

/// `jetwatch watch`: prints deliveries until interrupted (or `--limit`), resuming across
/// disconnects.
pub async fn watch(args: WatchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    use crate::grpc::client::{WatchItem, WatchOptions, Watcher};
    let options = WatchOptions {
        stream: args.select.stream.clone(),
        subjects: args.subjects.clone(),
        sql: args.select.filter.clone(),
        from: args
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("--from: {e}"))?,
        exact: args.select.exact.iter().cloned().collect(),
        durable: args.durable.clone(),
        // A durable consumes only what was printed: each delivery is acknowledged after it is
        // written out, so stopping early (--limit, Ctrl-C) leaves the rest for the next run.
        explicit_acks: args.durable.is_some(),
    };
    let table = table_output(&args.output)?;
    let mut watcher = Watcher::watch(args.client.connection()?, &options);
    if table {
        print_header()?;
    }
    let mut count = 0u64;
    let mut replay_until = 0u64;
    let mut last_acked = None;
    loop {
        let item = tokio::select! {
            item = watcher.next() => item?,
            () = shutdown.cancelled() => {
                if args.durable.is_none() {
                    if let Some(next) = watcher.resume_from() {
                        eprintln!(
                            "stopped before sequence {next}; resume with the same flags and \
                             `--from {next}`"
                        );
                    }
                }
                return settle_durable(&args, last_acked).await;
            }
        };
        match item {
            WatchItem::Opened {
                last_sequence,
                start_sequence,
            } => {
                if last_sequence >= start_sequence {
                    replay_until = last_sequence;
                    eprintln!("replaying {start_sequence}..={last_sequence}, then watching");
                }
            }
            WatchItem::Delivery {
                sequence,
                subject,
                stored_at,
                event,
                ..
            } => {
                print_delivery(table, sequence, &subject, stored_at, &event)?;
                if replay_until > 0 && sequence % 10_000 == 0 {
                    eprintln!("replay progress: {sequence} of {replay_until}");
                }
                caught_up(&mut replay_until, sequence);
                if args.durable.is_some() {
                    use std::io::Write;
                    // Written out before it is consumed.
                    std::io::stdout().flush()?;
                    watcher.ack(sequence).await?;
                    last_acked = Some(sequence);
                }
                count += 1;
                if args.limit.is_some_and(|l| count >= l) {
                    return settle_durable(&args, last_acked).await;
                }
            }
            WatchItem::SnapshotEnd { sequence } => {
                eprintln!("snapshot complete as of sequence {sequence}; watching")
            }
            WatchItem::Bookmark { sequence, .. } => caught_up(&mut replay_until, sequence),
        }
    }
}

/// Says once when a replay has reached the stream's end as of the open (`replay_until`).
fn caught_up(replay_until: &mut u64, sequence: u64) {
    if *replay_until > 0 && sequence >= *replay_until {
        eprintln!("caught up at sequence {sequence}; watching live changes");
        *replay_until = 0;
    }
}

fn print_header() -> anyhow::Result<()> {
    out!(
        "{:>10}  {:<30}  {:<36}  {:<24}  ID",
        "SEQUENCE",
        "TIME",
        "TYPE",
        "SUBJECT"
    );
    Ok(())
}

/// One delivery as a table row or a JSON line.
fn print_delivery(
    table: bool,
    sequence: u64,
    subject: &str,
    stored_at: Option<chrono::DateTime<chrono::Utc>>,
    event: &crate::event::Event,
) -> anyhow::Result<()> {
    if table {
        let time = stored_at
            .map(|t| crate::event::format_timestamp(&t))
            .unwrap_or_default();
        let subject_attr = event.subject().unwrap_or("");
        out!(
            "{sequence:>10}  {time:<30}  {:<36}  {subject_attr:<24}  {}",
            event.ty,
            event.id
        );
    } else {
        let json = crate::codec::event_to_json(event)?;
        out!(
            "{}",
            serde_json::json!({ "sequence": sequence, "subject": subject, "event": json })
        );
    }
    Ok(())
}

/// Whether `output` asks for a table (`table`) or JSON lines (`json`).
fn table_output(output: &str) -> anyhow::Result<bool> {
    match output {
        "table" => Ok(true),
        "json" => Ok(false),
        other => anyhow::bail!("unknown output `{other}`: use json or table"),
    }
}

/// `jetwatch get`: a snapshot of the matching resources, printed, then exit.
pub async fn get(args: GetArgs) -> anyhow::Result<()> {
    use crate::grpc::client::{StartFrom, WatchItem, WatchOptions, Watcher};
    let table = table_output(&args.output)?;
    let mut exact: std::collections::BTreeMap<String, String> =
        args.select.exact.into_iter().collect();
    let one = match (&args.source, &args.subject) {
        (Some(source), Some(subject)) => {
            exact.insert("source".into(), source.clone());
            exact.insert("subject".into(), subject.clone());
            Some(format!("source `{source}`, subject `{subject}`"))
        }
        _ => None,
    };
    let options = WatchOptions {
        stream: args.select.stream,
        subjects: args.subjects,
        sql: args.select.filter,
        exact,
        from: StartFrom::Snapshot,
        durable: None,
        explicit_acks: false,
    };
    let mut watcher = Watcher::watch(args.client.connection()?, &options);
    let mut found = 0u64;
    loop {
        match watcher.next().await? {
            WatchItem::Delivery {
                sequence,
                subject,
                stored_at,
                event,
                ..
            } => {
                if table && found == 0 {
                    print_header()?;
                }
                found += 1;
                print_delivery(table, sequence, &subject, stored_at, &event)?;
            }
            WatchItem::SnapshotEnd { .. } => break,
            WatchItem::Opened { .. } | WatchItem::Bookmark { .. } => {}
        }
    }
    match one {
        Some(resource) if found == 0 => {
            Err(NotFound(format!("no resource with {resource}")).into())
        }
        None if found == 0 => {
            eprintln!("no resources found");
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Before a durable watch exits: waits (up to 5 s) until the gateway has recorded the
/// acknowledgement of the last printed event, so the next run starts right after it.
async fn settle_durable(args: &WatchArgs, last_acked: Option<u64>) -> anyhow::Result<()> {
    let (Some(durable), Some(last)) = (&args.durable, last_acked) else {
        return Ok(());
    };
    let conn = args.client.connection()?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let recorded = crate::grpc::client::durables(&conn, &args.select.stream)
            .await?
            .into_iter()
            .any(|d| &d.durable == durable && d.ack_floor_sequence >= last);
        if recorded {
            eprintln!("durable `{durable}` consumed up to sequence {last}");
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!(
                "durable `{durable}`: the acknowledgement of sequence {last} was not confirmed; \
                 the next run may show it again"
            );
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `jetwatch streams`.
pub async fn streams(args: ClientArgs) -> anyhow::Result<()> {
    let streams = crate::grpc::client::streams(&args.connection()?).await?;
    out!(
        "{:<20} {:>10} {:>10} {:>12} {:>14} {:>10}  SUBJECTS",
        "STREAM",
        "FIRST",
        "LAST",
        "MESSAGES",
        "BYTES",
        "CONSUMERS"
    );
    for s in streams {
        out!(
            "{:<20} {:>10} {:>10} {:>12} {:>14} {:>10}  {}",
            s.name,
            s.first_sequence,
            s.last_sequence,
            s.messages,
            s.bytes,
            s.consumer_count,
            s.subjects.join(",")
        );
    }
    Ok(())
}

/// `jetwatch subscriptions`.
pub async fn subscriptions(args: SubscriptionsArgs) -> anyhow::Result<()> {
    let durables = crate::grpc::client::durables(&args.client.connection()?, &args.stream).await?;
    out!(
        "{:<20} {:<24} {:>10} {:>10} {:>10} {:>10}",
        "STREAM",
        "DURABLE",
        "DELIVERED",
        "ACKED",
        "PENDING",
        "IN-FLIGHT"
    );
    for s in durables {
        out!(
            "{:<20} {:<24} {:>10} {:>10} {:>10} {:>10}",
            s.stream,
            s.durable,
            s.delivered_sequence,
            s.ack_floor_sequence,
            s.pending,
            s.in_flight
        );
    }
    Ok(())
}
