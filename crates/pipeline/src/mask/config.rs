//! Masking configuration as written in TOML, and the errors found while validating it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// How a sensitive value is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskStrategy {
    /// `****`. The default, because it reveals nothing, not even the length.
    #[default]
    Redact,
    /// Keep the shape and a little of the value (e-mail TLD, last digits).
    Partial,
    /// `hash:` and the first 16 hex digits of HMAC-SHA256 under the hash key.
    Hash,
    /// SQL NULL for whole cells; `****` for a value found inside longer text.
    Null,
}

impl MaskStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            MaskStrategy::Redact => "redact",
            MaskStrategy::Partial => "partial",
            MaskStrategy::Hash => "hash",
            MaskStrategy::Null => "null",
        }
    }
}

impl fmt::Display for MaskStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[masking]]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRuleConfig {
    /// Name used in audit counts; `rule1`, `rule2`, ... by position when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Connection names the rule applies to (`"*"` = every connection).
    #[serde(default)]
    pub connections: Vec<String>,
    /// Connection tags the rule applies to. When both `connections` and `tags`
    /// are empty the rule applies to every connection: masking too much is the
    /// safe failure.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Column-name globs (`*`, `?`), case-insensitive; `table.column` and
    /// `schema.table.column` forms are allowed.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Built-in detector names or names from `[masking_detectors]`.
    #[serde(default)]
    pub detectors: Vec<String>,
    #[serde(default)]
    pub strategy: MaskStrategy,
    /// For `partial`: how many trailing digits to keep (default 4, at most 8,
    /// and never more than half of the value's digits).
    #[serde(default)]
    pub keep_last: Option<u32>,
}

/// Everything the masking engine needs; the control plane assembles it from
/// the top-level config (`[[masking]]`, `[masking_detectors]`, the hash key).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MaskingConfig {
    pub rules: Vec<MaskRuleConfig>,
    /// Custom detectors: name -> regex.
    pub custom_detectors: BTreeMap<String, String>,
    /// Key for the `hash` strategy. Required when any rule uses it.
    pub hash_key: Option<Vec<u8>>,
}

impl fmt::Debug for MaskingConfig {
    // The hash key is a secret: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskingConfig")
            .field("rules", &self.rules)
            .field("custom_detectors", &self.custom_detectors)
            .field("hash_key", &self.hash_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The largest `keep_last` accepted; more would reveal most of a card number.
pub const MAX_KEEP_LAST: u32 = 8;

/// Default `keep_last` for `partial`.
pub const DEFAULT_KEEP_LAST: u32 = 4;

/// A masking configuration mistake, naming the rule (or detector) and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaskConfigError {
    #[error(
        "masking rule `{rule}`: field `detectors`: unknown detector `{name}` (built-in: {builtins}; custom ones go under [masking_detectors])",
        builtins = crate::mask::detect::BUILTIN_NAMES
    )]
    UnknownDetector { rule: String, name: String },
    #[error("masking rule `{rule}`: field `columns`: bad pattern `{pattern}`: {reason}")]
    BadColumnPattern {
        rule: String,
        pattern: String,
        reason: String,
    },
    #[error("masking rule `{rule}`: strategy \"hash\" needs a hash key, and none is configured")]
    HashWithoutKey { rule: String },
    #[error(
        "masking rule `{rule}`: neither `columns` nor `detectors` is set, so it would mask nothing"
    )]
    EmptyRule { rule: String },
    #[error(
        "masking rule `{rule}`: field `keep_last` only applies to strategy \"partial\", not \"{strategy}\""
    )]
    KeepLastWithoutPartial {
        rule: String,
        strategy: MaskStrategy,
    },
    #[error("masking rule `{rule}`: field `keep_last` = {value} is more than {max}")]
    KeepLastTooLarge { rule: String, value: u32, max: u32 },
    #[error("masking rule `{rule}`: field `name`: {reason}")]
    BadRuleName { rule: String, reason: String },
    #[error("masking rules #{first} and #{second} are both named `{rule}`; names must be unique")]
    DuplicateRuleName {
        rule: String,
        first: usize,
        second: usize,
    },
    #[error("masking rule `{rule}`: field `{field}`: empty name in the list")]
    EmptyListEntry { rule: String, field: &'static str },
    #[error("masking detector `{name}`: {reason}")]
    BadCustomDetector { name: String, reason: String },
    #[error("masking: the hash key is empty")]
    EmptyHashKey,
    #[error("masking: built-in detector failed to compile: {0}")]
    Builtin(String),
}
