//! The publish path end to end: idempotency, optimistic concurrency, pipelined streams,
//! limits, typed round trips, events from plain NATS producers, and stream declarations.

mod common;

use std::collections::HashMap;

use api::start_position::Position;
use common::*;
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;

use ce::cloud_event::cloud_event_attribute_value::Attr;

fn attr(a: Attr) -> ce::cloud_event::CloudEventAttributeValue {
    ce::cloud_event::CloudEventAttributeValue { attr: Some(a) }
}

fn request(event: ce::CloudEvent) -> api::PublishRequest {
    api::PublishRequest {
        event: Some(event),
        ..Default::default()
    }
}

/// Publishes `event` again and again until the gateway, back from an outage, takes it.
async fn publish_once_back(
    client: &PublisherClient<tonic::transport::Channel>,
    event: ce::CloudEvent,
    what: &str,
) -> api::PublishResponse {
    eventually(what, || {
        let (mut client, event) = (client.clone(), event.clone());
        async move { client.publish(request(event)).await.ok() }
    })
    .await
    .into_inner()
}

/// Reads back the event stored at `sequence` through a Watch.
async fn read_back(env: &TestEnv, sequence: u64) -> api::Delivery {
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Sequence(sequence)),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    next_delivery(&mut stream).await
}

#[tokio::test]
async fn a_repeated_event_is_stored_once_and_reported_as_a_duplicate() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let first = publisher
        .publish(request(widget("same", "w1", "added")))
        .await
        .unwrap()
        .into_inner();
    let second = publisher
        .publish(request(widget("same", "w1", "added")))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.sequence, first.sequence);
    assert_eq!(env.stored_count("events").await, 1);
    // The same id from another source is a different event.
    let mut other = widget("same", "w1", "added");
    other.source = "/elsewhere".into();
    let third = publisher
        .publish(request(other))
        .await
        .unwrap()
        .into_inner();
    assert!(!third.duplicate);
    assert_eq!(env.stored_count("events").await, 2);
}

#[tokio::test]
async fn expected_subject_sequence_guards_concurrent_writers() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let with = |id: &str, expected: u64| api::PublishRequest {
        event: Some(widget(id, "w1", "modified")),
        expected_subject_sequence: Some(expected),
        ..Default::default()
    };
    // 0: no event on this subject yet.
    let created = publisher.publish(with("a", 0)).await.unwrap().into_inner();
    let updated = publisher
        .publish(with("b", created.sequence))
        .await
        .unwrap()
        .into_inner();
    // A writer that read the old version loses, and learns the current sequence.
    let status = publisher
        .publish(with("c", created.sequence))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "SEQUENCE_MISMATCH");
    assert_eq!(
        meta.get("current_sequence"),
        Some(&updated.sequence.to_string())
    );
    let status = publisher.publish(with("d", 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert_eq!(env.stored_count("events").await, 2);
}

#[tokio::test]
async fn publish_stream_answers_every_request_in_order_and_survives_bad_events() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut requests = Vec::new();
    for i in 0..500 {
        let mut e = widget(&format!("e{i}"), &format!("w{}", i % 10), "modified");
        if i % 100 == 7 {
            e.spec_version = "0.3".into();
        }
        requests.push(request(e));
    }
    let mut responses = publisher
        .publish_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    while let Some(r) = responses.message().await.unwrap() {
        answers.push(r);
    }
    assert_eq!(answers.len(), 500, "one response per request");
    let mut last = 0;
    for (i, r) in answers.iter().enumerate() {
        if i % 100 == 7 {
            let err = r.error.as_ref().expect("the bad event gets its own error");
            assert_eq!(err.code, tonic::Code::InvalidArgument as i32);
            assert!(err.message.contains("specversion"), "{}", err.message);
            assert!(
                !err.details.is_empty(),
                "details as a unary call would carry"
            );
        } else {
            assert!(r.error.is_none(), "{i}: {:?}", r.error);
            assert!(r.sequence > last, "responses come in request order");
            last = r.sequence;
        }
    }
    assert_eq!(env.stored_count("events").await, 495);
}

