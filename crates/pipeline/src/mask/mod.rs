//! Masking of sensitive values in results, protocol-neutral.
//!
//! Layers, from config to hot path:
//! - [`MaskingConfig`] (serde, as written) is validated once by
//!   [`Masker::new`]: unknown detectors, bad regexes and globs, `hash` without
//!   a key are errors naming the rule and field.
//! - [`Masker::for_connection`] picks the rules that apply to a connection
//!   (by name or shared tag; a rule with neither applies everywhere) and
//!   returns a cached [`ConnectionMasker`].
//! - [`ConnectionMasker::plan`] decides once per result set, per column:
//!   pass, mask the whole value (column rule), NULL it, or scan with
//!   detectors. Column rules win over detectors; among rules, the first in
//!   config order wins, for columns and for detectors alike.
//! - [`RowPlan::mask_cell`] applies the decision to one cell, writing into a
//!   caller-owned buffer so unchanged cells cost no allocation.
//!
//! Choices worth knowing:
//! - `null` turns a whole cell into SQL NULL; a value found by a detector
//!   inside longer text (and any value in free text such as error messages)
//!   is replaced with `****` instead, since text cannot hold a NULL.
//! - A column rule on a column that cannot carry a replacement string (binary
//!   non-text types, typed columns such as int8/timestamp/uuid, text arrays)
//!   NULLs the cell: a string there would break the client's decoder.
//!   Detectors skip such columns for the same reason.
//! - JSON columns stay valid JSON: whole-value masks become JSON strings and
//!   detector hits outside strings are quoted. Binary jsonb keeps its version
//!   byte; an unknown version is NULLed rather than guessed at.
//! - `hash` is HMAC-SHA256 under the configured key over the value's bytes
//!   as sent, rendered `hash:` + 16 hex digits.

mod config;
mod detect;
mod glob;
mod plan;
mod render;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use hmac::Mac;

pub use config::{
    DEFAULT_KEEP_LAST, MAX_KEEP_LAST, MaskConfigError, MaskRuleConfig, MaskStrategy, MaskingConfig,
};
pub use detect::Detector;
pub use plan::{CellOutcome, ColumnAction, ColumnMeta, MaskStats, RowPlan};

use crate::model::ConnectionInfo;
use detect::{BuiltinRegexes, CustomDetectors, Enabled, Hit, HitKind, find_hits};
use glob::{ColumnPattern, ColumnSubject};
use plan::{CellPlan, Encoding, TypeClass, type_class};
use render::{HmacSha256, REDACTED, hash_into, partial_hit, partial_whole};

/// How many connections' maskers are cached; connection names come from
/// config, so this only bounds memory against surprises.
const CACHE_LIMIT: usize = 4096;

/// What one rule does to a value it claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RuleAction {
    /// Index of the rule in config order (also its index in [`MaskStats`]).
    pub rule: usize,
    pub strategy: MaskStrategy,
    pub keep_last: usize,
}

/// State shared by every connection masker of one [`Masker`].
struct Shared {
    regexes: BuiltinRegexes,
    custom: CustomDetectors,
    rule_names: Arc<[String]>,
    hmac: Option<HmacSha256>,
}

struct CompiledRule {
    connections: Vec<String>,
    tags: Vec<String>,
    columns: Vec<ColumnPattern>,
    builtins: Vec<Detector>,
    customs: Vec<usize>,
    action: RuleAction,
}

impl CompiledRule {
    fn applies_to(&self, conn: &ConnectionInfo) -> bool {
        (self.connections.is_empty() && self.tags.is_empty())
            || self.connections.iter().any(|c| c == "*" || *c == conn.name)
            || self.tags.iter().any(|t| conn.tags.contains(t))
    }
}

struct CacheEntry {
    tags: Vec<String>,
    masker: Option<Arc<ConnectionMasker>>,
}

/// The validated masking configuration. Immutable; rebuild it on reload.
pub struct Masker {
    shared: Arc<Shared>,
    rules: Vec<CompiledRule>,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("rules", &self.shared.rule_names)
            .field("custom_detectors", &self.shared.custom.names)
            .field("hash_key", &self.shared.hmac.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn rule_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(n) if !n.trim().is_empty() => n.trim().to_string(),
        _ => format!("rule{}", index + 1),
    }
}

