//! The gateway's own work per event read from JetStream: decoding a stored message into an
//! event ([`jetwatch::engine::decode_stored`]) and writing its gRPC response
//! ([`jetwatch::grpc::frame::encode_block`]), for blocks of 256 typical events.
//!
//! It leaves out what a raw JetStream reader pays too (async-nats parsing the message), the
//! transport and the scheduler; it is the steady figure behind the `snapshot` and `watch`
//! scenarios of the `e2e` bench, whose throughput swings with the machine.
//!
//! Run with `cargo bench --bench decode`; criterion reports `thrpt` in events per second.
//! Throughput swings with a shared machine's load; instruction counts do not. With
//! `JETWATCH_DECODE_EVENTS=n` set, the bench decodes and encodes `n` events once and exits,
//! for counting under valgrind: `valgrind --tool=callgrind <bench binary>`, then
//! `callgrind_annotate --inclusive=yes` gives the instructions spent in `decode_stored` and
//! `encode_block` (divide by `n`).

use std::hint::black_box;

use async_nats::HeaderMap;
use bytes::Bytes;
use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use jetwatch::engine::decode_stored;
use jetwatch::store::RawMessage;

const BLOCK: usize = 256;

/// The gateway's allocator (see `src/main.rs`): allocation is much of this work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Event `i` as a producer stores it in binary mode: six `ce-` headers and 512 B of JSON, the
/// shape of the `e2e` bench's events.
fn stored(i: usize, data: &Bytes) -> RawMessage {
    let mut headers = HeaderMap::new();
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", format!("watch-{i}").as_str());
    headers.insert("ce-source", "/bench");
    headers.insert("ce-type", "com.example.widget.modified");
    headers.insert("ce-subject", format!("r{}", i % 1000).as_str());
    headers.insert("ce-datacontenttype", "application/json");
    let subject = format!("jetwatch.bench.r{}", i % 1000);
    RawMessage {
        sequence: i as u64 + 1,
        // What NATS reports: subject, a JetStream reply subject (about 80 bytes), the header
        // block (about 180) and the payload.
        size: subject.len() + 80 + 180 + data.len(),
        subject,
        stored_at: chrono::Utc::now(),
        pending: 0,
        headers: Some(headers),
        payload: data.clone(),
    }
}

/// 512 B of JSON.
fn payload() -> Bytes {
    let mut json = b"{\"spec\":{\"replicas\":3,\"note\":\"".to_vec();
    json.resize(510, b'x');
    json.extend_from_slice(b"\"}");
    Bytes::from(json)
}

fn read_path(c: &mut Criterion) {
    let data = payload();
    let block = || (0..BLOCK).map(|i| stored(i, &data)).collect::<Vec<_>>();

    let mut group = c.benchmark_group("read_path");
    group.throughput(Throughput::Elements(BLOCK as u64));
    group.bench_function("decode", |b| {
        b.iter_batched(
            block,
            |raw| {
                raw.into_iter()
                    .filter_map(decode_stored)
                    .collect::<Vec<_>>()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("decode_and_encode", |b| {
        b.iter_batched(
            block,
            |raw| {
                let events = raw
                    .into_iter()
                    .filter_map(decode_stored)
                    .collect::<Vec<_>>();
                jetwatch::grpc::frame::encode_block(black_box(&events));
                events
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, read_path);

fn main() {
    if let Some(n) = std::env::var("JETWATCH_DECODE_EVENTS")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
    {
        let data = payload();
        let raw: Vec<_> = (0..n).map(|i| stored(i, &data)).collect();
        let events: Vec<_> = raw.into_iter().filter_map(decode_stored).collect();
        for block in events.chunks(BLOCK) {
            jetwatch::grpc::frame::encode_block(block);
        }
        println!("{} events decoded and encoded", events.len());
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
