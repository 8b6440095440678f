//! Splits a command into statements, parses each one and says what it does.
//!
//! The flow, all fail-closed:
//! 1. Tokenize the whole command once (sqlparser's tokenizer knows comments,
//!    dollar quotes, MySQL `/*! ... */` hints). A tokenizer error makes the
//!    whole command one `unknown` statement.
//! 2. Estimate expression depth from the tokens (see [`nesting_estimate`]).
//!    sqlparser builds long operator chains (`1+1+...`, `a OR b OR ...`,
//!    `UNION` chains) iteratively but the resulting tree is as deep as the
//!    chain, and walking or merely dropping such a tree recurses once per
//!    level. Statements whose estimate exceeds the limit are `unknown`
//!    without being parsed, so no input can overflow the stack.
//! 3. Parse statement by statement with one parser (so bodies containing
//!    `;` stay whole), with sqlparser's recursion limit. Each statement's
//!    text is sliced from the original using token spans, comments inside it
//!    kept, for audit.
//! 4. At the first statement that fails to parse, the rest of the command is
//!    cut at top-level `;` tokens and each piece parsed on its own, so one
//!    bad statement does not hide what the others do. Pieces that still fail
//!    are `unknown` (or, for a few unmistakable leading keywords like `DO`,
//!    the class those keywords always mean).

use std::cell::RefCell;

use sqlparser::ast::{
    CopySource, CopyTarget, ObjectName, ObjectType, Set, SetExpr, Statement, Visit,
};
use sqlparser::dialect::{Dialect, MySqlDialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use super::functions::risky_function;
use super::normalize::{Literal, parsed_literals};
use super::walk::{Facts, Walker, object_name};
use super::{ClassifyLimits, SqlDialect};
use crate::model::{ActionClass, SqlStatement};

/// Classifies a whole command text into its statements.
pub(super) fn classify_text(
    text: &str,
    dialect: SqlDialect,
    limits: &ClassifyLimits,
) -> Vec<SqlStatement> {
    classify_text_with(text, dialect, limits, None)
}

/// [`classify_text`], also returning, for each statement that was parsed,
/// the literal values of its parse tree ([`parsed_literals`]); the shape
/// cache checks them against its lexer. The statements are exactly those
/// [`classify_text`] returns.
pub(super) fn classify_text_with_literals(
    text: &str,
    dialect: SqlDialect,
    limits: &ClassifyLimits,
) -> (Vec<SqlStatement>, Vec<Option<Vec<Literal>>>) {
    let literals = RefCell::new(Vec::new());
    let statements = classify_text_with(text, dialect, limits, Some(&literals));
    (statements, literals.into_inner())
}

fn classify_text_with(
    text: &str,
    dialect: SqlDialect,
    limits: &ClassifyLimits,
    literals: Option<&RefCell<Vec<Option<Vec<Literal>>>>>,
) -> Vec<SqlStatement> {
    if text.len() > limits.max_statement_bytes {
        return vec![unknown(
            text.trim().to_string(),
            format!(
                "command is {} bytes, over the {}-byte limit; not parsed",
                text.len(),
                limits.max_statement_bytes
            ),
        )];
    }
    let sql_dialect: &dyn Dialect = match dialect {
        SqlDialect::Postgres => &PostgreSqlDialect {},
        SqlDialect::MySql => &MySqlDialect {},
    };
    let ctx = Ctx {
        dialect,
        sql_dialect,
        limits,
        hinted: dialect == SqlDialect::MySql && text.contains("/*!"),
        literals,
    };
    let tokens = match Tokenizer::new(sql_dialect, text).tokenize_with_location() {
        Ok(tokens) => tokens,
        Err(e) => {
            let trimmed = text.trim();
            if trimmed.is_empty() {
                return Vec::new();
            }
            return vec![unknown(trimmed.to_string(), format!("tokenizer: {e}"))];
        }
    };
    if dialect == SqlDialect::Postgres && operator_runs_into_comment(&tokens) {
        return vec![unknown(
            text.trim().to_string(),
            "an operator runs into `--` or `/*`, which PostgreSQL reads as the start of a comment; not parsed".into(),
        )];
    }
    let mut out = Vec::new();
    let mut source = Source::new(text);
    let deep = split_top_level(&tokens)
        .iter()
        .any(|chunk| nesting_estimate(chunk) > limits.max_nesting);
    if deep {
        classify_pieces(&ctx, &mut source, tokens, &mut out);
        return out;
    }
    if let Some(failed_at) = classify_whole(&ctx, &mut source, tokens, &mut out) {
        // Re-tokenize from the failed statement on: the tokens went into the
        // parser, and the rest of the text is all that is needed. With MySQL
        // executable comments the offset cannot be trusted (an offset inside
        // a string would re-read its content as code, or code as a string),
        // so the whole command is cut into pieces instead.
        let rest = if ctx.hinted {
            out.clear();
            if let Some(literals) = ctx.literals {
                literals.borrow_mut().clear();
            }
            text
        } else {
            source.text.get(failed_at..).unwrap_or("")
        };
        let mut rest_source = Source::new(rest);
        match Tokenizer::new(sql_dialect, rest).tokenize_with_location() {
            Ok(tokens) => classify_pieces(&ctx, &mut rest_source, tokens, &mut out),
            Err(e) => out.push(unknown(rest.trim().to_string(), format!("tokenizer: {e}"))),
        }
    }
    out
}

struct Ctx<'a> {
    dialect: SqlDialect,
    sql_dialect: &'a dyn Dialect,
    limits: &'a ClassifyLimits,
    /// MySQL executable comments (`/*! ... */`) are present. Their tokens
    /// carry the comment's position rather than their own, so slices of the
    /// original would be wrong; statement text is rendered from the AST.
    hinted: bool,
    /// Where to record each parsed statement's literal values, if wanted.
    literals: Option<&'a RefCell<Vec<Option<Vec<Literal>>>>>,
}

