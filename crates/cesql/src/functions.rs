//! The built-in functions (CESQL §3.5), resolved by name and arity at parse time.
//!
//! Arguments are cast to the parameter types first (a failed cast gives the zero value and a
//! cast error, and the function still runs); a function that fails returns the value the spec
//! defines for that case with the error.

use std::borrow::Cow;

use super::ast::{Builtin, Call, Node, Type};
use super::value::{into_str, operand, parse_bool, quote, to_int, Cx, Out, Val};
use super::ErrorKind;

/// How a function evaluates its arguments: the evaluator passes itself in, so functions can
/// evaluate arguments lazily (an argument in error stops the rest) without this module
/// depending on the evaluator.
pub(crate) type Eval = for<'a, 'v> fn(&'a Node, &mut Cx<'a, 'v>) -> Out<'a>;

/// Evaluates a function call.
pub(crate) fn call<'a>(call: &'a Call, cx: &mut Cx<'a, '_>, eval: Eval) -> Out<'a> {
    let Some(func) = call.func else {
        cx.raise(ErrorKind::MissingFunction, call.pos, || {
            Builtin::missing_message(&call.name, call.args.len())
        });
        return Err(Val::Bool(false));
    };
    let ty = func.return_type();
    let pos = call.pos;
    let args = &call.args;
    match func {
        Builtin::Concat | Builtin::ConcatWs => {
            let mut parts = args.iter();
            let delimiter = match func {
                Builtin::ConcatWs => match parts.next() {
                    Some(d) => Some(into_str(operand!(eval(d, cx), ty))),
                    None => None,
                },
                _ => None,
            };
            let mut out = String::new();
            for (i, part) in parts.enumerate() {
                let v = operand!(eval(part, cx), ty);
                if let (Some(d), true) = (&delimiter, i > 0) {
                    out.push_str(d);
                }
                out.push_str(&into_str(v));
            }
            Ok(Val::Str(Cow::Owned(out)))
        }
        _ => {
            // Every other built-in takes one to three arguments: evaluate them all first.
            let Some(first) = args.first() else {
                return Err(Val::zero(ty));
            };
            let x = operand!(eval(first, cx), ty);
            let y = match args.get(1) {
                Some(arg) => Some(operand!(eval(arg, cx), ty)),
                None => None,
            };
            let z = match args.get(2) {
                Some(arg) => Some(operand!(eval(arg, cx), ty)),
                None => None,
            };
            let mark = cx.mark();
            let value = fixed(func, x, y, z, cx, pos);
            cx.finish(mark, value)
        }
    }
}

