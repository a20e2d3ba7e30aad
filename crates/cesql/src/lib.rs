//! CloudEvents SQL (CESQL 1.0): parse an expression once, evaluate it against many events.
//!
//! ```
//! use std::collections::BTreeMap;
//! use cesql::Value;
//!
//! let filter = cesql::parse("type LIKE '%.created' AND count > 2").unwrap();
//! filter.check_predicate().unwrap();
//! let mut event = BTreeMap::new();
//! event.insert("type".to_string(), Value::String("com.example.created".into()));
//! event.insert("count".to_string(), Value::Integer(3));
//! assert!(filter.matches(&event));
//!
//! // Complete evaluation: the value and every error raised on the way.
//! let (value, errors) = cesql::parse("count / 0").unwrap().evaluate(&event);
//! assert_eq!(value, Value::Integer(0));
//! assert_eq!(errors[0].kind(), cesql::ErrorKind::Math);
//! ```
//!
//! [`parse`] turns the text into an [`Expression`]; [`Expression::evaluate`] returns the value
//! (Boolean, Integer or String) together with every error raised on the way, as the spec
//! requires; [`Expression::matches`] is the filter form: `true` only for Boolean TRUE with no
//! error, computed without allocating for string attributes.
//!
//! # Language
//!
//! - Literals: `TRUE`/`FALSE`, 32-bit integers (`-2147483648` to `2147483647`, optionally
//!   signed), and strings in `'…'` or `"…"`. Inside a string the delimiter is written `\'` (or
//!   `\"`) or doubled (`''`); any other backslash stays as it is, so that LIKE patterns can use
//!   `\%` and `\_`.
//! - Identifiers name context attributes and extensions (`[a-zA-Z0-9]+`, looked up in lower
//!   case). Keywords and function names are case-insensitive.
//! - Operators, by decreasing precedence (equal precedence evaluates left to right, as §3.6 of
//!   the spec says): function calls; unary `NOT` and `-`; `[NOT] LIKE 'pattern'`; `EXISTS
//!   name`; `[NOT] IN (…)`; `*` `/` `%`; `+` `-`; `=` `!=` `<>` `<` `<=` `>` `>=`; `AND` `OR`
//!   `XOR`. Two consequences differ from most SQL dialects: `AND`, `OR` and `XOR` share one
//!   level, so `a OR b AND c` is `(a OR b) AND c`; and `NOT` binds tighter than comparisons, so
//!   `NOT a = b` is `(NOT a) = b` (write `NOT (a = b)` or `a != b`). Parentheses make intent
//!   explicit.
//! - Built-in functions: `ABS`, `LENGTH`, `CONCAT`, `CONCAT_WS`, `LOWER`, `UPPER`, `TRIM`,
//!   `LEFT`, `RIGHT`, `SUBSTRING` (2 and 3 arguments), and the casts `INT`, `BOOL`, `STRING`,
//!   `IS_INT`, `IS_BOOL` (`IS_X(x)` is TRUE when `X(x)` succeeds).
//!
//! # Types and errors
//!
//! Operators cast their operands implicitly as §3.7 of the spec says: `x = y` casts `x` to the
//! type of `y`, `x IN (…)` casts the elements to the type of `x`, and every other operator casts
//! to the types it is defined on (Integer for arithmetic and ordering, Boolean for the logical
//! operators, String for LIKE). Attributes are Strings, except Boolean and Integer extensions,
//! which keep their type. The implicit cast from
//! Integer to Boolean is refused with a cast error (as the conformance suite expects of
//! `NOT 10`); the explicit `BOOL(10)` performs it. An operator that raises an error returns its
//! defined result (for example `0` for a division by zero) with the error; every operator above
//! an erroneous operand returns the zero value of its own type (`FALSE`, `0` or `''`) without
//! evaluating further, and a missing attribute is such an error. `AND` and `OR` short-circuit.
//!
//! Limits: an expression is at most [`MAX_EXPRESSION_LEN`] bytes long and nests at most
//! [`MAX_DEPTH`] levels deep; longer or deeper input is a parse error, never a crash.

mod ast;
mod eval;
mod functions;
mod lexer;
mod like;
mod parser;
mod value;