impl Ctx<'_> {
    fn classify(&self, stmt: &Statement, sliced: String) -> SqlStatement {
        if let Some(literals) = self.literals {
            literals.borrow_mut().push(parsed_literals(stmt));
        }
        let text = if self.hinted {
            stmt.to_string()
        } else {
            sliced
        };
        classify_statement(stmt, self.dialect, text)
    }

    fn parser(&self, tokens: Vec<TokenWithSpan>) -> Parser<'_> {
        Parser::new(self.sql_dialect)
            .with_recursion_limit(self.limits.max_depth)
            .with_tokens_with_locations(tokens)
    }
}

/// Parses statements one after another. Returns the byte offset of the first
/// statement that failed to parse, if any; statements before it are in `out`.
fn classify_whole(
    ctx: &Ctx<'_>,
    source: &mut Source<'_>,
    tokens: Vec<TokenWithSpan>,
    out: &mut Vec<SqlStatement>,
) -> Option<usize> {
    // The parser owns the tokens; keep what is needed to find statement ends.
    let meta: Vec<(Location, Location, bool)> = tokens
        .iter()
        .map(|t| (t.span.start, t.span.end, is_significant(&t.token)))
        .collect();
    let mut parser = ctx.parser(tokens);
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token_ref();
        if next.token == Token::EOF {
            return None;
        }
        let start = source.offset(next.span.start);
        let parsed = parser.parse_statement();
        let at_boundary = matches!(parser.peek_token_ref().token, Token::SemiColon | Token::EOF);
        match parsed {
            // A statement followed by more text without a `;` is a syntax
            // error for the server too; treat it like any parse failure.
            Ok(stmt) if at_boundary => {
                let end = last_significant_end(&meta, parser.index())
                    .map(|loc| source.offset(loc))
                    .unwrap_or(start);
                let text = source.slice(start, end);
                out.push(ctx.classify(&stmt, text));
            }
            _ => return Some(start),
        }
    }
}

/// Cuts `tokens` at top-level `;` and classifies each piece on its own.
fn classify_pieces(
    ctx: &Ctx<'_>,
    source: &mut Source<'_>,
    tokens: Vec<TokenWithSpan>,
    out: &mut Vec<SqlStatement>,
) {
    let mut piece: Vec<TokenWithSpan> = Vec::new();
    for token in tokens {
        if token.token == Token::SemiColon {
            classify_piece(ctx, source, std::mem::take(&mut piece), out);
        } else {
            piece.push(token);
        }
    }
    classify_piece(ctx, source, piece, out);
}

