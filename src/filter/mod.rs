//! Subscription filters: the CloudEvents Subscriptions API filter dialects, CESQL included.
//!
//! **Boundary: pure.** This module does no I/O and knows no wire types (no tonic, no prost, no
//! NATS). The gRPC layer converts the `Filter` message into a [`FilterSpec`] by hand; this
//! module validates it once with [`Filter::compile`] (errors name the offending field and, for
//! CESQL, the position in the expression) and then answers [`Filter::matches`] for every event
//! on the delivery path, allocating nothing for `exact`, `prefix` and `suffix`.
//!
//! # Semantics
//!
//! - `exact`, `prefix`, `suffix`: maps of attribute name to value; every entry must match the
//!   attribute's canonical string form (CloudEvents §"Type System"), case-sensitively. Names must
//!   be valid attribute names; names and values must not be empty; the map must not be empty.
//! - `all`, `any`: at least one nested filter; `not`: exactly one.
//! - A filter on an attribute the event lacks does not match (so `not` of it does).
//! - `sql`: a [CESQL](cesql) expression; it matches only when it yields Boolean TRUE without
//!   error. Expressions that could never match (an unknown function, a result type known not to
//!   be Boolean) are refused at compile time.
//! - Nesting is limited to [`MAX_DEPTH`] levels, for the dialect tree and inside CESQL alike.

mod attr;
/// CloudEvents SQL, from the `cesql` crate of this workspace.
pub use ::cesql;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::event::Event;
use attr::{is_valid_attribute_name, AttrName, Canonical};

/// An event as CESQL sees it (a wrapper: the event type is the client crate's).
struct CesqlEvent<'a>(&'a Event);

/// How CESQL sees an event: required attributes are strings, Boolean and Integer extensions
/// keep their type, every other type is its canonical string.
impl cesql::Event for CesqlEvent<'_> {
    fn attribute(&self, name: &str) -> Option<cesql::AttrValue<'_>> {
        use crate::event::{AttributeRef, AttributeValue};
        use cesql::AttrValue;
        use std::borrow::Cow;
        let event = self.0;
        let found = match name {
            "id" => AttributeRef::String(&event.id),
            "source" => AttributeRef::String(&event.source),
            "specversion" => AttributeRef::String(&event.spec_version),
            "type" => AttributeRef::String(&event.ty),
            _ => event.attribute(name)?,
        };
        Some(match found {
            AttributeRef::String(s) => AttrValue::String(Cow::Borrowed(s)),
            AttributeRef::Typed(AttributeValue::Boolean(b)) => AttrValue::Boolean(*b),
            AttributeRef::Typed(AttributeValue::Integer(i)) => AttrValue::Integer(*i),
            AttributeRef::Typed(
                AttributeValue::String(s) | AttributeValue::Uri(s) | AttributeValue::UriRef(s),
            ) => AttrValue::String(Cow::Borrowed(s)),
            AttributeRef::Typed(other) => {
                AttrValue::String(Cow::Owned(other.to_canonical_string()))
            }
        })
    }
}

/// The deepest nesting of `all`, `any` and `not` a filter may have (CESQL expressions have
/// their own, equal limit: [`cesql::MAX_DEPTH`]).
pub const MAX_DEPTH: usize = 64;

/// Bounds on a filter from an untrusted client; [`FilterLimits::default`] is the built-in
/// maximum of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterLimits {
    /// Deepest nesting of `all`/`any`/`not`, and of operators inside a CESQL expression.
    pub max_depth: usize,
    /// Terms in the whole filter: each attribute of `exact`/`prefix`/`suffix`, each
    /// `all`/`any`/`not` node and each CESQL expression.
    pub max_terms: usize,
    /// Longest CESQL expression, in bytes.
    pub max_expression_bytes: usize,
}

