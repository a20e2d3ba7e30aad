//! A 3-node NATS cluster with R3 streams under faults: the stream leader killed with SIGKILL
//! during continuous publishing, a live Watch, a snapshot and an EXPLICIT durable. Nothing the
//! gateway acknowledged is lost, watchers see no gap and no duplicate, durables lose nothing,
//! publishing resumes by itself, and the node rejoins with the stream intact.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use parking_lot::Mutex;

/// What the continuous publisher saw.
#[derive(Default)]
struct Published {
    /// id -> acknowledged sequence.
    acked: HashMap<String, u64>,
    /// Refusals, by gRPC code, while retrying.
    refusals: HashMap<String, usize>,
    /// When the first refusal came, and when the first success after it came.
    first_refusal: Option<Instant>,
    recovered: Option<Instant>,
}

/// Publishes `w<i % 50>` events until `stop`, retrying each refused publish with the same id
/// (so a publish whose acknowledgement was lost is not stored twice).
async fn publish_until(
    mut client: PublisherClient<tonic::transport::Channel>,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    log: Arc<Mutex<Published>>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let id = format!("p{i}");
        loop {
            let request = api::PublishRequest {
                event: Some(widget(&id, &format!("w{}", i % 50), "modified")),
                ..Default::default()
            };
            match client.publish(request).await {
                Ok(r) => {
                    {
                        let mut log = log.lock();
                        log.acked.insert(id.clone(), r.into_inner().sequence);
                        if log.first_refusal.is_some() && log.recovered.is_none() {
                            log.recovered = Some(Instant::now());
                        }
                    }
                    break;
                }
                Err(status) => {
                    {
                        let mut log = log.lock();
                        let reason = error_info_or_code(&status);
                        *log.refusals.entry(reason).or_default() += 1;
                        log.first_refusal.get_or_insert_with(Instant::now);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        count.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
}

fn error_info_or_code(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    match status.get_details_error_info() {
        Some(info) => format!("{:?}/{}", status.code(), info.reason),
        None => format!("{:?}/- ({})", status.code(), status.message()),
    }
}

async fn wait_for(count: &AtomicU64, at_least: u64) {
    eventually(&format!("{at_least} acknowledged publishes"), || async {
        (count.load(Ordering::Relaxed) >= at_least).then_some(())
    })
    .await;
}

#[tokio::test]
async fn losing_the_stream_leader_loses_nothing_acknowledged_and_no_subscriber_sees_a_gap() {
    let mut env = TestEnv::cluster(|_| {}).await;
    let js = env.jetstream().await;
    let mut client = env.subscriber().await;

    // A live watcher and an EXPLICIT durable, both open before the fault.
    let mut live = watch(&mut client, open().bookmarks_ms(0).build()).await;
    let live_opened = opened(&mut live).await;
    // Acknowledgements in flight to a killed node are lost; those deliveries come back after
    // ack_wait, so keep it short.
    let mut durable_open = open()
        .durable("d")
        .explicit()
        .window(64)
        .earliest()
        .bookmarks_ms(0)
        .build();
    durable_open.ack_wait = millis(2000);
    let mut durable = subscribe(&mut client, durable_open).await;
    opened(&mut durable.responses).await;
    let durable_seen = Arc::new(Mutex::new(Vec::<(u64, u32)>::new()));
    let durable_task = {
        let seen = durable_seen.clone();
        tokio::spawn(async move {
            loop {
                let d = next_delivery(&mut durable.responses).await;
                seen.lock().push((d.sequence, d.delivery_count));
                durable.ack(vec![d.sequence]).await;
            }
        })
    };

    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let log = Arc::new(Mutex::new(Published::default()));
    let publisher = tokio::spawn(publish_until(
        env.publisher().await,
        stop.clone(),
        count.clone(),
        log.clone(),
    ));
    wait_for(&count, 300).await;

    // A snapshot in progress: its window of 5 holds it in the middle of the 50 resources.
    let mut snapshot = watch(
        &mut client,
        open().snapshot().window(5).bookmarks_ms(0).build(),
    )
    .await;
    opened(&mut snapshot).await;

    // Kill the stream's leader.
    let mut stream = js.get_stream("events").await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .unwrap()
        .leader
        .unwrap();
    let victim = env.nats.cluster().index_of(&leader).unwrap();
    env.nats.cluster().node(victim).kill();
    let killed_at = Instant::now();

    // Publishing resumes by itself: 300 more acknowledged after the kill.
    let at_kill = count.load(Ordering::Relaxed);
    wait_for(&count, at_kill + 300).await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.unwrap();
    let log = Arc::try_unwrap(log).ok().unwrap().into_inner();
    let last = *log.acked.values().max().unwrap();
    for reason in log.refusals.keys() {
        assert_eq!(
            reason, "Unavailable/NATS_UNAVAILABLE",
            "publishes during the election fail only as retryable UNAVAILABLE: {:?}",
            log.refusals
        );
    }
    if let (Some(first), Some(recovered)) = (log.first_refusal, log.recovered) {
        println!(
            "publishing unavailable for {:?} (first refusal {:?} after the kill); refusals {:?}",
            recovered - first,
            first - killed_at,
            log.refusals
        );
    }

    // The live watcher: every sequence after its start, once, in order.
    let mut expected = live_opened.start_sequence.max(1);
    while expected <= last {
        let d = next_delivery(&mut live).await;
        assert_eq!(d.sequence, expected, "no gap, no duplicate");
        expected += 1;
    }

    // The snapshot: each resource once, then the changes after it, with no gap.
    let mut subjects = HashSet::new();
    let end = loop {
        match next(&mut snapshot).await.expect("snapshot continues") {
            api::subscribe_response::Response::Delivery(d) => {
                assert!(subjects.insert(d.subject.clone()), "{} twice", d.subject)
            }
            api::subscribe_response::Response::SnapshotEnd(e) => break e.sequence,
            _ => {}
        }
    };
    assert_eq!(subjects.len(), 50, "every resource in the snapshot");
    let mut expected = end + 1;
    while expected <= last {
        assert_eq!(next_delivery(&mut snapshot).await.sequence, expected);
        expected += 1;
    }

    // Every acknowledged event is in the stream, at its sequence, exactly once.
    let mut replay = watch(&mut client, open().earliest().bookmarks_ms(0).build()).await;
    opened(&mut replay).await;
    let mut stored: HashMap<String, u64> = HashMap::new();
    for seq in 1..=last {
        let d = next_delivery(&mut replay).await;
        assert_eq!(d.sequence, seq);
        let id = d.event.unwrap().id;
        assert!(
            stored.insert(id.clone(), seq).is_none(),
            "{id} stored twice"
        );
    }
    for (id, seq) in &log.acked {
        assert_eq!(stored.get(id), Some(seq), "acknowledged {id} at {seq}");
    }

    // The durable: everything, redelivering at most its window.
    env.wait_ack_floor("d", last).await;
    durable_task.abort();
    let seen: Vec<u64> = durable_seen.lock().iter().map(|(s, _)| *s).collect();
    assert_durable_lost_nothing(&seen, last, 64);

    // The node rejoins and catches up: every replica current with the whole stream.
    env.nats.cluster().node(victim).restart().unwrap();
    eventually("the restarted node to be a current replica", || {
        let js = js.clone();
        async move {
            let info = js
                .get_stream("events")
                .await
                .ok()?
                .info()
                .await
                .ok()?
                .clone();
            let cluster = info.cluster?;
            let replicas = cluster.replicas;
            (info.state.last_sequence == last
                && replicas.len() == 2
                && replicas
                    .iter()
                    .all(|r| r.current && !r.offline && r.lag.unwrap_or(0) == 0))
            .then_some(())
        }
    })
    .await;
}
