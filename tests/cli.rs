//! The command-line contract: `jetwatch --help`, and `jetwatch dev` starting a local
//! nats-server plus the gateway and stopping both on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

fn jetwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_jetwatch"))
}

#[test]
fn help_names_every_sub_command_and_flag() {
    let out = jetwatch().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "serve",
        "dev",
        "publish",
        "watch",
        "get",
        "streams",
        "subscriptions",
        "health",
        "version",
        "context",
    ] {
        assert!(text.contains(word), "--help lacks {word}: {text}");
    }
    let out = jetwatch().args(["serve", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--nats-url", "--listen", "--metrics-listen"] {
        assert!(text.contains(flag), "serve --help lacks {flag}: {text}");
    }
    let out = jetwatch().args(["dev", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("--data-dir"));
}

#[test]
fn serve_with_a_bad_config_file_fails_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[publish]\ndefault_stream = \"missing\"\n").unwrap();
    let out = jetwatch()
        .arg("serve")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("publish.default_stream"), "{err}");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `jetwatch dev` on `data`, its NATS on `nats_port` (0: any) and gRPC on `listen`.
fn dev(data: &std::path::Path, nats_port: &str, listen: &str) -> Command {
    let mut c = jetwatch();
    c.args(["dev", "--nats-port", nats_port, "--listen", listen])
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data);
    c
}

/// Sends `signal` to `child`.
fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

/// One CloudEvent in JSON, a line of a file for `jetwatch publish`.
fn json_event(id: &str, subject: &str, data: &str) -> String {
    format!(
        "{{\"specversion\":\"1.0\",\"id\":\"{id}\",\"source\":\"/widgets\",\
         \"type\":\"com.example.widget.added\",\"subject\":\"{subject}\",\"data\":\"{data}\"}}\n"
    )
}

/// Asserts that `seen` holds every sequence of 1..=`total` exactly once, in any order.
fn assert_each_once(mut seen: Vec<u64>, total: usize, what: &str) {
    seen.sort_unstable();
    assert_eq!(seen, (1..=total as u64).collect::<Vec<_>>(), "{what}");
}

