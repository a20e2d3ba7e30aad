//! Attribute lookup and canonical-string comparison that allocate nothing per event.
//!
//! Filters name attributes once, when they are compiled; [`AttrName`] resolves the four required
//! attributes to their fields then, so the delivery path reads them directly. [`Canonical`] gives
//! an attribute's canonical string form (CloudEvents §"Type System") without a heap allocation:
//! string-like values are borrowed, integers and timestamps are formatted into a stack buffer,
//! and binary values are compared against base64 text chunk by chunk.

use std::fmt::{self, Write as _};

use base64::Engine as _;
use chrono::{DateTime, Datelike as _, Timelike as _, Utc};

use crate::event::{format_timestamp, AttributeRef, AttributeValue, Event};

/// Where an attribute lives in an [`Event`]: one of the required fields, or the attribute map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Id,
    Source,
    SpecVersion,
    Type,
    Other,
}

/// An attribute name resolved at compile time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttrName {
    /// The name as the CloudEvents spec writes it (lower case).
    name: Box<str>,
    /// Where to find it, so that required attributes skip the name comparison per event.
    slot: Slot,
}

impl AttrName {
    /// Resolves `name` (already lower case where the caller requires it).
    pub(crate) fn new(name: &str) -> Self {
        let slot = match name {
            "id" => Slot::Id,
            "source" => Slot::Source,
            "specversion" => Slot::SpecVersion,
            "type" => Slot::Type,
            _ => Slot::Other,
        };
        AttrName {
            name: name.into(),
            slot,
        }
    }

    /// The attribute's value in `event`, if the event has it.
    #[inline]
    pub(crate) fn lookup<'e>(&self, event: &'e Event) -> Option<AttributeRef<'e>> {
        match self.slot {
            Slot::Id => Some(AttributeRef::String(&event.id)),
            Slot::Source => Some(AttributeRef::String(&event.source)),
            Slot::SpecVersion => Some(AttributeRef::String(&event.spec_version)),
            Slot::Type => Some(AttributeRef::String(&event.ty)),
            Slot::Other => event.attribute(&self.name),
        }
    }
}

/// Whether `name` follows the CloudEvents attribute naming rules: ASCII lower-case letters and
/// digits only, at least one character.
pub(crate) fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A small string buffer on the stack; writing past its capacity fails instead of allocating.
#[derive(Clone, Copy)]
pub(crate) struct StackStr<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> StackStr<N> {
    /// An empty buffer.
    pub(crate) fn new() -> Self {
        StackStr {
            buf: [0; N],
            len: 0,
        }
    }

