//! W3C trace context through every event, and OpenTelemetry export over OTLP.
//!
//! A publish's `traceparent`/`tracestate` come from the event's own CloudEvents
//! distributed-tracing extension, else from the gRPC metadata; the publish span continues that
//! trace, and an event without the extension gets it (pointing at the publish span when spans
//! are exported, else as the metadata said), so it is stored with the event and delivered with
//! it: a consumer continues the trace from the delivered event. Delivery spans link to the
//! traces of the events they carry.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::{AttributeValue, Event};

/// Whether spans are exported (an OTLP endpoint is configured and the layer installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; without it, no delivery spans are made at all.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// W3C trace context headers, as gRPC metadata or the CloudEvents extension carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeaders {
    /// `traceparent`: `00-<trace id>-<parent id>-<flags>`.
    pub traceparent: String,
    /// `tracestate`, vendor data, if any.
    pub tracestate: Option<String>,
}

impl TraceHeaders {
    /// The trace context of a call whose headers (or gRPC metadata) `get` reads, when it has a
    /// `traceparent`.
    pub fn of_call<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<TraceHeaders> {
        Some(TraceHeaders {
            traceparent: get("traceparent")?.to_owned(),
            tracestate: get("tracestate").map(str::to_owned),
        })
    }
}

impl TraceHeaders {
    /// The event's distributed-tracing extension, when it has one.
    pub fn of_event(event: &Event) -> Option<TraceHeaders> {
        let get = |name| {
            event
                .attributes
                .get(name)
                .and_then(AttributeValue::as_str)
                .map(str::to_owned)
        };
        Some(TraceHeaders {
            traceparent: get("traceparent")?,
            tracestate: get("tracestate"),
        })
    }

    /// The OpenTelemetry context these headers describe (empty when they do not parse).
    fn context(&self) -> opentelemetry::Context {
        let mut carrier = HashMap::new();
        carrier.insert("traceparent".to_owned(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.insert("tracestate".to_owned(), state.clone());
        }
        TraceContextPropagator::new().extract(&carrier)
    }

    /// The span context these headers describe, when valid.
    pub fn span_context(&self) -> Option<opentelemetry::trace::SpanContext> {
        let cx = self.context();
        let sc = cx.span().span_context().clone();
        sc.is_valid().then_some(sc)
    }
}

/// Makes `span` continue the trace of `parent` (no effect when spans are not exported).
pub fn continue_trace(span: &tracing::Span, parent: &TraceHeaders) {
    let _ = span.set_parent(parent.context());
}

/// The headers that point at `span`, when it is exported (valid context).
pub fn headers_of(span: &tracing::Span) -> Option<TraceHeaders> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    Some(TraceHeaders {
        traceparent: carrier.remove("traceparent")?,
        tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
    })
}

/// Stores `headers` in the event's distributed-tracing extension.
pub fn stamp(event: &mut Event, headers: TraceHeaders) {
    event.set("traceparent", AttributeValue::String(headers.traceparent));
    match headers.tracestate {
        Some(state) => {
            event.set("tracestate", AttributeValue::String(state));
        }
        None => {
            event.attributes.remove("tracestate");
        }
    }
}

/// Links `span` to the traces of up to `max` of `events` that carry one.
pub fn link_events<'a>(span: &tracing::Span, events: impl Iterator<Item = &'a Event>, max: usize) {
    for sc in events
        .filter_map(TraceHeaders::of_event)
        .filter_map(|h| h.span_context())
        .take(max)
    {
        span.add_link(sc);
    }
}
