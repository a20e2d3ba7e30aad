//! One push subscription's deliveries on this gateway: pulls from its durable (shared with the
//! other gateways, so each event goes to one of them), delivers up to `concurrency` at once,
//! retries in place (keeping the event's position, so `ordered` holds), and settles each event
//! once: acknowledged, or dead-lettered and terminated.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::deliver::{self, Attempt};
use super::spec::PushSpec;
use super::Shared;
use crate::event::AttributeValue;
use crate::filter::{Filter, FilterSpec};
use crate::store::{Acker, Delivered};

/// Runs `spec`'s deliveries until `stop`.
pub(super) async fn run(spec: PushSpec, shared: Arc<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result = tokio::select! {
            r = serve(&spec, &shared, &stop) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(push = spec.name, error = %e, ?backoff, "push subscription interrupted; resuming");
                shared
                    .status
                    .error(&spec.name, format!("reading the stream: {e}"));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn serve(
    spec: &PushSpec,
    shared: &Arc<Shared>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let settings = &shared.settings;
    let consumer = super::open_durable(&shared.store, spec, settings)
        .await
        .map_err(|e| e.to_string())?;
    let filter = match &spec.filter {
        Some(sql) => Some(Arc::new(
            Filter::compile(&FilterSpec::Sql(sql.clone())).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let url = super::spec::check_url(&spec.url, settings)?;
    let secrets: Vec<Vec<u8>> = spec
        .secrets
        .iter()
        .map(|s| super::sign::key(s))
        .collect::<Result<_, _>>()?;
    let job = Arc::new(Job {
        spec: spec.clone(),
        url,
        secrets,
        filter,
        timeout: spec.timeout(settings),
        max_attempts: spec.max_attempts(settings),
        shared: shared.clone(),
    });
    let permits = Arc::new(Semaphore::new(spec.concurrency() as usize));
    loop {
        // Pull only what can be delivered now: the rest stays for the other gateways.
        let free = permits.available_permits().max(1);
        let first = tokio::select! {
            p = permits.clone().acquire_many_owned(1) => p.map_err(|e| e.to_string())?,
            () = stop.cancelled() => return Ok(()),
        };
        let mut pull = consumer
            .pull(free, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        let mut permit = Some(first);
        while let Some(next) = pull.next().await {
            let delivered = next.map_err(|e| e.to_string())?;
            let p = match permit.take() {
                Some(p) => p,
                None => permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| e.to_string())?,
            };
            let job = job.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                job.handle(delivered, &stop).await;
                drop(p);
            });
        }
    }
}

/// What every delivery of one subscription shares.
struct Job {
    spec: PushSpec,
    url: url::Url,
    secrets: Vec<Vec<u8>>,
    filter: Option<Arc<Filter>>,
    timeout: Duration,
    max_attempts: u32,
    shared: Arc<Shared>,
}

impl Job {
    /// Delivers one event until it is acknowledged or given up on.
    async fn handle(&self, d: Delivered, stop: &CancellationToken) {
        let Delivered {
            raw,
            delivery_count,
            acker,
        } = d;
        let sequence = raw.sequence;
        let Some(stored) = crate::engine::decode_stored(raw) else {
            // Not a CloudEvent: nothing an endpoint could do with it.
            let _ = acker.term().await;
            return;
        };
        if self
            .filter
            .as_ref()
            .is_some_and(|f| !f.matches(&stored.event))
        {
            let _ = acker.ack().await;
            return;
        }
        // Stable across attempts, gateways and redeliveries: receivers deduplicate on it.
        let id = format!("{}-{}-{sequence}", self.spec.name, self.spec.stream);
        let mut attempts = delivery_count.saturating_sub(1);
        let mut backoff = self.shared.settings.backoff_initial;
        loop {
            attempts += 1;
            let request = match deliver::request(
                &stored.event,
                &id,
                self.spec.structured,
                &self.secrets,
                &self.spec.headers,
            ) {
                Ok(r) => r,
                Err(e) => {
                    self.give_up(
                        &stored,
                        &acker,
                        attempts,
                        None,
                        &format!("cannot build the request: {e}"),
                    )
                    .await;
                    return;
                }
            };
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                o = deliver::attempt(&self.shared.client, &self.url, request, self.timeout, &self.shared.settings) => o,
                () = stop.cancelled() => {
                    // Leaving: the event goes back to the durable for another gateway.
                    let _ = acker.nak(Duration::ZERO).await;
                    return;
                }
            };
            self.shared
                .metrics
                .attempt(&self.spec.name, outcome.class(), started.elapsed());
            match outcome {
                Attempt::Delivered { .. } => {
                    let _ = acker.ack().await;
                    self.shared.status.success(&self.spec.name, sequence);
                    return;
                }
                Attempt::Refused { status, body } => {
                    let reason = format!("the endpoint refused it with HTTP {status}");
                    self.shared
                        .status
                        .error(&self.spec.name, format!("{reason}: {body}"));
                    self.give_up(&stored, &acker, attempts, Some((status, body)), &reason)
                        .await;
                    return;
                }
                Attempt::Retry {
                    status,
                    reason,
                    after,
                } => {
                    self.shared.status.error(&self.spec.name, reason.clone());
                    if attempts >= self.max_attempts {
                        let why = format!("{attempts} attempts failed; the last: {reason}");
                        let last = status.map(|s| (s, reason.clone()));
                        self.give_up(&stored, &acker, attempts, last, &why).await;
                        return;
                    }
                    // Exponential with jitter (between half and all of it), at least what the
                    // endpoint asked for.
                    let half = backoff / 2;
                    let wait =
                        (half + half.mul_f64(fastrand::f64())).max(after.unwrap_or_default());
                    backoff = (backoff * 2).min(self.shared.settings.backoff_max);
                    if !self.hold(&acker, wait, stop).await {
                        let _ = acker.nak(Duration::ZERO).await;
                        return;
                    }
                }
            }
        }
    }

    /// Waits `wait` while keeping the event (JetStream's ack deadline is extended as it
    /// goes). `false` when the gateway is stopping.
    async fn hold(&self, acker: &Acker, wait: Duration, stop: &CancellationToken) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let _ = acker.in_progress().await;
            let step =
                (self.timeout).min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            if step.is_zero() {
                return true;
            }
            tokio::select! {
                () = tokio::time::sleep(step) => {}
                () = stop.cancelled() => return false,
            }
        }
    }

    /// Copies the event to the dead-letter subject (when there is one) with why, then
    /// terminates it.
    async fn give_up(
        &self,
        stored: &crate::engine::StoredEvent,
        acker: &Acker,
        attempts: u32,
        last: Option<(u16, String)>,
        reason: &str,
    ) {
        self.shared.metrics.dead_letter(&self.spec.name);
        tracing::warn!(
            push = self.spec.name,
            sequence = stored.sequence,
            reason,
            "push delivery given up"
        );
        if let Some(subject) = &self.spec.dead_letter_subject {
            let mut why = vec![
                (
                    "deadletterreason",
                    AttributeValue::String(reason.to_owned()),
                ),
                (
                    "deadletterpush",
                    AttributeValue::String(self.spec.name.clone()),
                ),
                (
                    "deadlettersequence",
                    AttributeValue::String(stored.sequence.to_string()),
                ),
                (
                    "deadletterattempts",
                    AttributeValue::Integer(i32::try_from(attempts).unwrap_or(i32::MAX)),
                ),
            ];
            if let Some((status, body)) = last {
                why.push((
                    "deadletterstatus",
                    AttributeValue::Integer(i32::from(status)),
                ));
                why.push(("deadletterbody", AttributeValue::String(body)));
            }
            match crate::publish::dead_letter(&self.shared.store, subject, &stored.event, why).await
            {
                Ok(()) => {}
                Err(crate::error::Error::Internal(e)) => {
                    tracing::warn!(error = %e, "dead letter not written")
                }
                Err(e) => {
                    // Not terminated: it comes back and is given up on again.
                    tracing::warn!(error = %e, "dead-lettering failed; the event will be retried");
                    let _ = acker.nak(Duration::from_secs(1)).await;
                    return;
                }
            }
        }
        let _ = acker.term().await;
    }
}
