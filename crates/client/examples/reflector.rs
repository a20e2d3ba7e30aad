//! Keeps the current state of every widget in memory and prints how many there are.
//!
//! `cargo run -p jetwatch-client --example reflector` (with `jetwatch dev` running).

use std::time::Duration;

use jetwatch_client::{Reflector, ReflectorOptions, WatchOptions};

#[tokio::main]
async fn main() -> Result<(), jetwatch_client::ClientError> {
    let server = std::env::var("JETWATCH_SERVER").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let options = ReflectorOptions {
        watch: WatchOptions {
            sql: Some("type LIKE 'com.example.widget.%'".into()),
            ..WatchOptions::default()
        },
        ..ReflectorOptions::default()
    };
    let widgets = Reflector::start(server, options);
    widgets.wait_until_ready().await?;
    loop {
        // Any number of tasks may read while the reflector runs.
        println!(
            "{} widgets as of sequence {}",
            widgets.len(),
            widgets.sequence().unwrap_or(0)
        );
        if let Some(w1) = widgets.get("events.examples.widgets._.w1") {
            println!("  w1: {} at sequence {}", w1.event.ty, w1.sequence);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        if widgets.is_finished() {
            return widgets.wait_until_ready().await;
        }
    }
}
