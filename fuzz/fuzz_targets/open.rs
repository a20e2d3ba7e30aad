//! Fuzzes the validation of `Open` requests and the compilation of their filters, as the
//! gateway does it: structure-aware inputs (deep and wide filter trees, CESQL text, every start
//! position, any numbers) encoded to protobuf and decoded as the server decodes them, and raw
//! bytes decoded as an `Open`. Whatever validation accepts, its compiled filter is evaluated
//! against a fixed event. Nothing may panic or overflow the stack.
//!
//! Run with `cargo +nightly fuzz run open`, or on stable as `fuzz/README.md` shows.

#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use jetwatch::config::{Settings, SubscribeSettings};
use jetwatch::event::{AttributeValue, Event};
use jetwatch::grpc::convert::open_from_pb;
use jetwatch::grpc::pb::jetwatch::v1 as api;
use libfuzzer_sys::fuzz_target;
use prost::Message;

#[derive(Arbitrary, Debug)]
enum Filter {
    Exact(Vec<(String, String)>),
    Prefix(Vec<(String, String)>),
    Suffix(Vec<(String, String)>),
    All(Vec<Filter>),
    Any(Vec<Filter>),
    Not(Box<Filter>),
    /// `n` nested `not`s around the inner filter: depth without a deep Rust value.
    NotChain(u8, Box<Filter>),
    Sql(String),
    Empty,
}

#[derive(Arbitrary, Debug)]
enum Start {
    New,
    Earliest,
    Sequence(u64),
    Time(i64, i32),
    Snapshot,
    Resume,
}

#[derive(Arbitrary, Debug)]
struct Open {
    stream: String,
    subjects: Vec<String>,
    filter: Option<Filter>,
    start: Option<Start>,
    durable: String,
    ack_mode: i32,
    max_in_flight: u32,
    heartbeat: Option<(i64, i32)>,
    on_expired: i32,
    ack_wait: Option<(i64, i32)>,
    watch: bool,
}

#[derive(Arbitrary, Debug)]
enum Input {
    Structured(Open),
    Raw(Vec<u8>),
}

fn filter(f: Filter) -> api::Filter {
    use api::filter::Filter as F;
    let map = |pairs: Vec<(String, String)>| api::AttributeMap {
        attributes: pairs.into_iter().collect(),
    };
    let list = |fs: Vec<Filter>| api::FilterList {
        filters: fs.into_iter().map(filter).collect(),
    };
    let inner = match f {
        Filter::Exact(p) => Some(F::Exact(map(p))),
        Filter::Prefix(p) => Some(F::Prefix(map(p))),
        Filter::Suffix(p) => Some(F::Suffix(map(p))),
        Filter::All(fs) => Some(F::All(list(fs))),
        Filter::Any(fs) => Some(F::Any(list(fs))),
        Filter::Not(f) => Some(F::Not(Box::new(filter(*f)))),
        Filter::NotChain(n, f) => {
            let mut out = filter(*f);
            for _ in 0..n {
                out = api::Filter {
                    filter: Some(F::Not(Box::new(out))),
                };
            }
            return out;
        }
        Filter::Sql(s) => Some(F::Sql(s)),
        Filter::Empty => None,
    };
    api::Filter { filter: inner }
}

fn duration((seconds, nanos): (i64, i32)) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos }
}

fn open(o: Open) -> api::Open {
    use api::start_position::Position;
    api::Open {
        stream: o.stream,
        subjects: o.subjects,
        filter: o.filter.map(filter),
        start: o.start.map(|s| api::StartPosition {
            position: Some(match s {
                Start::New => Position::New(()),
                Start::Earliest => Position::Earliest(()),
                Start::Sequence(n) => Position::Sequence(n),
                Start::Time(seconds, nanos) => {
                    Position::Time(prost_types::Timestamp { seconds, nanos })
                }
                Start::Snapshot => Position::Snapshot(()),
                Start::Resume => Position::Resume(()),
            }),
        }),
        durable: o.durable,
        ack_mode: o.ack_mode,
        max_in_flight: o.max_in_flight,
        heartbeat: o.heartbeat.map(duration),
        on_expired: o.on_expired,
        ack_wait: o.ack_wait.map(duration),
    }
}

fn defaults() -> &'static SubscribeSettings {
    static DEFAULTS: OnceLock<SubscribeSettings> = OnceLock::new();
    DEFAULTS.get_or_init(|| Settings::defaults().subscribe)
}

fn event() -> &'static Event {
    static EVENT: OnceLock<Event> = OnceLock::new();
    EVENT.get_or_init(|| {
        let mut e = Event {
            id: "w1-7".into(),
            source: "/clusters/east/widgets".into(),
            spec_version: "1.0".into(),
            ty: "com.example.widget.modified".into(),
            ..Event::default()
        };
        e.set("subject", AttributeValue::String("w1".into()))
            .set("count", AttributeValue::Integer(-42))
            .set("flag", AttributeValue::Boolean(true));
        e
    })
}

fn check(request: api::Open, watch: bool) {
    // Through the wire, as the server receives it (prost's recursion limit applies there).
    let Ok(decoded) = api::Open::decode(request.encode_to_vec().as_slice()) else {
        return;
    };
    if let Ok(open) = open_from_pb(decoded, "events", defaults(), watch) {
        if let Some(f) = open.filter {
            let _ = f.matches(event());
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Structured(o) => {
        let watch = o.watch;
        check(open(o), watch);
    }
    Input::Raw(bytes) => {
        if let Ok(decoded) = api::Open::decode(bytes.as_slice()) {
            check(decoded, true);
        }
    }
});
