//! Column-name patterns: case-insensitive globs with `*` and `?`, optionally
//! qualified by table (`customers.email`) or schema and table.

/// A parsed `columns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnPattern {
    /// Table part, if the pattern was qualified. Holds a dot when the pattern
    /// named a schema too.
    table: Option<Glob>,
    column: Glob,
}

impl ColumnPattern {
    /// Whether the pattern names a table (`customers.email`).
    pub(crate) fn is_table_qualified(&self) -> bool {
        self.table.is_some()
    }
}

/// A lower-cased glob, kept as chars so `?` matches one character, not one byte.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Glob {
    chars: Vec<char>,
    qualified: bool,
}

impl Glob {
    fn new(text: &str) -> Glob {
        Glob {
            chars: text.to_lowercase().chars().collect(),
            qualified: text.contains('.'),
        }
    }
}

/// The column a pattern is matched against, lower-cased once per plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ColumnSubject {
    column: Vec<char>,
    /// The table name as resolved by the adapter, possibly schema-qualified.
    table_full: Option<Vec<char>>,
    /// The table name without its schema.
    table_short: Option<Vec<char>>,
}

impl ColumnSubject {
    pub(crate) fn new(table: Option<&str>, column: &str) -> ColumnSubject {
        let table = table.filter(|t| !t.is_empty()).map(str::to_lowercase);
        let table_short = table
            .as_deref()
            .map(|t| t.rsplit('.').next().unwrap_or(t).chars().collect());
        ColumnSubject {
            column: column.to_lowercase().chars().collect(),
            table_full: table.map(|t| t.chars().collect()),
            table_short,
        }
    }
}

impl ColumnPattern {
    /// Parses one pattern; the error is the reason, for the config message.
    pub(crate) fn parse(raw: &str) -> Result<ColumnPattern, String> {
        let text = raw.trim();
        if text.is_empty() {
            return Err("the pattern is empty".into());
        }
        if let Some(c) = text
            .chars()
            .find(|c| matches!(c, '[' | ']' | '{' | '}' | '\\') || c.is_control())
        {
            return Err(format!(
                "`{c}` is not supported; patterns know only `*` and `?`"
            ));
        }
        let dots = text.matches('.').count();
        if dots > 2 {
            return Err("at most `schema.table.column` is allowed".into());
        }
        if text.split('.').any(|part| part.trim().is_empty()) {
            return Err("a part around `.` is empty".into());
        }
        // The column is after the last dot; everything before names the table.
        match text.rsplit_once('.') {
            Some((table, column)) => Ok(ColumnPattern {
                table: Some(Glob::new(table)),
                column: Glob::new(column),
            }),
            None => Ok(ColumnPattern {
                table: None,
                column: Glob::new(text),
            }),
        }
    }

    pub(crate) fn matches(&self, subject: &ColumnSubject) -> bool {
        if !glob_match(&self.column.chars, &subject.column) {
            return false;
        }
        let Some(table) = &self.table else {
            return true;
        };
        // A qualified pattern needs a known table: an unresolved table never
        // matches (detectors still scan such columns if configured).
        let candidate = if table.qualified {
            subject.table_full.as_deref()
        } else {
            subject.table_short.as_deref()
        };
        candidate.is_some_and(|t| glob_match(&table.chars, t))
    }
}

/// Classic wildcard matching with single-star backtracking: linear for the
/// patterns people write, and never worse than O(p * s).
fn glob_match(pattern: &[char], subject: &[char]) -> bool {
    let (mut p, mut s) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while s < subject.len() {
        match (pattern.get(p), subject.get(s)) {
            (Some('*'), _) => {
                star = Some((p, s));
                p += 1;
            }
            (Some(pc), Some(sc)) if *pc == '?' || pc == sc => {
                p += 1;
                s += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    p = sp + 1;
                    s = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|c| *c == '*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, table: Option<&str>, column: &str, expected: bool) {
        let p = ColumnPattern::parse(pattern).unwrap();
        let s = ColumnSubject::new(table, column);
        assert_eq!(
            p.matches(&s),
            expected,
            "pattern {pattern:?} vs {table:?}.{column:?}"
        );
    }

    #[test]
    fn plain_names_match_case_insensitively() {
        check("email", None, "email", true);
        check("email", None, "EMAIL", true);
        check("Email", Some("customers"), "email", true);
        check("email", None, "email2", false);
        check("email", None, "e_mail", false);
    }

    #[test]
    fn stars_and_question_marks() {
        check("*card*", None, "card", true);
        check("*card*", None, "credit_card_number", true);
        check("*card*", None, "CardNo", true);
        check("*card*", None, "cart", false);
        check("ssn?", None, "ssn1", true);
        check("ssn?", None, "ssn", false);
        check("*", None, "anything", true);
        check("a*b*c", None, "axxbyyc", true);
        check("a*b*c", None, "axxbyy", false);
        check("*_at", None, "created_at", true);
        check("phone*", None, "ph", false);
        check("??", None, "é1", true);
    }

    #[test]
    fn table_qualified_patterns_need_a_known_table() {
        check("customers.email", Some("customers"), "email", true);
        check("customers.email", Some("public.customers"), "email", true);
        check("customers.email", Some("orders"), "email", false);
        check("customers.email", None, "email", false);
        check("cust*.e*", Some("Customers"), "EMAIL", true);
        check(
            "public.customers.email",
            Some("public.customers"),
            "email",
            true,
        );
        check("public.customers.email", Some("customers"), "email", false);
        check("*.customers.email", Some("crm.customers"), "email", true);
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        for bad in [
            "",
            "  ",
            ".email",
            "customers.",
            "a.b.c.d",
            "[ab]c",
            "x{1}",
            "a\\b",
        ] {
            assert!(
                ColumnPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }
}
