//! Values during evaluation and the casts between them (CESQL §3.7), shared by the evaluator
//! and the built-in functions.

use std::borrow::Cow;

use super::ast::Type;
use super::{CesqlError, ErrorKind, Position, Value};
use crate::{AttrValue, Event};

/// A value during evaluation, borrowing where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Val<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl<'a> Val<'a> {
    /// The zero value of a type (CESQL §3.1).
    pub(crate) fn zero(ty: Type) -> Val<'static> {
        match ty {
            Type::Boolean => Val::Bool(false),
            Type::Integer => Val::Int(0),
            Type::String => Val::Str(Cow::Borrowed("")),
        }
    }

    /// The value of an attribute: Boolean and Integer attributes keep their type; every other
    /// type is seen as its canonical string.
    pub(crate) fn from_attr(attr: AttrValue<'a>) -> Self {
        match attr {
            AttrValue::Boolean(b) => Val::Bool(b),
            AttrValue::Integer(i) => Val::Int(i),
            AttrValue::String(s) => Val::Str(s),
        }
    }

    /// The public form of the value.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Bool(b) => Value::Boolean(b),
            Val::Int(i) => Value::Integer(i),
            Val::Str(s) => Value::String(s.into_owned()),
        }
    }
}

/// The result of evaluating a node: `Err` carries the value returned alongside an error.
pub(crate) type Out<'a> = Result<Val<'a>, Val<'a>>;

/// Takes the value of an operand, or returns the zero value of `$ty` if the operand failed.
macro_rules! operand {
    ($result:expr, $ty:expr) => {
        match $result {
            Ok(value) => value,
            Err(_) => return Err(Val::zero($ty)),
        }
    };
}
pub(crate) use operand;

/// The evaluation context: the event, and where errors go.
pub(crate) struct Cx<'a, 'v> {
    pub(crate) event: &'a dyn Event,
    /// The expression text, to turn byte offsets into positions.
    pub(crate) source: &'a str,
    /// Where errors are collected; `None` when only their occurrence matters.
    pub(crate) errors: Option<&'v mut Vec<CesqlError>>,
    /// How many errors were raised so far.
    pub(crate) count: usize,
}

impl Cx<'_, '_> {
    /// Records an error raised at byte offset `pos`; the message is only built when collected.
    pub(crate) fn raise(&mut self, kind: ErrorKind, pos: usize, message: impl FnOnce() -> String) {
        self.count += 1;
        if let Some(errors) = self.errors.as_deref_mut() {
            errors.push(CesqlError::new(
                kind,
                Position::locate(self.source, pos),
                message(),
            ));
        }
    }

    /// A mark to pass to [`Cx::finish`].
    #[inline]
    pub(crate) fn mark(&self) -> usize {
        self.count
    }

    /// `Ok(value)`, or `Err(value)` if errors were raised since `mark`.
    #[inline]
    pub(crate) fn finish<'a>(&self, mark: usize, value: Val<'a>) -> Out<'a> {
        if self.count == mark {
            Ok(value)
        } else {
            Err(value)
        }
    }
}

/// `x = y` with `x` cast to the type of `y`.
pub(crate) fn equals_as(x: &Val<'_>, y: &Val<'_>, cx: &mut Cx<'_, '_>, pos: usize) -> bool {
    match y {
        Val::Str(y) => with_str(x, |x| x == y),
        Val::Int(y) => to_int(x, cx, pos) == *y,
        Val::Bool(y) => to_bool(x, cx, pos) == *y,
    }
}

/// Runs `f` on the String form of `v`, formatting integers on the stack.
pub(crate) fn with_str<R>(v: &Val<'_>, f: impl FnOnce(&str) -> R) -> R {
    match v {
        Val::Str(s) => f(s),
        Val::Bool(b) => f(bool_str(*b)),
        Val::Int(i) => f(&i.to_string()),
    }
}

/// The String form of `v`, owned only when `v` is an integer.
pub(crate) fn into_str(v: Val<'_>) -> Cow<'_, str> {
    match v {
        Val::Str(s) => s,
        Val::Bool(b) => Cow::Borrowed(bool_str(b)),
        Val::Int(i) => Cow::Owned(i.to_string()),
    }
}

/// Parses a Boolean the way a String is cast to Boolean: `true` or `false` in any case.
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    if s.eq_ignore_ascii_case("true") {
        Some(true)
    } else if s.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Implicit cast to Boolean. Integers are refused: only `BOOL()` casts them explicitly.
#[inline]
pub(crate) fn to_bool(v: &Val<'_>, cx: &mut Cx<'_, '_>, pos: usize) -> bool {
    match v {
        Val::Bool(b) => *b,
        other => cast_to_bool(other, cx, pos),
    }
}

/// The casts to Boolean that need work or fail.
fn cast_to_bool(v: &Val<'_>, cx: &mut Cx<'_, '_>, pos: usize) -> bool {
    match v {
        Val::Bool(b) => *b,
        Val::Str(s) => parse_bool(s).unwrap_or_else(|| {
            cx.raise(ErrorKind::Cast, pos, || {
                format!("cannot cast the String {} to Boolean", quote(s))
            });
            false
        }),
        Val::Int(i) => {
            cx.raise(ErrorKind::Cast, pos, || {
                format!("cannot implicitly cast the Integer {i} to Boolean; use BOOL()")
            });
            false
        }
    }
}

/// Cast to Integer (implicit or explicit: the rules are the same).
#[inline]
pub(crate) fn to_int(v: &Val<'_>, cx: &mut Cx<'_, '_>, pos: usize) -> i32 {
    match v {
        Val::Int(i) => *i,
        other => cast_to_int(other, cx, pos),
    }
}

/// The casts to Integer that need work or fail.
fn cast_to_int(v: &Val<'_>, cx: &mut Cx<'_, '_>, pos: usize) -> i32 {
    match v {
        Val::Int(i) => *i,
        Val::Bool(b) => i32::from(*b),
        Val::Str(s) => s.parse::<i32>().unwrap_or_else(|_| {
            cx.raise(ErrorKind::Cast, pos, || {
                format!("cannot cast the String {} to Integer", quote(s))
            });
            0
        }),
    }
}

/// A string for an error message: quoted, and cut if long.
pub(crate) fn quote(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("'{}…'", &s[..cut]),
        None => format!("'{s}'"),
    }
}

fn bool_str(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}
