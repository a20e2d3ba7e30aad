//! The `soak` scenario: the same workload as the short soak test, for as long as
//! `JETWATCH_SOAK_SECS` says (default 1,800: half an hour).

use super::*;

#[path = "../../tests/common/soak.rs"]
mod workload;

/// `soak`: publishing, watchers of every kind, durables and snapshots opening and closing at
/// random against the release gateway; prints RSS, descriptors, tasks and JetStream consumers
/// over time, and reports their growth after warm-up (the first fifth of the run).
pub(super) async fn run(_o: &Options) -> Result<Vec<Row>> {
    let secs = std::env::var("JETWATCH_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1_800);
    let env = Env::start().await?;
    let config = workload::SoakConfig {
        duration: Duration::from_secs(secs),
        sample_every: Duration::from_secs((secs / 30).clamp(2, 60)),
        publish_per_sec: 2_000,
        watchers: 200,
        durables: 8,
        resources: 1_000,
        seed: 42,
    };
    println!(
        "soak for {secs} s: {} events/s, {} watchers, {} durables",
        config.publish_per_sec, config.watchers, config.durables
    );
    let samples = workload::run(
        env.gateway.addr,
        env.gateway.metrics,
        &env.nats.url(),
        &config,
        |s| println!("{s}"),
    )
    .await;
    let warm = &samples[samples.len() / 5..samples.len() - 1];
    let (first, last) = (
        warm.first().context("no samples")?,
        warm.last().context("no samples")?,
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let rss_growth = mib(last.rss_bytes) - mib(first.rss_bytes);
    let fds_spread = warm.iter().map(|s| s.fds).max().unwrap_or(0)
        - warm.iter().map(|s| s.fds).min().unwrap_or(0);
    let end = samples.last().context("no samples")?;
    println!(
        "after warm-up: RSS {:.1} → {:.1} MiB, descriptors within {fds_spread}, tasks {} → {}; \
         {} events, {} deliveries, {} watches",
        mib(first.rss_bytes),
        mib(last.rss_bytes),
        first.tasks,
        last.tasks,
        end.published,
        end.delivered,
        end.watches_opened
    );
    Ok(vec![
        Row::new("soak: RSS growth after warm-up", Figure::MiB(rss_growth))
            .goal(Goal::AtMost(Figure::MiB(32.0))),
        Row::new(
            "soak: descriptor spread after warm-up",
            Figure::Count(fds_spread as f64),
        ),
    ])
}
