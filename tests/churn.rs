//! Resources under churn and stalls, measured on the process itself (the gateway runs in the
//! test's process): thousands of Watch calls opened and cancelled leave no task, descriptor,
//! JetStream consumer or memory behind, and one stalled watcher among fifty changes nothing for
//! the others. The tests of this file run one at a time, so each sees only its own load.

mod common;

use std::time::Duration;

use common::*;
use tokio::sync::Mutex;

/// One test at a time: they measure the whole process.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// What the process holds.
#[derive(Debug, Clone, Copy)]
struct Usage {
    rss_mib: u64,
    fds: usize,
    tasks: usize,
}

fn usage() -> Usage {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    Usage {
        rss_mib: rss_kib / 1024,
        fds: std::fs::read_dir("/proc/self/fd").unwrap().count(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    }
}

async fn consumer_count(env: &TestEnv) -> usize {
    let js = env.jetstream().await;
    let mut stream = js.get_stream("events").await.unwrap();
    stream.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_watches_opened_and_cancelled_leave_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start().await;
    env.publish_raw_burst(2_000, 256).await;
    // Hundreds of streams cancelled at once while the gateway is sending to them: frames
    // already on their way arrive for streams the client has reset. The client's HTTP/2
    // library remembers only 10 reset streams by default and answers frames for the others
    // with a reset of its own, closing the whole connection after 1,024 of those (its
    // defence against reset floods). What this test measures is the gateway, so the client
    // remembers enough of them (jetwatch's own client does the same).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", env.addr))
        .unwrap()
        .http2_max_concurrent_reset_streams(4096)
        .connect()
        .await
        .unwrap();
    // Warm up: one of each kind, so lazily created state (the shared reader, pools) exists.
    let kinds = [
        open().bookmarks_ms(100).build(),
        open().earliest().bookmarks_ms(0).build(),
        open().at_sequence(1_000).window(8).build(),
        open().snapshot().build(),
        open().subjects(&["events._widgets.w1"]).earliest().build(),
        open().sql("subject = 'w7'").earliest().build(),
    ];
    for o in &kinds {
        let mut client = SubscriberClient::new(channel.clone());
        let mut w = watch(&mut client, o.clone()).await;
        opened(&mut w).await;
        next(&mut w).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = usage();
    let consumers_before = consumer_count(&env).await;

    // 3,000 watches in waves of 300 at once, each cancelled after its first item or at once.
    for wave in 0..10 {
        let mut handles = Vec::new();
        for i in 0..300 {
            let o = kinds[(wave * 300 + i) % kinds.len()].clone();
            let channel = channel.clone();
            handles.push(tokio::spawn(async move {
                let mut client = SubscriberClient::new(channel);
                let mut w = watch(&mut client, o).await;
                if i % 2 == 0 {
                    opened(&mut w).await;
                    let _ = next(&mut w).await;
                }
                drop(w);
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    }

    // Everything the watches held goes: tasks, descriptors, consumers; memory stays flat.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let after = loop {
        let now = usage();
        let consumers = consumer_count(&env).await;
        if now.tasks <= before.tasks + 2
            && now.fds <= before.fds + 4
            && consumers <= consumers_before
        {
            break now;
        }
        if tokio::time::Instant::now() >= deadline {
            use futures::TryStreamExt;
            let js = env.jetstream().await;
            let stream = js.get_stream("events").await.unwrap();
            let infos: Vec<_> = stream.consumers().try_collect().await.unwrap();
            for i in infos {
                eprintln!(
                    "{} {:?} {:?} {:?} pending {} ack_pending {} waiting {}",
                    i.name,
                    i.config.filter_subject,
                    i.config.filter_subjects,
                    i.config.inactive_threshold,
                    i.num_pending,
                    i.num_ack_pending,
                    i.num_waiting
                );
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gateway still holds resources of cancelled watches: before {before:?} with \
             {consumers_before} consumers, now {now:?} with {consumers}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("before {before:?} ({consumers_before} consumers), after {after:?}");
    assert!(
        after.rss_mib <= before.rss_mib + 64,
        "RSS grew from {} MiB to {} MiB",
        before.rss_mib,
        after.rss_mib
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stalled_watcher_among_fifty_changes_nothing_for_the_others() {
    let _serial = SERIAL.lock().await;
    const EVENTS: u64 = 50_000;
    let env = TestEnv::start().await;
    let channel = env.channel().await;
    let mut stalled_client = SubscriberClient::new(channel.clone());
    let mut stalled = watch(&mut stalled_client, open().bookmarks_ms(0).build()).await;
    opened(&mut stalled).await;
    let mut watchers = Vec::new();
    for _ in 0..50 {
        let mut client = SubscriberClient::new(channel.clone());
        let mut w = watch(&mut client, open().bookmarks_ms(0).build()).await;
        opened(&mut w).await;
        watchers.push(tokio::spawn(async move {
            for expected in 1..=EVENTS {
                assert_eq!(next_delivery(&mut w).await.sequence, expected, "no gap");
            }
        }));
    }
    let before = usage();
    let last = env.publish_raw_burst(EVENTS as usize, 512).await;
    assert_eq!(last, EVENTS);
    for w in watchers {
        w.await.expect("every other watcher got every event");
    }
    let after = usage();
    println!("50 watchers and one stalled under {EVENTS} events: {before:?} -> {after:?}");
    // The stalled watcher held at most its window; it loses nothing when it reads again.
    assert!(
        after.rss_mib <= before.rss_mib + 256,
        "RSS grew from {} MiB to {} MiB",
        before.rss_mib,
        after.rss_mib
    );
    for expected in 1..=EVENTS {
        assert_eq!(next_delivery(&mut stalled).await.sequence, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_soak_keeps_memory_descriptors_tasks_and_consumers_flat() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::start().await;
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    let config = soak::SoakConfig {
        duration: Duration::from_secs(20),
        sample_every: Duration::from_secs(2),
        publish_per_sec: 300,
        watchers: 24,
        durables: 3,
        resources: 100,
        seed: 7,
    };
    let samples = soak::run(env.addr, metrics, &env.nats.url(), &config, |s| {
        println!("{s}")
    })
    .await;
    // After the first third (warm-up), the gateway's footprint stays flat.
    let warm = &samples[samples.len() / 3..samples.len() - 1];
    let (first, last) = (warm.first().unwrap(), warm.last().unwrap());
    let max_fds = warm.iter().map(|s| s.fds).max().unwrap();
    let min_fds = warm.iter().map(|s| s.fds).min().unwrap();
    assert!(
        max_fds - min_fds <= 8,
        "descriptors vary from {min_fds} to {max_fds}"
    );
    assert!(
        last.rss_bytes <= first.rss_bytes + (48 << 20),
        "RSS grew from {} to {} bytes after warm-up",
        first.rss_bytes,
        last.rss_bytes
    );
    // The load really ran (how much depends on the machine: no rate is asserted).
    let end = samples.last().unwrap();
    assert!(
        end.published >= 100 && end.delivered >= end.published && end.watches_opened >= 100,
        "{end}"
    );
    // Once the load stops, every JetStream consumer but the shared reader goes.
    eventually("consumers back to the shared reader alone", || {
        let env = &env;
        async move { (consumer_count(env).await <= 1).then_some(()) }
    })
    .await;
}
