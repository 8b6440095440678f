//! Turns command text into policy facts. SQL today; shell and HTTP later.
//!
//! CONTRACT (used by the pipeline; keep these signatures):
//! - `SqlClassifier::new(SqlDialect, ClassifyLimits) -> SqlClassifier`
//! - `SqlClassifier::classify(&self, text: &str) -> Arc<Classification>`:
//!   never panics, never fails: anything it cannot understand becomes one
//!   statement of kind `unknown`, class `Unknown`. Cached by text.
//!
//! What a statement becomes (kind → class), in short:
//! - `select`, `copy_to` (to the client), `declare`, `fetch`, plain `explain` → read
//! - `insert`, `update`, `delete`, `merge`, `truncate`, `copy_from` (from the
//!   client), `call`, `lock`, `select_into`, `select_for_update`, and any
//!   statement containing a data-modifying CTE or calling a sequence or
//!   large-object mutator → write
//! - `create_*`, `alter_*`, `drop_*` of schema objects, `comment`,
//!   `rename_table` → ddl
//! - roles and privileges (`grant`, `revoke`, `create_role`, `set_role`,
//!   `set_session_authorization`, `drop_role`...), `alter_system`, `do`,
//!   `vacuum`, extensions, RLS policies, COPY to/from a server file or
//!   program, and any statement calling a function of
//!   [`functions::RISKY_FUNCTIONS`] marked admin → admin
//! - `begin`, `commit`, `rollback`, `savepoint`, `release`, `set_transaction` → tx
//! - `set`, `reset`, `show`, `discard`, `listen`, `notify`, `unlisten`,
//!   `deallocate`, `close`, `analyze`, `use` → other
//! - text that does not parse, EXECUTE of a prepared statement, and
//!   statements over the limits → unknown
//!
//! `has_where` is `Some(false)` if any UPDATE or DELETE in the statement
//! (a data-modifying CTE included) lacks a WHERE, and for TRUNCATE; `Some(true)`
//! if every one has one; `None` when there is none. EXPLAIN ANALYZE of a
//! statement has that statement's facts.

mod cache;
pub mod functions;
mod sql;
mod walk;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub(crate) use cache::BoundedCache;

use crate::model::Classification;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Postgres,
    MySql,
}

#[derive(Debug, Clone, Copy)]
pub struct ClassifyLimits {
    /// Commands longer than this are one `unknown` statement, not parsed.
    pub max_statement_bytes: usize,
    /// sqlparser's recursion limit (nested subqueries, parentheses).
    pub max_depth: usize,
    /// Upper bound on expression-tree depth estimated from the tokens
    /// (operator chains such as `a OR b OR ...`); statements over it are
    /// `unknown`, because walking or dropping a deeper tree could exhaust
    /// the stack. At the default, the worst chain (a `UNION` chain) needs
    /// about 0.5 MiB of stack in a debug build, less in release.
    pub max_nesting: usize,
    /// Classifications kept in the cache (0 disables caching).
    pub cache_entries: usize,
    /// Commands longer than this are classified every time, not cached, so
    /// the cache's memory stays bounded by `cache_entries * max_cached_bytes`.
    pub max_cached_bytes: usize,
}

impl Default for ClassifyLimits {
    fn default() -> Self {
        ClassifyLimits {
            max_statement_bytes: 1024 * 1024,
            max_depth: 64,
            max_nesting: 1000,
            cache_entries: 4096,
            max_cached_bytes: 8 * 1024,
        }
    }
}

pub struct SqlClassifier {
    dialect: SqlDialect,
    limits: ClassifyLimits,
    cache: BoundedCache<Arc<Classification>>,
}

impl SqlClassifier {
    pub fn new(dialect: SqlDialect, limits: ClassifyLimits) -> Self {
        SqlClassifier {
            dialect,
            limits,
            cache: BoundedCache::new(limits.cache_entries),
        }
    }

    pub fn dialect(&self) -> SqlDialect {
        self.dialect
    }

    pub fn limits(&self) -> &ClassifyLimits {
        &self.limits
    }

    pub fn classify(&self, text: &str) -> Arc<Classification> {
        let cacheable = text.len() <= self.limits.max_cached_bytes;
        if cacheable && let Some(hit) = self.cache.get(text) {
            return hit;
        }
        let classification = Arc::new(self.classify_uncached(text));
        if cacheable {
            self.cache.insert(text, Arc::clone(&classification));
        }
        classification
    }

    /// Classifies without looking at or filling the cache (benchmarks, tools).
    pub fn classify_uncached(&self, text: &str) -> Classification {
        Classification {
            statements: sql::classify_text(text, self.dialect, &self.limits),
        }
    }
}