/// The functions of fixed arity, with their arguments evaluated.
fn fixed<'a>(
    func: Builtin,
    x: Val<'a>,
    y: Option<Val<'a>>,
    z: Option<Val<'a>>,
    cx: &mut Cx<'a, '_>,
    pos: usize,
) -> Val<'a> {
    let int = |v: Option<Val<'a>>, cx: &mut Cx<'a, '_>| match v {
        Some(v) => to_int(&v, cx, pos),
        None => 0,
    };
    match func {
        Builtin::Abs => {
            let i = to_int(&x, cx, pos);
            Val::Int(i.checked_abs().unwrap_or_else(|| {
                cx.raise(ErrorKind::Math, pos, || {
                    format!("ABS({i}) does not fit in a 32-bit integer")
                });
                i32::MAX
            }))
        }
        Builtin::Length => {
            let s = into_str(x);
            Val::Int(i32::try_from(s.chars().count()).unwrap_or(i32::MAX))
        }
        Builtin::Lower => Val::Str(lower(into_str(x))),
        Builtin::Upper => Val::Str(upper(into_str(x))),
        Builtin::Trim => Val::Str(map_slice(into_str(x), str::trim)),
        Builtin::Left | Builtin::Right => {
            let s = into_str(x);
            let n = int(y, cx);
            if n < 0 {
                cx.raise(ErrorKind::FunctionEvaluation, pos, || {
                    let name = if func == Builtin::Left {
                        "LEFT"
                    } else {
                        "RIGHT"
                    };
                    format!("{name} needs a length of 0 or more, not {n}")
                });
                return Val::Str(s);
            }
            let n = n as usize;
            let total = s.chars().count();
            if n >= total {
                return Val::Str(s);
            }
            Val::Str(if func == Builtin::Left {
                let end = byte_index(&s, n);
                map_slice(s, |s| &s[..end])
            } else {
                let start = byte_index(&s, total - n);
                map_slice(s, |s| &s[start..])
            })
        }
        Builtin::Substring | Builtin::SubstringLen => {
            let s = into_str(x);
            let start = int(y, cx);
            let len = z.map(|z| to_int(&z, cx, pos));
            substring(s, start, len, cx, pos)
        }
        Builtin::Int => Val::Int(to_int(&x, cx, pos)),
        Builtin::Bool => Val::Bool(match x {
            Val::Bool(b) => b,
            Val::Int(i) => i != 0,
            Val::Str(s) => parse_bool(&s).unwrap_or_else(|| {
                cx.raise(ErrorKind::Cast, pos, || {
                    format!("cannot cast the String {} to Boolean", quote(&s))
                });
                false
            }),
        }),
        Builtin::String => Val::Str(into_str(x)),
        Builtin::IsInt => Val::Bool(match x {
            Val::Str(s) => s.parse::<i32>().is_ok(),
            Val::Int(_) | Val::Bool(_) => true,
        }),
        Builtin::IsBool => Val::Bool(match x {
            Val::Str(s) => parse_bool(&s).is_some(),
            Val::Int(_) | Val::Bool(_) => true,
        }),
        Builtin::Concat | Builtin::ConcatWs => Val::zero(Type::String),
    }
}

/// `SUBSTRING(s, pos[, len])`: 1-based `pos`, counted from the end when negative; `0` gives
/// the empty string; out of range, or a negative `len`, is an error with the empty string.
fn substring<'a>(
    s: Cow<'a, str>,
    pos: i32,
    len: Option<i32>,
    cx: &mut Cx<'a, '_>,
    at: usize,
) -> Val<'a> {
    let total = s.chars().count();
    let total_i64 = total as i64;
    let pos_i64 = i64::from(pos);
    if pos_i64 > total_i64 || pos_i64 < -total_i64 {
        cx.raise(ErrorKind::FunctionEvaluation, at, || {
            format!("SUBSTRING position {pos} is outside a string of {total} characters")
        });
        return Val::zero(Type::String);
    }
    if let Some(len) = len.filter(|len| *len < 0) {
        cx.raise(ErrorKind::FunctionEvaluation, at, || {
            format!("SUBSTRING needs a length of 0 or more, not {len}")
        });
        return Val::zero(Type::String);
    }
    if pos == 0 {
        return Val::zero(Type::String);
    }
    let first = if pos > 0 {
        (pos_i64 - 1) as usize
    } else {
        (total_i64 + pos_i64) as usize
    };
    let count = len.map_or(total - first, |len| (len as usize).min(total - first));
    let (from, to) = (byte_index(&s, first), byte_index(&s, first + count));
    Val::Str(map_slice(s, |s| &s[from..to]))
}

/// The byte offset of character `index` of `s` (the length of `s` past its end).
fn byte_index(s: &str, index: usize) -> usize {
    s.char_indices().nth(index).map_or(s.len(), |(i, _)| i)
}

/// Applies a slicing function to a borrowed or owned string, keeping the borrow.
fn map_slice<'a>(s: Cow<'a, str>, f: impl for<'x> FnOnce(&'x str) -> &'x str) -> Cow<'a, str> {
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(f(b)),
        Cow::Owned(o) => Cow::Owned(f(&o).to_owned()),
    }
}

fn lower(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(s.to_ascii_lowercase())
        } else {
            s
        }
    } else {
        Cow::Owned(s.to_lowercase())
    }
}

fn upper(s: Cow<'_, str>) -> Cow<'_, str> {
    if s.is_ascii() {
        if s.bytes().any(|b| b.is_ascii_lowercase()) {
            Cow::Owned(s.to_ascii_uppercase())
        } else {
            s
        }
    } else {
        Cow::Owned(s.to_uppercase())
    }
}
