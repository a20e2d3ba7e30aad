//! `watch` and `get`.

use clap::Args;
use jetwatch_client::{ExpiredPolicy, StartFrom, WatchItem, WatchOptions, Watcher};
use tokio_util::sync::CancellationToken;

use super::output::{self, Format};
use super::{attribute_value, ClientArgs, NotFound, Unavailable};

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
    /// Only events whose attribute starts with a value (repeatable), e.g.
    /// `--prefix source=/clusters/eu`.
    #[arg(long, value_name = "ATTRIBUTE=VALUE", value_parser = attribute_value)]
    pub prefix: Vec<(String, String)>,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Leave out the table's header row.
    #[arg(long)]
    pub no_headers: bool,
}

/// How a durable watch acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckArg {
    /// Each event once it has been printed: stopping early consumes nothing unprinted.
    Explicit,
    /// Each event as the gateway sends it (faster; an interrupted run may skip what was sent
    /// but not printed).
    Auto,
}

/// What to do when the start position has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExpiredArg {
    /// Fail (exit code 1): events were lost.
    Fail,
    /// Continue from the first retained event.
    Earliest,
    /// Start again with a snapshot.
    Snapshot,
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
    #[arg(long, default_value = "new", value_parser = start_from)]
    pub from: StartFrom,
    /// Watch through this durable (its position is kept by the gateway's JetStream).
    #[arg(long)]
    pub durable: Option<String>,
    /// How a durable's events are acknowledged [default: explicit, after printing].
    #[arg(long, value_enum, requires = "durable")]
    pub ack: Option<AckArg>,
    /// The window: events in flight to this client [default: the gateway's].
    #[arg(long, value_name = "N")]
    pub window: Option<u32>,
    /// Interval between bookmarks, e.g. `5s` (`0s` disables them) [default: the gateway's].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<std::time::Duration>,
    /// When the start (or resume) position has expired from the stream.
    #[arg(long, value_enum, default_value = "fail")]
    pub on_expired: ExpiredArg,
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
}

fn start_from(s: &str) -> Result<StartFrom, String> {
    s.parse()
}

impl SelectArgs {
    fn options(&self, subjects: Vec<String>) -> WatchOptions {
        WatchOptions {
            stream: self.stream.clone(),
            subjects,
            sql: self.filter.clone(),
            exact: self.exact.iter().cloned().collect(),
            prefix: self.prefix.iter().cloned().collect(),
            ..WatchOptions::default()
        }
    }
}

/// What the progress bar measures: a replay (sequences up to the stream's end at the open) or
/// a snapshot (resources delivered).
#[derive(Debug)]
struct Progress {
    bar: indicatif::ProgressBar,
    /// The first sequence of a replay (bar position is relative to it).
    start: u64,
    /// Replay: the last sequence as of the open; snapshot: 0.
    until: u64,
}

