//! Settings: `config/default.toml` semantics, an optional file, and environment overrides.
//!
//! Precedence, lowest first: the built-in defaults (identical to `config/default.toml`), the
//! file given with `--config`, then environment variables `JETWATCH__<SECTION>__<KEY>` (for
//! example `JETWATCH__NATS__URL=nats://nats:4222`), then command-line flags. Every field below
//! documents its meaning, unit and default; `config/default.toml` repeats them for operators.
//! [`Settings::validate`] checks everything that can be checked without NATS, so a bad setting
//! fails at start-up with the setting's name.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::subject::SubjectTemplate;

/// The built-in defaults, compiled from the same file operators read.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or environment value could not be read or parsed.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but is not acceptable.
    #[error("invalid setting `{key}`: {reason}")]
    Invalid {
        /// The setting's dotted name, e.g. `streams[0].subjects`.
        key: String,
        /// What is wrong and what is expected.
        reason: String,
    },
}

/// All settings of a gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The gRPC and metrics listeners and the shutdown grace period.
    pub server: ServerSettings,
    /// How to reach NATS.
    pub nats: NatsSettings,
    /// Publishing limits.
    pub publish: PublishSettings,
    /// Subscription defaults and limits.
    pub subscribe: SubscribeSettings,
    /// The shared-read (fan-out) engine.
    pub fanout: FanoutSettings,
    /// TLS on the gRPC listener.
    #[serde(default)]
    pub tls: TlsSettings,
    /// Who may call, and what each caller may do.
    #[serde(default)]
    pub auth: AuthSettings,
    /// Metrics, traces and logs.
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    /// Push subscriptions (webhooks).
    #[serde(default)]
    pub push: PushSettings,
    /// The HTTP/JSON API (CloudEvents over HTTP, Server-Sent Events, NDJSON) on the gRPC
    /// listener.
    #[serde(default)]
    pub http: HttpSettings,
    /// The streams the gateway declares at start-up (created or updated).
    pub streams: Vec<StreamSettings>,
}

/// `[server]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// gRPC listen address. Default `127.0.0.1:50051`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTP listen address for `/metrics`. Default `127.0.0.1:9464`; port 0 picks a free port.
    pub metrics_listen: SocketAddr,
    /// How long shutdown waits for open streams and in-flight publishes before exiting anyway.
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest gRPC request message accepted, in bytes (one `PublishRequest`, one `Open`, one
    /// control message); larger ones are refused with RESOURCE_EXHAUSTED (`REQUEST_TOO_LARGE`)
    /// before they are buffered. Must leave room for the largest event plus its envelope.
    /// Default 4194304 (4 MiB).
    pub max_request_bytes: usize,
    /// Streams the HTTP/2 layer may reset on its own (for a client's protocol errors) over one
    /// connection's life before it closes the connection with ENHANCE_YOUR_CALM, a defence
    /// against reset floods. Quick cancels of many watches on one long-lived connection cause
    /// such resets too, so the default is far above the HTTP/2 library's 1024. Default 65536.
    pub http2_max_local_resets: usize,
    /// Bytes of responses one connection gathers before they go to its socket in one write
    /// (sooner when the HTTP/2 layer flushes, as it does whenever it has nothing more to send).
    /// Fewer, larger writes: one write for a live event's deliveries to many watchers on one
    /// connection instead of one each. 0 writes each piece as it comes. Default 65536.
    pub write_buffer_bytes: usize,
}

/// `[push]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSettings {
    /// Allow plain `http://` endpoints that are not loopback addresses. Default `false`.
    pub allow_http: bool,
    /// Networks (CIDR) push deliveries may connect to; empty: any. Checked on every
    /// connection, after name resolution. Default empty.
    pub allowed_networks: Vec<String>,
    /// Validate endpoints with the CloudEvents webhook handshake (`OPTIONS` with
    /// `WebHook-Request-Origin`) before creating a subscription or changing its URL.
    /// Default `true`.
    pub handshake: bool,
    /// The origin named in the handshake. Default `jetwatch`.
    pub origin: String,
    /// Push subscriptions at most. Default 100.
    pub max_subscriptions: usize,
    /// Largest `concurrency` of one subscription. Default 256.
    pub max_concurrency: u32,
    /// Attempt timeout when a subscription sets none. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub default_timeout: Duration,
    /// Largest attempt timeout. Default `60s`.
    #[serde(with = "humantime_serde")]
    pub max_timeout: Duration,
    /// Attempts before an event is dead-lettered, when a subscription sets none. Default 10.
    pub default_max_attempts: u32,
    /// First wait between attempts (doubled each time, with jitter). Default `1s`.
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    /// Longest wait between attempts. Default `5m`.
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    /// Bytes of a refusing endpoint's response body kept in the dead letter. Default 512.
    pub body_excerpt_bytes: usize,
    /// How often each gateway reads the push subscriptions (created, changed, paused,
    /// deleted through any gateway) and writes their status. Default `2s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Push subscriptions declared here: created when missing, updated when different.
    pub subscriptions: Vec<crate::push::PushSpec>,
}