fn classify_piece(
    ctx: &Ctx<'_>,
    source: &mut Source<'_>,
    piece: Vec<TokenWithSpan>,
    out: &mut Vec<SqlStatement>,
) {
    let mut significant = piece.iter().filter(|t| is_significant(&t.token));
    let Some(first) = significant.next() else {
        return;
    };
    let last = significant.next_back().unwrap_or(first);
    let start = source.offset(first.span.start);
    let end = source.offset(last.span.end);
    let text = source.slice(start, end);
    if nesting_estimate(&piece) > ctx.limits.max_nesting {
        out.push(unknown(
            text,
            format!(
                "expression nesting over the limit of {}; not parsed",
                ctx.limits.max_nesting
            ),
        ));
        return;
    }
    let leading = leading_keywords(&piece);
    let mut parser = ctx.parser(piece);
    match parser.parse_statements() {
        Ok(stmts) if stmts.len() == 1 => {
            if let Some(stmt) = stmts.first() {
                out.push(ctx.classify(stmt, text));
            }
        }
        Ok(stmts) if stmts.is_empty() => {}
        Ok(_) => out.push(unknown(
            text,
            "several statements without a `;` between them".into(),
        )),
        Err(e) => out.push(match by_leading_keywords(&leading) {
            Some((kind, class)) => SqlStatement {
                kind: kind.into(),
                class,
                tables_read: Vec::new(),
                tables_written: Vec::new(),
                has_where: None,
                functions: Vec::new(),
                text,
                note: Some(format!(
                    "not parsed ({e}); classified by its leading keywords"
                )),
            },
            None => unknown(text, format!("parser: {e}")),
        }),
    }
}

/// Statements the parser does not support whose leading keywords alone say
/// what they do. Only keywords that mean the same thing whatever follows are
/// listed, and only where the class is at least as strict as `unknown` is in
/// practice (each of these runs server-side code or changes the server).
fn by_leading_keywords(words: &[String]) -> Option<(&'static str, ActionClass)> {
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["DO", ..] => Some(("do", ActionClass::Admin)),
        ["ALTER", "SYSTEM", ..] => Some(("alter_system", ActionClass::Admin)),
        ["CHECKPOINT", ..] => Some(("checkpoint", ActionClass::Admin)),
        ["LOAD", ..] => Some(("load", ActionClass::Admin)),
        ["SECURITY", "LABEL", ..] => Some(("security_label", ActionClass::Admin)),
        _ => None,
    }
}

/// The first two words of a piece, upper-cased; quoted words do not count
/// (`"do"` is an identifier, not the DO keyword).
fn leading_keywords(tokens: &[TokenWithSpan]) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| is_significant(&t.token))
        .take(2)
        .map(|t| match &t.token {
            Token::Word(w) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => String::new(),
        })
        .collect()
}

/// PostgreSQL starts a comment at `--` or `/*` even inside an operator
/// (`#--x` is `#` and a comment), but sqlparser reads some such runs as one
/// operator (`#--`, `|/*`) or as `?-` and `-`. From there the two disagree
/// on what is code and what is a comment or a string, so a statement could
/// hide inside what the classifier takes for a literal. Such text is not
/// parsed at all: adjacent operator tokens whose characters contain `--` or
/// `/*` mean sqlparser swallowed a comment start.
fn operator_runs_into_comment(tokens: &[TokenWithSpan]) -> bool {
    use std::fmt::Write;
    const OPERATOR_CHARS: &[u8] = b"+-*/<>=~!@#%^&|`?";
    let mut shown = String::new();
    let mut run = String::new();
    for t in tokens {
        if matches!(t.token, Token::Whitespace(_)) {
            run.clear();
            continue;
        }
        shown.clear();
        let _ = write!(shown, "{}", t.token);
        if !shown.is_empty() && shown.bytes().all(|c| OPERATOR_CHARS.contains(&c)) {
            run.push_str(&shown);
            if run.contains("--") || run.contains("/*") {
                return true;
            }
        } else {
            run.clear();
        }
    }
    false
}

fn is_significant(token: &Token) -> bool {
    !matches!(token, Token::Whitespace(_) | Token::EOF)
}

/// End of the last non-whitespace, non-`;` token before token index `upto`.
fn last_significant_end(meta: &[(Location, Location, bool)], upto: usize) -> Option<Location> {
    meta.get(..upto.min(meta.len()))?
        .iter()
        .rev()
        .find(|(start, _, significant)| *significant && start.line > 0)
        .map(|(_, end, _)| *end)
}

