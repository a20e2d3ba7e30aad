//! Property tests of the CloudEvents codec and the subject mapping: round trips through NATS
//! and JSON, decoding arbitrary messages without panicking, and an injective, always-valid
//! subject mapping.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use jetwatch::codec::{self, TYPES_HEADER};
use jetwatch::event::{format_timestamp, AttributeValue, Data, Event, SPEC_VERSION};
use jetwatch::subject::{SubjectTemplate, MAX_SUBJECT_LEN};
use proptest::prelude::*;
use serde_json::{Map, Value};

/// Characters that stress the header encoding: quoting and escaping characters, controls,
/// non-ASCII (including four-byte UTF-8), and plain ASCII.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range('a', 'z'),
        2 => prop::sample::select(vec![
            ' ', '"', '%', '\\', '/', '.', ',', '=', ';', ':', '~', '_', '-', '*', '>', '\t', '\r',
            '\n', '\0', '\u{7f}', '\u{85}', '\u{e9}', '\u{20ac}', '\u{1f600}',
        ]),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|cs| cs.into_iter().collect())
}

fn timestamp() -> impl Strategy<Value = DateTime<Utc>> {
    // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, any nanosecond.
    (-62_167_219_200i64..=253_402_300_799i64, 0u32..1_000_000_000)
        .prop_map(|(s, ns)| DateTime::from_timestamp(s, ns).unwrap())
}

fn attribute_value() -> impl Strategy<Value = AttributeValue> {
    prop_oneof![
        any::<bool>().prop_map(AttributeValue::Boolean),
        any::<i32>().prop_map(AttributeValue::Integer),
        tricky_string(12).prop_map(AttributeValue::String),
        prop::collection::vec(any::<u8>(), 0..12).prop_map(|b| AttributeValue::Binary(b.into())),
        tricky_string(12).prop_map(AttributeValue::Uri),
        tricky_string(12).prop_map(AttributeValue::UriRef),
        timestamp().prop_map(AttributeValue::Timestamp),
    ]
}

fn attribute_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,25}",
        prop::sample::select(vec!["subject", "time", "dataschema", "datacontenttype"])
            .prop_map(str::to_owned),
    ]
    .prop_filter("reserved", |n| {
        !matches!(
            n.as_str(),
            "data" | "id" | "source" | "specversion" | "type"
        )
    })
}

