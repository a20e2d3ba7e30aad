//! The CloudEvents JSON event format (structured mode), through the CloudEvents SDK's serde
//! implementation of `cloudevents::Event`.
//!
//! The SDK does the attribute work (required members, `time` parsing, extension typing). This
//! module checks the members first so that errors name the attribute at fault, and handles the
//! three places where the SDK would lose information:
//!
//! - `data_base64` with a JSON content type: the SDK turns it into JSON data; here it stays bytes.
//! - `dataschema`: the SDK normalises it through a URL parser (`http://A` becomes `http://a/`);
//!   here the text is kept exactly as it arrived (the SDK still checks that it parses).
//! - `time`: written in jetwatch's canonical form (UTC, `Z`, as many fractional digits as needed).

use std::collections::BTreeMap;

use base64::Engine as _;
use cloudevents::event::{AttributesWriter, EventBuilder, EventBuilderV10, ExtensionValue};
use serde_json::{Map, Value};

use super::error::CodecError;
use super::{media_type, names, types};
use crate::event::{format_timestamp, AttributeValue, Data, Event, SPEC_VERSION};

/// Reads an event in the JSON event format.
pub(crate) fn event_from_json(json: &[u8]) -> Result<Event, CodecError> {
    let mut map: Map<String, Value> =
        serde_json::from_slice(json).map_err(|source| CodecError::Json { source })?;
    check_members(&map)?;
    let data = map.remove("data").filter(|v| !v.is_null());
    let data_base64 = map.remove("data_base64").filter(|v| !v.is_null());
    let dataschema = match map.get("dataschema") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let mut ce: cloudevents::Event =
        serde_json::from_value(Value::Object(map)).map_err(|source| match &dataschema {
            Some(_) => {
                CodecError::invalid("dataschema", format!("must be an absolute URI ({source})"))
            }
            None => CodecError::Json { source },
        })?;

    let mut attributes = BTreeMap::new();
    let content_type = ce.set_datacontenttype(None::<String>);
    if let Some(subject) = ce.set_subject(None::<String>) {
        attributes.insert("subject".to_owned(), AttributeValue::String(subject));
    }
    if let Some(time) = ce.set_time(None::<chrono::DateTime<chrono::Utc>>) {
        attributes.insert("time".to_owned(), AttributeValue::Timestamp(time));
    }
    if let Some(schema) = dataschema {
        attributes.insert("dataschema".to_owned(), AttributeValue::Uri(schema));
    }
    for (name, value) in ce.iter_extensions() {
        let value = match value {
            ExtensionValue::String(s) => AttributeValue::String(s.clone()),
            ExtensionValue::Boolean(b) => AttributeValue::Boolean(*b),
            ExtensionValue::Integer(i) => AttributeValue::Integer(
                i32::try_from(*i).map_err(|_| out_of_range(name, &i.to_string()))?,
            ),
        };
        attributes.insert(name.to_owned(), value);
    }
    let data = read_data(content_type.as_deref(), data, data_base64)?;
    if let Some(content_type) = content_type {
        attributes.insert(
            "datacontenttype".to_owned(),
            AttributeValue::String(content_type),
        );
    }
    Ok(Event {
        id: ce.set_id(String::new()),
        source: ce.set_source(String::new()),
        spec_version: SPEC_VERSION.to_owned(),
        ty: ce.set_type(String::new()),
        attributes,
        data,
    })
}

fn out_of_range(name: &str, number: &str) -> CodecError {
    CodecError::invalid(
        name,
        format!("{number} is not a CloudEvents Integer (a whole number in the 32-bit range)"),
    )
}

