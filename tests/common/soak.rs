//! The soak workload, shared by the short `soak` test and the long `soak` benchmark scenario:
//! publishing at a steady rate while watchers (every start position, filters, snapshots) and
//! EXPLICIT durables open, read a while and close at random, durables are deleted at random,
//! and the gateway's RSS, descriptors, tasks and JetStream consumers are sampled over time.
//! Every watcher without a filter checks that what it reads is contiguous.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use tonic::transport::Channel;

use api::admin_client::AdminClient;
use api::publisher_client::PublisherClient;
use api::subscriber_client::SubscriberClient;

/// How hard and how long to soak.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the load runs.
    pub duration: Duration,
    /// How often the gateway is sampled.
    pub sample_every: Duration,
    /// Events published per second.
    pub publish_per_sec: u64,
    /// Watchers open at any moment (each closes and is replaced by another at random).
    pub watchers: usize,
    /// Durable clients at any moment.
    pub durables: usize,
    /// Resources (subjects) the events are about.
    pub resources: usize,
    /// The random seed (the run is random but repeatable in what it chooses).
    pub seed: u64,
}

/// One sample of the gateway.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub elapsed: Duration,
    pub rss_bytes: u64,
    pub fds: u64,
    pub tasks: u64,
    /// JetStream consumers on the stream.
    pub consumers: usize,
    pub published: u64,
    pub delivered: u64,
    pub watches_opened: u64,
}

impl std::fmt::Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6.0}s  rss {:>7.1} MiB  fds {:>4}  tasks {:>5}  consumers {:>3}  published {:>9}  \
             delivered {:>10}  watches {:>7}",
            self.elapsed.as_secs_f64(),
            self.rss_bytes as f64 / (1024.0 * 1024.0),
            self.fds,
            self.tasks,
            self.consumers,
            self.published,
            self.delivered,
            self.watches_opened
        )
    }
}

#[derive(Default)]
struct Counts {
    published: AtomicU64,
    delivered: AtomicU64,
    watches: AtomicU64,
}

/// Runs the soak against the gateway at `grpc` (metrics at `metrics`) on the `events` stream
/// of NATS `nats_url` (comma-separated URLs allowed), calling `on_sample` with each sample as
/// it is taken. Panics on any gap, unexpected error or failed publish.
pub async fn run(
    grpc: SocketAddr,
    metrics: SocketAddr,
    nats_url: &str,
    config: &SoakConfig,
    mut on_sample: impl FnMut(&Sample),
) -> Vec<Sample> {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .expect("gateway reachable");
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(publisher(
        PublisherClient::new(channel.clone()),
        config.clone(),
        stop.clone(),
        counts.clone(),
    )));
    for w in 0..config.watchers {
        tasks.push(tokio::spawn(watcher(
            SubscriberClient::new(channel.clone()),
            config.clone(),
            config.seed.wrapping_add(w as u64 + 1),
            stop.clone(),
            counts.clone(),
        )));
    }
    for d in 0..config.durables {
        tasks.push(tokio::spawn(durable(
            channel.clone(),
            format!("soak-{d}"),
            config.seed.wrapping_add(1_000 + d as u64),
            stop.clone(),
            counts.clone(),
        )));
    }

    let servers: Vec<async_nats::ServerAddr> = nats_url
        .split(',')
        .map(|u| u.parse().expect("a NATS URL"))
        .collect();
    let nats = async_nats::connect(servers).await.expect("NATS reachable");
    let js = async_nats::jetstream::new(nats);
    let started = Instant::now();
    let mut samples = Vec::new();
    loop {
        let done = started.elapsed() >= config.duration;
        if done {
            stop.store(true, Ordering::Relaxed);
            for t in tasks.drain(..) {
                t.await.expect("a soak worker failed");
            }
        }
        let page = metrics_page(metrics).await;
        let value = |name: &str| -> u64 {
            page.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or(0, |v| v as u64)
        };
        let mut stream = js.get_stream("events").await.expect("the stream");
        let consumers = stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count;
        let sample = Sample {
            elapsed: started.elapsed(),
            rss_bytes: value("process_resident_memory_bytes"),
            fds: value("process_open_fds"),
            tasks: value("jetwatch_runtime_alive_tasks"),
            consumers,
            published: counts.published.load(Ordering::Relaxed),
            delivered: counts.delivered.load(Ordering::Relaxed),
            watches_opened: counts.watches.load(Ordering::Relaxed),
        };
        on_sample(&sample);
        samples.push(sample);
        if done {
            return samples;
        }
        tokio::time::sleep(config.sample_every).await;
    }
}

fn event(i: u64, resources: usize) -> ce::CloudEvent {
    use ce::cloud_event::cloud_event_attribute_value::Attr;
    let attr = |s: &str| ce::cloud_event::CloudEventAttributeValue {
        attr: Some(Attr::CeString(s.to_owned())),
    };
    ce::CloudEvent {
        id: format!("soak-{i}"),
        source: "/soak".into(),
        spec_version: "1.0".into(),
        r#type: "com.example.soak.modified".into(),
        attributes: [
            (
                "subject".to_owned(),
                attr(&format!("r{}", i % resources as u64)),
            ),
            ("datacontenttype".to_owned(), attr("application/json")),
        ]
        .into_iter()
        .collect(),
        data: Some(ce::cloud_event::Data::TextData(format!("{{\"n\":{i}}}"))),
    }
}