impl Default for FilterLimits {
    fn default() -> Self {
        FilterLimits {
            max_depth: MAX_DEPTH,
            max_terms: usize::MAX,
            max_expression_bytes: cesql::MAX_EXPRESSION_LEN,
        }
    }
}

/// A filter as a subscriber states it: the domain form of the gRPC `Filter` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterSpec {
    /// Every attribute named equals its value.
    Exact(BTreeMap<String, String>),
    /// Every attribute named starts with its value.
    Prefix(BTreeMap<String, String>),
    /// Every attribute named ends with its value.
    Suffix(BTreeMap<String, String>),
    /// Every nested filter matches.
    All(Vec<FilterSpec>),
    /// At least one nested filter matches.
    Any(Vec<FilterSpec>),
    /// The nested filter does not match.
    Not(Box<FilterSpec>),
    /// A CESQL 1.0 expression that yields TRUE.
    Sql(String),
}

/// A compiled filter. Cheap to clone (the compiled tree is shared) and safe to use from any
/// number of threads.
#[derive(Debug, Clone)]
pub struct Filter {
    root: Arc<Node>,
}

/// The compiled form of one [`FilterSpec`].
#[derive(Debug)]
enum Node {
    /// Matches every event.
    MatchAll,
    Exact(Box<[Clause]>),
    Prefix(Box<[Clause]>),
    Suffix(Box<[Clause]>),
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Not(Box<Node>),
    Sql(cesql::Expression),
}

/// One `name: value` entry of `exact`, `prefix` or `suffix`.
#[derive(Debug)]
struct Clause {
    attr: AttrName,
    value: Box<str>,
}

impl Filter {
    /// Validates and compiles a filter.
    pub fn compile(spec: &FilterSpec) -> Result<Filter, FilterError> {
        Filter::compile_with(spec, FilterLimits::default())
    }

    /// Validates and compiles a filter within `limits` (each capped at the built-in limit).
    pub fn compile_with(spec: &FilterSpec, limits: FilterLimits) -> Result<Filter, FilterError> {
        let mut cx = Compile {
            path: Vec::new(),
            terms: 0,
            limits: FilterLimits {
                max_depth: limits.max_depth.min(MAX_DEPTH),
                max_terms: limits.max_terms,
                max_expression_bytes: limits.max_expression_bytes.min(cesql::MAX_EXPRESSION_LEN),
            },
        };
        let root = compile_node(spec, &mut cx, 1)?;
        Ok(Filter {
            root: Arc::new(root),
        })
    }

    /// The filter that matches every event (a subscription without a filter).
    pub fn match_all() -> Filter {
        Filter {
            root: Arc::new(Node::MatchAll),
        }
    }

    /// Whether this filter matches every event without looking at it.
    pub fn is_match_all(&self) -> bool {
        matches!(*self.root, Node::MatchAll)
    }

    /// Whether `event` passes the filter.
    pub fn matches(&self, event: &Event) -> bool {
        self.root.matches(event)
    }
}

impl Default for Filter {
    fn default() -> Self {
        Filter::match_all()
    }
}

impl Node {
    fn matches(&self, event: &Event) -> bool {
        match self {
            Node::MatchAll => true,
            Node::Exact(clauses) => clauses.iter().all(|c| {
                c.attr
                    .lookup(event)
                    .is_some_and(|a| Canonical::of(a).equals(&c.value))
            }),
            Node::Prefix(clauses) => clauses.iter().all(|c| {
                c.attr
                    .lookup(event)
                    .is_some_and(|a| Canonical::of(a).starts_with(&c.value))
            }),
            Node::Suffix(clauses) => clauses.iter().all(|c| {
                c.attr
                    .lookup(event)
                    .is_some_and(|a| Canonical::of(a).ends_with(&c.value))
            }),
            Node::All(nodes) => nodes.iter().all(|n| n.matches(event)),
            Node::Any(nodes) => nodes.iter().any(|n| n.matches(event)),
            Node::Not(node) => !node.matches(event),
            Node::Sql(expression) => expression.matches(&CesqlEvent(event)),
        }
    }
}

