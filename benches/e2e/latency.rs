//! The `latency` scenario.

use super::*;

/// `latency`: publish → delivery latency at a fixed publish rate with 100 live subscribers,
/// through the gateway and with 100 raw consumers. Events carry their publish time.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    /// Events each subscriber ignores first, while connections and buffers warm up.
    const WARMUP: u64 = 100;
    let period = Duration::from_millis(1);
    let subscribers = o.scaled(100, 1);
    let n = o.scaled(5_000, 500);
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);
    println!(
        "{subscribers} subscribers, {n} events at {:.0} ev/s",
        1.0 / period.as_secs_f64()
    );

    let tasks = open_watches(&env.gateway, subscribers, 0)
        .await?
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut h = latency_histogram();
                let mut seen = 0u64;
                drain_watch(&mut w, Until::Deliveries(n as u64), |d| {
                    seen += 1;
                    if seen > WARMUP {
                        record_latency(&mut h, d.event.as_ref().and_then(sent_of_pb));
                    }
                })
                .await?;
                Ok(h)
            })
        })
        .collect();
    let publisher = RawPublisher::new(&env.js, GATEWAY_STREAM)?;
    let (gateway, gateway_tail) = collect_histograms(
        tasks,
        publisher.publish(n, Some(period), |i| {
            BenchEvent::new("lat-gw", i, 1_000, &data).stamped()
        }),
    )
    .await
    .context("gateway latency run")?;

    let tasks = open_raw_readers(&env, subscribers)
        .await?
        .into_iter()
        .map(|mut r| {
            tokio::spawn(async move {
                let mut h = latency_histogram();
                let mut seen = 0u64;
                r.drain(n as u64, |m| {
                    seen += 1;
                    if seen > WARMUP {
                        record_latency(&mut h, sent_of_headers(m.headers.as_ref()));
                    }
                })
                .await?;
                r.close().await?;
                Ok(h)
            })
        })
        .collect();
    let publisher = RawPublisher::new(&env.js, RAW_STREAM)?;
    let (raw, raw_tail) = collect_histograms(
        tasks,
        publisher.publish(n, Some(period), |i| {
            BenchEvent::new("lat-raw", i, 1_000, &data).stamped()
        }),
    )
    .await
    .context("raw latency run")?;

    let mut rows = Vec::new();
    for (name, quantile, goal) in [
        ("p50", 0.5, Goal::AtMost(Figure::Millis(1.0))),
        ("p99", 0.99, Goal::AtMost(Figure::Millis(2.0))),
        ("max", 1.0, Goal::None),
    ] {
        let at = |h: &Histogram<u64>| Figure::Millis(h.value_at_quantile(quantile) as f64 / 1e3);
        let (g, r) = (at(&gateway), at(&raw));
        println!("{name}: gateway {g}, raw {r}");
        rows.push(
            Row::new(format!("latency {name} ({subscribers} subs)"), g)
                .raw(r)
                .goal(goal),
        );
    }
    println!(
        "samples: gateway {}, raw {}; deliveries ended {:.0} ms (gateway) and {:.0} ms (raw) \
         after the last publish",
        gateway.len(),
        raw.len(),
        gateway_tail.as_secs_f64() * 1e3,
        raw_tail.as_secs_f64() * 1e3
    );
    Ok(rows)
}