async fn publisher(
    mut client: PublisherClient<Channel>,
    config: SoakConfig,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let started = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // Keep to the rate: publish what is due, then sleep a little.
        let due = (started.elapsed().as_secs_f64() * config.publish_per_sec as f64) as u64;
        while i < due && !stop.load(Ordering::Relaxed) {
            client
                .publish(api::PublishRequest {
                    event: Some(event(i, config.resources)),
                    ..Default::default()
                })
                .await
                .expect("a soak publish");
            i += 1;
            counts.published.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn position(p: api::start_position::Position) -> Option<api::StartPosition> {
    Some(api::StartPosition { position: Some(p) })
}

async fn watcher(
    mut client: SubscriberClient<Channel>,
    config: SoakConfig,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    use api::start_position::Position;
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let published = counts.published.load(Ordering::Relaxed);
        let mut open = api::Open {
            heartbeat: Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000,
            }),
            max_in_flight: [16, 256, 1024][rng.usize(0..3)],
            ..Default::default()
        };
        let mut filtered = false;
        match rng.u8(0..7) {
            0 => open.start = position(Position::New(())),
            1 => open.start = position(Position::Earliest(())),
            2 => {
                let back = rng.u64(0..=5_000);
                open.start = position(Position::Sequence(published.saturating_sub(back).max(1)));
            }
            3 => open.start = position(Position::Snapshot(())),
            4 => {
                open.subjects = vec![format!("events.soak._.r{}", rng.usize(0..config.resources))];
                open.start = position(Position::Earliest(()));
                filtered = true;
            }
            5 => {
                open.filter = Some(api::Filter {
                    filter: Some(api::filter::Filter::Sql(format!(
                        "subject = 'r{}'",
                        rng.usize(0..config.resources)
                    ))),
                });
                open.start = position(Position::Sequence(published.saturating_sub(2_000).max(1)));
                filtered = true;
            }
            _ => {
                open.start = position(Position::Sequence(published.saturating_sub(50).max(1)));
            }
        }
        let snapshot = matches!(
            open.start.as_ref().and_then(|s| s.position.as_ref()),
            Some(Position::Snapshot(()))
        );
        counts.watches.fetch_add(1, Ordering::Relaxed);
        let mut stream = match client.watch(open).await {
            Ok(r) => r.into_inner(),
            Err(status) => panic!("a soak watch was refused: {status:?}"),
        };
        let lifetime = Duration::from_millis(rng.u64(20..3_000));
        let until = tokio::time::Instant::now() + lifetime;
        let mut last: Option<u64> = None;
        let mut in_snapshot = snapshot;
        loop {
            let message = match tokio::time::timeout_at(until, stream.message()).await {
                Err(_) => break,
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => panic!("a soak watch ended by itself"),
                Ok(Err(status)) => panic!("a soak watch failed: {status:?}"),
            };
            use api::subscribe_response::Response;
            match message.response {
                Some(Response::Delivery(d)) => {
                    counts.delivered.fetch_add(1, Ordering::Relaxed);
                    if !filtered && !in_snapshot {
                        if let Some(prev) = last {
                            assert_eq!(d.sequence, prev + 1, "a soak watcher saw a gap");
                        }
                    }
                    if !in_snapshot {
                        last = Some(d.sequence);
                    }
                }
                Some(Response::SnapshotEnd(e)) => {
                    in_snapshot = false;
                    last = Some(e.sequence);
                }
                _ => {}
            }
            if rng.u16(0..2_000) == 0 {
                // Now and then a watcher stops reading for a while, as slow clients do.
                tokio::time::sleep(Duration::from_millis(rng.u64(100..1_000))).await;
            }
        }
        drop(stream);
    }
}

async fn durable(
    channel: Channel,
    name: String,
    seed: u64,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut client = SubscriberClient::new(channel.clone());
    let mut admin = AdminClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tx.send(api::SubscribeRequest {
            request: Some(api::subscribe_request::Request::Open(api::Open {
                durable: name.clone(),
                ack_mode: api::AckMode::Explicit as i32,
                start: position(api::start_position::Position::New(())),
                max_in_flight: 64,
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut stream = client
            .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("a soak durable opens")
            .into_inner();
        let until = tokio::time::Instant::now() + Duration::from_millis(rng.u64(100..4_000));
        loop {
            let message = match tokio::time::timeout_at(until, stream.message()).await {
                Err(_) => break,
                Ok(Ok(Some(m))) => m,
                Ok(Ok(None)) => panic!("a soak durable ended by itself"),
                Ok(Err(status)) => panic!("a soak durable failed: {status:?}"),
            };
            if let Some(api::subscribe_response::Response::Delivery(d)) = message.response {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = tx
                    .send(api::SubscribeRequest {
                        request: Some(api::subscribe_request::Request::Ack(api::Ack {
                            sequences: vec![d.sequence],
                        })),
                    })
                    .await;
            }
        }
        drop(tx);
        drop(stream);
        if rng.u8(0..4) == 0 || stop.load(Ordering::Relaxed) {
            // Deleted now and then (and at the end), so durables come and go too.
            let _ = admin
                .delete_subscription(api::DeleteSubscriptionRequest {
                    stream: "events".into(),
                    durable: name.clone(),
                })
                .await;
        }
    }
}

/// The gateway's `/metrics` page (also `common::metrics_text`: this file stands alone for the
/// benchmark that includes it).
pub async fn metrics_page(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("metrics reachable");
    tcp.write_all(
        format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut page = String::new();
    tcp.read_to_string(&mut page).await.unwrap();
    page
}