fn data() -> impl Strategy<Value = Option<Data>> {
    prop_oneof![
        Just(None),
        prop::collection::vec(any::<u8>(), 0..24).prop_map(|b| Some(Data::Binary(b.into()))),
        tricky_string(24).prop_map(|s| Some(Data::Text(s))),
        Just(Some(Data::Text(r#"{"a":[1,2,{"b":null}]}"#.into()))),
        (tricky_string(16), prop::collection::vec(any::<u8>(), 0..24)).prop_map(|(type_url, v)| {
            // A protobuf message: field 1, length-delimited, holding the bytes.
            let mut value = vec![0x0a, v.len() as u8];
            value.extend(v);
            Some(Data::Proto {
                type_url,
                value: value.into(),
            })
        }),
    ]
}

/// Events as the protobuf format can express them: every attribute type, every data form,
/// arbitrary characters in values.
fn event() -> impl Strategy<Value = Event> {
    let content_type = prop::option::of(prop::sample::select(vec![
        "application/json",
        "text/plain; charset=utf-8",
        "application/octet-stream",
        "application/vnd.example+xml",
    ]));
    (
        tricky_string(10),
        tricky_string(16),
        tricky_string(10),
        prop::collection::btree_map(attribute_name(), attribute_value(), 0..6),
        content_type,
        data(),
    )
        .prop_map(|(id, source, ty, mut attributes, content_type, data)| {
            if let Some(ct) = content_type {
                attributes.insert("datacontenttype".into(), AttributeValue::String(ct.into()));
            }
            Event {
                id,
                source,
                spec_version: SPEC_VERSION.into(),
                ty,
                attributes,
                data,
            }
        })
}

proptest! {
    #[test]
    fn event_to_nats_to_event_is_identity(e in event()) {
        let enc = codec::encode(&e).unwrap();
        for (name, values) in enc.headers.iter() {
            for v in values {
                let v = v.as_str();
                prop_assert!(v.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{name}: {v:?}");
            }
        }
        let back = codec::decode(Some(&enc.headers), enc.payload.clone()).unwrap();
        prop_assert_eq!(back, e);
    }
}

/// A small JSON value whose numbers survive text (integers and binary fractions).
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1000i32..1000).prop_map(|n| Value::from(f64::from(n) / 4.0)),
        tricky_string(8).prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(6), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Documents in the JSON event format, in the canonical form jetwatch writes (UTC `time`).
fn json_event() -> impl Strategy<Value = Value> {
    let content_type = prop::option::of(prop::sample::select(vec![
        "application/json",
        "application/cloudevents-ish+json",
        "text/plain",
        "application/octet-stream",
    ]));
    let extension = prop_oneof![
        tricky_string(8).prop_map(Value::String),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
    ];
    let extensions = prop::collection::btree_map("[a-z0-9]{1,12}", extension, 0..4).prop_filter(
        "reserved",
        |m| {
            !m.keys().any(|k| {
                matches!(
                    k.as_str(),
                    "data"
                        | "id"
                        | "source"
                        | "specversion"
                        | "type"
                        | "subject"
                        | "time"
                        | "dataschema"
                        | "datacontenttype"
                )
            })
        },
    );
    let schema = "(https?://[a-zA-Z]{1,8}(/[A-Za-z0-9._~:-]{0,10}){0,2}|urn:[a-z0-9:]{1,12})";
    (
        (
            tricky_string(8),
            tricky_string(12).prop_filter("source", |s| !s.is_empty()),
        ),
        (tricky_string(8), prop::option::of(tricky_string(8))),
        (prop::option::of(timestamp()), prop::option::of(schema)),
        content_type,
        extensions,
        (
            json_value(),
            tricky_string(12),
            prop::collection::vec(any::<u8>(), 0..16),
            0..4u8,
        ),
    )
        .prop_map(
            |((id, source), (ty, subject), (time, schema), ct, exts, data)| {
                let mut m = Map::new();
                m.insert("specversion".into(), "1.0".into());
                m.insert("id".into(), id.into());
                m.insert("source".into(), source.into());
                m.insert("type".into(), ty.into());
                if let Some(s) = subject {
                    m.insert("subject".into(), s.into());
                }
                if let Some(t) = time {
                    m.insert("time".into(), format_timestamp(&t).into());
                }
                if let Some(s) = schema {
                    m.insert("dataschema".into(), s.into());
                }
                let json_ct = ct.is_none_or(|c: &str| c.ends_with("json"));
                if let Some(c) = ct {
                    m.insert("datacontenttype".into(), c.into());
                }
                m.extend(exts);
                let (value, text, bytes, pick) = data;
                match pick {
                    1 if json_ct && !value.is_null() => drop(m.insert("data".into(), value)),
                    1 | 2 if !json_ct => drop(m.insert("data".into(), text.into())),
                    3 => {
                        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
                        m.insert("data_base64".into(), b64.into());
                    }
                    _ => {}
                }
                Value::Object(m)
            },
        )
}

proptest! {
    #[test]
    fn json_to_nats_to_json_is_identity(doc in json_event()) {
        let e = codec::event_from_json(doc.to_string().as_bytes()).unwrap();
        let enc = codec::encode(&e).unwrap();
        let back = codec::decode(Some(&enc.headers), enc.payload).unwrap();
        prop_assert_eq!(&back, &e);
        prop_assert_eq!(codec::event_to_json(&back).unwrap(), doc);
    }
}

/// Header names near the ones the decoder looks at, and arbitrary ones.
fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[cC][eE]-[a-zA-Z0-9_]{0,6}",
        prop::sample::select(vec![
            "ce-specversion",
            "ce-id",
            "ce-source",
            "ce-type",
            "ce-time",
            "ce-datacontenttype",
            "Content-Type",
            "content-type",
            TYPES_HEADER,
            "Nats-Msg-Id",
        ])
        .prop_map(str::to_owned),
        "[!-9;-~]{1,12}",
    ]
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        tricky_string(16),
        prop::sample::select(vec![
            "1.0",
            "0.3",
            "application/cloudevents+json",
            "application/json",
            "text/plain",
            "2024-01-02T03:04:05Z",
            "x=integer,data=text",
            "data=proto:t%2Fx",
            "data=binary",
            "id=boolean",
            "\"quoted \\\" value\"",
            "%C0%A0",
            "%E2%82%AC",
        ])
        .prop_map(str::to_owned),
    ]
    .prop_map(|v| v.replace(['\r', '\n'], ""))
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..32),
        Just(
            br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AA=="}"#
                .to_vec()
        ),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics_and_what_it_reads_it_can_write(
        pairs in prop::collection::vec((header_name(), header_value()), 0..10),
        no_headers in any::<bool>(),
        required in any::<bool>(),
        body in payload(),
    ) {
        let mut headers = HeaderMap::new();
        if required {
            for (name, value) in [
                ("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-source", "/s"), ("ce-type", "t"),
            ] {
                headers.insert(name, value);
            }
        }
        for (name, value) in &pairs {
            let (Ok(name), Ok(value)) = (name.parse::<HeaderName>(), value.parse::<HeaderValue>())
            else {
                continue;
            };
            headers.append(name, value);
        }
        let headers = (!no_headers).then_some(&headers);
        if let Ok(e) = codec::decode(headers, Bytes::from(body)) {
            let enc = codec::encode(&e).unwrap();
            prop_assert_eq!(codec::decode(Some(&enc.headers), enc.payload).unwrap(), e);
        }
    }
}

