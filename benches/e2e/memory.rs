//! The `memory` scenario.

use super::*;

/// `memory`: the gateway's resident memory per idle Watch, and its growth while small events
/// flow past a stalled subscriber (and, for reference, with no stalled subscriber).
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    Ok(vec![
        idle_subscriptions(o).await?,
        event_flow(o, true).await?,
        event_flow(o, false).await?,
    ])
}

/// Opens many idle Watch streams over 50 channels and divides the RSS growth by their number.
async fn idle_subscriptions(o: &Options) -> Result<Row> {
    const CHANNELS: usize = 50;
    let count = o.scaled(10_000, CHANNELS);
    let env = Env::start().await?;
    let channels = connections(CHANNELS, || env.gateway.channel()).await?;
    // One subscription first, so the stream's shared reader exists before the baseline.
    let first = open_watch(&channels[0], Position::New(()), 0).await?;
    let before = env.gateway.settled_rss_kib().await?;
    let per_channel = count.div_ceil(CHANNELS);
    let opened = within(
        "opening idle subscriptions",
        futures::future::try_join_all(channels.iter().enumerate().map(|(c, channel)| {
            let share = per_channel.min(count.saturating_sub(c * per_channel));
            async move {
                let mut streams = Vec::with_capacity(share);
                for _ in 0..share {
                    streams.push(open_watch(channel, Position::New(()), 0).await?);
                }
                anyhow::Ok(streams)
            }
        })),
    )
    .await?;
    let total: usize = opened.iter().map(Vec::len).sum();
    ensure!(total == count, "opened {total} of {count} subscriptions");
    let after = env.gateway.settled_rss_kib().await?;
    let per = after.saturating_sub(before) as f64 / count as f64;
    println!(
        "{count} idle Watch streams over {CHANNELS} channels: RSS {before} → {after} KiB, \
         {per:.1} KiB each"
    );
    drop((first, opened));
    Ok(Row::new("memory per idle sub", Figure::KiB(per)).goal(Goal::AtMost(Figure::KiB(16.0))))
}

/// Small events flow to one live reader, past a subscriber that never reads when `stall` is
/// set; reports the gateway's peak RSS growth over the run.
async fn event_flow(o: &Options, stall: bool) -> Result<Row> {
    let n = o.scaled(1_000_000, 10_000);
    let env = Env::start().await?;
    let channel = env.gateway.channel().await?;
    let stalled = if stall {
        Some(open_watch(&channel, Position::New(()), 0).await?)
    } else {
        None
    };
    let mut live = open_watch(&channel, Position::New(()), WATCH_WINDOW).await?;
    let reader = tokio::spawn(async move {
        drain_watch(&mut live, Until::Deliveries(n as u64), |_| {}).await?;
        anyhow::Ok(Instant::now())
    });
    let before = env.gateway.settled_rss_kib().await?;
    let peak = Arc::new(AtomicU64::new(before));
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_rss(env.gateway.pid(), peak.clone(), stop.clone()));
    let data = payload(SMALL_EVENT_BYTES);
    let started = Instant::now();
    let publisher = RawPublisher::new(&env.js, GATEWAY_STREAM)?;
    within(
        "the small-event flow",
        publisher.publish(n, None, |i| BenchEvent::new("flow", i, 1_000, &data)),
    )
    .await?;
    let done = within("the live reader", async { reader.await? }).await?;
    stop.cancel();
    sampler.await?;
    let after = env.gateway.rss_kib()?;
    let peak = peak.load(Ordering::Relaxed).max(after);
    let history = env.gateway.metric("jetwatch_history_bytes").await?;
    let growth = peak.saturating_sub(before) as f64 / 1024.0;
    println!(
        "{n} events of {SMALL_EVENT_BYTES} B, {}: live reader at {} ev/s; RSS {before} KiB → \
         peak {peak} KiB (end {after} KiB), growth {growth:.1} MiB; the history ring accounts \
         {:.1} MiB",
        if stall {
            "one stalled Watch"
        } else {
            "no stalled Watch"
        },
        thousands(rate(n, done - started)),
        history / 1_048_576.0
    );
    if let Some(mut stalled) = stalled {
        // The stalled subscriber lags; it must still be open and start at the beginning.
        let first = within("the stalled Watch", async {
            drain_watch(&mut stalled, Until::Deliveries(1), |_| {}).await
        })
        .await?;
        ensure!(first == 1, "the stalled Watch delivered nothing");
    }
    let name = if stall {
        "memory growth, stalled sub"
    } else {
        "memory growth, no stall (ref)"
    };
    let goal = if stall {
        Goal::AtMost(Figure::MiB(64.0))
    } else {
        Goal::None
    };
    Ok(Row::new(name, Figure::MiB(growth)).goal(goal))
}
