//! The evaluator.
//!
//! Values borrow from the expression and the event ([`Val`]); strings are only built when a
//! cast from Integer to String is needed by a function, or a function makes a new string.
//!
//! Errors follow one rule. Evaluating a node gives `Ok(value)`, or `Err(value)` when the node or
//! anything below it raised an error. A node that raises an error itself returns its defined
//! result (for `5 / 0`, `0`; for `NOT 10`, `TRUE` after the failed cast gave `FALSE`). A node
//! whose operand came back `Err` returns the zero value of its own type at once, without
//! evaluating anything else: so `TRUE AND (1 != 1 / 0)` is `FALSE`, and `1 / missing` is `0`
//! with a missing-attribute error only (the division is never attempted).

use std::borrow::Cow;

use super::ast::{BinOp, Chain, In, Link, Lit, Node, Type};
use super::functions;
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
    fn from_attr(attr: AttrValue<'a>) -> Self {
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
    source: &'a str,
    /// Where errors are collected; `None` when only their occurrence matters.
    errors: Option<&'v mut Vec<CesqlError>>,
    /// How many errors were raised so far.
    count: usize,
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

/// Evaluates `root`; errors go to `errors` when given.
pub(crate) fn evaluate<'a>(
    root: &'a Node,
    event: &'a dyn Event,
    source: &'a str,
    errors: Option<&mut Vec<CesqlError>>,
) -> Val<'a> {
    let mut cx = Cx {
        event,
        source,
        errors,
        count: 0,
    };
    match eval(root, &mut cx) {
        Ok(v) | Err(v) => v,
    }
}

/// Whether `root` yields Boolean TRUE without error.
pub(crate) fn matches(root: &Node, event: &dyn Event, source: &str) -> bool {
    let mut cx = Cx {
        event,
        source,
        errors: None,
        count: 0,
    };
    matches!(eval(root, &mut cx), Ok(Val::Bool(true)))
}

/// Evaluates one node.
pub(crate) fn eval<'a>(node: &'a Node, cx: &mut Cx<'a, '_>) -> Out<'a> {
    match node {
        Node::Lit(lit) => Ok(match lit {
            Lit::Bool(b) => Val::Bool(*b),
            Lit::Int(i) => Val::Int(*i),
            Lit::Str(s) => Val::Str(Cow::Borrowed(s)),
        }),
        Node::Attr(name, pos) => match cx.event.attribute(name.as_str()) {
            Some(attr) => Ok(Val::from_attr(attr)),
            None => {
                cx.raise(ErrorKind::MissingAttribute, *pos, || {
                    format!("the event has no attribute `{}`", name.as_str())
                });
                Err(Val::Bool(false))
            }
        },
        Node::Exists(name) => Ok(Val::Bool(cx.event.attribute(name.as_str()).is_some())),
        Node::Not(operand, pos) => {
            let v = operand!(eval(operand, cx), Type::Boolean);
            let mark = cx.mark();
            let b = to_bool(&v, cx, *pos);
            cx.finish(mark, Val::Bool(!b))
        }
        Node::Neg(operand, pos) => {
            let v = operand!(eval(operand, cx), Type::Integer);
            let mark = cx.mark();
            let i = to_int(&v, cx, *pos);
            let negated = i.checked_neg().unwrap_or_else(|| {
                cx.raise(ErrorKind::Math, *pos, || {
                    format!("-({i}) does not fit in a 32-bit integer")
                });
                i32::MAX
            });
            cx.finish(mark, Val::Int(negated))
        }
        Node::Chain(chain) => eval_chain(chain, cx),
        Node::Like(like) => {
            let v = operand!(eval(&like.operand, cx), Type::Boolean);
            let matched = with_str(&v, |s| like.pattern.matches(s));
            Ok(Val::Bool(matched != like.negated))
        }
        Node::In(set) => eval_in(set, cx),
        Node::Call(call) => functions::call(call, cx),
    }
}

