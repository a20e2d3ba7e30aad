//! The `http` scenario.

use super::*;

/// `http`: deliveries per second to 256 Server-Sent Events watchers (HTTP/1.1, one connection
/// each, as browsers hold them) next to 256 gRPC watchers, each run on the same gateway with
/// the same events, and the gateway's CPU per million deliveries for each.
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let env = Env::start().await?;
    let data = payload(EVENT_BYTES);
    let (watchers, m) = (o.scaled(256, 1), o.scaled(4_000, 100));

    let before = cpu_seconds(env.gateway.child.id())?;
    let (grpc, _) = gateway_fan_out(&env, watchers, m, "http-grpc", &data).await?;
    let grpc_cpu = (cpu_seconds(env.gateway.child.id())? - before) / (watchers * m) as f64 * 1e6;

    let before = cpu_seconds(env.gateway.child.id())?;
    let sse = sse_fan_out(&env, watchers, m, "http-sse", &data).await?;
    let sse_cpu = (cpu_seconds(env.gateway.child.id())? - before) / (watchers * m) as f64 * 1e6;
    println!(
        "fan-out to {watchers} watchers, {m} events of {EVENT_BYTES} B: gRPC {} ev/s \
         ({grpc_cpu:.2} CPU s per million), SSE {} ev/s ({sse_cpu:.2} CPU s per million): \
         SSE {:.2}x of gRPC",
        thousands(grpc),
        thousands(sse),
        sse / grpc
    );
    Ok(vec![
        Row::new(
            format!("SSE fanout N={watchers} (raw: gRPC)"),
            Figure::Rate(sse),
        )
        .raw(Figure::Rate(grpc)),
        Row::new(
            format!("SSE CPU s/M deliveries N={watchers} (raw: gRPC)"),
            Figure::Seconds(sse_cpu),
        )
        .raw(Figure::Seconds(grpc_cpu)),
    ])
}

/// Opens `n` SSE watches of new events, publishes `m` events raw, and returns the aggregate
/// delivery rate from the first publish until every watcher has all of them.
async fn sse_fan_out(env: &Env, n: usize, m: usize, label: &str, data: &Bytes) -> Result<f64> {
    let url = format!(
        "http://{}/v1/streams/{GATEWAY_STREAM}/events?from=new",
        env.gateway.addr
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()?;
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let response = client
            .get(&url)
            .header("accept", "text/event-stream")
            .send()
            .await?
            .error_for_status()?;
        let mut body = response.bytes_stream();
        // The `opened` event comes first: the watch is live before publishing starts.
        let mut seen = Vec::new();
        while !contains(&seen, b"event: opened") {
            let chunk = body.next().await.context("the SSE stream ended")??;
            seen.extend_from_slice(&chunk);
        }
        tasks.push(tokio::spawn(async move {
            let (mut deliveries, mut carry) = (0u64, Vec::<u8>::new());
            while deliveries < m as u64 {
                let chunk = body.next().await.context("the SSE stream ended")??;
                carry.extend_from_slice(&chunk);
                // Every delivery is one `id:` line followed by its `data:` line.
                let mut start = 0;
                while let Some(at) = carry[start..].iter().position(|&b| b == b'\n') {
                    if carry[start..].starts_with(b"data: {\"event\"") {
                        deliveries += 1;
                    }
                    start += at + 1;
                }
                carry.drain(..start);
            }
            Ok(Instant::now())
        }));
    }
    let publisher = RawPublisher::new(&env.js, GATEWAY_STREAM)?;
    let (elapsed, _) = deliver_to_all(
        &env.js,
        GATEWAY_STREAM,
        tasks,
        publisher.publish(m, None, |i| BenchEvent::new(label, i, 1_000, data)),
    )
    .await?;
    Ok(rate(n * m, elapsed))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
