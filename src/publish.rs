//! The publish path: validate, choose the subject, encode, and store with a dedup key.
//!
//! [`Publisher::send`] does everything up to handing the message to JetStream and returns an
//! [`InFlight`] whose acknowledgement is awaited separately, so `PublishStream` can pipeline
//! many publishes while answering in request order. Nothing is stored for an event that fails
//! validation, subject rendering or encoding: those all happen before the send.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{Auth, Identity};
use crate::codec;
use crate::config::{Action, Settings};
use crate::error::Error;
use crate::event::{AttributeValue, Event};
use crate::store::{PendingAck, Store};
use crate::subject::SubjectTemplate;
use crate::telemetry::metrics::{Outcome, PublishLabels, StreamLabels};
use crate::telemetry::trace::{self, TraceHeaders};
use crate::telemetry::METRICS;
use tracing::Instrument as _;

/// One publish, in domain terms.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// The event.
    pub event: Event,
    /// The stream; empty means the default stream.
    pub stream: String,
    /// Optimistic concurrency: the subject's expected last sequence (0: none yet).
    pub expected_subject_sequence: Option<u64>,
    /// Who publishes (`None` when authentication is off).
    pub caller: Option<Arc<Identity>>,
    /// The W3C trace context the call carried (gRPC metadata), if any.
    pub trace: Option<TraceHeaders>,
}

/// A stored event's coordinates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The stream.
    pub stream: String,
    /// The subject it was stored on.
    pub subject: String,
    /// Its stream sequence (the original's, for a duplicate).
    pub sequence: u64,
    /// Whether it repeated an event within the duplicate window.
    pub duplicate: bool,
}

/// A publish checked and encoded, not yet sent ([`Publisher::prepare`]).
#[derive(Debug)]
pub struct Ready {
    stream: String,
    subject: String,
    encoded: codec::Encoded,
    msg_id: String,
    expected_subject_sequence: Option<u64>,
    /// Its size as NATS counts it, checked once against the configured limit and the
    /// server's `max_payload`.
    checked: crate::store::Checked,
    started: std::time::Instant,
    bytes: u64,
    span: tracing::Span,
    store_span: tracing::Span,
}

/// A publish handed to JetStream, awaiting acknowledgement.
#[derive(Debug)]
pub struct InFlight {
    stream: String,
    subject: String,
    ack: PendingAck,
    /// When the publish was received.
    started: std::time::Instant,
    /// The encoded message's size.
    bytes: u64,
    /// The publish span, and its JetStream store child, ended with the acknowledgement.
    span: tracing::Span,
    store_span: tracing::Span,
}

