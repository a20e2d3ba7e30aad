//! The `fanout` scenario.

use super::*;

/// `fanout`: aggregate deliveries/s to N live Watch subscribers of one stream next to N raw
/// consumers, the CPU time per million deliveries of the gateway and of the clients, and the
/// JetStream consumers each run needs; at 512 B events for 1 to 4,000 subscribers, and at 64 B and 4 KiB for 256.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    // (subscribers, events, event bytes, compare with raw): fewer events for more subscribers
    // keeps every run short. 4,000 raw consumers on one server and a 2-core machine measure
    // the machine, not JetStream, so that run is the gateway's alone; so is the 4 KiB one:
    // 256 raw consumers of 4 KiB events never finished on a 2-core machine (the bench client
    // fell behind and the server cut it off as a slow consumer, losing messages).
    let runs = [
        (1, 20_000, EVENT_BYTES, true),
        (16, 20_000, EVENT_BYTES, true),
        (256, 4_000, EVENT_BYTES, true),
        (1_000, 2_000, EVENT_BYTES, true),
        (4_000, 500, EVENT_BYTES, false),
        (256, 4_000, SMALL_EVENT_BYTES, true),
        (256, 1_000, LARGE_EVENT_BYTES, false),
    ];
    let env = Env::start().await?;
    let mut rows = Vec::new();
    for (subscribers, events, size, compare) in runs {
        let n = o.scaled(subscribers, 1);
        let m = o.scaled(events, 100);
        let data = payload(size);
        let label = format!("fan-{subscribers}-{size}");

        // CPU seconds per million deliveries of the whole run (opening the watches,
        // publishing and delivering): the gateway's, and this process's (the clients and the
        // publisher), which shares the machine with it.
        let per_million = |seconds: f64| seconds / (n * m) as f64 * 1e6;
        let cpu_before = cpu_seconds(env.gateway.child.id())?;
        let client_before = cpu_seconds(std::process::id())?;
        let (gateway, gateway_consumers) = gateway_fan_out(&env, n, m, &label, &data)
            .await
            .with_context(|| format!("gateway fan-out to {n}"))?;
        let cpu_per_million = per_million(cpu_seconds(env.gateway.child.id())? - cpu_before);
        let client = per_million(cpu_seconds(std::process::id())? - client_before);

        let (raw, raw_client) = if compare {
            let before = cpu_seconds(std::process::id())?;
            let raw = raw_fan_out(&env, n, m, &label, &data).await?;
            let client = per_million(cpu_seconds(std::process::id())? - before);
            (Some(raw), Some(client))
        } else {
            (None, None)
        };
        println!(
            "N={n:<5} M={m:<6} {size:>5} B  gateway {:>11} ev/s ({gateway_consumers} JetStream \
             consumers, {cpu_per_million:.2} CPU s per million deliveries, clients \
             {client:.2})   raw {}",
            thousands(gateway),
            match (raw, raw_client) {
                (Some((r, c)), Some(rc)) => format!(
                    "{:>11} ev/s ({c} consumers, clients {rc:.2} CPU s per million)   ratio {:.2}",
                    thousands(r),
                    gateway / r
                ),
                _ => "not run".into(),
            }
        );
        let goal = match (subscribers, size) {
            (256, EVENT_BYTES) => Goal::RatioAtLeast(4.0),
            (1_000, EVENT_BYTES) => Goal::RatioAtLeast(5.0),
            _ => Goal::None,
        };
        let name = if size == EVENT_BYTES {
            format!("fanout N={n} M={m}")
        } else {
            format!("fanout N={n} M={m} {size} B")
        };
        let mut row = Row::new(name.clone(), Figure::Rate(gateway)).goal(goal);
        if let Some((r, _)) = raw {
            row = row.raw(Figure::Rate(r));
        }
        rows.push(row);
        rows.push(Row::new(
            format!("{name} gateway CPU s per 1M deliveries"),
            Figure::Seconds(cpu_per_million),
        ));
        // On a small machine the clients can be the bottleneck of both runs: their CPU time
        // says so (gRPC and protobuf for the gateway's, NATS parsing for the raw ones).
        let mut client_row = Row::new(
            format!("{name} client CPU s per 1M deliveries"),
            Figure::Seconds(client),
        );
        if let Some(c) = raw_client {
            client_row = client_row.raw(Figure::Seconds(c));
        }
        rows.push(client_row);
        let mut consumers = Row::new(
            format!("{name} JS consumers"),
            Figure::Count(gateway_consumers as f64),
        )
        // The shared reader, plus the default `fanout.catchup_consumers` (4) should
        // subscribers fall behind.
        .goal(Goal::AtMost(Figure::Count(5.0)));
        if let Some((_, c)) = raw {
            consumers = consumers.raw(Figure::Count(c as f64));
        }
        rows.push(consumers);
    }
    Ok(rows)
}
