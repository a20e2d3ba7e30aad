//! The `fanout` scenario.

use super::*;

/// `fanout`: aggregate deliveries/s to N live Watch subscribers of one stream next to N raw
/// consumers, and the JetStream consumers each run needs.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    // (subscribers, events): fewer events for more subscribers keeps every run short.
    let runs = [(1, 20_000), (16, 20_000), (256, 4_000), (1_000, 2_000)];
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);
    let mut rows = Vec::new();
    for (subscribers, events) in runs {
        let n = o.scaled(subscribers, 1);
        let m = o.scaled(events, 100);
        let label = format!("fan-{subscribers}");

        let (gateway, gateway_consumers) = gateway_fan_out(&env, n, m, &label, &data)
            .await
            .with_context(|| format!("gateway fan-out to {n}"))?;

        let (raw, raw_consumers) = raw_fan_out(&env, n, m, &label, &data).await?;

        println!(
            "N={n:<5} M={m:<6} gateway {:>11} ev/s ({gateway_consumers} JetStream consumers)   \
             raw {:>11} ev/s ({raw_consumers} consumers)   ratio {:.2}",
            thousands(gateway),
            thousands(raw),
            gateway / raw
        );
        let goal = if subscribers == 256 {
            Goal::RatioAtLeast(2.0)
        } else {
            Goal::None
        };
        rows.push(
            Row::new(format!("fanout N={n} M={m}"), Figure::Rate(gateway))
                .raw(Figure::Rate(raw))
                .goal(goal),
        );
        rows.push(
            Row::new(
                format!("fanout N={n} JS consumers"),
                Figure::Count(gateway_consumers as f64),
            )
            .raw(Figure::Count(raw_consumers as f64))
            // The shared reader, plus the default `fanout.catchup_consumers` (4) should
            // subscribers fall behind.
            .goal(Goal::AtMost(Figure::Count(5.0))),
        );
    }
    Ok(rows)
}
