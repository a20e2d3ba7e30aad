//! The CloudEvents SQL conformance suite (TCK), run case by case.
//!
//! The suite's YAML files are read in place from `$CESQL_TCK_DIR`, or else from
//! `../shared/conformance/cesql_tck` beside the repository. Every case of every file runs;
//! failures are collected and reported together, by file and case name. Without the suite the
//! test says where to put it and passes, except under CI (`CI` set), where a missing suite is a
//! failure: CI always has it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cesql::{ErrorKind, Value};

/// A CloudEvent's attributes by name.
type Event = BTreeMap<String, Value>;
use serde::Deserialize;
use serde_yaml::Value as Yaml;

/// One TCK file.
#[derive(Debug, Deserialize)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

/// One TCK case (see the suite's README.md).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    #[serde(default)]
    result: Option<Yaml>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    event: Option<Yaml>,
    #[serde(default)]
    event_overrides: Option<BTreeMap<String, Yaml>>,
}

fn tck_dir() -> PathBuf {
    match std::env::var_os("CESQL_TCK_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/cesql_tck"),
    }
}

/// An event with only the required attributes, set to `id`, `source`, `specversion`, `type`.
fn required(id: &str, source: &str, specversion: &str, ty: &str) -> Event {
    [
        ("id", id),
        ("source", source),
        ("specversion", specversion),
        ("type", ty),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
    .collect()
}

/// The event used when a case gives none: only the required attributes.
fn default_event() -> Event {
    required(
        "tck-id",
        "http://localhost/tck",
        "1.0",
        "io.cloudevents.tck",
    )
}

/// Sets one attribute from its JSON value: required attributes are strings, others are typed
/// by JSON type (boolean, integer, string).
fn set_attribute(event: &mut Event, name: &str, value: &Yaml) -> Result<(), String> {
    let typed = match (name, value) {
        ("data" | "data_base64", _) => return Ok(()),
        ("id" | "source" | "specversion" | "type", Yaml::String(s)) => Value::String(s.clone()),
        ("id" | "source" | "specversion" | "type", other) => {
            return Err(format!(
                "attribute `{name}` must be a string, got {other:?}"
            ))
        }
        (_, Yaml::Bool(b)) => Value::Boolean(*b),
        (_, Yaml::Number(n)) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Value::Integer)
            .ok_or_else(|| format!("attribute `{name}`: {n} is not a 32-bit integer"))?,
        (_, Yaml::String(s)) => Value::String(s.clone()),
        (_, other) => {
            return Err(format!(
                "attribute `{name}` has unsupported value {other:?}"
            ))
        }
    };
    event.insert(name.to_string(), typed);
    Ok(())
}

/// Builds the case's input event.
fn input_event(case: &Case) -> Result<Event, String> {
    let mut event = match &case.event {
        None => default_event(),
        Some(spec) => {
            // The README calls `event` JSON; accept it inline or as a JSON string.
            let spec = match spec {
                Yaml::String(json) => serde_yaml::from_str(json).map_err(|e| e.to_string())?,
                other => other.clone(),
            };
            let Yaml::Mapping(map) = spec else {
                return Err(format!("`event` must be an object, got {spec:?}"));
            };
            // A CloudEvent always has its required attributes; unset ones are empty.
            let mut event = required("", "", "", "");
            for (key, value) in &map {
                let key = key.as_str().ok_or("attribute names must be strings")?;
                set_attribute(&mut event, key, value)?;
            }
            event
        }
    };
    for (name, value) in case.event_overrides.iter().flatten() {
        set_attribute(&mut event, name, value)?;
    }
    Ok(event)
}

fn expected_value(result: &Yaml) -> Result<Value, String> {
    match result {
        Yaml::Bool(b) => Ok(Value::Boolean(*b)),
        Yaml::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .map(Value::Integer)
            .ok_or_else(|| format!("result {n} is not a 32-bit integer")),
        Yaml::String(s) => Ok(Value::String(s.clone())),
        other => Err(format!("unsupported result {other:?}")),
    }
}

fn error_kind(name: &str) -> Result<ErrorKind, String> {
    Ok(match name {
        "parse" => ErrorKind::Parse,
        "math" => ErrorKind::Math,
        "cast" => ErrorKind::Cast,
        "missingAttribute" => ErrorKind::MissingAttribute,
        "missingFunction" => ErrorKind::MissingFunction,
        "functionEvaluation" => ErrorKind::FunctionEvaluation,
        "generic" => ErrorKind::Generic,
        other => return Err(format!("unknown error kind `{other}`")),
    })
}

/// Runs one case; `Err` says why it failed.
fn run(case: &Case) -> Result<(), String> {
    let expected_error = case.error.as_deref().map(error_kind).transpose()?;
    let parsed = cesql::parse(&case.expression);
    if expected_error == Some(ErrorKind::Parse) {
        return match parsed {
            Err(e) if e.kind() == ErrorKind::Parse => Ok(()),
            Err(e) => Err(format!("expected a parse error, got {e}")),
            Ok(_) => Err("expected a parse error, but the expression parsed".into()),
        };
    }
    let expression = parsed.map_err(|e| format!("unexpected {e}"))?;
    let event = input_event(case)?;
    let (value, errors) = expression.evaluate(&event);
    if let Some(result) = &case.result {
        let want = expected_value(result)?;
        if value != want {
            return Err(format!("expected {want}, got {value} (errors: {errors:?})"));
        }
    }
    match expected_error {
        None if !errors.is_empty() => Err(format!("expected no error, got {errors:?}")),
        Some(kind) if errors.is_empty() => Err(format!("expected a {kind}, got none")),
        Some(kind) if errors.iter().any(|e| e.kind() != kind) => {
            Err(format!("expected only {kind}s, got {errors:?}"))
        }
        _ => {
            let should_match = value == Value::Boolean(true) && errors.is_empty();
            if expression.matches(&event) == should_match {
                Ok(())
            } else {
                Err("matches() disagrees with evaluate()".into())
            }
        }
    }
}

#[test]
fn cesql_conformance_suite() {
    let dir = tck_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "skipped: the CESQL TCK is not at {} ({e}); put the TCK's YAML files there (the \
                 cloudevents/spec repository has them under cesql/cesql_tck) or set CESQL_TCK_DIR",
                dir.display()
            );
            return;
        }
        Err(e) => panic!(
            "the CESQL TCK is missing: cannot read {} ({e}); set CESQL_TCK_DIR to the folder \
             holding the TCK's YAML files",
            dir.display()
        ),
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.extension()
                .is_some_and(|ext| ext == "yaml" || ext == "yml")
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TCK YAML files in {}", dir.display());

    let (mut total, mut failures) = (0, Vec::new());
    for path in &files {
        let file = path.file_name().unwrap_or_default().to_string_lossy();
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let suite: Suite = match serde_yaml::from_str(&text) {
            Ok(suite) => suite,
            Err(e) => {
                failures.push(format!("{file}: cannot be parsed: {e}"));
                continue;
            }
        };
        for case in &suite.tests {
            total += 1;
            if let Err(why) = run(case) {
                failures.push(format!(
                    "{file} / {} / {}: `{}`: {why}",
                    suite.name, case.name, case.expression
                ));
            }
        }
    }
    println!(
        "CESQL TCK: {} of {total} cases passed in {} files",
        total - failures.len(),
        files.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {total} CESQL TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
