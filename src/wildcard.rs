//! NATS subject patterns: validation and matching of `*` (one token) and `>` (the rest).
//!
//! Pure string logic used by configuration checks and by subscriptions' `subjects` filter on the
//! delivery path (no allocation there).

/// Whether `pattern` is a valid NATS subject or pattern: non-empty tokens separated by `.`, no
/// whitespace, `*` and `>` only as whole tokens, `>` only last.
pub fn is_valid_pattern(pattern: &str) -> bool {
    if pattern.is_empty() {
        return false;
    }
    let mut tokens = pattern.split('.').peekable();
    while let Some(token) = tokens.next() {
        if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return false;
        }
        if token.len() > 1 && (token.contains('*') || token.contains('>')) {
            return false;
        }
        if token == ">" && tokens.peek().is_some() {
            return false;
        }
    }
    true
}

/// Whether `subject` is a literal subject (a valid pattern without wildcards).
pub fn is_valid_subject(subject: &str) -> bool {
    is_valid_pattern(subject) && subject.split('.').all(|t| t != "*" && t != ">")
}

/// Whether the literal `subject` matches `pattern`.
pub fn matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(pt), Some(st)) if pt == st => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The pattern matching exactly the subjects both `a` and `b` match, if any do. Two patterns'
/// intersection is itself a pattern: token by token, a literal wins over `*`, and `>` takes the
/// other side's remaining tokens.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    let ta: Vec<&str> = a.split('.').collect();
    let tb: Vec<&str> = b.split('.').collect();
    let mut out: Vec<&str> = Vec::with_capacity(ta.len().max(tb.len()));
    let mut i = 0;
    loop {
        match (ta.get(i), tb.get(i)) {
            (Some(&">"), Some(_)) => {
                out.extend_from_slice(&tb[i..]);
                break;
            }
            (Some(_), Some(&">")) => {
                out.extend_from_slice(&ta[i..]);
                break;
            }
            (Some(&"*"), Some(&y)) => out.push(y),
            (Some(&x), Some(&"*")) => out.push(x),
            (Some(&x), Some(&y)) if x == y => out.push(x),
            (None, None) => break,
            _ => return None,
        }
        i += 1;
    }
    Some(out.join("."))
}

/// Whether every subject matched by `inner` is also matched by `outer`.
pub fn is_subset(inner: &str, outer: &str) -> bool {
    let mut i = inner.split('.');
    let mut o = outer.split('.');
    loop {
        match (i.next(), o.next()) {
            (Some(_), Some(">")) => return true,
            (Some(">"), Some(_)) => return false,
            (Some(_), Some("*")) => {}
            (Some("*"), Some(_)) => return false,
            (Some(it), Some(ot)) if it == ot => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matching_follows_nats_rules() {
        let cases = [
            ("events.>", "events.a", true),
            ("events.>", "events.a.b", true),
            ("events.>", "events", false),
            ("events.*", "events.a", true),
            ("events.*", "events.a.b", false),
            ("events.*.b", "events.a.b", true),
            ("events.a", "events.a", true),
            ("events.a", "events.ab", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(matches(p, s), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn validity() {
        for ok in ["a", "a.b", "a.*", "a.>", "*.b"] {
            assert!(is_valid_pattern(ok), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.>.b", "a b", "a.b*", "a.>x"] {
            assert!(!is_valid_pattern(bad), "{bad}");
        }
        assert!(!is_valid_subject("a.*"));
    }

    #[test]
    fn subsets() {
        assert!(is_subset("events.a.>", "events.>"));
        assert!(is_subset("events.*", "events.>"));
        assert!(!is_subset("events.>", "events.*"));
        assert!(!is_subset("other.>", "events.>"));
    }

    #[test]
    fn intersections_match_exactly_what_both_match() {
        let cases = [
            ("events.>", "events.a.*", Some("events.a.*")),
            ("events.*.x", "events.a.>", Some("events.a.x")),
            ("events.a", "events.*", Some("events.a")),
            ("events.a", "events.b", None),
            ("events.>", "events", None),
            ("events.*", "events.a.b", None),
            (">", "a.b", Some("a.b")),
            ("*.b.>", "a.*.c", Some("a.b.c")),
        ];
        for (a, b, want) in cases {
            assert_eq!(intersect(a, b).as_deref(), want, "{a} ∩ {b}");
            assert_eq!(intersect(b, a).as_deref(), want, "{b} ∩ {a}");
        }
        // The intersection matches a subject exactly when both patterns do.
        let subjects = [
            "events.a",
            "events.a.x",
            "events.a.b.c",
            "events.b.x",
            "a.b.c",
            "events",
        ];
        for (a, b, _) in cases {
            for s in subjects {
                let both = matches(a, s) && matches(b, s);
                let via = intersect(a, b).is_some_and(|p| matches(&p, s));
                assert_eq!(both, via, "{a} ∩ {b} on {s}");
            }
        }
    }
}
