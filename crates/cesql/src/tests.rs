//! CESQL behaviour beyond the conformance suite (which `tests/tck.rs` runs), and
//! robustness on arbitrary input.

use super::*;
use proptest::prelude::*;
use ErrorKind::*;

/// A widget event; binary and timestamp extensions appear as their canonical strings, as an
/// [`Event`] implementation must present them.
fn event() -> BTreeMap<String, Value> {
    let mut e = BTreeMap::new();
    for (name, value) in [
        ("id", Value::String("w1-7".into())),
        ("source", Value::String("/widgets".into())),
        ("specversion", Value::String("1.0".into())),
        ("type", Value::String("com.example.widget.modified".into())),
        ("subject", Value::String("wïdget-1".into())),
        ("count", Value::Integer(42)),
        ("flag", Value::Boolean(true)),
        ("five", Value::String("5".into())),
        ("blob", Value::String("aGk=".into())),
        ("when", Value::String("1970-01-01T00:00:00Z".into())),
    ] {
        e.insert(name.to_string(), value);
    }
    e
}

fn b(v: bool) -> Value {
    Value::Boolean(v)
}

fn i(v: i32) -> Value {
    Value::Integer(v)
}

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

/// Evaluates every expression against [`event`] and compares the value and the kinds of the
/// errors; reports every failure.
fn check(cases: &[(&str, Value, &[ErrorKind])]) {
    let event = event();
    let mut failures = Vec::new();
    for (text, want, want_errors) in cases {
        match parse(text) {
            Err(e) => failures.push(format!("{text}: parse error {e}")),
            Ok(expression) => {
                let (value, errors) = expression.evaluate(&event);
                let kinds: Vec<ErrorKind> = errors.iter().map(CesqlError::kind).collect();
                if value != *want || kinds != *want_errors {
                    failures.push(format!("{text}: got {value} {errors:?}"));
                }
                let should_match = *want == b(true) && want_errors.is_empty();
                if expression.matches(&event) != should_match {
                    failures.push(format!("{text}: matches() disagrees"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

/// Parses every expression and checks that it fails at the given position with a message
/// containing the given text.
fn check_parse_errors(cases: &[(&str, &str, &str)]) {
    let mut failures = Vec::new();
    for (text, position, message) in cases {
        match parse(text) {
            Ok(e) => failures.push(format!("{text}: parsed as {e:?}")),
            Err(e) => {
                let shown = e.to_string();
                if e.kind() != Parse
                    || e.position().to_string() != *position
                    || !shown.contains(message)
                {
                    failures.push(format!("{text}: {shown}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

#[test]
fn precedence_follows_the_spec() {
    check(&[
        // AND, OR and XOR share one level, evaluated left to right.
        ("TRUE OR FALSE AND FALSE", b(false), &[]),
        ("TRUE OR (FALSE AND FALSE)", b(true), &[]),
        ("FALSE AND TRUE OR TRUE", b(true), &[]),
        ("TRUE XOR TRUE OR TRUE", b(true), &[]),
        // Comparison binds looser than arithmetic, tighter than logic.
        ("1 + 2 * 3 = 7 AND 10 - 2 - 3 = 5", b(true), &[]),
        ("7 / 2 * 2", i(6), &[]),
        ("-7 / 2", i(-3), &[]),
        ("-7 % 3", i(-1), &[]),
        ("7 % -3", i(1), &[]),
        // Unary operators bind tightest.
        ("NOT TRUE = FALSE", b(true), &[]),
        ("-count + 2", i(-40), &[]),
        ("2 -3", i(-1), &[]),
        ("2 - -3", i(5), &[]),
        ("+5 = 5", b(true), &[]),
        // LIKE binds tighter than IN, IN tighter than the binary operators.
        ("type LIKE 'com.%' IN (TRUE)", b(true), &[]),
        ("1 IN (1) = TRUE", b(true), &[]),
        ("NOT EXISTS color", b(true), &[]),
        ("count = 42 AND NOT flag = FALSE", b(true), &[]),
    ]);
}

#[test]
fn attributes_keep_their_types() {
    check(&[
        ("count", i(42), &[]),
        ("count + 1", i(43), &[]),
        ("flag", b(true), &[]),
        ("five = 5", b(true), &[]),
        ("five < 10", b(true), &[]),
        ("count = '42'", b(true), &[]),
        ("count LIKE '4_'", b(true), &[]),
        ("flag = 'true'", b(true), &[]),
        ("blob", s("aGk="), &[]),
        ("when", s("1970-01-01T00:00:00Z"), &[]),
        ("EXISTS blob AND EXISTS specversion", b(true), &[]),
        ("ID = 'w1-7'", b(true), &[]),
        ("subject LIKE 'w_dget-%'", b(true), &[]),
        ("LENGTH(subject)", i(8), &[]),
    ]);
}

#[test]
fn errors_carry_defined_values() {
    check(&[
        ("color", b(false), &[MissingAttribute]),
        ("NOT color", b(false), &[MissingAttribute]),
        ("color = 'red' OR TRUE", b(false), &[MissingAttribute]),
        ("TRUE OR color = 'red'", b(true), &[]),
        ("LENGTH(color)", i(0), &[MissingAttribute]),
        ("UPPER(color)", s(""), &[MissingAttribute]),
        ("count IN (color, 42)", b(false), &[MissingAttribute]),
        ("count IN (42, color)", b(true), &[]),
        ("(1 / 0) + 5", i(0), &[Math]),
        ("2147483647 + 1", i(0), &[Math]),
        ("-2147483648 - 1", i(0), &[Math]),
        ("65536 * 65536", i(0), &[Math]),
        ("-2147483648 / -1", i(0), &[Math]),
        ("-2147483648 % -1", i(0), &[]),
        ("--2147483648", i(2147483647), &[Math]),
        ("'abc' = 5", b(false), &[Cast]),
        ("'abc' != 5", b(true), &[Cast]),
        ("1 = TRUE", b(false), &[Cast]),
        ("1 AND TRUE", b(false), &[Cast]),
        ("'yes' OR TRUE", b(true), &[Cast]),
        ("'x' + 'y'", i(0), &[Cast, Cast]),
        ("1 IN ('a', 1)", b(true), &[Cast]),
        ("1 NOT IN ('a', 2)", b(true), &[Cast]),
        ("LEFT('abc', 'x')", s(""), &[Cast]),
        ("FOO()", b(false), &[MissingFunction]),
        ("TRUE AND foo(1)", b(false), &[MissingFunction]),
        ("SUBSTRING('abc')", b(false), &[MissingFunction]),
        ("CONCAT('a', color)", s(""), &[MissingAttribute]),
        ("CONCAT_WS(color, 'a')", s(""), &[MissingAttribute]),
    ]);
}

#[test]
fn functions() {
    check(&[
        ("LENGTH('héllo')", i(5), &[]),
        ("LENGTH(-12)", i(3), &[]),
        ("CONCAT('a', 1, TRUE)", s("a1true"), &[]),
        ("CONCAT_WS('-', 'a', 'b')", s("a-b"), &[]),
        ("CONCAT_WS(1, 'a', 'b', 'c')", s("a1b1c"), &[]),
        ("LOWER('ÀBC')", s("àbc"), &[]),
        ("upper('straße')", s("STRASSE"), &[]),
        ("TRIM('\u{2003} a \t\n')", s("a"), &[]),
        ("LEFT('héllo', 2)", s("hé"), &[]),
        ("RIGHT('héllo', 4)", s("éllo"), &[]),
        ("LEFT('abc', 0)", s(""), &[]),
        ("RIGHT('abc', 0)", s(""), &[]),
        ("RIGHT('abc', -1)", s("abc"), &[FunctionEvaluation]),
        ("SUBSTRING('héllo', 2, 3)", s("éll"), &[]),
        ("SUBSTRING('abc', 3)", s("c"), &[]),
        ("SUBSTRING('abc', -3)", s("abc"), &[]),
        ("SUBSTRING('abc', 4)", s(""), &[FunctionEvaluation]),
        ("SUBSTRING('abc', 1, -1)", s(""), &[FunctionEvaluation]),
        ("SUBSTRING('abc', 2, 0)", s(""), &[]),
        ("SUBSTRING('', 0)", s(""), &[]),
        ("ABS(-5) + ABS(5)", i(10), &[]),
        ("ABS('-7')", i(7), &[]),
        ("INT('+12')", i(12), &[]),
        ("INT(' 12')", i(0), &[Cast]),
        ("INT('2147483648')", i(0), &[Cast]),
        ("BOOL('tRuE')", b(true), &[]),
        ("STRING(-2147483648)", s("-2147483648"), &[]),
        (
            "IS_INT('12') AND IS_INT(5) AND IS_INT(TRUE) AND NOT IS_INT('1.5')",
            b(true),
            &[],
        ),
        (
            "IS_BOOL('False') AND IS_BOOL(TRUE) AND NOT IS_BOOL('yes')",
            b(true),
            &[],
        ),
        ("Concat_Ws(',')", s(""), &[]),
    ]);
}

#[test]
fn literals_and_identifiers() {
    check(&[
        ("'it''s'", s("it's"), &[]),
        (r#""say ""hi""""#, s("say \"hi\""), &[]),
        (r"'a\'b'", s("a'b"), &[]),
        (r"'a\nb'", s("a\\nb"), &[]),
        (r"'a\\'", s("a\\\\"), &[]),
        (r"'50%' LIKE '50\%'", b(true), &[]),
        (r"'50\%' LIKE '50\%'", b(false), &[]),
        (r"'a\b' LIKE 'a\b'", b(true), &[]),
        ("'ünï' = \"ünï\"", b(true), &[]),
        ("007", i(7), &[]),
        ("-2147483648", i(i32::MIN), &[]),
        ("2147483647", i(i32::MAX), &[]),
        ("\tTRUE\r\n", b(true), &[]),
        ("true = TRUE AND False = FALSE", b(true), &[]),
        ("TRUE = 'true' AND FALSE = 'false'", b(true), &[]),
        ("TRUE = 'TRUE' OR FALSE = 'FALSE'", b(false), &[]),
    ]);
}

#[test]
fn parse_errors_say_where() {
    check_parse_errors(&[
        (
            "",
            "1:1",
            "expected an expression, found the end of the expression",
        ),
        ("1 +", "1:4", "expected an expression"),
        ("(1 + 2", "1:7", "expected `)` to close the `(` at 1:1"),
        ("'abc", "1:1", "not closed"),
        ("a LIKE b", "1:8", "LIKE needs a string literal"),
        ("a LIKE 1", "1:8", "LIKE needs a string literal"),
        ("2147483648", "1:1", "outside the 32-bit range"),
        ("-2147483649", "1:1", "outside the 32-bit range"),
        ("1 ! 2", "1:3", "`!` must be followed by `=`"),
        ("a # b", "1:3", "unexpected character `#`"),
        ("é", "1:1", "unexpected character `é`"),
        ("my_ext = 1", "1:1", "not a valid attribute name"),
        ("f1(2)", "1:1", "not a valid function name"),
        ("TRUE TRUE", "1:6", "expected an operator or the end"),
        ("1 IN ()", "1:7", "expected an expression"),
        ("1 IN 1", "1:6", "expected `(` after IN"),
        ("EXISTS 'a'", "1:8", "EXISTS needs an attribute name"),
        ("AND", "1:1", "found the keyword AND"),
        ("+a", "1:1", "`+` can only be the sign"),
        (
            "LEFT('a', 1",
            "1:12",
            "expected `,` or `)` in the arguments of LEFT",
        ),
        ("a = 1\nAND\n  (b", "3:5", "to close the `(` at 3:3"),
        ("ABC(", "1:5", "expected an expression"),
    ]);
}

#[test]
fn nesting_and_length_are_limited() {
    let deep = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert!(parse(&deep(MAX_DEPTH - 1)).is_ok());
    assert!(parse(&deep(MAX_DEPTH + 1)).is_err());
    assert!(parse(&deep(100_000)).is_err());
    assert!(parse(&"NOT ".repeat(100_000)).is_err());
    assert!(parse(&"-".repeat(100_000)).is_err());
    assert!(parse(&format!("{}1", "ABS(".repeat(10_000))).is_err());
    assert!(parse(&format!("'a'{}", " LIKE 'a'".repeat(MAX_DEPTH + 1))).is_err());
    // Long flat chains are fine: they do not nest.
    let chain = vec!["count = 1"; 2_000].join(" OR ");
    let expression = parse(&chain).unwrap();
    assert_eq!(expression.evaluate(&event()), (b(false), vec![]));
    let sum = format!("0{}", " + 1".repeat(5_000));
    assert_eq!(parse(&sum).unwrap().evaluate(&event()).0, i(5_000));
    let long = format!("'{}'", "x".repeat(MAX_EXPRESSION_LEN));
    let err = parse(&long).unwrap_err();
    assert!(err.message().contains("limit"), "{err}");
}

#[test]
fn evaluation_errors_say_where() {
    let expression = parse("type != 'a' AND\n  color = 'red'").unwrap();
    let (value, errors) = expression.evaluate(&event());
    assert_eq!(value, b(false));
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors[0].to_string(),
        "missing attribute at 2:3: the event has no attribute `color`"
    );
    // `type = 'a'` is false, so `color` is never looked at.
    let (_, errors) = parse("type = 'a' AND color = 'red'")
        .unwrap()
        .evaluate(&event());
    assert!(errors.is_empty());
}

#[test]
fn static_checks_for_filters() {
    assert!(parse("type = 'a'").unwrap().check_predicate().is_ok());
    assert!(parse("myattr").unwrap().check_predicate().is_ok());
    assert!(parse("BOOL(myattr)").unwrap().check_predicate().is_ok());
    let err = parse("LENGTH(x) = 1 OR nope(1)")
        .unwrap()
        .check_predicate()
        .unwrap_err();
    assert_eq!(err.kind(), MissingFunction);
    assert_eq!(err.position().to_string(), "1:18");
    assert_eq!(parse("'a'").unwrap().static_type(), Some(Type::String));
    assert_eq!(parse("a + b").unwrap().static_type(), Some(Type::Integer));
    assert_eq!(parse("a").unwrap().static_type(), None);
}

/// Tokens that make arbitrary sequences likely to reach deep into the parser and evaluator.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "(",
            ")",
            ",",
            "+",
            "-",
            "*",
            "/",
            "%",
            "=",
            "!=",
            "<>",
            "<",
            "<=",
            ">",
            ">=",
            "AND",
            "or",
            "XOR",
            "NOT",
            "LIKE",
            "IN",
            "EXISTS",
            "TRUE",
            "false",
            "0",
            "1",
            "-1",
            "2147483647",
            "-2147483648",
            "'a%b_'",
            "'\\%'",
            "\"x\"",
            "''",
            "type",
            "subject",
            "count",
            "flag",
            "blob",
            "when",
            "missing",
            "ABS",
            "LENGTH",
            "CONCAT",
            "CONCAT_WS",
            "LOWER",
            "UPPER",
            "TRIM",
            "LEFT",
            "RIGHT",
            "SUBSTRING",
            "INT",
            "BOOL",
            "STRING",
            "IS_INT",
            "IS_BOOL",
            "NOPE",
            " ",
            "\n",
            "'",
        ])
        .prop_map(str::to_owned),
        "\\PC{0,3}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// Any token soup parses or fails cleanly, and evaluating what parses never panics; the
    /// two evaluation modes agree.
    #[test]
    fn arbitrary_token_sequences_never_panic(parts in prop::collection::vec(fragment(), 0..40)) {
        let text = parts.join(" ");
        let event = event();
        if let Ok(expression) = parse(&text) {
            let (value, errors) = expression.evaluate(&event);
            let expected = value == Value::Boolean(true) && errors.is_empty();
            prop_assert_eq!(expression.matches(&event), expected);
            let _ = expression.check_predicate();
        }
    }

    /// Any string at all parses or fails cleanly.
    #[test]
    fn arbitrary_strings_never_panic(text in "\\PC{0,200}") {
        if let Ok(expression) = parse(&text) {
            let _ = expression.evaluate(&event());
        }
    }

    /// Any LIKE pattern compiles and matches any text without panicking.
    #[test]
    fn like_patterns_never_panic(text in "[ab%_\\\\é']{0,12}", pattern in "[ab%_\\\\é']{0,8}") {
        let quote = |s: &str| s.replace('\'', "''");
        let source = format!("'{}' LIKE '{}'", quote(&text), quote(&pattern));
        if let Ok(expression) = parse(&source) {
            let _ = expression.evaluate(&event());
        }
    }
}
