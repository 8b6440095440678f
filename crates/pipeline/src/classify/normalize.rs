//! Literal normalisation of PostgreSQL statements, for the shape cache.
//!
//! Simple-protocol clients send the same statement shape with new literals
//! each time (`... WHERE aid = 48213`), which misses a cache keyed by exact
//! text. [`normalize`] is a small lexer that replaces each string and number
//! literal by a mark and copies everything else verbatim, so two texts share
//! a key only if they are token-for-token identical apart from the values of
//! literals of the same lexical type.
//!
//! The lexer follows PostgreSQL's own lexer (scan.l) but accepts only a safe
//! subset of it; anything outside that subset, or anything it is unsure of,
//! makes [`normalize`] return `None`, and the caller takes the full path.
//! In particular it gives up on escape and Unicode strings (`E'..'`, `U&'..'`,
//! any prefixed string), dollar quotes, a backslash in a string (with
//! `standard_conforming_strings` off it would be an escape), exponents and
//! non-decimal numbers, and more than one statement.
//!
//! The lexer is only half of the check: the classifier caches a shape only
//! after seeing, in the parse tree of one instance, that every literal the
//! lexer found became a plain value ([`parsed_literals`] against
//! [`literals`]); sqlparser also accepts a string where a name goes
//! (`FROM 'payments'`), and there its value would matter.

use std::ops::ControlFlow;

use sqlparser::ast::{Ident, Statement, Value, ValueWithSpan, Visit, Visitor};

/// Marks that replace literals in a key. NUL cannot occur in PostgreSQL
/// query text, and [`normalize`] rejects any text containing it, so a mark
/// is never confused with copied text.
const INTEGER_MARK: &str = "\0i";
const DECIMAL_MARK: &str = "\0d";
const STRING_MARK: &str = "\0s";

/// Statements whose first word is one of these may be normalised. The kinds
/// they produce (queries, DML, transaction control) take nothing from a
/// literal's value; anything else, `SET` and `COPY ... TO 'file'` included,
/// always takes the full path.
const NORMALISABLE_FIRST_WORDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "WITH", "VALUES", "TABLE", "BEGIN", "START", "COMMIT",
    "END", "ROLLBACK", "ABORT",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LiteralKind {
    /// `[0-9]+`
    Integer,
    /// `[0-9]+.[0-9]+`
    Decimal,
    /// `'...'` with `''` as its only escape.
    String,
}

