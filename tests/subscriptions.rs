//! Subscriptions: start positions, snapshots, bookmarks, history expiry, windows, NATS outages
//! and request validation.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use api::start_position::Position;
use api::subscribe_response::Response;
use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;

#[tokio::test]
async fn snapshot_gives_each_resource_once_then_live_changes_without_gap_or_duplicate() {
    snapshot_while_publishing("").await;
}

#[tokio::test]
async fn a_durable_snapshot_hands_off_to_live_changes_the_same_way() {
    snapshot_while_publishing("snapshotter").await;
}

async fn snapshot_while_publishing(durable: &str) {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    // 30 resources, three versions each, before the snapshot.
    for v in 0..3 {
        for r in 0..30 {
            publish(
                &mut publisher,
                widget(&format!("r{r}-v{v}"), &format!("w{r}"), "modified"),
            )
            .await;
        }
    }
    // Keep publishing while the snapshot is read.
    let producer = {
        let mut publisher = env.publisher().await;
        tokio::spawn(async move {
            let mut last = 0;
            for v in 3..13 {
                for r in 0..30 {
                    last = publish(
                        &mut publisher,
                        widget(&format!("r{r}-v{v}"), &format!("w{r}"), "modified"),
                    )
                    .await;
                }
            }
            last
        })
    };
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Snapshot(())),
            max_in_flight: 7,
            durable: durable.into(),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    let mut snapshot: BTreeMap<String, u64> = BTreeMap::new();
    let end = loop {
        match next(&mut stream).await.unwrap() {
            Response::Delivery(d) => {
                let subject = d.subject.clone();
                assert!(
                    snapshot.insert(subject, d.sequence).is_none(),
                    "one event per resource in a snapshot"
                );
            }
            Response::SnapshotEnd(e) => break e.sequence,
            Response::Bookmark(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(snapshot.len(), 30, "every resource appears in the snapshot");
    assert!(snapshot.values().all(|s| *s <= end));
    let last = producer.await.unwrap();
    // Live changes: exactly every sequence after the snapshot's end, in order.
    let mut expected = end + 1;
    while expected <= last {
        let d = next_delivery(&mut stream).await;
        assert_eq!(
            d.sequence, expected,
            "no gap, no duplicate after SnapshotEnd"
        );
        expected += 1;
    }
    // And the snapshot was the latest state as of its end: replaying from the start agrees.
    let js = env.jetstream().await;
    let stream_handle = js.get_stream("events").await.unwrap();
    for (subject, seq) in &snapshot {
        let msg = stream_handle
            .get_last_raw_message_by_subject(subject)
            .await
            .unwrap();
        assert!(msg.sequence >= *seq);
        if msg.sequence <= end {
            assert_eq!(
                msg.sequence, *seq,
                "the snapshot holds the last event of {subject} up to {end}"
            );
        }
    }
}

#[tokio::test]
async fn bookmarks_let_a_rare_filter_resume_cheaply() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    // Learn the subject of the rare resource by publishing it once.
    let rare = publisher
        .publish(api::PublishRequest {
            event: Some(widget("rare-0", "rare", "modified")),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            subjects: vec![rare.subject.clone()],
            start: start_at(Position::Sequence(rare.sequence + 1)),
            heartbeat: millis(200),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    let mut last = 0;
    for i in 0..1000 {
        last = publish(
            &mut publisher,
            widget(&format!("o{i}"), &format!("other{}", i % 50), "modified"),
        )
        .await;
    }
    let bookmark = loop {
        match next(&mut stream).await.unwrap() {
            Response::Bookmark(b) if b.sequence >= last => break b,
            Response::Bookmark(_) => {}
            other => panic!("nothing matches yet, got {other:?}"),
        }
    };
    assert_eq!(bookmark.pending, 0);
    drop(stream);
    let next_rare = publish(&mut publisher, widget("rare-1", "rare", "modified")).await;
    let mut resumed = watch(
        &mut subscriber,
        api::Open {
            subjects: vec![rare.subject.clone()],
            start: start_at(Position::Sequence(bookmark.sequence + 1)),
            ..Default::default()
        },
    )
    .await;
    opened(&mut resumed).await;
    let d = next_delivery(&mut resumed).await;
    assert_eq!(d.sequence, next_rare);
    assert_eq!(d.event.unwrap().id, "rare-1");
}

#[tokio::test]
async fn expired_history_is_out_of_range_unless_a_recovery_is_chosen() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    for i in 1..=10 {
        publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{}", i % 3), "modified"),
        )
        .await;
    }
    // Remove everything below sequence 6, as retention limits would.
    let js = env.jetstream().await;
    js.get_stream("events")
        .await
        .unwrap()
        .purge()
        .sequence(6)
        .await
        .unwrap();

    let mut subscriber = env.subscriber().await;
    let open = |on_expired: api::OnExpired| api::Open {
        start: start_at(Position::Sequence(2)),
        on_expired: on_expired as i32,
        ..Default::default()
    };
    let status = subscriber
        .watch(open(api::OnExpired::Unspecified))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange);
    let (reason, meta) = error_info(&status);
    assert_eq!(reason, "HISTORY_EXPIRED");
    assert_eq!(meta.get("first_sequence").map(String::as_str), Some("6"));

    let mut earliest = watch(&mut subscriber, open(api::OnExpired::FromEarliest)).await;
    assert_eq!(opened(&mut earliest).await.start_sequence, 6);
    assert_eq!(next_delivery(&mut earliest).await.sequence, 6);

    let mut snap = watch(&mut subscriber, open(api::OnExpired::FromSnapshot)).await;
    opened(&mut snap).await;
    let mut seen = Vec::new();
    loop {
        match next(&mut snap).await.unwrap() {
            Response::Delivery(d) => seen.push(d.sequence),
            Response::SnapshotEnd(e) => {
                assert_eq!(e.sequence, 10);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        [8, 9, 10],
        "the last event of each of the three resources"
    );
}

#[tokio::test]
async fn watch_from_a_time_starts_at_the_first_event_stored_then() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w1", "added")).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = publish(&mut publisher, widget("b", "w2", "added")).await;
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Time(prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: t.timestamp_subsec_nanos() as i32,
            })),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(opened(&mut stream).await.start_sequence, b);
    assert_eq!(next_delivery(&mut stream).await.sequence, b);
}

