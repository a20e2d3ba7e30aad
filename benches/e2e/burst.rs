//! The `burst` scenario.

use super::*;

/// `burst`: a burst of events larger than the shared history, published straight to JetStream
/// while N watchers (opened at `new`, default window, over one HTTP/2 connection per 100) read
/// it, next to N raw live consumers on the same server. Each watcher checks that sequences
/// arrive contiguously and counts the ones it missed. Run with `fanout.history_bytes` of 1 MiB,
/// 32 MiB (the default) and 512 MiB; everything else is the default configuration.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    const MIB: usize = 1024 * 1024;
    let mut rows = Vec::new();
    for (subscribers, events) in [(256, 100_000), (1_000, 20_000)] {
        let n = o.scaled(subscribers, 1);
        let m = o.scaled(events, 100);
        let data = payload(EVENT_BYTES);

        let env = Env::start().await?;
        let (raw, raw_consumers) =
            raw_fan_out(&env, n, m, &format!("burst-raw-{n}"), &data).await?;
        drop(env);
        println!(
            "N={n:<5} M={m:<6} raw        {:>11} deliveries/s, {raw_consumers} consumers",
            thousands(raw)
        );

        for history in [MIB, 32 * MIB, 512 * MIB] {
            let env = Env::start_with(&format!("history_bytes = {history}\n")).await?;
            let before = env.gateway.settled_rss_kib().await?;
            let peak = Arc::new(AtomicU64::new(before));
            let stop = CancellationToken::new();
            let sampler = tokio::spawn(sample_rss(env.gateway.pid(), peak.clone(), stop.clone()));
            let gaps = Arc::new(AtomicU64::new(0));
            let tasks = open_watches(&env.gateway, n, 0)
                .await?
                .into_iter()
                .map(|mut w| {
                    let gaps = gaps.clone();
                    tokio::spawn(async move {
                        let mut expected = 1u64;
                        let mut disorder = 0u64;
                        drain_watch(&mut w, Until::Deliveries(m as u64), |d| {
                            if d.sequence > expected {
                                gaps.fetch_add(d.sequence - expected, Ordering::Relaxed);
                            } else if d.sequence < expected {
                                disorder += 1;
                            }
                            expected = d.sequence + 1;
                        })
                        .await?;
                        ensure!(disorder == 0, "{disorder} deliveries out of order");
                        Ok(Instant::now())
                    })
                })
                .collect();
            let label = format!("burst-{n}-{history}");
            let publisher = RawPublisher::new(&env.js, GATEWAY_STREAM)?;
            let result = deliver_to_all(
                &env.js,
                GATEWAY_STREAM,
                tasks,
                publisher.publish(m, None, |i| BenchEvent::new(&label, i, 1_000, &data)),
            )
            .await;
            stop.cancel();
            sampler.await?;
            let (time, consumers) = result
                .with_context(|| format!("gateway burst to {n} with history_bytes = {history}"))?;
            let gateway = rate(n * m, time);
            let gaps = gaps.load(Ordering::Relaxed);
            let peak = peak.load(Ordering::Relaxed);
            let reads = env.gateway.metric("jetwatch_history_reads_total").await?;
            let interrupted = env
                .gateway
                .metric("jetwatch_reads_interrupted_total")
                .await?;
            println!(
                "N={n:<5} M={m:<6} history {:>3} MiB: gateway {:>11} deliveries/s (ratio {:.2}), \
                 gaps {gaps}, peak {consumers} JetStream consumers, RSS {before} KiB → peak \
                 {peak} KiB, {reads} history reads, {interrupted} interrupted reads",
                history / MIB,
                thousands(gateway),
                gateway / raw
            );
            let name = format!("burst N={n} M={m} history {} MiB", history / MIB);
            let default = history == 32 * MIB;
            rows.push(
                Row::new(name.clone(), Figure::Rate(gateway))
                    .raw(Figure::Rate(raw))
                    .goal(if default && subscribers == 256 {
                        Goal::RatioAtLeast(2.0)
                    } else {
                        Goal::None
                    }),
            );
            rows.push(
                Row::new(format!("{name} gaps"), Figure::Count(gaps as f64))
                    .goal(Goal::AtMost(Figure::Count(0.0))),
            );
            rows.push(
                Row::new(
                    format!("{name} JS consumers"),
                    Figure::Count(consumers as f64),
                )
                .raw(Figure::Count(raw_consumers as f64))
                // One shared reader plus the default `fanout.catchup_consumers` (4).
                .goal(Goal::AtMost(Figure::Count(5.0))),
            );
            rows.push(Row::new(
                format!("{name} peak RSS"),
                Figure::MiB(peak as f64 / 1024.0),
            ));
        }
    }
    Ok(rows)
}
