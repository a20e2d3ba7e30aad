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
    let gateway_pid = env.gateway.child.id();
    // Raw, gateway, gateway, raw, keeping the better of each: whichever reads first warms the
    // server's caches of the stream's blocks for the other.
    let raw_1 = raw_replay(&env, n).await?;
    let gateway_1 = gateway_replay(&channel, gateway_pid, n).await?;
    let gateway_2 = gateway_replay(&channel, gateway_pid, n).await?;
    let raw_2 = raw_replay(&env, n).await?;
    Ok(Read::compared(
        "watch replay (1 sub)",
        Goal::RatioAtLeast(0.95),
        (
            &format!("gateway Watch (start earliest, window {WATCH_WINDOW})"),
            [gateway_1, gateway_2],
        ),
        (
            &format!("raw pull consumer (AckNone, batch {BATCH})"),
            [raw_1, raw_2],
        ),
    ))
}

/// One gateway replay: a Watch from the earliest event until `n` deliveries.
async fn gateway_replay(channel: &Channel, pid: u32, n: usize) -> Result<Read> {
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    let mut watch = open_watch(channel, Position::Earliest(()), WATCH_WINDOW).await?;
    within(
        "the gateway replay",
        drain_watch(&mut watch, Until::Deliveries(n as u64), |_| {}),
    )
    .await?;
    let read = Read::measured(n, started, cpu_seconds(pid)? - cpu_before);
    drop(watch);
    Ok(read)
}

/// One raw replay: a pull consumer from the first message, reading `n`.
async fn raw_replay(env: &Env, n: usize) -> Result<Read> {
    let cpu_before = cpu_seconds(std::process::id())?;
    let started = Instant::now();
    let mut reader = RawReader::open(&env.js, GATEWAY_STREAM, consumer::DeliverPolicy::All).await?;
    within(
        "the raw replay",
        reader.drain(n as u64, |m| {
            std::hint::black_box(m.headers.as_ref().and_then(|h| h.get("ce-id")));
        }),
    )
    .await?;
    let read = Read::measured(n, started, cpu_seconds(std::process::id())? - cpu_before);
    reader.close().await?;
    Ok(read)
}
