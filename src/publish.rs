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

/// A publish handed to JetStream, awaiting acknowledgement.
#[derive(Debug)]
pub struct InFlight {
    stream: String,
    subject: String,
    ack: PendingAck,
}

impl InFlight {
    /// Waits for JetStream's acknowledgement.
    pub async fn wait(self) -> Result<Published, Error> {
        let result = self.wait_inner().await;
        count(&result.as_ref().map(|p| p.duplicate).map_err(|_| ()));
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

/// Counts a publish outcome in the metrics (`Ok(duplicate)` or a failure).
fn count(outcome: &Result<bool, ()>) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = &crate::telemetry::COUNTERS;
    match outcome {
        Ok(false) => c.published.fetch_add(1, Relaxed),
        Ok(true) => c.duplicates.fetch_add(1, Relaxed),
        Err(()) => c.publish_errors.fetch_add(1, Relaxed),
    };
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

    /// Validates, encodes and sends one event; the returned [`InFlight`] yields the ack.
    pub async fn send(&self, req: PublishRequest) -> Result<InFlight, Error> {
        let inner = &self.inner;
        let stream = if req.stream.is_empty() {
            inner.default_stream.clone()
        } else {
            req.stream
        };
        let template = inner
            .templates
            .get(&stream)
            .ok_or_else(|| Error::StreamNotFound(stream.clone()))?;
        let mut event = req.event;
        let caller = req.caller.as_deref();
        inner.auth.admit_publish(caller)?;
        if let Some(identity) = caller {
            // Who published, from the verified identity: whatever the client sent is replaced
            // (the CloudEvents `authcontext` extension).
            stamp_authcontext(&mut event, identity);
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
        let msg_id = codec::dedup_key(&event.source, &event.id);
        // The store refuses a message over the configured limit or the server's max_payload,
        // measured as NATS counts it (EventTooLarge), before sending it.
        let ack = inner
            .store
            .publish(
                subject.clone(),
                encoded,
                &msg_id,
                req.expected_subject_sequence,
                inner.max_event_bytes,
            )
            .await?;
        Ok(InFlight {
            stream,
            subject,
            ack,
        })
    }

    /// Publishes one event and waits for it to be stored.
    pub async fn publish(&self, req: PublishRequest) -> Result<Published, Error> {
        match self.send(req).await {
            Ok(f) => f.wait().await,
            Err(e) => {
                count(&Err(()));
                Err(e)
            }
        }
    }
}