#[tokio::test]
async fn a_stalled_client_holds_at_most_its_window_and_others_keep_receiving() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut slow_client = env.subscriber().await;
    let mut slow = subscribe(
        &mut slow_client,
        api::Open {
            durable: "slow".into(),
            ack_mode: api::AckMode::Explicit as i32,
            max_in_flight: 10,
            start: start_at(Position::Earliest(())),
            heartbeat: millis(200),
            ..Default::default()
        },
    )
    .await;
    opened(&mut slow.responses).await;
    let mut fast_client = env.subscriber().await;
    let mut fast = watch(
        &mut fast_client,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    opened(&mut fast).await;
    let mut last = 0;
    for i in 0..300 {
        last = publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{}", i % 20), "modified"),
        )
        .await;
    }
    // The fast subscriber receives everything, in order, while the slow one acks nothing.
    for expected in 1..=last {
        assert_eq!(next_delivery(&mut fast).await.sequence, expected);
    }
    // The slow client reads its window and then nothing more arrives for it: the next
    // response is a bookmark, not an 11th delivery.
    for expected in 1..=10 {
        assert_eq!(next_delivery(&mut slow.responses).await.sequence, expected);
    }
    match next(&mut slow.responses).await.expect("no error") {
        api::subscribe_response::Response::Bookmark(b) => assert_eq!(b.sequence, 10),
        other => panic!("nothing beyond the window before a Credit, got {other:?}"),
    }
    let js = env.jetstream().await;
    let stream = js.get_stream("events").await.unwrap();
    let ack_pending = eventually("the durable's ack pending to settle", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("slow").await.ok()?;
            (info.num_ack_pending == 10).then_some(info.num_ack_pending)
        }
    })
    .await;
    assert_eq!(ack_pending, 10);
    // Credit widens the window by exactly its amount.
    slow.send(api::subscribe_request::Request::Credit(api::Credit {
        credit: 5,
    }))
    .await;
    for expected in 11..=15 {
        assert_eq!(next_delivery(&mut slow.responses).await.sequence, expected);
    }
    loop {
        match next(&mut slow.responses).await.expect("no error") {
            api::subscribe_response::Response::Bookmark(b) if b.sequence == 15 => break,
            api::subscribe_response::Response::Bookmark(_) => continue,
            other => panic!("nothing beyond the widened window, got {other:?}"),
        }
    }
    let info = eventually("ack pending to reach 15", || {
        let stream = stream.clone();
        async move {
            let info = stream.consumer_info("slow").await.ok()?;
            (info.num_ack_pending >= 15).then_some(info)
        }
    })
    .await;
    assert_eq!(
        info.num_ack_pending, 15,
        "no more than the widened window is in flight"
    );
}