fn eval_chain<'a>(chain: &'a Chain, cx: &mut Cx<'a, '_>) -> Out<'a> {
    let mut acc = eval(&chain.first, cx);
    for link in chain.links.iter() {
        acc = match acc {
            Ok(left) => apply(link, left, cx),
            // Every operator above the failed one returns its zero value; the outermost (last)
            // operator's is the chain's.
            Err(_) => {
                let ty = chain
                    .links
                    .last()
                    .map_or(Type::Boolean, |l| l.op.result_type());
                return Err(Val::zero(ty));
            }
        };
    }
    acc
}

/// Applies one link of a chain to the value accumulated on its left.
fn apply<'a>(link: &'a Link, left: Val<'a>, cx: &mut Cx<'a, '_>) -> Out<'a> {
    let pos = link.pos;
    let ty = link.op.result_type();
    match link.op {
        BinOp::And | BinOp::Or => {
            let mark = cx.mark();
            let l = to_bool(&left, cx, pos);
            // Short-circuit: FALSE AND …, TRUE OR …
            if l == (link.op == BinOp::Or) {
                return cx.finish(mark, Val::Bool(l));
            }
            let right = operand!(eval(&link.rhs, cx), ty);
            let r = to_bool(&right, cx, pos);
            cx.finish(mark, Val::Bool(r))
        }
        BinOp::Xor => {
            let right = operand!(eval(&link.rhs, cx), ty);
            let mark = cx.mark();
            let l = to_bool(&left, cx, pos);
            let r = to_bool(&right, cx, pos);
            cx.finish(mark, Val::Bool(l != r))
        }
        BinOp::Eq | BinOp::NotEq => {
            let right = operand!(eval(&link.rhs, cx), ty);
            let mark = cx.mark();
            let equal = equals_as(&left, &right, cx, pos);
            cx.finish(mark, Val::Bool(equal == (link.op == BinOp::Eq)))
        }
        BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
            let right = operand!(eval(&link.rhs, cx), ty);
            let mark = cx.mark();
            let l = to_int(&left, cx, pos);
            let r = to_int(&right, cx, pos);
            let result = match link.op {
                BinOp::Lt => l < r,
                BinOp::Le => l <= r,
                BinOp::Gt => l > r,
                _ => l >= r,
            };
            cx.finish(mark, Val::Bool(result))
        }
        BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => {
            let right = operand!(eval(&link.rhs, cx), ty);
            let mark = cx.mark();
            let l = to_int(&left, cx, pos);
            let r = to_int(&right, cx, pos);
            let result = arithmetic(link.op, l, r, cx, pos);
            cx.finish(mark, Val::Int(result))
        }
    }
}

/// Integer arithmetic; division by zero and overflow raise a math error and give `0`.
fn arithmetic(op: BinOp, l: i32, r: i32, cx: &mut Cx<'_, '_>, pos: usize) -> i32 {
    if matches!(op, BinOp::Div | BinOp::Mod) && r == 0 {
        cx.raise(ErrorKind::Math, pos, || {
            format!("{l} {} 0: division by zero", op.symbol())
        });
        return 0;
    }
    let result = match op {
        BinOp::Add => l.checked_add(r),
        BinOp::Sub => l.checked_sub(r),
        BinOp::Mul => l.checked_mul(r),
        BinOp::Div => l.checked_div(r),
        // The remainder of i32::MIN by -1 is 0; only the quotient overflows.
        _ => Some(l.wrapping_rem(r)),
    };
    result.unwrap_or_else(|| {
        cx.raise(ErrorKind::Math, pos, || {
            format!("{l} {} {r} does not fit in a 32-bit integer", op.symbol())
        });
        0
    })
}

fn eval_in<'a>(set: &'a In, cx: &mut Cx<'a, '_>) -> Out<'a> {
    let x = operand!(eval(&set.operand, cx), Type::Boolean);
    let mark = cx.mark();
    let mut found = false;
    for element in set.set.iter() {
        let y = operand!(eval(element, cx), Type::Boolean);
        // The left operand's type is the target of the cast (CESQL §3.7).
        if equals_as(&y, &x, cx, set.pos) {
            found = true;
            break;
        }
    }
    cx.finish(mark, Val::Bool(found != set.negated))
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