/// Checks every member before the SDK sees the object, so that errors name the attribute.
fn check_members(map: &Map<String, Value>) -> Result<(), CodecError> {
    let missing =
        |name: &str| CodecError::missing(name, format!("the JSON event has no `{name}` member"));
    match map.get("specversion") {
        None | Some(Value::Null) => return Err(missing("specversion")),
        Some(Value::String(v)) if v == SPEC_VERSION => {}
        Some(Value::String(v)) => {
            return Err(CodecError::UnsupportedSpecVersion { version: v.clone() })
        }
        Some(_) => return Err(CodecError::invalid("specversion", "must be a JSON string")),
    }
    for name in ["id", "source", "type"] {
        match map.get(name) {
            None | Some(Value::Null) => return Err(missing(name)),
            Some(Value::String(_)) => {}
            Some(_) => return Err(CodecError::invalid(name, "must be a JSON string")),
        }
    }
    for (name, value) in map {
        match name.as_str() {
            "specversion" | "id" | "source" | "type" | "data" | "data_base64" => {}
            _ if value.is_null() => {}
            "datacontenttype" | "subject" | "dataschema" => {
                if !value.is_string() {
                    return Err(CodecError::invalid(name, "must be a JSON string"));
                }
            }
            "time" => match value.as_str() {
                Some(s) if types::parse_timestamp(s).is_some() => {}
                _ => {
                    return Err(CodecError::invalid(
                        "time",
                        "must be an RFC 3339 timestamp string, e.g. `2024-01-02T03:04:05Z`",
                    ))
                }
            },
            _ => {
                names::checked(name)?;
                match value {
                    Value::String(_) | Value::Bool(_) => {}
                    Value::Number(n) => {
                        if n.as_i64().and_then(|i| i32::try_from(i).ok()).is_none() {
                            return Err(out_of_range(name, &n.to_string()));
                        }
                    }
                    _ => {
                        return Err(CodecError::invalid(
                            name,
                            "an extension must be a JSON string, boolean or integer",
                        ))
                    }
                }
            }
        }
    }
    Ok(())
}

/// Reads `data` / `data_base64`. Without a content type, `data` is JSON (the JSON format's rule).
fn read_data(
    content_type: Option<&str>,
    data: Option<Value>,
    data_base64: Option<Value>,
) -> Result<Option<Data>, CodecError> {
    let invalid = |reason: String| CodecError::InvalidData { reason };
    match (data, data_base64) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(
            "the event has both `data` and `data_base64`".into(),
        )),
        (None, Some(Value::String(b64))) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(|bytes| Some(Data::Binary(bytes.into())))
            .map_err(|e| invalid(format!("`data_base64` is not valid base64: {e}"))),
        (None, Some(_)) => Err(invalid("`data_base64` must be a base64 string".into())),
        (Some(value), None) => {
            if content_type.is_none_or(media_type::is_json) {
                return Ok(Some(Data::Text(value.to_string())));
            }
            match value {
                Value::String(text) => Ok(Some(Data::Text(text))),
                _ => Err(invalid(format!(
                    "`data` must be a string when `datacontenttype` (`{}`) is not JSON",
                    content_type.unwrap_or_default()
                ))),
            }
        }
    }
}