impl Default for PushSettings {
    fn default() -> Self {
        PushSettings {
            allow_http: false,
            allowed_networks: Vec::new(),
            handshake: true,
            origin: "jetwatch".into(),
            max_subscriptions: 100,
            max_concurrency: 256,
            default_timeout: Duration::from_secs(10),
            max_timeout: Duration::from_secs(60),
            default_max_attempts: 10,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            body_excerpt_bytes: 512,
            reload_interval: Duration::from_secs(2),
            subscriptions: Vec::new(),
        }
    }
}

/// `[http]`: the HTTP/JSON API served on the gRPC listener under `/v1/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Serve the HTTP/JSON API (publish with the CloudEvents HTTP binding, watch as
    /// Server-Sent Events or NDJSON). Default `true`.
    pub enabled: bool,
    /// Largest HTTP request body accepted, in bytes (one event, or one batch); larger ones are
    /// refused with 413 (`REQUEST_TOO_LARGE`) before they are buffered whole. Must be at
    /// least `publish.max_event_bytes`. Default 4194304 (4 MiB).
    pub max_body_bytes: usize,
    /// Events one `application/cloudevents-batch+json` request may carry at most. Default 1000.
    pub max_batch_events: usize,
    /// Browser origins allowed to call the HTTP API and gRPC-Web across origins (CORS), e.g.
    /// `https://dashboard.example.com`; `*` allows any origin. Empty: CORS is off and browsers
    /// allow same-origin pages only. Default empty.
    pub cors_allowed_origins: Vec<String>,
    /// How long browsers may cache a CORS preflight answer. Default `10m`.
    #[serde(with = "humantime_serde")]
    pub cors_max_age: Duration,
    /// The reconnection delay a Server-Sent Events stream asks browsers to use (`retry:`).
    /// Default `1s`.
    #[serde(with = "humantime_serde")]
    pub sse_retry: Duration,
    /// How often an idle Server-Sent Events watch writes a keep-alive comment, so proxies keep
    /// the connection open (NDJSON watches ask for bookmarks with `heartbeat` instead).
    /// Default `15s`.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// Accept a bearer token in the `access_token` query parameter, for browsers' EventSource,
    /// which cannot set headers. URLs end up in proxy logs and browser history: prefer
    /// short-lived tokens. Default `false`.
    pub allow_query_token: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            enabled: true,
            max_body_bytes: 4 * 1024 * 1024,
            max_batch_events: 1000,
            cors_allowed_origins: Vec::new(),
            cors_max_age: Duration::from_secs(600),
            sse_retry: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(15),
            allow_query_token: false,
        }
    }
}

/// `[telemetry]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// Whether metrics are kept and served on `/metrics` (404 when off). Off saves the few
    /// atomic adds per run of deliveries and per call, for the rare gateway scraped by no one.
    /// Default `true`.
    pub metrics: bool,
    /// Durable subscriptions reported in the `jetwatch_durable_*` metrics at most (each
    /// scrape reads their counts from JetStream). Default 1000.
    pub max_durables: usize,
    /// OTLP/gRPC endpoint that receives traces, e.g. `http://127.0.0.1:4317`. Default none:
    /// spans stay in the process (logs only).
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of exported spans. Default `jetwatch`.
    pub service_name: String,
    /// Fraction of traces started here that are sampled (0 to 1); a publish with a sampled
    /// `traceparent` is always followed. Default 1.
    pub sample_ratio: f64,
    /// Spans queued for export at most; more are dropped (and counted by the exporter).
    /// Default 2048.
    pub max_queued_spans: usize,
    /// Least time between two warnings about slow subscribers (falling behind the history
    /// ring); the ones in between are counted in `jetwatch_warnings_suppressed_total`.
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub slow_warning_interval: Duration,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            metrics: true,
            max_durables: 1000,
            otlp_endpoint: None,
            service_name: "jetwatch".into(),
            sample_ratio: 1.0,
            max_queued_spans: 2048,
            slow_warning_interval: Duration::from_secs(10),
        }
    }
}

/// `[nats]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// NATS server URL(s), comma-separated. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// How long start-up waits for the first connection. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Timeout of JetStream API requests and publish acknowledgements. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Name this gateway's connection reports to the NATS server. Default `jetwatch`.
    pub connection_name: String,
    /// How long open subscriptions wait for a lost NATS connection to return before they end
    /// with UNAVAILABLE (carrying their last delivered sequence). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub outage_grace: Duration,
    /// User name, with `password_file`. Default none.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the user's password (trailing newline ignored).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// File holding a NATS authentication token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// File holding an NKey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (user JWT and NKey seed, for operator mode).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// PEM CA bundle the NATS servers' certificates are verified against (turns TLS on).
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
    /// PEM client certificate for NATS servers that verify clients, with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// Refuse to connect without TLS. Default false (TLS as the server offers it).
    #[serde(default)]
    pub require_tls: bool,
}

