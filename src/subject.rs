//! Subject mapping: the NATS subject an event is stored on, from a configurable template over
//! its attributes.
//!
//! **Boundary: pure.** No I/O; this module knows NATS subject syntax and CloudEvents attribute
//! names, nothing else.
//!
//! # Templates
//!
//! A template is a NATS subject whose tokens are either literals or one placeholder each:
//! `{source}`, `{subject}`, `{type}`, `{id}`, `{specversion}` or any optional attribute or
//! extension, e.g. `{tenant}`. The default is `<stream-prefix>.{source}.{subject}`: each
//! resource (`source` + `subject`) gets its own subject, so JetStream's last-per-subject
//! delivery yields the current state of every resource. Literals are fixed NATS tokens (no
//! wildcards, whitespace or braces); a placeholder cannot share a token with literal text.
//!
//! # Escaping
//!
//! A value becomes one or more tokens. The mapping is **injective** (distinct values, and
//! distinct combinations of values for a template, give distinct subjects), accepts any value
//! (unicode, spaces, dots, `*`, `>`, empty), and never yields an empty token, a wildcard or
//! whitespace. [`SubjectTemplate::values`] inverts it.
//!
//! 1. The value is split at `/` into segments; each segment becomes one token, so paths read
//!    as paths and NATS wildcards select subtrees (`widgets.clusters.eu1.>`).
//! 2. In a segment, ASCII letters, digits and `-` `_` `:` `@` `+` `=` `,` `%` are kept; every
//!    other byte (of the UTF-8 encoding) becomes `~XX`, upper-case hex: `.` is `~2E`, space
//!    `~20`, `*` `~2A`, `>` `~3E`, `~` itself `~7E`, `é` `~C3~A9`.
//! 3. Reserved whole tokens, which no segment produces: `~` is an empty segment, `_` ends a
//!    value that is followed by more tokens, `-` is an attribute the event does not have, and
//!    `~~` starts a `source` that is neither a path nor has a scheme. Segments that would read
//!    as one are escaped: a segment `_` is `~5F`, `-` is `~2D`.
//! 4. `{source}` is a URI-reference and most sources are absolute paths, so its leading `/` is
//!    implied: `/a/b` gives `a.b`. A source with a scheme keeps it as its first token
//!    (`https:`, `urn:uuid:…`), which is the only first token that holds a raw `:` (in a path
//!    source a `:` in the first segment is written `~3A`). Any other source (`mysensor/1`, the
//!    empty string) starts with `~~`.
//! 5. Other attributes are written from their first segment: `w1` is `w1`, `/w1` is `~.w1`.
//!    Typed attributes use their canonical string (`2024-01-02T03:04:05Z`, `42`, base64).
//!
//! With the default template and prefix `widgets`, an operator sees:
//!
//! | source | subject | NATS subject |
//! |---|---|---|
//! | `/clusters/eu1/widgets` | `w1` | `widgets.clusters.eu1.widgets._.w1` |
//! | `/clusters/eu1/widgets` | `default/w1` | `widgets.clusters.eu1.widgets._.default.w1` |
//! | `/a/b` | `c` | `widgets.a.b._.c` |
//! | `/a` | `b/c` | `widgets.a._.b.c` |
//! | `https://example.com/w` | `x.json` | `widgets.https:.~.example~2Ecom.w._.x~2Ejson` |
//! | `urn:uuid:123` | (none) | `widgets.urn:uuid:123._.-` |
//! | `mysensor/1` | `héllo wörld` | `widgets.~~.mysensor.1._.h~C3~A9llo~20w~C3~B6rld` |
//! | `/` | `` (empty) | `widgets.~._.~` |
//!
//! Subscribing to `widgets.clusters.eu1.widgets._.*` watches every resource of that source
//! with a one-segment subject; `widgets.clusters.eu1.>` everything under that source path.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use crate::event::{AttributeRef, Event};

