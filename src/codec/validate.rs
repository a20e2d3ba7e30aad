//! The CloudEvents rules jetwatch enforces before it stores an event.

use super::error::InvalidEvent;
use super::{binary, media_type, names, types};
use crate::event::{format_timestamp, AttributeValue, Data, Event, SPEC_VERSION};

/// Checks an event against CloudEvents 1.0 and the size limit. See [`crate::codec::validate`].
pub(crate) fn validate(event: &Event, max_size: usize) -> Result<(), InvalidEvent> {
    validate_rules(event)?;
    let (size, largest) = binary::encoded_size(event);
    if size > max_size {
        return Err(InvalidEvent::too_large(largest, size, max_size));
    }
    Ok(())
}

/// Every rule of [`validate`] but the size.
pub(crate) fn validate_rules(event: &Event) -> Result<(), InvalidEvent> {
    if event.spec_version != SPEC_VERSION {
        let reason = if event.spec_version.is_empty() {
            "is required (it must be `1.0`)".to_owned()
        } else {
            format!("must be `1.0`, not `{}`", event.spec_version)
        };
        return Err(InvalidEvent::new("specversion", reason));
    }
    for (name, value) in [
        ("id", &event.id),
        ("type", &event.ty),
        ("source", &event.source),
    ] {
        if value.is_empty() {
            return Err(InvalidEvent::new(name, "is required and must not be empty"));
        }
        check_string(name, value)?;
    }
    check_uri_reference(&event.source).map_err(|r| InvalidEvent::new("source", r))?;

    for (name, value) in &event.attributes {
        names::check(name).map_err(|reason| InvalidEvent::new(name.clone(), reason))?;
        let expected = match name.as_str() {
            "time" => Some("Timestamp"),
            "dataschema" => Some("URI"),
            "subject" | "datacontenttype" => Some("String"),
            _ => None,
        };
        if let Some(expected) = expected {
            if value.type_name() != expected {
                return Err(InvalidEvent::new(
                    name.clone(),
                    format!("must be of type {expected}, not {}", value.type_name()),
                ));
            }
        }
        match value {
            AttributeValue::String(s) => check_string(name, s)?,
            AttributeValue::Uri(s) => {
                check_uri(s).map_err(|r| InvalidEvent::new(name.clone(), r))?
            }
            AttributeValue::UriRef(s) => {
                check_uri_reference(s).map_err(|r| InvalidEvent::new(name.clone(), r))?
            }
            AttributeValue::Timestamp(t) if !types::timestamp_in_range(t) => {
                return Err(InvalidEvent::new(
                    name.clone(),
                    format!(
                        "timestamp {} is outside RFC 3339's years 0000 to 9999",
                        format_timestamp(t)
                    ),
                ))
            }
            _ => {}
        }
        if name == "datacontenttype" {
            if let Some(ct) = value.as_str() {
                media_type::check(ct).map_err(|r| InvalidEvent::new(name.clone(), r))?;
            }
        }
    }
    check_data(event)
}

/// What reading requires of a stored event (see [`crate::codec::decode`]): the rules whose
/// breach would hand subscribers text unsafe to print or data they cannot decode. The URI
/// and type leniencies the module docs list for other producers stay.
pub(crate) fn check_readable(event: &Event) -> Result<(), InvalidEvent> {
    for (name, value) in [
        ("id", &event.id),
        ("type", &event.ty),
        ("source", &event.source),
    ] {
        check_string(name, value)?;
    }
    for (name, value) in &event.attributes {
        if let AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s) =
            value
        {
            check_string(name, s)?;
        }
    }
    check_data(event)
}

fn check_data(event: &Event) -> Result<(), InvalidEvent> {
    if let Some(Data::Proto { type_url, value }) = &event.data {
        if type_url.is_empty()
            || type_url
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(InvalidEvent::new(
                "data",
                "a protobuf `Any` needs a type URL without spaces, e.g. \
                 `type.googleapis.com/example.Widget`",
            ));
        }
        // The message type is unknown here, but its encoding must be protobuf wire format:
        // decoding as the empty message walks and skips every field.
        if <() as prost::Message>::decode(&value[..]).is_err() {
            return Err(InvalidEvent::new(
                "data",
                "a protobuf `Any` value must be an encoded protobuf message",
            ));
        }
    }
    Ok(())
}

