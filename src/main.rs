//! The `jetwatch` binary: parses flags, sets up tracing, waits for signals.

use std::process::ExitCode;

use clap::Parser;
use jetwatch::cli::{self, Cli, Command};
use tokio_util::sync::CancellationToken;

/// mimalloc instead of the system allocator: the gateway allocates per event from several
/// threads at once (decoding, encoding, channels), where glibc's malloc spent about a third of
/// a replay's CPU time. Built without transparent huge pages (`no_thp`): with them, memory
/// mimalloc gave back and took again was faulted in as 2 MiB pages, and zeroing those was
/// 18 % of the gateway's CPU in a fan-out to 256 watchers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // The gateway logs what it does (and exports spans when configured); the client commands
    // log only what goes wrong.
    let config = match &cli.command {
        Command::Serve(args) => Some(args.config.as_deref()),
        Command::Dev(args) => Some(args.config.as_deref()),
        _ => None,
    };
    let _traces = match config {
        Some(file) => {
            // A broken file is reported when the settings are loaded for real.
            let telemetry = jetwatch::config::Settings::load(file)
                .map(|s| s.telemetry)
                .unwrap_or_default();
            match jetwatch::telemetry::init_gateway_tracing("info", &telemetry) {
                Ok(guard) => guard,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(cli::exit::FAILED);
                }
            }
        }
        None => {
            jetwatch::telemetry::init_tracing("warn");
            jetwatch::telemetry::TraceGuard::default()
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let result = match cli.command {
        Command::Serve(args) => match cli::settings_from(&args) {
            Ok(settings) => cli::serve(settings, shutdown).await,
            Err(e) => Err(e),
        },
        Command::Dev(args) => cli::dev(args, shutdown).await,
        client => cli::run_client(client, shutdown).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): nothing more to say to anyone.
        Err(e) if closed_output(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what happened, with its causes.
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code(&e))
        }
    }
}

/// Whether `e` is a write to a closed pipe.
fn closed_output(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}
