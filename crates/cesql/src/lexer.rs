//! Splits an expression into tokens.

use std::fmt;

use super::{CesqlError, ErrorKind, Position};

/// A token's kind and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok<'s> {
    /// A run of ASCII digits (the sign is a separate token).
    Int(&'s str),
    /// A string literal, unescaped.
    Str(String),
    /// A run of ASCII letters, digits and underscores that is not all digits: a keyword, an
    /// identifier or a function name, told apart by the parser.
    Word(&'s str),
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Eq,
    /// `!=`
    NotEq,
    /// `<>`
    LtGt,
    Lt,
    Le,
    Gt,
    Ge,
    /// The end of the input.
    Eof,
}

impl fmt::Display for Tok<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Int(s) => write!(f, "integer `{s}`"),
            Tok::Str(_) => f.write_str("a string literal"),
            Tok::Word(w) => write!(f, "`{w}`"),
            Tok::LParen => f.write_str("`(`"),
            Tok::RParen => f.write_str("`)`"),
            Tok::Comma => f.write_str("`,`"),
            Tok::Plus => f.write_str("`+`"),
            Tok::Minus => f.write_str("`-`"),
            Tok::Star => f.write_str("`*`"),
            Tok::Slash => f.write_str("`/`"),
            Tok::Percent => f.write_str("`%`"),
            Tok::Eq => f.write_str("`=`"),
            Tok::NotEq => f.write_str("`!=`"),
            Tok::LtGt => f.write_str("`<>`"),
            Tok::Lt => f.write_str("`<`"),
            Tok::Le => f.write_str("`<=`"),
            Tok::Gt => f.write_str("`>`"),
            Tok::Ge => f.write_str("`>=`"),
            Tok::Eof => f.write_str("the end of the expression"),
        }
    }
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token<'s> {
    pub(crate) tok: Tok<'s>,
    /// Byte offset of the token's first character.
    pub(crate) start: usize,
}

/// Splits `src` into tokens, ending with [`Tok::Eof`].
pub(crate) fn tokenize(src: &str) -> Result<Vec<Token<'_>>, CesqlError> {
    let bytes = src.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let start = i;
        let simple = |tok| Token { tok, start };
        match b {
            b' ' | b'\t' | b'\r' | b'\n' | b'\x0c' => {
                i += 1;
                continue;
            }
            b'(' => tokens.push(simple(Tok::LParen)),
            b')' => tokens.push(simple(Tok::RParen)),
            b',' => tokens.push(simple(Tok::Comma)),
            b'+' => tokens.push(simple(Tok::Plus)),
            b'-' => tokens.push(simple(Tok::Minus)),
            b'*' => tokens.push(simple(Tok::Star)),
            b'/' => tokens.push(simple(Tok::Slash)),
            b'%' => tokens.push(simple(Tok::Percent)),
            b'=' => tokens.push(simple(Tok::Eq)),
            b'!' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    tokens.push(simple(Tok::NotEq));
                    i += 1;
                } else {
                    return Err(error(src, i, "`!` must be followed by `=`".into()));
                }
            }
            b'<' => match bytes.get(i + 1) {
                Some(b'=') => {
                    tokens.push(simple(Tok::Le));
                    i += 1;
                }
                Some(b'>') => {
                    tokens.push(simple(Tok::LtGt));
                    i += 1;
                }
                _ => tokens.push(simple(Tok::Lt)),
            },
            b'>' => {
                if bytes.get(i + 1) == Some(&b'=') {
                    tokens.push(simple(Tok::Ge));
                    i += 1;
                } else {
                    tokens.push(simple(Tok::Gt));
                }
            }
            b'\'' | b'"' => {
                let (text, end) = string_literal(src, i)?;
                tokens.push(Token {
                    tok: Tok::Str(text),
                    start,
                });
                i = end;
                continue;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' => {
                let mut end = i;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                let text = &src[i..end];
                let tok = if text.bytes().all(|b| b.is_ascii_digit()) {
                    Tok::Int(text)
                } else {
                    Tok::Word(text)
                };
                tokens.push(Token { tok, start });
                i = end;
                continue;
            }
            _ => {
                let c = src[i..].chars().next().unwrap_or('?');
                return Err(error(src, i, format!("unexpected character `{c}`")));
            }
        }
        i += 1;
    }
    tokens.push(Token {
        tok: Tok::Eof,
        start: src.len(),
    });
    Ok(tokens)
}

/// Reads the string literal whose opening quote is at `open`: its unescaped text and the byte
/// offset just after the closing quote. The delimiter is escaped as `\'` (`\"`) or doubled; a
/// backslash before any other character is kept with that character.
fn string_literal(src: &str, open: usize) -> Result<(String, usize), CesqlError> {
    let bytes = src.as_bytes();
    let quote = bytes[open];
    let mut text = String::new();
    let mut i = open + 1;
    // Copy runs of ordinary characters at once; only quotes and backslashes are special, and
    // both are ASCII, so every cut below falls on a character boundary.
    let mut run = i;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'\\' {
            if bytes.get(i + 1) == Some(&quote) {
                text.push_str(&src[run..i]);
                text.push(quote as char);
                i += 2;
                run = i;
            } else if bytes.get(i + 1) == Some(&b'\\') {
                // Kept as written, but consumed as a pair so that `'\\'` ends at its quote.
                i += 2;
            } else {
                i += 1;
            }
        } else if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                text.push_str(&src[run..=i]);
                i += 2;
                run = i;
            } else {
                text.push_str(&src[run..i]);
                return Ok((text, i + 1));
            }
        } else {
            i += 1;
        }
    }
    Err(error(
        src,
        open,
        "this string literal is not closed".to_owned(),
    ))
}

/// A parse error at byte offset `at`.
pub(crate) fn error(src: &str, at: usize, message: String) -> CesqlError {
    CesqlError::new(ErrorKind::Parse, Position::locate(src, at), message)
}
