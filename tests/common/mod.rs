//! The one test helper: a pinned nats-server on a free port with a temporary store, and a
//! gateway on 127.0.0.1:0, both stopped when the [`TestEnv`] is dropped. Every test file uses it.
#![allow(dead_code, unreachable_pub)]

pub mod soak;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use jetwatch::config::Settings;
use jetwatch::devnats::{NatsCluster, NatsServer};
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use api::admin_client::AdminClient;
pub use api::publisher_client::PublisherClient;
pub use api::subscriber_client::SubscriberClient;

/// NATS for a test: one server, or a cluster.
pub enum Nats {
    Single(NatsServer),
    Cluster(NatsCluster),
}

impl Nats {
    /// The URL(s) a client is given (comma-separated for a cluster).
    pub fn url(&self) -> String {
        match self {
            Nats::Single(n) => n.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// The single server; panics for a cluster.
    pub fn single(&mut self) -> &mut NatsServer {
        match self {
            Nats::Single(n) => n,
            Nats::Cluster(_) => panic!("this test runs on a cluster"),
        }
    }

    /// The cluster; panics for a single server.
    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::Single(_) => panic!("this test runs on a single server"),
        }
    }

    pub fn restart(&mut self) -> Result<(), jetwatch::devnats::DevNatsError> {
        self.single().restart()
    }

    pub fn stop(&mut self) {
        self.single().stop()
    }

    pub fn store_dir(&self) -> &std::path::Path {
        match self {
            Nats::Single(n) => n.store_dir(),
            Nats::Cluster(_) => panic!("a cluster has one store per node"),
        }
    }
}

/// A NATS server (or cluster) plus a gateway.
pub struct TestEnv {
    pub nats: Nats,
    pub gateway: Option<jetwatch::server::Gateway>,
    pub shutdown: CancellationToken,
    pub settings: Settings,
    pub addr: SocketAddr,
    /// The network between the gateway and NATS, when the gateway is behind a [`Link`].
    pub link: Option<Link>,
    _dir: tempfile::TempDir,
}

/// A NATS client connected to any of `urls` (comma-separated), reconnecting to the others.
pub async fn nats_connect(urls: &str) -> async_nats::Client {
    let servers: Vec<async_nats::ServerAddr> = urls
        .split(',')
        .map(|u| u.parse().expect("a NATS URL"))
        .collect();
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(servers)
        .await
        .expect("NATS reachable")
}

/// Settings for tests: free ports, short grace, the default `events` stream.
pub fn test_settings() -> Settings {
    let mut s = Settings::defaults();
    s.server.listen = "127.0.0.1:0".parse().unwrap();
    s.server.metrics_listen = "127.0.0.1:0".parse().unwrap();
    s.server.shutdown_grace = Duration::from_secs(5);
    s
}

/// The binary-mode CloudEvents headers of a `com.example.widget.modified` event `id` about
/// `resource`, as a producer publishing straight to NATS sets them.
pub fn widget_headers(id: &str, resource: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("ce-specversion", "1.0");
    h.insert("ce-id", id);
    h.insert("ce-source", "/widgets");
    h.insert("ce-type", "com.example.widget.modified");
    h.insert("ce-subject", resource);
    h
}

/// Starts nats-server, failing (never skipping) with the install command when it is missing.
pub fn start_nats(dir: &std::path::Path) -> NatsServer {
    match NatsServer::start(&dir.join("nats"), 0) {
        Ok(n) => n,
        Err(e) => panic!("cannot start nats-server for tests: {e}"),
    }
}

impl TestEnv {
    /// NATS and a gateway with the test defaults.
    pub async fn start() -> TestEnv {
        TestEnv::with(|_| {}).await
    }

    /// NATS and a gateway whose settings `customize` adjusts.
    pub async fn with(customize: impl FnOnce(&mut Settings)) -> TestEnv {
        TestEnv::with_nats_config("", customize).await
    }

