//! The JetStream layer: the only module that performs NATS I/O.
//!
//! It connects, declares streams, publishes encoded events, reports stream state and reads:
//! through short-lived consumers ([`Reader`]), durable and ephemeral consumers with explicit
//! acknowledgements ([`Consumer`]), and batched direct gets ([`Store::read_range`]). Everything
//! above it speaks in stream sequences and [`RawMessage`]s; async-nats errors are classified
//! into [`StoreError`] here and nowhere else.
//!
//! One file per concept: `error` (errors and their classification), `streams` (declaring and
//! inspecting streams), `publish`, `read` (readers), `direct` (direct gets), `consumer`
//! (consumers with acknowledgements, durables and their administration).

use std::fmt;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::config::NatsSettings;

mod consumer;
mod direct;
mod error;
mod publish;
mod push;
mod read;
mod streams;

pub use consumer::{Acker, Consumer, ConsumerSpec, ConsumerStart, ConsumerState, Delivered, Pull};
pub use direct::Range;
pub use error::{BoxError, StoreError};
pub use publish::{message_size, publish_size, Checked, PendingAck, PublishAck};
pub use read::Reader;
pub use streams::StreamState;

/// How long an abandoned ephemeral consumer lingers on the server before NATS removes it
/// (covers a gateway that dies without cleaning up).
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// Where a reader starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// At this stream sequence (inclusive).
    Sequence(u64),
    /// At the first message stored at or after this time.
    Time(DateTime<Utc>),
    /// The last message of every subject, then everything newer.
    LastPerSubject,
}

/// A stored message as read from a stream.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// Stream sequence.
    pub sequence: u64,
    /// The subject it is stored on.
    pub subject: String,
    /// When JetStream stored it.
    pub stored_at: DateTime<Utc>,
    /// Messages matching the reader's filter still to come after this one.
    pub pending: u64,
    /// Headers (`ce-*` for binary mode events).
    pub headers: Option<HeaderMap>,
    /// Payload.
    pub payload: Bytes,
    /// The message's size as NATS delivered it (subject, reply subject, headers and payload):
    /// what its parts take in memory, give or take, without walking its header map.
    pub size: usize,
}

/// The connection to NATS and its JetStream context.
#[derive(Clone)]
pub struct Store {
    /// The core connection (connection state, server info).
    client: async_nats::Client,
    /// The JetStream API.
    js: jetstream::Context,
    /// A second connection for history reads, so bulk transfers never delay live reads,
    /// acknowledgements and publishes (and a slow-consumer cut of one leaves the other alone).
    bulk: async_nats::Client,
    /// How long a request (or a history read) may stay unanswered.
    request_timeout: Duration,
    /// Whether both connections are up, fed by the clients' connection events.
    connected: tokio::sync::watch::Receiver<bool>,
    /// How many times each connection ([`Link`]) has dropped.
    drops: tokio::sync::watch::Receiver<[u64; 2]>,
}

/// One of the gateway's two connections to NATS.
#[derive(Debug, Clone, Copy)]
enum Link {
    /// Requests, publishes, live reads (`Store::client` and its JetStream context).
    Main = 0,
    /// History reads (`Store::bulk`).
    Bulk = 1,
}

/// The state of the two connections, updated from their event callbacks.
#[derive(Debug)]
struct Links {
    /// Main and bulk connection up.
    up: [std::sync::atomic::AtomicBool; 2],
    /// Whether the main connection has been up before (its next `Connected` is a reconnect).
    ever: std::sync::atomic::AtomicBool,
    state: tokio::sync::watch::Sender<bool>,
    /// Counts each connection's drops.
    drops: tokio::sync::watch::Sender<[u64; 2]>,
}

impl Links {
    fn set(&self, link: Link, up: bool) {
        let link = link as usize;
        use std::sync::atomic::Ordering;
        let was = self.up[link].swap(up, Ordering::SeqCst);
        if up && !was && link == 0 && self.ever.swap(true, Ordering::SeqCst) {
            // The main connection is back after it had been up before.
            crate::telemetry::METRICS.nats_reconnects.inc();
        }
        let all = self.up.iter().all(|u| u.load(Ordering::SeqCst));
        self.state
            .send_if_modified(|s| std::mem::replace(s, all) != all);
    }

