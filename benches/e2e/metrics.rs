//! The `metrics` scenario.

use super::*;

/// `metrics`: what counting costs on the fan-out path. The same fan-out to 256 watchers on a
/// gateway with metrics on (the default) and one with `telemetry.metrics = false`; the rows
/// compare the gateway's CPU time per million deliveries (on in the gateway column, off in the
/// raw column) and the delivery rates.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let mut on = Vec::new();
    let mut off = Vec::new();
    // Alternate, twice each, so a change in the machine's load hits both alike.
    for round in 0..2 {
        on.push(measure(o, Env::start().await?, &format!("on-{round}")).await?);
        let env = Env::start_with("\n[telemetry]\nmetrics = false\n").await?;
        off.push(measure(o, env, &format!("off-{round}")).await?);
    }
    let best = |v: &[(f64, f64)]| {
        (
            v.iter().map(|r| r.0).fold(f64::MAX, f64::min),
            v.iter().map(|r| r.1).fold(0.0, f64::max),
        )
    };
    let ((cpu_on, rate_on), (cpu_off, rate_off)) = (best(&on), best(&off));
    println!(
        "metrics on: {cpu_on:.3} CPU s per 1M deliveries, {} ev/s; off: {cpu_off:.3} s, {} ev/s; \
         cost {:+.1}% CPU",
        thousands(rate_on),
        thousands(rate_off),
        (cpu_on / cpu_off - 1.0) * 100.0
    );
    Ok(vec![
        Row::new(
            "metrics on: CPU s per 1M deliveries N=256 (raw: off)",
            Figure::Seconds(cpu_on),
        )
        .raw(Figure::Seconds(cpu_off)),
        Row::new("metrics on: fanout N=256 (raw: off)", Figure::Rate(rate_on))
            .raw(Figure::Rate(rate_off)),
    ])
}

/// The gateway's CPU seconds per million deliveries and the delivery rate of one fan-out to
/// 256 watchers.
async fn measure(o: &Options, env: Env, label: &str) -> Result<(f64, f64)> {
    let (n, m) = (o.scaled(256, 1), o.scaled(4_000, 100));
    let data = payload(EVENT_BYTES);
    let before = cpu_seconds(env.gateway.child.id())?;
    let (rate, _) = gateway_fan_out(&env, n, m, &format!("metrics-{label}"), &data).await?;
    let cpu = (cpu_seconds(env.gateway.child.id())? - before) / (n * m) as f64 * 1e6;
    println!(
        "{label:<6} {} ev/s, {cpu:.3} CPU s per 1M deliveries",
        thousands(rate)
    );
    Ok((cpu, rate))
}
