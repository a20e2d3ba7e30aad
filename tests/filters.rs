//! Filters end to end: each dialect delivers exactly the matching events, invalid filters are
//! refused at `Open`, subject pushdown gives the same results as attribute filtering, and
//! snapshots leave tombstones out.

mod common;

use std::collections::HashMap;

use api::start_position::Position;
use api::subscribe_response::Response;
use common::*;
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use jetwatch::grpc::pb::jetwatch::v1 as api;

use ce::cloud_event::cloud_event_attribute_value::Attr;

fn event(id: &str, ty: &str, name: &str, namespace: &str, priority: i32) -> ce::CloudEvent {
    let mut e = widget(id, name, "x");
    e.r#type = ty.to_string();
    e.attributes.insert(
        "namespace".into(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(Attr::CeString(namespace.into())),
        },
    );
    e.attributes.insert(
        "priority".into(),
        ce::cloud_event::CloudEventAttributeValue {
            attr: Some(Attr::CeInteger(priority)),
        },
    );
    e
}

/// Publishes a fixed set of events and returns the last sequence.
async fn publish_fixture(env: &TestEnv) -> u64 {
    let mut publisher = env.publisher().await;
    let fixture = [
        event("1", "com.example.widget.added", "w1", "prod", 1),
        event("2", "com.example.widget.modified", "w1", "prod", 5),
        event("3", "com.example.gadget.added", "g1", "dev", 9),
        event("4", "com.example.widget.deleted", "w2", "dev", 2),
        event("5", "org.other.widget.added", "w3", "prod", 7),
    ];
    let mut last = 0;
    for e in fixture {
        last = publish(&mut publisher, e).await;
    }
    last
}

