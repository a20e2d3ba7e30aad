//! The `snapshot` scenario.

use super::*;

/// `snapshot`: events/s of a Watch with a snapshot start over many distinct resources, until
/// `SnapshotEnd`, next to a raw last-per-subject consumer. Each is measured twice, in the order
/// raw, gateway, gateway, raw, and the better of each pair kept: whichever reads first warms
/// the server's caches of the stream's blocks for the other.
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
    let raw_1 = raw_snapshot(&env, resources).await?;
    let gateway_1 = gateway_snapshot(&channel, resources).await?;
    let gateway_2 = gateway_snapshot(&channel, resources).await?;
    let raw_2 = raw_snapshot(&env, resources).await?;
    let (gateway, raw) = (gateway_1.max(gateway_2), raw_1.max(raw_2));
    println!(
        "gateway Watch (start snapshot) until SnapshotEnd: {} and {} ev/s; raw last-per-subject \
         pull consumer: {} and {} ev/s",
        thousands(gateway_1),
        thousands(gateway_2),
        thousands(raw_1),
        thousands(raw_2)
    );
    Ok(vec![Row::new(
        format!("snapshot ({resources} resources)"),
        Figure::Rate(gateway),
    )
    .raw(Figure::Rate(raw))
    // And at least 150,000 ev/s, which this ratio on a 2-core machine does not show.
    .goal(Goal::RatioAtLeast(1.0))])
}

/// One gateway snapshot: Watch from `snapshot` until `SnapshotEnd`; events/s.
async fn gateway_snapshot(channel: &Channel, resources: usize) -> Result<f64> {
    let started = Instant::now();
    let mut watch = open_watch(channel, Position::Snapshot(()), WATCH_WINDOW).await?;
    let delivered = within(
        "the gateway snapshot",
        drain_watch(&mut watch, Until::SnapshotEnd, |_| {}),
    )
    .await?;
    let rate = rate(resources, started.elapsed());
    drop(watch);
    ensure!(
        delivered == resources as u64,
        "the snapshot delivered {delivered} events for {resources} resources"
    );
    Ok(rate)
}

/// One raw last-per-subject read of every resource; events/s.
async fn raw_snapshot(env: &Env, resources: usize) -> Result<f64> {
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
    let rate = rate(resources, started.elapsed());
    reader.close().await?;
    Ok(rate)
}