/// The longest subject [`SubjectTemplate::render`] produces, in bytes. NATS refuses protocol
/// lines longer than the server's `max_control_line` (4 KiB by default), and a publish line
/// also holds the reply subject and sizes.
pub const MAX_SUBJECT_LEN: usize = 3072;

/// The token for an attribute the event does not have.
const MISSING: &str = "-";
/// The token that ends a value followed by more tokens.
const END: &str = "_";
/// The token for an empty segment.
const EMPTY: &str = "~";
/// The first token of a `source` that is neither an absolute path nor has a scheme.
const RELATIVE: &str = "~~";

/// Errors from parsing a template, rendering a subject or reading one back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The template is not a valid subject template.
    #[error("invalid subject template `{template}`: {reason}")]
    InvalidTemplate {
        /// The template as given.
        template: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The rendered subject is longer than [`MAX_SUBJECT_LEN`].
    #[error(
        "the event's subject would be {len} bytes, over the limit of {max}; shorten the \
         attributes the subject template uses"
    )]
    TooLong {
        /// The rendered length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A subject that this template could not have rendered.
    #[error("subject `{subject}` does not match the template: {reason}")]
    NoMatch {
        /// The subject given.
        subject: String,
        /// Why it does not match.
        reason: String,
    },
}

/// One token of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// A fixed token.
    Literal(String),
    /// An attribute's value, by attribute name.
    Attribute(String),
}

/// A parsed subject template: literal tokens and attribute placeholders. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    /// The template text, for display and configuration round trips.
    text: String,
    /// Its tokens, in order.
    parts: Vec<Part>,
}

impl SubjectTemplate {
    /// Parses a template such as `widgets.{source}.{subject}`.
    pub fn parse(template: &str) -> Result<SubjectTemplate, SubjectError> {
        let invalid = |reason: String| SubjectError::InvalidTemplate {
            template: template.to_owned(),
            reason,
        };
        if template.is_empty() {
            return Err(invalid("it is empty".into()));
        }
        let mut parts = Vec::new();
        for (i, token) in template.split('.').enumerate() {
            if token.is_empty() {
                return Err(invalid(format!(
                    "token {} is empty (check the dots)",
                    i + 1
                )));
            }
            if let Some(inner) = token.strip_prefix('{') {
                let Some(name) = inner.strip_suffix('}') else {
                    return Err(invalid(format!(
                        "`{token}` is not a placeholder like `{{type}}`"
                    )));
                };
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                {
                    return Err(invalid(format!(
                        "`{token}`: an attribute name is lower-case a-z and 0-9"
                    )));
                }
                parts.push(Part::Attribute(name.to_owned()));
                continue;
            }
            if let Some(c) = token
                .chars()
                .find(|&c| c.is_whitespace() || c.is_control() || "{}*>".contains(c))
            {
                return Err(invalid(format!(
                    "literal `{token}` contains {c:?}; literals cannot hold wildcards, braces or \
                     whitespace, and a placeholder must be a whole token"
                )));
            }
            if i == 0 && token.starts_with('$') {
                return Err(invalid(
                    "subjects starting with `$` are reserved by NATS".into(),
                ));
            }
            parts.push(Part::Literal(token.to_owned()));
        }
        Ok(SubjectTemplate {
            text: template.to_owned(),
            parts,
        })
    }

    /// The default template for a stream prefix: `<prefix>.{source}.{subject}`.
    pub fn default_for(prefix: &str) -> Result<SubjectTemplate, SubjectError> {
        SubjectTemplate::parse(&format!("{prefix}.{{source}}.{{subject}}"))
    }