fn split_top_level(tokens: &[TokenWithSpan]) -> Vec<&[TokenWithSpan]> {
    tokens.split(|t| t.token == Token::SemiColon).collect()
}

/// An upper bound on how deep the syntax tree of these tokens can be.
///
/// Within one parenthesis level, operators between commas chain into a
/// left-deep tree, so a run's depth is its operator count; set operators
/// (`UNION`...) chain across commas. A nested level adds its own depth to the
/// run that contains it. Unknown token kinds count as operators, so the
/// estimate only errs high.
pub(super) fn nesting_estimate(tokens: &[TokenWithSpan]) -> usize {
    #[derive(Default)]
    struct Level {
        run: usize,
        child: usize,
        best: usize,
        set_ops: usize,
    }
    impl Level {
        fn close(&self) -> usize {
            self.set_ops + self.best.max(self.run + self.child)
        }
    }
    let mut stack = vec![Level::default()];
    for t in tokens {
        let top = stack.len() - 1;
        match &t.token {
            Token::LParen | Token::LBracket | Token::LBrace => {
                stack[top].run += 1;
                stack.push(Level::default());
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if stack.len() > 1 {
                    let inner = stack.pop().map(|l| l.close()).unwrap_or(0);
                    let top = stack.len() - 1;
                    stack[top].child = stack[top].child.max(inner);
                }
            }
            Token::Comma => {
                let level = &mut stack[top];
                level.best = level.best.max(level.run + level.child);
                level.run = 0;
                level.child = 0;
            }
            Token::Word(w) => match w.keyword {
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::MINUS => {
                    stack[top].set_ops += 1;
                }
                Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::BETWEEN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::DIV
                | Keyword::MOD
                | Keyword::OVERLAPS
                | Keyword::OPERATOR
                | Keyword::EXPLAIN
                | Keyword::DESCRIBE
                | Keyword::DESC
                | Keyword::PREPARE => stack[top].run += 1,
                _ => {}
            },
            Token::Whitespace(_)
            | Token::EOF
            | Token::Period
            | Token::SemiColon
            | Token::Number(..)
            | Token::Char(_)
            | Token::Placeholder(_)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_) => {}
            _ => stack[top].run += 1,
        }
    }
    // Unclosed levels still count: fold them outwards.
    while stack.len() > 1 {
        let inner = stack.pop().map(|l| l.close()).unwrap_or(0);
        let top = stack.len() - 1;
        stack[top].child = stack[top].child.max(inner);
    }
    stack.pop().map(|l| l.close()).unwrap_or(0)
}

/// Maps token locations (line, column in characters) to byte offsets.
///
/// Lookups arrive in increasing order, so a forward cursor makes the total
/// work linear even on one very long non-ASCII line.
struct Source<'t> {
    text: &'t str,
    line_starts: Vec<usize>,
    ascii: bool,
    /// Cursor: a (line, column) position and its byte offset.
    line: u64,
    column: u64,
    byte: usize,
}

