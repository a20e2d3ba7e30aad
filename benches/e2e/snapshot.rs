//! The `snapshot` scenario.

use super::*;

/// `snapshot`: events/s of a Watch with a snapshot start over many distinct resources, until
/// `SnapshotEnd`, next to a raw last-per-subject consumer. Each is measured twice, in the order
/// raw, gateway, gateway, raw, and the better of each pair kept: whichever reads first warms
/// the server's caches of the stream's blocks for the other. Also the CPU time each reader
/// spends per event, steadier than throughput on a shared machine: the gateway process's for a
/// Watch (read, decode, encode, send), the bench process's own for the raw read (read, parse).
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
    let gateway_pid = env.gateway.child.id();
    let raw_1 = raw_snapshot(&env, resources).await?;
    let gateway_1 = gateway_snapshot(&channel, gateway_pid, resources).await?;
    let gateway_2 = gateway_snapshot(&channel, gateway_pid, resources).await?;
    let raw_2 = raw_snapshot(&env, resources).await?;
    // And at least 150,000 ev/s, which this ratio on a 2-core machine does not show.
    Ok(Read::compared(
        &format!("snapshot ({resources} resources)"),
        Goal::RatioAtLeast(1.0),
        (
            "gateway Watch (start snapshot) until SnapshotEnd",
            [gateway_1, gateway_2],
        ),
        ("raw last-per-subject pull consumer", [raw_1, raw_2]),
    ))
}

/// One gateway snapshot: Watch from `snapshot` until `SnapshotEnd`; events/s.
async fn gateway_snapshot(channel: &Channel, pid: u32, resources: usize) -> Result<Read> {
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut watch = open_watch(channel, Position::Snapshot(()), WATCH_WINDOW).await?;
    let delivered = within(
        "the gateway snapshot",
        drain_watch(&mut watch, Until::SnapshotEnd, |_| {}),
    )
    .await?;
    let read = Read::measured(resources, started, cpu_seconds(pid)? - cpu_before);
    drop(watch);
    ensure!(
        delivered == resources as u64,
        "the snapshot delivered {delivered} events for {resources} resources"
    );
    Ok(read)
}

/// One raw last-per-subject read of every resource; events/s.
async fn raw_snapshot(env: &Env, resources: usize) -> Result<Read> {
    let cpu_before = cpu_seconds(std::process::id())?;
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
    let read = Read::measured(
        resources,
        started,
        cpu_seconds(std::process::id())? - cpu_before,
    );
    reader.close().await?;
    Ok(read)
}