#[tokio::test]
async fn dev_runs_nats_and_the_gateway_and_stops_both_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = dev(&data, "0", &format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the gateway reports SERVING (a readiness wait, bounded so a hang fails).
    let deadline = Instant::now() + Duration::from_secs(60);
    let serving = loop {
        assert!(
            Instant::now() < deadline,
            "jetwatch dev did not become ready"
        );
        if let Ok(channel) =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
        {
            let mut health = HealthClient::new(channel);
            if let Ok(r) = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
            {
                break r.into_inner().status;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(serving, ServingStatus::Serving as i32);

    // The local nats-server reports its pid through the ports file.
    let ports = std::fs::read_dir(data.join("ports"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let pid = jetwatch::devnats::running_server(&data).expect("a ports file named after the pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A second `jetwatch dev` on the same data directory, or on the same NATS port, is
    // refused before it touches anything, saying why.
    let nats_port = std::fs::read_to_string(ports.path()).unwrap();
    let nats_port: serde_json::Value = serde_json::from_str(&nats_port).unwrap();
    let nats_port = nats_port["nats"][0]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let other = dir.path().join("other");
    for (data_dir, nats, expected) in [
        (&data, "0", "is in use by pid"),
        (
            &other,
            nats_port.as_str(),
            "is in use; stop what listens there",
        ),
    ] {
        let second = dev(data_dir, nats, "127.0.0.1:0").output().unwrap();
        let err = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success() && err.contains(expected), "{err}");
    }
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the first server is untouched"
    );

    signal(&child, nix::sys::signal::Signal::SIGTERM);
    // Wait off the runtime so the test's own connections can close while the gateway drains.
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "jetwatch dev exits cleanly on SIGTERM: {status}"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true),
        "the nats-server child is gone"
    );
    assert!(
        data.join("jetstream").is_dir(),
        "the JetStream data dir is kept"
    );
}

/// The sequences a `jetwatch watch -o json` printed.
fn printed_sequences(stdout: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["sequence"].as_u64().expect("a sequence"))
        .collect()
}

/// Runs a `jetwatch watch` to completion (bounded: a watch that hangs fails the test).
async fn run_cli(args: Vec<String>) -> std::process::Output {
    run_cli_with(args, &[], None).await
}

/// [`run_cli`] with environment variables and standard input.
async fn run_cli_with(
    args: Vec<String>,
    envs: &[(&str, &str)],
    stdin: Option<&str>,
) -> std::process::Output {
    use std::io::Write;
    let mut child = jetwatch()
        .args(&args)
        .envs(envs.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let (Some(text), Some(mut input)) = (stdin, child.stdin.take()) {
        input.write_all(text.as_bytes()).unwrap();
    }
    let pid = child.id();
    let waited = tokio::task::spawn_blocking(move || child.wait_with_output());
    match tokio::time::timeout(Duration::from_secs(30), waited).await {
        Ok(out) => out.unwrap().unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("`jetwatch {}` did not finish", args.join(" "));
        }
    }
}

// The CLI runs as a child process: the in-process gateway needs other threads meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_watch_consumes_only_what_it_printed() {
    let env = common::TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let total = 20;
    common::publish_n(&mut publisher, "d", total).await;
    let watch = |limit: usize| {
        [
            "watch",
            "--server",
            &env.addr.to_string(),
            "--durable",
            "cli-durable",
            "--from",
            "earliest",
            "-o",
            "json",
            "--limit",
            &limit.to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    };
    // Runs of 3 events: each starts right after what the one before printed, although the
    // gateway sends a whole window (256) ahead to every run.
    let mut seen = Vec::new();
    for limit in [3, 3, 3, total - 9] {
        let out = run_cli(watch(limit)).await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = printed_sequences(&out.stdout);
        assert_eq!(printed.len(), limit, "{printed:?}");
        seen.extend(printed);
    }
    assert_eq!(seen[..3], [1, 2, 3]);
    // Events the gateway had sent ahead and a run did not print come back to a later run
    // (JetStream may redeliver them after newer ones): each is printed exactly once.
    assert_each_once(
        seen,
        total,
        "every event printed exactly once across the runs",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_durable_watch_resumes_after_the_last_event_it_printed() {
    let env = common::TestEnv::start().await;
    let mut publisher = env.publisher().await;
    // More output than a pipe holds: the watch blocks writing while events keep arriving.
    let total = 600usize;
    let big = "x".repeat(1000);
    for i in 0..total {
        let mut e = common::widget(&format!("i{i}"), "w1", "modified");
        e.data =
            Some(jetwatch::grpc::pb::io::cloudevents::v1::cloud_event::Data::TextData(big.clone()));
        common::publish(&mut publisher, e).await;
    }
    let server = env.addr.to_string();
    let args = [
        "watch",
        "--server",
        &server,
        "--durable",
        "cli-interrupted",
        "--from",
        "earliest",
        "-o",
        "json",
    ];
    let mut child = jetwatch()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Let it fill the pipe and receive more than it printed, then interrupt it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let mut stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut bytes).unwrap();
        let status = child.wait().unwrap();
        (bytes, status)
    });
    let (bytes, status) = tokio::time::timeout(Duration::from_secs(30), first)
        .await
        .expect("the interrupted watch exits")
        .unwrap();
    assert!(status.success(), "{status}");
    let printed = printed_sequences(&bytes);
    assert!(
        !printed.is_empty() && printed.len() < total,
        "interrupted part-way: printed {}",
        printed.len()
    );
    let rest = total - printed.len();
    let mut args: Vec<String> = args.map(str::to_owned).to_vec();
    args.extend(["--limit".to_owned(), rest.to_string()]);
    let out = run_cli(args).await;
    assert_eq!(printed, (1..=printed.len() as u64).collect::<Vec<_>>());
    let mut seen = printed;
    seen.extend(printed_sequences(&out.stdout));
    assert_each_once(
        seen,
        total,
        "the resumed watch prints exactly what the interrupted one did not",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_quietly_when_their_output_is_closed() {
    let env = common::TestEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let lines: String = (0..20)
        .map(|i| json_event(&format!("p{i}"), &format!("w{i}"), "d"))
        .collect();
    std::fs::write(&events, lines).unwrap();
    let server = env.addr.to_string();
    for args in [
        vec![
            "publish",
            "--server",
            &server,
            "-f",
            events.to_str().unwrap(),
        ],
        vec!["streams", "--server", &server],
    ] {
        let mut child = jetwatch()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reader is gone before the first line.
        drop(child.stdout.take());
        let out = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .unwrap()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "`jetwatch {}` with a closed output: {} {stderr}",
            args.join(" "),
            out.status
        );
    }
}

#[tokio::test]
async fn the_nats_server_of_a_killed_dev_dies_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = dev(&data, "0", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = common::eventually("the local nats-server to start", || {
        let pid = jetwatch::devnats::running_server(&data);
        async move { pid }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    common::eventually(
        "the nats-server to die with `jetwatch dev`",
        || async move {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
            stat.map_or(true, |s| s.contains(") Z")).then_some(())
        },
    )
    .await;
    // The data directory is free again.
    let mut again = dev(&data, "0", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    common::eventually("a new `jetwatch dev` to run on the directory", || {
        let new = jetwatch::devnats::running_server(&data).filter(|&new| new != pid);
        async move { new }
    })
    .await;
    assert!(again.try_wait().unwrap().is_none(), "it keeps running");
    signal(&again, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || again.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_prints_the_current_state_and_exits_three_for_a_missing_resource() {
    let env = common::TestEnv::start().await;
    let mut publisher = env.publisher().await;
    common::publish(&mut publisher, common::widget("a1", "w1", "added")).await;
    common::publish(&mut publisher, common::widget("a2", "w2", "added")).await;
    let w1 = common::publish(&mut publisher, common::widget("m1", "w1", "modified")).await;
    let server = env.addr.to_string();
    let get = |extra: &[&str]| {
        let mut args = vec!["get", "--server", server.as_str(), "-o", "json"];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };

    let all = run_cli(get(&[])).await;
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    let mut sequences = printed_sequences(&all.stdout);
    sequences.sort_unstable();
    assert_eq!(sequences, [2, w1], "the last event of each resource");

    let one = run_cli(get(&["--source", "/widgets", "--subject", "w1"])).await;
    assert!(one.status.success());
    assert_eq!(printed_sequences(&one.stdout), [w1]);

    let added = run_cli(get(&["--exact", "type=com.example.widget.added"])).await;
    assert_eq!(
        printed_sequences(&added.stdout),
        [2],
        "w1's last event is a modification"
    );

    let missing = run_cli(get(&["--source", "/widgets", "--subject", "nope"])).await;
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no resource"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_say_what_to_do_and_exit_with_documented_codes() {
    // No gateway: one line naming the address and what to check; exit code 4.
    let port = free_port();
    let out = run_cli(
        ["streams", "--server", &format!("127.0.0.1:{port}")]
            .map(str::to_owned)
            .to_vec(),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(
        err.contains(&format!("cannot reach the gateway at 127.0.0.1:{port}"))
            && err.contains("jetwatch dev")
            && err.lines().count() == 1,
        "{err}"
    );

    // The same for a watch and a get that never reached a gateway: no waiting forever on a
    // wrong address (a watch that was connected keeps reconnecting; see below).
    for command in ["watch", "get"] {
        let out = run_cli(strings(&[
            command,
            "--server",
            &format!("127.0.0.1:{port}"),
        ]))
        .await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{command}: {err}");
        assert!(
            err.contains("cannot reach the gateway") && err.lines().count() == 1,
            "{err}"
        );
        assert!(out.stdout.is_empty(), "no header before the error");
    }

    // Some events refused: the others are stored; exit code 5.
    let env = common::TestEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let too_large = "x".repeat(2 * 1024 * 1024);
    let lines = json_event("ok", "w1", "small") + &json_event("big", "w1", &too_large);
    std::fs::write(&events, lines).unwrap();
    let out = run_cli(
        [
            "publish",
            "--server",
            &env.addr.to_string(),
            "-f",
            events.to_str().unwrap(),
        ]
        .map(str::to_owned)
        .to_vec(),
    )
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(err.contains("1 event(s) were refused"), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"sequence\":1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_says_when_it_is_live_and_how_to_resume_after_ctrl_c() {
    use std::io::BufRead;
    let env = common::TestEnv::start().await;
    let mut publisher = env.publisher().await;
    let last = common::publish_n(&mut publisher, "r", 3).await;
    let mut child = jetwatch()
        .args(["watch", "--server", &env.addr.to_string()])
        .args(["--from", "earliest", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Wait for the three events, then interrupt.
    let printed = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .take(3)
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    });
    let printed = tokio::time::timeout(Duration::from_secs(30), printed)
        .await
        .expect("three events printed")
        .unwrap();
    assert_eq!(
        printed_sequences(printed.join("\n").as_bytes()),
        [1, 2, last]
    );
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("caught up at sequence {last}")),
        "{err}"
    );
    assert!(err.contains(&format!("--from {}", last + 1)), "{err}");
}

/// `args` as owned strings.
fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_flags_says_what_was_stored_and_refuses_empty_input() {
    let env = common::TestEnv::start().await;
    let server = env.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("w1.json");
    std::fs::write(&data, r#"{"size": 3}"#).unwrap();
    let publish = |extra: &[&str]| {
        let mut args = strings(&["publish", "--server", &server]);
        args.extend(strings(extra));
        args
    };

    let out = run_cli(publish(&[
        "--type",
        "com.example.widget.created",
        "--source",
        "/widgets",
        "--subject",
        "w1",
        "--data",
        &format!("@{}", data.display()),
        "--ext",
        "tenant=acme",
    ]))
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 stored, 0 duplicate(s), 0 refused"), "{err}");
    assert_eq!(printed_sequences(&out.stdout), [1]);

    // What was stored: the flags' attributes, the file's data as JSON.
    let got = run_cli(strings(&["get", "--server", &server, "-o", "json"])).await;
    let line: serde_json::Value =
        serde_json::from_slice(got.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let event = &line["event"];
    assert_eq!(event["type"], "com.example.widget.created");
    assert_eq!(event["subject"], "w1");
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["datacontenttype"], "application/json");
    assert_eq!(event["data"]["size"], 3);
    assert!(
        event["id"].as_str().is_some_and(|id| id.len() == 36),
        "a UUID id"
    );

    // Optimistic concurrency: the resource is at sequence 1, not 0: refused, exit code 5.
    let out = run_cli(publish(&[
        "--type",
        "com.example.widget.modified",
        "--source",
        "/widgets",
        "--subject",
        "w1",
        "--data",
        "plain words",
        "--expect-sequence",
        "0",
    ]))
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SEQUENCE_MISMATCH"));
    assert!(err.contains("0 stored, 0 duplicate(s), 1 refused"), "{err}");

    // JSON events from standard input, then the same again: duplicates, nothing new stored.
    let lines = json_event("s1", "w2", "a") + &json_event("s2", "w3", "b");
    for want in ["2 stored, 0 duplicate(s)", "0 stored, 2 duplicate(s)"] {
        let out = run_cli_with(publish(&[]), &[], Some(&lines)).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && err.contains(want), "{err}");
    }

    // Nothing to publish is a usage error, not a silent success.
    let out = run_cli_with(publish(&[]), &[], Some("")).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no events to publish"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_formats_and_the_admin_commands_show_what_the_gateway_holds() {
    let env = common::TestEnv::start().await;
    let server = env.addr.to_string();
    let mut publisher = env.publisher().await;
    common::publish(&mut publisher, common::widget("a1", "w1", "created")).await;
    let last = common::publish(&mut publisher, common::widget("m1", "w1", "modified")).await;
    let run = |args: &[&str]| {
        let mut all = strings(args);
        all.extend(strings(&["--server", &server]));
        run_cli(all)
    };
    let stdout = |out: &std::process::Output| {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Table: the kubectl columns; wide adds the id; no headers leaves the header out.
    let table = stdout(&run(&["get"]).await);
    let header = table.lines().next().unwrap();
    for column in ["SEQ", "AGE", "TYPE", "SOURCE", "SUBJECT"] {
        assert!(header.contains(column), "{table}");
    }
    assert!(
        !table.contains("\u{1b}["),
        "no colour codes when not on a terminal"
    );
    let wide = stdout(&run(&["get", "-o", "wide"]).await);
    assert!(
        wide.lines().next().unwrap().contains("ID") && wide.contains("m1"),
        "{wide}"
    );
    let bare = stdout(&run(&["get", "--no-headers"]).await);
    assert_eq!(bare.lines().count(), 1, "{bare}");
    assert!(bare.contains("com.example.widget.modified"), "{bare}");

    // YAML documents that a YAML parser reads back.
    let yaml = stdout(&run(&["get", "-o", "yaml"]).await);
    let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 1, "{yaml}");
    assert_eq!(docs[0]["sequence"].as_u64(), Some(last));
    assert_eq!(docs[0]["event"]["id"].as_str(), Some("m1"));

    // Streams: one stream's details as JSON; a missing one is exit code 3.
    let info: serde_json::Value = serde_json::from_str(&stdout(
        &run(&["streams", "info", "events", "-o", "json"]).await,
    ))
    .unwrap();
    assert_eq!(info["last_sequence"].as_u64(), Some(last));
    assert_eq!(info["resources"].as_u64(), Some(1));
    let missing = run(&["streams", "info", "nope"]).await;
    assert_eq!(missing.status.code(), Some(3), "{missing:?}");

    // Durable subscriptions: info, seek back to the start, delete.
    let consumed = run_cli(strings(&[
        "watch",
        "--server",
        &server,
        "--durable",
        "d1",
        "--from",
        "earliest",
        "--limit",
        "2",
    ]))
    .await;
    assert!(consumed.status.success());
    let info: serde_json::Value = serde_json::from_str(&stdout(
        &run(&["subscriptions", "info", "d1", "-o", "json"]).await,
    ))
    .unwrap();
    assert_eq!(info["ack_floor_sequence"].as_u64(), Some(last));
    stdout(&run(&["subscriptions", "seek", "d1", "--to", "earliest"]).await);
    let again = run_cli(strings(&[
        "watch",
        "--server",
        &server,
        "--durable",
        "d1",
        "-o",
        "json",
        "--limit",
        "2",
    ]))
    .await;
    assert_eq!(
        printed_sequences(&again.stdout),
        [1, last],
        "seek moved it back"
    );
    stdout(&run(&["subscriptions", "delete", "d1"]).await);
    let gone = run(&["subscriptions", "info", "d1"]).await;
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");

    // Health and versions.
    assert_eq!(stdout(&run(&["health"]).await).trim(), "SERVING");
    let version = stdout(&run(&["version"]).await);
    let want = format!("jetwatch {}", env!("CARGO_PKG_VERSION"));
    assert!(
        version.contains(&format!("client:  {want}"))
            && version.contains(&format!("gateway: {want}")),
        "{version}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_names_the_gateway_and_flags_override_it() {
    let env = common::TestEnv::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().to_str().unwrap();
    let envs = [("JETWATCH_CONFIG_DIR", config_dir)];
    let server = env.addr.to_string();
    let bad = format!("127.0.0.1:{}", free_port());

    let set = run_cli_with(
        strings(&["context", "set", "local", "--server", &server, "--use"]),
        &envs,
        None,
    )
    .await;
    assert!(set.status.success(), "{set:?}");
    let set = run_cli_with(
        strings(&["context", "set", "elsewhere", "--server", &bad]),
        &envs,
        None,
    )
    .await;
    assert!(set.status.success());
    let list = run_cli_with(strings(&["context", "list"]), &envs, None).await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with('*') && l.contains("local")),
        "{text}"
    );

    // No --server: the current context's gateway.
    let health = run_cli_with(strings(&["health"]), &envs, None).await;
    assert!(health.status.success(), "{health:?}");
    // Another context by name; and a flag wins over it.
    let other = run_cli_with(strings(&["health", "--context", "elsewhere"]), &envs, None).await;
    assert_eq!(other.status.code(), Some(4), "{other:?}");
    let flag = run_cli_with(
        strings(&["health", "--context", "elsewhere", "--server", &server]),
        &envs,
        None,
    )
    .await;
    assert!(flag.status.success(), "{flag:?}");
    // A context that does not exist is an error that says how to list them.
    let missing = run_cli_with(strings(&["health", "--context", "nope"]), &envs, None).await;
    let err = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(1), "{err}");
    assert!(err.contains("no context named `nope`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_says_when_it_reconnects_and_from_where_and_misses_nothing() {
    use std::io::BufRead;
    let mut env = common::TestEnv::start().await;
    let mut publisher = env.publisher().await;
    common::publish_n(&mut publisher, "r", 5).await;
    let mut child = jetwatch()
        .args(["watch", "--server", &env.addr.to_string()])
        .args(["--from", "earliest", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::task::spawn_blocking(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    printed.extend(read_sequences(5, &mut lines).await);
    env.restart_gateway().await;
    let mut publisher = env.publisher().await;
    let last = common::publish_n(&mut publisher, "s", 5).await;
    printed.extend(read_sequences(5, &mut lines).await);
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(printed, (1..=last).collect::<Vec<_>>(), "{err}");
    assert!(err.contains("disconnected: "), "{err}");
    assert!(err.contains("reconnecting from sequence 6"), "{err}");
    assert!(err.contains("resumed from sequence 6"), "{err}");
}

/// The next `n` sequences a `watch -o json` printed, line by line.
async fn read_sequences(
    n: usize,
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Vec<u64> {
    let mut got = Vec::new();
    while got.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .expect("the watch prints")
            .expect("the watch runs");
        got.extend(printed_sequences(line.as_bytes()));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_subscriptions_are_managed_from_the_cli() {
    let env = common::TestEnv::with(|s| s.push.handshake = false).await;
    let server = env.addr.to_string();
    let run = |args: &[&str]| {
        let mut all = strings(args);
        all.extend(strings(&["--server", &server]));
        run_cli(all)
    };
    let created = run(&[
        "subscriptions",
        "create",
        "hooks",
        "--push",
        "http://127.0.0.1:9/hook",
        "--secret",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "--from",
        "earliest",
        "--filter",
        "type LIKE '%.created'",
        "--concurrency",
        "4",
        "-o",
        "json",
    ])
    .await;
    let err = String::from_utf8_lossy(&created.stderr);
    assert!(created.status.success(), "{err}");
    let info: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(info["concurrency"], 4);
    assert_eq!(info["secrets"], 1, "secrets are counted, never shown");

    // A second create of the same name is refused; a missing secret is a usage error.
    let again = run(&[
        "subscriptions",
        "create",
        "hooks",
        "--push",
        "http://127.0.0.1:9/x",
        "--secret",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ])
    .await;
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let unsigned = run(&[
        "subscriptions",
        "create",
        "other",
        "--push",
        "http://127.0.0.1:9/x",
    ])
    .await;
    assert_eq!(unsigned.status.code(), Some(2), "{unsigned:?}");

    let paused = run(&["subscriptions", "pause", "hooks", "-o", "json"]).await;
    let info: serde_json::Value = serde_json::from_slice(&paused.stdout).unwrap();
    assert_eq!(info["paused"], true);
    let updated = run(&[
        "subscriptions",
        "update",
        "hooks",
        "--concurrency",
        "8",
        "-o",
        "json",
    ])
    .await;
    assert!(updated.status.success(), "{updated:?}");
    let info: serde_json::Value = serde_json::from_slice(&updated.stdout).unwrap();
    assert_eq!(
        (info["concurrency"].as_u64(), info["paused"].as_bool()),
        (Some(8), Some(true))
    );
    run(&["subscriptions", "resume", "hooks"]).await;

    let list = run(&["subscriptions", "--push"]).await;
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(text.contains("hooks") && text.contains("active"), "{text}");
    let deleted = run(&["subscriptions", "delete", "hooks", "--push"]).await;
    assert!(deleted.status.success(), "{deleted:?}");
    let gone = run(&["subscriptions", "info", "hooks", "--push"]).await;
    assert_eq!(gone.status.code(), Some(3), "{gone:?}");
}