impl Masker {
    /// Validates the whole configuration once.
    pub fn new(cfg: &MaskingConfig) -> Result<Masker, MaskConfigError> {
        let regexes = BuiltinRegexes::new().map_err(|e| MaskConfigError::Builtin(e.to_string()))?;
        let custom = CustomDetectors::new(&cfg.custom_detectors)
            .map_err(|(name, reason)| MaskConfigError::BadCustomDetector { name, reason })?;
        let hmac = match &cfg.hash_key {
            None => None,
            Some(k) if k.is_empty() => return Err(MaskConfigError::EmptyHashKey),
            Some(k) => Some(
                HmacSha256::new_from_slice(k)
                    .map_err(|e| MaskConfigError::Builtin(e.to_string()))?,
            ),
        };

        let mut names: Vec<String> = Vec::with_capacity(cfg.rules.len());
        let mut rules = Vec::with_capacity(cfg.rules.len());
        for (i, r) in cfg.rules.iter().enumerate() {
            let rule = rule_label(i, r.name.as_deref());
            if r.name.as_deref().is_some_and(|n| n.trim().is_empty()) {
                return Err(MaskConfigError::BadRuleName {
                    rule,
                    reason: "the name is empty".into(),
                });
            }
            if let Some(first) = names.iter().position(|n| *n == rule) {
                return Err(MaskConfigError::DuplicateRuleName {
                    rule,
                    first: first + 1,
                    second: i + 1,
                });
            }
            if r.columns.is_empty() && r.detectors.is_empty() {
                return Err(MaskConfigError::EmptyRule { rule });
            }
            if let Some(k) = r.keep_last {
                if r.strategy != MaskStrategy::Partial {
                    return Err(MaskConfigError::KeepLastWithoutPartial {
                        rule,
                        strategy: r.strategy,
                    });
                }
                if k > MAX_KEEP_LAST {
                    return Err(MaskConfigError::KeepLastTooLarge {
                        rule,
                        value: k,
                        max: MAX_KEEP_LAST,
                    });
                }
            }
            if r.strategy == MaskStrategy::Hash && hmac.is_none() {
                return Err(MaskConfigError::HashWithoutKey { rule });
            }
            for (field, list) in [("connections", &r.connections), ("tags", &r.tags)] {
                if list.iter().any(|s| s.trim().is_empty()) {
                    return Err(MaskConfigError::EmptyListEntry { rule, field });
                }
            }
            let mut columns = Vec::with_capacity(r.columns.len());
            for pattern in &r.columns {
                let p = ColumnPattern::parse(pattern).map_err(|reason| {
                    MaskConfigError::BadColumnPattern {
                        rule: rule.clone(),
                        pattern: pattern.clone(),
                        reason,
                    }
                })?;
                columns.push(p);
            }
            let mut builtins = Vec::new();
            let mut customs = Vec::new();
            for name in &r.detectors {
                let name = name.trim();
                if name.is_empty() {
                    return Err(MaskConfigError::EmptyListEntry {
                        rule,
                        field: "detectors",
                    });
                }
                if let Some(d) = Detector::from_name(name) {
                    builtins.push(d);
                } else if let Some(c) = custom.index_of(name) {
                    customs.push(c);
                } else {
                    return Err(MaskConfigError::UnknownDetector {
                        rule,
                        name: name.to_string(),
                    });
                }
            }
            rules.push(CompiledRule {
                connections: r.connections.iter().map(|s| s.trim().to_string()).collect(),
                tags: r.tags.iter().map(|s| s.trim().to_string()).collect(),
                columns,
                builtins,
                customs,
                action: RuleAction {
                    rule: i,
                    strategy: r.strategy,
                    keep_last: r.keep_last.unwrap_or(DEFAULT_KEEP_LAST) as usize,
                },
            });
            names.push(rule);
        }
        Ok(Masker {
            shared: Arc::new(Shared {
                regexes,
                custom,
                rule_names: names.into(),
                hmac,
            }),
            rules,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// True when no rule is configured.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule names in config order (indexes match [`ColumnAction`] rules).
    pub fn rule_names(&self) -> &[String] {
        &self.shared.rule_names
    }

    /// The rules that apply to `conn`, compiled; `None` when none apply.
    /// Cached by connection name (and checked against its tags).
    pub fn for_connection(&self, conn: &ConnectionInfo) -> Option<Arc<ConnectionMasker>> {
        if self.rules.is_empty() {
            return None;
        }
        // A poisoned lock only means another thread panicked mid-insert; the
        // map is still a valid cache.
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = cache.get(&conn.name)
            && entry.tags == conn.tags
        {
            return entry.masker.clone();
        }
        let built = self.build(conn).map(Arc::new);
        if cache.len() < CACHE_LIMIT || cache.contains_key(&conn.name) {
            cache.insert(
                conn.name.clone(),
                CacheEntry {
                    tags: conn.tags.clone(),
                    masker: built.clone(),
                },
            );
        }
        built
    }

    fn build(&self, conn: &ConnectionInfo) -> Option<ConnectionMasker> {
        let applicable: Vec<&CompiledRule> =
            self.rules.iter().filter(|r| r.applies_to(conn)).collect();
        if applicable.is_empty() {
            return None;
        }
        let mut builtin = [None; 9];
        let mut custom = vec![None; self.shared.custom.names.len()];
        let mut column_rules = Vec::new();
        for r in &applicable {
            if !r.columns.is_empty() {
                column_rules.push((r.columns.clone(), r.action));
            }
            for d in &r.builtins {
                if let Some(slot) = builtin.get_mut(d.index())
                    && slot.is_none()
                {
                    *slot = Some(r.action);
                }
            }
            for c in &r.customs {
                if let Some(slot) = custom.get_mut(*c)
                    && slot.is_none()
                {
                    *slot = Some(r.action);
                }
            }
        }
        let enabled = Enabled {
            builtin: builtin.map(|b| b.is_some()),
            custom: custom.iter().map(Option::is_some).collect(),
            any_custom: custom.iter().any(Option::is_some),
        };
        Some(ConnectionMasker {
            shared: self.shared.clone(),
            connection: conn.name.clone(),
            column_rules,
            builtin,
            custom,
            enabled,
        })
    }
}

/// The masking rules of one connection, ready to plan result sets.
pub struct ConnectionMasker {
    shared: Arc<Shared>,
    connection: String,
    column_rules: Vec<(Vec<ColumnPattern>, RuleAction)>,
    builtin: [Option<RuleAction>; 9],
    custom: Vec<Option<RuleAction>>,
    enabled: Enabled,
}

impl fmt::Debug for ConnectionMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let detectors: Vec<&str> = Detector::ALL
            .iter()
            .filter(|d| self.builtin.get(d.index()).is_some_and(Option::is_some))
            .map(|d| d.name())
            .chain(
                self.shared
                    .custom
                    .names
                    .iter()
                    .zip(&self.custom)
                    .filter(|(_, b)| b.is_some())
                    .map(|(n, _)| n.as_str()),
            )
            .collect();
        f.debug_struct("ConnectionMasker")
            .field("connection", &self.connection)
            .field("column_rules", &self.column_rules.len())
            .field("detectors", &detectors)
            .finish()
    }
}

impl ConnectionMasker {
    pub fn connection(&self) -> &str {
        &self.connection
    }

