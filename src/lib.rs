//! jetwatch: a fan-out broker for resource-change CloudEvents on NATS JetStream.
//!
//! Producers publish CloudEvents into durable JetStream streams (over gRPC or plain NATS);
//! consumers open filtered, replayable, back-pressured gRPC streams of them with durable
//! positions. JetStream is the only store: the gateway keeps no state on disk.
//!
//! # Layout
//!
//! - [`config`]: settings from `config/default.toml`, a file, the environment and flags.
//! - [`event`]: the domain CloudEvent every layer passes around (the client crate's).
//! - [`codec`]: CloudEvents ⇄ NATS messages (binary and structured mode) and validation; pure.
//! - [`subject`]: the subject template and escaping that map events to NATS subjects; pure.
//! - [`filter`]: CloudEvents Subscriptions API filter dialects and CESQL 1.0; pure.
//! - [`wildcard`]: NATS subject patterns (`*`, `>`); pure.
//! - [`store`]: the JetStream layer, the only module that performs NATS I/O.
//! - [`publish`]: the publish path (validate, subject, encode, dedup key, store).
//! - [`push`]: push subscriptions (signed webhooks with retries and dead letters).
//! - [`engine`]: the subscription engine (shared reads, history, catch-up, bookmarks).
//! - [`grpc`]: the gRPC services, conversions and the error → status table.
//! - [`server`]: wiring and the shutdown contract.
//! - [`telemetry`]: logging and metrics.
//! - [`devnats`]: a local nats-server process for `jetwatch dev`, tests and benchmarks.
//! - [`cli`]: the `jetwatch` command's sub-commands.

pub mod admin;
pub mod auth;
pub mod cli;
pub mod codec;
pub mod config;
pub mod devnats;
pub mod engine;
pub mod error;
pub use jetwatch_client::event;
pub mod filter;
pub mod grpc;
pub mod http;
pub mod publish;
pub mod push;
pub mod server;
pub mod store;
pub mod subject;
pub mod telemetry;
pub mod tls;
pub mod wildcard;

pub use error::Error;
