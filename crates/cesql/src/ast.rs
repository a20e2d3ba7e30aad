//! The syntax tree of a parsed expression.
//!
//! Left-associative runs of binary operators of one precedence level are kept as one [`Chain`]
//! (a first operand and a list of links) rather than a left-deep tree, so that `a OR b OR …` of
//! any length neither deepens the tree nor the evaluator's recursion. Positions are byte offsets
//! into the source text.

use std::fmt;

use super::like::LikePattern;

/// The three CESQL value types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Type {
    /// `TRUE` or `FALSE`.
    Boolean,
    /// A signed 32-bit integer.
    Integer,
    /// A string of Unicode characters.
    String,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Boolean => "Boolean",
            Type::Integer => "Integer",
            Type::String => "String",
        })
    }
}

/// A literal value.
#[derive(Debug, Clone)]
pub(crate) enum Lit {
    Bool(bool),
    Int(i32),
    Str(Box<str>),
}

/// A node of the syntax tree.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// A literal.
    Lit(Lit),
    /// An attribute reference, with its position for the missing-attribute error.
    Attr(AttrName, usize),
    /// `EXISTS name`.
    Exists(AttrName),
    /// `NOT x`, with the operator's position.
    Not(Box<Node>, usize),
    /// `-x`, with the operator's position.
    Neg(Box<Node>, usize),
    /// A left-associative run of binary operators of one precedence level.
    Chain(Box<Chain>),
    /// `x [NOT] LIKE 'pattern'`.
    Like(Box<Like>),
    /// `x [NOT] IN (y1, y2, …)`.
    In(Box<In>),
    /// A function call.
    Call(Box<Call>),
}

/// `first op1 rhs1 op2 rhs2 …`, evaluated as `((first op1 rhs1) op2 rhs2) …`.
#[derive(Debug, Clone)]
pub(crate) struct Chain {
    pub(crate) first: Node,
    pub(crate) links: Box<[Link]>,
}

/// One operator and its right operand in a [`Chain`].
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) op: BinOp,
    /// The operator's byte offset.
    pub(crate) pos: usize,
    pub(crate) rhs: Node,
}

/// The binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

impl BinOp {
    /// The operator's result type.
    pub(crate) fn result_type(self) -> Type {
        match self {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => Type::Integer,
            _ => Type::Boolean,
        }
    }

    /// The operator as written, for messages.
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            BinOp::And => "AND",
            BinOp::Or => "OR",
            BinOp::Xor => "XOR",
            BinOp::Eq => "=",
            BinOp::NotEq => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Mod => "%",
        }
    }
}

/// `operand [NOT] LIKE pattern`, the pattern compiled at parse time.
#[derive(Debug, Clone)]
pub(crate) struct Like {
    pub(crate) operand: Node,
    pub(crate) pattern: LikePattern,
    pub(crate) negated: bool,
}

/// `operand [NOT] IN (set…)`.
#[derive(Debug, Clone)]
pub(crate) struct In {
    pub(crate) operand: Node,
    pub(crate) set: Box<[Node]>,
    pub(crate) negated: bool,
    /// The `IN` keyword's byte offset.
    pub(crate) pos: usize,
}

/// A function call, resolved at parse time by name and arity.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// `None` when no built-in has this name and arity (a missing function).
    pub(crate) func: Option<Builtin>,
    /// The name as written.
    pub(crate) name: Box<str>,
    pub(crate) args: Box<[Node]>,
    /// The name's byte offset.
    pub(crate) pos: usize,
}

impl Node {
    /// The type this node yields whatever the event, when that is known without one.
    pub(crate) fn static_type(&self) -> Option<Type> {
        match self {
            Node::Lit(Lit::Bool(_)) => Some(Type::Boolean),
            Node::Lit(Lit::Int(_)) => Some(Type::Integer),
            Node::Lit(Lit::Str(_)) => Some(Type::String),
            Node::Attr(..) => None,
            Node::Exists(_) | Node::Not(..) | Node::Like(_) | Node::In(_) => Some(Type::Boolean),
            Node::Neg(..) => Some(Type::Integer),
            Node::Chain(c) => c.links.last().map(|l| l.op.result_type()),
            Node::Call(c) => c.func.map(Builtin::return_type),
        }
    }