impl<'t> Source<'t> {
    fn new(text: &'t str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        Source {
            text,
            line_starts,
            ascii: text.is_ascii(),
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    fn offset(&mut self, loc: Location) -> usize {
        let Some(line_start) = usize::try_from(loc.line)
            .ok()
            .and_then(|l| l.checked_sub(1))
            .and_then(|l| self.line_starts.get(l).copied())
        else {
            return self.text.len();
        };
        if self.ascii {
            let col = usize::try_from(loc.column.saturating_sub(1)).unwrap_or(usize::MAX);
            return line_start.saturating_add(col).min(self.text.len());
        }
        if loc.line != self.line || loc.column < self.column {
            self.line = loc.line;
            self.column = 1;
            self.byte = line_start;
        }
        while self.column < loc.column {
            match self.text.get(self.byte..).and_then(|s| s.chars().next()) {
                Some('\n') | None => break,
                Some(c) => {
                    self.byte += c.len_utf8();
                    self.column += 1;
                }
            }
        }
        self.byte
    }

    /// The text between two offsets, trimmed; never panics.
    fn slice(&self, start: usize, end: usize) -> String {
        self.text
            .get(start..end.max(start))
            .unwrap_or(self.text)
            .trim()
            .trim_end_matches(';')
            .trim_end()
            .to_string()
    }
}

pub(super) fn unknown(text: String, note: String) -> SqlStatement {
    SqlStatement {
        kind: "unknown".into(),
        class: ActionClass::Unknown,
        tables_read: Vec::new(),
        tables_written: Vec::new(),
        has_where: None,
        functions: Vec::new(),
        text,
        note: Some(note),
    }
}

/// How strong a class is when a statement's parts disagree (a SELECT that
/// calls `nextval` writes). Unknown never takes part: it is only produced
/// for text that did not parse.
fn rank(class: ActionClass) -> u8 {
    match class {
        ActionClass::Read | ActionClass::Tx | ActionClass::Other => 0,
        ActionClass::Write => 1,
        ActionClass::Ddl => 2,
        ActionClass::Admin => 3,
        ActionClass::Unknown => 4,
    }
}

fn stronger(a: ActionClass, b: ActionClass) -> ActionClass {
    if rank(b) > rank(a) { b } else { a }
}

/// Classifies one parsed statement whose source text is `text`.
pub(super) fn classify_statement(
    stmt: &Statement,
    dialect: SqlDialect,
    text: String,
) -> SqlStatement {
    let mut s = statement_facts(stmt, dialect);
    s.text = text;
    s
}

fn statement_facts(stmt: &Statement, dialect: SqlDialect) -> SqlStatement {
    match stmt {
        // EXPLAIN plans without running; EXPLAIN ANALYZE runs the statement.
        Statement::Explain {
            analyze, statement, ..
        } => {
            let inner = statement_facts(statement, dialect);
            if *analyze {
                return SqlStatement {
                    kind: "explain".into(),
                    class: stronger(inner.class, ActionClass::Read),
                    ..inner
                };
            }
            let mut tables = inner.tables_read;
            tables.extend(inner.tables_written);
            super::walk::dedup(&mut tables);
            return SqlStatement {
                kind: "explain".into(),
                class: if inner.class == ActionClass::Unknown {
                    ActionClass::Unknown
                } else {
                    ActionClass::Read
                },
                tables_read: tables,
                tables_written: Vec::new(),
                has_where: None,
                ..inner
            };
        }
        // PREPARE is judged by what it prepares: EXECUTE cannot be judged
        // later, because the prepared text is not visible then.
        Statement::Prepare { statement, .. } => {
            return SqlStatement {
                kind: "prepare".into(),
                ..statement_facts(statement, dialect)
            };
        }
        _ => {}
    }
    let mut walker = Walker::new(dialect);
    let (kind, class, note) = shape(stmt, &mut walker);
    let _ = stmt.visit(&mut walker);
    let facts = walker.finish();
    let (kind, class) = escalate(kind, class, &facts);
    SqlStatement {
        kind,
        class,
        tables_read: facts.reads,
        tables_written: facts.writes,
        has_where: facts.has_where,
        functions: facts.functions,
        text: String::new(),
        note,
    }
}

/// Raises a statement's class for what its parts do, whatever its syntax.
fn escalate(kind: String, class: ActionClass, facts: &Facts) -> (String, ActionClass) {
    if class == ActionClass::Unknown {
        return (kind, class);
    }
    let mut kind = kind;
    let mut class = class;
    if kind == "select" {
        if facts.select_into {
            kind = "select_into".into();
        } else if facts.locking {
            kind = "select_for_update".into();
        }
    }
    if facts.dml || facts.select_into || facts.locking {
        class = stronger(class, ActionClass::Write);
    }
    for f in &facts.functions {
        if let Some(risky) = risky_function(f) {
            class = stronger(class, risky.class);
        }
    }
    (kind, class)
}

type Shape = (String, ActionClass, Option<String>);

fn plain(kind: &str, class: ActionClass) -> Shape {
    (kind.to_string(), class, None)
}

fn not_for_dialect(kind: &str) -> Shape {
    (
        "unknown".into(),
        ActionClass::Unknown,
        Some(format!(
            "`{kind}` is not a statement this gateway expects here"
        )),
    )
}

/// Kind and class from the statement's form; marks write targets that the
/// walk cannot tell apart from reads.
fn shape(stmt: &Statement, w: &mut Walker) -> Shape {
    use ActionClass::{Admin, Ddl, Other, Read, Tx, Unknown, Write};
    match stmt {
        Statement::Query(q) => match &*q.body {
            // `WITH ... INSERT/UPDATE/DELETE/MERGE`: the body decides the kind.
            SetExpr::Insert(_) => plain("insert", Write),
            SetExpr::Update(_) => plain("update", Write),
            SetExpr::Delete(_) => plain("delete", Write),
            SetExpr::Merge(_) => plain("merge", Write),
            _ => plain("select", Read),
        },
        Statement::Insert(_) => plain("insert", Write),
        Statement::Update(_) => plain("update", Write),
        Statement::Delete(_) => plain("delete", Write),
        Statement::Merge(_) => plain("merge", Write),
        Statement::Copy {
            source, to, target, ..
        } => {
            let kind = if *to { "copy_to" } else { "copy_from" };
            if let CopySource::Table { table_name, .. } = source {
                if *to {
                    w.read_target(table_name);
                } else {
                    w.write_target(table_name);
                }
            }
            let class = match target {
                CopyTarget::Stdin | CopyTarget::Stdout if *to => Read,
                CopyTarget::Stdin | CopyTarget::Stdout => Write,
                // A server-side file or program: reads or writes the
                // server's file system, or runs a shell command.
                CopyTarget::File { .. } | CopyTarget::Program { .. } => Admin,
            };
            plain(kind, class)
        }
        Statement::Truncate(t) => {
            for target in &t.table_names {
                w.write_target(&target.name);
            }
            // TRUNCATE removes every row: policies see it as unbounded.
            w.facts.note_where(false);
            plain("truncate", Write)
        }
        Statement::Drop {
            object_type,
            names,
            table,
            ..
        } => {
            let (kind, class) = match object_type {
                ObjectType::Table => ("drop_table", Ddl),
                ObjectType::View => ("drop_view", Ddl),
                ObjectType::MaterializedView => ("drop_materialized_view", Ddl),
                ObjectType::Index => ("drop_index", Ddl),
                ObjectType::Schema => ("drop_schema", Ddl),
                ObjectType::Database => ("drop_database", Ddl),
                ObjectType::Sequence => ("drop_sequence", Ddl),
                ObjectType::Type => ("drop_type", Ddl),
                ObjectType::Collation => ("drop_collation", Ddl),
                ObjectType::Role => ("drop_role", Admin),
                ObjectType::User => ("drop_user", Admin),
                ObjectType::Stage => ("drop_stage", Ddl),
                ObjectType::Stream => ("drop_stream", Ddl),
                ObjectType::Warehouse => ("drop_warehouse", Ddl),
            };
            if matches!(
                object_type,
                ObjectType::Table | ObjectType::View | ObjectType::MaterializedView
            ) {
                for name in names {
                    w.write_target(name);
                }
            }
            // MySQL `DROP INDEX i ON t` changes table `t`.
            if let Some(table) = table {
                w.write_target(table);
            }
            plain(kind, class)
        }
        Statement::DropFunction(_) => plain("drop_function", Ddl),
        Statement::DropProcedure { .. } => plain("drop_procedure", Ddl),
        Statement::DropTrigger(t) => {
            if let Some(table) = &t.table_name {
                w.write_target(table);
            }
            plain("drop_trigger", Ddl)
        }
        Statement::DropDomain(_) => plain("drop_domain", Ddl),
        Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_) => plain("drop_operator", Ddl),
        // Row-level security, extensions (server code), secrets and
        // connectors are security or server configuration.
        Statement::DropPolicy(_) => plain("drop_policy", Admin),
        Statement::DropExtension(_) => plain("drop_extension", Admin),
        Statement::DropSecret { .. } => plain("drop_secret", Admin),
        Statement::DropConnector { .. } => plain("drop_connector", Admin),
        Statement::CreateTable(ct) => {
            w.write_target(&ct.name);
            plain("create_table", Ddl)
        }
        Statement::CreateView(cv) => {
            w.write_target(&cv.name);
            if cv.materialized {
                plain("create_materialized_view", Ddl)
            } else {
                plain("create_view", Ddl)
            }
        }
        Statement::CreateIndex(ci) => {
            w.write_target(&ci.table_name);
            plain("create_index", Ddl)
        }
        Statement::CreateVirtualTable { name, .. } => {
            w.write_target(name);
            plain("create_table", Ddl)
        }
        Statement::CreateSchema { .. } => plain("create_schema", Ddl),
        Statement::CreateDatabase { .. } => plain("create_database", Ddl),
        Statement::CreateFunction(_) => plain("create_function", Ddl),
        Statement::CreateProcedure { .. } => plain("create_procedure", Ddl),
        Statement::CreateTrigger(t) => {
            w.write_target(&t.table_name);
            plain("create_trigger", Ddl)
        }
        Statement::CreateSequence { .. } => plain("create_sequence", Ddl),
        Statement::CreateType { .. } => plain("create_type", Ddl),
        Statement::CreateDomain(_) => plain("create_domain", Ddl),
        Statement::CreateCollation(_) => plain("create_collation", Ddl),
        Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_) => plain("create_operator", Ddl),
        Statement::CreateTextSearch(_) => plain("create_text_search", Ddl),
        Statement::CreateRole(_) => plain("create_role", Admin),
        Statement::CreateUser(_) => plain("create_user", Admin),
        Statement::CreateExtension(_) => plain("create_extension", Admin),
        Statement::CreatePolicy(_) => plain("create_policy", Admin),
        Statement::CreateServer(_) => plain("create_server", Admin),
        Statement::CreateSecret { .. } => plain("create_secret", Admin),
        Statement::CreateConnector(_) => plain("create_connector", Admin),
        Statement::AlterTable(at) => {
            w.write_target(&at.name);
            plain("alter_table", Ddl)
        }
        Statement::AlterView { name, .. } => {
            w.write_target(name);
            plain("alter_view", Ddl)
        }
        Statement::AlterSchema(_) => plain("alter_schema", Ddl),
        Statement::AlterIndex { .. } => plain("alter_index", Ddl),
        Statement::AlterFunction(_) => plain("alter_function", Ddl),
        Statement::AlterType(_) => plain("alter_type", Ddl),
        Statement::AlterCollation(_) => plain("alter_collation", Ddl),
        Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_) => plain("alter_operator", Ddl),
        Statement::AlterTextSearch(_) => plain("alter_text_search", Ddl),
        Statement::AlterRole { .. } => plain("alter_role", Admin),
        Statement::AlterUser(_) => plain("alter_user", Admin),
        Statement::AlterPolicy(_) => plain("alter_policy", Admin),
        Statement::AlterConnector { .. } => plain("alter_connector", Admin),
        Statement::RenameTable(renames) => {
            for r in renames {
                w.write_target(&r.old_name);
                w.write_target(&r.new_name);
            }
            plain("rename_table", Ddl)
        }
        Statement::Comment { .. } => plain("comment", Ddl),
        Statement::Grant(_) => plain("grant", Admin),
        Statement::Revoke(_) => plain("revoke", Admin),
        Statement::Deny(_) => plain("deny", Admin),
        Statement::Set(set) => set_shape(set),
        Statement::Reset(_) => plain("reset", Other),
        Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => plain("show", Other),
        Statement::ExplainTable { .. } => plain("describe", Other),
        Statement::Use(_) => plain("use", Other),
        Statement::StartTransaction { statements, .. } if statements.is_empty() => {
            plain("begin", Tx)
        }
        // A BEGIN ... END block with statements inside (not PostgreSQL or
        // MySQL syntax): its contents are walked, but it is not trusted.
        Statement::StartTransaction { .. } => (
            "unknown".into(),
            Unknown,
            Some("transaction block with a body".into()),
        ),
        Statement::Commit { .. } => plain("commit", Tx),
        Statement::Rollback { .. } => plain("rollback", Tx),
        Statement::Savepoint { .. } => plain("savepoint", Tx),
        Statement::ReleaseSavepoint { .. } => plain("release", Tx),
        Statement::Execute { .. } => (
            "execute".into(),
            Unknown,
            Some("EXECUTE runs a prepared statement whose text is not visible here".into()),
        ),
        Statement::Deallocate { .. } => plain("deallocate", Other),
        Statement::LISTEN { .. } => plain("listen", Other),
        Statement::UNLISTEN { .. } => plain("unlisten", Other),
        Statement::NOTIFY { .. } => plain("notify", Other),
        Statement::Discard { .. } => plain("discard", Other),
        // VACUUM (FULL) can take exclusive locks and rewrite tables.
        Statement::Vacuum(v) => {
            if let Some(table) = &v.table_name {
                w.write_target(table);
            }
            plain("vacuum", Admin)
        }
        Statement::Analyze(_) => plain("analyze", Other),
        Statement::Call(f) => {
            w.facts.functions.push(super::walk::function_name(&f.name));
            plain("call", Write)
        }
        Statement::Declare { .. } => plain("declare", Read),
        Statement::Fetch { .. } => plain("fetch", Read),
        Statement::Close { .. } => plain("close", Other),
        Statement::Open(_) => plain("open", Read),
        Statement::Lock(lock) => {
            for t in &lock.tables {
                w.write_target(&t.name);
            }
            plain("lock", Write)
        }
        Statement::LockTables { tables } => {
            for t in tables {
                w.facts.writes.push(super::walk::ident(&t.table));
            }
            plain("lock", Write)
        }
        Statement::UnlockTables => plain("unlock", Other),
        Statement::Kill { .. } => plain("kill", Admin),
        Statement::Flush { .. } => plain("flush", Admin),
        Statement::Load { .. } => plain("load", Admin),
        Statement::LoadData { table_name, .. } => {
            w.write_target(table_name);
            plain("load_data", Admin)
        }
        Statement::Explain { .. } | Statement::Prepare { .. } => {
            // Handled before the walk; kept here so the match stays exhaustive.
            plain("explain", Read)
        }
        Statement::Directory { .. } => not_for_dialect("insert_directory"),
        Statement::CopyIntoSnowflake { .. } => not_for_dialect("copy_into"),
        Statement::Case(_)
        | Statement::If(_)
        | Statement::While(_)
        | Statement::Raise(_)
        | Statement::Return(_)
        | Statement::Throw(_)
        | Statement::Print(_)
        | Statement::WaitFor(_)
        | Statement::RaisError { .. }
        | Statement::Assert { .. } => not_for_dialect("procedural"),
        Statement::Msck(_)
        | Statement::Install { .. }
        | Statement::Cache { .. }
        | Statement::UNCache { .. }
        | Statement::Unload { .. }
        | Statement::OptimizeTable { .. }
        | Statement::List(_)
        | Statement::Put { .. }
        | Statement::Remove(_)
        | Statement::AttachDatabase { .. }
        | Statement::AttachDuckDBDatabase { .. }
        | Statement::DetachDuckDBDatabase { .. }
        | Statement::ExportData(_)
        | Statement::Pragma { .. }
        | Statement::CreateMacro { .. }
        | Statement::CreateStage { .. }
        | Statement::CreateFileFormat { .. }
        | Statement::CreateWarehouse(_)
        | Statement::AlterSession { .. } => not_for_dialect("dialect-specific"),
    }
}