    fn dropped(&self, link: Link) {
        self.drops.send_modify(|d| d[link as usize] += 1);
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl Store {
    /// Connects to NATS (the main connection and the bulk-read connection), waiting up to
    /// `connect_timeout` for each.
    pub async fn connect(settings: &NatsSettings) -> Result<Store, StoreError> {
        let (state, connected) = tokio::sync::watch::channel(false);
        let (drops_tx, drops) = tokio::sync::watch::channel([0; 2]);
        let links = std::sync::Arc::new(Links {
            up: Default::default(),
            ever: Default::default(),
            state,
            drops: drops_tx,
        });
        let client = connect_one(
            settings,
            &settings.connection_name,
            links.clone(),
            Link::Main,
        )
        .await?;
        let bulk_name = format!("{}-history", settings.connection_name);
        let bulk = connect_one(settings, &bulk_name, links.clone(), Link::Bulk).await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(settings.request_timeout)
            .build(client.clone());
        Ok(Store {
            client,
            js,
            bulk,
            request_timeout: settings.request_timeout,
            connected,
            drops,
        })
    }

    /// Runs `work` (requests on `link` and their answers) unless that connection drops first.
    ///
    /// An answer on its way when a connection drops is lost, and async-nats leaves the request
    /// waiting for its timeout (`nats.request_timeout`) even after it has reconnected. Under
    /// repeated drops (a server cutting a slow consumer, a flapping network) those waits add
    /// up to stalls of many seconds. So a drop fails the work at once, as transient, and the
    /// caller retries on the new connection.
    async fn unless_dropped<T>(
        &self,
        link: Link,
        what: &str,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::select! {
            done = work => done,
            () = self.dropped(link) => Err(StoreError::unavailable(format!(
                "the connection to NATS dropped while {what}; its answer is lost"
            ))),
        }
    }

    /// Resolves once `link` drops after this call (not after the first poll).
    fn dropped(&self, link: Link) -> impl std::future::Future<Output = ()> {
        let mut drops = self.drops(link);
        async move { drops.dropped().await }
    }

    /// A new inbox on `client` and its subscription; `what` names the read it is for.
    async fn inbox(
        client: &async_nats::Client,
        what: &str,
    ) -> Result<(async_nats::Subject, async_nats::Subscriber), StoreError> {
        let inbox = async_nats::Subject::from(client.new_inbox());
        let subscription =
            client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| StoreError::Unavailable {
                    context: format!("subscribing for {what}"),
                    source: Some(Box::new(e)),
                })?;
        Ok((inbox, subscription))
    }

    /// Follows `link`'s drops from now on.
    fn drops(&self, link: Link) -> Drops {
        Drops::since_now(self.drops.clone(), link)
    }

    /// Whether both connections to NATS are up right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// The round trip to the NATS server (a flush answered), or `None` when it takes longer
    /// than `limit` or the connection is down.
    pub async fn rtt(&self, limit: Duration) -> Option<Duration> {
        let start = std::time::Instant::now();
        match tokio::time::timeout(limit, self.client.flush()).await {
            Ok(Ok(())) => Some(start.elapsed()),
            _ => None,
        }
    }

    /// Follows [`Store::is_connected`]: changes whenever a connection goes or comes back.
    pub fn connection(&self) -> tokio::sync::watch::Receiver<bool> {
        self.connected.clone()
    }

    /// The server's `max_payload` in bytes.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }
}

/// Tells whether a connection dropped since a moment ([`Store::drops`]).
#[derive(Debug, Clone)]
struct Drops {
    drops: tokio::sync::watch::Receiver<[u64; 2]>,
    link: Link,
    /// The count of drops at that moment.
    at: u64,
}

impl Drops {
    /// Follows `link`'s drops, counted by `drops`, from now on.
    fn since_now(mut drops: tokio::sync::watch::Receiver<[u64; 2]>, link: Link) -> Drops {
        let at = drops.borrow_and_update()[link as usize];
        Drops { drops, link, at }
    }

    /// Follows the same connection's drops from now on.
    fn renewed(&self) -> Drops {
        Drops::since_now(self.drops.clone(), self.link)
    }