/// Writes an event in the JSON event format.
pub(crate) fn event_to_json(event: &Event) -> Result<Value, CodecError> {
    if event.spec_version != SPEC_VERSION {
        return Err(CodecError::UnsupportedSpecVersion {
            version: event.spec_version.clone(),
        });
    }
    let mut ce = EventBuilderV10::new()
        .id(event.id.as_str())
        .source(event.source.as_str())
        .ty(event.ty.as_str())
        .build()
        .map_err(|e| CodecError::invalid("source", e.to_string()))?;
    let mut dataschema = None;
    let mut time = None;
    for (name, value) in &event.attributes {
        names::check_attribute(name, value)?;
        let text = types::canonical(value);
        match (name.as_str(), value) {
            ("datacontenttype", _) => {
                ce.set_datacontenttype(Some(text.into_owned()));
            }
            ("subject", _) => {
                ce.set_subject(Some(text.into_owned()));
            }
            ("dataschema", _) => dataschema = Some(text),
            ("time", AttributeValue::Timestamp(t)) => time = Some(*t),
            ("time", _) => {
                time = Some(types::parse_timestamp(&text).ok_or_else(|| {
                    CodecError::invalid("time", format!("`{text}` is not an RFC 3339 timestamp"))
                })?)
            }
            (_, AttributeValue::Boolean(b)) => ce.set_extension(name, *b),
            (_, AttributeValue::Integer(i)) => ce.set_extension(name, i64::from(*i)),
            _ => ce.set_extension(name, text.into_owned()),
        }
    }
    let data = match &event.data {
        None => None,
        Some(Data::Text(text)) => {
            let json = event.data_content_type().is_none_or(media_type::is_json);
            Some(
                match json
                    .then(|| serde_json::from_str::<Value>(text).ok())
                    .flatten()
                {
                    Some(value) => cloudevents::Data::Json(value),
                    None => cloudevents::Data::String(text.clone()),
                },
            )
        }
        Some(Data::Binary(bytes)) => Some(cloudevents::Data::Binary(bytes.to_vec())),
        Some(Data::Proto { value, .. }) => Some(cloudevents::Data::Binary(value.to_vec())),
    };
    if let Some(data) = data {
        ce.set_data_unchecked(data);
    }
    let mut json = serde_json::to_value(&ce).map_err(|source| CodecError::Json { source })?;
    if let Value::Object(map) = &mut json {
        if let Some(schema) = dataschema {
            map.insert("dataschema".to_owned(), Value::String(schema.into_owned()));
        }
        if let Some(time) = time {
            map.insert("time".to_owned(), Value::String(format_timestamp(&time)));
        }
    }
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Event, CodecError> {
        event_from_json(v.to_string().as_bytes())
    }

    #[test]
    fn reads_attributes_with_their_types() {
        let e = parse(json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "time": "2024-01-02T03:04:05+01:00", "dataschema": "HTTP://Example.com",
            "subject": "w1", "count": 3, "flag": true, "note": "n", "gone": null,
            "datacontenttype": "application/json", "data": {"b": [1, 2], "a": "x"}
        }))
        .unwrap();
        assert_eq!(e.attributes["count"], AttributeValue::Integer(3));
        assert_eq!(e.attributes["flag"], AttributeValue::Boolean(true));
        assert_eq!(
            e.attributes["dataschema"],
            AttributeValue::Uri("HTTP://Example.com".into())
        );
        assert!(matches!(e.attributes["time"], AttributeValue::Timestamp(_)));
        assert!(!e.attributes.contains_key("gone"));
        assert_eq!(e.data, Some(Data::Text(r#"{"a":"x","b":[1,2]}"#.into())));
    }

    #[test]
    fn data_forms_follow_the_json_format() {
        let base = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
        let with = |extra: Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(v).map(|e| e.data)
        };
        assert_eq!(
            with(json!({"data": "hi"})).unwrap(),
            Some(Data::Text("\"hi\"".into()))
        );
        assert_eq!(
            with(json!({"data": "hi", "datacontenttype": "text/plain"})).unwrap(),
            Some(Data::Text("hi".into()))
        );
        assert_eq!(
            with(json!({"data_base64": "aGk=", "datacontenttype": "application/json"})).unwrap(),
            Some(Data::Binary("hi".into()))
        );
        assert!(with(json!({"data": 1, "datacontenttype": "text/plain"})).is_err());
        assert!(with(json!({"data": 1, "data_base64": "aGk="})).is_err());
        assert!(with(json!({"data_base64": "***"})).is_err());
    }

    #[test]
    fn errors_name_the_attribute() {
        let with = |name: &str, value: Value| {
            let mut doc = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "t"});
            doc.as_object_mut().unwrap().insert(name.to_owned(), value);
            doc
        };
        let cases = [
            (
                json!({"id": "1", "source": "/s", "type": "t"}),
                "specversion",
            ),
            (with("specversion", json!("0.3")), "specversion"),
            (
                json!({"specversion": "1.0", "source": "/s", "type": "t"}),
                "id",
            ),
            (with("id", json!(1)), "id"),
            (with("time", json!("x")), "time"),
            (with("big", json!(1e3)), "big"),
            (with("n", json!(1i64 << 40)), "n"),
            (with("obj", json!({})), "obj"),
            (with("dataschema", json!("rel")), "dataschema"),
            (with("Bad", json!("x")), "Bad"),
            (with("data_base64", json!("***")), "data"),
        ];
        for (doc, attribute) in cases {
            let err = parse(doc.clone()).unwrap_err();
            assert_eq!(err.attribute(), Some(attribute), "{doc}: {err}");
        }
        assert!(matches!(
            event_from_json(b"[1]"),
            Err(CodecError::Json { .. })
        ));
    }

    #[test]
    fn writes_what_it_reads() {
        let doc = json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "time": "2024-01-02T02:04:05.500Z", "dataschema": "HTTP://Example.com",
            "count": 3, "flag": false, "note": "n",
            "datacontenttype": "application/json", "data": {"a": [1, 2.5, null]}
        });
        let event = parse(doc.clone()).unwrap();
        assert_eq!(event_to_json(&event).unwrap(), doc);
        let doc = json!({
            "specversion": "1.0", "id": "1", "source": "/s", "type": "t",
            "datacontenttype": "application/json", "data_base64": "AAEC"
        });
        assert_eq!(event_to_json(&parse(doc.clone()).unwrap()).unwrap(), doc);
    }
}
