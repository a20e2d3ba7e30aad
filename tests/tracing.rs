//! W3C trace context through every event, and span export over OTLP to a receiver written
//! here (a tonic server implementing the OTLP trace service).
//!
//! This binary installs the process's tracing subscriber with an OTLP exporter, once, so it
//! holds one test.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span;

/// Collects every span exported to it.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `traceparent` attribute of a delivered event.
fn traceparent(d: &api::Delivery) -> String {
    match d
        .event
        .as_ref()
        .unwrap()
        .attributes
        .get("traceparent")
        .and_then(|v| v.attr.clone())
    {
        Some(ce::cloud_event::cloud_event_attribute_value::Attr::CeString(s)) => s,
        other => panic!("no traceparent on the delivered event: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_runs_from_publish_through_jetstream_to_every_delivery_and_is_exported() {
    // The OTLP receiver.
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let telemetry = jetwatch::config::TelemetrySettings {
        otlp_endpoint: Some(format!("http://{otlp}")),
        ..Default::default()
    };
    let _guard = jetwatch::telemetry::init_gateway_tracing("warn", &telemetry).unwrap();

    let env = TestEnv::start().await;
    let mut subscriber = env.subscriber().await;
    let mut watcher = subscriber.watch(open().build()).await.unwrap().into_inner();
    opened(&mut watcher).await;
    let mut publisher = env.publisher().await;

    // A publish whose call carries a traceparent (the event has none).
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(api::PublishRequest {
        event: Some(widget("t1", "w1", "modified")),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    request
        .metadata_mut()
        .insert("tracestate", "vendor=abc".parse().unwrap());
    publisher.publish(request).await.unwrap();

    // An event with its own trace context (the CloudEvents extension) keeps it.
    let own = "0af7651916cd43dd8448eb211c80319c";
    let mut event = widget("t2", "w2", "modified");
    event.attributes.insert(
        "traceparent".into(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(
                ce::cloud_event::cloud_event_attribute_value::Attr::CeString(format!(
                    "00-{own}-b7ad6b7169203331-01"
                )),
            ),
        },
    );
    publish(&mut publisher, event).await;

    // Delivered with the events: same trace ids, so a consumer continues the traces.
    let first = next_delivery(&mut watcher).await;
    let delivered = traceparent(&first);
    assert!(
        delivered.starts_with(&format!("00-{trace_id}-")),
        "the delivered event continues the caller's trace: {delivered}"
    );
    assert_ne!(
        delivered,
        format!("00-{trace_id}-00f067aa0ba902b7-01"),
        "it points at the gateway's publish span, a child of the caller's"
    );
    let second = next_delivery(&mut watcher).await;
    assert_eq!(
        traceparent(&second),
        format!("00-{own}-b7ad6b7169203331-01"),
        "an event's own trace context is kept as it was"
    );
    drop(watcher);

    // Exported: the publish and store spans in the caller's trace, the publish span with the
    // caller's span as parent, and a delivery span linked to the trace.
    let spans = eventually("the spans to reach the OTLP receiver", || {
        let receiver = receiver.clone();
        async move {
            let spans = receiver.0.lock().unwrap().clone();
            let has = |name: &str, trace: &str| {
                spans
                    .iter()
                    .any(|s| s.name == name && hex(&s.trace_id) == trace)
            };
            let linked = spans.iter().any(|s| {
                s.name == "jetwatch.deliver" && s.links.iter().any(|l| hex(&l.trace_id) == trace_id)
            });
            (has("jetwatch.publish", trace_id)
                && has("jetstream.store", trace_id)
                && has("jetwatch.publish", own)
                && linked)
                .then_some(spans)
        }
    })
    .await;
    let publish_span = spans
        .iter()
        .find(|s| s.name == "jetwatch.publish" && hex(&s.trace_id) == trace_id)
        .unwrap();
    assert_eq!(hex(&publish_span.parent_span_id), "00f067aa0ba902b7");
    let store_span = spans
        .iter()
        .find(|s| s.name == "jetstream.store" && hex(&s.trace_id) == trace_id)
        .unwrap();
    assert_eq!(store_span.parent_span_id, publish_span.span_id);
    assert!(
        delivered.contains(&hex(&publish_span.span_id)),
        "the stored traceparent names the publish span"
    );
    // Let the exporter finish before the runtime goes.
    tokio::time::sleep(Duration::from_millis(100)).await;
}