    /// Like [`TestEnv::with`], with a nats-server started with `nats_config` (nats-server
    /// configuration syntax, e.g. `max_pending: 512KB`).
    pub async fn with_nats_config(
        nats_config: &str,
        customize: impl FnOnce(&mut Settings),
    ) -> TestEnv {
        TestEnv::build(nats_config, None, customize).await
    }

    /// Like [`TestEnv::with_nats_config`], with the gateway reaching nats-server through a
    /// [`Link`] that cuts each connection after `cut_every` bytes from the server
    /// (`usize::MAX`: only when the test says so).
    pub async fn behind_cutting_link(
        nats_config: &str,
        cut_every: usize,
        customize: impl FnOnce(&mut Settings),
    ) -> TestEnv {
        TestEnv::build(nats_config, Some(cut_every), customize).await
    }

    /// A 3-node NATS cluster (JetStream, R3 streams: every declared stream gets `replicas =
    /// 3`) and a gateway given every node's URL.
    pub async fn cluster(customize: impl FnOnce(&mut Settings)) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let cluster = match NatsCluster::start(&dir.path().join("nats"), 3, "") {
            Ok(c) => c,
            Err(e) => panic!("cannot start a nats-server cluster for tests: {e}"),
        };
        // JetStream answers only once the cluster has elected its meta leader.
        let client = nats_connect(&cluster.urls()).await;
        let js = async_nats::jetstream::new(client);
        eventually("the JetStream cluster to be ready", || {
            let js = js.clone();
            async move { js.query_account().await.ok() }
        })
        .await;
        TestEnv::build_on(Nats::Cluster(cluster), dir, None, |s| {
            for stream in &mut s.streams {
                stream.replicas = 3;
            }
            customize(s);
        })
        .await
    }

    async fn build(
        nats_config: &str,
        cut_every: Option<usize>,
        customize: impl FnOnce(&mut Settings),
    ) -> TestEnv {
        let dir = tempfile::tempdir().unwrap();
        let nats = match NatsServer::start_with_config(&dir.path().join("nats"), 0, nats_config) {
            Ok(n) => n,
            Err(e) => panic!("cannot start nats-server for tests: {e}"),
        };
        TestEnv::build_on(Nats::Single(nats), dir, cut_every, customize).await
    }

    async fn build_on(
        nats: Nats,
        dir: tempfile::TempDir,
        cut_every: Option<usize>,
        customize: impl FnOnce(&mut Settings),
    ) -> TestEnv {
        if std::env::var_os("RUST_LOG").is_some() {
            jetwatch::telemetry::init_tracing("info");
        }
        let mut settings = test_settings();
        let mut link = None;
        settings.nats.url = match cut_every {
            Some(bytes) => {
                let relay = Link::start(&nats.url(), bytes).await;
                let url = relay.url().to_owned();
                link = Some(relay);
                url
            }
            None => nats.url(),
        };
        customize(&mut settings);
        settings.validate().unwrap();
        let shutdown = CancellationToken::new();
        let gateway = jetwatch::server::start(settings.clone(), shutdown.clone())
            .await
            .expect("gateway starts");
        let addr = gateway.grpc_addr();
        TestEnv {
            nats,
            gateway: Some(gateway),
            shutdown,
            settings,
            addr,
            link,
            _dir: dir,
        }
    }

    /// Stops the gateway (gracefully, as SIGTERM does) and starts a new one on the same
    /// address, as an operator's restart or a rolling update does.
    pub async fn restart_gateway(&mut self) {
        self.shutdown.cancel();
        if let Some(gateway) = self.gateway.take() {
            gateway.stopped(Duration::from_secs(10)).await;
        }
        self.shutdown = CancellationToken::new();
        self.settings.server.listen = self.addr;
        let gateway = jetwatch::server::start(self.settings.clone(), self.shutdown.clone())
            .await
            .expect("the gateway starts again on its address");
        self.gateway = Some(gateway);
    }

    /// Starts a second gateway on the same NATS (same settings, new ports).
    pub async fn second_gateway(&self) -> (jetwatch::server::Gateway, CancellationToken) {
        let token = CancellationToken::new();
        let gw = jetwatch::server::start(self.settings.clone(), token.clone())
            .await
            .unwrap();
        (gw, token)
    }

    pub async fn channel(&self) -> Channel {
        channel(self.addr).await
    }

    pub async fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.channel().await)
    }

    pub async fn subscriber(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.channel().await)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    /// A raw JetStream context on the same server.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = nats_connect(&self.nats.url()).await;
        async_nats::jetstream::new(client)
    }

    /// Publishes `n` widget events (`data_bytes` of data each) straight to JetStream in binary
    /// content mode, pipelined like a fast producer (a burst no gateway publish path slows
    /// down). Returns the last sequence.
    pub async fn publish_raw_burst(&self, n: usize, data_bytes: usize) -> u64 {
        let js = self.jetstream().await;
        let data = bytes::Bytes::from(vec![b'x'; data_bytes]);
        let mut acks = std::collections::VecDeque::new();
        let mut last = 0;
        for i in 0..n {
            let h = widget_headers(&format!("burst-{i}"), &format!("w{}", i % 50));
            let subject = format!("events._widgets.w{}", i % 50);
            acks.push_back(
                js.publish_with_headers(subject, h, data.clone())
                    .await
                    .expect("publish sent"),
            );
            if acks.len() >= 256 {
                last = acks
                    .pop_front()
                    .unwrap()
                    .await
                    .expect("publish acked")
                    .sequence;
            }
        }
        for ack in acks {
            last = ack.await.expect("publish acked").sequence;
        }
        last
    }

    /// Messages stored in `stream`, read straight from JetStream.
    pub async fn stored_count(&self, stream: &str) -> u64 {
        let js = self.jetstream().await;
        let mut s = js.get_stream(stream).await.unwrap();
        s.info().await.unwrap().state.messages
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("gateway reachable")
}

