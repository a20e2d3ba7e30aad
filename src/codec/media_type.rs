//! Media types (RFC 2046 / RFC 7231 §3.1.1.1): the shape check for `datacontenttype` and the
//! questions the codec asks of a content type (is it JSON? is it text?).

/// The `type/subtype` part of a media type, without parameters or surrounding whitespace.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

fn split(content_type: &str) -> (&str, &str) {
    essence(content_type).split_once('/').unwrap_or(("", ""))
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.get(s.len() - suffix.len()..)
            .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
}

/// Whether the content type declares JSON: subtype `json` or a `+json` suffix (the JSON event
/// format's rule), matched case-insensitively and ignoring parameters.
pub(crate) fn is_json(content_type: &str) -> bool {
    let (_, subtype) = split(content_type);
    subtype.eq_ignore_ascii_case("json") || ends_with_ignore_case(subtype, "+json")
}

/// Whether data of this content type is text: `text/*`, JSON (`application/json`, `*+json`) or
/// XML (`application/xml`, `*+xml`).
pub(crate) fn is_textual(content_type: &str) -> bool {
    let (ty, subtype) = split(content_type);
    ty.eq_ignore_ascii_case("text")
        || is_json(content_type)
        || subtype.eq_ignore_ascii_case("xml")
        || ends_with_ignore_case(subtype, "+xml")
}

/// Whether the content type announces a structured-mode CloudEvent (`application/cloudevents`
/// or `application/cloudevents+<format>`), case-insensitively and ignoring parameters.
pub(crate) fn is_structured_cloudevent(content_type: &str) -> bool {
    let (ty, subtype) = split(content_type);
    ty.eq_ignore_ascii_case("application")
        && subtype
            .get(..11)
            .is_some_and(|p| p.eq_ignore_ascii_case("cloudevents"))
}

/// Whether a structured-mode content type is the JSON event format this codec reads.
pub(crate) fn is_cloudevents_json(content_type: &str) -> bool {
    let (ty, subtype) = split(content_type);
    ty.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("cloudevents")
            || subtype.eq_ignore_ascii_case("cloudevents+json"))
}

/// Whether the content type is the JSON batch format of the CloudEvents HTTP binding
/// (`application/cloudevents-batch+json`).
pub(crate) fn is_cloudevents_batch_json(content_type: &str) -> bool {
    let (ty, subtype) = split(content_type);
    ty.eq_ignore_ascii_case("application") && subtype.eq_ignore_ascii_case("cloudevents-batch+json")
}

/// RFC 7230 `tchar`: the characters of a token.
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_tchar)
}

/// Checks the RFC 2046 shape `type "/" subtype *( OWS ";" OWS parameter )` where a parameter is
/// `token "=" ( token / quoted-string )`. Returns what is wrong, if anything.
pub(crate) fn check(content_type: &str) -> Result<(), String> {
    let mut parts = content_type.splitn(2, ';');
    let essence = parts.next().unwrap_or("");
    let Some((ty, subtype)) = essence.split_once('/') else {
        return Err(
            "must be a media type `type/subtype` (RFC 2046), e.g. `application/json`".into(),
        );
    };
    if !is_token(ty) || !is_token(subtype) {
        return Err(format!(
            "`{essence}` is not a media type: type and subtype must be non-empty tokens (RFC 2046)"
        ));
    }
    let mut rest = parts.next();
    while let Some(params) = rest {
        let params = params.trim_start_matches([' ', '\t']);
        let Some((name, after)) = params.split_once('=') else {
            return Err(format!(
                "parameter `{}` must be `name=value`",
                params.trim()
            ));
        };
        if !is_token(name) {
            return Err(format!("parameter name `{name}` is not a token"));
        }
        let (value_ok, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            match closing_quote(quoted) {
                Some(end) => (true, &quoted[end + 1..]),
                None => (false, ""),
            }
        } else {
            let end = after.find(';').unwrap_or(after.len());
            let value = after[..end].trim_end_matches([' ', '\t']);
            (is_token(value), &after[end..])
        };
        if !value_ok {
            return Err(format!("parameter `{name}` has an invalid value"));
        }
        let remainder = remainder.trim_start_matches([' ', '\t']);
        rest = if remainder.is_empty() {
            None
        } else if let Some(next) = remainder.strip_prefix(';') {
            Some(next)
        } else {
            return Err(format!("unexpected `{remainder}` after parameter `{name}`"));
        };
    }
    Ok(())
}

/// The byte index of the quote that closes a quoted string whose opening quote was just
/// consumed, honouring backslash escapes.
fn closing_quote(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            (false, c) if c.is_control() && c != '\t' => return None,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_content_types() {
        for ct in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/ld+json",
        ] {
            assert!(is_json(ct) && is_textual(ct), "{ct}");
        }
        for ct in ["text/plain", "TEXT/csv", "application/xml", "image/svg+xml"] {
            assert!(is_textual(ct) && !is_json(ct), "{ct}");
        }
        for ct in [
            "application/octet-stream",
            "application/protobuf",
            "",
            "json",
        ] {
            assert!(!is_textual(ct), "{ct}");
        }
        assert!(is_structured_cloudevent(
            "Application/CloudEvents+JSON; charset=UTF-8"
        ));
        assert!(is_structured_cloudevent(
            "application/cloudevents-batch+json"
        ));
        assert!(is_cloudevents_json("application/cloudevents"));
        assert!(!is_cloudevents_json("application/cloudevents+protobuf"));
        assert!(!is_structured_cloudevent("application/json"));
    }

    #[test]
    fn checks_the_rfc_2046_shape() {
        for ok in [
            "application/json",
            "text/plain; charset=utf-8",
            "text/plain;charset=utf-8;format=flowed",
            "multipart/mixed; boundary=\"a b;c\"",
            "application/vnd.example+json",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "json",
            "/json",
            "application/",
            "application/json;",
            "text/plain; charset",
            "text/plain; charset=\"open",
            "text/plain; charset=a b",
            "app lication/json",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }
}