    /// The template text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The attribute names the template uses, in order.
    pub fn attributes(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Attribute(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The NATS subject filter matching every subject the template renders: the literal tokens
    /// before the first placeholder followed by `>` (`widgets.>`), the template itself when it
    /// has no placeholder, or `>` when it starts with one. What a stream's `subjects` needs.
    pub fn wildcard_prefix(&self) -> String {
        let mut out = String::new();
        for part in &self.parts {
            if !out.is_empty() {
                out.push('.');
            }
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Attribute(_) => {
                    out.push('>');
                    return out;
                }
            }
        }
        out
    }

    /// The subject for an event. Never panics; fails only when the subject would exceed
    /// [`MAX_SUBJECT_LEN`].
    pub fn render(&self, event: &Event) -> Result<String, SubjectError> {
        self.render_with(|name| match event.attribute(name)? {
            AttributeRef::String(s) => Some(Cow::Borrowed(s)),
            AttributeRef::Typed(v) => Some(match v.as_str() {
                Some(s) => Cow::Borrowed(s),
                None => Cow::Owned(v.to_canonical_string()),
            }),
        })
    }

    /// The subject for attribute values given by `lookup` (`None`: the attribute is not set),
    /// e.g. to compute a resource's subject from its `source` and `subject` alone.
    pub fn render_with<'a>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<Cow<'a, str>>,
    ) -> Result<String, SubjectError> {
        let mut out = String::with_capacity(64);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Attribute(name) => {
                    match lookup(name) {
                        None => out.push_str(MISSING),
                        Some(value) => push_value(name, &value, &mut out),
                    }
                    if i + 1 < self.parts.len() {
                        out.push('.');
                        out.push_str(END);
                    }
                }
            }
        }
        if out.len() > MAX_SUBJECT_LEN {
            return Err(SubjectError::TooLong {
                len: out.len(),
                max: MAX_SUBJECT_LEN,
            });
        }
        Ok(out)
    }

    /// Reads a subject back into the attribute values it was rendered from, in template order
    /// (`None` for an attribute the event did not have). The inverse of [`render`]: a subject
    /// the template cannot have produced is refused.
    ///
    /// [`render`]: SubjectTemplate::render
    pub fn values(&self, subject: &str) -> Result<Vec<(&str, Option<String>)>, SubjectError> {
        let no_match = |reason: String| SubjectError::NoMatch {
            subject: subject.to_owned(),
            reason,
        };
        let tokens: Vec<&str> = subject.split('.').collect();
        let mut at = 0;
        let mut values = Vec::new();
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(l) => {
                    if tokens.get(at) != Some(&l.as_str()) {
                        return Err(no_match(format!("expected `{l}` at token {}", at + 1)));
                    }
                    at += 1;
                }
                Part::Attribute(name) => {
                    let last = i + 1 == self.parts.len();
                    let end = if last {
                        tokens.len()
                    } else {
                        match tokens[at..].iter().position(|t| *t == END) {
                            Some(n) => at + n,
                            None => return Err(no_match(format!("no `_` after `{{{name}}}`"))),
                        }
                    };
                    let group = &tokens[at.min(end)..end];
                    let value = match group {
                        [] => return Err(no_match(format!("`{{{name}}}` has no token"))),
                        [MISSING] => None,
                        _ => Some(read_value(name, group).ok_or_else(|| {
                            no_match(format!("`{{{name}}}` is not a valid escaped value"))
                        })?),
                    };
                    values.push((name.as_str(), value));
                    at = if last { end } else { end + 1 };
                }
            }
        }
        if at != tokens.len() {
            return Err(no_match("it has more tokens than the template".into()));
        }
        Ok(values)
    }
}

impl fmt::Display for SubjectTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SubjectTemplate {
    type Err = SubjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SubjectTemplate::parse(s)
    }
}

impl TryFrom<String> for SubjectTemplate {
    type Error = SubjectError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        SubjectTemplate::parse(&s)
    }
}

impl serde::Serialize for SubjectTemplate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SubjectTemplate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        SubjectTemplate::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Whether a byte is written as itself in a token.
fn is_verbatim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'@' | b'+' | b'=' | b',' | b'%')
}