    /// Resolves once the connection has dropped since that moment (at once if it has).
    async fn dropped(&mut self) {
        loop {
            if self.drops.borrow_and_update()[self.link as usize] != self.at {
                return;
            }
            if self.drops.changed().await.is_err() {
                // The connection is gone for good: nothing will count a drop again.
                return std::future::pending().await;
            }
        }
    }
}

/// The connect options carrying `settings`' credentials and TLS.
async fn credentials(settings: &NatsSettings) -> Result<async_nats::ConnectOptions, StoreError> {
    let secret = |path: &std::path::Path, what: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .map_err(|e| StoreError::Unavailable {
                context: format!("reading the NATS {what} file {}", path.display()),
                source: Some(Box::new(e)),
            })
    };
    let mut options = async_nats::ConnectOptions::new();
    if let (Some(user), Some(path)) = (&settings.user, &settings.password_file) {
        options = options.user_and_password(user.clone(), secret(path, "password")?);
    }
    if let Some(path) = &settings.token_file {
        options = options.token(secret(path, "token")?);
    }
    if let Some(path) = &settings.nkey_seed_file {
        options = options.nkey(secret(path, "NKey seed")?);
    }
    if let Some(path) = &settings.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| StoreError::Unavailable {
                context: format!("reading the NATS credentials file {}", path.display()),
                source: Some(Box::new(e)),
            })?;
    }
    if let Some(ca) = &settings.tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&settings.tls_cert_file, &settings.tls_key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if settings.require_tls {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Opens one connection named `name` to the servers of `settings.url` (comma-separated).
async fn connect_one(
    settings: &NatsSettings,
    name: &str,
    links: std::sync::Arc<Links>,
    link: Link,
) -> Result<async_nats::Client, StoreError> {
    let servers = settings
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| StoreError::Unavailable {
                    context: format!("invalid NATS URL `{u}`"),
                    source: Some(Box::new(e)),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = credentials(settings)
        .await?
        .name(name)
        .connection_timeout(settings.connect_timeout)
        .request_timeout(Some(settings.request_timeout))
        .retry_on_initial_connect()
        .event_callback({
            let (links, name) = (links.clone(), name.to_owned());
            move |event| {
                let (links, name) = (links.clone(), name.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => links.set(link, true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            links.dropped(link);
                            links.set(link, false)
                        }
                        _ => {}
                    }
                    tracing::info!(%event, connection = name, "nats connection event");
                }
            }
        });
    let unreachable = || {
        StoreError::unavailable(format!(
            "no connection to {} within {:?}",
            settings.url, settings.connect_timeout
        ))
    };
    let client = match tokio::time::timeout(
        settings.connect_timeout,
        async_nats::connect_with_options(servers, options),
    )
    .await
    {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            return Err(StoreError::Unavailable {
                context: format!("cannot connect to {}", settings.url),
                source: Some(Box::new(e)),
            })
        }
        Err(_) => return Err(unreachable()),
    };
    // `retry_on_initial_connect` returns before the handshake: wait until it completes.
    let flush = tokio::time::timeout(settings.connect_timeout, client.flush()).await;
    if !matches!(flush, Ok(Ok(()))) {
        return Err(unreachable());
    }
    links.set(link, true);
    Ok(client)
}

/// The JetStream delivery policy of a start position: the one place the mapping is written.
fn deliver_policy(start: StartAt) -> DeliverPolicy {
    match start {
        StartAt::Sequence(s) => DeliverPolicy::ByStartSequence {
            start_sequence: s.max(1),
        },
        StartAt::Time(t) => DeliverPolicy::ByStartTime { start_time: t },
        StartAt::LastPerSubject => DeliverPolicy::LastPerSubject,
    }
}

/// A message a consumer delivered, as a [`RawMessage`], with its consumer sequence and
/// delivery count.
fn unpack(msg: jetstream::Message) -> Result<(RawMessage, u64, i64), StoreError> {
    unpack_delivery(msg.message)
}

/// A message a consumer delivered (read from its `$JS.ACK` reply subject), as a
/// [`RawMessage`], with its consumer sequence and delivery count: the one place consumer
/// deliveries are unpacked.
fn unpack_delivery(msg: async_nats::Message) -> Result<(RawMessage, u64, i64), StoreError> {
    let meta = msg
        .reply
        .as_deref()
        .and_then(Delivery::parse)
        .ok_or_else(|| {
            StoreError::unavailable(format!(
                "a delivery without valid metadata (reply subject {:?})",
                msg.reply.as_deref()
            ))
        })?;
    Ok((
        RawMessage {
            sequence: meta.stream_sequence,
            subject: msg.subject.as_str().to_owned(),
            stored_at: meta.stored_at,
            pending: meta.pending,
            headers: msg.headers,
            payload: msg.payload,
            size: msg.length,
        },
        meta.consumer_sequence,
        meta.delivered,
    ))
}