/// `[publish]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    /// The stream used when a `PublishRequest` names none. Default `events`.
    pub default_stream: String,
    /// Largest accepted event in bytes, measured as NATS counts the stored message (header block
    /// including the headers the gateway adds, plus data); 0 means the NATS server's
    /// `max_payload`, which applies in any case. Default 0.
    pub max_event_bytes: usize,
    /// How many JetStream publishes one `PublishStream` may have awaiting acknowledgement at
    /// once (pipelining depth; bounds memory per stream). Default 256.
    pub max_pending_acks: usize,
}

/// `[subscribe]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeSettings {
    /// Window used when `Open.max_in_flight` is 0, in deliveries. Default 256.
    pub default_max_in_flight: u32,
    /// Largest window a client may ask for, in deliveries. Default 10000.
    pub max_in_flight_limit: u32,
    /// Bookmark interval used when `Open.heartbeat` is unset. Default `5s`.
    #[serde(with = "humantime_serde")]
    pub default_heartbeat: Duration,
    /// Smallest bookmark interval a client may ask for. Default `100ms`.
    #[serde(with = "humantime_serde")]
    pub min_heartbeat: Duration,
    /// Ack deadline used when `Open.ack_wait` is unset (EXPLICIT acks). Default `30s`.
    #[serde(with = "humantime_serde")]
    pub default_ack_wait: Duration,
    /// Deliveries of one event before it goes to the dead-letter subject. Default 5.
    pub max_deliver: u32,
    /// Subject patterns one `Open` may list. Default 32.
    pub max_subjects: usize,
    /// Filter terms one `Open` may carry: every `exact`/`prefix`/`suffix` attribute, every
    /// `all`/`any`/`not` node and every CESQL expression counts one. Default 256.
    pub max_filter_terms: usize,
    /// Deepest nesting of `all`/`any`/`not` filters, and of operators inside one CESQL
    /// expression. At most 64. Default 32.
    pub max_filter_depth: usize,
    /// Longest CESQL expression, in bytes. At most 65536. Default 8192.
    pub max_expression_bytes: usize,
}

/// `[fanout]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutSettings {
    /// Bytes of recent events each stream's shared reader keeps in memory to serve subscribers
    /// that start a little in the past or fall a little behind; counts content plus per-entry
    /// overhead, so it bounds real memory. Default 33554432 (32 MiB).
    pub history_bytes: usize,
    /// Events a subscriber takes from the shared history per step, the most deliveries it
    /// hands its client's stream at once, and messages one history read asks JetStream for.
    /// Default 256.
    pub batch: usize,
    /// History reads (batched direct gets, no JetStream consumer) the gateway runs at once, for
    /// all subscribers behind the shared history together; further reads wait their turn in
    /// arrival order. Default 8.
    pub catchup_reads: usize,
    /// Largest answer of one read from JetStream (a shared reader's pull, a snapshot's pull, a
    /// history read), in bytes; with `catchup_reads` it bounds the history bytes in flight on
    /// the NATS connection. A stored event larger than this is still read, alone in its read. A
    /// snapshot's pull asks for as many events as this holds at the size of the largest event
    /// it has seen (its first pull, at twice the stream's average event). Default 1048576
    /// (1 MiB).
    pub read_bytes: usize,
    /// Bytes of history blocks each stream keeps in memory after reading them, so subscribers
    /// catching up over the same range share one read. Counted like `history_bytes`. Default
    /// 33554432 (32 MiB).
    pub catchup_cache_bytes: usize,
    /// Snapshot reads (each a short-lived JetStream consumer) the gateway runs at once; further
    /// snapshots wait their turn. Bounds the consumers the gateway holds for watchers. Default 4.
    pub snapshot_reads: usize,
    /// Messages one pull of a snapshot read asks JetStream for at most (fewer when `read_bytes`
    /// holds fewer of the largest events seen). A snapshot is one long sequential read: larger pulls mean fewer round
    /// trips. Default 1024.
    pub snapshot_batch: usize,
    /// JetStream consumers the gateway may hold for history reads of shared blocks (each kept
    /// while it reads on sequentially, let go after 5 s idle); past it, history reads use
    /// direct gets. 0: direct gets only. Default 4.
    pub catchup_consumers: usize,
}

