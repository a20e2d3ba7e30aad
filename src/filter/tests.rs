//! Dialect semantics, through one data-driven helper.

use super::*;
use crate::event::AttributeValue;
use bytes::Bytes;
use chrono::DateTime;

/// The event every case is matched against.
fn event() -> Event {
    let mut e = Event {
        id: "w1-7".into(),
        source: "/clusters/east/widgets".into(),
        spec_version: "1.0".into(),
        ty: "com.example.widget.modified".into(),
        ..Event::default()
    };
    let time = DateTime::parse_from_rfc3339("2024-05-06T07:08:09.250+02:00").unwrap();
    e.set("subject", AttributeValue::String("w1".into()))
        .set("namespace", AttributeValue::String("default".into()))
        .set("generation", AttributeValue::Integer(-42))
        .set("deleted", AttributeValue::Boolean(false))
        .set(
            "digest",
            AttributeValue::Binary(Bytes::from_static(b"hello")),
        )
        .set(
            "dataschema",
            AttributeValue::Uri("https://example.com/widget.json".into()),
        )
        .set("time", AttributeValue::Timestamp(time.to_utc()));
    e
}

fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
    entries
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn exact(entries: &[(&str, &str)]) -> FilterSpec {
    FilterSpec::Exact(map(entries))
}

fn prefix(entries: &[(&str, &str)]) -> FilterSpec {
    FilterSpec::Prefix(map(entries))
}

fn suffix(entries: &[(&str, &str)]) -> FilterSpec {
    FilterSpec::Suffix(map(entries))
}

fn sql(text: &str) -> FilterSpec {
    FilterSpec::Sql(text.to_owned())
}

fn not(spec: FilterSpec) -> FilterSpec {
    FilterSpec::Not(Box::new(spec))
}

/// What a case expects: a match, no match, or a refusal at `path` whose message contains the
/// given text.
#[derive(Debug)]
enum Want {
    Match,
    NoMatch,
    Refused(&'static str, &'static str),
}