impl InFlight {
    /// Waits for JetStream's acknowledgement.
    pub async fn wait(self) -> Result<Published, Error> {
        use tracing::Instrument;
        let (stream, started, bytes) = (self.stream.clone(), self.started, self.bytes);
        let (span, store_span) = (self.span.clone(), self.store_span.clone());
        let result = self.wait_inner().instrument(store_span).await;
        match &result {
            Ok(p) => {
                span.record("sequence", p.sequence);
                span.record("duplicate", p.duplicate);
            }
            Err(e) => {
                span.record("error", tracing::field::display(e));
            }
        }
        let outcome = match &result {
            Ok(p) if p.duplicate => Outcome::duplicate,
            Ok(_) => Outcome::stored,
            Err(e) => outcome_of(e),
        };
        record(&stream, outcome, bytes);
        if result.is_ok() {
            METRICS
                .publish_duration
                .get_or_create(&StreamLabels::of(&stream))
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn wait_inner(self) -> Result<Published, Error> {
        let ack = self.ack.ack().await?;
        Ok(Published {
            stream: self.stream,
            subject: self.subject,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
}

/// Sets the CloudEvents `authcontext` attributes (`authtype`, `authid`, and `authclaims` with the
/// configured audit claims as JSON) from `identity`.
fn stamp_authcontext(event: &mut Event, identity: &Identity) {
    event.set(
        "authtype",
        AttributeValue::String(identity.kind.authtype().to_owned()),
    );
    event.set("authid", AttributeValue::String(identity.id.clone()));
    if identity.claims.is_empty() {
        event.attributes.remove("authclaims");
    } else {
        let claims = serde_json::to_string(&identity.claims).unwrap_or_default();
        event.set("authclaims", AttributeValue::String(claims));
    }
}

/// How a failed publish is counted.
fn outcome_of(e: &Error) -> Outcome {
    match e {
        Error::InvalidArgument { .. }
        | Error::InvalidEvent(_)
        | Error::EventTooLarge { .. }
        | Error::RequestTooLarge { .. }
        | Error::MalformedRequest(_)
        | Error::StreamNotFound(_) => Outcome::invalid,
        Error::SequenceMismatch { .. } => Outcome::rejected_sequence,
        Error::Unauthenticated { .. }
        | Error::PermissionDenied { .. }
        | Error::RateLimited { .. } => Outcome::denied,
        _ => Outcome::error,
    }
}

/// Counts one publish of `bytes` on `stream`.
fn record(stream: &str, outcome: Outcome, bytes: u64) {
    let labels = PublishLabels {
        stream: stream.to_owned(),
        outcome,
    };
    METRICS.publish_events.get_or_create(&labels).inc();
    METRICS.publish_bytes.get_or_create(&labels).inc_by(bytes);
}

/// Copies `event` to the dead-letter `subject` with `why` as extension attributes (the engine's
/// durables and the push workers give up on events the same way). An event that cannot be
/// encoded is `Error::Internal`; a copy JetStream did not store is the store's error.
pub async fn dead_letter(
    store: &Store,
    subject: &str,
    event: &Event,
    why: Vec<(&'static str, AttributeValue)>,
) -> Result<(), Error> {
    let mut copy = event.clone();
    for (name, value) in why {
        copy.set(name, value);
    }
    let encoded = codec::encode(&copy)
        .map_err(|e| Error::Internal(format!("cannot encode a dead-letter copy: {e}")))?;
    store.publish_copy(subject.to_owned(), encoded).await?;
    Ok(())
}

/// Publishes events into the configured streams.
#[derive(Debug, Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    /// Parsed subject template per declared stream.
    templates: HashMap<String, SubjectTemplate>,
    default_stream: String,
    /// The configured size limit in bytes (`usize::MAX` when unset); the server's max_payload
    /// applies too.
    max_event_bytes: usize,
    /// Identities and grants.
    auth: Arc<Auth>,
}

impl Publisher {
    /// Builds the publisher for the declared streams (settings must be validated).
    pub fn new(store: Store, settings: &Settings, auth: Arc<Auth>) -> Result<Publisher, Error> {
        let mut templates = HashMap::new();
        for s in &settings.streams {
            let t = SubjectTemplate::parse(&s.template_source())
                .map_err(|e| Error::Internal(e.to_string()))?;
            templates.insert(s.name.clone(), t);
        }
        let max_event_bytes = match settings.publish.max_event_bytes {
            0 => usize::MAX,
            n => n,
        };
        Ok(Publisher {
            inner: Arc::new(Inner {
                store,
                templates,
                default_stream: settings.publish.default_stream.clone(),
                max_event_bytes,
                auth,
            }),
        })
    }

    /// The stream a request names (the default stream when it names none).
    pub fn default_stream(&self) -> &str {
        &self.inner.default_stream
    }

    /// Validates, encodes and sends one event; the returned [`InFlight`] yields the ack.
    pub async fn send(&self, req: PublishRequest) -> Result<InFlight, Error> {
        let ready = self.prepare(req)?;
        self.send_ready(ready).await
    }

    /// Everything a publish does before it is sent: the rate limit, validation, the subject,
    /// the grant, the encoding and the size as NATS counts it. A publish that passes is sent
    /// by [`Publisher::send_ready`]; one that fails is counted and nothing is sent.
    pub fn prepare(&self, req: PublishRequest) -> Result<Ready, Error> {
        self.prepare_counted(req, true)
    }

    /// [`Publisher::prepare`] for several events that are sent only if all pass: the caller's
    /// rate budget is taken for all of them at once. On failure, the index of the first event
    /// that failed and why; nothing is sent.
    pub fn prepare_all(&self, reqs: Vec<PublishRequest>) -> Result<Vec<Ready>, (usize, Error)> {
        let Some(first) = reqs.first() else {
            return Ok(Vec::new());
        };
        if let Err(limited) = self
            .inner
            .auth
            .admit_publishes(first.caller.as_deref(), reqs.len())
        {
            let e = Error::from(limited);
            record(self.label(self.stream_of(first)), outcome_of(&e), 0);
            return Err((0, e));
        }
        reqs.into_iter()
            .enumerate()
            .map(|(i, req)| self.prepare_counted(req, false).map_err(|e| (i, e)))
            .collect()
    }

    /// Counts a publish refused before it reached the publish path (a request that could not
    /// be read; `stream` as the request named it, empty for the default stream). A stream that
    /// is not declared is counted as `unknown`: request paths must not make metric series.
    pub fn refused(&self, stream: &str, e: &Error) {
        let stream = if stream.is_empty() {
            self.inner.default_stream.as_str()
        } else {
            self.label(stream)
        };
        record(stream, outcome_of(e), 0);
    }

    /// The metrics label of a stream a request named: itself when declared, else `unknown`.
    fn label<'a>(&self, stream: &'a str) -> &'a str {
        if self.inner.templates.contains_key(stream) {
            stream
        } else {
            "unknown"
        }
    }

    fn stream_of<'a>(&'a self, req: &'a PublishRequest) -> &'a str {
        if req.stream.is_empty() {
            &self.inner.default_stream
        } else {
            &req.stream
        }
    }

    fn prepare_counted(&self, req: PublishRequest, admit: bool) -> Result<Ready, Error> {
        let started = std::time::Instant::now();
        let stream = self.stream_of(&req).to_owned();
        self.prepare_inner(req, stream.clone(), started, admit)
            .inspect_err(|e| record(self.label(&stream), outcome_of(e), 0))
    }

    fn prepare_inner(
        &self,
        req: PublishRequest,
        stream: String,
        started: std::time::Instant,
        admit: bool,
    ) -> Result<Ready, Error> {
        let inner = &self.inner;
        // Spans only when they are exported: logs do not need one per publish.
        let span = if trace::exporting() {
            tracing::info_span!(
                "jetwatch.publish",
                otel.kind = "server",
                stream = %stream,
                subject = tracing::field::Empty,
                sequence = tracing::field::Empty,
                duplicate = tracing::field::Empty,
                error = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let template = inner
            .templates
            .get(&stream)
            .ok_or_else(|| Error::StreamNotFound(stream.clone()))?;
        let mut event = req.event;
        let caller = req.caller.as_deref();
        if admit {
            inner.auth.admit_publish(caller)?;
        }
        if let Some(identity) = caller {
            // Who published, from the verified identity: whatever the client sent is replaced
            // (the CloudEvents `authcontext` extension).
            stamp_authcontext(&mut event, identity);
        }
        // The trace this publish belongs to: the event's own, else the call's. The event keeps
        // its own; one without gets the publish span's (or, with no export, the call's), so
        // it is stored and delivered with the event.
        let own = trace::TraceHeaders::of_event(&event);
        if let Some(parent) = own.as_ref().or(req.trace.as_ref()) {
            trace::continue_trace(&span, parent);
        }
        if own.is_none() {
            if let Some(headers) = trace::headers_of(&span).or(req.trace) {
                trace::stamp(&mut event, headers);
            }
        }
        codec::validate_rules(&event).map_err(Error::InvalidEvent)?;
        let subject = template
            .render(&event)
            .map_err(|e| Error::invalid("event", e.to_string()))?;
        if !inner
            .auth
            .allows(caller, Action::Publish, &stream, &subject)
        {
            crate::auth::audit(caller, "publish", &format!("{stream}/{subject}"), "denied");
            return Err(Error::denied(Action::Publish, &stream, Some(&subject)));
        }
        let encoded = codec::encode(&event).map_err(|e| Error::invalid("event", e.to_string()))?;
        let bytes = encoded.size() as u64;
        let msg_id = codec::dedup_key(&event.source, &event.id);
        span.record("subject", subject.as_str());
        let store_span = if trace::exporting() {
            tracing::info_span!(parent: &span, "jetstream.store", otel.kind = "client", subject = %subject)
        } else {
            tracing::Span::none()
        };
        // The size as NATS counts it, against the configured limit and the server's
        // max_payload: refused here, before anything of a batch is sent.
        let checked = inner.store.check_size(
            &encoded,
            &msg_id,
            req.expected_subject_sequence,
            inner.max_event_bytes,
        )?;
        Ok(Ready {
            stream,
            subject,
            encoded,
            msg_id,
            expected_subject_sequence: req.expected_subject_sequence,
            checked,
            started,
            bytes,
            span,
            store_span,
        })
    }

    /// Sends a prepared publish; the returned [`InFlight`] yields the ack.
    pub async fn send_ready(&self, ready: Ready) -> Result<InFlight, Error> {
        let Ready {
            stream,
            subject,
            encoded,
            msg_id,
            expected_subject_sequence,
            checked,
            started,
            bytes,
            span,
            store_span,
        } = ready;
        let sent = self
            .inner
            .store
            .publish_checked(
                subject.clone(),
                encoded,
                &msg_id,
                expected_subject_sequence,
                checked,
            )
            .instrument(store_span.clone())
            .await;
        match sent {
            Ok(ack) => Ok(InFlight {
                stream,
                subject,
                ack,
                started,
                bytes,
                span,
                store_span,
            }),
            Err(e) => {
                let e = Error::from(e);
                record(&stream, outcome_of(&e), 0);
                Err(e)
            }
        }
    }

    /// Publishes one event and waits for it to be stored.
    pub async fn publish(&self, req: PublishRequest) -> Result<Published, Error> {
        self.send(req).await?.wait().await
    }
}
