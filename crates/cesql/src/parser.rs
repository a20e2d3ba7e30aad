//! A recursive-descent parser with one function per precedence level (CESQL §3.6).
//!
//! Recursion only happens where the input nests (parentheses, unary operators, function
//! arguments, `IN` sets), and each nesting is counted against the depth limit (at most [`super::MAX_DEPTH`]); the depth of the
//! tree built is checked against the same limit, so neither parsing nor evaluation can run out
//! of stack on any input.

use super::ast::{AttrName, BinOp, Builtin, Call, Chain, In, Like, Link, Lit, Node};
use super::lexer::{error, tokenize, Tok, Token};
use super::like::LikePattern;
use super::{CesqlError, Limits, Position};

/// The reserved words (case-insensitive).
const KEYWORDS: &[&str] = &[
    "AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS", "TRUE", "FALSE",
];

/// Parses a whole expression.
pub(crate) fn parse(src: &str, limits: Limits) -> Result<Node, CesqlError> {
    if src.len() > limits.max_len {
        return Err(error(
            src,
            0,
            format!(
                "the expression is {} bytes long; the limit is {}",
                src.len(),
                limits.max_len
            ),
        ));
    }
    let mut parser = Parser {
        src,
        tokens: tokenize(src)?,
        next: 0,
        nesting: 0,
        max_depth: limits.max_depth,
    };
    let parsed = parser.expression()?;
    match parser.peek() {
        Tok::Eof => Ok(parsed.node),
        other => Err(parser.error_here(format!(
            "expected an operator or the end of the expression, found {other}"
        ))),
    }
}

/// A node and the depth of the tree under it (a leaf has depth 1).
#[derive(Debug)]
struct Parsed {
    node: Node,
    depth: usize,
}

/// The parser's state.
#[derive(Debug)]
struct Parser<'s> {
    src: &'s str,
    tokens: Vec<Token<'s>>,
    /// The index of the next token.
    next: usize,
    /// How many nested constructs enclose the current position.
    nesting: usize,
    max_depth: usize,
}

impl<'s> Parser<'s> {
    fn peek(&self) -> &Tok<'s> {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Tok<'s> {
        self.tokens
            .get(self.next + ahead)
            .map_or(&Tok::Eof, |t| &t.tok)
    }

    /// The byte offset of the next token.
    fn here(&self) -> usize {
        self.tokens
            .get(self.next)
            .map_or(self.src.len(), |t| t.start)
    }

    /// Consumes the next token, returning its byte offset.
    fn bump(&mut self) -> usize {
        let at = self.here();
        if self.next < self.tokens.len() {
            self.next += 1;
        }
        at
    }