/// Compiles every case's filter and checks it against [`event`]; reports every failure.
fn check(cases: Vec<(&str, FilterSpec, Want)>) {
    let event = event();
    let mut failures = Vec::new();
    for (name, spec, want) in cases {
        let outcome = Filter::compile(&spec);
        let ok = match (&want, &outcome) {
            (Want::Match, Ok(f)) => f.matches(&event),
            (Want::NoMatch, Ok(f)) => !f.matches(&event),
            (Want::Refused(path, text), Err(e)) => {
                e.path() == *path && e.to_string().contains(text)
            }
            _ => false,
        };
        if !ok {
            let got = match &outcome {
                Ok(f) => format!("compiled; matches = {}", f.matches(&event)),
                Err(e) => format!("refused: path {} / {e}", e.path()),
            };
            failures.push(format!("{name}: {got}"));
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn attribute_dialects() {
    use Want::*;
    check(vec![
        (
            "exact on type",
            exact(&[("type", "com.example.widget.modified")]),
            Match,
        ),
        (
            "exact is case-sensitive",
            exact(&[("type", "com.example.Widget.modified")]),
            NoMatch,
        ),
        (
            "exact on a prefix only",
            exact(&[("type", "com.example")]),
            NoMatch,
        ),
        (
            "exact on every entry",
            exact(&[("id", "w1-7"), ("subject", "w1")]),
            Match,
        ),
        (
            "exact fails on one entry",
            exact(&[("id", "w1-7"), ("subject", "w2")]),
            NoMatch,
        ),
        (
            "exact on a missing attribute",
            exact(&[("color", "red")]),
            NoMatch,
        ),
        (
            "exact on an integer",
            exact(&[("generation", "-42")]),
            Match,
        ),
        (
            "exact on an integer, other text",
            exact(&[("generation", "-042")]),
            NoMatch,
        ),
        ("exact on a boolean", exact(&[("deleted", "false")]), Match),
        (
            "exact on a boolean in capitals",
            exact(&[("deleted", "FALSE")]),
            NoMatch,
        ),
        (
            "exact on binary as base64",
            exact(&[("digest", "aGVsbG8=")]),
            Match,
        ),
        (
            "exact on binary, wrong",
            exact(&[("digest", "aGVsbG8")]),
            NoMatch,
        ),
        (
            "exact on a URI",
            exact(&[("dataschema", "https://example.com/widget.json")]),
            Match,
        ),
        (
            "exact on a timestamp",
            exact(&[("time", "2024-05-06T05:08:09.250Z")]),
            Match,
        ),
        (
            "exact on a timestamp, offset",
            exact(&[("time", "2024-05-06T07:08:09.250+02:00")]),
            NoMatch,
        ),
        (
            "prefix on source",
            prefix(&[("source", "/clusters/east/")]),
            Match,
        ),
        (
            "prefix that is the whole value",
            prefix(&[("subject", "w1")]),
            Match,
        ),
        (
            "prefix longer than the value",
            prefix(&[("subject", "w1x")]),
            NoMatch,
        ),
        (
            "prefix on a missing attribute",
            prefix(&[("color", "r")]),
            NoMatch,
        ),
        (
            "prefix on an integer",
            prefix(&[("generation", "-4")]),
            Match,
        ),
        (
            "prefix on a timestamp",
            prefix(&[("time", "2024-05-06T05")]),
            Match,
        ),
        ("prefix on binary", prefix(&[("digest", "aGVs")]), Match),
        (
            "prefix on binary, wrong",
            prefix(&[("digest", "aGVm")]),
            NoMatch,
        ),
        ("suffix on type", suffix(&[("type", ".modified")]), Match),
        ("suffix, wrong", suffix(&[("type", ".deleted")]), NoMatch),
        ("suffix on binary", suffix(&[("digest", "bG8=")]), Match),
        ("suffix on a timestamp", suffix(&[("time", ".250Z")]), Match),
        ("suffix on a boolean", suffix(&[("deleted", "lse")]), Match),
        (
            "suffix on every entry",
            suffix(&[("type", "modified"), ("id", "-7")]),
            Match,
        ),
    ]);
}

#[test]
fn composite_dialects() {
    use Want::*;
    let modified = || exact(&[("type", "com.example.widget.modified")]);
    let deleted = || exact(&[("type", "com.example.widget.deleted")]);
    check(vec![
        ("all of one", FilterSpec::All(vec![modified()]), Match),
        (
            "all of two",
            FilterSpec::All(vec![modified(), prefix(&[("subject", "w")])]),
            Match,
        ),
        (
            "all with one false",
            FilterSpec::All(vec![modified(), deleted()]),
            NoMatch,
        ),
        (
            "any with one true",
            FilterSpec::Any(vec![deleted(), modified()]),
            Match,
        ),
        (
            "any with none true",
            FilterSpec::Any(vec![deleted(), deleted()]),
            NoMatch,
        ),
        ("not of false", not(deleted()), Match),
        ("not of true", not(modified()), NoMatch),
        (
            "not of a missing attribute",
            not(exact(&[("color", "red")])),
            Match,
        ),
        ("double not", not(not(modified())), Match),
        (
            "nested",
            FilterSpec::Any(vec![
                deleted(),
                FilterSpec::All(vec![
                    modified(),
                    not(exact(&[("namespace", "kube-system")])),
                ]),
            ]),
            Match,
        ),
        (
            "sql true",
            sql("type LIKE '%.modified' AND EXISTS namespace"),
            Match,
        ),
        ("sql false", sql("subject = 'w2'"), NoMatch),
        (
            "sql with an error does not match",
            sql("color = 'red' OR TRUE"),
            NoMatch,
        ),
        (
            "sql NOT of an error does not match",
            sql("NOT (color = 'red')"),
            NoMatch,
        ),
        (
            "sql on typed attributes",
            sql("generation < 0 AND NOT deleted"),
            Match,
        ),
        (
            "sql on a timestamp",
            sql("time LIKE '2024-05-06T05:%Z'"),
            Match,
        ),
        ("sql on an attribute's value", sql("deleted"), NoMatch),
        (
            "sql inside all",
            FilterSpec::All(vec![modified(), sql("subject = 'w1'")]),
            Match,
        ),
    ]);
}

#[test]
fn invalid_filters_are_refused_with_their_path() {
    use Want::Refused;
    let ok = || exact(&[("type", "t")]);
    check(vec![
        (
            "empty exact",
            exact(&[]),
            Refused("filter.exact", "names no attribute"),
        ),
        (
            "empty prefix",
            prefix(&[]),
            Refused("filter.prefix", "names no attribute"),
        ),
        (
            "empty name",
            suffix(&[("", "x")]),
            Refused("filter.suffix", "name is empty"),
        ),
        (
            "empty value",
            exact(&[("type", "")]),
            Refused("filter.exact", "`type` is empty"),
        ),
        (
            "upper-case name",
            exact(&[("Type", "t")]),
            Refused("filter.exact", "`Type` is not"),
        ),
        (
            "empty all",
            FilterSpec::All(vec![]),
            Refused("filter.all", "at least one"),
        ),
        (
            "empty any",
            FilterSpec::Any(vec![]),
            Refused("filter.any", "at least one"),
        ),
        (
            "nested position",
            FilterSpec::All(vec![ok(), exact(&[])]),
            Refused("filter.all[1].exact", "invalid filter at `all[1].exact`"),
        ),
        (
            "deeper position",
            FilterSpec::Any(vec![
                ok(),
                ok(),
                not(FilterSpec::All(vec![ok(), prefix(&[("a", "")])])),
            ]),
            Refused("filter.any[2].not.all[1].prefix", "`a` is empty"),
        ),
        (
            "sql parse error",
            sql("type = "),
            Refused("filter.sql", "parse error at 1:8"),
        ),
        (
            "sql empty",
            sql(""),
            Refused("filter.sql", "parse error at 1:1"),
        ),
        (
            "sql on two lines",
            sql("type = 'a'\n  AND ("),
            Refused("filter.sql", "at 2:8"),
        ),
        (
            "sql unknown function",
            sql("FOO(type)"),
            Refused("filter.sql", "missing function at 1:1"),
        ),
        (
            "sql wrong arity",
            sql("TRUE AND LEFT('a')"),
            Refused("filter.sql", "LEFT takes 2"),
        ),
        (
            "sql integer result",
            sql("1 + 1"),
            Refused("filter.sql", "yields Integer"),
        ),
        (
            "sql string result",
            sql("LOWER(type)"),
            Refused("filter.sql", "yields String"),
        ),
        (
            "sql nested too deep",
            sql(&format!("{}TRUE{}", "(".repeat(100), ")".repeat(100))),
            Refused("filter.sql", "more than 64 levels"),
        ),
    ]);
}

#[test]
fn nesting_is_limited() {
    let mut spec = exact(&[("type", "t")]);
    for _ in 0..MAX_DEPTH - 1 {
        spec = not(spec);
    }
    assert!(
        Filter::compile(&spec).is_ok(),
        "{MAX_DEPTH} levels are allowed"
    );
    let too_deep = not(spec);
    let err = Filter::compile(&too_deep).unwrap_err();
    assert!(matches!(
        err.kind(),
        FilterErrorKind::TooDeep { max: MAX_DEPTH }
    ));
    assert!(err.path().starts_with("filter.not.not."), "{}", err.path());
}

#[test]
fn match_all_and_sharing() {
    let event = event();
    let all = Filter::match_all();
    assert!(all.is_match_all() && all.matches(&event));
    assert!(Filter::default().matches(&event));
    let filter = Filter::compile(&sql("subject = 'w1'")).unwrap();
    assert!(!filter.is_match_all());
    let shared = filter.clone();
    let handle = std::thread::spawn(move || shared.matches(&super::tests::event()));
    assert!(handle.join().unwrap() && filter.matches(&event));
}
