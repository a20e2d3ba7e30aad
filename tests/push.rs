//! Push subscriptions against real HTTP receivers written here (axum on loopback): signed
//! (verified with an implementation of the Standard Webhooks scheme written in this test),
//! retried on 5xx, 429 (honouring Retry-After) and timeouts, dead-lettered on other 4xx,
//! delivered in order when ordered, secrets rotated mid-stream, endpoints refused by the
//! CloudEvents webhook handshake, and shared by two gateway processes of which one is killed.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use hmac::{Hmac, Mac};
use jetwatch::grpc::pb::jetwatch::v1 as api;
use parking_lot::Mutex;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Arrival {
    id: String,
    timestamp: String,
    signature: String,
    subject: String,
    ce_type: String,
    body: Vec<u8>,
    at: Instant,
}

/// What the receiver answers for the n-th request about a resource (`ce-subject`); past the
/// script, 200.
#[derive(Clone, Copy, Debug)]
enum Answer {
    Status(u16),
    RetryAfter(u64),
    Hang(Duration),
}

#[derive(Default)]
struct ReceiverState {
    arrivals: Vec<Arrival>,
    scripts: HashMap<String, Vec<Answer>>,
    allow_origin: Option<String>,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<ReceiverState>>);

impl Receiver {
    /// Serves on a free loopback port; `allow_origin` answers the handshake.
    async fn start(allow_origin: Option<&str>) -> (Receiver, SocketAddr) {
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        let receiver = Receiver::default();
        receiver.0.lock().allow_origin = allow_origin.map(str::to_owned);
        let post = {
            let r = receiver.clone();
            move |headers: HeaderMap, body: axum::body::Bytes| {
                let r = r.clone();
                async move {
                    let get = |n: &str| {
                        headers
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let arrival = Arrival {
                        id: get("webhook-id"),
                        timestamp: get("webhook-timestamp"),
                        signature: get("webhook-signature"),
                        subject: get("ce-subject"),
                        ce_type: get("ce-type"),
                        body: body.to_vec(),
                        at: Instant::now(),
                    };
                    let answer = {
                        let mut state = r.0.lock();
                        let script = state.scripts.entry(arrival.subject.clone()).or_default();
                        let answer = if script.is_empty() {
                            Answer::Status(200)
                        } else {
                            script.remove(0)
                        };
                        state.arrivals.push(arrival);
                        answer
                    };
                    match answer {
                        Answer::Status(s) => {
                            (StatusCode::from_u16(s).unwrap(), "scripted".to_owned())
                                .into_response()
                        }
                        Answer::RetryAfter(secs) => (
                            StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", secs.to_string())],
                            "slow down",
                        )
                            .into_response(),
                        Answer::Hang(d) => {
                            tokio::time::sleep(d).await;
                            (StatusCode::OK, "late").into_response()
                        }
                    }
                }
            }
        };
        let options = {
            let r = receiver.clone();
            move |headers: HeaderMap| {
                let r = r.clone();
                async move {
                    let origin = headers
                        .get("webhook-request-origin")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    match r.0.lock().allow_origin.clone() {
                        Some(allowed) if allowed == "*" || allowed == origin => {
                            (StatusCode::OK, [("webhook-allowed-origin", allowed)]).into_response()
                        }
                        _ => StatusCode::FORBIDDEN.into_response(),
                    }
                }
            }
        };
        let app = axum::Router::new().route("/hook", axum::routing::post(post).options(options));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    fn script(&self, subject: &str, answers: &[Answer]) {
        self.0
            .lock()
            .scripts
            .insert(subject.into(), answers.to_vec());
    }

    fn arrivals(&self) -> Vec<Arrival> {
        self.0.lock().arrivals.clone()
    }
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_SECRET: &str = "whsec_c2Vjb25kLXNlY3JldC1vZi1hdC1sZWFzdC0xNg==";

/// Verifies a Standard Webhooks signature header against `secret`, written here from the
/// specification (not the gateway's code).
fn signed_with(a: &Arrival, secret: &str) -> bool {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", a.id, a.timestamp).as_bytes());
    mac.update(&a.body);
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    a.signature
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

fn push(name: &str, url: &str) -> api::PushSubscription {
    api::PushSubscription {
        name: name.into(),
        url: url.into(),
        secrets: vec![SECRET.into()],
        start: "earliest".into(),
        ..Default::default()
    }
}

/// Fast retries, and a dead-letter stream.
fn push_settings(s: &mut jetwatch::config::Settings) {
    s.push.backoff_initial = Duration::from_millis(100);
    s.push.backoff_max = Duration::from_millis(400);
    s.push.default_timeout = Duration::from_millis(800);
    s.push.reload_interval = Duration::from_millis(100);
    let mut dl = s.streams[0].clone();
    dl.name = "deadletter".into();
    dl.subjects = vec!["deadletter.>".into()];
    dl.dead_letter_subject = None;
    s.streams.push(dl);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_are_signed_retried_and_dead_lettered_as_the_endpoint_answers() {
    let (receiver, addr) = Receiver::start(Some("*")).await;
    let env = TestEnv::with(push_settings).await;
    let mut admin = env.admin().await;
    let mut sub = push("hooks", &format!("http://{addr}/hook"));
    sub.dead_letter_subject = "deadletter.hooks".into();
    sub.max_attempts = 4;
    let created = admin
        .create_push_subscription(sub.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        created.subscription.unwrap().secrets.is_empty(),
        "secrets are never returned"
    );
    assert_eq!(created.secret_count, 1);
    let again = admin.create_push_subscription(sub).await.unwrap_err();
    assert_eq!(again.code(), tonic::Code::AlreadyExists);

    receiver.script("retry", &[Answer::Status(500), Answer::Status(503)]);
    receiver.script("throttled", &[Answer::RetryAfter(1)]);
    receiver.script("gone", &[Answer::Status(404)]);
    receiver.script("slow", &[Answer::Hang(Duration::from_secs(2))]);
    receiver.script("broken", &[Answer::Status(500); 10]);
    let mut publisher = env.publisher().await;
    for name in ["ok", "retry", "throttled", "gone", "slow", "broken"] {
        publish(
            &mut publisher,
            widget(&format!("e-{name}"), name, "modified"),
        )
        .await;
    }

    // Delivered at last: ok at once, retry after two 5xx, throttled after its Retry-After,
    // slow after the attempt that timed out.
    let arrivals = eventually("every deliverable event acknowledged", || {
        let receiver = receiver.clone();
        async move {
            let a = receiver.arrivals();
            let count = |s: &str| a.iter().filter(|x| x.subject == s).count();
            (count("ok") >= 1
                && count("retry") >= 3
                && count("throttled") >= 2
                && count("slow") >= 2
                && count("broken") >= 4)
                .then_some(a)
        }
    })
    .await;
    for a in &arrivals {
        assert!(
            signed_with(a, SECRET),
            "a valid Standard Webhooks signature: {a:?}"
        );
        assert_eq!(
            a.ce_type, "com.example.widget.modified",
            "CloudEvents binary mode"
        );
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            format!("{{\"name\":\"{}\"}}", a.subject),
            "the data as the body"
        );
    }
    let of = |s: &str| {
        arrivals
            .iter()
            .filter(|a| a.subject == s)
            .collect::<Vec<_>>()
    };
    let retry = of("retry");
    assert!(
        retry.iter().all(|a| a.id == retry[0].id),
        "the same webhook-id on every attempt, so receivers deduplicate"
    );
    let throttled = of("throttled");
    assert!(
        throttled[1].at - throttled[0].at >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    assert_eq!(of("gone").len(), 1, "a 404 is not retried");
    assert_eq!(of("ok").len(), 1);

    // Given up on: the 404 at once, the always-failing one after max_attempts; both copied to
    // the dead-letter subject with why.
    let js = env.jetstream().await;
    let dead = eventually("two dead letters", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("deadletter").await.ok()?;
            let n = stream.info().await.ok()?.state.messages;
            (n >= 2).then_some(stream)
        }
    })
    .await;
    let mut reasons = Vec::new();
    for seq in 1..=2 {
        let m = dead.get_raw_message(seq).await.unwrap();
        let h = m.headers;
        let get = |n: &str| h.get(n).map(|v| v.to_string()).unwrap_or_default();
        reasons.push((
            get("ce-subject"),
            get("ce-deadletterstatus"),
            get("ce-deadletterattempts"),
        ));
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("broken".to_owned(), "500".to_owned(), "4".to_owned()),
            ("gone".to_owned(), "404".to_owned(), "1".to_owned()),
        ]
    );

    // Listed with its position and last outcome.
    let info = eventually("the status to be recorded", || {
        let mut admin = admin.clone();
        async move {
            let info = admin
                .get_push_subscription(api::PushSubscriptionRequest {
                    name: "hooks".into(),
                })
                .await
                .ok()?
                .into_inner();
            (info.last_success.is_some() && !info.last_error.is_empty()).then_some(info)
        }
    })
    .await;
    assert_eq!(info.position.unwrap().ack_floor_sequence, 6);

    // An update may change the in-flight bound (the durable follows), not the subjects.
    let mut changed = info.subscription.unwrap();
    changed.concurrency = 3;
    admin
        .update_push_subscription(changed.clone())
        .await
        .unwrap();
    let durable = js
        .get_stream("events")
        .await
        .unwrap()
        .consumer_info("push-hooks")
        .await
        .unwrap();
    assert_eq!(durable.config.max_ack_pending, 3);
    changed.subjects = vec!["events.other.>".into()];
    let refused = admin.update_push_subscription(changed).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_keeps_order_and_secrets_rotate_without_a_gap() {
    let (receiver, addr) = Receiver::start(Some("jetwatch")).await;
    let env = TestEnv::with(push_settings).await;
    let mut admin = env.admin().await;
    let mut sub = push("ordered", &format!("http://{addr}/hook"));
    sub.ordered = true;
    admin.create_push_subscription(sub.clone()).await.unwrap();
    // One resource, modified 20 times; the first attempts of some fail.
    receiver.script(
        "w1",
        &[
            Answer::Status(500),
            Answer::Status(200),
            Answer::Status(503),
        ],
    );
    let mut publisher = env.publisher().await;
    for i in 0..10 {
        publish(&mut publisher, widget(&format!("o{i}"), "w1", "modified")).await;
    }
    eventually("the first ten delivered", || {
        let receiver = receiver.clone();
        async move {
            let ids: std::collections::HashSet<String> =
                receiver.arrivals().into_iter().map(|a| a.id).collect();
            (ids.len() >= 10).then_some(())
        }
    })
    .await;
    // Rotation: both secrets sign while receivers move over. Workers pick the change up
    // within push.reload_interval: events go one at a time until one is signed with both.
    sub.secrets = vec![NEW_SECRET.into(), SECRET.into()];
    admin.update_push_subscription(sub.clone()).await.unwrap();
    let mut published = 10;
    loop {
        publish(
            &mut publisher,
            widget(&format!("o{published}"), "w1", "modified"),
        )
        .await;
        published += 1;
        let id = format!("ordered-events-{published}");
        let arrival = eventually("the probe delivered", || {
            let (receiver, id) = (receiver.clone(), id.clone());
            async move { receiver.arrivals().into_iter().rev().find(|a| a.id == id) }
        })
        .await;
        if signed_with(&arrival, NEW_SECRET) {
            break;
        }
        assert!(published < 200, "the new secret was never used");
    }
    for i in published..published + 5 {
        publish(&mut publisher, widget(&format!("o{i}"), "w1", "modified")).await;
    }
    let total = published + 5;
    let arrivals = eventually("every event delivered", || {
        let receiver = receiver.clone();
        async move {
            let a = receiver.arrivals();
            let ids: std::collections::HashSet<String> = a.iter().map(|a| a.id.clone()).collect();
            (ids.len() >= total).then_some(a)
        }
    })
    .await;
    // In stream order: each event's first arrival after the previous one's last.
    let mut order: Vec<String> = Vec::new();
    for a in &arrivals {
        if order.last() != Some(&a.id) {
            assert!(
                !order.contains(&a.id),
                "{} came back after a later event",
                a.id
            );
            order.push(a.id.clone());
        }
    }
    let sequences: Vec<u64> = order
        .iter()
        .map(|id| id.rsplit('-').next().unwrap().parse().unwrap())
        .collect();
    let mut sorted = sequences.clone();
    sorted.sort_unstable();
    assert_eq!(sequences, sorted, "one at a time, in stream order");
    // Signed with the old secret before the rotation, with both after it.
    for a in &arrivals {
        assert!(signed_with(a, SECRET), "{a:?}");
    }
    assert!(arrivals.iter().any(|a| signed_with(a, NEW_SECRET)));
    let last = arrivals.last().unwrap();
    assert!(signed_with(last, NEW_SECRET) && signed_with(last, SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_checked_before_anything_is_delivered() {
    let (_receiver, addr) = Receiver::start(None).await;
    let env = TestEnv::with(push_settings).await;
    let mut admin = env.admin().await;
    // The handshake: an endpoint that does not allow this origin.
    let refused = admin
        .create_push_subscription(push("refused", &format!("http://{addr}/hook")))
        .await
        .unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("WebHook"),
        "{}",
        refused.message()
    );
    // Plain HTTP to a host that is not loopback, and a secret too short.
    let plain = admin
        .create_push_subscription(push("plain", "http://example.com/hook"))
        .await
        .unwrap_err();
    assert_eq!(plain.code(), tonic::Code::InvalidArgument);
    let mut weak = push("weak", "https://example.com/hook");
    weak.secrets = vec!["short".into()];
    let weak = admin.create_push_subscription(weak).await.unwrap_err();
    assert_eq!(weak.code(), tonic::Code::InvalidArgument);
    // Nothing was created.
    let list = admin
        .list_push_subscriptions(api::ListPushSubscriptionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(list.subscriptions.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_push_subscription_and_a_killed_one_loses_nothing() {
    let (receiver, addr) = Receiver::start(Some("*")).await;
    // A slow endpoint: many deliveries are in flight on both gateways when one dies.
    let (stuck_receiver, stuck_addr) = Receiver::start(Some("*")).await;
    let env = TestEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[push]\nreload_interval = \"100ms\"\nbackoff_initial = \"100ms\"\nbackoff_max = \"200ms\"\n\
                 [[streams]]\nname = \"events\"\nsubjects = [\"events.>\"]\n";
    let mut g1 = GatewayProcess::start(&env.nats.url(), dir.path(), "g1", extra).await;
    let g2 = GatewayProcess::start(&env.nats.url(), dir.path(), "g2", extra).await;
    let mut admin = api::admin_client::AdminClient::new(channel(g2.addr).await);
    let mut sub = push("shared", &format!("http://{addr}/hook"));
    sub.concurrency = 8;
    admin.create_push_subscription(sub).await.unwrap();
    // Another subscription whose endpoint hangs: it never slows this one.
    let mut stuck = push("stuck", &format!("http://{stuck_addr}/hook"));
    stuck.timeout = Some(prost_types::Duration {
        seconds: 30,
        nanos: 0,
    });
    for i in 0..50 {
        stuck_receiver.script(&format!("s{i}"), &[Answer::Hang(Duration::from_secs(60))]);
    }
    admin.create_push_subscription(stuck).await.unwrap();

    let total = 400u64;
    let mut publisher = PublisherClient::new(channel(g2.addr).await);
    let publishing = tokio::spawn(async move {
        for i in 0..total {
            publish(
                &mut publisher,
                widget(&format!("k{i}"), &format!("s{}", i % 50), "modified"),
            )
            .await;
        }
    });
    // Kill g1 while deliveries are under way.
    eventually("deliveries under way", || {
        let receiver = receiver.clone();
        async move { (receiver.arrivals().len() >= 50).then_some(()) }
    })
    .await;
    g1.kill();
    publishing.await.unwrap();

    // Every event arrives at least once; a repeat carries the same webhook-id.
    let arrivals = eventually("every event delivered", || {
        let receiver = receiver.clone();
        async move {
            let a = receiver.arrivals();
            let ids: std::collections::HashSet<String> = a.iter().map(|x| x.id.clone()).collect();
            (ids.len() as u64 >= total).then_some(a)
        }
    })
    .await;
    let mut by_id: HashMap<String, Vec<&Arrival>> = HashMap::new();
    for a in &arrivals {
        by_id.entry(a.id.clone()).or_default().push(a);
    }
    for seq in 1..=total {
        let id = format!("shared-events-{seq}");
        let got = by_id
            .get(&id)
            .unwrap_or_else(|| panic!("{id} never arrived"));
        assert!(
            got.iter().all(|a| a.body == got[0].body),
            "a repeat is the same event"
        );
    }
    drop(g2);
}
