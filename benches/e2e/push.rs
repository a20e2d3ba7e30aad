//! The `push` scenario.

use super::*;

/// What the bench's webhook receiver counted.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    latency: parking_lot::Mutex<Option<Histogram<u64>>>,
}

/// `push`: deliveries per second from a push subscription to a local webhook receiver with 1
/// and 64 deliveries in flight, and the publish → webhook latency at 500 ev/s (the push path's
/// added latency; compare with the `latency` scenario's watchers).
pub(super) async fn run(o: &Options) -> Result<Vec<Row>> {
    let received = Arc::new(Received::default());
    let hook = receiver(received.clone()).await?;
    let env = Env::start_with("\n[push]\nreload_interval = \"100ms\"\n").await?;
    let mut admin = api::admin_client::AdminClient::new(env.gateway.channel().await?);
    let data = payload(EVENT_BYTES);
    let mut rows = Vec::new();
    for (in_flight, events) in [(1u32, o.scaled(2_000, 100)), (64, o.scaled(20_000, 500))] {
        let name = format!("bench-{in_flight}");
        admin
            .create_push_subscription(subscription(&name, hook, in_flight))
            .await?;
        received.count.store(0, Ordering::Relaxed);
        let started = Instant::now();
        let label = name.clone();
        let data = data.clone();
        within(
            "publishing",
            publish_grpc(&env.gateway.channel().await?, events, move |i| {
                BenchEvent::new(&label, i, 1_000, &data)
            }),
        )
        .await?;
        delivered(&received, events).await?;
        let r = rate(events, started.elapsed());
        println!(
            "{in_flight:>2} in flight: {events} events delivered at {} ev/s",
            thousands(r)
        );
        rows.push(Row::new(
            format!("push to a local webhook, {in_flight} in flight"),
            Figure::Rate(r),
        ));
        admin
            .delete_push_subscription(api::PushSubscriptionRequest { name })
            .await?;
    }

    // Latency at a steady 500 ev/s.
    let n = o.scaled(2_000, 200);
    admin
        .create_push_subscription(subscription("bench-latency", hook, 64))
        .await?;
    received.count.store(0, Ordering::Relaxed);
    *received.latency.lock() = Some(latency_histogram());
    let mut publisher = PublisherClient::new(env.gateway.channel().await?);
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    for i in 0..n {
        tick.tick().await;
        let event = BenchEvent::new("push-latency", i, 1_000, &data).stamped();
        publisher
            .publish(api::PublishRequest {
                event: Some(event.to_pb()),
                ..Default::default()
            })
            .await?;
    }
    delivered(&received, n).await?;
    let h = received
        .latency
        .lock()
        .take()
        .context("the latency histogram")?;
    let (p50, p99) = (
        h.value_at_quantile(0.5) as f64 / 1_000.0,
        h.value_at_quantile(0.99) as f64 / 1_000.0,
    );
    println!("publish -> webhook at 500 ev/s: p50 {p50:.2} ms, p99 {p99:.2} ms");
    rows.push(Row::new("push latency p50 (500 ev/s)", Figure::Millis(p50)));
    rows.push(Row::new("push latency p99 (500 ev/s)", Figure::Millis(p99)));
    Ok(rows)
}

/// Waits until the receiver has counted `n` deliveries.
async fn delivered(received: &Received, n: usize) -> Result<()> {
    within("the webhook deliveries", async {
        while received.count.load(Ordering::Relaxed) < n as u64 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    })
    .await
}

fn subscription(name: &str, hook: SocketAddr, in_flight: u32) -> api::PushSubscription {
    api::PushSubscription {
        name: name.into(),
        url: format!("http://{hook}/hook"),
        secrets: vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
        concurrency: in_flight,
        ..Default::default()
    }
}

/// A webhook receiver on loopback that answers 200 at once and counts.
async fn receiver(received: Arc<Received>) -> Result<SocketAddr> {
    use axum::http::HeaderMap as Headers;
    let post = move |headers: Headers| {
        let received = received.clone();
        async move {
            if let Some(h) = received.latency.lock().as_mut() {
                let sent = headers
                    .get(format!("ce-{SENT_ATTRIBUTE}").as_str())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                record_latency(h, sent);
            }
            received.count.fetch_add(1, Ordering::Relaxed);
            "ok"
        }
    };
    let options = || async { ([("webhook-allowed-origin", "*")], "") };
    let app = axum::Router::new().route("/hook", axum::routing::post(post).options(options));
    use axum::serve::ListenerExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // As a real receiver should: without TCP_NODELAY its small answers wait for delayed ACKs
    // (40 ms), which measured the receiver, not the push path.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