/// A widget event: source `/widgets`, subject `name`, type `com.example.widget.<verb>`.
pub fn widget(id: &str, name: &str, verb: &str) -> ce::CloudEvent {
    let mut attributes = HashMap::new();
    attributes.insert(
        "subject".to_string(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(
                ce::cloud_event::cloud_event_attribute_value::Attr::CeString(name.to_string()),
            ),
        },
    );
    attributes.insert(
        "datacontenttype".to_string(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(
                ce::cloud_event::cloud_event_attribute_value::Attr::CeString(
                    "application/json".to_string(),
                ),
            ),
        },
    );
    ce::CloudEvent {
        id: id.to_string(),
        source: "/widgets".to_string(),
        spec_version: "1.0".to_string(),
        r#type: format!("com.example.widget.{verb}"),
        attributes,
        data: Some(ce::cloud_event::Data::TextData(format!(
            "{{\"name\":\"{name}\"}}"
        ))),
    }
}

/// Publishes one event to the default stream and returns its sequence.
pub async fn publish(client: &mut PublisherClient<Channel>, event: ce::CloudEvent) -> u64 {
    client
        .publish(api::PublishRequest {
            event: Some(event),
            ..Default::default()
        })
        .await
        .expect("publish succeeds")
        .into_inner()
        .sequence
}

pub fn start_at(position: api::start_position::Position) -> Option<api::StartPosition> {
    Some(api::StartPosition {
        position: Some(position),
    })
}

/// Opens a Watch on the default stream.
pub async fn watch(
    client: &mut SubscriberClient<Channel>,
    open: api::Open,
) -> tonic::Streaming<api::SubscribeResponse> {
    client.watch(open).await.expect("watch opens").into_inner()
}

/// The next response, failing the test after 20 s of silence (a hang, not a timing check).
pub async fn next(
    stream: &mut tonic::Streaming<api::SubscribeResponse>,
) -> Result<api::subscribe_response::Response, tonic::Status> {
    match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
        Ok(Some(Ok(r))) => Ok(r.response.expect("a response")),
        Ok(Some(Err(status))) => Err(status),
        Ok(None) => panic!("stream ended"),
        Err(_) => panic!("no response within 20 s"),
    }
}