/// What JetStream says of a delivery in its reply subject.
#[derive(Debug, PartialEq)]
struct Delivery {
    delivered: i64,
    stream_sequence: u64,
    consumer_sequence: u64,
    stored_at: DateTime<Utc>,
    pending: u64,
}

impl Delivery {
    /// Parses `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.
    /// <pending>`, or the form with `<domain>.<account hash>` before the stream and possibly
    /// more tokens after `<pending>` (ADR-15).
    fn parse(reply: &str) -> Option<Delivery> {
        let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
        // Bytes, not `str::split` and `str::parse`: this runs for every message a reader
        // receives, and searching for each dot with `memchr` and parsing through the generic
        // integer parser cost more than the rest of unpacking the message.
        let mut tokens: [&[u8]; 10] = [&[]; 10];
        let mut count = 0;
        for token in rest.split(|&b| b == b'.') {
            if count == tokens.len() {
                break;
            }
            tokens[count] = token;
            count += 1;
        }
        // Where `<delivered>` is: after stream and consumer, and domain and hash if present.
        let at = match count {
            7 => 2,
            9 | 10 => 4,
            _ => return None,
        };
        let number = |i: usize| digits(tokens[at + i]);
        Some(Delivery {
            delivered: i64::try_from(number(0)?).ok()?,
            stream_sequence: number(1)?,
            consumer_sequence: number(2)?,
            stored_at: DateTime::from_timestamp_nanos(i64::try_from(number(3)?).ok()?),
            pending: number(4)?,
        })
    }
}

/// A token of decimal digits (as JetStream writes numbers in reply subjects), if it is one
/// and fits.
fn digits(token: &[u8]) -> Option<u64> {
    if token.is_empty() {
        return None;
    }
    token.iter().try_fold(0u64, |n, &b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(delivered: i64, stream_sequence: u64, consumer_sequence: u64) -> Delivery {
        Delivery {
            delivered,
            stream_sequence,
            consumer_sequence,
            stored_at: DateTime::from_timestamp_nanos(1_700_000_000_123_456_789),
            pending: 42,
        }
    }

    #[test]
    fn reply_subjects_of_both_forms_give_the_delivery() {
        // The original form.
        assert_eq!(
            Delivery::parse("$JS.ACK.widgets.reader.1.17.5.1700000000123456789.42"),
            Some(delivery(1, 17, 5))
        );
        // With domain and account hash, with and without the trailing token, and with tokens
        // after it.
        for reply in [
            "$JS.ACK._.ACCHASH.widgets.reader.3.17.5.1700000000123456789.42",
            "$JS.ACK.hub.ACCHASH.widgets.reader.3.17.5.1700000000123456789.42.Xy1",
            "$JS.ACK.hub.ACCHASH.widgets.reader.3.17.5.1700000000123456789.42.Xy1.more.tokens",
        ] {
            assert_eq!(Delivery::parse(reply), Some(delivery(3, 17, 5)), "{reply}");
        }
    }

    #[test]
    fn malformed_reply_subjects_are_refused() {
        for reply in [
            "",
            "_INBOX.abc",
            "$JS.ACK.widgets.reader.1.17.5.1700000000123456789",
            "$JS.ACK.widgets.reader.1.17.5.1700000000123456789.42.x",
            "$JS.ACK.widgets.reader.one.17.5.1700000000123456789.42",
            "$JS.ACK.widgets.reader.1.-17.5.1700000000123456789.42",
            "$JS.ACK.widgets.reader.1.17.5.yesterday.42",
            "$JS.ACK.widgets.reader.1.17..1700000000123456789.42",
            "$JS.ACK.widgets.reader.1.18446744073709551616.5.1700000000123456789.42",
            "$JS.ACK.widgets.reader.1.17.5.9300000000000000000.42",
            "$JS.NAK.widgets.reader.1.17.5.1700000000123456789.42",
        ] {
            assert_eq!(Delivery::parse(reply), None, "{reply}");
        }
    }
}
