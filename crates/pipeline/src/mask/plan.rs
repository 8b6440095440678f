//! Per-result-set masking plans: one decision per column, made once when the
//! columns are known, then applied cell by cell on the hot path.

use std::sync::Arc;

use super::config::MaskStrategy;
use super::{ConnectionMasker, RuleAction};
use crate::record::MaskCount;

/// What the adapter knows about one result column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMeta {
    pub name: String,
    /// Resolved table name (possibly `schema.table`) if known.
    pub table: Option<String>,
    /// PostgreSQL type OID; 0 when unknown (treated as text).
    pub type_oid: u32,
    /// Whether cells of this column arrive in binary format.
    pub binary: bool,
}

/// What happens to the cells of one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnAction {
    /// Forwarded untouched.
    Pass,
    /// A column rule replaces the whole value using `strategy`.
    Mask { rule: usize, strategy: MaskStrategy },
    /// The cell becomes SQL NULL: a column rule with strategy `null`, or a
    /// column rule on a column that cannot carry a replacement string (binary
    /// format of a non-text type, or a typed non-text column such as int8,
    /// timestamp, uuid or a text array, where `****` would break clients).
    Null { rule: usize },
    /// Detectors scan the text and replace what they find.
    Scan,
}

/// How a cell's bytes are laid out, for the column's format and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    /// Plain text (text format, or binary text-like types).
    Text,
    /// JSON text: replacements outside strings are quoted so it stays JSON.
    Json,
    /// Binary jsonb: a version byte (1) then JSON text.
    JsonbBinary,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CellPlan {
    Pass,
    Mask(RuleAction, Encoding),
    Null(usize),
    Scan(Encoding),
}

/// The result of masking one cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellOutcome {
    /// Forward the original bytes.
    Unchanged,
    /// Replacement bytes were written to `out`.
    Replaced,
    /// The cell becomes SQL NULL.
    Null,
}

/// Where a type's values can be masked, per format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeClass {
    Text,
    Json,
    JsonbBinary,
    /// Text-format arrays of text: scanned, but not replaced whole.
    TextArray,
    /// Cannot hold a replacement string.
    Opaque,
}

/// Classifies a PostgreSQL type OID for a cell format. Unknown OIDs (user
/// types such as citext, enums and domains) are text in text format, and
/// opaque in binary format since their binary layout is unknown.
pub(crate) fn type_class(oid: u32, binary: bool) -> TypeClass {
    const TEXT_LIKE: &[u32] = &[25, 1043, 1042, 19, 705, 0];
    if binary {
        return match oid {
            114 => TypeClass::Json,
            3802 => TypeClass::JsonbBinary,
            o if TEXT_LIKE.contains(&o) => TypeClass::Text,
            _ => TypeClass::Opaque,
        };
    }
    // Built-in types whose text form a client parses as a non-string.
    const OPAQUE_TEXT: &[u32] = &[
        16, 17, 18, 20, 21, 22, 23, 24, 26, 27, 28, 29, 30, 600, 601, 602, 603, 604, 628, 650, 700,
        701, 718, 774, 790, 829, 869, 1082, 1083, 1114, 1184, 1186, 1266, 1560, 1562, 1700, 2950,
        3220, 5069, // arrays of the above
        1000, 1001, 1005, 1007, 1016, 1021, 1022, 1028, 1115, 1182, 1183, 1185, 1187, 1231, 1270,
        2951, 651, 1040, 1041,
    ];
    const TEXT_ARRAYS: &[u32] = &[1009, 1015, 1014, 1003, 199, 3807];
    match oid {
        114 | 3802 => TypeClass::Json,
        o if OPAQUE_TEXT.contains(&o) => TypeClass::Opaque,
        o if TEXT_ARRAYS.contains(&o) => TypeClass::TextArray,
        _ => TypeClass::Text,
    }
}

/// The masking plan for one result set.
#[derive(Debug, Clone)]
pub struct RowPlan {
    pub(crate) masker: Arc<ConnectionMasker>,
    pub(crate) cells: Vec<CellPlan>,
    pub(crate) noop: bool,
}

impl RowPlan {
    /// True when no column needs attention: rows can be forwarded untouched.
    pub fn is_noop(&self) -> bool {
        self.noop
    }

