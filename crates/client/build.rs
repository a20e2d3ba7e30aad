//! Compiles the jetwatch protos (in the repository's `proto/`) with protox, a pure-Rust
//! protobuf compiler, so no `protoc` is needed: the messages and the client stubs. The gateway
//! generates only its server stubs and uses these messages.

use std::{env, path::PathBuf};

const PROTOS: &[&str] = &[
    "jetwatch/v1/publisher.proto",
    "jetwatch/v1/subscriber.proto",
    "jetwatch/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .extern_path(".google.rpc.Status", "::tonic_types::pb::Status")
        .compile_fds(fds)?;
    Ok(())
}