impl Settings {
    fn validate_security(&self, streams: &HashSet<&str>) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                reason,
            })
        };
        let tls = &self.tls;
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return invalid(
                "tls.key_file",
                "set both tls.cert_file and tls.key_file".into(),
            );
        }
        if tls.client_ca_file.is_some() && !tls.enabled() {
            return invalid(
                "tls.client_ca_file",
                "needs tls.cert_file and tls.key_file".into(),
            );
        }
        if tls.client_crl_file.is_some() && tls.client_ca_file.is_none() {
            return invalid(
                "tls.client_crl_file",
                "needs tls.client_ca_file (revocation lists of client certificates' CAs)".into(),
            );
        }
        let auth = &self.auth;
        if auth.client_certificates && tls.client_ca_file.is_none() {
            return invalid(
                "auth.client_certificates",
                "needs tls.client_ca_file (the CAs whose certificates identify callers)".into(),
            );
        }
        for (i, t) in auth.tokens.iter().enumerate() {
            if let Err((field, reason)) = t.check() {
                return invalid(&format!("auth.tokens[{i}].{field}"), reason.into());
            }
        }
        if auth.certificate_identity.is_empty() {
            return invalid(
                "auth.certificate_identity",
                "name at least one of cn, dns, uri, email".into(),
            );
        }
        if auth.tokens_file.is_some() && auth.reload_interval.is_zero() {
            return invalid("auth.reload_interval", "must be more than 0".into());
        }
        if let Some(jwt) = &auth.jwt {
            if jwt.hs256_secret_file.is_none() && jwt.jwks_file.is_none() {
                return invalid(
                    "auth.jwt",
                    "set hs256_secret_file or jwks_file (or both)".into(),
                );
            }
            if jwt.issuer.is_empty() || jwt.audience.is_empty() {
                return invalid("auth.jwt", "issuer and audience are required".into());
            }
        }
        for (i, g) in auth.grants.iter().enumerate() {
            if g.identities.is_empty() && g.groups.is_empty() {
                return invalid(
                    &format!("auth.grants[{i}]"),
                    "name at least one identity or group".into(),
                );
            }
            if g.stream != "*" && !streams.contains(g.stream.as_str()) {
                return invalid(
                    &format!("auth.grants[{i}].stream"),
                    format!("`{}` is not a declared stream (or `*`)", g.stream),
                );
            }
            for p in &g.subjects {
                if !crate::wildcard::is_valid_pattern(p) {
                    return invalid(
                        &format!("auth.grants[{i}].subjects"),
                        format!("`{p}` is not a valid NATS subject pattern"),
                    );
                }
            }
        }
        if auth.enabled()
            && !tls.enabled()
            && !auth.allow_plaintext
            && !self.server.listen.ip().is_loopback()
        {
            return invalid(
                "auth.allow_plaintext",
                format!(
                    "authentication is on but TLS is off on {}: credentials would cross the \
                     network in clear; configure [tls], listen on loopback, or set \
                     auth.allow_plaintext = true",
                    self.server.listen
                ),
            );
        }
        Ok(())
    }
}

/// `[tls]`: TLS on the gRPC listener. Off unless `cert_file` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain of the gateway. Setting it (with `key_file`) turns TLS on.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key_file: Option<PathBuf>,
    /// PEM bundle of the CAs whose client certificates are accepted (mTLS). Unset: clients
    /// are not asked for certificates.
    pub client_ca_file: Option<PathBuf>,
    /// PEM file of certificate revocation lists of those CAs: a client certificate listed there
    /// is refused at the handshake. Reloaded like the other files, so revoking takes effect
    /// for new connections without a restart. Only client (leaf) certificates are checked; a
    /// certificate whose CA has no list in the file is accepted. Unset: no revocation check.
    pub client_crl_file: Option<PathBuf>,
    /// With `client_ca_file`: `required` (every client presents a certificate of those CAs) or
    /// `optional` (clients without one may still authenticate otherwise). Default `required`.
    pub client_auth: ClientAuth,
    /// How often the certificate, key and CA files are checked for changes; a change is loaded
    /// for new connections without a restart (a broken one is refused, the old one kept).
    /// Default `10s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Longest a TLS handshake may take; slower clients are dropped. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// TLS handshakes in progress at once; further connections wait to be accepted. Default 256.
    pub max_handshakes: usize,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            client_crl_file: None,
            client_auth: ClientAuth::Required,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
        }
    }
}

impl TlsSettings {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every client presents a certificate signed by `client_ca_file`.
    Required,
    /// A certificate is verified when presented; clients may also come without one.
    Optional,
}

