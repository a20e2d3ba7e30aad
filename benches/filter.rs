//! Filter evaluation throughput on the delivery path: evaluations per second for the dialect
//! filters and for CESQL expressions, against a typical resource-change event.
//!
//! Run with `cargo bench --bench filter`; criterion reports `thrpt` in evaluations per second
//! (one element = one `Filter::matches` call).

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use jetwatch::event::{AttributeValue, Event};
use jetwatch::filter::{Filter, FilterSpec};

/// A typical event: a widget modified in a namespace.
fn event() -> Event {
    let mut e = Event {
        id: "0b5f6c1e-2f4a-4c1e-9a57-3f1d2b6f1a77".into(),
        source: "/clusters/east/apis/example.com/v1/widgets".into(),
        spec_version: "1.0".into(),
        ty: "com.example.widget.modified".into(),
        ..Event::default()
    };
    e.set("subject", AttributeValue::String("w1-frontend-prod".into()))
        .set("namespace", AttributeValue::String("default".into()))
        .set(
            "datacontenttype",
            AttributeValue::String("application/json".into()),
        )
        .set("generation", AttributeValue::Integer(17));
    e
}

fn compile(spec: FilterSpec) -> Filter {
    Filter::compile(&spec).expect("benchmark filters are valid")
}

fn sql(text: &str) -> Filter {
    compile(FilterSpec::Sql(text.to_owned()))
}

fn filters(c: &mut Criterion) {
    let event = event();
    let cases = [
        (
            "exact_type",
            compile(FilterSpec::Exact(BTreeMap::from([(
                "type".to_owned(),
                "com.example.widget.modified".to_owned(),
            )]))),
        ),
        (
            "exact_type_and_namespace",
            compile(FilterSpec::Exact(BTreeMap::from([
                ("type".to_owned(), "com.example.widget.modified".to_owned()),
                ("namespace".to_owned(), "default".to_owned()),
            ]))),
        ),
        (
            "prefix_source",
            compile(FilterSpec::Prefix(BTreeMap::from([(
                "source".to_owned(),
                "/clusters/east/".to_owned(),
            )]))),
        ),
        (
            "exact_integer_extension",
            compile(FilterSpec::Exact(BTreeMap::from([(
                "generation".to_owned(),
                "17".to_owned(),
            )]))),
        ),
        (
            "cesql_3_clauses",
            sql("type = 'com.example.widget.modified' AND subject LIKE 'w%' AND EXISTS namespace"),
        ),
        ("cesql_like_general", sql("subject LIKE 'w_-%-prod'")),
        ("cesql_like_contains", sql("source LIKE '%/widgets%'")),
        (
            "cesql_in_and_cast",
            sql("namespace IN ('kube-system', 'default') AND generation > 10"),
        ),
        (
            "cesql_functions",
            sql("LOWER(namespace) = 'default' AND LENGTH(subject) < 32"),
        ),
    ];
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    for (name, filter) in &cases {
        assert!(
            filter.matches(&event),
            "{name} must match the benchmark event"
        );
        group.bench_function(*name, |b| {
            b.iter(|| black_box(filter).matches(black_box(&event)))
        });
    }
    group.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