/// CloudEvents `String`: no control characters (U+0000–U+001F, U+007F–U+009F) and no Unicode
/// noncharacters. (Rust strings cannot hold surrogates, the third forbidden group.)
fn check_string(name: &str, value: &str) -> Result<(), InvalidEvent> {
    // Printable ASCII, nearly every attribute, holds no control character and no
    // noncharacter: one pass over the bytes (read for every stored event, so it matters)
    // instead of decoding characters.
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    let bad = value.chars().find(|&c| {
        let n = u32::from(c);
        c.is_control() || (0xFDD0..=0xFDEF).contains(&n) || (n & 0xFFFE) == 0xFFFE
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(InvalidEvent::new(
            name,
            format!(
                "contains U+{:04X}; CloudEvents strings must not contain control characters or \
                 Unicode noncharacters",
                u32::from(c)
            ),
        )),
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// RFC 3986 `pchar` without `%` (checked separately).
fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@')
}

/// Checks that every byte of one component is allowed by `allowed` or is part of a valid
/// percent escape.
fn check_component(part: &str, what: &str, allowed: impl Fn(u8) -> bool) -> Result<(), String> {
    let bytes = part.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3);
            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                return Err(format!(
                    "must be a URI-reference (RFC 3986): `%` in the {what} must start an escape \
                     like `%20`"
                ));
            }
            i += 3;
        } else if allowed(b) {
            i += 1;
        } else {
            let c = part[i..].chars().next().unwrap_or('?');
            let shown = if c.is_control() || c.is_whitespace() {
                format!("U+{:04X}", u32::from(c))
            } else {
                format!("`{c}`")
            };
            return Err(format!(
                "must be a URI-reference (RFC 3986): {shown} is not allowed in the {what}; \
                 percent-encode it"
            ));
        }
    }
    Ok(())
}

/// Splits off a scheme if the text before the first `:` (and before any `/`, `?`, `#`) is one.
/// Returns an error if such a prefix exists but is not a valid scheme.
fn split_scheme(value: &str) -> Result<(Option<&str>, &str), String> {
    let end = value.find([':', '/', '?', '#']);
    match end {
        Some(i) if value.as_bytes()[i] == b':' => {
            let scheme = &value[..i];
            let mut chars = scheme.bytes();
            let valid = chars.next().is_some_and(|b| b.is_ascii_alphabetic())
                && chars.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if !valid {
                return Err(format!(
                    "must be a URI-reference (RFC 3986): `{scheme}` before `:` is not a valid \
                     scheme (a relative reference cannot have `:` in its first segment)"
                ));
            }
            Ok((Some(scheme), &value[i + 1..]))
        }
        _ => Ok((None, value)),
    }
}

/// RFC 3986 §4.1 URI-reference: scheme (if any), authority, path, query and fragment made of
/// their allowed characters and valid percent escapes.
pub(crate) fn check_uri_reference(value: &str) -> Result<(), String> {
    parse_reference(value).map(|_| ())
}

/// RFC 3986 URI with a scheme (CloudEvents' `URI` type). A fragment is accepted, as the SDKs do.
pub(crate) fn check_uri(value: &str) -> Result<(), String> {
    match parse_reference(value) {
        Ok(true) => Ok(()),
        Ok(false) => Err(format!(
            "must be an absolute URI with a scheme (RFC 3986), e.g. `https://example.com/schema`, \
             not `{value}`"
        )),
        Err(reason) => Err(reason.replace("URI-reference", "URI")),
    }
}

/// Checks a URI-reference and tells whether it has a scheme.
fn parse_reference(value: &str) -> Result<bool, String> {
    let (rest, fragment) = match value.split_once('#') {
        Some((rest, fragment)) => (rest, Some(fragment)),
        None => (value, None),
    };
    if let Some(fragment) = fragment {
        check_component(fragment, "fragment", |b| {
            is_pchar(b) || matches!(b, b'/' | b'?')
        })?;
    }
    let (rest, query) = match rest.split_once('?') {
        Some((rest, query)) => (rest, Some(query)),
        None => (rest, None),
    };
    if let Some(query) = query {
        check_component(query, "query", |b| is_pchar(b) || matches!(b, b'/' | b'?'))?;
    }
    let (scheme, hier) = split_scheme(rest)?;
    let path = match hier.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            check_component(&after[..end], "authority", |b| {
                is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'[' | b']')
            })?;
            &after[end..]
        }
        None => hier,
    };
    check_component(path, "path", |b| is_pchar(b) || b == b'/')?;
    Ok(scheme.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_references() {
        for ok in [
            "/clusters/eu1/widgets",
            "https://example.com:8443/a/b?x=1&y=%20#frag",
            "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
            "mysensor/1",
            "//host/path",
            "http://[::1]/x",
            "a:b",
            "",
            "#only-fragment",
        ] {
            assert_eq!(check_uri_reference(ok), Ok(()), "{ok}");
        }
        for bad in [
            "/with space",
            "/tab\there",
            "/bad%zzescape",
            "/trailing%2",
            "1http://x",
            ":nothing",
            "/a#b#c",
            "/caf\u{e9}",
            "/a\"b",
            "/a[b]",
        ] {
            assert!(check_uri_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn absolute_uris() {
        assert_eq!(check_uri("https://example.com/schema.json#/defs/x"), Ok(()));
        assert_eq!(check_uri("urn:example:schema"), Ok(()));
        assert!(check_uri("/relative/schema").is_err());
        assert!(check_uri("https://exa mple.com")
            .unwrap_err()
            .contains("URI (RFC 3986)"));
    }
}