    /// Number of columns the plan was made for.
    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    /// The decision for column `col` (`None` past the end).
    pub fn action(&self, col: usize) -> Option<ColumnAction> {
        self.cells.get(col).map(|c| match c {
            CellPlan::Pass => ColumnAction::Pass,
            CellPlan::Mask(a, _) => ColumnAction::Mask {
                rule: a.rule,
                strategy: a.strategy,
            },
            CellPlan::Null(rule) => ColumnAction::Null { rule: *rule },
            CellPlan::Scan(_) => ColumnAction::Scan,
        })
    }

    /// The connection masker this plan came from.
    pub fn masker(&self) -> &Arc<ConnectionMasker> {
        &self.masker
    }

    /// A fresh counter for this plan's rules.
    pub fn new_stats(&self) -> MaskStats {
        self.masker.new_stats()
    }

    /// Masks one non-NULL cell. `out` is cleared and, on `Replaced`, holds
    /// the new bytes; it is the caller's reusable buffer, so unchanged cells
    /// cost no allocation. A column past the end of the plan is scanned as
    /// text (a mismatched row should have been refused before this).
    pub fn mask_cell(&self, col: usize, value: &[u8], out: &mut Vec<u8>) -> CellOutcome {
        self.mask_cell_inner(col, value, out, None)
    }

    /// Like [`RowPlan::mask_cell`], counting changed cells per rule in `stats`.
    pub fn mask_cell_counted(
        &self,
        col: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        stats: &mut MaskStats,
    ) -> CellOutcome {
        self.mask_cell_inner(col, value, out, Some(stats))
    }

    fn mask_cell_inner(
        &self,
        col: usize,
        value: &[u8],
        out: &mut Vec<u8>,
        stats: Option<&mut MaskStats>,
    ) -> CellOutcome {
        out.clear();
        let plan = self
            .cells
            .get(col)
            .copied()
            .unwrap_or(CellPlan::Scan(Encoding::Text));
        match plan {
            CellPlan::Pass => CellOutcome::Unchanged,
            CellPlan::Null(rule) => {
                if let Some(s) = stats {
                    s.record(rule);
                }
                CellOutcome::Null
            }
            CellPlan::Mask(action, enc) => {
                let outcome = self.masker.mask_whole(action, enc, value, out);
                if outcome != CellOutcome::Unchanged
                    && let Some(s) = stats
                {
                    s.record(action.rule);
                }
                outcome
            }
            CellPlan::Scan(enc) => self.masker.scan_encoded(enc, value, out, stats),
        }
    }
}

/// Per-rule counts of masked cells, owned by the caller for one command and
/// turned into audit [`MaskCount`]s at its end. Updating is an index bump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MaskStats {
    names: Arc<[String]>,
    cells: Vec<u64>,
}

impl MaskStats {
    pub(crate) fn new(names: Arc<[String]>) -> MaskStats {
        let cells = vec![0; names.len()];
        MaskStats { names, cells }
    }

    /// Counts one changed cell for rule index `rule`.
    pub fn record(&mut self, rule: usize) {
        if let Some(c) = self.cells.get_mut(rule) {
            *c = c.saturating_add(1);
        }
    }

    /// Total changed cells over all rules.
    pub fn total(&self) -> u64 {
        self.cells.iter().fold(0u64, |a, c| a.saturating_add(*c))
    }

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// Adds another counter of the same masker into this one.
    pub fn merge(&mut self, other: &MaskStats) {
        if self.cells.len() < other.cells.len() {
            self.names = other.names.clone();
            self.cells.resize(other.cells.len(), 0);
        }
        for (a, b) in self.cells.iter_mut().zip(&other.cells) {
            *a = a.saturating_add(*b);
        }
    }

    /// Zeroes the counts, keeping the rule names (for the next command).
    pub fn reset(&mut self) {
        self.cells.iter_mut().for_each(|c| *c = 0);
    }

    /// Rules that changed at least one cell, in config order.
    pub fn counts(&self) -> Vec<MaskCount> {
        self.names
            .iter()
            .zip(&self.cells)
            .filter(|(_, c)| **c > 0)
            .map(|(rule, cells)| MaskCount {
                rule: rule.clone(),
                cells: *cells,
            })
            .collect()
    }
}