/// One step of the path to a field of the filter, for error messages.
#[derive(Debug, Clone, Copy)]
enum Step {
    Field(&'static str),
    Index(usize),
}

/// The state of one compilation: where it is (for errors) and the terms counted so far.
struct Compile {
    path: Vec<Step>,
    terms: usize,
    limits: FilterLimits,
}

impl Compile {
    fn count(&mut self, terms: usize) -> Result<(), FilterError> {
        self.terms = self.terms.saturating_add(terms);
        if self.terms > self.limits.max_terms {
            return Err(FilterError::new(
                &self.path,
                FilterErrorKind::TooManyTerms {
                    max: self.limits.max_terms,
                },
            ));
        }
        Ok(())
    }
}

fn compile_node(spec: &FilterSpec, cx: &mut Compile, depth: usize) -> Result<Node, FilterError> {
    if depth > cx.limits.max_depth {
        return Err(FilterError::new(
            &cx.path,
            FilterErrorKind::TooDeep {
                max: cx.limits.max_depth,
            },
        ));
    }
    let field = match spec {
        FilterSpec::Exact(_) => "exact",
        FilterSpec::Prefix(_) => "prefix",
        FilterSpec::Suffix(_) => "suffix",
        FilterSpec::All(_) => "all",
        FilterSpec::Any(_) => "any",
        FilterSpec::Not(_) => "not",
        FilterSpec::Sql(_) => "sql",
    };
    cx.path.push(Step::Field(field));
    let node = compile_inner(spec, field, cx, depth);
    cx.path.pop();
    node
}

fn compile_inner(
    spec: &FilterSpec,
    field: &'static str,
    cx: &mut Compile,
    depth: usize,
) -> Result<Node, FilterError> {
    match spec {
        FilterSpec::Exact(map) | FilterSpec::Prefix(map) | FilterSpec::Suffix(map) => {
            cx.count(map.len().max(1))?;
            let clauses = clauses(field, map, &cx.path)?;
            Ok(match spec {
                FilterSpec::Exact(_) => Node::Exact(clauses),
                FilterSpec::Prefix(_) => Node::Prefix(clauses),
                _ => Node::Suffix(clauses),
            })
        }
        FilterSpec::All(list) => {
            cx.count(1)?;
            nested(field, list, cx, depth).map(Node::All)
        }
        FilterSpec::Any(list) => {
            cx.count(1)?;
            nested(field, list, cx, depth).map(Node::Any)
        }
        FilterSpec::Not(inner) => {
            cx.count(1)?;
            compile_node(inner, cx, depth + 1).map(|n| Node::Not(Box::new(n)))
        }
        FilterSpec::Sql(text) => {
            cx.count(1)?;
            if text.len() > cx.limits.max_expression_bytes {
                return Err(FilterError::new(
                    &cx.path,
                    FilterErrorKind::ExpressionTooLong {
                        len: text.len(),
                        max: cx.limits.max_expression_bytes,
                    },
                ));
            }
            let limits = cesql::Limits {
                max_depth: cx.limits.max_depth,
                max_len: cx.limits.max_expression_bytes,
            };
            cesql::parse_with(text, limits)
                .and_then(|e| e.check_predicate().map(|()| e))
                .map(Node::Sql)
                .map_err(|e| FilterError::new(&cx.path, FilterErrorKind::Sql(e)))
        }
    }
}

fn clauses(
    dialect: &'static str,
    map: &BTreeMap<String, String>,
    path: &[Step],
) -> Result<Box<[Clause]>, FilterError> {
    if map.is_empty() {
        return Err(FilterError::new(
            path,
            FilterErrorKind::EmptyMap { dialect },
        ));
    }
    map.iter()
        .map(|(name, value)| {
            if name.is_empty() {
                return Err(FilterError::new(path, FilterErrorKind::EmptyAttributeName));
            }
            if !is_valid_attribute_name(name) {
                let kind = FilterErrorKind::InvalidAttributeName(name.clone());
                return Err(FilterError::new(path, kind));
            }
            if value.is_empty() {
                return Err(FilterError::new(
                    path,
                    FilterErrorKind::EmptyValue(name.clone()),
                ));
            }
            Ok(Clause {
                attr: AttrName::new(name),
                value: value.as_str().into(),
            })
        })
        .collect()
}

fn nested(
    dialect: &'static str,
    list: &[FilterSpec],
    cx: &mut Compile,
    depth: usize,
) -> Result<Box<[Node]>, FilterError> {
    if list.is_empty() {
        return Err(FilterError::new(
            &cx.path,
            FilterErrorKind::EmptyList { dialect },
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, spec)| {
            cx.path.push(Step::Index(i));
            let node = compile_node(spec, cx, depth + 1);
            cx.path.pop();
            node
        })
        .collect()
}

/// Why a filter was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter at `{path}`: {kind}")]
pub struct FilterError {
    /// The offending field, relative to the filter, e.g. `all[1].exact`.
    path: String,
    /// What is wrong with it.
    kind: FilterErrorKind,
}

impl FilterError {
    fn new(path: &[Step], kind: FilterErrorKind) -> Self {
        FilterError {
            path: format_path(path),
            kind,
        }
    }

    /// The offending field's path from the request's `filter` field, e.g.
    /// `filter.all[1].exact`, as a `google.rpc.BadRequest` field violation names it.
    pub fn path(&self) -> String {
        format!("filter.{}", self.path)
    }

    /// What is wrong with the field.
    pub fn kind(&self) -> &FilterErrorKind {
        &self.kind
    }
}

/// What is wrong with a filter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterErrorKind {
    /// An `exact`, `prefix` or `suffix` map has no entry.
    #[error("`{dialect}` names no attribute; give at least one attribute and its value")]
    EmptyMap {
        /// The dialect's field name.
        dialect: &'static str,
    },
    /// An attribute name is the empty string.
    #[error("an attribute name is empty")]
    EmptyAttributeName,
    /// An attribute name breaks the CloudEvents naming rules, so no event can have it.
    #[error(
        "`{0}` is not a CloudEvents attribute name (lower-case letters a-z and digits 0-9 only)"
    )]
    InvalidAttributeName(String),
    /// The value to compare an attribute with is the empty string.
    #[error("the value for attribute `{0}` is empty")]
    EmptyValue(String),
    /// An `all` or `any` list has no filter in it.
    #[error("`{dialect}` needs at least one nested filter")]
    EmptyList {
        /// The dialect's field name.
        dialect: &'static str,
    },
    /// Filters are nested deeper than the limit (at most [`MAX_DEPTH`]).
    #[error("filters are nested more than {max} levels deep")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The filter has more terms than the limit.
    #[error("the filter has more than {max} terms (attributes, nested filters, expressions)")]
    TooManyTerms {
        /// The limit.
        max: usize,
    },
    /// A CESQL expression is longer than the limit.
    #[error("the expression is {len} bytes long; the limit is {max}")]
    ExpressionTooLong {
        /// The expression's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The CESQL expression does not parse, or could never match.
    #[error("{0}")]
    Sql(#[source] cesql::CesqlError),
}

fn format_path(path: &[Step]) -> String {
    #[derive(Debug)]
    struct Path<'a>(&'a [Step]);
    impl fmt::Display for Path<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for (i, step) in self.0.iter().enumerate() {
                match step {
                    Step::Field(name) if i == 0 => f.write_str(name)?,
                    Step::Field(name) => write!(f, ".{name}")?,
                    Step::Index(index) => write!(f, "[{index}]")?,
                }
            }
            Ok(())
        }
    }
    Path(path).to_string()
}

#[cfg(test)]
mod tests;