#[tokio::test]
async fn a_watcher_that_stops_reading_does_not_slow_the_others_and_loses_nothing() {
    // A tiny history forces the stalled watcher out of the shared history into catch-up.
    let env = TestEnv::with(|s| s.fanout.history_bytes = 16 * 1024).await;
    let mut publisher = env.publisher().await;
    let mut sub = env.subscriber().await;
    let mut stalled = watch(
        &mut sub,
        api::Open {
            start: start_at(Position::New(())),
            max_in_flight: 4,
            ..Default::default()
        },
    )
    .await;
    let mut live = watch(
        &mut sub,
        api::Open {
            start: start_at(Position::New(())),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stalled).await;
    opened(&mut live).await;
    let mut last = 0;
    for i in 0..500 {
        last = publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{}", i % 20), "modified"),
        )
        .await;
    }
    for expected in 1..=last {
        assert_eq!(next_delivery(&mut live).await.sequence, expected);
    }
    // The stalled watcher now reads everything, contiguous, through catch-up and hand-off.
    for expected in 1..=last {
        assert_eq!(next_delivery(&mut stalled).await.sequence, expected);
    }
}

#[tokio::test]
async fn bad_requests_are_refused_with_invalid_argument() {
    let env = TestEnv::start().await;
    let mut subscriber = env.subscriber().await;
    let cases = [
        api::Open {
            subjects: vec!["events..x".into()],
            ..Default::default()
        },
        // Valid patterns the stream (`events.>`) can never hold: not a silent empty watch.
        api::Open {
            subjects: vec!["other.>".into()],
            ..Default::default()
        },
        api::Open {
            subjects: vec!["events.>".into(), "events".into()],
            ..Default::default()
        },
        api::Open {
            start: start_at(Position::Sequence(0)),
            ..Default::default()
        },
        api::Open {
            max_in_flight: 1_000_000,
            ..Default::default()
        },
        api::Open {
            heartbeat: millis(1),
            ..Default::default()
        },
        api::Open {
            start: start_at(Position::Resume(())),
            ..Default::default()
        },
        api::Open {
            durable: "has space".into(),
            ..Default::default()
        },
        api::Open {
            ack_mode: api::AckMode::Explicit as i32,
            ..Default::default()
        },
    ];
    for open in cases {
        let status = subscriber.watch(open.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{open:?}: {status:?}"
        );
    }
    let status = subscriber
        .watch(api::Open {
            stream: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A second Open on a Subscribe stream ends it with INVALID_ARGUMENT.
    let mut bidi = subscribe(&mut subscriber, api::Open::default()).await;
    opened(&mut bidi.responses).await;
    bidi.send(api::subscribe_request::Request::Open(api::Open::default()))
        .await;
    let status = loop {
        match next(&mut bidi.responses).await {
            Ok(Response::Bookmark(_)) => {}
            Ok(other) => panic!("{other:?}"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn subscriptions_survive_a_nats_restart_within_the_grace_period() {
    let mut env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    for i in 1..=5 {
        publish(&mut publisher, widget(&format!("a{i}"), "w", "modified")).await;
    }
    for expected in 1..=5 {
        assert_eq!(next_delivery(&mut stream).await.sequence, expected);
    }
    env.nats
        .restart()
        .expect("nats-server restarts on the same port and store");
    // Publishing resumes once the gateway has reconnected.
    let mut published = HashSet::new();
    for i in 6..=10 {
        let seq = eventually("a publish after the restart", || {
            let mut publisher = publisher.clone();
            async move {
                publisher
                    .publish(api::PublishRequest {
                        event: Some(widget(&format!("b{i}"), "w", "modified")),
                        ..Default::default()
                    })
                    .await
                    .ok()
                    .map(|r| r.into_inner().sequence)
            }
        })
        .await;
        published.insert(seq);
    }
    for expected in 6..=10 {
        assert_eq!(
            next_delivery(&mut stream).await.sequence,
            expected,
            "no gap, no duplicate across the outage"
        );
    }
    assert_eq!(published.len(), 5);
}

#[tokio::test]
async fn subscriptions_end_with_unavailable_when_nats_stays_away() {
    let mut env = TestEnv::with(|s| s.nats.outage_grace = Duration::from_millis(500)).await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("a", "w", "modified")).await;
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            start: start_at(Position::Earliest(())),
            heartbeat: millis(0),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    assert_eq!(next_delivery(&mut stream).await.sequence, 1);
    env.nats.stop();
    let status = next(&mut stream).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let (_, meta) = error_info(&status);
    assert_eq!(
        meta.get("last_delivered_sequence").map(String::as_str),
        Some("1")
    );
}
