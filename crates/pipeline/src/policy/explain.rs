//! `airlock policy explain`: the decision, per-statement verdicts and classification, for people and scripts.

use std::fmt;

use serde::Serialize;

use crate::model::{ConnectionInfo, Decision, Identity, SqlStatement};

/// Everything that went into a decision (`--json` serializes this).
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub identity: Identity,
    pub connection: ConnectionInfo,
    pub policy_version: String,
    pub policy_origin: String,
    /// The overall decision, as the pipeline would enforce it.
    pub decision: Decision,
    pub statements: Vec<StatementExplanation>,
}

/// One statement's classification and its own verdict.
#[derive(Debug, Clone, Serialize)]
pub struct StatementExplanation {
    pub index: usize,
    pub statement: SqlStatement,
    pub decision: Decision,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.decision;
        writeln!(
            f,
            "{} {} on {}: {}",
            self.identity.kind.as_str(),
            self.identity.name,
            self.connection.name,
            d.verdict.as_str().to_uppercase()
        )?;
        write_decision(f, d, "  ")?;
        writeln!(
            f,
            "  policy: {} (version {})",
            self.policy_origin, self.policy_version
        )?;
        if self.statements.is_empty() {
            writeln!(f, "  (no statements)")?;
        }
        for s in &self.statements {
            let st = &s.statement;
            writeln!(f)?;
            writeln!(f, "statement {}: {}", s.index + 1, one_line(&st.text, 120))?;
            writeln!(f, "  kind {}, class {}", st.kind, st.class.as_str())?;
            if !st.tables_read.is_empty() {
                writeln!(f, "  reads: {}", st.tables_read.join(", "))?;
            }
            if !st.tables_written.is_empty() {
                writeln!(f, "  writes: {}", st.tables_written.join(", "))?;
            }
            if let Some(w) = st.has_where {
                writeln!(f, "  WHERE: {}", if w { "yes" } else { "no" })?;
            }
            if !st.functions.is_empty() {
                writeln!(f, "  functions: {}", st.functions.join(", "))?;
            }
            if let Some(note) = &st.note {
                writeln!(f, "  note: {note}")?;
            }
            writeln!(f, "  verdict: {}", s.decision.verdict.as_str())?;
            write_decision(f, &s.decision, "    ")?;
        }
        Ok(())
    }
}

fn write_decision(f: &mut fmt::Formatter<'_>, d: &Decision, indent: &str) -> fmt::Result {
    writeln!(f, "{indent}action: {}", d.action)?;
    if d.policies.is_empty() {
        writeln!(f, "{indent}determined by: no policy (nothing permits it)")?;
    } else {
        writeln!(f, "{indent}determined by: {}", d.policies.join(", "))?;
    }
    if let Some(reason) = &d.reason {
        writeln!(f, "{indent}reason: {reason}")?;
    }
    if d.verdict == crate::model::Verdict::Review {
        let reviewers = if d.reviewers.is_empty() {
            "any reviewer".to_string()
        } else {
            d.reviewers.join(", ")
        };
        write!(
            f,
            "{indent}review: {} approval(s) from {reviewers}",
            d.min_approvals
        )?;
        if let Some(ttl) = d.approval_ttl_secs {
            write!(
                f,
                ", expires after {}",
                humantime::format_duration(std::time::Duration::from_secs(ttl))
            )?;
        }
        writeln!(f)?;
    }
    Ok(())
}

/// Statement text on one line, shortened for a terminal.
fn one_line(text: &str, max_chars: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max_chars {
        flat
    } else {
        let mut short: String = flat.chars().take(max_chars).collect();
        short.push('…');
        short
    }
}