/// The next delivery, skipping bookmarks.
pub async fn next_delivery(stream: &mut tonic::Streaming<api::SubscribeResponse>) -> api::Delivery {
    loop {
        match next(stream).await.expect("no error") {
            api::subscribe_response::Response::Delivery(d) => return d,
            api::subscribe_response::Response::Bookmark(_) => continue,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// The `google.rpc.ErrorInfo` metadata of a status.
pub fn error_info(status: &tonic::Status) -> (String, HashMap<String, String>) {
    use tonic_types::StatusExt;
    let info = status.get_details_error_info().expect("ErrorInfo details");
    (info.reason, info.metadata)
}

/// A bidirectional subscription: the request sender and the response stream.
pub struct Bidi {
    pub requests: tokio::sync::mpsc::Sender<api::SubscribeRequest>,
    pub responses: tonic::Streaming<api::SubscribeResponse>,
}

impl Bidi {
    pub async fn ack(&self, sequences: Vec<u64>) {
        self.send(api::subscribe_request::Request::Ack(api::Ack { sequences }))
            .await;
    }

    pub async fn send(&self, request: api::subscribe_request::Request) {
        self.requests
            .send(api::SubscribeRequest {
                request: Some(request),
            })
            .await
            .unwrap();
    }
}

/// Opens a `Subscribe` stream with `open`; the first response (`Opened` or an error) is
/// left in the stream.
pub async fn subscribe(client: &mut SubscriberClient<Channel>, open: api::Open) -> Bidi {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tx.send(api::SubscribeRequest {
        request: Some(api::subscribe_request::Request::Open(open)),
    })
    .await
    .unwrap();
    let responses = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("subscribe opens")
        .into_inner();
    Bidi {
        requests: tx,
        responses,
    }
}

/// Waits for `Opened` and returns it.
pub async fn opened(stream: &mut tonic::Streaming<api::SubscribeResponse>) -> api::Opened {
    match next(stream).await.expect("opened") {
        api::subscribe_response::Response::Opened(o) => o,
        other => panic!("expected Opened, got {other:?}"),
    }
}

pub fn millis(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

/// Polls `check` until it returns Some, failing after 30 s (turns a hang into a failure).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An `Open`, built field by field: `open().earliest().window(10).durable("d").build()`.
#[derive(Debug, Clone, Default)]
pub struct OpenBuilder(api::Open);

/// Starts an [`OpenBuilder`] for the default stream (start `new`, server defaults).
pub fn open() -> OpenBuilder {
    OpenBuilder::default()
}

impl OpenBuilder {
    pub fn stream(mut self, stream: &str) -> Self {
        self.0.stream = stream.into();
        self
    }

    pub fn subjects(mut self, subjects: &[&str]) -> Self {
        self.0.subjects = subjects.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn sql(mut self, expression: &str) -> Self {
        self.0.filter = Some(api::Filter {
            filter: Some(api::filter::Filter::Sql(expression.into())),
        });
        self
    }

    pub fn start(mut self, position: api::start_position::Position) -> Self {
        self.0.start = start_at(position);
        self
    }

    pub fn earliest(self) -> Self {
        self.start(api::start_position::Position::Earliest(()))
    }

    pub fn at_sequence(self, sequence: u64) -> Self {
        self.start(api::start_position::Position::Sequence(sequence))
    }

    pub fn snapshot(self) -> Self {
        self.start(api::start_position::Position::Snapshot(()))
    }

    pub fn durable(mut self, name: &str) -> Self {
        self.0.durable = name.into();
        self
    }

    pub fn explicit(mut self) -> Self {
        self.0.ack_mode = api::AckMode::Explicit as i32;
        self
    }

    pub fn window(mut self, max_in_flight: u32) -> Self {
        self.0.max_in_flight = max_in_flight;
        self
    }

    /// Bookmarks every `ms` milliseconds; 0 turns them off.
    pub fn bookmarks_ms(mut self, ms: u64) -> Self {
        self.0.heartbeat = millis(ms);
        self
    }

    pub fn build(self) -> api::Open {
        self.0
    }
}

/// Publishes `n` widget events (ids `<prefix>0`…, resources `w0`…`w9`, type `modified`) to the
/// default stream and returns the last sequence.
pub async fn publish_n(client: &mut PublisherClient<Channel>, prefix: &str, n: usize) -> u64 {
    let mut last = 0;
    for i in 0..n {
        last = publish(
            client,
            widget(&format!("{prefix}{i}"), &format!("w{}", i % 10), "modified"),
        )
        .await;
    }
    last
}

impl TestEnv {
    /// Waits until the durable `name` of the default stream has every delivery up to
    /// `sequence` acknowledged, and returns its JetStream state then.
    pub async fn wait_ack_floor(
        &self,
        name: &str,
        sequence: u64,
    ) -> async_nats::jetstream::consumer::Info {
        let js = self.jetstream().await;
        let stream = js.get_stream("events").await.unwrap();
        eventually(
            &format!("durable `{name}` acknowledged up to {sequence}"),
            || {
                let stream = stream.clone();
                async move {
                    let info = stream.consumer_info(name).await.ok()?;
                    (info.ack_floor.stream_sequence >= sequence).then_some(info)
                }
            },
        )
        .await
    }
}

/// A TCP relay in front of nats-server, standing for the network between it and the gateway.
/// It can cut every connection after `cut_every` bytes from the server, in the middle of
/// whatever it was sending: what a client sees when the server drops it as a slow consumer
/// (or the network fails), with messages lost in flight. A test can also hold what the server
/// sends and cut the connections at a moment of its choosing ([`Link::hold`], [`Link::cut`]).
#[derive(Clone)]
pub struct Link {
    url: String,
    state: std::sync::Arc<LinkState>,
}

struct LinkState {
    /// Connections cut so far.
    cuts: std::sync::atomic::AtomicUsize,
    /// Whether what the server sends is held back (not read from it).
    held: tokio::sync::watch::Sender<bool>,
    /// Bumped to cut every open connection.
    cut_now: tokio::sync::watch::Sender<u64>,
}

impl Link {
    /// A relay to `nats_url`, cutting each connection after `cut_every` bytes from the server
    /// (never, with `usize::MAX`).
    pub async fn start(nats_url: &str, cut_every: usize) -> Link {
        use std::sync::atomic::Ordering;
        let server: SocketAddr = nats_url
            .trim_start_matches("nats://")
            .parse()
            .expect("a nats://host:port URL");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = std::sync::Arc::new(LinkState {
            cuts: Default::default(),
            held: tokio::sync::watch::channel(false).0,
            cut_now: tokio::sync::watch::channel(0).0,
        });
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let Ok(upstream) = tokio::net::TcpStream::connect(server).await else {
                        return;
                    };
                    let mut cut_now = state.cut_now.subscribe();
                    let mut held = state.held.subscribe();
                    let (mut from_client, mut to_client) = tokio::io::split(client);
                    let (mut from_server, mut to_server) = tokio::io::split(upstream);
                    let up = tokio::io::copy(&mut from_client, &mut to_server);
                    let down = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 4096];
                        let mut sent = 0;
                        loop {
                            while *held.borrow_and_update() {
                                if held.changed().await.is_err() {
                                    return;
                                }
                            }
                            let n = tokio::select! {
                                read = from_server.read(&mut buf) => match read {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                },
                                _ = held.changed() => continue,
                            };
                            let n = n.min(cut_every - sent);
                            if to_client.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            sent += n;
                            if sent >= cut_every {
                                state.cuts.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        biased;
                        _ = cut_now.changed() => {
                            state.cuts.fetch_add(1, Ordering::Relaxed);
                        }
                        _ = up => {}
                        () = down => {}
                    }
                });
            }
        });
        Link {
            url: format!("nats://{addr}"),
            state,
        }
    }

    /// The relay's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.state.cuts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops passing on what the server sends (it waits in the network) until the next cut.
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Cuts every open connection, losing whatever was held or on its way, and lets new
    /// connections through again.
    pub fn cut(&self) {
        // Cut first: a connection must not pass on what it held before it is closed.
        self.state.cut_now.send_modify(|n| *n += 1);
        self.state.held.send_replace(false);
    }
}