/// `[auth]`: identities and grants. With no identity source configured (no tokens, no JWT,
/// no client certificates), every caller may do everything, as on a laptop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Static bearer tokens; only their SHA-256 hashes are stored here.
    pub tokens: Vec<StaticToken>,
    /// JSON Web Tokens from an identity provider.
    pub jwt: Option<JwtSettings>,
    /// A file of further static tokens (TOML: `[[tokens]]` entries like `auth.tokens`), read
    /// at start-up and re-read every `reload_interval`: a token added works and a token removed
    /// (revoked) is refused without a restart, and open streams of a revoked token end with
    /// UNAUTHENTICATED. A broken file is refused and the tokens in force are kept.
    pub tokens_file: Option<PathBuf>,
    /// How often `tokens_file` is checked for changes. Default `10s`.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Verified TLS client certificates identify callers. Needs `tls.client_ca_file`.
    pub client_certificates: bool,
    /// Which names of a client certificate make its identity, in order: the first one the
    /// certificate has wins. `cn` (subject common name), `dns`, `uri`, `email` (subject
    /// alternative names). Default `["cn", "dns", "uri"]`.
    pub certificate_identity: Vec<CertificateName>,
    /// Which subject attributes of a client certificate make its groups: `ou`
    /// (organizational units), `o` (organizations). Default `["ou"]`.
    pub certificate_groups: Vec<CertificateGroup>,
    /// Allow authentication on a listener without TLS that is not on loopback (bearer tokens
    /// would cross the network in clear). Default false: `serve` refuses to start.
    pub allow_plaintext: bool,
    /// What identities and groups may do; anything not granted is denied.
    pub grants: Vec<Grant>,
    /// Subscriptions (Watch and Subscribe streams) one identity may have open at once; further
    /// ones are RESOURCE_EXHAUSTED. 0: no limit. Default 0.
    pub max_subscriptions_per_identity: usize,
    /// Events per second one identity may publish (a token bucket refilled at this rate);
    /// over it, RESOURCE_EXHAUSTED with `google.rpc.RetryInfo`. 0: no limit. Default 0.
    pub publish_rate_per_identity: u32,
    /// Events one identity may publish in a burst above the rate. Default 0: the rate itself.
    pub publish_burst_per_identity: u32,
}

impl AuthSettings {
    /// Whether callers must authenticate.
    pub fn enabled(&self) -> bool {
        !self.tokens.is_empty()
            || self.tokens_file.is_some()
            || self.jwt.is_some()
            || self.client_certificates
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            tokens: Vec::new(),
            tokens_file: None,
            reload_interval: Duration::from_secs(10),
            jwt: None,
            client_certificates: false,
            certificate_identity: vec![
                CertificateName::Cn,
                CertificateName::Dns,
                CertificateName::Uri,
            ],
            certificate_groups: vec![CertificateGroup::Ou],
            allow_plaintext: false,
            grants: Vec::new(),
            max_subscriptions_per_identity: 0,
            publish_rate_per_identity: 0,
            publish_burst_per_identity: 0,
        }
    }
}

/// A name of a client certificate that can be its identity (`auth.certificate_identity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateName {
    /// The subject's common name.
    Cn,
    /// A DNS subject alternative name.
    Dns,
    /// A URI subject alternative name (e.g. a SPIFFE ID).
    Uri,
    /// An email (RFC 822) subject alternative name.
    Email,
}

/// A subject attribute of a client certificate that names groups (`auth.certificate_groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertificateGroup {
    /// Organizational units.
    Ou,
    /// Organizations.
    O,
}

/// The file of `auth.tokens_file`: `[[tokens]]` entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    /// The tokens.
    #[serde(default)]
    pub tokens: Vec<StaticToken>,
}

impl TokensFile {
    /// Reads and checks a tokens file.
    pub fn read(path: &std::path::Path) -> Result<TokensFile, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::Invalid {
            key: "auth.tokens_file".into(),
            reason: format!("{}: {e}", path.display()),
        })?;
        TokensFile::parse(path, &bytes)
    }

    /// Checks the contents `bytes` of the tokens file at `path`.
    pub fn parse(path: &std::path::Path, bytes: &[u8]) -> Result<TokensFile, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            key: "auth.tokens_file".into(),
            reason: format!("{}: {reason}", path.display()),
        };
        let text = std::str::from_utf8(bytes).map_err(|e| invalid(e.to_string()))?;
        let file: TokensFile = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(config::Config::try_deserialize)
            .map_err(|e| invalid(e.to_string()))?;
        for (i, t) in file.tokens.iter().enumerate() {
            t.check()
                .map_err(|(field, reason)| invalid(format!("tokens[{i}].{field}: {reason}")))?;
        }
        Ok(file)
    }
}

impl StaticToken {
    /// Checks the hash and identity: the failing field and why.
    fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err((
                "sha256",
                "64 hex digits: the SHA-256 of the token, not the token",
            ));
        }
        if self.identity.is_empty() {
            return Err(("identity", "must not be empty"));
        }
        Ok(())
    }
}

/// `[[auth.tokens]]`: one static bearer token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Lower-case hex SHA-256 of the token (`printf %s "$TOKEN" | sha256sum`).
    pub sha256: String,
    /// The identity the token stands for.
    pub identity: String,
    /// Groups of that identity.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `[auth.jwt]`: JSON Web Tokens (HS256 with a shared secret, or RS256/ES256 with keys from a