fn push_escaped(b: u8, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('~');
    out.push(char::from(HEX[usize::from(b >> 4)]));
    out.push(char::from(HEX[usize::from(b & 0xf)]));
}

/// Writes one path segment as one token (rules 2 and 3 of the module docs): never empty, never
/// a wildcard, never whitespace, never a reserved token.
pub fn escape_token(segment: &str, out: &mut String) {
    escape_segment(segment, false, out);
}

fn escape_segment(segment: &str, escape_colon: bool, out: &mut String) {
    match segment {
        "" => out.push_str(EMPTY),
        "_" | "-" => push_escaped(segment.as_bytes()[0], out),
        _ => {
            for b in segment.bytes() {
                if is_verbatim(b) && !(escape_colon && b == b':') {
                    out.push(char::from(b));
                } else {
                    push_escaped(b, out);
                }
            }
        }
    }
}

/// Reads one token written by [`escape_token`] back into its segment; `None` if no segment
/// produces this token.
pub fn unescape_token(token: &str) -> Option<String> {
    let segment = decode_token(token)?;
    // Only the canonical spelling is accepted, so that the mapping stays one-to-one.
    let mut again = String::with_capacity(token.len());
    escape_token(&segment, &mut again);
    (again == token).then_some(segment)
}

/// Decodes a token's escapes without checking that it is the canonical spelling.
fn decode_token(token: &str) -> Option<String> {
    if token == EMPTY {
        return Some(String::new());
    }
    if matches!(token, "" | MISSING | END | RELATIVE) {
        return None;
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' {
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |h: u8| match h {
                b'0'..=b'9' => Some(h - b'0'),
                b'A'..=b'F' => Some(h - b'A' + 10),
                _ => None,
            };
            out.push((digit(hex[0])? << 4) | digit(hex[1])?);
            i += 3;
        } else if is_verbatim(bytes[i]) {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

/// Writes an attribute's value as tokens (rules 1, 4 and 5 of the module docs).
fn push_value(attribute: &str, value: &str, out: &mut String) {
    if attribute != "source" {
        push_path(value, false, out);
    } else if let Some(path) = value.strip_prefix('/') {
        push_path(path, true, out);
    } else if value
        .split('/')
        .next()
        .is_some_and(|first| first.contains(':'))
    {
        push_path(value, false, out);
    } else {
        out.push_str(RELATIVE);
        out.push('.');
        push_path(value, false, out);
    }
}

/// Writes a `/`-separated path as tokens; `escape_first_colon` escapes `:` in the first one.
fn push_path(path: &str, escape_first_colon: bool, out: &mut String) {
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        escape_segment(segment, escape_first_colon && i == 0, out);
    }
}

/// Reads the tokens of one value back (the inverse of [`push_value`]).
fn read_value(attribute: &str, tokens: &[&str]) -> Option<String> {
    let value = if attribute == "source" {
        match tokens {
            [RELATIVE, rest @ ..] if !rest.is_empty() => read_path(rest)?,
            [first, ..] if first.contains(':') => read_path(tokens)?,
            _ => format!("/{}", read_path(tokens)?),
        }
    } else {
        read_path(tokens)?
    };
    let mut again = String::new();
    push_value(attribute, &value, &mut again);
    (again == tokens.join(".")).then_some(value)
}

fn read_path(tokens: &[&str]) -> Option<String> {
    let mut out = String::new();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(&decode_token(token)?);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{AttributeValue, SPEC_VERSION};

    fn event(source: &str, subject: Option<&str>) -> Event {
        let mut e = Event {
            id: "1".into(),
            source: source.into(),
            spec_version: SPEC_VERSION.into(),
            ty: "com.example.widget.modified".into(),
            ..Event::default()
        };
        if let Some(s) = subject {
            e.set("subject", AttributeValue::String(s.into()));
        }
        e
    }

    #[test]
    fn renders_the_documented_examples() {
        let t = SubjectTemplate::default_for("widgets").unwrap();
        let cases = [
            (
                "/clusters/eu1/widgets",
                Some("w1"),
                "widgets.clusters.eu1.widgets._.w1",
            ),
            (
                "/clusters/eu1/widgets",
                Some("default/w1"),
                "widgets.clusters.eu1.widgets._.default.w1",
            ),
            ("/a/b", Some("c"), "widgets.a.b._.c"),
            ("/a", Some("b/c"), "widgets.a._.b.c"),
            (
                "https://example.com/w",
                Some("x.json"),
                "widgets.https:.~.example~2Ecom.w._.x~2Ejson",
            ),
            ("urn:uuid:123", None, "widgets.urn:uuid:123._.-"),
            (
                "mysensor/1",
                Some("h\u{e9}llo w\u{f6}rld"),
                "widgets.~~.mysensor.1._.h~C3~A9llo~20w~C3~B6rld",
            ),
            ("/", Some(""), "widgets.~._.~"),
            ("/a:b", Some("-"), "widgets.a~3Ab._.~2D"),
            ("", Some("_"), "widgets.~~.~._.~5F"),
            ("/*", Some(">"), "widgets.~2A._.~3E"),
        ];
        for (source, subject, want) in cases {
            let e = event(source, subject);
            let got = t.render(&e).unwrap();
            assert_eq!(got, want, "{source:?} {subject:?}");
            let values = t.values(&got).unwrap();
            assert_eq!(
                values,
                vec![
                    ("source", Some(source.to_owned())),
                    ("subject", subject.map(str::to_owned))
                ]
            );
        }
    }

    #[test]
    fn templates_parse_and_explain_mistakes() {
        let t = SubjectTemplate::parse("acme.widgets.{type}.{tenant}.{id}").unwrap();
        assert_eq!(t.wildcard_prefix(), "acme.widgets.>");
        assert_eq!(t.attributes().collect::<Vec<_>>(), ["type", "tenant", "id"]);
        assert_eq!(
            SubjectTemplate::parse("{source}")
                .unwrap()
                .wildcard_prefix(),
            ">"
        );
        assert_eq!(
            SubjectTemplate::parse("all.events")
                .unwrap()
                .wildcard_prefix(),
            "all.events"
        );
        for bad in [
            "",
            "a..b",
            "a.*",
            "a.>",
            "a.x{type}",
            "a.{Type}",
            "a.{}",
            "a b",
            "$JS.{id}",
        ] {
            assert!(SubjectTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn typed_and_missing_attributes() {
        let t = SubjectTemplate::parse("e.{count}.{time}.{nope}").unwrap();
        let mut e = event("/s", None);
        e.set("count", AttributeValue::Integer(-3));
        e.set(
            "time",
            AttributeValue::Timestamp(chrono::DateTime::UNIX_EPOCH),
        );
        assert_eq!(t.render(&e).unwrap(), "e.-3._.1970-01-01T00:00:00Z._.-");
    }

    #[test]
    fn refuses_long_subjects_and_foreign_subjects() {
        let t = SubjectTemplate::default_for("w").unwrap();
        let e = event(&"/\u{e9}".repeat(600), None);
        assert!(matches!(t.render(&e), Err(SubjectError::TooLong { .. })));
        for foreign in [
            "x.a._.b",
            "w.a.b",
            "w.a._.~7",
            "w.a._.b~2e",
            "w._.b",
            "w.a._.-.~",
            "w.~~._.b",
        ] {
            assert!(t.values(foreign).is_err(), "{foreign}");
        }
    }

    #[test]
    fn tokens_round_trip() {
        for s in [
            "",
            "_",
            "-",
            "~",
            "~~",
            "a.b",
            "x y",
            "*",
            ">",
            "\u{1F600}",
            "a:b",
        ] {
            let mut t = String::new();
            escape_token(s, &mut t);
            assert_eq!(unescape_token(&t).as_deref(), Some(s), "{s:?} -> {t}");
        }
    }
}