    /// Consumes the next token, returning it.
    fn take(&mut self) -> Tok<'s> {
        let tok = self
            .tokens
            .get_mut(self.next)
            .map_or(Tok::Eof, |t| std::mem::replace(&mut t.tok, Tok::Eof));
        self.bump();
        tok
    }

    fn error_at(&self, at: usize, message: String) -> CesqlError {
        error(self.src, at, message)
    }

    fn error_here(&self, message: String) -> CesqlError {
        self.error_at(self.here(), message)
    }

    /// Whether the token `ahead` of the next one is the keyword `kw`.
    fn keyword_at(&self, ahead: usize, kw: &str) -> bool {
        matches!(self.peek_at(ahead), Tok::Word(w) if w.eq_ignore_ascii_case(kw))
    }

    /// Enters a nested construct.
    fn enter(&mut self) -> Result<(), CesqlError> {
        self.nesting += 1;
        if self.nesting > self.max_depth {
            return Err(self.error_here(format!(
                "the expression nests more than {} levels deep",
                self.max_depth
            )));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    /// Wraps a node built at `at` over children of depth `children`.
    fn node(&self, node: Node, children: usize, at: usize) -> Result<Parsed, CesqlError> {
        let depth = children + 1;
        if depth > self.max_depth {
            return Err(self.error_at(
                at,
                format!(
                    "the expression nests more than {} operators deep",
                    self.max_depth
                ),
            ));
        }
        Ok(Parsed { node, depth })
    }

    fn expect(
        &mut self,
        want: &Tok<'_>,
        context: impl FnOnce() -> String,
    ) -> Result<(), CesqlError> {
        if self.peek() == want {
            self.bump();
            Ok(())
        } else {
            let found = self.peek().to_string();
            Err(self.error_here(format!("expected {want} {}, found {found}", context())))
        }
    }

    /// `expression ::= comparison ((AND | OR | XOR) comparison)*`
    fn expression(&mut self) -> Result<Parsed, CesqlError> {
        self.chain(Self::comparison, |tok| match tok {
            Tok::Word(w) if w.eq_ignore_ascii_case("AND") => Some(BinOp::And),
            Tok::Word(w) if w.eq_ignore_ascii_case("OR") => Some(BinOp::Or),
            Tok::Word(w) if w.eq_ignore_ascii_case("XOR") => Some(BinOp::Xor),
            _ => None,
        })
    }

    fn comparison(&mut self) -> Result<Parsed, CesqlError> {
        self.chain(Self::additive, |tok| match tok {
            Tok::Eq => Some(BinOp::Eq),
            Tok::NotEq | Tok::LtGt => Some(BinOp::NotEq),
            Tok::Lt => Some(BinOp::Lt),
            Tok::Le => Some(BinOp::Le),
            Tok::Gt => Some(BinOp::Gt),
            Tok::Ge => Some(BinOp::Ge),
            _ => None,
        })
    }

    fn additive(&mut self) -> Result<Parsed, CesqlError> {
        self.chain(Self::multiplicative, |tok| match tok {
            Tok::Plus => Some(BinOp::Add),
            Tok::Minus => Some(BinOp::Sub),
            _ => None,
        })
    }

    fn multiplicative(&mut self) -> Result<Parsed, CesqlError> {
        self.chain(Self::membership, |tok| match tok {
            Tok::Star => Some(BinOp::Mul),
            Tok::Slash => Some(BinOp::Div),
            Tok::Percent => Some(BinOp::Mod),
            _ => None,
        })
    }

    /// One precedence level of left-associative binary operators.
    fn chain(
        &mut self,
        operand: fn(&mut Self) -> Result<Parsed, CesqlError>,
        operator: fn(&Tok<'_>) -> Option<BinOp>,
    ) -> Result<Parsed, CesqlError> {
        let first = operand(self)?;
        let mut links = Vec::new();
        let mut depth = first.depth;
        let mut at = self.here();
        while let Some(op) = operator(self.peek()) {
            let pos = self.bump();
            if links.is_empty() {
                at = pos;
            }
            let rhs = operand(self)?;
            depth = depth.max(rhs.depth);
            links.push(Link {
                op,
                pos,
                rhs: rhs.node,
            });
        }
        if links.is_empty() {
            return Ok(first);
        }
        let chain = Chain {
            first: first.node,
            links: links.into_boxed_slice(),
        };
        self.node(Node::Chain(Box::new(chain)), depth, at)
    }

    /// `membership ::= pattern ([NOT] IN "(" expression ("," expression)* ")")*`
    fn membership(&mut self) -> Result<Parsed, CesqlError> {
        let mut operand = self.pattern()?;
        loop {
            let negated = if self.keyword_at(0, "NOT") && self.keyword_at(1, "IN") {
                self.bump();
                true
            } else if self.keyword_at(0, "IN") {
                false
            } else {
                return Ok(operand);
            };
            let pos = self.bump();
            self.expect(&Tok::LParen, || "after IN".to_owned())?;
            self.enter()?;
            let mut set = Vec::new();
            let mut depth = operand.depth;
            loop {
                let element = self.expression()?;
                depth = depth.max(element.depth);
                set.push(element.node);
                match self.peek() {
                    Tok::Comma => {
                        self.bump();
                    }
                    Tok::RParen => {
                        self.bump();
                        break;
                    }
                    other => {
                        let found = other.to_string();
                        return Err(self.error_here(format!(
                            "expected `,` or `)` in the IN set, found {found}"
                        )));
                    }
                }
            }
            self.leave();
            let node = Node::In(Box::new(In {
                operand: operand.node,
                set: set.into_boxed_slice(),
                negated,
                pos,
            }));
            operand = self.node(node, depth, pos)?;
        }
    }

    /// `pattern ::= unary ([NOT] LIKE string-literal)*`
    fn pattern(&mut self) -> Result<Parsed, CesqlError> {
        let mut operand = self.unary()?;
        loop {
            let negated = if self.keyword_at(0, "NOT") && self.keyword_at(1, "LIKE") {
                self.bump();
                true
            } else if self.keyword_at(0, "LIKE") {
                false
            } else {
                return Ok(operand);
            };
            let pos = self.bump();
            let pattern = match self.take() {
                Tok::Str(pattern) => LikePattern::compile(&pattern),
                other => {
                    return Err(self.error_at(
                        self.tokens.get(self.next - 1).map_or(pos, |t| t.start),
                        format!("LIKE needs a string literal as its pattern, found {other}"),
                    ))
                }
            };
            let node = Node::Like(Box::new(Like {
                operand: operand.node,
                pattern,
                negated,
            }));
            operand = self.node(node, operand.depth, pos)?;
        }
    }

    /// `unary ::= NOT unary | "-" unary | ["+" | "-"] integer | primary`
    fn unary(&mut self) -> Result<Parsed, CesqlError> {
        match self.peek() {
            Tok::Word(w) if w.eq_ignore_ascii_case("NOT") => {
                let pos = self.bump();
                self.enter()?;
                let operand = self.unary()?;
                self.leave();
                self.node(Node::Not(Box::new(operand.node), pos), operand.depth, pos)
            }
            Tok::Minus | Tok::Plus => {
                let negative = matches!(self.peek(), Tok::Minus);
                if let Tok::Int(digits) = *self.peek_at(1) {
                    let pos = self.bump();
                    self.bump();
                    return self.integer(digits, negative, pos);
                }
                if !negative {
                    return Err(self
                        .error_here("`+` can only be the sign of an integer literal".to_owned()));
                }
                let pos = self.bump();
                self.enter()?;
                let operand = self.unary()?;
                self.leave();
                self.node(Node::Neg(Box::new(operand.node), pos), operand.depth, pos)
            }
            _ => self.primary(),
        }
    }

    /// An integer literal, range-checked after its sign is applied.
    fn integer(&self, digits: &str, negative: bool, at: usize) -> Result<Parsed, CesqlError> {
        let value = digits
            .parse::<i64>()
            .ok()
            .map(|v| if negative { -v } else { v })
            .and_then(|v| i32::try_from(v).ok());
        match value {
            Some(v) => Ok(Parsed {
                node: Node::Lit(Lit::Int(v)),
                depth: 1,
            }),
            None => Err(self.error_at(
                at,
                format!(
                    "the integer literal {}{digits} is outside the 32-bit range",
                    if negative { "-" } else { "" }
                ),
            )),
        }
    }

    /// Literals, parenthesised expressions, `EXISTS`, function calls and attributes.
    fn primary(&mut self) -> Result<Parsed, CesqlError> {
        let at = self.here();
        let leaf = |node| Ok(Parsed { node, depth: 1 });
        match self.peek() {
            Tok::Int(digits) => {
                let digits = *digits;
                self.bump();
                self.integer(digits, false, at)
            }
            Tok::Str(_) => match self.take() {
                Tok::Str(s) => leaf(Node::Lit(Lit::Str(s.into_boxed_str()))),
                _ => Err(self.error_at(at, "expected a string literal".to_owned())),
            },
            Tok::LParen => {
                self.bump();
                self.enter()?;
                let inner = self.expression()?;
                let open = Position::locate(self.src, at);
                self.expect(&Tok::RParen, || format!("to close the `(` at {open}"))?;
                self.leave();
                Ok(inner)
            }
            Tok::Word(word) => {
                let word = *word;
                if word.eq_ignore_ascii_case("TRUE") || word.eq_ignore_ascii_case("FALSE") {
                    self.bump();
                    return leaf(Node::Lit(Lit::Bool(word.eq_ignore_ascii_case("TRUE"))));
                }
                if word.eq_ignore_ascii_case("EXISTS") {
                    self.bump();
                    return self.exists();
                }
                if is_keyword(word) {
                    return Err(self.error_here(format!(
                        "expected an expression, found the keyword {}",
                        word.to_ascii_uppercase()
                    )));
                }
                if matches!(self.peek_at(1), Tok::LParen) {
                    return self.call(word);
                }
                self.bump();
                leaf(Node::Attr(self.attribute(word, at)?, at))
            }
            other => {
                let found = other.to_string();
                Err(self.error_here(format!("expected an expression, found {found}")))
            }
        }
    }

    /// The attribute named by `EXISTS`.
    fn exists(&mut self) -> Result<Parsed, CesqlError> {
        let at = self.here();
        let name = match *self.peek() {
            Tok::Word(w) if !is_keyword(w) => self.attribute(w, at)?,
            Tok::Int(digits) => AttrName::new(digits),
            ref other => {
                let found = other.to_string();
                return Err(
                    self.error_here(format!("EXISTS needs an attribute name, found {found}"))
                );
            }
        };
        self.bump();
        Ok(Parsed {
            node: Node::Exists(name),
            depth: 1,
        })
    }

    /// An attribute name: letters and digits, looked up in lower case.
    fn attribute(&self, word: &str, at: usize) -> Result<AttrName, CesqlError> {
        if word.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(AttrName::new(&word.to_ascii_lowercase()))
        } else {
            Err(self.error_at(
                at,
                format!(
                    "`{word}` is not a valid attribute name: attribute names have letters and \
                     digits only"
                ),
            ))
        }
    }

    /// `name "(" [expression ("," expression)*] ")"`
    fn call(&mut self, name: &'s str) -> Result<Parsed, CesqlError> {
        let at = self.here();
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphabetic() || c == '_');
        if !valid {
            return Err(self.error_here(format!(
                "`{name}` is not a valid function name: function names have letters and `_` \
                 only, starting with a letter"
            )));
        }
        self.bump();
        self.bump();
        self.enter()?;
        let mut args = Vec::new();
        let mut depth = 0;
        if matches!(self.peek(), Tok::RParen) {
            self.bump();
        } else {
            loop {
                let arg = self.expression()?;
                depth = depth.max(arg.depth);
                args.push(arg.node);
                match self.peek() {
                    Tok::Comma => {
                        self.bump();
                    }
                    Tok::RParen => {
                        self.bump();
                        break;
                    }
                    other => {
                        let found = other.to_string();
                        let upper = name.to_ascii_uppercase();
                        return Err(self.error_here(format!(
                            "expected `,` or `)` in the arguments of {upper}, found {found}"
                        )));
                    }
                }
            }
        }
        self.leave();
        let call = Call {
            func: Builtin::resolve(name, args.len()),
            name: name.into(),
            args: args.into_boxed_slice(),
            pos: at,
        };
        self.node(Node::Call(Box::new(call)), depth, at)
    }
}

fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}