    /// The text written so far.
    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever copied in, so the bytes are always valid UTF-8.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl<const N: usize> fmt::Write for StackStr<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > N {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl<const N: usize> fmt::Debug for StackStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Room for any `i32` and any RFC 3339 timestamp with a four-digit year and nanoseconds.
pub(crate) const SMALL: usize = 40;

/// Formats an integer in base 10 without allocating.
pub(crate) fn format_i32(i: i32) -> StackStr<SMALL> {
    let mut digits = [0u8; 11];
    let mut at = digits.len();
    let mut n = i.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        digits[at] = b'-';
    }
    let mut s = StackStr::new();
    let len = digits.len() - at;
    s.buf[..len].copy_from_slice(&digits[at..]);
    s.len = len;
    s
}

/// An attribute's canonical string form, borrowed or on the stack.
#[derive(Debug)]
pub(crate) enum Canonical<'a> {
    /// String, URI, URI-reference and Boolean values.
    Str(&'a str),
    /// Integers and timestamps, formatted on the stack.
    Small(StackStr<SMALL>),
    /// Binary values: their canonical form is base64, compared chunk by chunk.
    Binary(&'a [u8]),
    /// Timestamps whose year has more than four digits (never seen in practice).
    Owned(String),
}

impl<'a> Canonical<'a> {
    /// The canonical form of `attr`.
    pub(crate) fn of(attr: AttributeRef<'a>) -> Self {
        match attr {
            AttributeRef::String(s) => Canonical::Str(s),
            AttributeRef::Typed(v) => match v {
                AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s) => {
                    Canonical::Str(s)
                }
                AttributeValue::Boolean(b) => Canonical::Str(bool_str(*b)),
                AttributeValue::Integer(i) => Canonical::Small(format_i32(*i)),
                AttributeValue::Binary(b) => Canonical::Binary(b),
                AttributeValue::Timestamp(t) => match format_timestamp_small(t) {
                    Some(s) => Canonical::Small(s),
                    None => Canonical::Owned(format_timestamp(t)),
                },
            },
        }
    }

    /// The text, unless the value is binary.
    fn text(&self) -> Option<&str> {
        match self {
            Canonical::Str(s) => Some(s),
            Canonical::Small(s) => Some(s.as_str()),
            Canonical::Owned(s) => Some(s),
            Canonical::Binary(_) => None,
        }
    }

    /// Whether the canonical form equals `value`.
    pub(crate) fn equals(&self, value: &str) -> bool {
        match (self.text(), self) {
            (Some(t), _) => t == value,
            (None, Canonical::Binary(b)) => {
                base64_len(b.len()) == value.len() && base64_matches_at(b, 0, value.as_bytes())
            }
            (None, _) => false,
        }
    }

    /// Whether the canonical form starts with `value`.
    pub(crate) fn starts_with(&self, value: &str) -> bool {
        match (self.text(), self) {
            (Some(t), _) => t.starts_with(value),
            (None, Canonical::Binary(b)) => {
                value.len() <= base64_len(b.len()) && base64_matches_at(b, 0, value.as_bytes())
            }
            (None, _) => false,
        }
    }

    /// Whether the canonical form ends with `value`.
    pub(crate) fn ends_with(&self, value: &str) -> bool {
        match (self.text(), self) {
            (Some(t), _) => t.ends_with(value),
            (None, Canonical::Binary(b)) => {
                let len = base64_len(b.len());
                value.len() <= len && base64_matches_at(b, len - value.len(), value.as_bytes())
            }
            (None, _) => false,
        }
    }
}

/// `true` or `false`, as CESQL and the CloudEvents type system write them.
pub(crate) fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// Formats a timestamp exactly as [`format_timestamp`] does (RFC 3339, UTC, `Z`, as many
/// fractional digits as needed in groups of three), on the stack. `None` when the year does not
/// fit four digits; the caller then falls back to the allocating formatter.
pub(crate) fn format_timestamp_small(t: &DateTime<Utc>) -> Option<StackStr<SMALL>> {
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut second = t.second();
    let mut nanos = t.nanosecond();
    if nanos >= 1_000_000_000 {
        // A leap second is represented as second 59 with an extra second of nanoseconds.
        second += 1;
        nanos -= 1_000_000_000;
    }
    let mut s = StackStr::new();
    write!(
        s,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{second:02}",
        t.month(),
        t.day(),
        t.hour(),
        t.minute()
    )
    .ok()?;
    if nanos != 0 {
        if nanos.is_multiple_of(1_000_000) {
            write!(s, ".{:03}", nanos / 1_000_000).ok()?;
        } else if nanos.is_multiple_of(1_000) {
            write!(s, ".{:06}", nanos / 1_000).ok()?;
        } else {
            write!(s, ".{nanos:09}").ok()?;
        }
    }
    s.write_char('Z').ok()?;
    Some(s)
}

/// The length of the padded base64 encoding of `n` bytes.
fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Whether the padded base64 encoding of `bytes`, from character `start` on, begins with
/// `expected`. The caller ensures that `start + expected.len()` is within the encoding.
fn base64_matches_at(bytes: &[u8], start: usize, expected: &[u8]) -> bool {
    let end = start + expected.len();
    let mut i = start;
    while i < end {
        let chunk = i / 4;
        let from = chunk * 3;
        let to = (from + 3).min(bytes.len());
        let mut encoded = [0u8; 4];
        if base64::engine::general_purpose::STANDARD
            .encode_slice(&bytes[from..to], &mut encoded)
            .is_err()
        {
            return false;
        }
        let offset = i % 4;
        let take = (4 - offset).min(end - i);
        if encoded[offset..offset + take] != expected[i - start..i - start + take] {
            return false;
        }
        i += take;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn stack_timestamps_match_the_canonical_formatter() {
        let cases = [
            "2024-01-02T03:04:05Z",
            "2024-01-02T03:04:05.5Z",
            "2024-01-02T03:04:05.123456Z",
            "2024-01-02T03:04:05.000001Z",
            "2024-01-02T03:04:05.123456789Z",
            "2024-01-02T03:04:05.000000001Z",
            "0001-12-31T23:59:59.999Z",
            "9999-12-31T23:59:59.999999999+01:00",
            "2018-04-26T14:48:09+02:00",
        ];
        for case in cases {
            let t = DateTime::parse_from_rfc3339(case)
                .unwrap()
                .with_timezone(&Utc);
            let small = format_timestamp_small(&t).unwrap();
            assert_eq!(small.as_str(), format_timestamp(&t), "{case}");
        }
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .unwrap()
            .and_hms_nano_opt(23, 59, 59, 1_500_000_000)
            .unwrap()
            .and_utc();
        assert_eq!(
            format_timestamp_small(&leap).unwrap().as_str(),
            format_timestamp(&leap)
        );
    }

    #[test]
    fn binary_values_compare_as_base64() {
        for len in 0..12usize {
            let bytes: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(37)).collect();
            let value = AttributeValue::Binary(Bytes::from(bytes));
            let text = value.to_canonical_string();
            let canonical = Canonical::of(AttributeRef::Typed(&value));
            assert!(canonical.equals(&text));
            assert!(!canonical.equals(&format!("{text}A")));
            for cut in 0..=text.len() {
                assert!(canonical.starts_with(&text[..cut]), "{text} {cut}");
                assert!(canonical.ends_with(&text[cut..]), "{text} {cut}");
            }
            assert!(!canonical.starts_with(&format!("{text}=")));
            assert!(!canonical.ends_with(&format!("x{text}")));
            if !text.is_empty() {
                assert!(!canonical.starts_with("#"));
                assert!(!canonical.ends_with("#"));
            }
        }
    }

    #[test]
    fn integers_format_like_display() {
        for i in [
            0,
            1,
            -1,
            9,
            10,
            -10,
            42,
            1_000_000,
            i32::MAX,
            i32::MIN,
            i32::MIN + 1,
        ] {
            assert_eq!(format_i32(i).as_str(), i.to_string());
        }
    }

    #[test]
    fn integers_and_booleans_use_their_canonical_text() {
        let i = AttributeValue::Integer(-2_147_483_648);
        assert!(Canonical::of(AttributeRef::Typed(&i)).equals("-2147483648"));
        let b = AttributeValue::Boolean(false);
        assert!(Canonical::of(AttributeRef::Typed(&b)).equals("false"));
    }
}
