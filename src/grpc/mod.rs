//! The gRPC layer: the only code that knows prost and tonic types.
//!
//! Handlers convert requests to domain types by hand ([`convert`]), call the publish path or
//! the engine, and convert results back. Domain errors become `tonic::Status` in exactly one
//! place ([`status`]).

pub mod admin;
pub mod auth;
mod body;
pub mod convert;
mod delivery;
pub mod frame;
pub mod gather;
pub mod metrics;
pub mod publisher;
pub mod status;
pub mod subscriber;

/// Generated protobuf and gRPC code: the messages of the client crate and the server stubs.
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
                pub use jetwatch_client::pb::io::cloudevents::v1::*;
            }
        }
    }
    /// `jetwatch.v1`: the jetwatch API.
    pub mod jetwatch {
        /// Version 1.
        pub mod v1 {
            pub use jetwatch_client::pb::jetwatch::v1::*;
            tonic::include_proto!("jetwatch.v1");
        }
    }

    /// The encoded descriptor set of every jetwatch proto (for server reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/jetwatch_descriptor.bin"));
}
