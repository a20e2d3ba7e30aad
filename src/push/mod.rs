//! Push subscriptions: events POSTed to HTTPS webhooks in the CloudEvents HTTP binding, signed
//! (Standard Webhooks), retried with backoff and dead-lettered, on the same durable positions
//! and filters as gRPC subscribers.
//!
//! A push subscription's definition lives in a JetStream key-value bucket (`spec.<name>`);
//! every gateway runs a worker for each one that is not paused, all pulling from the same
//! durable (`push-<name>`), so JetStream hands each event to one of them and a gateway that
//! dies mid-delivery loses nothing (the event comes back after its ack deadline).
//! [`PushAdmin`] creates, updates, pauses, resumes, lists and deletes them; the configuration
//! may declare some (`[[push.subscriptions]]`).

mod deliver;
pub mod sign;
pub mod spec;
mod worker;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::PushSettings;
use crate::error::Error;
use crate::store::{ConsumerSpec, ConsumerStart, ConsumerState, StartAt, Store};
use crate::telemetry::metrics::{PushLabels, SubscriptionLabels};
use crate::telemetry::METRICS;
pub use spec::{PushSpec, StartSpec};

/// Whether `net` (CIDR, e.g. `10.0.0.0/8`, or one address) contains `ip`.
pub(crate) fn cidr_contains(net: &str, ip: IpAddr) -> bool {
    match net.parse::<ipnet::IpNet>() {
        Ok(n) => n.contains(&ip),
        Err(_) => net.parse::<IpAddr>().is_ok_and(|a| a == ip),
    }
}

/// What a push subscription last did on this gateway.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushStatus {
    /// When an event was last acknowledged by the endpoint.
    pub last_success: Option<chrono::DateTime<chrono::Utc>>,
    /// The sequence of that event.
    pub last_success_sequence: u64,
    /// When an attempt last failed.
    pub last_error_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Why.
    pub last_error: Option<String>,
}

/// Statuses, kept here and written to the bucket (`status.<name>`) at most once a second.
#[derive(Debug, Default)]
pub(crate) struct StatusBoard {
    statuses: Mutex<HashMap<String, PushStatus>>,
    dirty: Mutex<HashMap<String, bool>>,
}

impl StatusBoard {
    fn success(&self, name: &str, sequence: u64) {
        let mut s = self.statuses.lock();
        let status = s.entry(name.to_owned()).or_default();
        status.last_success = Some(chrono::Utc::now());
        status.last_success_sequence = sequence;
        self.dirty.lock().insert(name.to_owned(), true);
    }

    fn error(&self, name: &str, error: String) {
        let mut s = self.statuses.lock();
        let status = s.entry(name.to_owned()).or_default();
        status.last_error_at = Some(chrono::Utc::now());
        status.last_error = Some(error);
        self.dirty.lock().insert(name.to_owned(), true);
    }

    fn take_dirty(&self) -> Vec<(String, PushStatus)> {
        let names: Vec<String> = self.dirty.lock().drain().map(|(k, _)| k).collect();
        let statuses = self.statuses.lock();
        names
            .into_iter()
            .filter_map(|n| statuses.get(&n).cloned().map(|s| (n, s)))
            .collect()
    }
}

/// Push metrics.
#[derive(Debug, Default)]
pub(crate) struct PushMetrics;

