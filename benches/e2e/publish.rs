//! The `publish` scenario.

use super::*;

/// `publish`: events/s through one `PublishStream` next to raw pipelined JetStream publishes
/// of the same events (same headers, same dedup key) into a stream configured alike. Each is
/// run twice, in the order raw, gateway, gateway, raw, and the better of each pair kept: the
/// first run also warms the server (its store files, its buffers) for the others. Also the CPU
/// time each publisher spends per event: the gateway process's for PublishStream (decode,
/// check, encode, send, acknowledge), the bench process's own for the raw publishes.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let n = o.scaled(50_000, 1_000);
    let env = Env::start().await?;
    let raw_1 = raw_run(&env, n, 1).await?;
    let gateway_1 = gateway_run(&env, n, 1).await?;
    let gateway_2 = gateway_run(&env, n, 2).await?;
    let raw_2 = raw_run(&env, n, 2).await?;
    Ok(Read::compared(
        "publish (1 stream)",
        Goal::RatioAtLeast(0.9),
        (
            &format!("gateway PublishStream, {n} events of {EVENT_BYTES} B"),
            [gateway_1, gateway_2],
        ),
        (
            &format!("raw JetStream publish ({PUBLISH_WINDOW} in flight)"),
            [raw_1, raw_2],
        ),
    ))
}

/// Run `run` (1, 2, …) of `n` publishes through one PublishStream.
async fn gateway_run(env: &Env, n: usize, run: usize) -> Result<Read> {
    let data = payload(EVENT_BYTES);
    let channel = env.gateway.channel().await?;
    let pid = env.gateway.child.id();
    let label = format!("pub-gw-{run}");
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    within(
        "the gateway publish run",
        publish_grpc(&channel, n, move |i| {
            BenchEvent::new(&label, i, 1_000, &data)
        }),
    )
    .await?;
    let read = Read::measured(n, started, cpu_seconds(pid)? - cpu_before);
    ensure_stored(&env.js, GATEWAY_STREAM, n * run).await?;
    Ok(read)
}

/// Run `run` (1, 2, …) of `n` raw JetStream publishes.
async fn raw_run(env: &Env, n: usize, run: usize) -> Result<Read> {
    let data = payload(EVENT_BYTES);
    let publisher = RawPublisher::new(&env.js, RAW_STREAM)?;
    let label = format!("pub-raw-{run}");
    let pid = std::process::id();
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    within(
        "the raw publish run",
        publisher.publish(n, None, |i| BenchEvent::new(&label, i, 1_000, &data)),
    )
    .await?;
    let read = Read::measured(n, started, cpu_seconds(pid)? - cpu_before);
    ensure_stored(&env.js, RAW_STREAM, n * run).await?;
    Ok(read)
}