/// The ids a Watch with `filter` and `subjects` delivers from the start up to `last`.
async fn ids(
    env: &TestEnv,
    filter: Option<api::Filter>,
    subjects: Vec<String>,
    last: u64,
) -> Vec<String> {
    let mut subscriber = env.subscriber().await;
    let mut stream = watch(
        &mut subscriber,
        api::Open {
            filter,
            subjects,
            start: start_at(Position::Earliest(())),
            heartbeat: millis(100),
            ..Default::default()
        },
    )
    .await;
    opened(&mut stream).await;
    let mut out = Vec::new();
    loop {
        match next(&mut stream).await.unwrap() {
            Response::Delivery(d) => {
                out.push(d.event.unwrap().id);
                if d.sequence >= last {
                    return out;
                }
            }
            Response::Bookmark(b) if b.sequence >= last => return out,
            Response::Bookmark(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn map(pairs: &[(&str, &str)]) -> api::AttributeMap {
    api::AttributeMap {
        attributes: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
    }
}

fn f(filter: api::filter::Filter) -> api::Filter {
    api::Filter {
        filter: Some(filter),
    }
}

#[tokio::test]
async fn every_dialect_delivers_exactly_the_matching_events() {
    use api::filter::Filter as F;
    let env = TestEnv::start().await;
    let last = publish_fixture(&env).await;
    let cases: Vec<(&str, api::Filter, Vec<&str>)> = vec![
        (
            "exact",
            f(F::Exact(map(&[("type", "com.example.widget.added")]))),
            vec!["1"],
        ),
        (
            "exact on an integer extension",
            f(F::Exact(map(&[("priority", "7")]))),
            vec!["5"],
        ),
        (
            "prefix",
            f(F::Prefix(map(&[("type", "com.example.")]))),
            vec!["1", "2", "3", "4"],
        ),
        (
            "suffix",
            f(F::Suffix(map(&[("type", ".added")]))),
            vec!["1", "3", "5"],
        ),
        (
            "all",
            f(F::All(api::FilterList {
                filters: vec![
                    f(F::Suffix(map(&[("type", ".added")]))),
                    f(F::Exact(map(&[("namespace", "prod")]))),
                ],
            })),
            vec!["1", "5"],
        ),
        (
            "any",
            f(F::Any(api::FilterList {
                filters: vec![
                    f(F::Exact(map(&[("subject", "g1")]))),
                    f(F::Exact(map(&[("subject", "w3")]))),
                ],
            })),
            vec!["3", "5"],
        ),
        (
            "not",
            f(F::Not(Box::new(f(F::Exact(map(&[("namespace", "prod")])))))),
            vec!["3", "4"],
        ),
        (
            "sql",
            f(F::Sql(
                "type LIKE 'com.example.%' AND priority > 2 AND EXISTS namespace".into(),
            )),
            vec!["2", "3"],
        ),
        (
            "missing attribute is false",
            f(F::Exact(map(&[("nosuch", "x")]))),
            vec![],
        ),
    ];
    for (name, filter, want) in cases {
        let got = ids(&env, Some(filter), vec![], last).await;
        assert_eq!(got, want, "dialect {name}");
    }
}

#[tokio::test]
async fn invalid_filters_are_refused_with_the_place_of_the_mistake() {
    use api::filter::Filter as F;
    let env = TestEnv::start().await;
    let mut subscriber = env.subscriber().await;
    let cases: Vec<(api::Filter, &str)> = vec![
        (f(F::Exact(map(&[]))), "exact"),
        (f(F::Exact(map(&[("", "x")]))), "exact"),
        (f(F::All(api::FilterList { filters: vec![] })), "all"),
        (f(F::Sql("type = ".into())), "1:"),
        (f(F::Sql("1 + 1".into())), "sql"),
        (api::Filter { filter: None }, "filter"),
    ];
    for (filter, mentions) in cases {
        let status = subscriber
            .watch(api::Open {
                filter: Some(filter.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{filter:?}");
        assert!(
            status.message().contains(mentions),
            "{filter:?}: {}",
            status.message()
        );
    }
}

#[tokio::test]
async fn subject_pushdown_and_attribute_filtering_agree() {
    use api::filter::Filter as F;
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let mut subject_of_w1 = String::new();
    let mut last = 0;
    for i in 0..60 {
        let name = format!("w{}", i % 6);
        let r = publisher
            .publish(api::PublishRequest {
                event: Some(widget(&format!("e{i}"), &name, "modified")),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        if name == "w1" {
            subject_of_w1 = r.subject.clone();
        }
        last = r.sequence;
    }
    // Pushed down: JetStream narrows the read to the subject.
    let pushed = ids(&env, None, vec![subject_of_w1], last).await;
    // Not pushed down: every event is read and the gateway filters on the attribute.
    let filtered = ids(
        &env,
        Some(f(F::Exact(map(&[("subject", "w1")])))),
        vec![],
        last,
    )
    .await;
    assert_eq!(pushed.len(), 10);
    assert_eq!(pushed, filtered);
}

#[tokio::test]
async fn durable_subscriptions_apply_filters_too() {
    use api::filter::Filter as F;
    let env = TestEnv::start().await;
    let last = publish_fixture(&env).await;
    let mut subscriber = env.subscriber().await;
    let mut bidi = subscribe(
        &mut subscriber,
        api::Open {
            durable: "prod-only".into(),
            filter: Some(f(F::Exact(map(&[("namespace", "prod")])))),
            start: start_at(Position::Earliest(())),
            ..Default::default()
        },
    )
    .await;
    opened(&mut bidi.responses).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut bidi.responses).await;
        bidi.ack(vec![d.sequence]).await;
        got.push(d.event.unwrap().id);
    }
    assert_eq!(got, ["1", "2", "5"]);
    assert!(last >= 5);
}

#[tokio::test]
async fn snapshots_leave_tombstoned_resources_out() {
    let env =
        TestEnv::with(|s| s.streams[0].tombstone = Some("type LIKE '%.deleted'".into())).await;
    let mut publisher = env.publisher().await;
    publish(&mut publisher, widget("1", "w1", "added")).await;
    publish(&mut publisher, widget("2", "w2", "added")).await;
    publish(&mut publisher, widget("3", "w2", "deleted")).await;
    publish(&mut publisher, widget("4", "w3", "deleted")).await;
    publish(&mut publisher, widget("5", "w3", "added")).await;
    let mut subscriber = env.subscriber().await;
    for durable in ["", "snap"] {
        let mut bidi = subscribe(
            &mut subscriber,
            api::Open {
                durable: durable.into(),
                ack_mode: api::AckMode::Auto as i32,
                start: start_at(Position::Snapshot(())),
                ..Default::default()
            },
        )
        .await;
        opened(&mut bidi.responses).await;
        let mut got = Vec::new();
        loop {
            match next(&mut bidi.responses).await.unwrap() {
                Response::Delivery(d) => got.push(d.event.unwrap().id),
                Response::SnapshotEnd(e) => {
                    assert_eq!(e.sequence, 5);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, ["1", "5"], "durable `{durable}`");
    }
}

#[test]
fn a_bad_tombstone_expression_is_a_configuration_error() {
    let mut s = test_settings();
    s.streams[0].tombstone = Some("type LIKE".into());
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("streams[0].tombstone"), "{err}");
}