impl TestEnv {
    /// How many times nats-server has cut a client off as a slow consumer, from its log.
    pub fn slow_consumer_cuts(&self) -> usize {
        std::fs::read_to_string(self.nats.store_dir().join("nats-server.log"))
            .unwrap_or_default()
            .matches("Slow Consumer Detected")
            .count()
    }
}

/// The gateway's `/metrics` page.
pub async fn metrics_text(addr: SocketAddr) -> String {
    soak::metrics_page(addr).await
}

/// The value of the unlabelled metric `name` on the gateway's `/metrics` page.
pub async fn metric(addr: SocketAddr, name: &str) -> u64 {
    metrics_text(addr)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} not on the metrics page"))
        .trim()
        .parse()
        .unwrap()
}

/// Checks what a durable's client received (`seen`, in order, redeliveries included) against a
/// stream of sequences `1..=last`: nothing lost, at most `window` redeliveries.
pub fn assert_durable_lost_nothing(seen: &[u64], last: u64, window: usize) {
    let distinct: std::collections::BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(
        distinct,
        (1..=last).collect::<std::collections::BTreeSet<_>>(),
        "the durable lost nothing"
    );
    let redelivered = seen.len() - distinct.len();
    assert!(
        redelivered <= window,
        "{redelivered} redeliveries, more than the window"
    );
}