impl Progress {
    fn done(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// `jetwatch watch`: prints deliveries until interrupted (or `--limit`), resuming across
/// disconnects.
pub(super) async fn watch(args: WatchArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let explicit = args.durable.is_some() && args.ack != Some(AckArg::Auto);
    let mut options = args.select.options(args.subjects.clone());
    options.from = args.from;
    options.durable = args.durable.clone();
    // A durable consumes only what was printed: each delivery is acknowledged after it is
    // written out, so stopping early (--limit, Ctrl-C) leaves the rest for the next run.
    options.explicit_acks = explicit;
    options.window = args.window;
    options.heartbeat = args.heartbeat;
    options.on_expired = match args.on_expired {
        ExpiredArg::Fail => ExpiredPolicy::Fail,
        ExpiredArg::Earliest => ExpiredPolicy::FromEarliest,
        ExpiredArg::Snapshot => ExpiredPolicy::Resnapshot,
    };
    let format = args.select.output;
    let mut watcher = Watcher::watch(args.client.connection()?, &options);
    let mut count = 0u64;
    let mut opened = false;
    let mut progress: Option<Progress> = None;
    let mut last_acked = None;
    loop {
        let item = tokio::select! {
            item = watcher.next() => item?,
            () = shutdown.cancelled() => {
                if let Some(p) = progress.as_mut() {
                    p.done();
                }
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
                resumed,
            } => {
                opened = true;
                if resumed {
                    eprintln!("resumed from sequence {start_sequence}");
                }
                if args.from == StartFrom::Snapshot && !resumed {
                    progress = Some(Progress {
                        bar: output::progress_bar(None, "snapshot"),
                        start: 0,
                        until: 0,
                    });
                } else if last_sequence >= start_sequence && start_sequence > 0 && !resumed {
                    eprintln!("replaying {start_sequence}..={last_sequence}, then watching");
                    progress = Some(Progress {
                        bar: output::progress_bar(
                            Some(last_sequence - start_sequence + 1),
                            "replay",
                        ),
                        start: start_sequence,
                        until: last_sequence,
                    });
                }
            }
            WatchItem::Delivery {
                sequence,
                subject,
                stored_at,
                event,
                ..
            } => {
                // The header comes with the first row (not before a connection error).
                let print = || {
                    if count == 0 && !args.select.no_headers {
                        output::print_delivery_header(format)?;
                    }
                    output::print_delivery(format, sequence, &subject, stored_at, &event)
                };
                match &progress {
                    Some(p) => {
                        output::print_under(&p.bar, print)?;
                        if p.until > 0 {
                            p.bar.set_position(sequence.saturating_sub(p.start) + 1);
                        } else {
                            p.bar.inc(1);
                        }
                    }
                    None => print()?,
                }
                caught_up(&mut progress, sequence);
                if explicit {
                    // Written out before it is consumed.
                    output::flush()?;
                    watcher.ack(sequence).await?;
                    last_acked = Some(sequence);
                }
                count += 1;
                if args.limit.is_some_and(|l| count >= l) {
                    if let Some(p) = progress.as_mut() {
                        p.done();
                    }
                    return settle_durable(&args, last_acked).await;
                }
            }
            WatchItem::SnapshotEnd { sequence } => {
                if let Some(mut p) = progress.take() {
                    p.done();
                }
                eprintln!("snapshot complete as of sequence {sequence}; watching");
            }
            WatchItem::Bookmark { sequence, .. } => caught_up(&mut progress, sequence),
            // A gateway never reached is most likely a wrong address: say so rather than wait.
            WatchItem::Disconnected { error, .. } if !opened => {
                return Err(Unavailable(error).into());
            }
            WatchItem::Disconnected {
                error,
                attempt,
                retry_in,
                resume_from,
            } => {
                let from = resume_from
                    .map(|s| format!(" from sequence {s}"))
                    .unwrap_or_default();
                eprintln!(
                    "disconnected: {error}; reconnecting{from} in {:.1}s (attempt {attempt})",
                    retry_in.as_secs_f64()
                );
            }
            WatchItem::Restarted {
                expired,
                first_sequence,
                from,
            } => {
                let how = match from {
                    StartFrom::Snapshot => "with a new snapshot",
                    _ => "from the first retained event",
                };
                eprintln!(
                    "sequence {expired} has expired from the stream (it now begins at \
                     {first_sequence}); starting again {how}"
                );
            }
        }
    }
}

/// Says once when a replay has reached the stream's end as of the open.
fn caught_up(progress: &mut Option<Progress>, sequence: u64) {
    if progress
        .as_ref()
        .is_some_and(|p| p.until > 0 && sequence >= p.until)
    {
        if let Some(mut p) = progress.take() {
            p.done();
        }
        eprintln!("caught up at sequence {sequence}; watching live changes");
    }
}

/// `jetwatch get`: a snapshot of the matching resources, printed, then exit.
pub(super) async fn get(args: GetArgs) -> anyhow::Result<()> {
    let mut options = args.select.options(args.subjects.clone());
    let one = match (&args.source, &args.subject) {
        (Some(source), Some(subject)) => {
            options.exact.insert("source".into(), source.clone());
            options.exact.insert("subject".into(), subject.clone());
            Some(format!("source `{source}`, subject `{subject}`"))
        }
        _ => None,
    };
    options.from = StartFrom::Snapshot;
    let mut watcher = Watcher::watch(args.client.connection()?, &options);
    let format = args.select.output;
    let bar = output::progress_bar(None, "snapshot");
    let mut found = 0u64;
    let mut opened = false;
    loop {
        match watcher.next().await? {
            WatchItem::Delivery {
                sequence,
                subject,
                stored_at,
                event,
                ..
            } => {
                if found == 0 && !args.select.no_headers {
                    output::print_under(&bar, || output::print_delivery_header(format))?;
                }
                found += 1;
                output::print_under(&bar, || {
                    output::print_delivery(format, sequence, &subject, stored_at, &event)
                })?;
                bar.inc(1);
            }
            WatchItem::SnapshotEnd { .. } => break,
            WatchItem::Disconnected { error, .. } if !opened => {
                bar.finish_and_clear();
                return Err(Unavailable(error).into());
            }
            WatchItem::Disconnected { error, .. } => {
                // A snapshot cannot resume half-way: what was printed would be printed again.
                bar.finish_and_clear();
                return Err(Unavailable(format!(
                    "the snapshot was interrupted after {found} resource(s): {error}; run it again"
                ))
                .into());
            }
            WatchItem::Opened { .. } => opened = true,
            WatchItem::Bookmark { .. } | WatchItem::Restarted { .. } => {}
        }
    }
    bar.finish_and_clear();
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
        let recorded = jetwatch_client::admin::durables(&conn, &args.select.stream)
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
