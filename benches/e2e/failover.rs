//! The `failover` scenario.

use super::*;
use jetwatch::devnats::NatsCluster;

/// The stream declaration of a cluster run: the gateway's stream with three replicas.
const R3_STREAM: &str =
    "\n[[streams]]\nname = \"events\"\nsubjects = [\"events.>\"]\nreplicas = 3\n";

/// `failover`: a 3-node NATS cluster with an R3 stream; the stream leader is killed (SIGKILL)
/// while events are published at a steady rate and a live watcher reads them. Reports how long
/// publishing was unavailable (the longest time between two acknowledged publishes, each
/// retried until acknowledged), how long deliveries stalled (the longest time between two
/// deliveries), and how long the killed node took to rejoin as a current replica.
pub(super) async fn run(_o: &Options) -> Result<Vec<Row>> {
    const RATE: u64 = 500;
    let dir = tempfile::tempdir()?;
    let mut cluster =
        tokio::task::block_in_place(|| NatsCluster::start(&dir.path().join("nats"), 3, ""))
            .context("cannot start a nats-server cluster")?;
    let servers: Vec<async_nats::ServerAddr> = cluster
        .urls()
        .split(',')
        .map(|u| u.parse())
        .collect::<Result<_, _>>()?;
    let js = jetstream::new(async_nats::connect(servers).await?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while js.query_account().await.is_err() {
        ensure!(
            Instant::now() < deadline,
            "the JetStream cluster was not ready within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut gateway = Gateway::spawn(&cluster.urls(), dir.path(), R3_STREAM)?;
    gateway.wait_ready().await?;
    let channel = gateway.channel().await?;

    // A live watcher recording when each delivery arrives.
    let mut watch = open_watch(&channel, Position::New(()), WATCH_WINDOW).await?;
    let deliveries = tokio::spawn(async move {
        let mut times = Vec::new();
        let mut last = 0;
        while let Ok(Some(m)) = watch.message().await {
            if let Some(Response::Delivery(d)) = m.response {
                ensure!(
                    d.sequence == last + 1 || last == 0,
                    "a gap after {last}: {}",
                    d.sequence
                );
                last = d.sequence;
                times.push(Instant::now());
            }
        }
        anyhow::Ok(times)
    });

    // A steady publisher, retrying each refused publish with the same id.
    let stop = CancellationToken::new();
    let publisher = {
        let stop = stop.clone();
        let mut client = PublisherClient::new(channel.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let data = payload(EVENT_BYTES);
            let mut acked = Vec::new();
            let mut i = 0usize;
            while !stop.is_cancelled() {
                let due = (started.elapsed().as_secs_f64() * RATE as f64) as usize;
                if i >= due {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let event = BenchEvent::new("failover", i, 100, &data).to_pb();
                loop {
                    let request = api::PublishRequest {
                        event: Some(event.clone()),
                        ..Default::default()
                    };
                    match client.publish(request).await {
                        Ok(_) => break,
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        Err(status) => bail!("a publish failed for good: {status:?}"),
                    }
                }
                acked.push(Instant::now());
                i += 1;
            }
            anyhow::Ok(acked)
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut stream = js.get_stream(GATEWAY_STREAM).await?;
    let leader = stream
        .info()
        .await?
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .context("the stream has no leader")?;
    let victim = cluster.index_of(&leader).context("an unknown leader")?;
    let killed = Instant::now();
    tokio::task::block_in_place(|| cluster.node(victim).kill());
    println!("killed the stream leader {leader}");
    tokio::time::sleep(Duration::from_secs(15)).await;
    stop.cancel();
    let acked = publisher.await??;
    let longest_gap = |times: &[Instant]| {
        times
            .windows(2)
            .filter(|w| w[1] > killed)
            .map(|w| w[1] - w[0].max(killed))
            .max()
            .unwrap_or_default()
    };
    let publish_gap = longest_gap(&acked);
    let published = acked.len() as u64;
    // The watcher has everything once it has as many deliveries as acknowledged publishes.
    let wait = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = gateway.metric("jetwatch_delivered_events_total").await?;
        if delivered >= published as f64 {
            break;
        }
        if Instant::now() >= wait || deliveries.is_finished() {
            let watcher = if deliveries.is_finished() {
                match deliveries.await? {
                    Ok(times) => format!("its stream ended after {} deliveries", times.len()),
                    Err(e) => format!("it failed: {e:#}"),
                }
            } else {
                "it is still open".into()
            };
            bail!(
                "the watcher did not receive every event: {delivered} deliveries of {published}                  acknowledged publishes; {watcher}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(channel);
    drop(gateway);
    let times = deliveries.await??;
    let delivery_gap = longest_gap(&times);

    tokio::task::block_in_place(|| cluster.node(victim).restart())?;
    let restarted = Instant::now();
    let wait = Instant::now() + Duration::from_secs(60);
    loop {
        let info = js.get_stream(GATEWAY_STREAM).await?.info().await?.clone();
        let current = info.cluster.is_some_and(|c| {
            c.replicas.len() == 2 && c.replicas.iter().all(|r| r.current && !r.offline)
        });
        if current && info.state.messages == published {
            break;
        }
        ensure!(Instant::now() < wait, "the node did not rejoin within 60 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rejoin = restarted.elapsed();
    println!(
        "{published} events at {RATE}/s, leader killed: publishing unavailable {:.0} ms, \
         deliveries stalled {:.0} ms, the node rejoined current in {:.0} ms",
        publish_gap.as_secs_f64() * 1e3,
        delivery_gap.as_secs_f64() * 1e3,
        rejoin.as_secs_f64() * 1e3
    );
    Ok(vec![
        Row::new(
            "failover: publish unavailable",
            Figure::Millis(publish_gap.as_secs_f64() * 1e3),
        ),
        Row::new(
            "failover: delivery stall",
            Figure::Millis(delivery_gap.as_secs_f64() * 1e3),
        ),
        Row::new(
            "failover: node rejoined",
            Figure::Millis(rejoin.as_secs_f64() * 1e3),
        ),
    ])
}