use std::fmt;
use std::str::FromStr;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

pub use ast::Type;

/// An attribute's value as CESQL sees it: Boolean and Integer attributes keep their type;
/// every other CloudEvents type (URI, timestamp, binary…) is seen as its canonical string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttrValue<'a> {
    /// A Boolean attribute.
    Boolean(bool),
    /// An Integer attribute.
    Integer(i32),
    /// Any other attribute, as its canonical string.
    String(Cow<'a, str>),
}

/// What an expression is evaluated against: the context attributes and extensions of one
/// CloudEvent. Implement it for your event type; maps of [`Value`]s implement it already.
pub trait Event {
    /// The attribute `name` (lower case, as CloudEvents names attributes), or `None` when the
    /// event does not have it.
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>>;
}

impl Value {
    fn as_attr(&self) -> AttrValue<'_> {
        match self {
            Value::Boolean(b) => AttrValue::Boolean(*b),
            Value::Integer(i) => AttrValue::Integer(*i),
            Value::String(s) => AttrValue::String(Cow::Borrowed(s)),
        }
    }
}

impl Event for BTreeMap<String, Value> {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        self.get(name).map(Value::as_attr)
    }
}

impl<S: std::hash::BuildHasher> Event for HashMap<String, Value, S> {
    fn attribute(&self, name: &str) -> Option<AttrValue<'_>> {
        self.get(name).map(Value::as_attr)
    }
}

/// The deepest nesting of operators, function calls and parentheses an expression may have.
pub const MAX_DEPTH: usize = 64;

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 64 * 1024;

/// Parses a CESQL expression.
///
/// Unknown functions (and known functions called with the wrong number of arguments) are not a
/// parse error: the spec makes them a *missing function* error at evaluation, and
/// [`Expression::check_predicate`] reports them before any event is seen.
pub fn parse(input: &str) -> Result<Expression, CesqlError> {
    parse_with(input, Limits::default())
}

/// Limits a parse enforces, for services that accept expressions from untrusted clients and
/// want tighter bounds than the built-in ones ([`MAX_DEPTH`], [`MAX_EXPRESSION_LEN`], which
/// are also the highest values these may take).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting of operators, function calls and parentheses.
    pub max_depth: usize,
    /// Longest expression, in bytes.
    pub max_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: MAX_DEPTH,
            max_len: MAX_EXPRESSION_LEN,
        }
    }
}

/// Parses a CESQL expression within `limits` (each capped at the built-in limit).
///
/// ```
/// let tight = cesql::Limits { max_depth: 2, max_len: 100 };
/// assert!(cesql::parse_with("a = 1", tight).is_ok());
/// assert!(cesql::parse_with("NOT NOT NOT (a = 1)", tight).is_err());
/// assert!(cesql::parse_with(&"a = 1 OR ".repeat(20), tight).is_err());
/// ```
pub fn parse_with(input: &str, limits: Limits) -> Result<Expression, CesqlError> {
    let limits = Limits {
        max_depth: limits.max_depth.min(MAX_DEPTH),
        max_len: limits.max_len.min(MAX_EXPRESSION_LEN),
    };
    let root = parser::parse(input, limits)?;
    Ok(Expression {
        root,
        source: input.into(),
    })
}

/// A parsed CESQL expression. Immutable; cheap to evaluate against any number of events from
/// any number of threads.
#[derive(Debug, Clone)]
pub struct Expression {
    /// The syntax tree, with LIKE patterns compiled and functions resolved.
    root: ast::Node,
    /// The text it was parsed from, for positions in error messages and for display.
    source: Box<str>,
}

impl Expression {
    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the expression against `event` ("complete evaluation mode"): the value, and
    /// every error raised, in the order they were raised. The value is meaningful even when
    /// errors are returned (the spec defines one for every error).
    pub fn evaluate(&self, event: &dyn Event) -> (Value, Vec<CesqlError>) {
        let mut errors = Vec::new();
        let value = eval::evaluate(&self.root, event, &self.source, Some(&mut errors));
        (value.into_value(), errors)
    }

