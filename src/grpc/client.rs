//! A Rust client for jetwatch: publishing, and a resumable watcher.
//!
//! [`Watcher`] reconnects with exponential backoff after UNAVAILABLE (a lost gateway, a gateway
//! shutting down, a lost NATS) and resumes from the last delivered sequence or bookmark + 1,
//! so its caller sees every matching event once, in order, across any number of disconnects.
//! When the resume point has expired from the stream it follows the subscription's
//! `on_expired` policy (failing with OUT_OF_RANGE by default).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use super::convert::{event_from_pb, event_to_pb, timestamp_from_pb};
use super::pb::jetwatch::v1 as api;
use crate::event::Event;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The gateway address is malformed or cannot be reached.
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The gateway refused the request.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The gateway sent something this client does not understand.
    #[error("unexpected response: {0}")]
    Protocol(String),
}

/// How to reach and authenticate to a gateway.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// `host:port` or a URL (`http://`, `https://`); several comma-separated for a
    /// [`Watcher`], which moves to the next after a failure (others use the first).
    pub addr: String,
    /// A bearer token (static token or JWT) sent with every call.
    pub token: Option<String>,
    /// TLS settings; `None` uses TLS only for `https://` addresses, with the system's roots.
    pub tls: Option<ClientTls>,
}

/// TLS settings of a [`Connection`].
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA bundle that signed the gateway's certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate (mTLS).
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    pub key_file: Option<std::path::PathBuf>,
    /// The name to verify the gateway's certificate against (default: the address's host).
    pub server_name: Option<String>,
}

impl From<String> for Connection {
    fn from(addr: String) -> Connection {
        Connection {
            addr,
            ..Connection::default()
        }
    }
}

impl From<&str> for Connection {
    fn from(addr: &str) -> Connection {
        Connection {
            addr: addr.to_owned(),
            ..Connection::default()
        }
    }
}

impl Connection {
    /// The gateway addresses, in order.
    pub fn addrs(&self) -> Vec<String> {
        self.addr
            .split(',')
            .map(|a| a.trim().to_owned())
            .filter(|a| !a.is_empty())
            .collect()
    }

    /// `message` as a request carrying this connection's token.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token {
            if let Ok(value) = format!("Bearer {token}").parse() {
                request.metadata_mut().insert("authorization", value);
            }
        }
        request
    }
}

/// Connects a channel to the first gateway of `conn`.
pub async fn connect(conn: &Connection) -> Result<Channel, ClientError> {
    let addr = conn.addrs().into_iter().next().unwrap_or_default();
    connect_to(conn, &addr).await
}

/// Connects a channel to `addr` with `conn`'s TLS settings.
async fn connect_to(conn: &Connection, addr: &str) -> Result<Channel, ClientError> {
    let err = |reason: String| ClientError::Connect {
        addr: addr.to_owned(),
        reason,
    };
    let tls = conn.tls.is_some() || addr.starts_with("https://");
    let url = match addr.split_once("://") {
        Some((_, rest)) if tls => format!("https://{rest}"),
        Some(_) => addr.to_owned(),
        None if tls => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let mut endpoint = Endpoint::from_shared(url)
        .map_err(|e| err(e.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Streams cancelled while the gateway sends to them still receive the frames already
        // on their way; the HTTP/2 library remembers only 10 reset streams by default and
        // closes the connection after 1,024 frames for forgotten ones. Remember more.
        .http2_max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED);
    if tls {
        let settings = conn.tls.clone().unwrap_or_default();
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| err(format!("{}: {e}", path.display())))
        };
        let mut config = tonic::transport::ClientTlsConfig::new();
        match &settings.ca_file {
            Some(ca) => {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?))
            }
            None => config = config.with_native_roots(),
        }
        if let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) {
            config = config.identity(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ));
        }
        if let Some(name) = &settings.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| err(e.to_string()))?;
    }
    endpoint.connect().await.map_err(|e| {
        // tonic says only "transport error"; the cause (refused, unreachable, TLS) is below it.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !reason.contains(&text) {
                reason = format!("{reason}: {text}");
            }
            source = cause.source();
        }
        err(format!(
            "{reason}; is the gateway running there (`jetwatch dev` starts one locally)?"
        ))
    })
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Only events published from now on.
    #[default]
    New,
    /// Every retained event.
    Earliest,
    /// The current state of every resource, then changes.
    Snapshot,
    /// This stream sequence, inclusive.
    Sequence(u64),
    /// The first event stored at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

impl std::str::FromStr for StartFrom {
    type Err = String;