    /// Rule names in config order, as used by [`MaskStats`].
    pub fn rule_names(&self) -> &[String] {
        &self.shared.rule_names
    }

    /// Whether any content detector runs for this connection.
    pub fn has_detectors(&self) -> bool {
        self.enabled.any()
    }

    /// A zeroed per-rule counter.
    pub fn new_stats(&self) -> MaskStats {
        MaskStats::new(self.shared.rule_names.clone())
    }

    /// Decides, once per result set, what happens to each column.
    pub fn plan(self: &Arc<Self>, columns: &[ColumnMeta]) -> RowPlan {
        let cells: Vec<CellPlan> = columns.iter().map(|c| self.plan_column(c)).collect();
        let noop = cells.iter().all(|c| *c == CellPlan::Pass);
        RowPlan {
            masker: self.clone(),
            cells,
            noop,
        }
    }

    fn plan_column(&self, c: &ColumnMeta) -> CellPlan {
        let class = type_class(c.type_oid, c.binary);
        if !self.column_rules.is_empty() {
            let subject = ColumnSubject::new(c.table.as_deref(), &c.name);
            if let Some(action) = self.column_rule(&subject) {
                return match (action.strategy, class) {
                    (MaskStrategy::Null, _) | (_, TypeClass::TextArray | TypeClass::Opaque) => {
                        CellPlan::Null(action.rule)
                    }
                    (_, TypeClass::Text) => CellPlan::Mask(action, Encoding::Text),
                    (_, TypeClass::Json) => CellPlan::Mask(action, Encoding::Json),
                    (_, TypeClass::JsonbBinary) => CellPlan::Mask(action, Encoding::JsonbBinary),
                };
            }
        }
        if !self.enabled.any() {
            return CellPlan::Pass;
        }
        match class {
            TypeClass::Text | TypeClass::TextArray => CellPlan::Scan(Encoding::Text),
            TypeClass::Json => CellPlan::Scan(Encoding::Json),
            TypeClass::JsonbBinary => CellPlan::Scan(Encoding::JsonbBinary),
            TypeClass::Opaque => CellPlan::Pass,
        }
    }

