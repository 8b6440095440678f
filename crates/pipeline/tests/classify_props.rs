//! Property tests: classification never panics, and tricks do not change what a statement is.

use airlock_pipeline::classify::{ClassifyLimits, SqlClassifier, SqlDialect};
use airlock_pipeline::model::{ActionClass, Classification};
use proptest::prelude::*;

fn classifier(dialect: SqlDialect) -> SqlClassifier {
    SqlClassifier::new(dialect, ClassifyLimits::default())
}

/// Invariants that hold for any input.
fn check_invariants(
    dialect: SqlDialect,
    input: &str,
    cls: &Classification,
) -> Result<(), TestCaseError> {
    // MySQL executable comments are the one case where statement text is
    // rendered from the parse tree instead of cut from the input.
    let rendered = dialect == SqlDialect::MySql && input.contains("/*!");
    for s in &cls.statements {
        // Statement text is cut from the input, never invented.
        prop_assert!(
            rendered || input.contains(&s.text),
            "text {:?} not in input {:?}",
            s.text,
            input
        );
        if s.kind == "unknown" {
            prop_assert_eq!(s.class, ActionClass::Unknown);
        }
        if s.class == ActionClass::Unknown {
            prop_assert!(s.note.is_some(), "unknown without a note: {:?}", s);
        }
    }
    // Only blank or comment-only input has no statements.
    if cls.statements.is_empty() {
        let has_word = input
            .split(|c: char| c.is_whitespace() || c == ';')
            .any(|w| !w.is_empty());
        if has_word {
            prop_assert!(
                input.contains("--") || input.contains("/*") || input.contains('#'),
                "no statements from {:?}",
                input
            );
        }
    }
    Ok(())
}

/// Pieces that exercise the tokenizer and parser edges: quotes, comments,
/// dollar quotes, separators, nesting, keywords.
const FRAGMENTS: &[&str] = &[
    "SELECT",
    "select",
    "FROM",
    "WHERE",
    "DELETE",
    "UPDATE",
    "SET",
    "INSERT",
    "INTO",
    "VALUES",
    "DROP",
    "TABLE",
    "TRUNCATE",
    "WITH",
    "AS",
    "UNION",
    "RETURNING",
    "COPY",
    "STDIN",
    "TO",
    "EXPLAIN",
    "ANALYZE",
    "PREPARE",
    "EXECUTE",
    "DO",
    "BEGIN",
    "COMMIT",
    "GRANT",
    "ON",
    "t",
    "\"Quoted\"",
    "public.t",
    "x",
    "1",
    "-1",
    "'str'",
    "'it''s'",
    "E'\\''",
    "$$",
    "$a$",
    "$$ ; $$",
    "$a$ x $a$",
    ";",
    ";;",
    "(",
    ")",
    ",",
    "*",
    "+",
    "=",
    "::",
    "[",
    "]",
    "/*",
    "*/",
    "/* c */",
    "--",
    "\n",
    "#",
    "`",
    "\\",
    "pg_terminate_backend(1)",
    "nextval('s')",
    "OR",
    "AND",
    "NOT",
    "IN",
    "EXISTS",
    "FOR",
    "\u{e9}",
    "\u{1F600}",
    "\t",
    "/*!",
    "/*!50000",
    "ONLY",
];

fn sqlish() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.join(" "))
}

fn sqlish_tight() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..40).prop_map(|v| v.concat())
}

/// Separators between tokens that must not change the statement.
const GAPS: &[&str] = &[
    " ",
    "  ",
    "\n",
    "\t",
    "/* x */",
    " /* ; DROP TABLE y */ ",
    "/**/",
    "/* /* nested */ */",
    " -- c ; \n",
];