    /// The first call (in source order) that cannot be dispatched: its position and a message.
    pub(crate) fn find_missing_function(&self) -> Option<(usize, String)> {
        match self {
            Node::Lit(_) | Node::Attr(..) | Node::Exists(_) => None,
            Node::Not(x, _) | Node::Neg(x, _) => x.find_missing_function(),
            Node::Chain(c) => c
                .first
                .find_missing_function()
                .or_else(|| c.links.iter().find_map(|l| l.rhs.find_missing_function())),
            Node::Like(l) => l.operand.find_missing_function(),
            Node::In(i) => i
                .operand
                .find_missing_function()
                .or_else(|| i.set.iter().find_map(Node::find_missing_function)),
            Node::Call(c) => match c.func {
                None => Some((c.pos, Builtin::missing_message(&c.name, c.args.len()))),
                Some(_) => c.args.iter().find_map(Node::find_missing_function),
            },
        }
    }
}

/// An attribute name as an expression writes it, lower-cased at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AttrName(Box<str>);

impl AttrName {
    pub(crate) fn new(name: &str) -> Self {
        AttrName(name.into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The built-in functions, one variant per overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    /// `ABS(x: Integer) -> Integer`
    Abs,
    /// `LENGTH(x: String) -> Integer`
    Length,
    /// `CONCAT(x…: String) -> String`
    Concat,
    /// `CONCAT_WS(delimiter: String, x…: String) -> String`
    ConcatWs,
    /// `LOWER(x: String) -> String`
    Lower,
    /// `UPPER(x: String) -> String`
    Upper,
    /// `TRIM(x: String) -> String`
    Trim,
    /// `LEFT(x: String, n: Integer) -> String`
    Left,
    /// `RIGHT(x: String, n: Integer) -> String`
    Right,
    /// `SUBSTRING(x: String, pos: Integer) -> String`
    Substring,
    /// `SUBSTRING(x: String, pos: Integer, len: Integer) -> String`
    SubstringLen,
    /// `INT(x: Any) -> Integer`
    Int,
    /// `BOOL(x: Any) -> Boolean`
    Bool,
    /// `STRING(x: Any) -> String`
    String,
    /// `IS_INT(x: Any) -> Boolean`
    IsInt,
    /// `IS_BOOL(x: Any) -> Boolean`
    IsBool,
}

/// Every function name with the arities it accepts (`usize::MAX` as the upper bound of a
/// variadic one), for resolution and for messages.
const TABLE: &[(&str, usize, usize, Builtin)] = &[
    ("ABS", 1, 1, Builtin::Abs),
    ("LENGTH", 1, 1, Builtin::Length),
    ("CONCAT", 0, usize::MAX, Builtin::Concat),
    ("CONCAT_WS", 1, usize::MAX, Builtin::ConcatWs),
    ("LOWER", 1, 1, Builtin::Lower),
    ("UPPER", 1, 1, Builtin::Upper),
    ("TRIM", 1, 1, Builtin::Trim),
    ("LEFT", 2, 2, Builtin::Left),
    ("RIGHT", 2, 2, Builtin::Right),
    ("SUBSTRING", 2, 2, Builtin::Substring),
    ("SUBSTRING", 3, 3, Builtin::SubstringLen),
    ("INT", 1, 1, Builtin::Int),
    ("BOOL", 1, 1, Builtin::Bool),
    ("STRING", 1, 1, Builtin::String),
    ("IS_INT", 1, 1, Builtin::IsInt),
    ("IS_BOOL", 1, 1, Builtin::IsBool),
];

impl Builtin {
    /// The built-in called `name` (in any case) that takes `arity` arguments.
    pub(crate) fn resolve(name: &str, arity: usize) -> Option<Builtin> {
        TABLE
            .iter()
            .find(|(n, min, max, _)| n.eq_ignore_ascii_case(name) && (*min..=*max).contains(&arity))
            .map(|entry| entry.3)
    }

    /// The function's return type.
    pub(crate) fn return_type(self) -> Type {
        match self {
            Builtin::Abs | Builtin::Length | Builtin::Int => Type::Integer,
            Builtin::Bool | Builtin::IsInt | Builtin::IsBool => Type::Boolean,
            _ => Type::String,
        }
    }

    /// Why a call to `name` with `arity` arguments cannot be dispatched.
    pub(crate) fn missing_message(name: &str, arity: usize) -> String {
        let arities: Vec<String> = TABLE
            .iter()
            .filter(|(n, ..)| n.eq_ignore_ascii_case(name))
            .map(|(_, min, max, _)| match (*min, *max) {
                (min, usize::MAX) => format!("at least {min}"),
                (min, max) if min == max => min.to_string(),
                (min, max) => format!("{min} to {max}"),
            })
            .collect();
        let upper = name.to_ascii_uppercase();
        if arities.is_empty() {
            format!("there is no function {upper}")
        } else {
            format!(
                "{upper} takes {} argument(s), not {arity}",
                arities.join(" or ")
            )
        }
    }
}
