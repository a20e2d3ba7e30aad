//! Table-driven tests of the binary mode, the content-mode choice, validation and the dedup key.

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::*;
use crate::event::{AttributeValue, Data, SPEC_VERSION};

fn widget() -> Event {
    let mut e = Event {
        id: "42".into(),
        source: "/clusters/eu1/widgets".into(),
        spec_version: SPEC_VERSION.into(),
        ty: "com.example.widget.modified".into(),
        ..Event::default()
    };
    let time = DateTime::parse_from_rfc3339("2024-01-02T03:04:05.5Z").unwrap();
    e.set("subject", AttributeValue::String("caf\u{e9} w1".into()))
        .set("time", AttributeValue::Timestamp(time.with_timezone(&Utc)))
        .set("generation", AttributeValue::Integer(7))
        .set(
            "datacontenttype",
            AttributeValue::String("application/json".into()),
        );
    e.data = Some(Data::Text(r#"{"spec":{"size":3}}"#.into()));
    e
}

/// Headers from `(name, value)` pairs; repeated names append.
fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in pairs {
        h.append(*name, *value);
    }
    h
}

fn sorted(h: &HeaderMap) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .iter()
        .flat_map(|(k, vs)| {
            vs.iter()
                .map(move |v| (k.to_string(), v.as_str().to_owned()))
        })
        .collect();
    v.sort();
    v
}

#[test]
fn encode_writes_the_documented_headers() {
    let enc = encode(&widget()).unwrap();
    let want = [
        ("Jetwatch-Ce-Types", "generation=integer"),
        ("ce-datacontenttype", "application/json"),
        ("ce-generation", "7"),
        ("ce-id", "42"),
        ("ce-source", "/clusters/eu1/widgets"),
        ("ce-specversion", "1.0"),
        ("ce-subject", "caf%C3%A9%20w1"),
        ("ce-time", "2024-01-02T03:04:05.500Z"),
        ("ce-type", "com.example.widget.modified"),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(sorted(&enc.headers), want);
    assert_eq!(enc.payload, r#"{"spec":{"size":3}}"#);
    assert_eq!(decode(Some(&enc.headers), enc.payload).unwrap(), widget());
}

#[test]
fn every_type_and_data_form_round_trips() {
    let typed = [
        AttributeValue::Boolean(false),
        AttributeValue::Integer(i32::MIN),
        AttributeValue::String(" \"quoted\" 100% \u{1F600}\n".into()),
        AttributeValue::Binary(Bytes::from_static(&[0, 255, 10])),
        AttributeValue::Uri("https://example.com/s?q=%20".into()),
        AttributeValue::UriRef("../x".into()),
        AttributeValue::Timestamp(DateTime::UNIX_EPOCH),
    ];
    let data = [
        None,
        Some(Data::Text(String::new())),
        Some(Data::Binary(Bytes::new())),
        Some(Data::Binary(Bytes::from_static(b"{\"utf8\":true}"))),
        Some(Data::Text("\u{0}text".into())),
        Some(Data::Proto {
            type_url: "type.googleapis.com/a.B".into(),
            value: Bytes::new(),
        }),
        Some(Data::Proto {
            type_url: "t/\u{e9}, =;%".into(),
            value: Bytes::from_static(b"\x08\x01"),
        }),
    ];
    for content_type in [
        None,
        Some("application/json"),
        Some("application/octet-stream"),
    ] {
        for d in &data {
            let mut e = widget();
            e.attributes.remove("datacontenttype");
            if let Some(ct) = content_type {
                e.set("datacontenttype", AttributeValue::String(ct.into()));
            }
            for (i, v) in typed.iter().enumerate() {
                e.set(format!("x{i}"), v.clone());
            }
            e.set("time", AttributeValue::String("not a time".into()));
            e.set("dataschema", AttributeValue::UriRef("rel".into()));
            e.data = d.clone();
            let enc = encode(&e).unwrap();
            assert_eq!(
                decode(Some(&enc.headers), enc.payload).unwrap(),
                e,
                "{content_type:?} {d:?}"
            );
        }
    }
}

#[test]
fn plain_producers_get_the_default_reading() {
    /// Extra headers, payload, expected data, expected attributes.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [u8],
        Option<Data>,
        &'a [(&'a str, AttributeValue)],
    );
    let cases: &[Case] = &[
        (
            &[
                ("ce-datacontenttype", "text/plain; charset=utf-8"),
                ("ce-count", "3"),
            ],
            b"hello",
            Some(Data::Text("hello".into())),
            &[("count", AttributeValue::String("3".into()))],
        ),
        (
            &[
                ("ce-datacontenttype", "application/json"),
                ("ce-dataschema", "https://s/x"),
            ],
            b"\xff\xfe",
            Some(Data::Binary(Bytes::from_static(b"\xff\xfe"))),
            &[("dataschema", AttributeValue::Uri("https://s/x".into()))],
        ),
        (&[], b"", None, &[]),
        (
            &[],
            b"{}",
            Some(Data::Binary(Bytes::from_static(b"{}"))),
            &[],
        ),
        (
            &[("ce-time", "2024-01-02T04:04:05+01:00")],
            b"",
            None,
            &[(
                "time",
                AttributeValue::Timestamp("2024-01-02T03:04:05Z".parse().unwrap()),
            )],
        ),
    ];
    for (extra, payload, data, attrs) in cases {
        let mut pairs = vec![
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ];
        pairs.extend_from_slice(extra);
        let e = decode(Some(&headers(&pairs)), Bytes::copy_from_slice(payload)).unwrap();
        assert_eq!(&e.data, data, "{extra:?}");
        for (name, value) in *attrs {
            assert_eq!(e.attributes.get(*name), Some(value), "{extra:?}");
        }
    }
}

