//! Hostile and broken input: requests nested or sized to exhaust the gateway, control messages
//! for deliveries that never happened, events at the size limit, and messages other NATS
//! clients put on a stream that are not valid CloudEvents. None may crash, wedge or exhaust the
//! gateway; each is refused with its own code and reason, or skipped by the documented rule.

mod common;

use std::collections::HashMap;

use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use tonic::Code;

fn not_nested(levels: usize) -> api::Filter {
    let mut f = api::Filter {
        filter: Some(api::filter::Filter::Exact(api::AttributeMap {
            attributes: HashMap::from([("type".to_string(), "x".to_string())]),
        })),
    };
    for _ in 0..levels {
        f = api::Filter {
            filter: Some(api::filter::Filter::Not(Box::new(f))),
        };
    }
    f
}

fn with_filter(filter: api::Filter) -> api::Open {
    let mut o = open().build();
    o.filter = Some(filter);
    o
}

/// The status of opening a Watch with `o`, whether it fails at the call or on the first read.
async fn watch_error(
    client: &mut SubscriberClient<tonic::transport::Channel>,
    o: api::Open,
) -> tonic::Status {
    match client.watch(o).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            match stream.message().await {
                Err(status) => status,
                Ok(other) => panic!("expected an error, got {other:?}"),
            }
        }
    }
}

fn assert_refused(status: &tonic::Status, code: Code, reason: &str, mentions: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let (got, _) = error_info(status);
    assert_eq!(got, reason, "{status:?}");
    assert!(
        status.message().contains(mentions),
        "`{}` should mention `{mentions}`",
        status.message()
    );
}

