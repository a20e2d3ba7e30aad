//! The `publish` scenario.

use super::*;

/// `publish`: events/s through one `PublishStream` next to raw pipelined JetStream publishes
/// of the same events (same headers, same dedup key) into a stream configured alike.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let n = o.scaled(50_000, 1_000);
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);

    let event = {
        let data = data.clone();
        move |i| BenchEvent::new("pub-gw", i, 1_000, &data)
    };
    let channel = env.gateway.channel().await?;
    let started = Instant::now();
    within("the gateway publish run", publish_grpc(&channel, n, event)).await?;
    let elapsed = started.elapsed();
    let gateway = rate(n, elapsed);
    ensure_stored(&env.js, GATEWAY_STREAM, n).await?;
    println!(
        "gateway PublishStream: {n} events of {EVENT_BYTES} B in {:.2} s = {} ev/s",
        elapsed.as_secs_f64(),
        thousands(gateway)
    );

    let publisher = RawPublisher::new(&env.js, RAW_STREAM)?;
    let started = Instant::now();
    within(
        "the raw publish run",
        publisher.publish(n, None, |i| BenchEvent::new("pub-raw", i, 1_000, &data)),
    )
    .await?;
    let elapsed = started.elapsed();
    let raw = rate(n, elapsed);
    ensure_stored(&env.js, RAW_STREAM, n).await?;
    println!(
        "raw JetStream publish ({PUBLISH_WINDOW} in flight): {n} events in {:.2} s = {} ev/s",
        elapsed.as_secs_f64(),
        thousands(raw)
    );
    Ok(vec![Row::new("publish (1 stream)", Figure::Rate(gateway))
        .raw(Figure::Rate(raw))
        .goal(Goal::RatioAtLeast(0.9))])
}