#[tokio::test]
async fn an_event_over_the_size_limit_is_resource_exhausted_and_not_stored() {
    let env = TestEnv::with(|s| s.publish.max_event_bytes = 4096).await;
    let mut publisher = env.publisher().await;
    let mut big = widget("big", "w1", "added");
    big.data = Some(ce::cloud_event::Data::BinaryData(vec![7; 8192]));
    let status = publisher.publish(request(big)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "EVENT_TOO_LARGE");
    assert_eq!(meta.get("limit").map(String::as_str), Some("4096"));
    assert_eq!(env.stored_count("events").await, 0);
}

/// A change that makes an event invalid.
type Mutation = Box<dyn Fn(&mut ce::CloudEvent)>;

#[tokio::test]
async fn invalid_attributes_are_named_in_the_error() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let cases: Vec<(Mutation, &str)> = vec![
        (Box::new(|e| e.source.clear()), "source"),
        (Box::new(|e| e.r#type.clear()), "type"),
        (Box::new(|e| e.spec_version = "2.0".into()), "specversion"),
        (Box::new(|e| e.source = "not a uri".into()), "source"),
        (
            Box::new(|e| {
                e.attributes
                    .insert("Bad-Name".into(), attr(Attr::CeString("x".into())));
            }),
            "Bad-Name",
        ),
        (
            Box::new(|e| {
                e.attributes
                    .insert("data".into(), attr(Attr::CeString("x".into())));
            }),
            "data",
        ),
        (
            Box::new(|e| {
                e.attributes
                    .insert("time".into(), attr(Attr::CeString("yesterday".into())));
            }),
            "time",
        ),
        (
            Box::new(|e| {
                e.attributes.insert(
                    "dataschema".into(),
                    attr(Attr::CeUri("relative/path".into())),
                );
            }),
            "dataschema",
        ),
    ];
    for (mutate, attribute) in cases {
        let mut e = widget("x", "w1", "added");
        mutate(&mut e);
        let status = publisher.publish(request(e)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{attribute}");
        assert!(
            status.message().contains(attribute),
            "{attribute}: {}",
            status.message()
        );
    }
    assert_eq!(env.stored_count("events").await, 0);
}

#[tokio::test]
async fn every_attribute_type_and_data_form_survives_the_round_trip() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut e = widget("typed", "wé 1", "modified");
    let mut attributes = HashMap::new();
    attributes.insert(
        "subject".into(),
        attr(Attr::CeString("wé 1/ütf \"q\" %".into())),
    );
    attributes.insert("flag".into(), attr(Attr::CeBoolean(true)));
    attributes.insert("count".into(), attr(Attr::CeInteger(-42)));
    attributes.insert("blob".into(), attr(Attr::CeBytes(vec![0, 1, 2, 255])));
    attributes.insert(
        "link".into(),
        attr(Attr::CeUri("https://example.com/a?b=c".into())),
    );
    attributes.insert("ref".into(), attr(Attr::CeUriRef("../x#y".into())));
    attributes.insert(
        "time".into(),
        attr(Attr::CeTimestamp(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        })),
    );
    attributes.insert(
        "note".into(),
        attr(Attr::CeString("«quoted» 100% \"ok\" ✓".into())),
    );
    e.attributes = attributes;
    let datas = [
        ce::cloud_event::Data::TextData("{\"a\": 1}".into()),
        ce::cloud_event::Data::BinaryData(vec![0, 159, 146, 150]),
        ce::cloud_event::Data::ProtoData(prost_types::Any {
            type_url: "type.googleapis.com/google.protobuf.Duration".into(),
            value: vec![8, 5],
        }),
    ];
    for (i, data) in datas.into_iter().enumerate() {
        let mut e = e.clone();
        e.id = format!("typed-{i}");
        e.data = Some(data);
        let seq = publish(&mut publisher, e.clone()).await;
        let got = read_back(&env, seq).await.event.unwrap();
        assert_eq!(got, e, "data form {i}");
    }
}

