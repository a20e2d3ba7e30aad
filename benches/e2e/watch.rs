//! The `watch` scenario.

use super::*;

/// `watch`: events/s delivered to one Watch starting at the earliest event of a pre-filled
/// stream, next to one raw pull consumer reading the same stream.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let n = o.scaled(100_000, 1_000);
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);
    within(
        "filling the stream",
        RawPublisher::new(&env.js, GATEWAY_STREAM)?
            .publish(n, None, |i| BenchEvent::new("watch", i, 1_000, &data)),
    )
    .await?;
    println!("stream filled with {n} events of {EVENT_BYTES} B");

    let channel = env.gateway.channel().await?;
    let started = Instant::now();
    let mut watch = open_watch(&channel, Position::Earliest(()), WATCH_WINDOW).await?;
    within(
        "the gateway replay",
        drain_watch(&mut watch, Until::Deliveries(n as u64), |_| {}),
    )
    .await?;
    let gateway = rate(n, started.elapsed());
    drop(watch);
    println!(
        "gateway Watch (start earliest, window {WATCH_WINDOW}): {} ev/s",
        thousands(gateway)
    );

    let started = Instant::now();
    let mut reader = RawReader::open(&env.js, GATEWAY_STREAM, consumer::DeliverPolicy::All).await?;
    within(
        "the raw replay",
        reader.drain(n as u64, |m| {
            std::hint::black_box(m.headers.as_ref().and_then(|h| h.get("ce-id")));
        }),
    )
    .await?;
    let raw = rate(n, started.elapsed());
    reader.close().await?;
    println!(
        "raw pull consumer (AckNone, batch {BATCH}): {} ev/s",
        thousands(raw)
    );
    Ok(vec![Row::new(
        "watch replay (1 sub)",
        Figure::Rate(gateway),
    )
    .raw(Figure::Rate(raw))
    .goal(Goal::RatioAtLeast(0.95))])
}
