//! Durable subscriptions: positions in JetStream across gateway restarts and instances,
//! competing consumers, explicit acks, redelivery, dead-lettering and the admin API.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use api::start_position::Position;
use api::subscribe_request::Request as R;
use api::subscribe_response::Response;
use common::*;
use jetwatch::config::StreamSettings;
use jetwatch::grpc::pb::jetwatch::v1 as api;

fn durable(name: &str) -> api::Open {
    api::Open {
        durable: name.into(),
        ack_mode: api::AckMode::Explicit as i32,
        ..Default::default()
    }
}

/// Settings with a dead-letter stream for `events`.
fn with_dead_letters(s: &mut jetwatch::config::Settings) {
    s.streams[0].dead_letter_subject = Some("deadletter.events".into());
    let mut dl: StreamSettings = s.streams[0].clone();
    dl.name = "deadletter".into();
    dl.subjects = vec!["deadletter.>".into()];
    dl.dead_letter_subject = None;
    s.streams.push(dl);
}

#[tokio::test]
async fn acknowledged_events_never_return_across_a_restart_and_another_gateway() {
    let mut env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish_n(&mut publisher, "e", 5).await;
    let mut client = env.subscriber().await;
    let mut first = subscribe(
        &mut client,
        open().durable("d1").explicit().earliest().window(3).build(),
    )
    .await;
    assert_eq!(opened(&mut first.responses).await.start_sequence, 1);
    for expected in 1..=3 {
        assert_eq!(next_delivery(&mut first.responses).await.sequence, expected);
    }
    first.ack(vec![1, 2]).await;
    // Let the acks reach JetStream before the client goes.
    env.wait_ack_floor("d1", 2).await;
    drop(first);
    drop(client);

    // Restart the gateway: the position lives in JetStream.
    env.shutdown.cancel();
    env.gateway
        .take()
        .unwrap()
        .stopped(Duration::from_secs(10))
        .await;
    let (gateway, token) = env.second_gateway().await;
    let mut client = jetwatch::grpc::pb::jetwatch::v1::subscriber_client::SubscriberClient::new(
        channel(gateway.grpc_addr()).await,
    );
    let mut resumed = subscribe(
        &mut client,
        api::Open {
            start: start_at(Position::Resume(())),
            ..durable("d1")
        },
    )
    .await;
    opened(&mut resumed.responses).await;
    // 3 was delivered but not acknowledged: it comes back (released at once when the first
    // client left, not after the 30 s ack deadline), with 4 and 5; 1 and 2 never do.
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut resumed.responses).await;
        if d.sequence == 3 {
            assert!(
                d.delivery_count > 1,
                "a redelivery says so: {}",
                d.delivery_count
            );
        }
        got.push(d.sequence);
    }
    got.sort_unstable();
    assert_eq!(got, [3, 4, 5]);
    resumed.ack(vec![3, 4, 5]).await;
    env.wait_ack_floor("d1", 5).await;
    drop(resumed);

    // A third gateway instance on the same NATS continues after 5.
    let (other, other_token) = env.second_gateway().await;
    let mut publisher = PublisherClient::new(channel(other.grpc_addr()).await);
    publish(&mut publisher, widget("e6", "w", "modified")).await;
    let mut client = SubscriberClient::new(channel(other.grpc_addr()).await);
    let mut again = subscribe(&mut client, durable("d1")).await;
    opened(&mut again.responses).await;
    let d = next_delivery(&mut again.responses).await;
    assert_eq!((d.sequence, d.delivery_count), (6, 1));
    token.cancel();
    other_token.cancel();
}

