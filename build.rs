//! Compiles `proto/` with protox (a pure-Rust protobuf compiler, so no `protoc` is needed on the
//! build machine) and generates the tonic services. The messages are the client crate's
//! (`jetwatch-client`), so the gateway and its clients share one set of types. The encoded
//! descriptor set is written next to the generated code for gRPC server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "jetwatch/v1/publisher.proto",
    "jetwatch/v1/subscriber.proto",
    "jetwatch/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    // Reflection serves every type the API returns, the `google.rpc` error details included
    // (`ErrorInfo`, `BadRequest`, `RetryInfo` travel in `grpc-status-details-bin`), so grpcurl
    // and other reflection clients decode errors by name: the files tonic-types was built
    // from are added to ours (those not already there).
    let mut served = fds.clone();
    let details = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    for file in details.file {
        if !served.file.iter().any(|f| f.name == file.name) {
            served.file.push(file);
        }
    }
    fs::write(out.join("jetwatch_descriptor.bin"), served.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".google.rpc.Status", "::tonic_types::pb::Status")
        .extern_path(".jetwatch.v1", "::jetwatch_client::pb::jetwatch::v1")
        .extern_path(
            ".io.cloudevents.v1",
            "::jetwatch_client::pb::io::cloudevents::v1",
        )
        .compile_fds(fds)?;
    Ok(())
}