fn plain_headers(pairs: &[(&str, &str)]) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, *v);
    }
    h
}

#[tokio::test]
async fn events_from_plain_nats_producers_arrive_with_every_attribute() {
    let env = TestEnv::start().await;
    let js = env.jetstream().await;
    // Binary content mode, percent-encoded values, as any NATS client can write it.
    let binary = plain_headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "b1"),
        ("ce-source", "/plain/producer"),
        ("ce-type", "com.example.widget.added"),
        ("ce-subject", "w%C3%A9%201"),
        ("ce-time", "2024-05-06T07:08:09.5Z"),
        ("ce-namespace", "prod"),
        ("ce-datacontenttype", "application/json"),
    ]);
    js.publish_with_headers("events.plain.binary", binary, "{\"n\":1}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // Structured content mode.
    let structured = serde_json::json!({
        "specversion": "1.0", "id": "s1", "source": "/plain/producer",
        "type": "com.example.widget.modified", "subject": "w2", "priority": 3,
        "datacontenttype": "application/json", "data": {"n": 2}
    });
    js.publish_with_headers(
        "events.plain.structured",
        plain_headers(&[(
            "Content-Type",
            "application/cloudevents+json; charset=utf-8",
        )]),
        structured.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    let b = read_back(&env, 1).await;
    let e = b.event.unwrap();
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.r#type.as_str()),
        ("b1", "/plain/producer", "com.example.widget.added")
    );
    assert_eq!(
        e.attributes["subject"].attr,
        Some(Attr::CeString("wé 1".into()))
    );
    assert_eq!(
        e.attributes["namespace"].attr,
        Some(Attr::CeString("prod".into()))
    );
    assert!(
        matches!(e.attributes["time"].attr, Some(Attr::CeTimestamp(ref t)) if t.seconds == 1_714_979_289 && t.nanos == 500_000_000)
    );
    assert_eq!(
        e.data,
        Some(ce::cloud_event::Data::TextData("{\"n\":1}".into()))
    );
    assert_eq!(b.subject, "events.plain.binary");

    let s = read_back(&env, 2).await.event.unwrap();
    assert_eq!(
        (s.id.as_str(), s.r#type.as_str()),
        ("s1", "com.example.widget.modified")
    );
    assert_eq!(
        s.attributes["subject"].attr,
        Some(Attr::CeString("w2".into()))
    );
    assert_eq!(s.attributes["priority"].attr, Some(Attr::CeInteger(3)));
    match s.data {
        Some(ce::cloud_event::Data::TextData(t)) => {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&t).unwrap(),
                serde_json::json!({"n": 2})
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_declared_stream_that_conflicts_with_the_existing_one_is_a_clear_start_up_error() {
    let env = TestEnv::start().await;
    let mut settings = env.settings.clone();
    settings.streams[0].storage = jetwatch::config::Storage::Memory;
    let err = jetwatch::server::start(settings, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("events") && err.contains("storage"), "{err}");
    // Updatable fields are simply updated.
    let mut settings = env.settings.clone();
    settings.streams[0].max_messages_per_subject = 5;
    let (gw, token) = {
        let token = tokio_util::sync::CancellationToken::new();
        (
            jetwatch::server::start(settings, token.clone())
                .await
                .unwrap(),
            token,
        )
    };
    let js = env.jetstream().await;
    let info = js
        .get_stream("events")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.max_messages_per_subject, 5);
    token.cancel();
    drop(gw);
}

#[tokio::test]
async fn publishes_during_a_nats_outage_are_unavailable_store_nothing_and_work_again_after_it() {
    let mut env = TestEnv::start().await;
    let mut client = env.publisher().await;
    publish(&mut client, widget("before", "w1", "modified")).await;
    env.nats.stop();
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    eventually("the gateway to see the connection gone", || async move {
        metrics_text(metrics)
            .await
            .contains("jetwatch_nats_connected 0")
            .then_some(())
    })
    .await;
    // Unary publishes and a PublishStream during the outage: every answer is UNAVAILABLE
    // (NATS_UNAVAILABLE), never INTERNAL or UNKNOWN.
    for i in 0..3 {
        let status = client
            .publish(request(widget(&format!("during{i}"), "w1", "modified")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert_eq!(error_info(&status).0, "NATS_UNAVAILABLE");
    }
    let requests: Vec<_> = (0..3)
        .map(|i| request(widget(&format!("streamed{i}"), "w1", "modified")))
        .collect();
    let mut answers = client
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    for _ in 0..3 {
        let answer = answers
            .message()
            .await
            .unwrap()
            .expect("one answer per request");
        let error = answer.error.expect("refused");
        assert_eq!(error.code, tonic::Code::Unavailable as i32, "{error:?}");
    }
    // NATS comes back: publishing works again without restarting the gateway, and nothing
    // refused during the outage is stored afterwards (no publish left queued in the client).
    env.nats.restart().unwrap();
    let after = publish_once_back(
        &client,
        widget("after", "w1", "modified"),
        "a publish after the outage",
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        after.sequence, 2,
        "nothing from the outage was stored before it"
    );
    assert_eq!(env.stored_count("events").await, 2, "nor after it");
}

#[tokio::test]
async fn a_calls_traceparent_is_stored_and_delivered_with_the_event() {
    // No span export here: the call's own trace context is what the event keeps.
    let env = TestEnv::start().await;
    let mut subscriber = env.subscriber().await;
    let mut watcher = subscriber.watch(open().build()).await.unwrap().into_inner();
    opened(&mut watcher).await;
    let mut publisher = env.publisher().await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = tonic::Request::new(api::PublishRequest {
        event: Some(widget("tp1", "w1", "modified")),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    publisher.publish(request).await.unwrap();
    let delivered = next_delivery(&mut watcher).await;
    let attr = delivered.event.unwrap().attributes["traceparent"]
        .attr
        .clone();
    assert_eq!(
        attr,
        Some(ce::cloud_event::cloud_event_attribute_value::Attr::CeString(traceparent.into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_acknowledgement_is_lost_with_the_connection_fails_at_once_and_retries_safely(
) {
    // The event reaches JetStream, but its acknowledgement is on its way back when the
    // gateway's connection drops. The publisher must hear UNAVAILABLE when the connection
    // drops, not after the request timeout (an hour here), and publishing the same event again
    // must find it stored once.
    let env = TestEnv::behind_cutting_link("", usize::MAX, |s| {
        s.nats.request_timeout = std::time::Duration::from_secs(3600);
    })
    .await;
    let link = env.link.clone().unwrap();
    let mut publisher = env.publisher().await;
    assert_eq!(
        publish(&mut publisher, widget("a1", "w1", "added")).await,
        1
    );

    link.hold();
    let pending = {
        let mut publisher = publisher.clone();
        tokio::spawn(async move {
            publisher
                .publish(request(widget("a2", "w1", "modified")))
                .await
        })
    };
    let js = env.jetstream().await;
    eventually("the held publish to be stored", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("events").await.ok()?;
            (stream.info().await.ok()?.state.messages == 2).then_some(())
        }
    })
    .await;
    link.cut();
    let answer = tokio::time::timeout(std::time::Duration::from_secs(20), pending)
        .await
        .expect("an answer once the connection dropped, not after the request timeout")
        .unwrap();
    let status = answer.expect_err("the acknowledgement was lost: the publish cannot succeed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Retrying with the same source and id once the gateway is back: stored once.
    let retried = publish_once_back(
        &publisher,
        widget("a2", "w1", "modified"),
        "the retry to be answered",
    )
    .await;
    assert!(retried.duplicate, "the retry found the event stored");
    assert_eq!(retried.sequence, 2);
    assert_eq!(env.stored_count("events").await, 2);
}