#[tokio::test]
async fn requests_nested_or_sized_to_exhaust_the_gateway_are_refused_with_their_own_reasons() {
    let env = TestEnv::start().await;
    let mut client = env.subscriber().await;

    // Deeper than protobuf decoding allows: refused before any handler runs, on either call.
    let status = watch_error(&mut client, with_filter(not_nested(100))).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "MALFORMED_REQUEST",
        "100 levels",
    );
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(api::SubscribeRequest {
        request: Some(api::subscribe_request::Request::Open(with_filter(
            not_nested(100),
        ))),
    })
    .await
    .unwrap();
    let status = match client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
    {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.expect_err("refused"),
    };
    assert_refused(
        &status,
        Code::InvalidArgument,
        "MALFORMED_REQUEST",
        "100 levels",
    );

    // Within protobuf's limit but deeper than the gateway's setting.
    let status = watch_error(&mut client, with_filter(not_nested(40))).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "subscribe.max_filter_depth",
    );

    // CESQL nested thousands of levels deep, and longer than the expression limit.
    let deep = format!("{}a = 1{}", "(".repeat(3000), ")".repeat(3000));
    let status = watch_error(&mut client, open().sql(&deep).build()).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "levels deep",
    );
    let nots = format!("{}TRUE", "NOT ".repeat(5000));
    let status = watch_error(&mut client, open().sql(&nots).build()).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "subscribe.max_expression_bytes",
    );

    // A multi-megabyte filter is over the request size limit.
    let huge = format!("subject = '{}'", "x".repeat(5 << 20));
    let status = watch_error(&mut client, open().sql(&huge).build()).await;
    assert_refused(
        &status,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        "server.max_request_bytes",
    );
    let (_, meta) = error_info(&status);
    assert_eq!(meta["limit"], "4194304");

    // Too many subjects, too many filter terms.
    let subjects: Vec<String> = (0..33).map(|i| format!("events.s{i}.>")).collect();
    let refs: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let status = watch_error(&mut client, open().subjects(&refs).build()).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "subscribe.max_subjects",
    );
    let many = api::Filter {
        filter: Some(api::filter::Filter::Exact(api::AttributeMap {
            attributes: (0..300)
                .map(|i| (format!("x{i}"), "v".to_string()))
                .collect(),
        })),
    };
    let status = watch_error(&mut client, with_filter(many)).await;
    assert_refused(
        &status,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
        "subscribe.max_filter_terms",
    );

    // Publishing a request over the limit, alone and in the middle of a PublishStream.
    let mut publisher = env.publisher().await;
    let mut big = widget("big", "w1", "modified");
    big.data = Some(
        jetwatch::grpc::pb::io::cloudevents::v1::cloud_event::Data::TextData("x".repeat(5 << 20)),
    );
    let status = publisher
        .publish(api::PublishRequest {
            event: Some(big.clone()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_refused(
        &status,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        "bytes",
    );
    let requests = vec![
        api::PublishRequest {
            event: Some(widget("ok1", "w1", "modified")),
            ..Default::default()
        },
        api::PublishRequest {
            event: Some(big),
            ..Default::default()
        },
    ];
    let mut answers = publisher
        .publish_stream(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().expect("the first answer");
    assert!(first.error.is_none() && first.sequence > 0, "{first:?}");
    let status = answers
        .message()
        .await
        .expect_err("the stream ends with the refusal");
    assert_refused(
        &status,
        Code::ResourceExhausted,
        "REQUEST_TOO_LARGE",
        "bytes",
    );

    // The gateway is unharmed.
    let mut watcher = watch(&mut client, open().bookmarks_ms(0).build()).await;
    opened(&mut watcher).await;
    let seq = publish(&mut publisher, widget("after", "w1", "modified")).await;
    assert_eq!(next_delivery(&mut watcher).await.sequence, seq);
}

#[tokio::test]
async fn controls_for_deliveries_that_never_happened_and_credit_overflow_change_nothing() {
    let env = TestEnv::start().await;
    let mut client = env.subscriber().await;
    let mut sub = subscribe(
        &mut client,
        open()
            .durable("d1")
            .explicit()
            .window(5)
            .earliest()
            .bookmarks_ms(0)
            .build(),
    )
    .await;
    opened(&mut sub.responses).await;
    use api::subscribe_request::Request as R;
    for _ in 0..3 {
        sub.send(R::Credit(api::Credit { credit: u32::MAX })).await;
    }
    let never = vec![0, 424_242, u64::MAX];
    sub.ack(never.clone()).await;
    sub.send(R::Nack(api::Nack {
        sequences: never.clone(),
        delay: None,
    }))
    .await;
    sub.send(R::Term(api::Term {
        sequences: never,
        reason: "hostile".into(),
    }))
    .await;
    let mut publisher = env.publisher().await;
    let last = publish_n(&mut publisher, "e", 40).await;
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let d = next_delivery(&mut sub.responses).await;
        assert_eq!(d.delivery_count, 1, "nothing is redelivered");
        sub.ack(vec![d.sequence]).await;
        seen.push(d.sequence);
    }
    assert_eq!(seen, (last - 39..=last).collect::<Vec<_>>());
    env.wait_ack_floor("d1", last).await;
}

#[tokio::test]
async fn events_at_the_size_limit_are_stored_and_one_byte_more_is_refused() {
    let env = TestEnv::with_nats_config("max_payload: 65536", |_| {}).await;
    let mut publisher = env.publisher().await;
    // The size NATS counts for an event with `n` bytes of data, as the gateway will send it.
    let size_with = |n: usize| {
        let mut pb = widget("edge", "w1", "modified");
        pb.data = Some(
            jetwatch::grpc::pb::io::cloudevents::v1::cloud_event::Data::TextData("x".repeat(n)),
        );
        let event = jetwatch::grpc::convert::event_from_pb(pb.clone(), "event").unwrap();
        let encoded = jetwatch::codec::encode(&event).unwrap();
        let key = jetwatch::codec::dedup_key(&event.source, &event.id);
        (jetwatch::store::publish_size(&encoded, &key, None), pb)
    };
    let overhead = size_with(1).0 - 1;
    let (size, exact) = size_with(65536 - overhead);
    assert_eq!(size, 65536);
    let seq = publish(&mut publisher, exact).await;
    assert!(seq > 0);

    let (size, over) = size_with(65536 - overhead + 1);
    let mut over = over;
    over.id = "egde".into(); // another event of the same size
    let status = publisher
        .publish(api::PublishRequest {
            event: Some(over),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "EVENT_TOO_LARGE");
    assert_eq!(meta["size"], size.to_string());
    assert_eq!(meta["limit"], "65536");
    assert_eq!(env.stored_count("events").await, 1, "nothing half-stored");
}

/// Publishes a raw message with `header_block` (the lines after `NATS/1.0`) through the NATS
/// protocol itself, so that even headers no client library would write reach the stream.
async fn raw_publish(nats_url: &str, subject: &str, header_lines: &[&str], payload: &[u8]) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let addr = nats_url.trim_start_matches("nats://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = tcp.into_split();
    let mut read = tokio::io::BufReader::new(read);
    let mut info = String::new();
    read.read_line(&mut info).await.unwrap();
    assert!(info.starts_with("INFO"), "{info}");
    let mut headers = String::from("NATS/1.0\r\n");
    for line in header_lines {
        headers.push_str(line);
        headers.push_str("\r\n");
    }
    headers.push_str("\r\n");
    let mut frame = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nHPUB {subject} {} {}\r\n",
        headers.len(),
        headers.len() + payload.len()
    )
    .into_bytes();
    frame.extend_from_slice(headers.as_bytes());
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    write.write_all(&frame).await.unwrap();
    let mut line = String::new();
    loop {
        line.clear();
        read.read_line(&mut line).await.unwrap();
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            break;
        }
    }
}

#[tokio::test]
async fn messages_that_are_not_valid_cloudevents_are_skipped_by_every_reader_and_counted() {
    let env = TestEnv::start().await;
    let url = env.nats.url();
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    let mut client = env.subscriber().await;
    let mut live = watch(&mut client, open().bookmarks_ms(0).build()).await;
    opened(&mut live).await;
    let mut durable = subscribe(
        &mut client,
        open()
            .durable("d")
            .explicit()
            .earliest()
            .bookmarks_ms(0)
            .build(),
    )
    .await;
    opened(&mut durable.responses).await;
    let skipped_before = metric(metrics, "jetwatch_malformed_messages_skipped_total").await;

    let mut publisher = env.publisher().await;
    let mut expected = vec![publish(&mut publisher, widget("v0", "w0", "modified")).await];
    let ce = |id: &str| {
        vec![
            "ce-specversion: 1.0".to_string(),
            format!("ce-id: {id}"),
            "ce-source: /raw".to_string(),
            "ce-type: com.example.raw".to_string(),
        ]
    };
    let broken: Vec<(Vec<String>, Vec<u8>)> = vec![
        // A control byte in ce-subject, percent-encoded and raw.
        (
            [ce("m1"), vec!["ce-subject: a%01b".into()]].concat(),
            b"{}".to_vec(),
        ),
        (
            [ce("m2"), vec!["ce-subject: a\u{1}b".into()]].concat(),
            b"{}".to_vec(),
        ),
        // A header with an empty name.
        ([ce("m3"), vec![": orphan".into()]].concat(), b"{}".to_vec()),
        // Protobuf data that is not protobuf.
        (
            [
                ce("m4"),
                vec!["Jetwatch-Ce-Types: data=proto:type.googleapis.com/x.Y".into()],
            ]
            .concat(),
            vec![0xff, 0xff, 0xff],
        ),
        // Structured mode with broken JSON; text data that is not UTF-8; missing attributes.
        (
            vec!["Content-Type: application/cloudevents+json".into()],
            b"{\"specversion\":\"1.0\",".to_vec(),
        ),
        (
            [
                ce("m6"),
                vec![
                    "ce-datacontenttype: text/plain".into(),
                    "Jetwatch-Ce-Types: data=text".into(),
                ],
            ]
            .concat(),
            vec![0xc3, 0x28],
        ),
        (
            vec!["ce-specversion: 1.0".into(), "ce-id: m7".into()],
            b"{}".to_vec(),
        ),
        (vec!["X-Other: 1".into()], b"not an event at all".to_vec()),
    ];
    let count = broken.len() as u64;
    for (i, (headers, payload)) in broken.iter().enumerate() {
        let lines: Vec<&str> = headers.iter().map(String::as_str).collect();
        raw_publish(&url, &format!("events.raw.r{i}"), &lines, payload).await;
        expected.push(
            publish(
                &mut publisher,
                widget(&format!("v{}", i + 1), "w0", "modified"),
            )
            .await,
        );
    }
    assert_eq!(
        env.stored_count("events").await,
        count + expected.len() as u64
    );

    for seq in &expected {
        assert_eq!(next_delivery(&mut live).await.sequence, *seq);
        let d = next_delivery(&mut durable.responses).await;
        assert_eq!(d.sequence, *seq);
        durable.ack(vec![d.sequence]).await;
    }
    // A watcher replaying from the start reads them through history, and skips them too.
    let mut replay = watch(&mut client, open().earliest().bookmarks_ms(0).build()).await;
    opened(&mut replay).await;
    for seq in &expected {
        assert_eq!(next_delivery(&mut replay).await.sequence, *seq);
    }
    // The durable terminated the broken messages: nothing is left pending.
    let info = env.wait_ack_floor("d", *expected.last().unwrap()).await;
    assert_eq!(info.num_ack_pending, 0);
    let skipped = metric(metrics, "jetwatch_malformed_messages_skipped_total").await;
    assert!(
        skipped >= skipped_before + count,
        "skipped {skipped}, before {skipped_before}, broken {count}"
    );
}