    fn column_rule(&self, subject: &ColumnSubject) -> Option<RuleAction> {
        self.column_rules
            .iter()
            .find(|(patterns, _)| patterns.iter().any(|p| p.matches(subject)))
            .map(|(_, a)| *a)
    }

    fn binding(&self, kind: HitKind) -> Option<RuleAction> {
        match kind {
            HitKind::Builtin(d) => self.builtin.get(d.index()).copied().flatten(),
            HitKind::Custom(i) => self.custom.get(i).copied().flatten(),
        }
    }

    /// Detectors over free text (notices, errors, COPY rows); `None` when
    /// nothing was found. `null` rules write `****` here.
    pub fn mask_text(&self, text: &str) -> Option<String> {
        let mut out = Vec::new();
        self.scan_append(text.as_bytes(), false, &mut out, None)
            .then(|| into_string(out))
    }

    /// Detectors over raw bytes treated as text. `out` is cleared and, when
    /// this returns true, holds the masked bytes. Counts into `stats` if given.
    pub fn scan(&self, value: &[u8], out: &mut Vec<u8>, stats: Option<&mut MaskStats>) -> bool {
        out.clear();
        self.scan_append(value, false, out, stats)
    }

    /// Whether any column rule names a table (`customers.email`).
    pub fn has_table_rules(&self) -> bool {
        self.column_rules
            .iter()
            .any(|(patterns, _)| patterns.iter().any(ColumnPattern::is_table_qualified))
    }

    /// Whether any column rule applies here: then the adapter resolves each
    /// result column's origin (table and column name), so neither an alias
    /// nor a missing table hides a column from its rule.
    pub fn has_column_rules(&self) -> bool {
        !self.column_rules.is_empty()
    }

    /// Whether a column rule names `table.column` for this connection.
    pub fn has_column_rule(&self, table: Option<&str>, column: &str) -> bool {
        !self.column_rules.is_empty()
            && self
                .column_rule(&ColumnSubject::new(table, column))
                .is_some()
    }

    /// A value known to belong to `table.column` (e.g. from an error's
    /// `Key (email)=(...)` detail): the column rule if one matches, else
    /// detectors. `None` when unchanged.
    pub fn mask_column_text(
        &self,
        table: Option<&str>,
        column: &str,
        value: &str,
    ) -> Option<String> {
        if !self.column_rules.is_empty()
            && let Some(action) = self.column_rule(&ColumnSubject::new(table, column))
        {
            let mut out = Vec::new();
            self.render(action, None, value.as_bytes(), &mut out);
            return Some(into_string(out));
        }
        self.mask_text(value)
    }

    /// Writes the replacement for `value` under `action`. Null renders
    /// `****`: callers that can express NULL handle it before this.
    fn render(&self, action: RuleAction, kind: Option<HitKind>, value: &[u8], out: &mut Vec<u8>) {
        match action.strategy {
            MaskStrategy::Redact | MaskStrategy::Null => out.extend_from_slice(REDACTED),
            MaskStrategy::Partial => match kind {
                Some(k) => partial_hit(k, value, action.keep_last, out),
                None => partial_whole(value, action.keep_last, out),
            },
            MaskStrategy::Hash => match &self.shared.hmac {
                Some(mac) => hash_into(mac, value, out),
                None => out.extend_from_slice(REDACTED),
            },
        }
    }

    /// A whole cell under a column rule.
    pub(crate) fn mask_whole(
        &self,
        action: RuleAction,
        enc: Encoding,
        value: &[u8],
        out: &mut Vec<u8>,
    ) -> CellOutcome {
        if action.strategy == MaskStrategy::Null {
            return CellOutcome::Null;
        }
        match enc {
            Encoding::Text => self.render(action, None, value, out),
            Encoding::Json => self.render_json_whole(action, value, out),
            Encoding::JsonbBinary => match value.split_first() {
                Some((1, json)) => {
                    out.push(1);
                    self.render_json_whole(action, json, out);
                }
                _ => return CellOutcome::Null,
            },
        }
        CellOutcome::Replaced
    }

    /// A JSON string value is masked inside its quotes; any other JSON value
    /// becomes a JSON string holding the replacement.
    fn render_json_whole(&self, action: RuleAction, json: &[u8], out: &mut Vec<u8>) {
        let t = json.trim_ascii();
        out.push(b'"');
        match simple_json_string(t) {
            Some(inner) => self.render(action, None, inner, out),
            None if action.strategy == MaskStrategy::Hash => self.render(action, None, t, out),
            None => out.extend_from_slice(REDACTED),
        }
        out.push(b'"');
    }