/// JWKS file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// File holding the HS256 secret (its bytes, trailing newline removed).
    #[serde(default)]
    pub hs256_secret_file: Option<PathBuf>,
    /// JWKS file with the RS256/ES256 public keys (chosen by the token's `kid`).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// The claim listing the identity's groups. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Claims (non-secret) copied into published events' `authclaims`. Default none.
    #[serde(default)]
    pub audit_claims: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`. Default `30s`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
}

fn default_groups_claim() -> String {
    "groups".into()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// `[[auth.grants]]`: lets identities and groups act on a stream's subjects.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// Identities granted.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Groups granted.
    #[serde(default)]
    pub groups: Vec<String>,
    /// What they may do: `publish`, `subscribe`, `admin`.
    pub actions: Vec<Action>,
    /// The stream, or `*` for every stream.
    pub stream: String,
    /// NATS subject patterns within the stream. Default `[">"]`: all of them.
    #[serde(default = "all_subjects")]
    pub subjects: Vec<String>,
}

fn all_subjects() -> Vec<String> {
    vec![">".into()]
}

/// An action a grant allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Publish events.
    Publish,
    /// Watch and subscribe; resume, acknowledge and inspect one's own durables.
    Subscribe,
    /// Administer: every durable of the stream (list, seek, delete), stream details.
    Admin,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Admin => "admin",
        })
    }
}

/// `[[streams]]`: one JetStream stream the gateway declares.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamSettings {
    /// Stream name (JetStream rules: no spaces, `.`, `*`, `>`, path separators). Required.
    pub name: String,
    /// NATS subjects the stream captures, e.g. `["events.>"]`. Required.
    pub subjects: Vec<String>,
    /// Template of the subject an event is stored on; `{source}`, `{subject}`, `{type}`,
    /// `{id}` and `{<extension>}` are replaced by escaped attribute values. It must fall
    /// within `subjects`. Default: `<first subject without its wildcard>.{source}.{subject}`.
    #[serde(default)]
    pub subject_template: Option<String>,
    /// `file` or `memory`. Default `file`.
    #[serde(default = "default_storage")]
    pub storage: Storage,
    /// Replicas (1, or 3 and 5 in a cluster). Default 1.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Discard events older than this; `0s` keeps them forever. Default `0s`.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Duration,
    /// Discard the oldest events beyond this many bytes; -1 means unlimited. Default -1.
    #[serde(default = "minus_one")]
    pub max_bytes: i64,
    /// Window in which a repeated `source` + `id` is recognised as a duplicate. Default `2m`.
    #[serde(default = "default_duplicate_window", with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Events kept per subject (per resource with the default template); -1 means unlimited.
    /// Default -1.
    #[serde(default = "minus_one")]
    pub max_messages_per_subject: i64,
    /// A CESQL expression that marks deletion events (left out of snapshots). Default none.
    #[serde(default)]
    pub tombstone: Option<String>,
    /// Subject to which events that were terminated or exhausted their deliveries are copied,
    /// with the reason as extension attributes; it should be captured by a declared stream.
    /// Default: none (such events are only logged).
    #[serde(default)]
    pub dead_letter_subject: Option<String>,
}

/// JetStream storage type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk.
    File,
    /// In memory.
    Memory,
}

fn default_storage() -> Storage {
    Storage::File
}
fn default_replicas() -> usize {
    1
}
fn minus_one() -> i64 {
    -1
}
fn default_duplicate_window() -> Duration {
    Duration::from_secs(120)
}

impl Settings {
    /// Loads the defaults, then `file` (if any), then `JETWATCH__…` environment variables, and
    /// validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder().add_source(config::File::from_str(
            DEFAULT_TOML,
            config::FileFormat::Toml,
        ));
        if let Some(path) = file {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        builder = builder.add_source(
            config::Environment::with_prefix("JETWATCH")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                // Lists from the environment are comma-separated.
                .list_separator(",")
                .with_list_parse_key("http.cors_allowed_origins"),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// The built-in defaults.
    pub fn defaults() -> Settings {
        Settings::load(None).expect("the built-in default configuration is valid")
    }

    /// Checks every rule that does not need NATS.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.streams.is_empty() {
            return invalid("streams".into(), "declare at least one stream".into());
        }
        let mut names = HashSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            if s.name.is_empty()
                || s.name
                    .chars()
                    .any(|c| c.is_whitespace() || ".*>/\\".contains(c))
            {
                return invalid(
                    format!("streams[{i}].name"),
                    format!(
                        "`{}` is not a valid stream name (no spaces, `.`, `*`, `>`, `/`)",
                        s.name
                    ),
                );
            }
            if !names.insert(s.name.as_str()) {
                return invalid(
                    format!("streams[{i}].name"),
                    format!("`{}` is declared twice", s.name),
                );
            }
            if s.subjects.is_empty() {
                return invalid(
                    format!("streams[{i}].subjects"),
                    "list at least one subject".into(),
                );
            }
            for subject in &s.subjects {
                if !crate::wildcard::is_valid_pattern(subject) {
                    return invalid(
                        format!("streams[{i}].subjects"),
                        format!("`{subject}` is not a valid NATS subject pattern"),
                    );
                }
            }
            let template = s.template_source();
            let parsed = SubjectTemplate::parse(&template).map_err(|e| ConfigError::Invalid {
                key: format!("streams[{i}].subject_template"),
                reason: e.to_string(),
            })?;
            if !template_fits(&parsed, &s.subjects) {
                return invalid(
                    format!("streams[{i}].subject_template"),
                    format!(
                        "subjects rendered by `{template}` would not be captured by the stream's \
                         subjects {:?}",
                        s.subjects
                    ),
                );
            }
            if ![1, 3, 5].contains(&s.replicas) {
                return invalid(format!("streams[{i}].replicas"), "use 1, 3 or 5".into());
            }
            if let Err(e) = s.tombstone_filter() {
                return invalid(format!("streams[{i}].tombstone"), e.to_string());
            }
            if s.duplicate_window.is_zero() {
                return invalid(
                    format!("streams[{i}].duplicate_window"),
                    "must be positive: idempotent publishing relies on it".into(),
                );
            }
        }
        let sub = &self.subscribe;
        for (key, value, low, high) in [
            ("subscribe.max_subjects", sub.max_subjects, 1, usize::MAX),
            (
                "subscribe.max_filter_terms",
                sub.max_filter_terms,
                1,
                usize::MAX,
            ),
            (
                "subscribe.max_filter_depth",
                sub.max_filter_depth,
                1,
                crate::filter::MAX_DEPTH,
            ),
            (
                "subscribe.max_expression_bytes",
                sub.max_expression_bytes,
                1,
                crate::filter::cesql::MAX_EXPRESSION_LEN,
            ),
            (
                "server.max_request_bytes",
                self.server.max_request_bytes,
                64 * 1024,
                u32::MAX as usize,
            ),
        ] {
            if !(low..=high).contains(&value) {
                return invalid(
                    key.into(),
                    if high == usize::MAX {
                        format!("must be at least {low}")
                    } else {
                        format!("must be between {low} and {high}")
                    },
                );
            }
        }
        if self.publish.max_event_bytes > 0
            && self.publish.max_event_bytes + 64 * 1024 > self.server.max_request_bytes
        {
            return invalid(
                "server.max_request_bytes".into(),
                format!(
                    "must exceed publish.max_event_bytes ({}) by at least 65536 bytes, room for \
                     the event's envelope",
                    self.publish.max_event_bytes
                ),
            );
        }
        self.validate_security(&names)?;
        let h = &self.http;
        if h.max_body_bytes < self.publish.max_event_bytes.max(1024) {
            return invalid(
                "http.max_body_bytes".into(),
                format!(
                    "must be at least publish.max_event_bytes ({}) and 1024",
                    self.publish.max_event_bytes
                ),
            );
        }
        if h.max_batch_events == 0 {
            return invalid("http.max_batch_events".into(), "must be at least 1".into());
        }
        if h.keepalive_interval.is_zero() || h.sse_retry.is_zero() {
            return invalid(
                "http.keepalive_interval".into(),
                "http.keepalive_interval and http.sse_retry must be more than zero".into(),
            );
        }
        for (i, o) in h.cors_allowed_origins.iter().enumerate() {
            let valid = o == "*"
                || (url::Url::parse(o).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host().is_some()
                        && u.origin().ascii_serialization() == *o
                }));
            if !valid {
                return invalid(
                    format!("http.cors_allowed_origins[{i}]"),
                    format!(
                        "`{o}` is not an origin: write `scheme://host[:port]` with no path or \
                         trailing slash, or `*`"
                    ),
                );
            }
        }
        let p = &self.push;
        for (i, net) in p.allowed_networks.iter().enumerate() {
            if net.parse::<ipnet::IpNet>().is_err() && net.parse::<std::net::IpAddr>().is_err() {
                return invalid(
                    format!("push.allowed_networks[{i}]"),
                    format!("`{net}` is not a CIDR network or an address"),
                );
            }
        }
        if p.backoff_initial.is_zero() || p.backoff_max < p.backoff_initial {
            return invalid(
                "push.backoff_initial".into(),
                "must be positive and at most push.backoff_max".into(),
            );
        }
        if p.reload_interval.is_zero() {
            return invalid("push.reload_interval".into(), "must be positive".into());
        }
        for (i, spec) in p.subscriptions.iter().enumerate() {
            if let Err(e) = spec.validate(p, &format!("push.subscriptions[{i}]")) {
                return invalid(format!("push.subscriptions[{i}]"), e.to_string());
            }
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sample_ratio) {
            return invalid(
                "telemetry.sample_ratio".into(),
                "must be between 0 and 1".into(),
            );
        }
        if t.max_queued_spans == 0 {
            return invalid(
                "telemetry.max_queued_spans".into(),
                "must be at least 1".into(),
            );
        }
        if let Some(endpoint) = &t.otlp_endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return invalid(
                    "telemetry.otlp_endpoint".into(),
                    format!("`{endpoint}` must be an http:// or https:// URL"),
                );
            }
        }
        let n = &self.nats;
        let methods = [
            n.user.is_some() || n.password_file.is_some(),
            n.token_file.is_some(),
            n.nkey_seed_file.is_some(),
            n.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return invalid(
                "nats".into(),
                "use one of user/password_file, token_file, nkey_seed_file, creds_file".into(),
            );
        }
        if n.user.is_some() != n.password_file.is_some() {
            return invalid(
                "nats.password_file".into(),
                "set both user and password_file".into(),
            );
        }
        if n.tls_cert_file.is_some() != n.tls_key_file.is_some() {
            return invalid(
                "nats.tls_key_file".into(),
                "set both tls_cert_file and tls_key_file".into(),
            );
        }
        if !names.contains(self.publish.default_stream.as_str()) {
            return invalid(
                "publish.default_stream".into(),
                format!(
                    "`{}` is not one of the declared streams",
                    self.publish.default_stream
                ),
            );
        }
        if self.publish.max_pending_acks == 0 {
            return invalid(
                "publish.max_pending_acks".into(),
                "must be at least 1".into(),
            );
        }
        let sub = &self.subscribe;
        if sub.default_max_in_flight == 0 || sub.default_max_in_flight > sub.max_in_flight_limit {
            return invalid(
                "subscribe.default_max_in_flight".into(),
                "must be between 1 and subscribe.max_in_flight_limit".into(),
            );
        }
        for (key, value) in [
            ("fanout.batch", self.fanout.batch),
            ("fanout.catchup_reads", self.fanout.catchup_reads),
            ("fanout.read_bytes", self.fanout.read_bytes),
            ("fanout.snapshot_reads", self.fanout.snapshot_reads),
            ("fanout.snapshot_batch", self.fanout.snapshot_batch),
        ] {
            if value == 0 {
                return invalid(key.into(), "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The declared stream called `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamSettings> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// Whether the subjects `template` renders fall within the stream's `subjects`, checked on a
/// sample event.
fn template_fits(template: &SubjectTemplate, subjects: &[String]) -> bool {
    let mut sample = crate::event::Event {
        id: "id".into(),
        source: "/sample/source".into(),
        spec_version: crate::event::SPEC_VERSION.into(),
        ty: "sample.type".into(),
        ..Default::default()
    };
    sample.set(
        "subject",
        crate::event::AttributeValue::String("sample".into()),
    );
    match template.render(&sample) {
        Ok(rendered) => subjects
            .iter()
            .any(|p| crate::wildcard::matches(p, &rendered)),
        // A template naming an extension the sample lacks: checked per event at publish.
        Err(_) => true,
    }
}

impl StreamSettings {
    /// The compiled tombstone predicate, if one is configured.
    pub fn tombstone_filter(
        &self,
    ) -> Result<Option<crate::filter::Filter>, crate::filter::FilterError> {
        self.tombstone
            .as_ref()
            .map(|sql| crate::filter::Filter::compile(&crate::filter::FilterSpec::Sql(sql.clone())))
            .transpose()
    }

    /// The subject template in force: the configured one or the default.
    pub fn template_source(&self) -> String {
        match &self.subject_template {
            Some(t) => t.clone(),
            None => {
                let first = self
                    .subjects
                    .first()
                    .map(String::as_str)
                    .unwrap_or("events.>");
                let prefix = first.trim_end_matches(".>").trim_end_matches(".*");
                format!("{prefix}.{{source}}.{{subject}}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_are_valid() {
        let s = Settings::defaults();
        assert_eq!(s.publish.default_stream, "events");
        assert_eq!(s.streams[0].template_source(), "events.{source}.{subject}");
    }

    #[test]
    fn a_bad_stream_name_is_refused_with_its_key() {
        let mut s = Settings::defaults();
        s.streams[0].name = "a.b".into();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("streams[0].name"), "{err}");
    }

    #[test]
    fn a_template_outside_the_stream_subjects_is_refused() {
        let mut s = Settings::defaults();
        s.streams[0].subject_template = Some("other.{source}.{subject}".into());
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("subject_template"), "{err}");
    }
}
