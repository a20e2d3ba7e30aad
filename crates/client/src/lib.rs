//! The Rust client of jetwatch, a fan-out broker for resource-change CloudEvents on NATS
//! JetStream.
//!
//! - [`Connection`]: where the gateway is and how to authenticate (token, TLS, mTLS).
//! - [`Publisher`]: publish one event, or many pipelined over one stream.
//! - [`Watcher`]: a filtered, replayable watch that resumes after any disconnect from the last
//!   delivery or bookmark, with exponential backoff and jitter, and says so with typed items
//!   ([`WatchItem::Disconnected`], [`WatchItem::Opened`] with `resumed`,
//!   [`WatchItem::Restarted`]), in the spirit of kube-runtime's watcher.
//! - [`Reflector`]: the current state of every matching resource (a snapshot, then every
//!   change), kept in a map that any number of readers consult while it runs.
//! - [`admin`]: streams, durable subscriptions, health and version.
//!
//! This crate depends on gRPC (tonic, prost) only: not on NATS or the gateway's other
//! dependencies.
//!
//! ```no_run
//! # async fn run() -> Result<(), jetwatch_client::ClientError> {
//! use jetwatch_client::{StartFrom, WatchItem, WatchOptions, Watcher};
//!
//! let options = WatchOptions { from: StartFrom::Snapshot, ..WatchOptions::default() };
//! let mut watcher = Watcher::watch("127.0.0.1:50051", &options);
//! loop {
//!     if let WatchItem::Delivery { sequence, event, .. } = watcher.next().await? {
//!         println!("{sequence} {} {}", event.ty, event.subject().unwrap_or(""));
//!     }
//! }
//! # }
//! ```

pub mod admin;
mod connection;
pub mod convert;
pub mod event;
mod publish;
mod reflector;
mod watcher;

pub use connection::{connect, ClientError, ClientTls, Connection};
pub use event::{AttributeValue, Data, Event};
pub use publish::{PublishOutcome, Publisher};
pub use reflector::{DeletionRule, Reflector, ReflectorOptions, Resource};
pub use watcher::{ExpiredPolicy, StartFrom, WatchItem, WatchOptions, Watcher};

/// Generated protobuf messages and gRPC client stubs of the `jetwatch.v1` API and the
/// CloudEvents protobuf format (`io.cloudevents.v1`).
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    /// `io.cloudevents.v1`: the CloudEvents protobuf format.
    pub mod io {
        /// CloudEvents.
        pub mod cloudevents {
            /// Version 1.
            pub mod v1 {
                tonic::include_proto!("io.cloudevents.v1");
            }
        }
    }
    /// `jetwatch.v1`: the jetwatch API.
    pub mod jetwatch {
        /// Version 1.
        pub mod v1 {
            tonic::include_proto!("jetwatch.v1");
        }
    }
}
