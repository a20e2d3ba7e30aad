//! LIKE patterns, compiled once at parse time.
//!
//! `%` matches any run of characters (including none), `_` exactly one character; `\%` and
//! `\_` match the character itself, and a backslash before anything else is an ordinary
//! character. Matching is by Unicode character and case-sensitive. The common shapes (exact,
//! prefix, suffix, contains) compile to plain string tests; anything else is split at each `%`
//! into segments matched greedily left to right, which is linear for literal segments and never
//! backtracks past a `%`.

/// One element of a pattern segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    /// This character.
    Char(char),
    /// Any one character (`_`).
    Any,
}

/// A run of the pattern between two `%`.
#[derive(Debug, Clone)]
struct Segment {
    items: Box<[Item]>,
    /// The text when the segment has no `_`, for the fast string searches.
    literal: Option<Box<str>>,
}

impl Segment {
    fn new(items: Vec<Item>) -> Self {
        let literal = items
            .iter()
            .map(|item| match item {
                Item::Char(c) => Some(*c),
                Item::Any => None,
            })
            .collect::<Option<String>>()
            .map(String::into_boxed_str);
        Segment {
            items: items.into_boxed_slice(),
            literal,
        }
    }

    /// If `text` starts with this segment, the rest of `text`.
    fn strip_prefix<'t>(&self, text: &'t str) -> Option<&'t str> {
        if let Some(literal) = &self.literal {
            return text.strip_prefix(&**literal);
        }
        let mut chars = text.char_indices();
        for item in self.items.iter() {
            let (_, c) = chars.next()?;
            if let Item::Char(want) = item {
                if c != *want {
                    return None;
                }
            }
        }
        Some(chars.as_str())
    }

    /// If `text` ends with this segment, the rest of `text`.
    fn strip_suffix<'t>(&self, text: &'t str) -> Option<&'t str> {
        if let Some(literal) = &self.literal {
            return text.strip_suffix(&**literal);
        }
        let mut chars = text.chars();
        for item in self.items.iter().rev() {
            let c = chars.next_back()?;
            if let Item::Char(want) = item {
                if c != *want {
                    return None;
                }
            }
        }
        Some(chars.as_str())
    }

    /// The rest of `text` after the leftmost occurrence of this segment.
    fn find_after<'t>(&self, text: &'t str) -> Option<&'t str> {
        if let Some(literal) = &self.literal {
            return text.find(&**literal).map(|i| &text[i + literal.len()..]);
        }
        let mut rest = text;
        loop {
            if let Some(after) = self.strip_prefix(rest) {
                return Some(after);
            }
            let mut chars = rest.chars();
            chars.next()?;
            rest = chars.as_str();
        }
    }
}

/// The compiled forms of a pattern.
#[derive(Debug, Clone)]
enum Kind {
    /// No wildcard: plain equality.
    Exact(Box<str>),
    /// `abc%`
    Prefix(Box<str>),
    /// `%abc`
    Suffix(Box<str>),
    /// `%abc%`
    Contains(Box<str>),
    /// Only `%`: everything matches.
    Everything,
    /// No `%` but some `_`: the one segment must cover the whole text.
    Whole(Segment),
    /// At least one `%`: the first segment anchors at the start, the last at the end, and the
    /// middle ones are found leftmost, in order, in between.
    Split {
        first: Segment,
        middle: Box<[Segment]>,
        last: Segment,
    },
}

/// A compiled LIKE pattern.
#[derive(Debug, Clone)]
pub(crate) struct LikePattern {
    kind: Kind,
}