fn random_case(word: &str, mask: u64) -> String {
    word.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// A statement written with random keyword case and random comments
/// and whitespace between its tokens.
fn disguised(words: &'static [&'static str]) -> impl Strategy<Value = String> {
    (
        prop::collection::vec((prop::sample::select(GAPS), any::<u64>()), words.len()),
        prop::sample::select(GAPS),
        prop::bool::ANY,
    )
        .prop_map(move |(parts, lead, semicolon)| {
            let mut out = String::from(lead);
            for (word, (gap, mask)) in words.iter().zip(parts) {
                // Identifiers stay as written; only keywords change case.
                if word.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                    out.push_str(&random_case(word, mask));
                } else {
                    out.push_str(word);
                }
                out.push_str(gap);
            }
            if semicolon {
                out.push(';');
            }
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        for dialect in [SqlDialect::Postgres, SqlDialect::MySql] {
            let cls = classifier(dialect).classify(&input);
            check_invariants(dialect, &input, &cls)?;
        }
    }

    #[test]
    fn sql_like_text_never_panics(input in sqlish()) {
        for dialect in [SqlDialect::Postgres, SqlDialect::MySql] {
            let c = classifier(dialect);
            let cls = c.classify(&input);
            check_invariants(dialect, &input, &cls)?;
            // Deterministic, and the cache returns what a fresh run computes.
            prop_assert_eq!(&*cls, &c.classify_uncached(&input));
        }
    }

    #[test]
    fn tight_sql_like_text_never_panics(input in sqlish_tight()) {
        for dialect in [SqlDialect::Postgres, SqlDialect::MySql] {
            let cls = classifier(dialect).classify(&input);
            check_invariants(dialect, &input, &cls)?;
        }
    }

    #[test]
    fn disguised_drop_is_still_a_drop(sql in disguised(&["DROP", "TABLE", "payments"])) {
        let cls = classifier(SqlDialect::Postgres).classify(&sql);
        prop_assert_eq!(cls.statements.len(), 1, "{:?}", sql);
        let s = &cls.statements[0];
        prop_assert_eq!(s.kind.as_str(), "drop_table", "{:?}", sql);
        prop_assert_eq!(s.class, ActionClass::Ddl);
        prop_assert_eq!(&s.tables_written, &vec!["payments".to_string()]);
    }

    #[test]
    fn disguised_unbounded_delete_is_still_unbounded(
        sql in disguised(&["DELETE", "FROM", "\"Payments\""])
    ) {
        let cls = classifier(SqlDialect::Postgres).classify(&sql);
        prop_assert_eq!(cls.statements.len(), 1, "{:?}", sql);
        let s = &cls.statements[0];
        prop_assert_eq!(s.kind.as_str(), "delete");
        prop_assert_eq!(s.has_where, Some(false));
        prop_assert_eq!(&s.tables_written, &vec!["Payments".to_string()]);
    }

    #[test]
    fn disguised_admin_function_is_still_admin(
        sql in disguised(&["SELECT", "PG_CATALOG", ".", "PG_TERMINATE_BACKEND", "(", "42", ")"])
    ) {
        let cls = classifier(SqlDialect::Postgres).classify(&sql);
        prop_assert_eq!(cls.statements.len(), 1, "{:?}", sql);
        prop_assert_eq!(cls.statements[0].class, ActionClass::Admin, "{:?}", sql);
    }

    #[test]
    fn statement_lists_split_one_per_statement(
        picks in prop::collection::vec(0usize..6, 1..8),
        gaps in prop::collection::vec(prop::sample::select(GAPS), 8),
    ) {
        const KNOWN: [(&str, &str); 6] = [
            ("SELECT * FROM t", "select"),
            ("DELETE FROM t WHERE id = 1", "delete"),
            ("DROP TABLE t", "drop_table"),
            ("SELECT $$;$$", "select"),
            ("BEGIN", "begin"),
            ("SELEKT ;", "unknown"),
        ];
        let mut sql = String::new();
        let mut expected = Vec::new();
        for (i, pick) in picks.iter().enumerate() {
            let (text, kind) = KNOWN[*pick];
            sql.push_str(text);
            sql.push(';');
            sql.push_str(gaps[i % gaps.len()]);
            expected.push(kind);
        }
        let cls = classifier(SqlDialect::Postgres).classify(&sql);
        let kinds: Vec<&str> = cls.statements.iter().map(|s| s.kind.as_str()).collect();
        prop_assert_eq!(kinds, expected, "{:?}", sql);
    }
}