    /// `new`, `earliest`, `snapshot`, a sequence, or an RFC 3339 time.
    fn from_str(s: &str) -> Result<StartFrom, String> {
        Ok(match s {
            "new" => StartFrom::New,
            "earliest" => StartFrom::Earliest,
            "snapshot" => StartFrom::Snapshot,
            other => match other.parse::<u64>() {
                Ok(seq) => StartFrom::Sequence(seq),
                Err(_) => StartFrom::Time(
                    chrono::DateTime::parse_from_rfc3339(other)
                        .map_err(|_| {
                            format!(
                                "`{other}` is not new, earliest, snapshot, a sequence or an \
                                 RFC 3339 time"
                            )
                        })?
                        .with_timezone(&chrono::Utc),
                ),
            },
        })
    }
}

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// The stream; empty means the gateway's default stream.
    pub stream: String,
    /// NATS subject patterns; empty means all.
    pub subjects: Vec<String>,
    /// A CESQL filter.
    pub sql: Option<String>,
    /// Attributes that must equal these values (the `exact` filter), with `sql` if both.
    pub exact: std::collections::BTreeMap<String, String>,
    /// Where to start.
    pub from: StartFrom,
    /// A durable name, to keep the position in JetStream.
    pub durable: Option<String>,
    /// Acknowledge each delivery with [`Watcher::ack`] once it has been handled, instead of
    /// the gateway counting it as consumed when it sends it. With a durable, only what was
    /// acknowledged is consumed: deliveries received but not handled (a client that stops
    /// early or is interrupted) come back on the next open.
    pub explicit_acks: bool,
}

impl WatchOptions {
    /// The `sql` and `exact` filters, both when both are given.
    fn filter(&self) -> Option<api::Filter> {
        use api::filter::Filter;
        let sql = self.sql.clone().map(|sql| api::Filter {
            filter: Some(Filter::Sql(sql)),
        });
        let exact = (!self.exact.is_empty()).then(|| api::Filter {
            filter: Some(Filter::Exact(api::AttributeMap {
                attributes: self.exact.clone().into_iter().collect(),
            })),
        });
        match (sql, exact) {
            (Some(a), Some(b)) => Some(api::Filter {
                filter: Some(Filter::All(api::FilterList {
                    filters: vec![a, b],
                })),
            }),
            (a, b) => a.or(b),
        }
    }

    fn to_open(&self) -> api::Open {
        use api::start_position::Position;
        let position = match self.from {
            StartFrom::New => Position::New(()),
            StartFrom::Earliest => Position::Earliest(()),
            StartFrom::Snapshot => Position::Snapshot(()),
            StartFrom::Sequence(s) => Position::Sequence(s),
            StartFrom::Time(t) => Position::Time(super::convert::timestamp_to_pb(&t)),
        };
        api::Open {
            stream: self.stream.clone(),
            subjects: self.subjects.clone(),
            filter: self.filter(),
            start: Some(api::StartPosition {
                position: Some(position),
            }),
            durable: self.durable.clone().unwrap_or_default(),
            ack_mode: if self.explicit_acks {
                api::AckMode::Explicit as i32
            } else {
                api::AckMode::Unspecified as i32
            },
            ..Default::default()
        }
    }
}

/// Recently cancelled streams a connection remembers (see `connect_to`).
const RESET_STREAMS_REMEMBERED: usize = 4096;

/// Acknowledgements a [`Watcher`] queues before waiting for the stream to take them.
const ACKS_IN_FLIGHT: usize = 256;

/// A stream, as the admin API lists it.
pub type StreamInfo = api::StreamInfo;

/// A durable subscription, as the admin API lists it.
pub type DurableInfo = api::SubscriptionInfo;

/// The gateway's streams.
pub async fn streams(conn: &Connection) -> Result<Vec<StreamInfo>, ClientError> {
    let mut admin = api::admin_client::AdminClient::new(connect(conn).await?);
    Ok(admin
        .list_streams(conn.request(api::ListStreamsRequest {}))
        .await?
        .into_inner()
        .streams)
}

/// The durable subscriptions of `stream` (every declared stream when empty).
pub async fn durables(conn: &Connection, stream: &str) -> Result<Vec<DurableInfo>, ClientError> {
    let mut admin = api::admin_client::AdminClient::new(connect(conn).await?);
    Ok(admin
        .list_subscriptions(conn.request(api::ListSubscriptionsRequest {
            stream: stream.to_owned(),
        }))
        .await?
        .into_inner()
        .subscriptions)
}

/// One item of a watch, in domain terms.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// An event.
    Delivery {
        /// Stream sequence.
        sequence: u64,
        /// NATS subject.
        subject: String,
        /// When it was stored.
        stored_at: Option<chrono::DateTime<chrono::Utc>>,
        /// 1 on first delivery.
        delivery_count: u32,
        /// The event.
        event: Box<Event>,
    },
    /// Every matching event up to `sequence` has been delivered.
    Bookmark {
        /// The sequence.
        sequence: u64,
        /// Events after it not yet examined.
        pending: u64,
    },
    /// The snapshot is complete.
    SnapshotEnd {
        /// The sequence it covers.
        sequence: u64,
    },
    /// The subscription (re)opened.
    Opened {
        /// First sequence it may deliver.
        start_sequence: u64,
        /// The stream's last sequence at the time.
        last_sequence: u64,
    },
}

