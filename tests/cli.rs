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
    for word in ["serve", "dev"] {
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

#[tokio::test]
async fn dev_runs_nats_and_the_gateway_and_stops_both_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let mut child = jetwatch()
        .args(["dev", "--nats-port", "0", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--metrics-listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
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
    let name = ports.file_name().to_string_lossy().into_owned();
    let pid: i32 = name
        .trim_end_matches(".ports")
        .rsplit('_')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
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
