//! Turns command text into policy facts. SQL today; shell and HTTP later.
//!
//! CONTRACT (used by the pipeline; keep these signatures):
//! - `SqlClassifier::new(SqlDialect, ClassifyLimits) -> SqlClassifier`
//! - `SqlClassifier::classify(&self, text: &str) -> Arc<Classification>`:
//!   never panics, never fails: anything it cannot understand becomes one
//!   statement of kind `unknown`, class `Unknown`. Cached by text.

use std::sync::Arc;

use crate::model::{ActionClass, Classification, SqlStatement};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    MySql,
}

#[derive(Debug, Clone, Copy)]
pub struct ClassifyLimits {
    /// Statements longer than this are `unknown` without parsing.
    pub max_statement_bytes: usize,
}

impl Default for ClassifyLimits {
    fn default() -> Self {
        ClassifyLimits {
            max_statement_bytes: 1024 * 1024,
        }
    }
}

pub struct SqlClassifier {
    #[allow(dead_code)]
    dialect: SqlDialect,
    #[allow(dead_code)]
    limits: ClassifyLimits,
}

impl SqlClassifier {
    pub fn new(dialect: SqlDialect, limits: ClassifyLimits) -> Self {
        SqlClassifier { dialect, limits }
    }

    pub fn classify(&self, text: &str) -> Arc<Classification> {
        // Placeholder until the real classifier lands: everything is unknown.
        Arc::new(Classification {
            statements: vec![SqlStatement {
                kind: "unknown".into(),
                class: ActionClass::Unknown,
                tables_read: vec![],
                tables_written: vec![],
                has_where: None,
                functions: vec![],
                text: text.to_string(),
                note: Some("classifier not built yet".into()),
            }],
        })
    }
}
