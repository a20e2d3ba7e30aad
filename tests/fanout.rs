//! Fan-out: live watchers share one JetStream read, and subscribers starting anywhere at any
//! speed see exactly the contiguous sequence they asked for.

mod common;

use std::time::Duration;

use api::start_position::Position;
use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;

/// A small deterministic generator, so a failure can be replayed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// JetStream consumers on the `events` stream right now.
async fn consumer_count(js: &async_nats::jetstream::Context) -> usize {
    js.get_stream("events")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .consumer_count
}

/// A Watch of new events without bookmarks, opened.
async fn live_watcher(
    channel: tonic::transport::Channel,
) -> tonic::Streaming<api::SubscribeResponse> {
    watcher_at(channel, Position::New(())).await
}

/// A Watch opened at `start`, without heartbeats, past its `Opened`.
async fn watcher_at(
    channel: tonic::transport::Channel,
    start: Position,
) -> tonic::Streaming<api::SubscribeResponse> {
    let mut client = SubscriberClient::new(channel);
    let mut s = watch(
        &mut client,
        api::Open {
            start: start_at(start),
            heartbeat: millis(0),
            ..Default::default()
        },
    )
    .await;
    opened(&mut s).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_share_one_jetstream_read() {
    let env = TestEnv::start().await;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(env.channel().await);
    }
    let mut streams = Vec::new();
    for i in 0..200 {
        streams.push(live_watcher(channels[i % channels.len()].clone()).await);
    }
    let js = env.jetstream().await;
    let consumers = consumer_count(&js).await;
    assert!(
        consumers <= 1,
        "live watchers share one reader, found {consumers} consumers"
    );

    let mut publisher = env.publisher().await;
    let mut last = 0;
    for i in 0..50 {
        last = publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{}", i % 5), "modified"),
        )
        .await;
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < last as usize {
                    got.push(next_delivery(&mut s).await.sequence);
                }
                got
            })
        })
        .collect();
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            (1..=last).collect::<Vec<_>>(),
            "every event, in order"
        );
    }
    let consumers = consumer_count(&js).await;
    assert!(
        consumers <= 1,
        "still one shared reader after delivery, found {consumers}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_starts_and_speeds_each_see_exactly_their_contiguous_sequence() {
    // A tiny history makes slow and early subscribers leave the shared tail and catch up.
    let env = TestEnv::with(|s| {
        s.fanout.history_bytes = 8 * 1024;
        s.fanout.batch = 16;
    })
    .await;
    let mut publisher = env.publisher().await;
    let mut seed = XorShift(0x9e37_79b9_7f4a_7c15);
    let total: u64 = 1500;
    let before: u64 = 300;
    for i in 0..before {
        publish(
            &mut publisher,
            widget(&format!("p{i}"), &format!("w{}", i % 13), "modified"),
        )
        .await;
    }
    // Producers keep publishing while subscribers come and read.
    let producer = {
        let mut publisher = env.publisher().await;
        tokio::spawn(async move {
            for i in before..total {
                publish(
                    &mut publisher,
                    widget(&format!("p{i}"), &format!("w{}", i % 13), "modified"),
                )
                .await;
                if i % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let channel = env.channel().await;
    let mut tasks = Vec::new();
    for n in 0..24 {
        let start = 1 + seed.below(total - 1);
        let window = 1 + seed.below(64) as u32;
        // Some read as fast as they can, some pause every few events.
        let pause_every = [0, 0, 3, 17, 50][seed.below(5) as usize];
        let pause = Duration::from_millis(seed.below(15));
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = SubscriberClient::new(channel);
            let mut s = watch(
                &mut client,
                api::Open {
                    start: start_at(Position::Sequence(start)),
                    max_in_flight: window,
                    heartbeat: millis(0),
                    ..Default::default()
                },
            )
            .await;
            opened(&mut s).await;
            let mut expected = start;
            while expected <= total {
                let d = next_delivery(&mut s).await;
                assert_eq!(
                    d.sequence, expected,
                    "subscriber {n} (start {start}, window {window})"
                );
                expected += 1;
                if pause_every > 0 && expected.is_multiple_of(pause_every) {
                    tokio::time::sleep(pause).await;
                }
            }
        }));
        if n % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    producer.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Reads `total` events from sequence 1 as a client that resumes after any error from the
/// `last_delivered_sequence` the error carries. Returns how many times it had to resume.
/// Fails on a gap, a duplicate, or an error that does not say where the stream got to.
async fn watch_every_event(channel: tonic::transport::Channel, total: u64, n: usize) -> usize {
    let mut client = SubscriberClient::new(channel);
    let mut expected = 1u64;
    let mut resumed = 0;
    // From the stream's first sequence rather than `new`: a watcher whose Open is slowed by
    // the faults below may only open after the burst.
    let mut start = Position::Sequence(1);
    'open: while expected <= total {
        let mut s = loop {
            match client
                .watch(api::Open {
                    start: start_at(start),
                    heartbeat: millis(0),
                    ..Default::default()
                })
                .await
            {
                Ok(s) => break s.into_inner(),
                // The gateway may refuse while NATS is away; a client retries.
                Err(status) if status.code() == tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(status) => panic!("watcher {n}: open refused: {status:?}"),
            }
        };
        match next(&mut s).await {
            Ok(api::subscribe_response::Response::Opened(_)) => {}
            Ok(other) => panic!("watcher {n}: expected Opened, got {other:?}"),
            Err(status) => panic!("watcher {n}: open failed: {status:?}"),
        }
        while expected <= total {
            let response = match tokio::time::timeout(Duration::from_secs(20), s.message()).await {
                Ok(Ok(Some(r))) => Ok(r.response.expect("a response")),
                Ok(Err(status)) => Err(status),
                Ok(Ok(None)) => panic!("watcher {n}: the stream ended at {expected}"),
                Err(_) => panic!("watcher {n}: nothing within 20 s while waiting for {expected}"),
            };
            match response {
                Ok(api::subscribe_response::Response::Delivery(d)) => {
                    assert_eq!(d.sequence, expected, "watcher {n}: no gap, no duplicate");
                    expected += 1;
                }
                Ok(_) => {}
                Err(status) => {
                    let (_, meta) = error_info(&status);
                    let last: u64 = meta
                        .get("last_delivered_sequence")
                        .unwrap_or_else(|| {
                            panic!("watcher {n}: an error without its last sequence: {status:?}")
                        })
                        .parse()
                        .unwrap();
                    assert_eq!(
                        last,
                        expected - 1,
                        "watcher {n}: the error names the last delivered sequence"
                    );
                    resumed += 1;
                    start = Position::Sequence(expected);
                    continue 'open;
                }
            }
        }
    }
    resumed
}

/// Samples the stream's JetStream consumer count until `stop`, returning the most seen.
fn sample_consumers(
    js: async_nats::jetstream::Context,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut most = 0;
        while !stop.is_cancelled() {
            if let Ok(mut s) = js.get_stream("events").await {
                if let Ok(info) = s.info().await {
                    most = most.max(info.state.consumer_count);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        most
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_to_hundreds_of_watchers_behind_a_tiny_history_skips_nothing_when_nats_drops_the_gateway(
) {
    // A history of a few events puts nearly every watcher on the catch-up path. The gateway
    // reaches NATS through a link that cuts each connection after 256 KiB from the server, in
    // the middle of a message, as a server dropping a slow consumer does (a small max_pending
    // makes the server itself do so too, when it catches the gateway behind).
    let env =
        TestEnv::behind_cutting_link("max_pending: 256KB\nmax_payload: 64KB\n", 256 * 1024, |s| {
            s.fanout.history_bytes = 64 * 1024;
            s.fanout.read_bytes = 64 * 1024;
            s.fanout.catchup_cache_bytes = 512 * 1024;
        })
        .await;
    let watchers = 200;
    let total = 2_000u64;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(env.channel().await);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = sample_consumers(env.jetstream().await, stop.clone());
    let tasks: Vec<_> = (0..watchers)
        .map(|n| tokio::spawn(watch_every_event(channels[n % 4].clone(), total, n)))
        .collect();
    // Most watchers open before the burst and follow it live; the rest catch up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.publish_raw_burst(total as usize, 1024).await, total);
    let mut resumed = 0;
    for t in tasks {
        resumed += t.await.unwrap();
    }
    stop.cancel();
    let most = sampler.await.unwrap();
    let cuts = env.link.as_ref().unwrap().cuts() + env.slow_consumer_cuts();
    assert!(
        cuts > 0,
        "the gateway's connections were never cut: this test did not test reads under cuts"
    );
    let budget = 1 + env.settings.fanout.catchup_consumers + env.settings.fanout.snapshot_reads;
    assert!(
        most <= budget,
        "the gateway held {most} JetStream consumers; the budget is {budget}: one shared reader \
         plus fanout.catchup_consumers plus fanout.snapshot_reads"
    );
    eprintln!(
        "{watchers} watchers received {total} events each through {cuts} connection cuts; \
         {resumed} resumed after an error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_catching_up_ride_through_a_nats_restart_without_a_gap() {
    let mut env = TestEnv::with(|s| {
        s.fanout.history_bytes = 64 * 1024;
        s.fanout.read_bytes = 64 * 1024;
    })
    .await;
    let watchers = 60;
    let total = 1_500u64;
    let channel = env.channel().await;
    let tasks: Vec<_> = (0..watchers)
        .map(|n| tokio::spawn(watch_every_event(channel.clone(), total, n)))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(env.publish_raw_burst(total as usize, 1024).await, total);
    // Restart NATS while the watchers are still reading the burst's history.
    env.nats.restart().unwrap();
    let mut resumed = 0;
    for t in tasks {
        resumed += t.await.unwrap();
    }
    eprintln!("{watchers} watchers received {total} events each; {resumed} resumed after an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_lost_with_a_dropped_connection_at_the_end_of_a_burst_still_reach_watchers() {
    // The last events of a burst are on their way to the gateway when its connection drops,
    // and nothing is published after them: the watcher must still get them, though no later
    // message will ever reveal the gap.
    let env = TestEnv::behind_cutting_link("", usize::MAX, |_| {}).await;
    let link = env.link.clone().unwrap();
    let mut s = live_watcher(env.channel().await).await;
    assert_eq!(env.publish_raw_burst(5, 100).await, 5);
    for expected in 1..=5 {
        assert_eq!(next_delivery(&mut s).await.sequence, expected);
    }

    link.hold();
    assert_eq!(env.publish_raw_burst(3, 100).await, 8);
    // The server has sent them to the gateway: they are in the network, held.
    let js = env.jetstream().await;
    eventually(
        "the shared reader's consumer to have sent sequence 8",
        || {
            let js = js.clone();
            async move {
                let stream = js.get_stream("events").await.ok()?;
                let mut consumers = stream.consumers();
                while let Some(Ok(info)) = futures::StreamExt::next(&mut consumers).await {
                    if info.delivered.stream_sequence >= 8 {
                        return Some(());
                    }
                }
                None
            }
        },
    )
    .await;
    link.cut();

    for expected in 6..=8 {
        assert_eq!(
            next_delivery(&mut s).await.sequence,
            expected,
            "every event, in order, after the connection came back"
        );
    }
}

/// Opens a Watch at `start` and reads until it has seen `expected` (sequences, in order) and,
/// for a snapshot, its end.
async fn watch_sequences(
    channel: tonic::transport::Channel,
    start: Position,
    expected: &[u64],
) -> Vec<u64> {
    let snapshot = matches!(start, Position::Snapshot(_));
    let mut s = watcher_at(channel, start).await;
    let mut seen = Vec::new();
    loop {
        match next(&mut s).await.expect("the watch goes on") {
            api::subscribe_response::Response::Delivery(d) => seen.push(d.sequence),
            api::subscribe_response::Response::SnapshotEnd(_) => return seen,
            other => panic!("unexpected {other:?}"),
        }
        if !snapshot && seen.len() == expected.len() {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_larger_than_one_read_reach_live_catching_up_and_snapshot_watchers() {
    // One read asks NATS for at most `fanout.read_bytes`; an event larger than that (stored
    // straight into the stream, or accepted while the setting was larger) must still come
    // through every kind of read instead of stalling it. A history smaller than one event
    // puts catching-up watchers on history reads, through consumers or direct gets.
    for catchup_consumers in [4, 0] {
        let env = TestEnv::with(|s| {
            s.fanout.read_bytes = 4 * 1024;
            s.fanout.history_bytes = 4 * 1024;
            s.fanout.catchup_consumers = catchup_consumers;
        })
        .await;
        let mut live = live_watcher(env.channel().await).await;
        // w0 and w1 at 16 KiB, then w0 again, small.
        assert_eq!(env.publish_raw_burst(2, 16 * 1024).await, 2);
        assert_eq!(env.publish_raw_burst(1, 100).await, 3);
        for expected in 1..=3 {
            assert_eq!(next_delivery(&mut live).await.sequence, expected, "live");
        }
        let history = watch_sequences(env.channel().await, Position::Sequence(1), &[1, 2, 3]).await;
        assert_eq!(
            history,
            [1, 2, 3],
            "from the first sequence, catch-up consumers: {catchup_consumers}"
        );
        let mut snapshot = watch_sequences(env.channel().await, Position::Snapshot(()), &[]).await;
        snapshot.sort();
        assert_eq!(snapshot, [2, 3], "the last event of w1 (large) and of w0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_whose_events_outgrow_one_pull_is_complete() {
    // 1,500 resources of 2 KiB: more than one snapshot pull's byte budget holds, so pulls end
    // on their byte budget, not their message count, in the middle of the snapshot.
    let env = TestEnv::start().await;
    let resources = 1_500;
    let js = env.jetstream().await;
    let data = bytes::Bytes::from(vec![b'x'; 2048]);
    let mut acks = Vec::new();
    for i in 0..resources {
        let h = widget_headers(&format!("r{i}"), &format!("r{i}"));
        acks.push(
            js.publish_with_headers(format!("events._widgets.r{i}"), h, data.clone())
                .await
                .unwrap(),
        );
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let snapshot = watch_sequences(env.channel().await, Position::Snapshot(()), &[]).await;
    assert_eq!(snapshot.len(), resources, "every resource, once");
    assert!(
        snapshot.windows(2).all(|w| w[0] < w[1]),
        "in sequence order"
    );
}