/// A literal's value: what sqlparser keeps in `Value::Number` and
/// `Value::SingleQuotedString`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Literal {
    Number(String),
    String(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Normalized {
    /// The text with every literal replaced by a mark of its type.
    pub key: String,
    /// Bytes from the start of the first significant token to the end of
    /// the last one (not whitespace, comments or `;`): the statement's text
    /// as the classifier slices it.
    pub stmt_span: (usize, usize),
}

impl Normalized {
    /// Whether the statement starts with a word of [`NORMALISABLE_FIRST_WORDS`].
    pub(super) fn is_normalisable_kind(&self, text: &str) -> bool {
        let rest = text.as_bytes().get(self.stmt_span.0..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&c| !is_ident_part(c))
            .unwrap_or(rest.len());
        let word = &rest[..len];
        NORMALISABLE_FIRST_WORDS
            .iter()
            .any(|w| w.as_bytes().eq_ignore_ascii_case(word))
    }
}

/// The literal-normalised form of one PostgreSQL statement, or `None` if
/// the text is not in the subset this lexer is sure about.
pub(super) fn normalize(text: &str) -> Option<Normalized> {
    let mut key = String::with_capacity(text.len() + 8);
    let mut copied = 0;
    let stmt_span = scan(text, |kind, start, end| {
        key.push_str(text.get(copied..start).unwrap_or_default());
        key.push_str(match kind {
            LiteralKind::Integer => INTEGER_MARK,
            LiteralKind::Decimal => DECIMAL_MARK,
            LiteralKind::String => STRING_MARK,
        });
        copied = end;
    })?;
    key.push_str(text.get(copied..).unwrap_or_default());
    Some(Normalized { key, stmt_span })
}

/// The values of the literals [`normalize`] replaces, sorted; `None` when
/// [`normalize`] would return `None`.
pub(super) fn literals(text: &str) -> Option<Vec<Literal>> {
    let mut out = Vec::new();
    scan(text, |kind, start, end| {
        let raw = text.get(start..end).unwrap_or_default();
        out.push(match kind {
            LiteralKind::Integer | LiteralKind::Decimal => Literal::Number(raw.to_string()),
            LiteralKind::String => Literal::String(
                raw.get(1..raw.len().saturating_sub(1))
                    .unwrap_or_default()
                    .replace("''", "'"),
            ),
        });
    })?;
    out.sort();
    Some(out)
}

/// The plain string and number values of a parse tree, sorted; `None` if
/// any string became a name (`FROM 'payments'`, `AS 'alias'`) or a number
/// is not a plain one.
pub(super) fn parsed_literals(stmt: &Statement) -> Option<Vec<Literal>> {
    struct Collect(Vec<Literal>);
    impl Visitor for Collect {
        type Break = ();

        fn pre_visit_value(&mut self, value: &ValueWithSpan) -> ControlFlow<()> {
            match &value.value {
                Value::Number(n, false) => self.0.push(Literal::Number(n.to_string())),
                Value::Number(_, true) => return ControlFlow::Break(()),
                Value::SingleQuotedString(s) => self.0.push(Literal::String(s.clone())),
                _ => {}
            }
            ControlFlow::Continue(())
        }

        fn pre_visit_ident(&mut self, ident: &Ident) -> ControlFlow<()> {
            if ident.quote_style == Some('\'') {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut collect = Collect(Vec::new());
    if stmt.visit(&mut collect).is_break() {
        return None;
    }
    collect.0.sort();
    Some(collect.0)
}

/// PostgreSQL's `ident_start`: a letter, `_`, or any byte of a non-ASCII
/// character.
fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

/// PostgreSQL's `ident_cont`.
fn is_ident_part(c: u8) -> bool {
    is_ident_start(c) || c.is_ascii_digit() || c == b'$'
}

/// Walks the text, calling `on_literal(kind, start, end)` for each literal
/// in order, and returns the statement span; `None` outside the subset.
fn scan(
    text: &str,
    mut on_literal: impl FnMut(LiteralKind, usize, usize),
) -> Option<(usize, usize)> {
    let b = text.as_bytes();
    if b.contains(&0) {
        return None;
    }
    let at = |i: usize| b.get(i).copied();
    let mut span: Option<(usize, usize)> = None;
    // A `;` was seen: only whitespace, comments and `;` may follow.
    let mut ended = false;
    let mut i = 0;
    while let Some(c) = at(i) {
        match (c, at(i + 1)) {
            (b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c, _) => {
                i += 1;
                continue;
            }
            // Comments start at `--` and `/*` even inside an operator.
            (b'-', Some(b'-')) => {
                i = line_comment_end(b, i + 2);
                continue;
            }
            (b'/', Some(b'*')) => {
                i = block_comment_end(b, i + 2)?;
                continue;
            }
            (b';', _) => {
                ended = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        if ended {
            return None;
        }
        let start = i;
        i = match c {
            c if is_ident_start(c) => {
                let end = ident_end(b, i + 1);
                // E'..', B'..', X'..', N'..', U&'..', U&"..": prefixed
                // strings and Unicode escapes are not handled here.
                if matches!(at(end), Some(b'\'' | b'&')) {
                    return None;
                }
                end
            }
            b'"' => quoted_end(b, i + 1, b'"')?,
            b'\'' => {
                let end = quoted_end(b, i + 1, b'\'')?;
                // With standard_conforming_strings off, a backslash escapes.
                if b[start..end].contains(&b'\\') {
                    return None;
                }
                on_literal(LiteralKind::String, start, end);
                end
            }
            b'0'..=b'9' => {
                let mut end = digits_end(b, i);
                let mut kind = LiteralKind::Integer;
                if at(end) == Some(b'.') && at(end + 1).is_some_and(|d| d.is_ascii_digit()) {
                    end = digits_end(b, end + 1);
                    kind = LiteralKind::Decimal;
                }
                // Exponents, `0x1F`, `1_000`, `1.`, `1..2`, `123abc`.
                if at(end).is_some_and(|n| is_ident_part(n) || n == b'.') {
                    return None;
                }
                on_literal(kind, start, end);
                end
            }
            // `$1` is a parameter; any other `$` starts a dollar quote.
            b'$' => {
                let end = digits_end(b, i + 1);
                if end == i + 1 || at(end).is_some_and(is_ident_part) {
                    return None;
                }
                end
            }
            // `.5` is a number this lexer does not take apart.
            b'.' if at(i + 1).is_some_and(|d| d.is_ascii_digit()) => return None,
            // An operator character right before `--` or `/*`: PostgreSQL
            // starts a comment there, sqlparser may not; no shape for it.
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?'
                if matches!(
                    (at(i + 1), at(i + 2)),
                    (Some(b'-'), Some(b'-')) | (Some(b'/'), Some(b'*'))
                ) =>
            {
                return None;
            }
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?' | b',' | b'(' | b')' | b'[' | b']' | b'.' | b':' => {
                i + 1
            }
            _ => return None,
        };
        span = Some((span.map_or(start, |s| s.0), i));
    }
    span
}

fn digits_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

fn ident_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).copied().is_some_and(is_ident_part) {
        i += 1;
    }
    i
}

/// A `--` comment runs to the end of the line (`\n` or `\r`).
fn line_comment_end(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|&c| c != b'\n' && c != b'\r') {
        i += 1;
    }
    i
}

/// The end of a `/* ... */` comment whose body starts at `i`; comments
/// nest. `None` if unterminated.
fn block_comment_end(b: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 1usize;
    loop {
        match (b.get(i)?, b.get(i + 1)) {
            (b'/', Some(b'*')) => {
                depth += 1;
                i += 2;
            }
            (b'*', Some(b'/')) => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
}

/// The end of a `quote`-delimited token whose body starts at `i`; a doubled
/// quote is the quote itself. `None` if unterminated.
fn quoted_end(b: &[u8], mut i: usize, quote: u8) -> Option<usize> {
    loop {
        if *b.get(i)? == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Some(i + 1);
            }
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> String {
        normalize(text)
            .unwrap_or_else(|| panic!("expected a key for {text:?}"))
            .key
    }

    fn span(text: &str) -> &str {
        let n = normalize(text).unwrap_or_else(|| panic!("expected a key for {text:?}"));
        &text[n.stmt_span.0..n.stmt_span.1]
    }

    #[test]
    fn literal_only_differences_share_a_key() {
        let pairs = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;",
            ),
            ("SELECT 'a'", "SELECT 'it''s'"),
            ("SELECT ''", "SELECT 'long string with -- and /* inside'"),
            ("SELECT 1.5", "SELECT 12345.000"),
            (
                "INSERT INTO t VALUES (1, 'x', $1)",
                "INSERT INTO t VALUES (99, 'yy', $1)",
            ),
            ("SELECT 'é'", "SELECT 'ascii'"),
        ];
        for (a, b) in pairs {
            assert_eq!(key(a), key(b), "{a:?} vs {b:?}");
        }
        assert_eq!(
            key("SELECT x FROM t WHERE id = 42 AND s = 'a'"),
            "SELECT x FROM t WHERE id = \0i AND s = \0s"
        );
    }

    #[test]
    fn structure_differences_do_not() {
        let pairs = [
            (
                "SELECT * FROM t WHERE aid = 1",
                "SELECT * FROM t WHERE aid < 1",
            ),
            (
                "SELECT * FROM t WHERE aid = 1",
                "SELECT * FROM u WHERE aid = 1",
            ),
            ("SELECT 1", "SELECT '1'"),
            ("SELECT 1", "SELECT 1.0"),
            ("SELECT \"x\"", "SELECT \"y\""),
            ("SELECT 1", "select 1"),
            ("SELECT 1 -- a", "SELECT 1 -- b"),
            ("SELECT $1", "SELECT $2"),
            ("SELECT 1", "SELECT  1"),
        ];
        for (a, b) in pairs {
            assert_ne!(key(a), key(b), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn bails_outside_the_subset() {
        let cases = [
            "SELECT E'a'",
            "SELECT e'a'",
            "SELECT B'101'",
            "SELECT X'1F'",
            "SELECT N'x'",
            "SELECT U&'d\\0061t'",
            "SELECT U&\"d0061t\"",
            "SELECT $$a$$",
            "SELECT $tag$a$tag$",
            "SELECT $",
            "SELECT $1a",
            "SELECT 'a\\'",
            "SELECT 'a\\n'",
            "SELECT 1e5",
            "SELECT 1E5",
            "SELECT 1.5e3",
            "SELECT 0x1F",
            "SELECT 0o17",
            "SELECT 0b101",
            "SELECT 1_000",
            "SELECT .5",
            "SELECT 1.",
            "SELECT 1..2",
            "SELECT 1.2.3",
            "SELECT 123abc",
            "SELECT t.1",
            "SELECT 1; SELECT 2",
            "SELECT 1;; SELECT 2",
            "; SELECT 1",
            "SELECT 'unterminated",
            "SELECT 'a''",
            "SELECT 1 /* unterminated",
            "SELECT 1 /* /* nested */ still open",
            "SELECT \"unterminated",
            "SELECT \"a\"\"",
            "SELECT 1 \\g",
            "SELECT {1}",
            "SELECT 1\0",
            "SELECT 1 -- \0",
            "SELECT '\0'",
            "SELECT \u{7}1",
            "",
            "   ",
            "-- only a comment",
            "/* a */ ; ;",
        ];
        for text in cases {
            assert_eq!(normalize(text), None, "{text:?}");
        }
    }

    #[test]
    fn comments() {
        // Block comments nest; the `;` and `DROP` are inside the comment.
        assert_eq!(
            key("/* /* */ DROP TABLE x; */ SELECT 1"),
            "/* /* */ DROP TABLE x; */ SELECT \0i"
        );
        assert_eq!(span("/* /* */ DROP TABLE x; */ SELECT 1"), "SELECT 1");
        // `--` or `/*` right after an operator character: PostgreSQL starts
        // a comment there and sqlparser may not, so no shape is made.
        assert_eq!(normalize("SELECT 1 +--'x'\n2"), None);
        assert_eq!(normalize("SELECT 1 */* 'x' */ 2"), None);
        assert_eq!(normalize("SELECT 1 #--'\n2"), None);
        // A line comment also ends at `\r`, as in PostgreSQL.
        assert_eq!(key("SELECT 1 -- a\r'b'"), "SELECT \0i -- a\r\0s");
        // Literals inside comments and quoted identifiers are copied.
        assert_eq!(
            key("SELECT \"it's 1\" -- 'no'\n FROM t"),
            "SELECT \"it's 1\" -- 'no'\n FROM t"
        );
    }

    #[test]
    fn trailing_semicolons_and_comments() {
        for text in [
            "SELECT 1;",
            "SELECT 1 ;",
            "SELECT 1;;",
            "SELECT 1; -- done",
            "SELECT 1; /* done */ ;\n",
            "SELECT 1 -- done",
        ] {
            assert_eq!(span(text), "SELECT 1", "{text:?}");
        }
    }

    #[test]
    fn statement_span() {
        let text = "  /* lead */ -- note\n\tSELECT a\n  FROM t WHERE s = 'x' /* tail */ ; -- end\n";
        assert_eq!(span(text), "SELECT a\n  FROM t WHERE s = 'x'");
        assert_eq!(span("SELECT 1"), "SELECT 1");
        assert_eq!(span("SELECT 'é' ;"), "SELECT 'é'");
        assert_eq!(span("SELECT x -- c"), "SELECT x");
    }

    #[test]
    fn first_words() {
        let yes = [
            "SELECT 1",
            "select 1",
            "  -- c\nWITH x AS (SELECT 1) SELECT 2",
            "BEGIN",
        ];
        for text in yes {
            let n = normalize(text).expect("normalises");
            assert!(n.is_normalisable_kind(text), "{text:?}");
        }
        let no = [
            "SET x = 1",
            "COPY t TO 'f'",
            "\"select\" 1",
            "SELECTx 1",
            "(SELECT 1)",
        ];
        for text in no {
            let n = normalize(text).expect("normalises");
            assert!(!n.is_normalisable_kind(text), "{text:?}");
        }
    }

    #[test]
    fn literal_values() {
        assert_eq!(
            literals("SELECT 'it''s', 2, 1.5, 'é' -- '3'"),
            Some(vec![
                Literal::Number("1.5".into()),
                Literal::Number("2".into()),
                Literal::String("it's".into()),
                Literal::String("é".into()),
            ])
        );
        assert_eq!(literals("SELECT E'x'"), None);
    }

    /// `text` with every literal the lexer finds given a new value of the
    /// same lexical type.
    fn mutate_literals(text: &str, seed: u64) -> String {
        let mut out = String::new();
        let mut copied = 0;
        let mut k = seed;
        scan(text, |kind, start, end| {
            out.push_str(&text[copied..start]);
            k = k
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = k >> 40;
            out.push_str(&match kind {
                LiteralKind::Integer => (v % 100_000).to_string(),
                LiteralKind::Decimal => format!("{}.{}", v % 1000, v % 7),
                LiteralKind::String => {
                    let words = [
                        "",
                        "x",
                        "payments",
                        "it''s",
                        "role",
                        "é ü",
                        "; DROP TABLE t",
                    ];
                    format!("'{}{}'", words[(v % 7) as usize], v % 13)
                }
            });
            copied = end;
        });
        out.push_str(&text[copied..]);
        out
    }

    const FRAGMENTS: &[&str] = &[
        "SELECT",
        "FROM",
        "t",
        "u.v",
        "WHERE",
        "x",
        "=",
        "<",
        "1",
        "42",
        "1.5",
        "'a'",
        "'b''c'",
        "''",
        ",",
        "(",
        ")",
        "AS",
        "ONLY",
        "WITH",
        "INTO",
        "::",
        "int",
        "varchar(3)",
        "numeric",
        "-- c\n",
        "/* c */",
        "@",
        ":",
        "[",
        "]",
        "-",
        "+",
        "*",
        "$1",
        "\"Q\"",
        "AND",
        "IN",
        "LIMIT",
        "OFFSET",
        "ORDER BY",
        "FOR UPDATE",
        "interval",
        "DATE",
        "count(*)",
        "pg_read_file",
        "nextval",
        "set_config",
        "dblink",
        "RETURNING",
        "DELETE",
        "UPDATE",
        "SET",
        "INSERT",
        "VALUES",
        "JOIN",
        "ON",
        "UNION",
        "TABLESAMPLE",
        "SYSTEM",
        ".",
        ";",
        "\n",
        "E",
        "U&",
        "e5",
    ];
    const STARTS: &[&str] = &[
        "SELECT ",
        "SELECT * FROM ",
        "INSERT INTO t ",
        "UPDATE t SET ",
        "DELETE FROM ",
        "WITH ",
        "VALUES (",
    ];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Any text and the same text with other literal values, classified
        /// in turn through one classifier, classify as without a cache.
        #[test]
        fn literal_mutations_classify_as_uncached(
            start in 0..STARTS.len(),
            pieces in proptest::collection::vec((0..FRAGMENTS.len(), proptest::prelude::any::<bool>()), 1..14),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut a = STARTS[start].to_string();
            for (i, spaced) in pieces {
                a.push_str(FRAGMENTS[i]);
                if spaced {
                    a.push(' ');
                }
            }
            let b = mutate_literals(&a, seed);
            let c = super::super::SqlClassifier::new(
                super::super::SqlDialect::Postgres,
                super::super::ClassifyLimits::default(),
            );
            for text in [&a, &b, &a] {
                proptest::prop_assert_eq!(&*c.classify(text), &c.classify_uncached(text), "text {:?}", text);
            }
        }
    }

    /// SQL expressions built from literals, columns, operators, casts and
    /// calls (risky ones included), separated by random whitespace and
    /// comments.
    fn expr() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("1".to_string()),
            Just("2.5".to_string()),
            Just("'s'".to_string()),
            Just("'it''s'".to_string()),
            Just("x".to_string()),
            Just("t.y".to_string()),
            Just("\"Q\"".to_string()),
            Just("$1".to_string()),
            Just("NULL".to_string()),
            Just("true".to_string()),
            Just("now()".to_string()),
            Just("interval '1 day'".to_string()),
            Just("DATE '2024-01-01'".to_string()),
            Just("ARRAY[1, 2]".to_string()),
            Just("(SELECT max(z) FROM other WHERE k = 'k')".to_string()),
        ];
        let sep = prop_oneof![
            Just(" "),
            Just("\n"),
            Just(" /* c */ "),
            Just(" -- c\n"),
            Just("")
        ];
        leaf.prop_recursive(4, 24, 3, move |inner| {
            let op = prop_oneof![
                Just("+"),
                Just("-"),
                Just("*"),
                Just("="),
                Just("<>"),
                Just("<="),
                Just("||"),
                Just("AND"),
                Just("OR"),
                Just("->"),
                Just("->>"),
                Just("#>"),
                Just("?"),
                Just("@>"),
                Just("LIKE"),
                Just("IS DISTINCT FROM"),
                Just("~"),
            ];
            let func = prop_oneof![
                Just("coalesce"),
                Just("lower"),
                Just("pg_read_file"),
                Just("set_config"),
                Just("nextval"),
                Just("dblink"),
                Just("lo_import"),
                Just("pg_sleep"),
                Just("\"PG_READ_FILE\""),
                Just("pg_catalog.pg_terminate_backend"),
            ];
            let ty = prop_oneof![
                Just("int"),
                Just("text"),
                Just("varchar(5)"),
                Just("numeric(10, 2)"),
                Just("regclass"),
                Just("int[]"),
            ];
            prop_oneof![
                (inner.clone(), sep.clone(), op, sep.clone(), inner.clone())
                    .prop_map(|(a, s1, o, s2, b)| format!("{a}{s1}{o}{s2}{b}")),
                (func, proptest::collection::vec(inner.clone(), 0..3))
                    .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
                (inner.clone(), ty).prop_map(|(a, t)| format!("{a}::{t}")),
                inner.clone().prop_map(|a| format!("({a})")),
                inner.clone().prop_map(|a| format!("-{a}")),
                inner.clone().prop_map(|a| format!("x[{a}:2]")),
                (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} IN ({b}, 3)")),
                (inner.clone(), inner.clone())
                    .prop_map(|(a, b)| format!("CASE WHEN {a} THEN {b} ELSE 'e' END")),
                (inner.clone(), inner).prop_map(|(a, b)| format!("{a} BETWEEN {b} AND 10")),
            ]
        })
    }

    fn statement() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        (0..10usize, expr(), expr(), expr(), 0..4usize).prop_map(|(form, a, b, c, end)| {
            let body = match form {
                0 => format!("SELECT {a}, {b} FROM t WHERE {c}"),
                1 => format!("SELECT {a} AS v FROM t JOIN u ON u.id = {b} LIMIT {c}"),
                2 => format!("INSERT INTO t (a, b) VALUES ({a}, {b}) RETURNING {c}"),
                3 => format!("UPDATE t SET a = {a}, b = {b} WHERE {c}"),
                4 => format!("DELETE FROM t WHERE {a} AND {b}"),
                5 => format!(
                    "WITH w AS (SELECT {a} AS v FROM payments) SELECT v, {b} FROM w WHERE {c}"
                ),
                6 => format!("WITH d AS (DELETE FROM t WHERE {a} RETURNING *) SELECT {b} FROM d"),
                7 => format!("VALUES ({a}, {b}), ({c}, 1)"),
                8 => format!("SELECT {a} FROM t GROUP BY {b} HAVING {c} ORDER BY 1 OFFSET 2"),
                _ => format!("SELECT * FROM t WHERE {a} FOR UPDATE"),
            };
            let end = ["", ";", " ; -- end", "\n"][end];
            format!("{body}{end}")
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1000))]

        /// Generated statements and the same statements with other literal
        /// values, classified in turn through one classifier, classify as
        /// without a cache.
        #[test]
        fn generated_statements_classify_as_uncached(
            a in statement(),
            seed in proptest::prelude::any::<u64>(),
        ) {
            let b = mutate_literals(&a, seed);
            let c = super::super::SqlClassifier::new(
                super::super::SqlDialect::Postgres,
                super::super::ClassifyLimits::default(),
            );
            for text in [&a, &b] {
                proptest::prop_assert_eq!(&*c.classify(text), &c.classify_uncached(text), "text {:?}", text);
            }
        }
    }
}
