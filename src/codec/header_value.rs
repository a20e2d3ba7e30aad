//! Header-value encoding of attribute values (NATS binding §3.1.3.2, the same rules as the HTTP
//! binding §3.1.3.2).
//!
//! Writing percent-encodes space, `"`, `%` and every byte outside printable ASCII (so every
//! UTF-8 byte of a non-ASCII character, and every control character), with upper-case hex
//! digits. Reading first removes RFC 7230 double-quoting, then performs one round of
//! percent-decoding and requires the result to be valid UTF-8 (an overlong `%C0%A0` is
//! refused).

use std::borrow::Cow;

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

/// What must be percent-encoded in a header value: controls (U+0000–U+001F, U+007F), space,
/// double quote and percent. `percent-encoding` always encodes non-ASCII bytes as well.
const HEADER_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// What must be percent-encoded in an item of the `Jetwatch-Ce-Types` header: the header-value
/// set plus the header's own separators.
pub(crate) const TYPES_ITEM: &AsciiSet = &HEADER_VALUE.add(b',').add(b'=').add(b';');

/// Percent-encodes an attribute's canonical string for a header value. Borrows when nothing
/// needs encoding, which is the common case.
pub(crate) fn encode(value: &str) -> Cow<'_, str> {
    utf8_percent_encode(value, HEADER_VALUE).into()
}

/// Percent-encodes with an explicit set (used for `Jetwatch-Ce-Types` items).
pub(crate) fn encode_with<'a>(value: &'a str, set: &'static AsciiSet) -> Cow<'a, str> {
    utf8_percent_encode(value, set).into()
}

/// The length of [`encode`]'s output, computed without allocating.
pub(crate) fn encoded_len(value: &str) -> usize {
    value
        .bytes()
        .map(|b| if needs_encoding(b) { 3 } else { 1 })
        .sum()
}

fn needs_encoding(b: u8) -> bool {
    !(0x21..=0x7e).contains(&b) || b == b'"' || b == b'%'
}

/// Why a header value could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// A double-quoted string is not closed.
    UnterminatedQuote,
    /// The percent-decoded bytes are not valid UTF-8.
    InvalidUtf8,
}

impl DecodeError {
    pub(crate) fn reason(self) -> &'static str {
        match self {
            DecodeError::UnterminatedQuote => "the header value has an unterminated quoted string",
            DecodeError::InvalidUtf8 => {
                "the percent-decoded header value is not valid UTF-8 (the binding requires it)"
            }
        }
    }
}

/// `raw` without the spaces and tabs around it (RFC 7230's optional whitespace), found byte by
/// byte: both are ASCII, so the cuts fall on character boundaries.
fn trim_optional_whitespace(raw: &str) -> &str {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let bytes = raw.as_bytes();
    let start = bytes.iter().position(|b| !ows(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &raw[start..end]
}

/// Decodes a header value into the attribute's canonical string.
///
/// Optional whitespace around the value is removed; double-quoted strings are unquoted (with
/// backslash escapes) as RFC 7230 §3.2.6 says; then one round of percent-decoding. A `%` that is
/// not followed by two hex digits is kept as it is, and raw non-ASCII UTF-8 is accepted: some
/// SDKs write values without percent-encoding them. Borrows when the value has neither quotes
/// nor escapes.
pub(crate) fn decode(raw: &str) -> Result<Cow<'_, str>, DecodeError> {
    if !raw.bytes().any(|b| matches!(b, b'"' | b'%' | b' ' | b'\t')) {
        // No whitespace, quotes or escapes (nearly every value): one pass, read for every
        // attribute of every stored event.
        return Ok(Cow::Borrowed(raw));
    }
    let trimmed = trim_optional_whitespace(raw);
    if !trimmed.bytes().any(|b| b == b'"' || b == b'%') {
        // Nothing to unquote or decode (the common case): the value is its own text.
        return Ok(Cow::Borrowed(trimmed));
    }
    if !trimmed.contains('"') {
        return percent_decode_str(trimmed)
            .decode_utf8()
            .map_err(|_| DecodeError::InvalidUtf8);
    }
    let unquoted = unquote(trimmed)?;
    match percent_decode_str(&unquoted).decode_utf8() {
        Ok(Cow::Borrowed(_)) => Ok(Cow::Owned(unquoted)),
        Ok(Cow::Owned(s)) => Ok(Cow::Owned(s)),
        Err(_) => Err(DecodeError::InvalidUtf8),
    }
}

/// Removes RFC 7230 quoting: text between double quotes is taken literally except that a
/// backslash escapes the next character. Text outside quotes is copied unchanged.
fn unquote(value: &str) -> Result<String, DecodeError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') => quoted = true,
            (true, '"') => quoted = false,
            (true, '\\') => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => return Err(DecodeError::UnterminatedQuote),
            },
            (_, c) => out.push(c),
        }
    }
    if quoted {
        return Err(DecodeError::UnterminatedQuote);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_binding_example_says() {
        assert_eq!(
            encode("Euro \u{20AC} \u{1F600}"),
            "Euro%20%E2%82%AC%20%F0%9F%98%80"
        );
        assert_eq!(encode("a\"b%c\u{7f}\n"), "a%22b%25c%7F%0A");
        assert!(matches!(encode("/plain/path?x=1"), Cow::Borrowed(_)));
        for s in ["Euro \u{20AC} \u{1F600}", "a\"b%c\u{7f}\n", "plain", ""] {
            assert_eq!(encoded_len(s), encode(s).len(), "{s:?}");
        }
    }

    #[test]
    fn decodes_quotes_escapes_and_lower_case_hex() {
        let cases = [
            ("Euro%20%E2%82%AC%20%F0%9F%98%80", "Euro \u{20AC} \u{1F600}"),
            ("%e2%82%ac", "\u{20AC}"),
            ("\"hello world\"", "hello world"),
            ("\"a \\\"quoted\\\" word\"", "a \"quoted\" word"),
            ("  padded\t", "padded"),
            ("\t inner space kept ", "inner space kept"),
            (" \t ", ""),
            ("", ""),
            ("  \u{e9}t\u{e9}  ", "\u{e9}t\u{e9}"),
            ("100%", "100%"),
            ("%zz", "%zz"),
            ("caf\u{e9}", "caf\u{e9}"),
            ("%41", "A"),
        ];
        for (raw, want) in cases {
            assert_eq!(decode(raw).unwrap(), want, "{raw:?}");
        }
    }

    #[test]
    fn refuses_invalid_utf8_and_open_quotes() {
        assert_eq!(decode("%C0%A0"), Err(DecodeError::InvalidUtf8));
        assert_eq!(decode("%FF"), Err(DecodeError::InvalidUtf8));
        assert_eq!(decode("\"open"), Err(DecodeError::UnterminatedQuote));
        assert_eq!(
            decode("\"ends with backslash\\"),
            Err(DecodeError::UnterminatedQuote)
        );
    }
}
