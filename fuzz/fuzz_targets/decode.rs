//! Fuzz target: `codec::decode` on arbitrary headers and payloads must never panic, and what it
//! reads must write and read back unchanged.
//!
//! Run with `cargo +nightly fuzz run decode` from this directory. Without nightly, a stable
//! toolchain builds the same coverage-guided libFuzzer binary (build scripts must not be
//! instrumented, hence the explicit `--target`):
//!
//! ```text
//! RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
//!   -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
//!   -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
//!   --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
//!   cargo build --release --target x86_64-unknown-linux-gnu
//! mkdir -p corpus && target/x86_64-unknown-linux-gnu/release/decode -max_total_time=300 corpus
//! ```

#![no_main]

use arbitrary::Arbitrary;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use jetwatch::codec;
use libfuzzer_sys::fuzz_target;

/// One NATS message: header lines and a payload.
#[derive(Debug, Arbitrary)]
struct Message {
    /// `None` for a message without headers.
    headers: Option<Vec<(Name, String)>>,
    /// The payload bytes.
    payload: Vec<u8>,
}

/// A header name: mostly ones the decoder looks at, so that the fuzzer reaches its branches.
#[derive(Debug, Arbitrary)]
enum Name {
    /// `ce-` followed by arbitrary text.
    Ce(String),
    /// `Content-Type`.
    ContentType,
    /// `Jetwatch-Ce-Types`.
    Types,
    /// Anything.
    Other(String),
}

impl Name {
    fn text(&self) -> String {
        match self {
            Name::Ce(s) => format!("ce-{s}"),
            Name::ContentType => "Content-Type".to_owned(),
            Name::Types => codec::TYPES_HEADER.to_owned(),
            Name::Other(s) => s.clone(),
        }
    }
}

fuzz_target!(|message: Message| {
    let headers = message.headers.map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            // The NATS client refuses these names and values itself, so they never reach us.
            let (Ok(name), Ok(value)) = (
                name.text().parse::<HeaderName>(),
                value.parse::<HeaderValue>(),
            ) else {
                continue;
            };
            map.append(name, value);
        }
        map
    });
    if let Ok(event) = codec::decode(headers.as_ref(), Bytes::from(message.payload)) {
        let encoded = codec::encode(&event).expect("a decoded event can be encoded");
        let again = codec::decode(Some(&encoded.headers), encoded.payload)
            .expect("an encoded event can be decoded");
        assert_eq!(again, event);
    }
});