/// A `Watch` that survives disconnects.
#[derive(Debug)]
pub struct Watcher {
    /// How to reach and authenticate to the gateways.
    conn: Connection,
    /// Gateways to try, in turn.
    addrs: Vec<String>,
    /// The one in use.
    current: usize,
    open: api::Open,
    stream: Option<tonic::Streaming<api::SubscribeResponse>>,
    /// The request side of a `Subscribe` stream (explicit acknowledgements), while open.
    requests: Option<tokio::sync::mpsc::Sender<api::SubscribeRequest>>,
    /// The next sequence to ask for after a reconnect.
    resume_from: Option<u64>,
    backoff: Duration,
    /// Longest wait between reconnect attempts.
    max_backoff: Duration,
}

impl Watcher {
    /// A watcher of `options` through `conn`, opened on first use. `conn.addr` may list
    /// several gateways, comma-separated: after a failure the watcher resumes on the next one.
    pub fn watch(conn: impl Into<Connection>, options: &WatchOptions) -> Watcher {
        Watcher::new(conn, options.to_open())
    }

    /// A watcher that opens `open` through `conn` (one gateway address, or several
    /// comma-separated) on first use.
    pub fn new(conn: impl Into<Connection>, open: api::Open) -> Watcher {
        let conn = conn.into();
        Watcher {
            addrs: conn.addrs(),
            conn,
            current: 0,
            open,
            stream: None,
            requests: None,
            resume_from: None,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }

    /// The sequence a reconnect would resume from.
    pub fn resume_from(&self) -> Option<u64> {
        self.resume_from
    }

    async fn reopen(&mut self) -> Result<(), ClientError> {
        let mut open = self.open.clone();
        if let Some(seq) = self.resume_from {
            if open.durable.is_empty() {
                open.start = Some(api::StartPosition {
                    position: Some(api::start_position::Position::Sequence(seq)),
                });
            }
        }
        let addr = self
            .addrs
            .get(self.current)
            .ok_or_else(|| ClientError::Protocol("no gateway address given".into()))?;
        let channel = connect_to(&self.conn, addr).await?;
        let mut client = api::subscriber_client::SubscriberClient::new(channel);
        if open.ack_mode == api::AckMode::Explicit as i32 {
            // Acknowledgements need the client's side of the stream: `Subscribe`.
            let (tx, rx) = tokio::sync::mpsc::channel(ACKS_IN_FLIGHT);
            let first = api::SubscribeRequest {
                request: Some(api::subscribe_request::Request::Open(open)),
            };
            tx.try_send(first)
                .map_err(|_| ClientError::Protocol("cannot queue the open request".into()))?;
            let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
            self.stream = Some(
                client
                    .subscribe(self.conn.request(requests))
                    .await?
                    .into_inner(),
            );
            self.requests = Some(tx);
        } else {
            self.stream = Some(client.watch(self.conn.request(open)).await?.into_inner());
        }
        Ok(())
    }

    /// Acknowledges `sequence` (with [`WatchOptions::explicit_acks`]): the delivery is
    /// handled and, for a durable, consumed. An acknowledgement that cannot reach the gateway
    /// (the stream broke) is dropped: the delivery comes back after the reconnect.
    pub async fn ack(&mut self, sequence: u64) -> Result<(), ClientError> {
        let Some(requests) = &self.requests else {
            return Err(ClientError::Protocol(
                "acknowledgements need WatchOptions::explicit_acks".into(),
            ));
        };
        let ack = api::SubscribeRequest {
            request: Some(api::subscribe_request::Request::Ack(api::Ack {
                sequences: vec![sequence],
            })),
        };
        let _ = requests.send(ack).await;
        Ok(())
    }

    /// The next item, reconnecting as needed. Errors other than UNAVAILABLE (and connection
    /// failures) are returned: they will not go away by retrying.
    pub async fn next(&mut self) -> Result<WatchItem, ClientError> {
        loop {
            if self.stream.is_none() {
                match self.reopen().await {
                    Ok(()) => {}
                    Err(e) if retryable(&e) => {
                        tracing::warn!(error = %e, backoff = ?self.backoff, "watch unavailable; retrying");
                        self.next_gateway();
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(self.max_backoff);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let message = match stream.message().await {
                Ok(Some(m)) => m,
                Ok(None) => {
                    self.stream = None;
                    self.requests = None;
                    continue;
                }
                Err(status) if interrupted(&status) => {
                    if let Some(last) = last_delivered(&status) {
                        self.resume_from = Some(self.resume_from.unwrap_or(0).max(last + 1));
                    }
                    tracing::warn!(message = status.message(), "watch interrupted; resuming");
                    self.stream = None;
                    self.requests = None;
                    self.next_gateway();
                    continue;
                }
                Err(status) => return Err(status.into()),
            };
            self.backoff = Duration::from_millis(100);
            return self.item(message);
        }
    }

    /// Moves on to the next gateway, if there are several.
    fn next_gateway(&mut self) {
        if !self.addrs.is_empty() {
            self.current = (self.current + 1) % self.addrs.len();
        }
    }

    fn item(&mut self, m: api::SubscribeResponse) -> Result<WatchItem, ClientError> {
        use api::subscribe_response::Response;
        let item = match m.response {
            Some(Response::Opened(o)) => WatchItem::Opened {
                start_sequence: o.start_sequence,
                last_sequence: o.last_sequence,
            },
            Some(Response::Delivery(d)) => {
                let event = d
                    .event
                    .ok_or_else(|| ClientError::Protocol("a delivery without an event".into()))?;
                self.resume_from = Some(d.sequence + 1);
                WatchItem::Delivery {
                    sequence: d.sequence,
                    subject: d.subject,
                    stored_at: d.stored_at.as_ref().and_then(timestamp_from_pb),
                    delivery_count: d.delivery_count,
                    event: Box::new(
                        event_from_pb(event, "event")
                            .map_err(|e| ClientError::Protocol(e.to_string()))?,
                    ),
                }
            }
            Some(Response::Bookmark(b)) => {
                self.resume_from = Some(self.resume_from.unwrap_or(0).max(b.sequence + 1));
                WatchItem::Bookmark {
                    sequence: b.sequence,
                    pending: b.pending,
                }
            }
            Some(Response::SnapshotEnd(s)) => {
                // After a snapshot, a reconnect continues with the changes that follow it.
                self.resume_from = Some(s.sequence + 1);
                WatchItem::SnapshotEnd {
                    sequence: s.sequence,
                }
            }
            None => return Err(ClientError::Protocol("an empty response".into())),
        };
        Ok(item)
    }
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } => true,
        ClientError::Status(s) => s.code() == Code::Unavailable,
        ClientError::Protocol(_) => false,
    }
}

/// Whether an open stream's error means "resume", not "give up": the gateway or NATS went
/// away (UNAVAILABLE), or the connection broke under the stream (a crashed gateway: tonic
/// reports the broken transport as UNKNOWN or INTERNAL with no jetwatch ErrorInfo).
fn interrupted(status: &tonic::Status) -> bool {
    use tonic_types::StatusExt;
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => {
            status.get_details_error_info().is_none()
        }
        _ => false,
    }
}

fn last_delivered(status: &tonic::Status) -> Option<u64> {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()?
        .metadata
        .get("last_delivered_sequence")?
        .parse()
        .ok()
}

/// The outcome of one publish, in domain terms.
#[derive(Debug, Clone)]
pub struct PublishOutcome {
    /// Stream.
    pub stream: String,
    /// Subject it was stored on.
    pub subject: String,
    /// Its sequence.
    pub sequence: u64,
    /// Whether it was a duplicate.
    pub duplicate: bool,
}

/// Publishes `events` over one `PublishStream`, returning one result per event, in order.
pub async fn publish_all(
    conn: &Connection,
    stream: &str,
    events: Vec<Event>,
) -> Result<Vec<Result<PublishOutcome, tonic::Status>>, ClientError> {
    let mut client = api::publisher_client::PublisherClient::new(connect(conn).await?);
    let requests: Vec<api::PublishRequest> = events
        .iter()
        .map(|e| api::PublishRequest {
            event: Some(event_to_pb(e)),
            stream: stream.to_owned(),
            expected_subject_sequence: None,
        })
        .collect();
    let mut responses = client
        .publish_stream(conn.request(futures::stream::iter(requests)))
        .await?
        .into_inner();
    let mut out = Vec::with_capacity(events.len());
    while let Some(r) = responses.message().await? {
        out.push(match r.error {
            Some(e) => Err(status_from_pb(e)),
            None => Ok(PublishOutcome {
                stream: r.stream,
                subject: r.subject,
                sequence: r.sequence,
                duplicate: r.duplicate,
            }),
        });
    }
    Ok(out)
}

/// A `google.rpc.Status` from a `PublishResponse` as a tonic status.
pub fn status_from_pb(s: tonic_types::pb::Status) -> tonic::Status {
    use prost::Message;
    let code = Code::from_i32(s.code);
    let message = s.message.clone();
    tonic::Status::with_details(code, message, s.encode_to_vec().into())
}
