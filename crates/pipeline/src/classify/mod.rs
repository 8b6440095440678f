//! Turns command text into policy facts. SQL today; shell and HTTP later.
//!
//! CONTRACT (used by the pipeline; keep these signatures):
//! - `SqlClassifier::new(SqlDialect, ClassifyLimits) -> SqlClassifier`
//! - `SqlClassifier::classify(&self, text: &str) -> Arc<Classification>`:
//!   never panics, never fails: anything it cannot understand becomes one
//!   statement of kind `unknown`, class `Unknown`. Cached by text; the
//!   result is always what `classify_uncached` would return.
//!
//! Shape cache (PostgreSQL only). Simple-protocol clients send the same
//! statement with new literals each time, so the text cache misses and every
//! statement is parsed. After a text-cache miss, `normalize::normalize`
//! lexes the text and replaces string and number literals by marks; a
//! second cache keyed by that shape answers with the cached facts and the
//! new statement text. It fails closed, taking the full path on any doubt:
//! the lexer gives up on anything outside a small, sure subset (prefixed or
//! dollar-quoted strings, backslashes, exponents, several statements...);
//! only statements starting with a query, DML or transaction keyword are
//! considered; and a shape is cached only from one fully parsed statement
//! (not `unknown`, no note) whose text is the lexer's span and whose parse
//! tree holds every literal the lexer saw as a plain value. That last check
//! matters: sqlparser also reads a string as a name (`FROM 'payments'` reads
//! table `payments`) and a number as a type modifier (`varchar(10)`), where
//! the value does change the facts; such shapes are never cached.

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
mod normalize;
mod sql;
mod walk;

#[cfg(test)]
mod tests;

use std::sync::Arc;

pub(crate) use cache::BoundedCache;

use crate::model::{ActionClass, Classification, SqlStatement};

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
    /// Classifications kept in each of the two caches, by text and by
    /// shape (0 disables caching).
    pub cache_entries: usize,
    /// Commands longer than this are classified every time, not cached, so
    /// each cache's memory stays bounded by about `cache_entries *
    /// max_cached_bytes` (a shape key is at most twice its text).
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
    /// Classifications by literal-normalised text (see the module docs).
    shapes: BoundedCache<Arc<Classification>>,
    #[cfg(test)]
    shape_hits: std::sync::atomic::AtomicUsize,
}

impl SqlClassifier {
    pub fn new(dialect: SqlDialect, limits: ClassifyLimits) -> Self {
        SqlClassifier {
            dialect,
            limits,
            cache: BoundedCache::new(limits.cache_entries),
            shapes: BoundedCache::new(limits.cache_entries),
            #[cfg(test)]
            shape_hits: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn dialect(&self) -> SqlDialect {
        self.dialect
    }

    pub fn limits(&self) -> &ClassifyLimits {
        &self.limits
    }

    /// The text cache, then (PostgreSQL) the shape cache, then a full
    /// classification that fills both.
    pub fn classify(&self, text: &str) -> Arc<Classification> {
        let cacheable = text.len() <= self.limits.max_cached_bytes;
        if cacheable && let Some(hit) = self.cache.get(text) {
            return hit;
        }
        let shape = if cacheable { self.shape(text) } else { None };
        let Some(shape) = shape else {
            let classification = Arc::new(self.classify_uncached(text));
            if cacheable {
                self.cache.insert(text, Arc::clone(&classification));
            }
            return classification;
        };
        if let Some(hit) = self.shapes.get(&shape.key)
            && let Some(stmt_text) = text.get(shape.stmt_span.0..shape.stmt_span.1)
        {
            #[cfg(test)]
            self.shape_hits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut classification = Classification::clone(&hit);
            if let Some(s) = classification.statements.first_mut() {
                s.text = stmt_text.to_string();
            }
            return Arc::new(classification);
        }
        let (statements, parsed) =
            sql::classify_text_with_literals(text, self.dialect, &self.limits);
        let fits = shape_fits(text, &shape, &statements, &parsed);
        let classification = Arc::new(Classification { statements });
        self.cache.insert(text, Arc::clone(&classification));
        if fits {
            self.shapes.insert(&shape.key, Arc::clone(&classification));
        }
        classification
    }

    /// Classifies without looking at or filling the cache (benchmarks, tools).
    pub fn classify_uncached(&self, text: &str) -> Classification {
        Classification {
            statements: sql::classify_text(text, self.dialect, &self.limits),
        }
    }

    /// The shape of `text` if it may use the shape cache.
    fn shape(&self, text: &str) -> Option<normalize::Normalized> {
        // Over `max_statement_bytes` a text is `unknown` whatever its shape.
        if self.dialect != SqlDialect::Postgres
            || !self.shapes.is_enabled()
            || text.len() > self.limits.max_statement_bytes
        {
            return None;
        }
        normalize::normalize(text).filter(|n| n.is_normalisable_kind(text))
    }

    #[cfg(test)]
    pub(crate) fn shape_hits(&self) -> usize {
        self.shape_hits.load(std::sync::atomic::Ordering::Relaxed)
    }

    #[cfg(test)]
    pub(crate) fn shapes_len(&self) -> usize {
        self.shapes.len()
    }
}

/// Whether a fresh classification of `text` may stand for every text of its
/// shape: one parsed statement, not `unknown` and without a note, whose
/// text is the lexer's span (the lexer and sqlparser agree on its bounds),
/// and whose parse tree holds exactly the lexer's literals as plain values
/// (none became a name, none was absorbed into something else).
fn shape_fits(
    text: &str,
    shape: &normalize::Normalized,
    statements: &[SqlStatement],
    parsed: &[Option<Vec<normalize::Literal>>],
) -> bool {
    let ([s], [Some(parsed)]) = (statements, parsed) else {
        return false;
    };
    s.kind != "unknown"
        && s.class != ActionClass::Unknown
        && s.note.is_none()
        && text.get(shape.stmt_span.0..shape.stmt_span.1) == Some(s.text.as_str())
        && normalize::literals(text).as_ref() == Some(parsed)
}
