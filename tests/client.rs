//! The Rust client crate against a real gateway: a `Watcher` across a gateway restart and an
//! expired position, and a `Reflector` that converges to exactly what a fresh snapshot shows.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use jetwatch_client::{
    Event, ExpiredPolicy, Publisher, Reflector, ReflectorOptions, StartFrom, WatchItem,
    WatchOptions, Watcher,
};

/// A widget event as the client crate's type.
fn event(id: &str, name: &str, verb: &str) -> Event {
    jetwatch_client::convert::event_from_pb(widget(id, name, verb), "event").unwrap()
}

/// Publishes `n` modifications of widgets `prefix0..`, returning the last sequence.
async fn publish_n(publisher: &mut Publisher, prefix: &str, n: usize) -> u64 {
    let events: Vec<Event> = (0..n)
        .map(|i| {
            event(
                &format!("{prefix}-{i}"),
                &format!("{prefix}{i}"),
                "modified",
            )
        })
        .collect();
    let results = publisher.publish_all("", &events).await.unwrap();
    results.last().unwrap().as_ref().unwrap().sequence
}

/// Reads the next item, failing the test if none comes in 20 s.
async fn next(watcher: &mut Watcher) -> WatchItem {
    tokio::time::timeout(Duration::from_secs(20), watcher.next())
        .await
        .expect("the watcher yields an item")
        .expect("the watcher rides through")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_rides_through_a_gateway_restart_with_no_gap_and_no_duplicate() {
    let mut env = TestEnv::start().await;
    let server = env.addr.to_string();
    let mut publisher = Publisher::connect(server.as_str()).await.unwrap();
    let first_half = publish_n(&mut publisher, "a", 300).await;
    let options = WatchOptions {
        from: StartFrom::Earliest,
        ..WatchOptions::default()
    };
    let mut watcher = Watcher::watch(server.as_str(), &options)
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200));

    let mut expected = 1;
    while expected <= 100 {
        if let WatchItem::Delivery { sequence, .. } = next(&mut watcher).await {
            assert_eq!(sequence, expected, "in order, no gap");
            expected += 1;
        }
    }
    env.restart_gateway().await;
    let mut publisher = Publisher::connect(server.as_str()).await.unwrap();
    let last = publish_n(&mut publisher, "b", 300).await;
    assert_eq!(last, first_half + 300);

    let (mut disconnects, mut resumed_at) = (0, None);
    while expected <= last {
        match next(&mut watcher).await {
            WatchItem::Delivery { sequence, .. } => {
                assert_eq!(
                    sequence, expected,
                    "no gap and no duplicate across the restart"
                );
                expected += 1;
            }
            WatchItem::Disconnected { resume_from, .. } => {
                disconnects += 1;
                assert!(resume_from.is_some_and(|r| r <= expected));
            }
            WatchItem::Opened {
                resumed: true,
                start_sequence,
                ..
            } => resumed_at = Some((start_sequence, expected)),
            WatchItem::Opened { .. } | WatchItem::Bookmark { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(disconnects >= 1, "the restart was reported");
    let (start, expected_then) = resumed_at.expect("the reopen was reported as a resume");
    assert_eq!(
        start, expected_then,
        "it resumed right after its last delivery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_position_fails_or_restarts_as_the_policy_says() {
    let env = TestEnv::start().await;
    let server = env.addr.to_string();
    let mut publisher = Publisher::connect(server.as_str()).await.unwrap();
    let last = publish_n(&mut publisher, "w", 20).await;
    // Sequences 1..=10 leave the stream (as retention limits would make them).
    let js = env.jetstream().await;
    let mut stream = js.get_stream("events").await.unwrap();
    stream.purge().sequence(11).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.first_sequence, 11);

    let from_one = |on_expired| WatchOptions {
        from: StartFrom::Sequence(1),
        on_expired,
        ..WatchOptions::default()
    };

    // Fail: the error, with the reason a program can act on.
    let mut watcher = Watcher::watch(server.as_str(), &from_one(ExpiredPolicy::Fail));
    let err = watcher.next().await.expect_err("the position has expired");
    assert_eq!(err.reason().as_deref(), Some("HISTORY_EXPIRED"), "{err}");

    // From earliest: says how far it jumped, then goes on from the first retained event.
    let mut watcher = Watcher::watch(server.as_str(), &from_one(ExpiredPolicy::FromEarliest));
    match next(&mut watcher).await {
        WatchItem::Restarted {
            expired,
            first_sequence,
            from,
        } => {
            assert_eq!(
                (expired, first_sequence, from),
                (1, 11, StartFrom::Earliest)
            );
        }
        other => panic!("expected Restarted, got {other:?}"),
    }
    let mut expected = 11;
    while expected <= last {
        if let WatchItem::Delivery { sequence, .. } = next(&mut watcher).await {
            assert_eq!(sequence, expected);
            expected += 1;
        }
    }

    // Re-snapshot: the current state of every resource, then the end of the snapshot.
    let mut watcher = Watcher::watch(server.as_str(), &from_one(ExpiredPolicy::Resnapshot));
    assert!(matches!(
        next(&mut watcher).await,
        WatchItem::Restarted {
            from: StartFrom::Snapshot,
            ..
        }
    ));
    let mut resources = 0;
    loop {
        match next(&mut watcher).await {
            WatchItem::Delivery { .. } => resources += 1,
            WatchItem::SnapshotEnd { sequence } => {
                assert_eq!(sequence, last);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(resources, 10, "w10..w19 are what the stream still holds");
}

/// The state a fresh snapshot shows: subject → (sequence, event id).
async fn snapshot(server: &str) -> BTreeMap<String, (u64, String)> {
    let options = WatchOptions {
        from: StartFrom::Snapshot,
        ..WatchOptions::default()
    };
    let mut watcher = Watcher::watch(server, &options);
    let mut state = BTreeMap::new();
    loop {
        match next(&mut watcher).await {
            WatchItem::Delivery {
                sequence,
                subject,
                event,
                ..
            } => {
                assert!(
                    state.insert(subject, (sequence, event.id)).is_none(),
                    "one event per resource"
                );
            }
            WatchItem::SnapshotEnd { .. } => return state,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_under_random_changes_converges_to_what_a_fresh_snapshot_shows() {
    let mut env = TestEnv::with(|s| {
        s.streams[0].tombstone = Some("type LIKE '%.deleted'".into());
    })
    .await;
    let server = env.addr.to_string();
    let mut publisher = Publisher::connect(server.as_str()).await.unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut model: HashMap<String, bool> = HashMap::new();
    let mut n = 0;
    let mut random_changes = |count: usize| -> Vec<Event> {
        (0..count)
            .map(|_| {
                n += 1;
                let name = format!("w{}", rng.usize(..60));
                let verb = match model.get(&name) {
                    None | Some(false) => "created",
                    Some(true) if rng.u8(..4) == 0 => "deleted",
                    Some(true) => "modified",
                };
                model.insert(name.clone(), verb != "deleted");
                event(&format!("e{n}"), &name, verb)
            })
            .collect()
    };
    // Some state before the reflector starts (its snapshot), the rest while it runs.
    publisher
        .publish_all("", &random_changes(300))
        .await
        .unwrap();
    let reflector = Reflector::start(server.as_str(), ReflectorOptions::default());
    reflector.wait_until_ready().await.unwrap();

    // Readers consult the map while it changes: never a deleted resource in it.
    let reader = {
        let reflector = reflector.clone();
        tokio::spawn(async move {
            let mut reads = 0u64;
            while !reflector.is_finished() {
                for r in reflector.list() {
                    assert!(
                        !r.event.ty.ends_with(".deleted"),
                        "a deleted resource listed"
                    );
                }
                reads += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            reads
        })
    };
    for round in 0..6 {
        let last = publisher
            .publish_all("", &random_changes(200))
            .await
            .unwrap();
        assert!(last.iter().all(Result::is_ok));
        if round == 3 {
            // A restart in the middle: the reflector resumes where it was.
            env.restart_gateway().await;
            publisher = Publisher::connect(server.as_str()).await.unwrap();
        }
    }
    let last = publisher.publish_all("", &random_changes(1)).await.unwrap()[0]
        .as_ref()
        .unwrap()
        .sequence;
    reflector.wait_for_sequence(last).await.unwrap();

    let reflected: BTreeMap<String, (u64, String)> = reflector
        .list()
        .into_iter()
        .map(|r| (r.subject, (r.sequence, r.event.id.clone())))
        .collect();
    assert_eq!(
        reflected,
        snapshot(&server).await,
        "the reflector equals a fresh snapshot"
    );
    let live = model.values().filter(|alive| **alive).count();
    assert_eq!(reflected.len(), live, "and the resources that exist");
    assert!(!reflector.is_finished());
    reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_restarts_from_its_checkpoint_and_falls_back_to_a_snapshot() {
    let env = TestEnv::with(|s| {
        s.streams[0].tombstone = Some("type LIKE '%.deleted'".into());
    })
    .await;
    let server = env.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let options = || ReflectorOptions {
        checkpoint_file: Some(dir.path().join("widgets.checkpoint")),
        checkpoint_interval: Duration::from_millis(50),
        ..ReflectorOptions::default()
    };
    let publisher = Publisher::connect(server.as_str()).await.unwrap();
    let publish = |events: Vec<Event>| {
        let mut publisher = publisher.clone();
        async move {
            let results = publisher.publish_all("", &events).await.unwrap();
            results.last().unwrap().as_ref().unwrap().sequence
        }
    };
    let created: Vec<Event> = (0..50)
        .map(|i| event(&format!("c{i}"), &format!("w{i}"), "created"))
        .collect();
    let first = publish(created).await;

    let reflector = Reflector::start(server.as_str(), options());
    reflector.wait_for_sequence(first).await.unwrap();
    assert_eq!(
        reflector.resumed_from(),
        None,
        "no checkpoint yet: a snapshot"
    );
    assert_eq!(reflector.len(), 50);
    reflector.save_checkpoint().await.unwrap();
    drop(reflector);

    // While no reflector runs: w0..w9 deleted, w10..w19 modified, w50..w59 created.
    let mut changes = Vec::new();
    for i in 0..10 {
        changes.push(event(&format!("d{i}"), &format!("w{i}"), "deleted"));
        changes.push(event(&format!("m{i}"), &format!("w{}", i + 10), "modified"));
        changes.push(event(&format!("n{i}"), &format!("w{}", i + 50), "created"));
    }
    let second = publish(changes).await;

    // Restarted on its checkpoint: ready at once with the stored state, then the changes.
    let reflector = Reflector::start(server.as_str(), options());
    reflector.wait_until_ready().await.unwrap();
    assert_eq!(
        reflector.resumed_from(),
        Some(first),
        "resumed from the checkpoint"
    );
    reflector.wait_for_sequence(second).await.unwrap();
    let state = |r: &Reflector| -> BTreeMap<String, (u64, String)> {
        r.list()
            .into_iter()
            .map(|r| (r.subject, (r.sequence, r.event.id.clone())))
            .collect()
    };
    assert_eq!(state(&reflector), snapshot(&server).await);
    assert_eq!(reflector.len(), 50);
    assert!(reflector.get("events.widgets._.w0").is_none(), "deleted");
    assert_eq!(
        reflector.get("events.widgets._.w10").unwrap().event.ty,
        "com.example.widget.modified"
    );
    reflector.save_checkpoint().await.unwrap();
    drop(reflector);

    // The checkpoint's position leaves the stream: a new snapshot, whatever was stored.
    publish(vec![event("gone", "w98", "created")]).await;
    let third = publish(vec![event("late", "w99", "created")]).await;
    let js = env.jetstream().await;
    let stream = js.get_stream("events").await.unwrap();
    stream.purge().sequence(third).await.unwrap();
    let reflector = Reflector::start(server.as_str(), options());
    reflector.wait_for_sequence(third).await.unwrap();
    assert_eq!(state(&reflector), snapshot(&server).await);
    assert_eq!(reflector.len(), 1, "only w99 is left in the stream");
    drop(reflector);

    // An unreadable checkpoint is ignored: a snapshot.
    std::fs::write(dir.path().join("widgets.checkpoint"), b"garbage").unwrap();
    let reflector = Reflector::start(server.as_str(), options());
    reflector.wait_until_ready().await.unwrap();
    assert_eq!(reflector.resumed_from(), None);
    assert_eq!(state(&reflector), snapshot(&server).await);
}