    /// Whether `event` passes the expression used as a filter: the value is Boolean TRUE and no
    /// error was raised (CESQL §1.2). Allocates nothing for string, Boolean and Integer
    /// attributes unless a function builds a new string.
    pub fn matches(&self, event: &dyn Event) -> bool {
        eval::matches(&self.root, event, &self.source)
    }

    /// The checks a filter needs before any event is seen: every function call can be
    /// dispatched, and the expression can yield a Boolean (an expression whose type is known to
    /// be Integer or String could never match). The error carries the position of the problem.
    pub fn check_predicate(&self) -> Result<(), CesqlError> {
        if let Some((pos, message)) = self.root.find_missing_function() {
            return Err(CesqlError::new(
                ErrorKind::MissingFunction,
                Position::locate(&self.source, pos),
                message,
            ));
        }
        match self.root.static_type() {
            Some(ty) if ty != Type::Boolean => Err(CesqlError::new(
                ErrorKind::Generic,
                Position::locate(&self.source, 0),
                format!("a filter must yield a Boolean, but this expression yields {ty}"),
            )),
            _ => Ok(()),
        }
    }

    /// The type the expression yields whatever the event, when it can be told without one
    /// (attributes and their casts can only be known per event).
    pub fn static_type(&self) -> Option<Type> {
        self.root.static_type()
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl FromStr for Expression {
    type Err = CesqlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// A CESQL value: the result of an evaluation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Value {
    /// A Boolean.
    Boolean(bool),
    /// A signed 32-bit integer.
    Integer(i32),
    /// A string of Unicode characters.
    String(String),
}

impl Value {
    /// The value's type.
    pub fn type_of(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{}", if *b { "TRUE" } else { "FALSE" }),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => write!(f, "'{}'", s.replace('\'', "\\'")),
        }
    }
}

/// The kinds of error the spec defines (CESQL §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The text is not a valid expression.
    Parse,
    /// A math operation failed: division by zero or overflow.
    Math,
    /// A value could not be cast to the type an operator or function needs.
    Cast,
    /// The expression names an attribute the event does not have.
    MissingAttribute,
    /// No function of that name takes that many arguments.
    MissingFunction,
    /// A function was called with arguments outside its domain.
    FunctionEvaluation,
    /// Any other error.
    Generic,
}

impl ErrorKind {
    /// The name the spec's conformance suite uses for this kind (`parse`, `math`, `cast`,
    /// `missingAttribute`, `missingFunction`, `functionEvaluation`, `generic`).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::Generic => "generic",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Parse => "parse error",
            ErrorKind::Math => "math error",
            ErrorKind::Cast => "cast error",
            ErrorKind::MissingAttribute => "missing attribute",
            ErrorKind::MissingFunction => "missing function",
            ErrorKind::FunctionEvaluation => "function evaluation error",
            ErrorKind::Generic => "error",
        })
    }
}

/// A place in the expression text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// Characters before this place (0-based).
    pub offset: usize,
    /// The line (1-based).
    pub line: usize,
    /// The column, in characters (1-based).
    pub column: usize,
}

impl Position {
    /// The position of the byte offset `byte` in `source`.
    pub(crate) fn locate(source: &str, byte: usize) -> Position {
        let byte = byte.min(source.len());
        let before = source.get(..byte).unwrap_or(source);
        let mut position = Position {
            offset: 0,
            line: 1,
            column: 1,
        };
        for c in before.chars() {
            position.offset += 1;
            if c == '\n' {
                position.line += 1;
                position.column = 1;
            } else {
                position.column += 1;
            }
        }
        position
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// An error from parsing or evaluating an expression: what went wrong and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} at {position}: {message}")]
pub struct CesqlError {
    /// The spec's kind of error.
    kind: ErrorKind,
    /// Where in the expression it happened.
    position: Position,
    /// What happened, in a sentence.
    message: String,
}

impl CesqlError {
    pub(crate) fn new(kind: ErrorKind, position: Position, message: String) -> Self {
        CesqlError {
            kind,
            position,
            message,
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where in the expression the error happened.
    pub fn position(&self) -> Position {
        self.position
    }

    /// What happened, without the kind and position.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests;