#[tokio::test]
async fn clients_of_one_durable_compete_for_its_events() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut c1 = env.subscriber().await;
    let mut c2 = env.subscriber().await;
    let mut a = subscribe(
        &mut c1,
        api::Open {
            max_in_flight: 10,
            start: start_at(Position::Earliest(())),
            ..durable("workers")
        },
    )
    .await;
    let mut b = subscribe(
        &mut c2,
        api::Open {
            max_in_flight: 10,
            ..durable("workers")
        },
    )
    .await;
    opened(&mut a.responses).await;
    opened(&mut b.responses).await;
    for i in 0..100 {
        publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{}", i % 7), "modified"),
        )
        .await;
    }
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    while got_a.len() + got_b.len() < 100 {
        tokio::select! {
            r = next(&mut a.responses) => if let Ok(Response::Delivery(d)) = r {
                a.ack(vec![d.sequence]).await;
                got_a.push(d.sequence);
            },
            r = next(&mut b.responses) => if let Ok(Response::Delivery(d)) = r {
                b.ack(vec![d.sequence]).await;
                got_b.push(d.sequence);
            },
        }
    }
    let set_a: HashSet<u64> = got_a.iter().copied().collect();
    let set_b: HashSet<u64> = got_b.iter().copied().collect();
    assert!(set_a.is_disjoint(&set_b), "no event went to both clients");
    assert_eq!(
        set_a.len() + set_b.len(),
        100,
        "every event went to one client"
    );
    assert_eq!(set_a.union(&set_b).copied().max(), Some(100));
}

#[tokio::test]
async fn unacknowledged_events_come_back_after_the_deadline_and_nacks_after_their_delay() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w1", "modified")).await;
    publish(&mut publisher, widget("b", "w2", "modified")).await;
    let mut client = env.subscriber().await;
    let mut sub = subscribe(
        &mut client,
        api::Open {
            start: start_at(Position::Earliest(())),
            ack_wait: millis(1000),
            ..durable("redeliver")
        },
    )
    .await;
    opened(&mut sub.responses).await;
    let d1 = next_delivery(&mut sub.responses).await;
    let d2 = next_delivery(&mut sub.responses).await;
    assert_eq!((d1.sequence, d1.delivery_count, d2.sequence), (1, 1, 2));
    // 2 is nacked with a delay; 1 is left to its 1 s deadline.
    sub.send(R::Nack(api::Nack {
        sequences: vec![2],
        delay: millis(300),
    }))
    .await;
    let mut redelivered = Vec::new();
    while redelivered.len() < 2 {
        let d = next_delivery(&mut sub.responses).await;
        assert_eq!(d.delivery_count, 2, "sequence {}", d.sequence);
        redelivered.push(d.sequence);
        sub.ack(vec![d.sequence]).await;
    }
    redelivered.sort_unstable();
    assert_eq!(redelivered, [1, 2]);
}

#[tokio::test]
async fn terminated_and_exhausted_events_go_to_the_dead_letter_subject_once() {
    let env = TestEnv::with(|s| {
        with_dead_letters(s);
        s.subscribe.max_deliver = 2;
    })
    .await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("poison", "w1", "modified")).await;
    publish(&mut publisher, widget("flaky", "w2", "modified")).await;
    publish(&mut publisher, widget("fine", "w3", "modified")).await;
    let mut client = env.subscriber().await;
    let mut sub = subscribe(
        &mut client,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..durable("dl")
        },
    )
    .await;
    opened(&mut sub.responses).await;
    let mut seen = Vec::new();
    loop {
        let d = next_delivery(&mut sub.responses).await;
        seen.push((d.sequence, d.delivery_count));
        match d.sequence {
            1 => {
                sub.send(R::Term(api::Term {
                    sequences: vec![1],
                    reason: "bad payload".into(),
                }))
                .await
            }
            2 => {
                sub.send(R::Nack(api::Nack {
                    sequences: vec![2],
                    delay: None,
                }))
                .await
            }
            3 => {
                sub.ack(vec![3]).await;
                if seen.iter().filter(|(s, _)| *s == 2).count() == 2 {
                    break;
                }
            }
            _ => unreachable!(),
        }
        if seen.iter().filter(|(s, _)| *s == 2).count() == 2 && seen.iter().any(|(s, _)| *s == 3) {
            break;
        }
    }
    // The dead-letter stream holds both, with the reasons, as CloudEvents.
    let mut dl_client = env.subscriber().await;
    let mut dl = watch(
        &mut dl_client,
        api::Open {
            stream: "deadletter".into(),
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    opened(&mut dl).await;
    let mut reasons = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let e = next_delivery(&mut dl).await.event.unwrap();
        let reason = match e.attributes.get("deadletterreason").and_then(|v| v.attr.clone()) {
            Some(jetwatch::grpc::pb::io::cloudevents::v1::cloud_event::cloud_event_attribute_value::Attr::CeString(s)) => s,
            other => panic!("{other:?}"),
        };
        reasons.insert(e.id, reason);
    }
    assert_eq!(
        reasons.get("poison").map(String::as_str),
        Some("bad payload")
    );
    assert_eq!(
        reasons.get("flaky").map(String::as_str),
        Some("maximum deliveries exceeded")
    );
    // Neither comes back to the subscriber.
    let js = env.jetstream().await;
    let stream = js.get_stream("events").await.unwrap();
    let info = eventually("the durable to settle", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("dl").await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(info)
        }
    })
    .await;
    assert_eq!(info.ack_floor.stream_sequence, 3);
}

