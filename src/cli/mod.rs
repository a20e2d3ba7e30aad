//! The `jetwatch` command's sub-commands, callable from tests.
//!
//! `serve` and `dev` run the gateway; the others are clients of a running gateway, built on
//! the `jetwatch-client` crate.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::devnats::NatsServer;
use crate::server;

mod admin;
mod connect;
mod output;
mod publish;
mod push;
mod watch;

pub use admin::{ContextCommand, StreamsArgs, SubscriptionsArgs};
pub use connect::{ClientArgs, Context, Contexts, DEFAULT_SERVER};
pub use output::Format;
pub use publish::PublishArgs;
pub use watch::{GetArgs, SelectArgs, WatchArgs};

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
    /// Publish CloudEvents: from flags (`--type --source ...`), or JSON read from a file or
    /// standard input (one object, an array, or one object per line).
    Publish(PublishArgs),
    /// Watch a stream like `kubectl get -w`: filtered, resumable, as a table, JSON or YAML.
    Watch(WatchArgs),
    /// The current state of every matching resource (its last event), then exit, like
    /// `kubectl get`; `--source S --subject X` for one resource (exit code 3 if it has none).
    Get(GetArgs),
    /// The gateway's streams, or one stream's details (`streams info NAME`).
    Streams(StreamsArgs),
    /// Durable subscriptions: list, `info`, `delete`, `seek`.
    Subscriptions(SubscriptionsArgs),
    /// Whether the gateway is serving (exit code 4 if not).
    Health(HealthArgs),
    /// This client's version and the gateway's.
    Version(HealthArgs),
    /// Named connection settings (`context set NAME --server ...`, `use`, `list`, `delete`).
    Context(ContextArgs),
}

/// Flags of `health` and `version`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Flags of `context`.
#[derive(Debug, Args)]
pub struct ContextArgs {
    /// What to do with contexts.
    #[command(subcommand)]
    pub command: ContextCommand,
}

/// Runs a client command (anything but `serve` and `dev`).
pub async fn run_client(command: Command, shutdown: CancellationToken) -> anyhow::Result<()> {
    match command {
        Command::Publish(args) => publish::publish(args).await,
        Command::Watch(args) => watch::watch(args, shutdown).await,
        Command::Get(args) => watch::get(args).await,
        Command::Streams(args) => admin::streams(args).await,
        Command::Subscriptions(args) => admin::subscriptions(args).await,
        Command::Health(args) => admin::health(args).await,
        Command::Version(args) => admin::version(args).await,
        Command::Context(args) => admin::context(args.command),
        Command::Serve(_) | Command::Dev(_) => {
            anyhow::bail!("serve and dev are not client commands")
        }
    }
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
    /// A usage error (also what the flag parser exits with).
    pub const USAGE: u8 = 2;
    /// `get`, `streams info`, `subscriptions info`: what was asked for does not exist.
    pub const NOT_FOUND: u8 = 3;
    /// The gateway cannot be reached or is unavailable (UNAVAILABLE, or `health` not
    /// serving); retrying may help.
    pub const UNAVAILABLE: u8 = 4;
    /// `publish`: the gateway refused some events (the others were stored).
    pub const REFUSED: u8 = 5;
}

/// `publish`: this many events were refused.
#[derive(Debug, thiserror::Error)]
#[error("{0} event(s) were refused")]
pub struct Refused(pub usize);

/// A usage error found after the flags were parsed (exit code [`exit::USAGE`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The gateway could not be reached, or a read it served was cut off (exit code
/// [`exit::UNAVAILABLE`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// `health`: the gateway answered but is not serving (exit code [`exit::UNAVAILABLE`]).
#[derive(Debug, thiserror::Error)]
#[error("the gateway at {0} is not serving (it is not connected to NATS or its streams are not declared)")]
pub struct NotServing(pub String);

/// What was asked for does not exist (its exit code is [`exit::NOT_FOUND`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NotFound(pub String);

/// The exit code for a failed command.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use jetwatch_client::ClientError;
    if e.is::<NotFound>() {
        return exit::NOT_FOUND;
    }
    if e.is::<Refused>() {
        return exit::REFUSED;
    }
    if e.is::<Usage>() {
        return exit::USAGE;
    }
    if e.is::<NotServing>() || e.is::<Unavailable>() {
        return exit::UNAVAILABLE;
    }
    match e.downcast_ref::<ClientError>() {
        Some(e) if e.is_unavailable() => exit::UNAVAILABLE,
        Some(e) if e.is_not_found() => exit::NOT_FOUND,
        _ => exit::FAILED,
    }
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
