//! The HTTP/JSON API, from outside with a real HTTP client: CloudEvents published in the three
//! modes of the HTTP binding, watches as NDJSON and Server-Sent Events (with `Last-Event-ID`),
//! errors as JSON with the contract's reasons, identities and grants, CORS.

mod common;

use std::time::Duration;

use common::*;
use jetwatch::config::{Action, Grant, StaticToken};
use jetwatch::grpc::pb::io::cloudevents::v1 as ce;
use serde_json::{json, Value};
use sha2::Digest;

fn base(env: &TestEnv) -> String {
    format!("http://{}", env.addr)
}

fn structured(id: &str, subject: &str, type_: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": id,
        "source": "/widgets",
        "type": type_,
        "subject": subject,
        "datacontenttype": "application/json",
        "data": {"name": subject},
    })
}

async fn post_structured(url: &str, event: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/cloudevents+json")
        .body(event.to_string())
        .send()
        .await
        .expect("the gateway answers")
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")),
    )
}

/// Sends `request` and reads the JSON answer.
async fn call(request: reqwest::RequestBuilder) -> (u16, Value) {
    json_of(request.send().await.expect("the gateway answers")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_are_published_in_binary_structured_and_batch_modes() {
    let env = TestEnv::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/streams/events/events", base(&env));

    // Binary mode: attributes in ce-* headers (percent-encoded), the body is the data.
    let (status, body) = call(
        client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", "bin-1")
            .header("ce-source", "/widgets")
            .header("ce-type", "com.example.widget.created")
            .header("ce-subject", "caf%C3%A9")
            .header("ce-color", "blue")
            .header("content-type", "application/json")
            .body(r#"{"name":"café"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sequence"], 1);
    assert_eq!(body["stream"], "events");
    assert_eq!(body["duplicate"], false);
    assert!(body["subject"].as_str().unwrap().starts_with("events."));

    // Structured mode, on the default stream's path.
    let event = structured("str-1", "w2", "com.example.widget.modified");
    let (status, body) =
        json_of(post_structured(&format!("{}/v1/events", base(&env)), &event).await).await;
    assert_eq!(
        (status, body["sequence"].clone()),
        (200, json!(2)),
        "{body}"
    );
    // The same event again is a duplicate of the stored one, not a second copy.
    let (status, body) = json_of(post_structured(&url, &event).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["sequence"].clone(), body["duplicate"].clone()),
        (json!(2), json!(true))
    );

    // A batch: one result per event, in order.
    let batch = json!([
        structured("batch-1", "w3", "com.example.widget.created"),
        {"specversion": "1.0", "id": "batch-2", "source": "/widgets", "type": "t",
         "subject": "w4", "data_base64": "AAEC"},
    ]);
    let (status, body) = call(
        client
            .post(&url)
            .header("content-type", "application/cloudevents-batch+json")
            .body(batch.to_string()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sequences: Vec<u64> = body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, vec![3, 4]);
    assert_eq!(body["refused"], 0);

    // What gRPC watchers receive is what was published over HTTP.
    let mut sub = env.subscriber().await;
    let mut watch = watch(&mut sub, open().earliest().build()).await;
    opened(&mut watch).await;
    let first = next_delivery(&mut watch).await.event.unwrap();
    assert_eq!(first.id, "bin-1");
    let attr = |e: &ce::CloudEvent, name: &str| match e
        .attributes
        .get(name)
        .and_then(|a| a.attr.clone())
    {
        Some(ce::cloud_event::cloud_event_attribute_value::Attr::CeString(s)) => s,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(attr(&first, "subject"), "café");
    assert_eq!(attr(&first, "color"), "blue");
    assert_eq!(attr(&first, "datacontenttype"), "application/json");
    assert_eq!(
        first.data,
        Some(ce::cloud_event::Data::TextData(r#"{"name":"café"}"#.into()))
    );
    assert_eq!(next_delivery(&mut watch).await.event.unwrap().id, "str-1");
    assert_eq!(next_delivery(&mut watch).await.event.unwrap().id, "batch-1");
    let last = next_delivery(&mut watch).await.event.unwrap();
    assert_eq!(last.id, "batch-2");
    assert_eq!(
        last.data,
        Some(ce::cloud_event::Data::BinaryData(vec![0, 1, 2]))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_gets_a_clear_error_and_stores_nothing() {
    let env = TestEnv::with(|s| {
        s.http.max_body_bytes = 1024 * 1024;
        s.http.max_batch_events = 3;
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/streams/events/events", base(&env));
    let post = |content_type: &'static str, body: String| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            call(
                client
                    .post(&url)
                    .header("content-type", content_type)
                    .body(body),
            )
            .await
        }
    };
    let batch = "application/cloudevents-batch+json";

    // One bad event in a batch: nothing of the batch is stored.
    let (status, body) = post(
        batch,
        json!([structured("ok-1", "w1", "t"), {"specversion": "1.0", "id": "x", "source": "/w"}])
            .to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["reason"], "INVALID_EVENT");
    assert_eq!(body["error"]["metadata"]["attribute"], "type");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("[1]"),
        "{body}"
    );

    let (status, body) = post(batch, "[{".into()).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (400, json!("MALFORMED_REQUEST")),
        "{body}"
    );

    let four: Vec<Value> = (0..4)
        .map(|i| structured(&format!("b{i}"), "w", "t"))
        .collect();
    let (status, body) = post(batch, json!(four).to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("http.max_batch_events"));

    let (status, body) = post(
        "application/cloudevents+json",
        "{\"specversion\":\"1.0\"".into(),
    )
    .await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (400, json!("INVALID_EVENT")),
        "{body}"
    );

    let (status, body) = post("application/cloudevents+xml", "<event/>".into()).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (400, json!("INVALID_ARGUMENT")),
        "{body}"
    );

    // Binary mode without the required headers.
    let (status, body) = post("application/json", "{}".into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["metadata"]["attribute"], "specversion");

    // Over the body limit: refused before it is read whole.
    let (status, body) = post(batch, "x".repeat(1024 * 1024 + 1)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["reason"], "REQUEST_TOO_LARGE");
    assert_eq!(body["error"]["metadata"]["limit"], "1048576");

    assert_eq!(env.stored_count("events").await, 0, "nothing was stored");

    // Watch queries are checked like gRPC Opens, named by their query parameters.
    for (query, field) in [
        ("from=yesterday", "from"),
        ("filter=type%20%3D", "filter"),
        ("subject=a..b", "subject[0]"),
        ("durable=no%20spaces", "durable"),
        ("color=blue", "color"),
    ] {
        let (status, body) = call(client.get(format!("{}/v1/events?{query}", base(&env)))).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"]["reason"], "INVALID_ARGUMENT", "{query}");
        assert_eq!(body["error"]["metadata"]["field"], field, "{query}: {body}");
    }
    let (status, body) = call(client.get(format!("{}/v1/streams/nope/events", base(&env)))).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (404, json!("STREAM_NOT_FOUND"))
    );

    // Counted by route and status (metrics are process-wide: other tests add to them).
    let metrics = reqwest::get(format!(
        "http://{}/metrics",
        env.gateway.as_ref().unwrap().metrics_addr()
    ))
    .await
    .unwrap()
    .text()
    .await
    .unwrap();
    let count = |labels: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("jetwatch_http_requests_total{{{labels}}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count(r#"route="publish",code="413""#) >= 1, "{metrics}");
    assert!(count(r#"route="watch",code="400""#) >= 5, "{metrics}");
    assert!(count(r#"route="watch",code="404""#) >= 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ndjson_watch_filters_replays_and_goes_live() {
    let env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    for (i, verb) in ["created", "modified", "deleted"].iter().enumerate() {
        publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{i}"), verb),
        )
        .await;
    }
    let response = reqwest::Client::new()
        .get(format!(
            "{}/v1/events?from=earliest&filter={}&heartbeat=200ms",
            base(&env),
            "type%20%3C%3E%20%27com.example.widget.deleted%27"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let mut lines = Lines::of(response);
    let opened = lines.next_json().await.unwrap();
    assert_eq!(opened["opened"]["start_sequence"], 1, "{opened}");
    assert_eq!(opened["opened"]["last_sequence"], 3);
    let first = lines.next_json().await.unwrap();
    assert_eq!(first["sequence"], 1);
    assert_eq!(first["event"]["id"], "e0");
    assert_eq!(
        first["event"]["data"]["name"], "w0",
        "JSON data stays JSON: {first}"
    );
    assert_eq!(lines.next_json().await.unwrap()["event"]["id"], "e1");
    // The deleted event is filtered out; the bookmark says the watcher is past it.
    let bookmark = loop {
        let line = lines.next_json().await.unwrap();
        assert!(line.get("event").is_none(), "filtered: {line}");
        if line.get("bookmark").is_some() {
            break line;
        }
    };
    assert_eq!(bookmark["bookmark"]["sequence"], 3, "{bookmark}");
    // Live.
    let seq = publish(&mut publisher, widget("e3", "w3", "modified")).await;
    let live = loop {
        let line = lines.next_json().await.unwrap();
        if line.get("event").is_some() {
            break line;
        }
    };
    assert_eq!(
        (live["sequence"].as_u64(), live["event"]["id"].clone()),
        (Some(seq), json!("e3"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_watch_resumes_after_last_event_id_and_ends_with_where_it_got_to() {
    let mut env = TestEnv::start().await;
    let mut publisher = env.publisher().await;
    for i in 0..4 {
        publish(
            &mut publisher,
            widget(&format!("e{i}"), &format!("w{i}"), "modified"),
        )
        .await;
    }
    let sse = |last: Option<u64>| {
        let mut request = reqwest::Client::new()
            .get(format!("{}/v1/events?from=snapshot", base(&env)))
            .header("accept", "text/event-stream");
        if let Some(last) = last {
            request = request.header("last-event-id", last.to_string());
        }
        request.send()
    };
    let response = sse(None).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Lines::of(response);
    let opened = events.next_event().await.unwrap();
    assert_eq!(opened["event"], "opened");
    assert_eq!(opened["retry"], "1000");
    let mut ids = Vec::new();
    for _ in 0..4 {
        let e = events.next_event().await.unwrap();
        assert!(
            !e.contains_key("event"),
            "a delivery is a plain message: {e:?}"
        );
        let data: Value = serde_json::from_str(&e["data"]).unwrap();
        assert_eq!(data["sequence"].to_string(), e["id"]);
        ids.push(e["id"].parse::<u64>().unwrap());
    }
    assert_eq!(ids, vec![1, 2, 3, 4]);
    let end = events.next_event().await.unwrap();
    assert_eq!(
        (end["event"].as_str(), end["id"].as_str()),
        ("snapshot_end", "4")
    );

    // A client that saw up to 2 resumes with the rest, once each, and not the snapshot again.
    let mut resumed = Lines::of(sse(Some(2)).await.unwrap());
    let opened = resumed.next_event().await.unwrap();
    assert_eq!(opened["event"], "opened");
    // Not a snapshot: `opened` says where a reconnect continues, even before any event.
    assert_eq!(opened["id"], "2", "{opened:?}");
    assert_eq!(resumed.next_event().await.unwrap()["id"], "3");
    assert_eq!(resumed.next_event().await.unwrap()["id"], "4");

    // A gateway shutting down ends the stream with a named event saying where it got to
    // (EventSource then reconnects with Last-Event-ID).
    env.restart_gateway().await;
    let end = loop {
        let e = resumed
            .next_event()
            .await
            .expect("an end event before the stream closes");
        if e.get("event").map(String::as_str) == Some("end") {
            break e;
        }
    };
    let error: Value = serde_json::from_str(&end["data"]).unwrap();
    assert_eq!(error["reason"], "SHUTTING_DOWN", "{error}");
    assert_eq!(error["metadata"]["last_delivered_sequence"], "4");
    assert_eq!(
        end["id"], "4",
        "a reconnect continues after the last delivered event"
    );
    assert!(
        resumed.next().await.is_none(),
        "the stream closes after its end"
    );
}

fn sha256(token: &str) -> String {
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_callers_have_the_same_identities_grants_and_errors_as_grpc() {
    let env = TestEnv::with(|s| {
        // alice writes and reads everything; bob reads the `w1` widget only; carol publishes
        // on w1 only.
        for (who, actions, subjects) in [
            ("alice", vec![Action::Publish, Action::Subscribe], ">"),
            ("bob", vec![Action::Subscribe], "events.widgets.*.w1"),
            ("carol", vec![Action::Publish], "events.widgets.*.w1"),
        ] {
            s.auth.tokens.push(StaticToken {
                sha256: sha256(&format!("{who}-token")),
                identity: who.into(),
                groups: vec![],
            });
            s.auth.grants.push(Grant {
                identities: vec![who.into()],
                groups: vec![],
                actions,
                stream: "events".into(),
                subjects: vec![subjects.into()],
            });
        }
        s.auth.max_subscriptions_per_identity = 1;
        s.http.allow_query_token = true;
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/events", base(&env));
    let send = |token: Option<&str>, id: &str, subject: &str| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/cloudevents+json")
            .body(structured(id, subject, "t").to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let (status, body) = json_of(send(None, "x", "w1").await.unwrap()).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (401, json!("UNAUTHENTICATED")),
        "{body}"
    );
    let (status, body) = json_of(send(Some("wrong"), "x", "w1").await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = json_of(send(Some("bob-token"), "x", "w1").await.unwrap()).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["reason"], "PERMISSION_DENIED");
    assert_eq!(body["error"]["metadata"]["action"], "publish");
    for (id, subject) in [("a1", "w1"), ("a2", "w2"), ("a3", "w1")] {
        let (status, body) = json_of(send(Some("alice-token"), id, subject).await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
    }
    // bob's watch holds only what his grant covers, with the token in the query (EventSource).
    let response = client
        .get(format!("{url}?from=earliest&access_token=bob-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut lines = Lines::of(response);
    lines.next_json().await.unwrap();
    assert_eq!(lines.next_json().await.unwrap()["event"]["id"], "a1");
    assert_eq!(lines.next_json().await.unwrap()["event"]["id"], "a3");
    // A watch of what bob may not read is refused as over gRPC.
    let (status, body) = call(
        client
            .get(format!("{url}?subject=events.widgets.*.w2"))
            .bearer_auth("bob-token"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (403, json!("PERMISSION_DENIED")),
        "{body}"
    );

    // bob's second watch is over his limit: NDJSON gets 429; an EventSource gets a stream that
    // says so and ends (any other answer would make the browser give up for good).
    let (status, body) = call(client.get(&url).bearer_auth("bob-token")).await;
    assert_eq!(
        (status, body["error"]["reason"].clone()),
        (429, json!("LIMIT_EXCEEDED"))
    );
    let refused = client
        .get(&url)
        .bearer_auth("bob-token")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 200);
    let mut refused = Lines::of(refused);
    let end = refused.next_event().await.unwrap();
    assert_eq!(end["event"], "end");
    let error: Value = serde_json::from_str(&end["data"]).unwrap();
    assert_eq!(error["reason"], "LIMIT_EXCEEDED");
    assert!(
        refused.next().await.is_none(),
        "the refusal ends the stream"
    );

    // A batch with one event carol may not publish stores none of them.
    let before = env.stored_count("events").await;
    let (status, body) = call(
        client
            .post(&url)
            .bearer_auth("carol-token")
            .header("content-type", "application/cloudevents-batch+json")
            .body(json!([structured("c1", "w1", "t"), structured("c2", "w2", "t")]).to_string()),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["reason"], "PERMISSION_DENIED");
    assert_eq!(body["error"]["index"], 1);
    assert_eq!(
        env.stored_count("events").await,
        before,
        "nothing of the batch stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_the_query_are_refused_unless_allowed() {
    let env = TestEnv::start().await;
    let (status, body) =
        call(reqwest::Client::new().get(format!("{}/v1/events?access_token=secret", base(&env))))
            .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["metadata"]["field"], "access_token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_for_allowed_origins_only() {
    let page = "http://dashboard.test:8080";
    let env = TestEnv::with(|s| s.http.cors_allowed_origins = vec![page.into()]).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str, path: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{}{path}", base(&env)))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web")
            .send()
    };
    for path in ["/v1/events", "/jetwatch.v1.Publisher/Publish"] {
        let allowed = preflight(page, path).await.unwrap();
        assert_eq!(
            allowed.headers()["access-control-allow-origin"],
            page,
            "{path}"
        );
        let denied = preflight("http://evil.test", path).await.unwrap();
        assert!(
            denied
                .headers()
                .get("access-control-allow-origin")
                .is_none(),
            "{path}: {:?}",
            denied.headers()
        );
    }
    // Off by default.
    let plain = TestEnv::start().await;
    let response = reqwest::Client::new()
        .get(format!("http://{}/v1/events?from=earliest", plain.addr))
        .header("origin", page)
        .send()
        .await
        .unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_sse_watch_gets_keep_alive_comments() {
    let env = TestEnv::with(|s| s.http.keepalive_interval = Duration::from_millis(50)).await;
    let response = reqwest::Client::new()
        .get(format!("{}/v1/events", base(&env)))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    let mut lines = Lines::of(response);
    loop {
        let line = lines.next().await.expect("the stream goes on");
        if line == ": keep-alive" {
            break;
        }
        assert!(
            !line.starts_with("data: {\"event\""),
            "nothing was published: {line}"
        );
    }
}
