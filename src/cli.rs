//! The `jetwatch` command's sub-commands, callable from tests.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::devnats::NatsServer;
use crate::server;

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
    let nats = tokio::task::spawn_blocking(move || NatsServer::start(&data_dir, port)).await??;
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
