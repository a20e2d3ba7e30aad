//! A real browser watches: headless Chromium opens a page (served from another origin, so CORS
//! is exercised) whose `EventSource` watches the default stream over Server-Sent Events. The
//! gateway restarts mid-watch; the browser reconnects by itself with `Last-Event-ID` and the
//! page sees every event once, in order.
//!
//! Chromium comes from `scripts/install-test-tools.sh` (Debian's `chromium` package), or from
//! `JETWATCH_CHROMIUM`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The page: an EventSource whose every event is reported back to the page's server, in order.
const PAGE: &str = r#"<!doctype html>
<title>jetwatch watch</title>
<script>
  const gateway = new URLSearchParams(location.search).get("gateway");
  let queue = Promise.resolve();
  const report = (what) => {
    queue = queue.then(() => fetch("/report", { method: "POST", body: JSON.stringify(what) }));
  };
  const watch = new EventSource(gateway + "/v1/streams/events/events?from=earliest");
  watch.onmessage = (m) => {
    const delivery = JSON.parse(m.data);
    report({ kind: "event", last_event_id: m.lastEventId, sequence: delivery.sequence,
             id: delivery.event.id });
  };
  watch.addEventListener("opened", (m) => report({ kind: "opened", opened: JSON.parse(m.data) }));
  watch.addEventListener("end", (m) => report({ kind: "end", error: JSON.parse(m.data) }));
</script>
"#;

fn chromium() -> String {
    if let Ok(path) = std::env::var("JETWATCH_CHROMIUM") {
        return path;
    }
    for name in ["chromium", "chromium-browser"] {
        if std::process::Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return name.to_owned();
        }
    }
    panic!(
        "no Chromium: run `bash scripts/install-test-tools.sh` (installs Debian's chromium) or \
         set JETWATCH_CHROMIUM"
    );
}

/// Headless Chromium and every process it starts, killed together on drop.
struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn open(url: &str) -> Browser {
        use std::os::unix::process::CommandExt as _;
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(chromium())
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                &format!("--user-data-dir={}", profile.path().display()),
                url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .expect("Chromium starts");
        Browser {
            child,
            _profile: profile,
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.child.id() as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Serves the page and collects its reports.
async fn page_server() -> (String, Arc<Mutex<Vec<Value>>>) {
    use axum::routing::{get, post};
    let reports = Arc::new(Mutex::new(Vec::new()));
    let collected = reports.clone();
    let app = axum::Router::new()
        .route("/", get(|| async { axum::response::Html(PAGE) }))
        .route(
            "/report",
            post(move |body: String| {
                let collected = collected.clone();
                async move {
                    collected
                        .lock()
                        .unwrap()
                        .push(serde_json::from_str::<Value>(&body).unwrap());
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (origin, reports)
}

fn of_kind(reports: &Mutex<Vec<Value>>, kind: &str) -> Vec<Value> {
    reports
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == kind)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_watches_with_event_source_and_resumes_after_a_gateway_restart() {
    let (origin, reports) = page_server().await;
    let mut env = TestEnv::with(|s| {
        s.http.cors_allowed_origins = vec![origin.clone()];
        s.http.sse_retry = Duration::from_millis(200);
    })
    .await;
    let mut publisher = env.publisher().await;
    for i in 1..=3 {
        publish(
            &mut publisher,
            widget(&format!("before-{i}"), "w1", "modified"),
        )
        .await;
    }
    let _browser = Browser::open(&format!("{origin}/?gateway=http://{}", env.addr));
    eventually("the page receives the first events", || {
        let n = of_kind(&reports, "event").len();
        async move { (n >= 3).then_some(()) }
    })
    .await;

    env.restart_gateway().await;
    let mut publisher = env.publisher().await;
    for i in 4..=6 {
        publish(
            &mut publisher,
            widget(&format!("after-{i}"), "w1", "modified"),
        )
        .await;
    }
    eventually("the page resumes and receives the rest", || {
        let n = of_kind(&reports, "event").len();
        async move { (n >= 6).then_some(()) }
    })
    .await;

    let events = of_kind(&reports, "event");
    let sequences: Vec<u64> = events
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(
        sequences,
        vec![1, 2, 3, 4, 5, 6],
        "every event once, in order: {events:?}"
    );
    for e in &events {
        assert_eq!(
            e["last_event_id"].as_str().unwrap(),
            e["sequence"].to_string()
        );
    }
    // The gateway told the page it was going, and the second open started after what the
    // browser had seen: EventSource sent Last-Event-ID (the URL says from=earliest).
    let ends = of_kind(&reports, "end");
    assert_eq!(ends[0]["error"]["reason"], "SHUTTING_DOWN", "{ends:?}");
    let opens = of_kind(&reports, "opened");
    assert_eq!(opens.len(), 2, "{opens:?}");
    assert_eq!(opens[0]["opened"]["start_sequence"], 1);
    assert_eq!(opens[1]["opened"]["start_sequence"], 4, "{opens:?}");
}
