//! The `snapshot` scenario.

use super::*;

/// `snapshot`: events/s of a Watch with a snapshot start over many distinct resources, until
/// `SnapshotEnd`, next to a raw last-per-subject consumer.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let resources = o.scaled(100_000, 1_000);
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);
    within(
        "publishing resources",
        RawPublisher::new(&env.js, GATEWAY_STREAM)?.publish(resources, None, |i| {
            BenchEvent::new("snap", i, resources, &data)
        }),
    )
    .await?;
    println!("{resources} distinct resources stored");

    let channel = env.gateway.channel().await?;
    let started = Instant::now();
    let mut watch = open_watch(&channel, Position::Snapshot(()), WATCH_WINDOW).await?;
    let delivered = within(
        "the gateway snapshot",
        drain_watch(&mut watch, Until::SnapshotEnd, |_| {}),
    )
    .await?;
    let gateway = rate(resources, started.elapsed());
    drop(watch);
    ensure!(
        delivered == resources as u64,
        "the snapshot delivered {delivered} events for {resources} resources"
    );
    println!(
        "gateway Watch (start snapshot) until SnapshotEnd: {} ev/s",
        thousands(gateway)
    );

    let started = Instant::now();
    let mut reader = RawReader::open(
        &env.js,
        GATEWAY_STREAM,
        consumer::DeliverPolicy::LastPerSubject,
    )
    .await?;
    ensure!(
        reader.pending == resources as u64,
        "the raw last-per-subject reader has {} pending for {resources} resources",
        reader.pending
    );
    within("the raw snapshot", reader.drain(resources as u64, |_| {})).await?;
    let raw = rate(resources, started.elapsed());
    reader.close().await?;
    println!(
        "raw last-per-subject pull consumer: {} ev/s",
        thousands(raw)
    );
    Ok(vec![Row::new(
        format!("snapshot ({resources} resources)"),
        Figure::Rate(gateway),
    )
    .raw(Figure::Rate(raw))
    // And at least 150,000 ev/s, which this ratio on a 2-core machine does not show.
    .goal(Goal::RatioAtLeast(1.0))])
}
