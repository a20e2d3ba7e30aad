//! Fuzzes the CESQL parser and evaluator: any input must parse or fail cleanly, and evaluating
//! what parses must not panic, overflow the stack or disagree between the two evaluation modes.
//!
//! Run with `cargo +nightly fuzz run cesql`, or on stable as `fuzz/README.md` shows.

#![no_main]

use std::sync::OnceLock;

use jetwatch::event::{AttributeValue, Event};
use jetwatch::filter::cesql::{self, Value};
use jetwatch::filter::{Filter, FilterSpec};
use libfuzzer_sys::fuzz_target;

/// A fixed event with attributes of every type.
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
            .set("namespace", AttributeValue::String("default".into()))
            .set("count", AttributeValue::Integer(-42))
            .set("flag", AttributeValue::Boolean(true))
            .set("blob", AttributeValue::Binary(vec![0, 1, 2, 250].into()))
            .set(
                "schema",
                AttributeValue::Uri("https://example.com/s".into()),
            )
            .set(
                "time",
                AttributeValue::Timestamp(chrono::DateTime::UNIX_EPOCH),
            );
        e
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expression) = cesql::parse(text) {
        let (value, errors) = expression.evaluate(event());
        let expected = value == Value::Boolean(true) && errors.is_empty();
        assert_eq!(expression.matches(event()), expected, "{text:?}");
        let _ = expression.check_predicate();
    }
    if let Ok(filter) = Filter::compile(&FilterSpec::Sql(text.to_owned())) {
        let _ = filter.matches(event());
    }
});