#[tokio::test]
async fn admin_lists_gets_seeks_and_deletes_durables() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    for i in 1..=4 {
        publish(&mut publisher, widget(&format!("e{i}"), "w", "modified")).await;
    }
    let mut client = env.subscriber().await;
    let mut sub = subscribe(
        &mut client,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..durable("ops")
        },
    )
    .await;
    opened(&mut sub.responses).await;
    for expected in 1..=4 {
        let d = next_delivery(&mut sub.responses).await;
        assert_eq!(d.sequence, expected);
        if expected <= 2 {
            sub.ack(vec![expected]).await;
        }
    }
    let mut admin = env.admin().await;
    let info = eventually("acks recorded", || {
        let mut admin = admin.clone();
        async move {
            let i = admin
                .get_subscription(api::GetSubscriptionRequest {
                    stream: "events".into(),
                    durable: "ops".into(),
                })
                .await
                .ok()?
                .into_inner();
            (i.ack_floor_sequence == 2).then_some(i)
        }
    })
    .await;
    assert_eq!(
        (info.delivered_sequence, info.in_flight, info.pending),
        (4, 2, 0)
    );
    let list = admin
        .list_subscriptions(api::ListSubscriptionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        list.subscriptions
            .iter()
            .map(|s| s.durable.as_str())
            .collect::<Vec<_>>(),
        ["ops"]
    );
    drop(sub);

    // Seek back to sequence 2: the durable delivers 2, 3, 4 again.
    let seeked = admin
        .seek_subscription(api::SeekSubscriptionRequest {
            stream: "events".into(),
            durable: "ops".into(),
            start: start_at(Position::Sequence(2)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seeked.durable, "ops");
    let mut sub = subscribe(&mut client, durable("ops")).await;
    opened(&mut sub.responses).await;
    assert_eq!(next_delivery(&mut sub.responses).await.sequence, 2);
    drop(sub);

    admin
        .delete_subscription(api::DeleteSubscriptionRequest {
            stream: "events".into(),
            durable: "ops".into(),
        })
        .await
        .unwrap();
    let err = admin
        .get_subscription(api::GetSubscriptionRequest {
            stream: "events".into(),
            durable: "ops".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = subscriber_resume_missing(&mut client).await;
    assert_eq!(err.code(), tonic::Code::NotFound);
}

async fn subscriber_resume_missing(
    client: &mut SubscriberClient<tonic::transport::Channel>,
) -> tonic::Status {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(api::SubscribeRequest {
        request: Some(R::Open(api::Open {
            start: start_at(Position::Resume(())),
            ..durable("ops")
        })),
    })
    .await
    .unwrap();
    client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err()
}

#[tokio::test]
async fn a_durable_opened_with_other_subjects_is_refused() {
    let env = TestEnv::start().await;
    let mut client = env.subscriber().await;
    let mut sub = subscribe(
        &mut client,
        api::Open {
            subjects: vec!["events.a.>".into()],
            ..durable("narrow")
        },
    )
    .await;
    opened(&mut sub.responses).await;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(api::SubscribeRequest {
        request: Some(R::Open(api::Open {
            subjects: vec!["events.b.>".into()],
            ..durable("narrow")
        })),
    })
    .await
    .unwrap();
    let err = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("narrow"), "{}", err.message());
}
