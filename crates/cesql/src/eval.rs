//! The evaluator.
//!
//! Values borrow from the expression and the event (`value::Val`); strings are only built when
//! a cast from Integer to String is needed by a function, or a function makes a new string.
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
use super::value::{equals_as, operand, to_bool, to_int, with_str, Cx, Out, Val};
use super::{CesqlError, ErrorKind};
use crate::Event;

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
        Node::Call(call) => functions::call(call, cx, eval),
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
