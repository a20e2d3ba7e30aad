//! What operators read: `/metrics` scraped after a scripted workload and parsed with the
//! official Prometheus client's OpenMetrics parser (Python, installed in `.tools/python` by
//! `scripts/install-test-tools.sh`), counters equal to what the workload did; `/healthz` and
//! `/readyz`; the dashboards' and alerts' metric names against what `/metrics` exposes.
//!
//! Metrics are process-wide: the counting test uses its own stream (`metered`), whose label
//! sets no other test in this binary touches, and only it makes unary `Publish` calls (the
//! gRPC call metrics have no stream label).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use jetwatch::grpc::pb::jetwatch::v1 as api;

/// One sample: metric name (with `_total`, `_count`...), labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Scrapes `/metrics` and parses it with the OpenMetrics parser.
async fn scrape(metrics: std::net::SocketAddr) -> Vec<Sample> {
    let text = http_get(metrics, "/metrics").await.1;
    let tools = concat!(env!("CARGO_MANIFEST_DIR"), "/.tools/python");
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", tools)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics (is `bash scripts/install-test-tools.sh` done?): {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A plain HTTP/1.1 GET: status and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    // Bodies come chunked or not; the test only reads line-oriented text.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    loop {
        let Some((size, rest)) = body.split_once("\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
}

/// The value of `name` with exactly these labels (0 when absent).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels.len() == l.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// The sum of `name` over every sample that has these labels (and maybe others).
fn total(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .sum()
}

/// A widget on the `metered` stream.
fn metered(id: &str, name: &str) -> api::PublishRequest {
    api::PublishRequest {
        event: Some(widget(id, name, "modified")),
        stream: "metered".into(),
        expected_subject_sequence: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_exactly_what_a_workload_did() {
    let env = TestEnv::with(|s| {
        let mut m = s.streams[0].clone();
        m.name = "metered".into();
        m.subjects = vec!["metered.>".into()];
        m.dead_letter_subject = None;
        s.streams.push(m);
    })
    .await;
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    let mut publisher = env.publisher().await;
    let mut subscriber = env.subscriber().await;

    // Three live watchers, and a durable that takes nothing after it opens (it lags).
    let (n, watchers) = (20u64, 3u64);
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let mut s = subscriber
            .watch(open().stream("metered").build())
            .await
            .unwrap()
            .into_inner();
        opened(&mut s).await;
        streams.push(s);
    }
    let lagging = subscribe(
        &mut subscriber,
        open()
            .stream("metered")
            .durable("lagging")
            .explicit()
            .build(),
    )
    .await;
    let mut lagging = lagging;
    opened(&mut lagging.responses).await;
    drop(lagging);

    // N stored, then one duplicate, one invalid, one refused by the expected sequence.
    for i in 0..n {
        publisher
            .publish(metered(&format!("m{i}"), &format!("w{i}")))
            .await
            .unwrap();
    }
    let duplicate = publisher.publish(metered("m0", "w0")).await.unwrap();
    assert!(duplicate.into_inner().duplicate);
    let mut invalid = metered("bad", "w1");
    invalid.event.as_mut().unwrap().r#type.clear();
    assert!(publisher.publish(invalid).await.is_err());
    let mut stale = metered("stale", "w1");
    stale.expected_subject_sequence = Some(999);
    assert!(publisher.publish(stale).await.is_err());

    // Every watcher gets every event.
    for s in &mut streams {
        for _ in 0..n {
            next_delivery(s).await;
        }
    }

    // One event terminated by a client: one dead letter.
    let mut client = env.subscriber().await;
    let mut terminator = subscribe(
        &mut client,
        open()
            .stream("metered")
            .durable("terminator")
            .explicit()
            .earliest()
            .build(),
    )
    .await;
    opened(&mut terminator.responses).await;
    let first = next_delivery(&mut terminator.responses).await;
    terminator
        .send(api::subscribe_request::Request::Term(api::Term {
            sequences: vec![first.sequence],
            reason: "cannot handle it".into(),
        }))
        .await;

    let stream = [("stream", "metered")];
    let samples = eventually("the workload to show in /metrics", || async {
        let s = scrape(metrics).await;
        let delivered = total(&s, "jetwatch_delivered_events_total", &stream);
        let dead = value(
            &s,
            "jetwatch_dead_letters_total",
            &[("stream", "metered"), ("reason", "terminated")],
        );
        // The watchers' N×W, and the terminator's window.
        (delivered >= (n * watchers + 1) as f64 && dead == 1.0).then_some(s)
    })
    .await;
    let publishes = |outcome| {
        value(
            &samples,
            "jetwatch_publish_events_total",
            &[("stream", "metered"), ("outcome", outcome)],
        )
    };
    assert_eq!(publishes("stored"), n as f64);
    assert_eq!(publishes("duplicate"), 1.0);
    assert_eq!(publishes("invalid"), 1.0);
    assert_eq!(publishes("rejected_sequence"), 1.0);
    assert!(
        value(
            &samples,
            "jetwatch_publish_bytes_total",
            &[("stream", "metered"), ("outcome", "stored")]
        ) > 0.0
    );
    // Receipt to acknowledgement, once per acknowledged publish (stored and duplicate).
    assert_eq!(
        value(&samples, "jetwatch_publish_duration_seconds_count", &stream),
        (n + 1) as f64
    );
    assert_eq!(
        value(
            &samples,
            "jetwatch_delivered_events_total",
            &[("stream", "metered"), ("path", "shared")]
        ),
        (n * watchers) as f64,
        "live watchers are served by the shared reader"
    );
    assert_eq!(
        value(
            &samples,
            "jetwatch_settlements_total",
            &[("stream", "metered"), ("kind", "term")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "jetwatch_subscriptions",
            &[("stream", "metered"), ("kind", "ephemeral")]
        ),
        watchers as f64
    );
    assert_eq!(
        value(
            &samples,
            "jetwatch_subscriptions_opened_total",
            &[("stream", "metered"), ("kind", "durable")]
        ),
        2.0
    );
    // The durable that stopped: every event pending, its lag measured from the oldest.
    let lagging = [("stream", "metered"), ("durable", "lagging")];
    let pending = value(&samples, "jetwatch_durable_pending_events", &lagging);
    let unacked = value(&samples, "jetwatch_durable_ack_pending_events", &lagging);
    let redelivered = value(&samples, "jetwatch_durable_redelivered_events", &lagging);
    assert_eq!(
        pending + unacked,
        n as f64,
        "pending {pending}, unacknowledged {unacked}, redelivered {redelivered}"
    );
    assert!(
        value(
            &samples,
            "jetwatch_durable_oldest_unacked_age_seconds",
            &lagging
        ) >= 0.0
    );
    assert!(samples.iter().any(|(name, l, _)| name
        == "jetwatch_durable_oldest_unacked_age_seconds"
        && l.get("durable").map(String::as_str) == Some("lagging")));
    // gRPC calls by method and code: the unary publishes.
    let publish = [("method", "/jetwatch.v1.Publisher/Publish")];
    assert_eq!(
        value(
            &samples,
            "jetwatch_grpc_requests_total",
            &[publish[0], ("code", "OK")]
        ),
        (n + 1) as f64
    );
    assert_eq!(
        value(
            &samples,
            "jetwatch_grpc_requests_total",
            &[publish[0], ("code", "INVALID_ARGUMENT")]
        ),
        1.0
    );

    // The lag grows while nobody reads: the age is measured, not fixed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = scrape(metrics).await;
    assert!(
        value(
            &later,
            "jetwatch_durable_oldest_unacked_age_seconds",
            &lagging
        ) >= 1.0
    );

    // Watchers that leave are counted as gone.
    drop(streams);
    eventually("ended watchers to be counted", || async {
        let s = scrape(metrics).await;
        (value(
            &s,
            "jetwatch_subscriptions_ended_total",
            &[("stream", "metered"), ("reason", "client_gone")],
        ) >= watchers as f64)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_nats_and_liveness_does_not() {
    let mut env = TestEnv::start().await;
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    env.nats.stop();
    eventually("not ready without NATS", || async {
        (http_get(metrics, "/readyz").await.0 == 503).then_some(())
    })
    .await;
    assert_eq!(http_get(metrics, "/healthz").await.0, 200, "still alive");
    env.nats.restart().unwrap();
    eventually("ready again", || async {
        (http_get(metrics, "/readyz").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_metrics_that_exist() {
    let env = TestEnv::start().await;
    let metrics = env.gateway.as_ref().unwrap().metrics_addr();
    // A little of everything, so every family has a member (empty families are not listed):
    // a publish, a watcher that receives it and leaves, a durable.
    let mut publisher = env.publisher().await;
    let mut subscriber = env.subscriber().await;
    let mut watcher = subscriber.watch(open().build()).await.unwrap().into_inner();
    opened(&mut watcher).await;
    // Through PublishStream: the unary Publish call counts belong to the metrics test (gRPC
    // call metrics have no stream label, and tests in this binary run at once).
    let mut answers = publisher
        .publish_stream(futures::stream::iter([api::PublishRequest {
            event: Some(widget("d1", "w1", "created")),
            ..Default::default()
        }]))
        .await
        .unwrap()
        .into_inner();
    assert!(answers.message().await.unwrap().unwrap().error.is_none());
    next_delivery(&mut watcher).await;
    drop(watcher);
    let mut durable = subscribe(
        &mut subscriber,
        open().durable("dashboard").explicit().build(),
    )
    .await;
    opened(&mut durable.responses).await;
    drop(durable);
    // Families exposed, by their metric family names (`_total` etc. stripped).
    let text = eventually("every family to have a member", || async {
        let text = http_get(metrics, "/metrics").await.1;
        (text.contains("jetwatch_subscriptions_ended_total{")
            && text.contains("jetwatch_durable_oldest_unacked_age_seconds{"))
        .then_some(text)
    })
    .await;
    let exposed: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let known = |name: &str| {
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        exposed.contains(family) || exposed.contains(name)
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let mut checked = 0;
    for file in [
        "deploy/grafana/jetwatch.json",
        "deploy/prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
        for name in metric_names(&text) {
            assert!(
                known(&name),
                "{file} uses `{name}`, which /metrics does not expose"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 10,
        "the dashboard and alerts use metrics ({checked})"
    );
}

/// Every `jetwatch_*` (and `process_*`) metric name in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("jetwatch_") || rest.starts_with("process_") {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..end].to_owned());
            i += end;
        } else {
            i += rest.chars().next().map_or(1, char::len_utf8);
        }
    }
    out
}
