//! Gateways are stateless: one killed with SIGKILL costs its clients nothing. With two gateway
//! processes on one NATS cluster, a `Watcher` given both resumes on the survivor with no gap
//! and no duplicate, and an EXPLICIT durable re-opened there loses nothing.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use jetwatch_client::{WatchItem, Watcher};
use parking_lot::Mutex;

/// The `events` stream at 3 replicas.
const R3: &str = "[[streams]]\nname = \"events\"\nsubjects = [\"events.>\"]\nreplicas = 3\n";

#[tokio::test]
async fn clients_of_a_killed_gateway_resume_on_another_with_no_gap_and_nothing_lost() {
    let env = TestEnv::cluster(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let mut g1 = GatewayProcess::start(&env.nats.url(), dir.path(), "g1", R3).await;
    let g2 = GatewayProcess::start(&env.nats.url(), dir.path(), "g2", R3).await;

    // A Watcher that knows both gateways, starting on g1.
    let mut watcher = Watcher::new(
        format!("{},{}", g1.addr, g2.addr),
        open().bookmarks_ms(0).build(),
    );
    let start = match watcher.next().await.unwrap() {
        WatchItem::Opened { start_sequence, .. } => start_sequence.max(1),
        other => panic!("expected Opened, got {other:?}"),
    };

    // An EXPLICIT durable on g1, re-opened on g2 when g1 is gone.
    let window = 32;
    let durable_open = open()
        .durable("d")
        .explicit()
        .window(window)
        .earliest()
        .bookmarks_ms(0);
    let mut durable_open = durable_open.build();
    durable_open.ack_wait = millis(2000);
    let seen = Arc::new(Mutex::new(Vec::<u64>::new()));
    let durable_task = {
        let seen = seen.clone();
        let addrs = [g1.addr, g2.addr];
        tokio::spawn(async move {
            for addr in addrs {
                let mut client = SubscriberClient::new(channel(addr).await);
                let mut sub = subscribe(&mut client, durable_open.clone()).await;
                opened(&mut sub.responses).await;
                loop {
                    match sub.responses.message().await {
                        Ok(Some(api::SubscribeResponse {
                            response: Some(api::subscribe_response::Response::Delivery(d)),
                        })) => {
                            seen.lock().push(d.sequence);
                            if sub
                                .requests
                                .send(api::SubscribeRequest {
                                    request: Some(api::subscribe_request::Request::Ack(api::Ack {
                                        sequences: vec![d.sequence],
                                    })),
                                })
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                        Ok(Some(_)) => {}
                        // The gateway died under the stream: move to the next.
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        })
    };

    // Events published through the test's own gateway while g1 dies.
    let mut publisher = env.publisher().await;
    let mut publishing = Some(tokio::spawn(async move {
        publish_n(&mut publisher, "e", 1000).await
    }));

    let mut next_expected = start;
    let mut killed = false;
    let mut disconnects = 0;
    let mut last = None;
    while last.is_none_or(|l| next_expected <= l) {
        if !killed && next_expected > start + 300 {
            g1.kill();
            killed = true;
        }
        if publishing.as_ref().is_some_and(|p| p.is_finished()) {
            last = Some(publishing.take().unwrap().await.unwrap());
            continue;
        }
        match tokio::time::timeout(Duration::from_millis(500), watcher.next()).await {
            Err(_) => continue,
            Ok(item) => match item.expect("the watcher rides through") {
                WatchItem::Delivery { sequence, .. } => {
                    assert_eq!(sequence, next_expected, "no gap, no duplicate");
                    next_expected += 1;
                }
                WatchItem::Disconnected { resume_from, .. } => {
                    // It says where it will resume: right after what it delivered.
                    assert!(
                        resume_from.is_some_and(|r| r >= next_expected),
                        "resumes after what it delivered: {resume_from:?} vs {next_expected}"
                    );
                    disconnects += 1;
                }
                WatchItem::Opened { .. } | WatchItem::Bookmark { .. } => {}
                other => panic!("unexpected {other:?}"),
            },
        }
    }
    assert!(killed, "g1 was killed while the watcher read");
    assert!(disconnects > 0, "the watcher reported the disconnect");
    let last = last.unwrap();

    env.wait_ack_floor("d", last).await;
    durable_task.abort();
    let seen = seen.lock().clone();
    assert_durable_lost_nothing(&seen, last, window as usize);
    drop(g2);
}