/// A `jetwatch serve` process, killed when dropped.
pub struct GatewayProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl GatewayProcess {
    /// Starts `jetwatch serve` on NATS `urls` with `extra` configuration (TOML appended to
    /// the listeners and NATS settings), and waits until it answers.
    pub async fn start(
        urls: &str,
        dir: &std::path::Path,
        name: &str,
        extra: &str,
    ) -> GatewayProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"{addr}\"\nmetrics_listen = \"127.0.0.1:0\"\n\
                 [nats]\nurl = \"{urls}\"\nconnection_name = \"{name}\"\n{extra}"
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_jetwatch"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let gateway = GatewayProcess { child, addr };
        eventually(&format!("gateway {name} to answer"), || async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
                .ok()?
                .connect()
                .await
                .ok()?;
            AdminClient::new(channel)
                .list_streams(api::ListStreamsRequest {})
                .await
                .ok()
        })
        .await;
        gateway
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a streaming response line by line.
pub struct Lines {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: Vec<u8>,
}

impl Lines {
    pub fn of(response: reqwest::Response) -> Lines {
        Lines {
            body: response.bytes_stream().boxed(),
            buffer: Vec::new(),
        }
    }

    /// The next line (without its newline); `None` when the response ended.
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(at) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=at).collect();
                return Some(String::from_utf8_lossy(&line[..at]).into_owned());
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.body.next())
                .await
                .expect("the stream goes on")?;
            self.buffer
                .extend_from_slice(&chunk.expect("the body reads"));
        }
    }

    /// The next NDJSON object.
    pub async fn next_json(&mut self) -> Option<serde_json::Value> {
        let line = self.next().await?;
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
    }

    /// The next Server-Sent Event (comments skipped): its fields by name.
    pub async fn next_event(&mut self) -> Option<HashMap<String, String>> {
        let mut fields = HashMap::new();
        loop {
            let line = self.next().await?;
            if line.is_empty() {
                if fields.is_empty() {
                    continue;
                }
                return Some(fields);
            }
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((&line, ""));
            fields.insert(name.to_owned(), value.trim_start().to_owned());
        }
    }
}