impl LikePattern {
    /// Compiles `pattern` (the string literal's text, already unescaped).
    pub(crate) fn compile(pattern: &str) -> Self {
        // Split at unescaped `%`; collapse runs of them.
        let mut segments: Vec<Vec<Item>> = vec![Vec::new()];
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.peek() {
                    Some(&next @ ('%' | '_')) => {
                        chars.next();
                        push(&mut segments, Item::Char(next));
                    }
                    _ => push(&mut segments, Item::Char('\\')),
                },
                '%' => {
                    if segments.last().is_some_and(|s| !s.is_empty()) || segments.len() == 1 {
                        segments.push(Vec::new());
                    }
                }
                '_' => push(&mut segments, Item::Any),
                c => push(&mut segments, Item::Char(c)),
            }
        }
        let mut segments: Vec<Segment> = segments.into_iter().map(Segment::new).collect();
        let kind = if segments.len() == 1 {
            let only = segments.remove(0);
            match only.literal {
                Some(literal) => Kind::Exact(literal),
                None => Kind::Whole(only),
            }
        } else {
            let last = segments.pop().unwrap_or_else(|| Segment::new(Vec::new()));
            let first = segments.remove(0);
            let middle = segments;
            let empty = |s: &Segment| s.items.is_empty();
            match (&first.literal, &last.literal, middle.as_slice()) {
                (Some(_), Some(_), []) if empty(&first) && empty(&last) => Kind::Everything,
                (Some(p), Some(_), []) if empty(&last) => Kind::Prefix(p.clone()),
                (Some(_), Some(s), []) if empty(&first) => Kind::Suffix(s.clone()),
                (Some(_), Some(_), [only]) if empty(&first) && empty(&last) => {
                    match &only.literal {
                        Some(c) => Kind::Contains(c.clone()),
                        None => Kind::Split {
                            first,
                            middle: middle.into_boxed_slice(),
                            last,
                        },
                    }
                }
                _ => Kind::Split {
                    first,
                    middle: middle.into_boxed_slice(),
                    last,
                },
            }
        };
        LikePattern { kind }
    }

    /// Whether `text` matches the pattern.
    pub(crate) fn matches(&self, text: &str) -> bool {
        match &self.kind {
            Kind::Exact(s) => text == &**s,
            Kind::Prefix(p) => text.starts_with(&**p),
            Kind::Suffix(s) => text.ends_with(&**s),
            Kind::Contains(c) => text.contains(&**c),
            Kind::Everything => true,
            Kind::Whole(segment) => segment.strip_prefix(text) == Some(""),
            Kind::Split {
                first,
                middle,
                last,
            } => {
                let Some(rest) = first.strip_prefix(text) else {
                    return false;
                };
                let Some(mut rest) = last.strip_suffix(rest) else {
                    return false;
                };
                for segment in middle.iter() {
                    match segment.find_after(rest) {
                        Some(after) => rest = after,
                        None => return false,
                    }
                }
                true
            }
        }
    }
}

fn push(segments: &mut [Vec<Item>], item: Item) {
    if let Some(last) = segments.last_mut() {
        last.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reference matcher: plain recursion over characters, for comparison.
    fn reference(text: &[char], pattern: &[Option<char>]) -> bool {
        // `None` stands for `%`, `Some('\u{0}')` never appears; `_` is mapped to `'\u{1}'`.
        match pattern.split_first() {
            None => text.is_empty(),
            Some((None, rest)) => (0..=text.len()).any(|i| reference(&text[i..], rest)),
            Some((Some('\u{1}'), rest)) => !text.is_empty() && reference(&text[1..], rest),
            Some((Some(c), rest)) => text.first() == Some(c) && reference(&text[1..], rest),
        }
    }

    fn reference_pattern(pattern: &str) -> Vec<Option<char>> {
        let mut out = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some('%' | '_')) => out.push(chars.next()),
                '%' => out.push(None),
                '_' => out.push(Some('\u{1}')),
                c => out.push(Some(c)),
            }
        }
        out
    }

    #[test]
    fn agrees_with_a_reference_matcher() {
        let patterns = [
            "", "%", "%%", "_", "a", "a%", "%a", "%a%", "a%b", "a_b", "_%_", "%_%", "a%b%c",
            "a\\%b", "a\\_b", "\\", "a\\", "\\a", "%ab%ab%", "_b%", "%b_", "a%%b", "é_", "%é%",
            "%a_b%", "a%_", "%.%.%", "._._.",
        ];
        let texts = [
            "", "a", "b", "ab", "ba", "abc", "aab", "abab", "a%b", "a_b", "axb", "\\", "a\\",
            "\\a", "é", "éx", "xéx", "a.b.c", ".a.b.", "abcd.", "ababab", "aXbYc",
        ];
        for pattern in patterns {
            let compiled = LikePattern::compile(pattern);
            let reference_pattern = reference_pattern(pattern);
            for text in texts {
                let chars: Vec<char> = text.chars().collect();
                assert_eq!(
                    compiled.matches(text),
                    reference(&chars, &reference_pattern),
                    "{text:?} LIKE {pattern:?} ({compiled:?})"
                );
            }
        }
    }

    #[test]
    fn common_shapes_compile_to_string_tests() {
        assert!(matches!(LikePattern::compile("abc").kind, Kind::Exact(_)));
        assert!(matches!(LikePattern::compile("abc%").kind, Kind::Prefix(_)));
        assert!(matches!(LikePattern::compile("%abc").kind, Kind::Suffix(_)));
        assert!(matches!(
            LikePattern::compile("%abc%").kind,
            Kind::Contains(_)
        ));
        assert!(matches!(LikePattern::compile("%%").kind, Kind::Everything));
        assert!(matches!(LikePattern::compile("a\\%").kind, Kind::Exact(_)));
    }
}
