//! Watches the default stream from a snapshot: the current state of every resource, then every
//! change, riding through gateway restarts.
//!
//! `cargo run -p jetwatch-client --example watch` (with `jetwatch dev` running).

use jetwatch_client::{ExpiredPolicy, StartFrom, WatchItem, WatchOptions, Watcher};

#[tokio::main]
async fn main() -> Result<(), jetwatch_client::ClientError> {
    let server = std::env::var("JETWATCH_SERVER").unwrap_or_else(|_| "127.0.0.1:50051".into());
    let options = WatchOptions {
        from: StartFrom::Snapshot,
        sql: Some("type LIKE 'com.example.widget.%'".into()),
        on_expired: ExpiredPolicy::Resnapshot,
        ..WatchOptions::default()
    };
    let mut watcher = Watcher::watch(server, &options);
    loop {
        match watcher.next().await? {
            WatchItem::Delivery {
                sequence, event, ..
            } => println!(
                "{sequence:>8} {} {}",
                event.ty,
                event.subject().unwrap_or("")
            ),
            WatchItem::SnapshotEnd { sequence } => println!("-- snapshot complete at {sequence}"),
            WatchItem::Disconnected {
                error, retry_in, ..
            } => eprintln!("-- disconnected ({error}); retrying in {retry_in:?}"),
            WatchItem::Opened {
                resumed: true,
                start_sequence,
                ..
            } => eprintln!("-- resumed from {start_sequence}"),
            WatchItem::Restarted { expired, .. } => {
                eprintln!("-- {expired} expired; taking a new snapshot")
            }
            WatchItem::Opened { .. } | WatchItem::Bookmark { .. } => {}
        }
    }
}
