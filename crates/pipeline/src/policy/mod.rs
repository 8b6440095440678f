//! Cedar policy: schema, default pack, the two-evaluation verdict rule.
//!
//! CONTRACT (used by the pipeline; keep these signatures):
//! - `PolicyEngine::new(PolicySet)`, `PolicyEngine::current() -> Arc<PolicySet>`,
//!   `PolicyEngine::replace(PolicySet)` (atomic snapshot swap)
//! - `PolicySet::default_pack()`, `PolicySet::from_source(src, origin) -> Result<PolicySet, PolicyError>`,
//!   `PolicySet::version() -> &str`
//! - `PolicySet::decide_connect(&Identity, &ConnectionInfo) -> Decision`
//! - `PolicySet::decide_sql(&Identity, &ConnectionInfo, &Classification, &PolicyContext) -> Decision`
//!   (statement by statement, strictest wins)

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::model::{Classification, ConnectionInfo, Decision, Identity, Verdict};

/// Extra facts from outside the statement itself.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// Bind parameters of the command, rendered as text.
    pub params: Vec<Option<String>>,
    /// The identity holds a valid just-in-time access grant on this connection.
    pub grant: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Invalid(String),
}

pub struct PolicySet {
    version: String,
}

impl PolicySet {
    pub fn default_pack() -> Self {
        PolicySet {
            version: "placeholder".into(),
        }
    }

    pub fn from_source(_src: &str, _origin: &str) -> Result<Self, PolicyError> {
        Ok(Self::default_pack())
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    fn allow(&self, action: &str) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            action: action.to_string(),
            policies: vec![],
            reason: None,
            reviewers: vec![],
            min_approvals: 1,
            approval_ttl_secs: None,
            policy_version: self.version.clone(),
            statement: 0,
        }
    }

    pub fn decide_connect(&self, _identity: &Identity, _conn: &ConnectionInfo) -> Decision {
        self.allow("connect")
    }

    pub fn decide_sql(
        &self,
        _identity: &Identity,
        _conn: &ConnectionInfo,
        cls: &Classification,
        _ctx: &PolicyContext,
    ) -> Decision {
        let action = cls
            .statements
            .first()
            .map(|s| s.class.sql_action())
            .unwrap_or("sql:unknown");
        self.allow(action)
    }
}

pub struct PolicyEngine {
    current: ArcSwap<PolicySet>,
}

impl PolicyEngine {
    pub fn new(set: PolicySet) -> Self {
        PolicyEngine {
            current: ArcSwap::from_pointee(set),
        }
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.current.load_full()
    }

    pub fn replace(&self, set: PolicySet) {
        self.current.store(Arc::new(set));
    }
}