impl PushMetrics {
    fn attempt(&self, name: &str, class: &str, took: Duration) {
        if !crate::telemetry::metrics::enabled() {
            return;
        }
        METRICS
            .push_attempts
            .get_or_create(&PushLabels {
                subscription: name.to_owned(),
                class: class.to_owned(),
            })
            .inc();
        METRICS
            .push_duration
            .get_or_create(&SubscriptionLabels {
                subscription: name.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    fn dead_letter(&self, name: &str) {
        if crate::telemetry::metrics::enabled() {
            METRICS
                .push_dead_letters
                .get_or_create(&SubscriptionLabels {
                    subscription: name.to_owned(),
                })
                .inc();
        }
    }
}

/// What the workers of one gateway share.
#[derive(Debug)]
pub(crate) struct Shared {
    store: Store,
    settings: Arc<PushSettings>,
    client: reqwest::Client,
    status: StatusBoard,
    metrics: PushMetrics,
}

/// Opens (creating it when missing) the durable of `spec`.
async fn open_durable(
    store: &Store,
    spec: &PushSpec,
    settings: &PushSettings,
) -> Result<crate::store::Consumer, Error> {
    let start = match spec
        .start
        .parse::<StartSpec>()
        .map_err(|e| Error::invalid("start", e))?
    {
        StartSpec::New => ConsumerStart::New,
        StartSpec::Earliest => ConsumerStart::All,
        StartSpec::Sequence(n) => ConsumerStart::At(StartAt::Sequence(n)),
        StartSpec::Time(t) => ConsumerStart::At(StartAt::Time(t)),
    };
    let (consumer, _) = store
        .open_consumer(
            &spec.stream,
            &ConsumerSpec {
                durable: Some(spec.durable()),
                subjects: spec.subjects.clone(),
                start,
                // An attempt, plus room to settle it; retries extend it as they wait.
                ack_wait: spec.timeout(settings) + Duration::from_secs(10),
                max_ack_pending: i64::from(spec.concurrency()),
                owner: None,
                admin: true,
            },
        )
        .await?;
    Ok(consumer)
}

/// Runs the workers of every push subscription on this gateway, following the bucket.
pub fn spawn(store: Store, settings: PushSettings, shutdown: CancellationToken) {
    let settings = Arc::new(settings);
    let shared = Arc::new(Shared {
        client: deliver::client(&settings),
        store,
        settings,
        status: StatusBoard::default(),
        metrics: PushMetrics,
    });
    tokio::spawn(async move {
        let mut running: HashMap<String, (PushSpec, CancellationToken)> = HashMap::new();
        loop {
            match list_specs(&shared.store).await {
                Ok(specs) => reconcile(&shared, &mut running, specs, &shutdown),
                Err(e) => tracing::debug!(error = %e, "cannot read the push subscriptions"),
            }
            for (name, status) in shared.status.take_dirty() {
                if let Ok(json) = serde_json::to_vec(&status) {
                    let _ = shared
                        .store
                        .push_put(&format!("status.{name}"), Bytes::from(json))
                        .await;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(shared.settings.reload_interval) => {}
                () = shutdown.cancelled() => {
                    for (_, (_, stop)) in running.drain() {
                        stop.cancel();
                    }
                    return;
                }
            }
        }
    });
}

/// Starts, restarts and stops workers to match `specs`.
fn reconcile(
    shared: &Arc<Shared>,
    running: &mut HashMap<String, (PushSpec, CancellationToken)>,
    specs: Vec<PushSpec>,
    shutdown: &CancellationToken,
) {
    let wanted: HashMap<String, PushSpec> = specs
        .into_iter()
        .filter(|s| !s.paused)
        .map(|s| (s.name.clone(), s))
        .collect();
    running.retain(|name, (spec, stop)| {
        let keep = wanted.get(name) == Some(spec);
        if !keep {
            stop.cancel();
        }
        keep
    });
    for (name, spec) in wanted {
        if running.contains_key(&name) {
            continue;
        }
        let stop = shutdown.child_token();
        tracing::info!(push = name, url = spec.url, "push subscription running");
        tokio::spawn(worker::run(spec.clone(), shared.clone(), stop.clone()));
        running.insert(name, (spec, stop));
    }
}

async fn list_specs(store: &Store) -> Result<Vec<PushSpec>, Error> {
    Ok(store
        .push_entries("spec.")
        .await?
        .into_iter()
        .filter_map(|(key, value)| match serde_json::from_slice(&value) {
            Ok(spec) => Some(spec),
            Err(e) => {
                tracing::warn!(key, error = %e, "an unreadable push subscription is ignored");
                None
            }
        })
        .collect())
}

/// A push subscription with its durable's position and its last status.
#[derive(Debug, Clone)]
pub struct PushInfo {
    /// The definition (secrets included: the caller decides what to show).
    pub spec: PushSpec,
    /// The durable's position and counts, when it exists.
    pub position: Option<ConsumerState>,
    /// The last success and error a gateway recorded.
    pub status: PushStatus,
}

/// Creates, updates, lists and deletes push subscriptions.
#[derive(Debug, Clone)]
pub struct PushAdmin {
    store: Store,
    settings: Arc<PushSettings>,
    client: reqwest::Client,
    default_stream: String,
}

impl PushAdmin {
    /// Push administration over `store`.
    pub fn new(store: Store, settings: PushSettings, default_stream: String) -> PushAdmin {
        let settings = Arc::new(settings);
        PushAdmin {
            client: deliver::client(&settings),
            store,
            settings,
            default_stream,
        }
    }

    fn key(name: &str) -> String {
        format!("spec.{name}")
    }

    /// The definition of `name`.
    pub async fn spec(&self, name: &str) -> Result<PushSpec, Error> {
        let value = self
            .store
            .push_get(&Self::key(name))
            .await?
            .ok_or_else(|| Error::PushNotFound(name.to_owned()))?;
        serde_json::from_slice(&value)
            .map_err(|e| Error::Internal(format!("push subscription `{name}` is unreadable: {e}")))
    }

    /// Creates `spec` (ALREADY_EXISTS if the name is taken): validated, the endpoint's
    /// handshake passed, its durable created (its position starts now), then stored.
    pub async fn create(&self, mut spec: PushSpec) -> Result<PushInfo, Error> {
        if spec.stream.is_empty() {
            spec.stream.clone_from(&self.default_stream);
        }
        spec.validate(&self.settings, "push")?;
        if self.store.push_get(&Self::key(&spec.name)).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: "push subscription".into(),
                name: spec.name,
            });
        }
        let count = self.store.push_entries("spec.").await?.len();
        if count >= self.settings.max_subscriptions {
            return Err(Error::ResourceExhausted(format!(
                "{count} push subscriptions exist, push.max_subscriptions"
            )));
        }
        self.handshake(&spec.url).await?;
        open_durable(&self.store, &spec, &self.settings).await?;
        self.put(&spec).await?;
        self.info(spec).await
    }

    /// Replaces `name`'s definition with `spec` (its name and stream stay; empty secrets keep
    /// the current ones); a new URL passes the handshake first. Workers pick it up within
    /// `push.reload_interval`.
    pub async fn update(&self, mut spec: PushSpec) -> Result<PushInfo, Error> {
        let current = self.spec(&spec.name).await?;
        spec.stream = current.stream.clone();
        if spec.secrets.is_empty() {
            spec.secrets = current.secrets.clone();
        }
        spec.validate(&self.settings, "push")?;
        let mut want = spec.subjects.clone();
        let mut have = current.subjects.clone();
        want.sort();
        have.sort();
        if want != have {
            return Err(Error::invalid(
                "push.subjects",
                "a push subscription's subjects are its durable's and cannot change; delete it \
                 and create it again",
            ));
        }
        if spec.url != current.url {
            self.handshake(&spec.url).await?;
        }
        if spec.concurrency() != current.concurrency()
            || spec.timeout(&self.settings) != current.timeout(&self.settings)
        {
            self.store
                .update_durable_limits(
                    &spec.stream,
                    &spec.durable(),
                    spec.timeout(&self.settings) + Duration::from_secs(10),
                    i64::from(spec.concurrency()),
                )
                .await?;
        }
        self.put(&spec).await?;
        self.info(spec).await
    }

    /// Pauses or resumes `name`.
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<PushInfo, Error> {
        let mut spec = self.spec(name).await?;
        spec.paused = paused;
        self.put(&spec).await?;
        self.info(spec).await
    }

    /// Deletes `name` and its durable (its position is gone).
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        let spec = self.spec(name).await?;
        self.store.push_delete(&Self::key(name)).await?;
        let _ = self.store.push_delete(&format!("status.{name}")).await;
        match self
            .store
            .delete_durable(&spec.stream, &spec.durable())
            .await
        {
            Ok(()) | Err(crate::store::StoreError::ConsumerNotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every push subscription.
    pub async fn list(&self) -> Result<Vec<PushInfo>, Error> {
        let mut out = Vec::new();
        for spec in list_specs(&self.store).await? {
            out.push(self.info(spec).await?);
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    /// One push subscription.
    pub async fn get(&self, name: &str) -> Result<PushInfo, Error> {
        let spec = self.spec(name).await?;
        self.info(spec).await
    }

    /// Declares the configuration's push subscriptions: created when missing, updated when
    /// different (no handshake for declared ones: the operator vouches for them).
    pub async fn declare(&self, specs: &[PushSpec]) -> Result<(), Error> {
        for (i, spec) in specs.iter().enumerate() {
            let mut spec = spec.clone();
            if spec.stream.is_empty() {
                spec.stream.clone_from(&self.default_stream);
            }
            spec.validate(&self.settings, &format!("push.subscriptions[{i}]"))?;
            let current = self.spec(&spec.name).await.ok();
            if current.as_ref() != Some(&spec) {
                open_durable(&self.store, &spec, &self.settings).await?;
                self.put(&spec).await?;
            }
        }
        Ok(())
    }

    async fn put(&self, spec: &PushSpec) -> Result<(), Error> {
        let json = serde_json::to_vec(spec).map_err(|e| Error::Internal(e.to_string()))?;
        self.store
            .push_put(&Self::key(&spec.name), Bytes::from(json))
            .await?;
        Ok(())
    }

    async fn info(&self, spec: PushSpec) -> Result<PushInfo, Error> {
        let position = self.store.durable(&spec.stream, &spec.durable()).await.ok();
        let status = match self.store.push_get(&format!("status.{}", spec.name)).await {
            Ok(Some(v)) => serde_json::from_slice(&v).unwrap_or_default(),
            _ => PushStatus::default(),
        };
        Ok(PushInfo {
            spec,
            position,
            status,
        })
    }

    /// The CloudEvents webhook abuse protection: `OPTIONS` with `WebHook-Request-Origin`,
    /// expecting a 2xx with `WebHook-Allowed-Origin` naming this origin (or `*`). Off with
    /// `push.handshake = false`.
    async fn handshake(&self, url: &str) -> Result<(), Error> {
        if !self.settings.handshake {
            return Ok(());
        }
        let origin = &self.settings.origin;
        let refused = |why: String| {
            Error::FailedPrecondition(format!(
                "the endpoint {url} did not accept deliveries from `{origin}` (CloudEvents \
                 webhook validation: {why}); answer OPTIONS with WebHook-Allowed-Origin, or set \
                 push.handshake = false"
            ))
        };
        let response = self
            .client
            .request(reqwest::Method::OPTIONS, url)
            .header("WebHook-Request-Origin", origin.as_str())
            .header("WebHook-Request-Rate", "120")
            .timeout(self.settings.default_timeout)
            .send()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !response.status().is_success() {
            return Err(refused(format!("HTTP {}", response.status().as_u16())));
        }
        let allowed = response
            .headers()
            .get("WebHook-Allowed-Origin")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if allowed == "*" || allowed == origin {
            Ok(())
        } else {
            Err(refused(format!("WebHook-Allowed-Origin is `{allowed}`")))
        }
    }
}
