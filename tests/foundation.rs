//! The thin slice end to end: publish → JetStream → Watch, reflection, health, validation and
//! shutdown.

mod common;

use api::start_position::Position;
use api::subscribe_response::Response;
use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;

#[tokio::test]
async fn watch_from_a_sequence_replays_then_continues_live() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut seqs = Vec::new();
    for i in 1..=3 {
        seqs.push(
            publish(
                &mut publisher,
                widget(&format!("e{i}"), &format!("w{i}"), "modified"),
            )
            .await,
        );
    }
    assert_eq!(seqs, [1, 2, 3]);

    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Sequence(2)),
            ..Default::default()
        },
    )
    .await;
    match next(&mut stream).await.unwrap() {
        Response::Opened(o) => {
            assert_eq!(o.start_sequence, 2);
            assert_eq!(o.last_sequence, 3);
            assert!(!o.subscription_id.is_empty());
        }
        other => panic!("expected Opened, got {other:?}"),
    }
    let d2 = next_delivery(&mut stream).await;
    let d3 = next_delivery(&mut stream).await;
    assert_eq!((d2.sequence, d3.sequence), (2, 3));
    let e2 = d2.event.unwrap();
    assert_eq!(e2.id, "e2");
    assert_eq!(e2.source, "/widgets");
    assert_eq!(e2.r#type, "com.example.widget.modified");
    assert_eq!(d2.delivery_count, 1);
    assert!(d2.stored_at.is_some());

    let s4 = publish(&mut publisher, widget("e4", "w4", "modified")).await;
    let d4 = next_delivery(&mut stream).await;
    assert_eq!(d4.sequence, s4);
    assert_eq!(d4.event.unwrap().id, "e4");
}

#[tokio::test]
async fn watch_new_and_earliest_start_where_they_say() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w1", "added")).await;
    publish(&mut publisher, widget("b", "w2", "added")).await;
    let mut subscriber = env.subscriber().await;

    let mut earliest = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    let mut new = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::New(())),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        next(&mut earliest).await.unwrap(),
        Response::Opened(_)
    ));
    match next(&mut new).await.unwrap() {
        Response::Opened(o) => assert_eq!(o.start_sequence, 3),
        other => panic!("{other:?}"),
    }
    assert_eq!(next_delivery(&mut earliest).await.sequence, 1);
    assert_eq!(next_delivery(&mut earliest).await.sequence, 2);
    publish(&mut publisher, widget("c", "w3", "added")).await;
    assert_eq!(next_delivery(&mut new).await.sequence, 3);
    assert_eq!(next_delivery(&mut earliest).await.sequence, 3);
}

#[tokio::test]
async fn an_event_without_id_is_refused_and_not_stored() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let status = publisher
        .publish(api::PublishRequest {
            event: Some(widget("", "w1", "added")),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("`id`"), "{}", status.message());
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "INVALID_EVENT");
    assert_eq!(meta.get("attribute").map(String::as_str), Some("id"));
    assert_eq!(env.stored_count("events").await, 0);
}

#[tokio::test]
async fn reflection_lists_the_jetwatch_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let env = TestEnv::start().await;
    let mut client = ServerReflectionClient::new(env.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "jetwatch.v1.Publisher",
        "jetwatch.v1.Subscriber",
        "jetwatch.v1.Admin",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // grpcurl also resolves the files behind a symbol, with their dependencies.
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "jetwatch.v1.Subscriber".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
    // Every error detail the API returns resolves by name, as grpcurl asks for it to print
    // an error's details.
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "google.rpc.RetryInfo",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let response = client
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("{symbol} does not resolve: {response:?}");
        };
        use prost::Message;
        let names: Vec<String> = files
            .file_descriptor_proto
            .iter()
            .map(|f| prost_types::FileDescriptorProto::decode(f.as_slice()).unwrap())
            .flat_map(|f| f.message_type.into_iter().map(|m| m.name().to_owned()))
            .collect();
        let short = symbol.rsplit('.').next().unwrap();
        assert!(
            names.iter().any(|n| n == short),
            "{symbol} not in {names:?}"
        );
    }
}

#[tokio::test]
async fn health_is_serving_and_turns_not_serving_at_shutdown() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    let env = TestEnv::start().await;
    let mut health = HealthClient::new(env.channel().await);
    for service in [
        "",
        "jetwatch.v1.Publisher",
        "jetwatch.v1.Subscriber",
        "jetwatch.v1.Admin",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "service `{service}`");
    }
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    env.shutdown.cancel();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::NotServing as i32
    );
}

#[tokio::test]
async fn shutdown_ends_open_streams_with_unavailable_and_the_last_delivered_sequence() {
    let mut env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w1", "added")).await;
    publish(&mut publisher, widget("b", "w2", "added")).await;
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    assert!(matches!(
        next(&mut stream).await.unwrap(),
        Response::Opened(_)
    ));
    assert_eq!(next_delivery(&mut stream).await.sequence, 1);
    assert_eq!(next_delivery(&mut stream).await.sequence, 2);
    env.shutdown.cancel();
    let status = loop {
        match next(&mut stream).await {
            Ok(Response::Bookmark(_)) => continue,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "SHUTTING_DOWN");
    assert_eq!(
        meta.get("last_delivered_sequence").map(String::as_str),
        Some("2")
    );
    let gateway = env.gateway.take().unwrap();
    assert!(
        gateway.stopped(std::time::Duration::from_secs(10)).await,
        "the gateway drains within its grace period"
    );
}

#[tokio::test]
async fn admin_reports_declared_streams_and_refuses_unknown_ones() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w1", "added")).await;
    let mut admin = env.admin().await;
    let list = admin
        .list_streams(api::ListStreamsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.streams.len(), 1);
    let s = &list.streams[0];
    assert_eq!(
        (
            s.name.as_str(),
            s.first_sequence,
            s.last_sequence,
            s.messages
        ),
        ("events", 1, 1, 1)
    );
    let err = admin
        .get_stream(api::GetStreamRequest {
            stream: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// The `/metrics` page, fetched with a plain HTTP/1.1 request.
#[tokio::test]
async fn metrics_follow_the_engine_live_subscribers_and_history() {
    let env = TestEnv::start().await;
    let addr = env.gateway.as_ref().unwrap().metrics_addr();
    let mut client = env.subscriber().await;
    let mut watcher = watch(&mut client, open().bookmarks_ms(0).build()).await;
    opened(&mut watcher).await;
    let mut publisher = env.publisher().await;
    let last = publish_n(&mut publisher, "m", 3).await;
    for expected in 1..=last {
        assert_eq!(next_delivery(&mut watcher).await.sequence, expected);
    }
    let page = metrics_text(addr).await;
    assert!(
        page.contains("jetwatch_live_subscribers{stream=\"events\"} 1"),
        "{page}"
    );
    let history: u64 = page
        .lines()
        .find_map(|l| l.strip_prefix("jetwatch_history_bytes{stream=\"events\"} "))
        .expect("history gauge")
        .parse()
        .unwrap();
    assert!(history > 0, "three events are in the history");
    drop(watcher);
    // The subscriber leaves: the gauge follows.
    eventually("the subscriber gauge to drop", || async {
        metrics_text(addr)
            .await
            .contains("jetwatch_live_subscribers{stream=\"events\"} 0")
            .then_some(())
    })
    .await;
}