/// Attribute values that stress the subject escaping: separators, reserved tokens, wildcards,
/// whitespace, non-ASCII.
fn subject_value() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(vec![
                "/", ".", "_", "-", "~", "~~", ":", "a", "b", "\u{e9}", " ", "*", ">", "%", "~2E",
                "http:", "//",
            ])
            .prop_map(str::to_owned),
            1 => any::<char>().prop_map(String::from),
        ],
        0..8,
    )
    .prop_map(|parts| parts.concat())
}

fn is_valid_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SUBJECT_LEN
        && s.split('.').all(|t| {
            !t.is_empty()
                && !t.contains(['*', '>'])
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
        })
}

fn resource(source: &str, subject: Option<&str>, tenant: Option<&str>) -> Event {
    let mut attributes = BTreeMap::new();
    if let Some(s) = subject {
        attributes.insert("subject".to_owned(), AttributeValue::String(s.to_owned()));
    }
    if let Some(t) = tenant {
        attributes.insert("tenant".to_owned(), AttributeValue::String(t.to_owned()));
    }
    Event {
        id: "1".into(),
        source: source.into(),
        spec_version: SPEC_VERSION.into(),
        ty: "t".into(),
        attributes,
        data: None,
    }
}

proptest! {
    #[test]
    fn subjects_are_valid_and_invertible(
        source in subject_value(),
        subject in prop::option::of(subject_value()),
        tenant in prop::option::of(subject_value()),
    ) {
        let templates = [
            SubjectTemplate::default_for("widgets").unwrap(),
            SubjectTemplate::parse("w.{tenant}.{source}.lit.{subject}.end").unwrap(),
            SubjectTemplate::parse("{subject}.{source}").unwrap(),
        ];
        let e = resource(&source, subject.as_deref(), tenant.as_deref());
        for t in &templates {
            let rendered = t.render(&e).unwrap();
            prop_assert!(is_valid_subject(&rendered), "{rendered}");
            let values = t.values(&rendered).unwrap();
            for (name, value) in values {
                let want = e.attribute(name).map(|a| a.to_canonical_string());
                prop_assert_eq!(value, want, "{} in {}", name, rendered);
            }
        }
    }

    #[test]
    fn distinct_resources_get_distinct_subjects(
        a in (subject_value(), prop::option::of(subject_value())),
        b in (subject_value(), prop::option::of(subject_value())),
    ) {
        let t = SubjectTemplate::default_for("widgets").unwrap();
        let render = |(source, subject): &(String, Option<String>)| {
            t.render_with(|name| match name {
                "source" => Some(Cow::Borrowed(source.as_str())),
                "subject" => subject.as_deref().map(Cow::Borrowed),
                _ => None,
            })
            .unwrap()
        };
        prop_assert_eq!(render(&a) == render(&b), a == b);
    }
}

#[test]
fn tricky_resources_do_not_collide() {
    let t = SubjectTemplate::default_for("widgets").unwrap();
    let pairs: &[(&str, Option<&str>)] = &[
        ("/a/b", Some("c")),
        ("/a", Some("b/c")),
        ("/a/b/c", None),
        ("/a/b", Some("")),
        ("/a/b", None),
        ("/a/b", Some("-")),
        ("/a/b", Some("_")),
        ("/a/b/", Some("c")),
        ("a/b", Some("c")),
        ("/a.b", Some("c")),
        ("/a", Some("b.c")),
        ("", Some("")),
        ("/", Some("")),
        ("//", None),
        ("~~", None),
        ("/~~", None),
        ("a:b", None),
        ("/a:b", None),
        ("/a_", Some("_/c")),
    ];
    let mut seen = BTreeMap::new();
    for (source, subject) in pairs {
        let s = t.render(&resource(source, *subject, None)).unwrap();
        assert!(is_valid_subject(&s), "{s}");
        if let Some(other) = seen.insert(s.clone(), (source, subject)) {
            panic!("{other:?} and {:?} both map to {s}", (source, subject));
        }
    }
}