/// SET is harmless except where it changes who the session acts as.
fn set_shape(set: &Set) -> Shape {
    use ActionClass::{Admin, Other, Tx};
    match set {
        Set::SetRole { .. } => plain("set_role", Admin),
        Set::SetSessionAuthorization(_) => plain("set_session_authorization", Admin),
        Set::SetTransaction { .. } => plain("set_transaction", Tx),
        Set::SingleAssignment { variable, .. } => setting_shape(variable),
        Set::ParenthesizedAssignments { variables, .. } => variables
            .iter()
            .map(setting_shape)
            .max_by_key(|s| rank(s.1))
            .unwrap_or_else(|| plain("set", Other)),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .map(|a| setting_shape(&a.name))
            .max_by_key(|s| rank(s.1))
            .unwrap_or_else(|| plain("set", Other)),
        Set::SetSessionParam(_)
        | Set::SetTimeZone { .. }
        | Set::SetNames { .. }
        | Set::SetNamesDefault {} => plain("set", Other),
    }
}

/// `SET role = x` is `SET ROLE x` in PostgreSQL; a few settings bypass
/// integrity checks or change identity and are admin whatever the syntax.
fn setting_shape(name: &ObjectName) -> Shape {
    match object_name(name).as_str() {
        "role" => plain("set_role", ActionClass::Admin),
        "session_authorization" => plain("set_session_authorization", ActionClass::Admin),
        "session_replication_role" | "allow_system_table_mods" => plain("set", ActionClass::Admin),
        _ => plain("set", ActionClass::Other),
    }
}