    /// Detector scan of a cell in its encoding.
    pub(crate) fn scan_encoded(
        &self,
        enc: Encoding,
        value: &[u8],
        out: &mut Vec<u8>,
        stats: Option<&mut MaskStats>,
    ) -> CellOutcome {
        let changed = match enc {
            Encoding::Text => self.scan_append(value, false, out, stats),
            Encoding::Json => self.scan_append(value, true, out, stats),
            Encoding::JsonbBinary => match value.split_first() {
                Some((1, json)) => {
                    out.push(1);
                    let changed = self.scan_append(json, true, out, stats);
                    if !changed {
                        out.clear();
                    }
                    changed
                }
                // Unknown jsonb version: its bytes cannot be read safely.
                _ => return CellOutcome::Null,
            },
        };
        if changed {
            CellOutcome::Replaced
        } else {
            CellOutcome::Unchanged
        }
    }

    /// Finds and replaces detector hits, appending the result to `out`.
    /// Returns false (and appends nothing) when there is nothing to mask.
    fn scan_append(
        &self,
        text: &[u8],
        json: bool,
        out: &mut Vec<u8>,
        stats: Option<&mut MaskStats>,
    ) -> bool {
        if !self.enabled.any() {
            return false;
        }
        let mut hits: Vec<Hit> = Vec::new();
        find_hits(
            &self.shared.regexes,
            &self.shared.custom,
            &self.enabled,
            text,
            &mut hits,
        );
        hits.retain(|h| self.binding(h.kind).is_some());
        if hits.is_empty() {
            return false;
        }
        let base = out.len();
        if !(json && self.render_json_hits(text, &hits, out)) {
            out.truncate(base);
            if json {
                // A hit that straddles JSON quoting cannot be replaced in
                // place; the whole value becomes a masked JSON string.
                out.extend_from_slice(b"\"****\"");
            } else {
                self.render_hits(text, &hits, out);
            }
        }
        if let Some(stats) = stats {
            let mut rules: Vec<usize> = hits
                .iter()
                .filter_map(|h| self.binding(h.kind).map(|a| a.rule))
                .collect();
            rules.sort_unstable();
            rules.dedup();
            for r in rules {
                stats.record(r);
            }
        }
        true
    }

    fn render_hits(&self, text: &[u8], hits: &[Hit], out: &mut Vec<u8>) {
        let mut last = 0usize;
        for h in hits {
            let (Some(before), Some(value), Some(action)) = (
                text.get(last..h.start),
                text.get(h.start..h.end),
                self.binding(h.kind),
            ) else {
                continue;
            };
            out.extend_from_slice(before);
            self.render(action, Some(h.kind), value, out);
            last = h.end;
        }
        out.extend_from_slice(text.get(last..).unwrap_or(&[]));
    }

    /// JSON-aware rendering: hits outside strings are quoted so the text
    /// stays JSON. Returns false when a hit cannot be replaced in place (it
    /// contains a quote or backslash, or follows a backslash).
    fn render_json_hits(&self, text: &[u8], hits: &[Hit], out: &mut Vec<u8>) -> bool {
        let mut state = JsonState::default();
        let mut last = 0usize;
        for h in hits {
            let (Some(before), Some(value), Some(action)) = (
                text.get(last..h.start),
                text.get(h.start..h.end),
                self.binding(h.kind),
            ) else {
                return false;
            };
            state.feed(before);
            if state.escape || value.iter().any(|b| *b == b'"' || *b == b'\\') {
                return false;
            }
            out.extend_from_slice(before);
            let quote = !state.in_string;
            if quote {
                out.push(b'"');
            }
            self.render(action, Some(h.kind), value, out);
            if quote {
                out.push(b'"');
            }
            last = h.end;
        }
        out.extend_from_slice(text.get(last..).unwrap_or(&[]));
        true
    }
}

/// Tracks whether a position in JSON text is inside a string.
#[derive(Default)]
struct JsonState {
    in_string: bool,
    escape: bool,
}

impl JsonState {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.escape {
                self.escape = false;
            } else if self.in_string && b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = !self.in_string;
            }
        }
    }
}

/// The contents of a JSON string literal without escapes, if `t` is one.
fn simple_json_string(t: &[u8]) -> Option<&[u8]> {
    let inner = t.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    (!inner.iter().any(|b| *b == b'"' || *b == b'\\')).then_some(inner)
}

fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests;
