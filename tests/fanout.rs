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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_share_one_jetstream_read() {
    let env = TestEnv::start().await;
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(env.channel().await);
    }
    let mut streams = Vec::new();
    for i in 0..200 {
        let mut client = SubscriberClient::new(channels[i % channels.len()].clone());
        let mut s = watch(
            &mut client,
            api::Open {
                start: start_at(Position::New(())),
                heartbeat: millis(0),
                ..Default::default()
            },
        )
        .await;
        opened(&mut s).await;
        streams.push(s);
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