#[test]
fn reading_is_lenient_where_sdks_deviate() {
    // Header-name case, Java's unprefixed content-type, quoted values, raw UTF-8, stray `%`.
    let h = headers(&[
        ("Ce-Specversion", "1.0"),
        ("CE-ID", "\"a \\\"b\\\"\""),
        ("ce-Source", "/caf\u{e9}"),
        ("ce-type", "100%"),
        ("content-type", "text/plain;%20charset=utf-8"),
        ("Nats-Msg-Id", "whatever"),
    ]);
    let e = decode(Some(&h), Bytes::from_static(b"hi")).unwrap();
    assert_eq!(
        (e.id.as_str(), e.source.as_str(), e.ty.as_str()),
        ("a \"b\"", "/caf\u{e9}", "100%")
    );
    assert_eq!(e.data_content_type(), Some("text/plain; charset=utf-8"));
    assert_eq!(e.data, Some(Data::Text("hi".into())));

    // ce-datacontenttype wins over content-type.
    let h = headers(&[
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
        ("ce-datacontenttype", "application/json"),
        ("Content-Type", "text/plain"),
    ]);
    assert_eq!(
        decode(Some(&h), Bytes::new()).unwrap().data_content_type(),
        Some("application/json")
    );

    // Structured mode: with a content type (any case, parameters), or bare JSON with no headers.
    let json = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":{"a":1}}"#;
    for h in [
        Some(headers(&[(
            "Content-Type",
            "Application/CloudEvents+JSON; charset=UTF-8",
        )])),
        Some(headers(&[("content-type", "application/cloudevents")])),
        Some(headers(&[("Nats-Msg-Id", "x")])),
        None,
    ] {
        let e = decode(h.as_ref(), Bytes::from_static(json)).unwrap();
        assert_eq!(e.data, Some(Data::Text(r#"{"a":1}"#.into())), "{h:?}");
    }
}

#[test]
fn reading_is_strict_where_the_spec_is_clear() {
    let base = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    let with = |extra: &[(&str, &str)], drop: &str| {
        let mut pairs: Vec<_> = base.iter().copied().filter(|(k, _)| *k != drop).collect();
        pairs.extend_from_slice(extra);
        headers(&pairs)
    };
    let cases: Vec<(HeaderMap, &[u8], Option<&str>)> = vec![
        (with(&[], "ce-specversion"), b"", Some("specversion")),
        (
            with(&[], "ce-specversion"),
            b"{\"id\":1}",
            Some("specversion"),
        ),
        (with(&[], "ce-id"), b"", Some("id")),
        (with(&[], "ce-source"), b"", Some("source")),
        (with(&[], "ce-type"), b"", Some("type")),
        (
            with(&[("ce-specversion", "0.3")], "ce-specversion"),
            b"",
            Some("specversion"),
        ),
        (with(&[("Ce-Id", "2")], ""), b"", Some("id")),
        (with(&[("ce-x", "1"), ("Ce-X", "2")], ""), b"", Some("x")),
        (with(&[("ce-x", "1"), ("ce-x", "2")], ""), b"", Some("x")),
        (with(&[("ce-data", "1")], ""), b"", Some("data")),
        (with(&[("ce-foo_bar", "1")], ""), b"", Some("foo_bar")),
        (with(&[("ce-", "1")], ""), b"", Some("")),
        (with(&[("ce-x", "%C0%A0")], ""), b"", Some("x")),
        (with(&[("ce-x", "\"open")], ""), b"", Some("x")),
        (with(&[("ce-time", "yesterday")], ""), b"", Some("time")),
        (
            with(&[("ce-n", "x"), ("Jetwatch-Ce-Types", "n=integer")], ""),
            b"",
            Some("n"),
        ),
        (with(&[("Jetwatch-Ce-Types", "n=integer")], ""), b"", None),
        (with(&[("Jetwatch-Ce-Types", "id=integer")], ""), b"", None),
        (
            with(&[("Jetwatch-Ce-Types", "data=text")], ""),
            b"\xff",
            Some("data"),
        ),
        (
            headers(&[("content-type", "application/cloudevents+protobuf")]),
            b"",
            None,
        ),
        (headers(&[]), b"not json", Some("specversion")),
    ];
    for (h, payload, attribute) in cases {
        let err = decode(Some(&h), Bytes::from_static(payload)).unwrap_err();
        assert_eq!(err.attribute(), attribute, "{h:?}: {err}");
    }
    assert_eq!(
        decode(None, Bytes::new()).unwrap_err().attribute(),
        Some("specversion")
    );
}

#[test]
fn encode_refuses_what_it_cannot_write_faithfully() {
    let mut e = widget();
    e.set("Bad", AttributeValue::Boolean(true));
    assert_eq!(encode(&e).unwrap_err().attribute(), Some("Bad"));
    let mut e = widget();
    e.set("id", AttributeValue::String("x".into()));
    assert_eq!(encode(&e).unwrap_err().attribute(), Some("id"));
    let mut e = widget();
    let far = DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .unwrap()
        .with_timezone(&Utc)
        + chrono::Duration::days(1);
    e.set("when", AttributeValue::Timestamp(far));
    assert_eq!(encode(&e).unwrap_err().attribute(), Some("when"));
}

#[test]
fn validation_names_the_attribute_and_the_rule() {
    type Mutation = fn(&mut Event);
    let cases: &[(Mutation, &str, &str)] = &[
        (|e| e.id.clear(), "id", "is required"),
        (|e| e.ty.clear(), "type", "is required"),
        (|e| e.source.clear(), "source", "is required"),
        (
            |e| e.spec_version = "0.3".into(),
            "specversion",
            "must be `1.0`",
        ),
        (|e| e.spec_version.clear(), "specversion", "is required"),
        (
            |e| e.source = "/with space".into(),
            "source",
            "URI-reference",
        ),
        (|e| e.source = "/bad%zz".into(), "source", "escape"),
        (|e| e.id = "a\u{7}b".into(), "id", "control characters"),
        (|e| e.id = "a\u{7f}".into(), "id", "control characters"),
        (|e| e.ty = "caf\u{e9}\u{85}".into(), "type", "U+0085"),
        (|e| e.id = "\u{fdd0}".into(), "id", "noncharacters"),
        (
            |e| {
                e.set("Upper", AttributeValue::Boolean(true));
            },
            "Upper",
            "lower-case",
        ),
        (
            |e| {
                e.set("", AttributeValue::Boolean(true));
            },
            "",
            "empty",
        ),
        (
            |e| {
                e.set("data", AttributeValue::Boolean(true));
            },
            "data",
            "reserved",
        ),
        (
            |e| {
                e.set("type", AttributeValue::String("t".into()));
            },
            "type",
            "required",
        ),
        (
            |e| {
                e.set("time", AttributeValue::String("x".into()));
            },
            "time",
            "Timestamp",
        ),
        (
            |e| {
                e.set("dataschema", AttributeValue::Uri("/rel".into()));
            },
            "dataschema",
            "absolute",
        ),
        (
            |e| {
                e.set("dataschema", AttributeValue::String("https://x".into()));
            },
            "dataschema",
            "type URI",
        ),
        (
            |e| {
                e.set("subject", AttributeValue::Integer(1));
            },
            "subject",
            "type String",
        ),
        (
            |e| {
                e.set("datacontenttype", AttributeValue::String("json".into()));
            },
            "datacontenttype",
            "RFC 2046",
        ),
        (
            |e| {
                e.set("link", AttributeValue::UriRef("a b".into()));
            },
            "link",
            "URI-reference",
        ),
        (
            |e| {
                e.set("note", AttributeValue::String("\u{85}".into()));
            },
            "note",
            "U+0085",
        ),
        (
            |e| {
                e.set("note", AttributeValue::String("\u{FFFF}".into()));
            },
            "note",
            "nonchar",
        ),
        (
            |e| {
                e.data = Some(Data::Proto {
                    type_url: String::new(),
                    value: Bytes::new(),
                })
            },
            "data",
            "type URL",
        ),
    ];
    for (mutate, attribute, rule) in cases {
        let mut e = widget();
        mutate(&mut e);
        let err = validate(&e, 1 << 20).unwrap_err();
        assert_eq!(err.attribute, *attribute, "{err}");
        assert!(err.to_string().contains(rule), "{err} lacks {rule:?}");
        assert!(!err.is_too_large());
        assert!(err
            .to_string()
            .starts_with(&format!("attribute `{attribute}`: ")));
    }
    let mut long_name = widget();
    long_name.set(
        "averyveryverylongextensionname",
        AttributeValue::Boolean(true),
    );
    assert_eq!(validate(&long_name, 1 << 20), Ok(()));
    assert_eq!(validate(&widget(), 1 << 20), Ok(()));
}

#[test]
fn size_limit_is_a_distinct_refusal_measured_on_the_wire_form() {
    let mut events = vec![widget()];
    let mut big = widget();
    big.set("blob", AttributeValue::Binary(Bytes::from(vec![7; 1000])));
    big.set("note", AttributeValue::String("\u{e9} ".repeat(100)));
    big.set("flag", AttributeValue::Boolean(true));
    big.data = Some(Data::Proto {
        type_url: "t/x".into(),
        value: Bytes::from(b"\x08\x01".repeat(5)),
    });
    events.push(big);
    for e in &events {
        let enc = encode(e).unwrap();
        let header_bytes: usize = "NATS/1.0\r\n\r\n".len()
            + enc
                .headers
                .iter()
                .map(|(k, vs)| {
                    vs.iter()
                        .map(|v| k.to_string().len() + 4 + v.as_str().len())
                        .sum::<usize>()
                })
                .sum::<usize>();
        let size = header_bytes + enc.payload.len();
        assert_eq!(validate(e, size), Ok(()));
        let err = validate(e, size - 1).unwrap_err();
        assert!(err.is_too_large(), "{err}");
        assert_eq!(
            err.too_large,
            Some(TooLarge {
                size,
                limit: size - 1
            })
        );
    }
    let err = validate(&events[1], 10).unwrap_err();
    assert_eq!(err.attribute, "blob", "{err}");
}

#[test]
fn dedup_keys_are_injective_hex() {
    let a = dedup_key("/a/b", "c");
    assert_eq!(a.len(), 64);
    assert!(a
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_ne!(a, dedup_key("/a", "bc"));
    assert_ne!(a, dedup_key("/a/bc", ""));
    assert_eq!(a, dedup_key("/a/b", "c"));
}
