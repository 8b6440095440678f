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
//! - `PolicySet::decide_unmask(&Identity, &ConnectionInfo) -> bool`
//! - `load_file(path) -> Result<PolicySet, PolicyError>`,
//!   `watch_file(Arc<PolicyEngine>, PathBuf)` (SIGHUP and content polling)
//! - `PolicySet::explain(..same as decide_sql..) -> Explanation` (Serialize + Display)
//! - `PolicySet::decide_action(&Identity, &ConnectionInfo, action, grant) -> Decision`
//!   for non-SQL actions (context: `approved`, `grant` only, for now)
//!
//! The verdict rule (design.md, "Policy"): evaluate with `approved = false`;
//! allowed → allow. Otherwise evaluate with `approved = true`; allowed →
//! review, else deny. Any evaluation error denies. The policies that
//! determined the verdict are reported and their annotations (`@reason`,
//! `@reviewers`, `@min_approvals`, `@approval_ttl`) describe it; annotation
//! values are checked when the set is loaded, so a bad one rejects the set.
//! Policy ids are the `@id("...")` annotation when present, else Cedar's
//! `policyN` by position in the text.
//!
//! Speed: a verdict is a pure function of its inputs, so each set caches
//! per-statement verdicts keyed by the identity's and connection's facts,
//! the statement's facts and the grant (the text and parameters only when a
//! policy mentions them), and Cedar entity stores per identity/connection.
//! Each action evaluates only the policies whose scope admits it.

mod error;
mod eval;
mod explain;
mod reload;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cedar_policy::{Effect, PolicyId, Schema, ValidationMode, Validator};
use sha2::{Digest, Sha256};

use crate::classify::BoundedCache;
use crate::model::{Classification, ConnectionInfo, Decision, Identity, SqlStatement, Verdict};

pub use error::{PolicyDiagnostic, PolicyError};
pub use eval::ACTIONS;
pub use explain::{Explanation, StatementExplanation};
pub use reload::{load_file, watch_file};

use eval::{Evaluator, Judgement, PolicyMeta, Subject, names};

/// The Cedar schema every policy set is validated against.
pub const SCHEMA_SOURCE: &str = include_str!("../../../../policies/schema.cedarschema");
/// Where the schema lives in the repository (for error messages).
pub const SCHEMA_ORIGIN: &str = "policies/schema.cedarschema";
/// The default policy pack, as shipped.
pub const DEFAULT_PACK_SOURCE: &str = include_str!("../../../../policies/default.cedar");
/// Where the default pack lives in the repository.
pub const DEFAULT_PACK_ORIGIN: &str = "policies/default.cedar";

/// Verdicts kept per policy set. When keys hold the statement text (a
/// policy reads `context.text`), texts longer than [`MAX_CACHED_TEXT`] are
/// judged every time instead.
const VERDICT_CACHE_ENTRIES: usize = 8192;
const MAX_CACHED_TEXT: usize = 8 * 1024;
/// Entity stores kept per policy set, one per (identity, connection) facts.
const SUBJECT_CACHE_ENTRIES: usize = 1024;

/// Extra facts from outside the statement itself.
#[derive(Debug, Clone, Default)]
pub struct PolicyContext {
    /// Bind parameters of the command, rendered as text.
    pub params: Vec<Option<String>>,
    /// The identity holds a valid just-in-time access grant on this connection.
    pub grant: bool,
}

/// A validated, immutable policy set with its own verdict cache.
pub struct PolicySet {
    version: String,
    origin: String,
    eval: Evaluator,
    /// Whether any policy mentions `params`; if none does, parameters stay
    /// out of the context and out of cache keys.
    uses_params: bool,
    /// Whether any policy mentions `text`; if none does, the statement text
    /// stays out of cache keys, so statements that differ only in literals
    /// (`... WHERE aid = 1`, `... WHERE aid = 2`) share one cached verdict.
    uses_text: bool,
    verdicts: BoundedCache<Arc<Judgement>>,
    subjects: BoundedCache<Arc<Subject>>,
}

impl PolicySet {
    /// The shipped pack (policies/default.cedar). It is validated by a unit
    /// test; should it ever fail to load anyway, the result denies everything.
    pub fn default_pack() -> Self {
        match Self::from_source(DEFAULT_PACK_SOURCE, DEFAULT_PACK_ORIGIN) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!("default policy pack rejected, denying everything: {e}");
                Self::deny_all(DEFAULT_PACK_ORIGIN)
            }
        }
    }

    /// Parses `src`, gives policies their `@id`s, validates it against the
    /// schema in strict mode and checks annotations. `origin` names the
    /// source in errors (`origin:line:col: message`).
    pub fn from_source(src: &str, origin: &str) -> Result<Self, PolicyError> {
        names().map_err(|e| PolicyError::message(origin, e))?;
        let schema = schema()?;
        let parsed = cedar_policy::PolicySet::from_str(src).map_err(|errs| {
            PolicyError::new(
                origin,
                errs.iter()
                    .map(|e| PolicyDiagnostic::from_miette(src, e))
                    .collect(),
            )
        })?;
        let mut problems = Vec::new();
        if parsed.templates().next().is_some() {
            problems.push(PolicyDiagnostic::at_text(
                src,
                "?",
                "policy templates (?principal, ?resource) are not supported".into(),
            ));
        }

        // Cedar names policies policy0, policy1, ... in text order; keep that
        // order, and rename to the @id annotation where there is one.
        let mut ordered: Vec<(usize, &cedar_policy::Policy)> = parsed
            .policies()
            .map(|p| (default_position(p.id()), p))
            .collect();
        ordered.sort_by_key(|(pos, _)| *pos);
        let mut policies = cedar_policy::PolicySet::new();
        let mut meta = HashMap::new();
        for (position, policy) in ordered {
            let policy = match policy.annotation("id") {
                Some(id) if id.trim().is_empty() => {
                    problems.push(PolicyDiagnostic::at_text(
                        src,
                        &format!("@id(\"{id}\")"),
                        "@id must not be empty".into(),
                    ));
                    continue;
                }
                Some(id) => policy.new_id(PolicyId::new(id)),
                None => policy.clone(),
            };
            match PolicyMeta::parse(&policy, position) {
                Ok(m) => {
                    meta.insert(policy.id().clone(), m);
                }
                Err((needle, message)) => {
                    problems.push(PolicyDiagnostic::at_text(src, &needle, message));
                }
            }
            let id = policy.id().to_string();
            // The only way adding fails here is an id used twice.
            if policies.add(policy).is_err() {
                problems.push(PolicyDiagnostic::at_last_text(
                    src,
                    &format!("@id(\"{id}\")"),
                    format!("duplicate policy id {id:?}"),
                ));
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::new(origin, problems));
        }

        let validation = Validator::new(schema).validate(&policies, ValidationMode::Strict);
        let errors: Vec<PolicyDiagnostic> = validation
            .validation_errors()
            .map(|e| PolicyDiagnostic::from_miette(src, e))
            .collect();
        if !errors.is_empty() {
            return Err(PolicyError::new(origin, errors));
        }

        let by_action = split_by_action(&policies).map_err(|e| PolicyError::message(origin, e))?;
        // Which context attributes the policies can see decides what the
        // verdict cache must key on. Matching the policies' own text errs
        // towards "mentioned" (an annotation saying "text" counts too).
        let bodies: Vec<String> = policies.policies().map(|p| p.to_string()).collect();
        let mentions = |word: &str| {
            // Whole words: `context` must not count as `text`.
            bodies.iter().any(|b| {
                b.match_indices(word).any(|(i, _)| {
                    let before = b[..i].chars().next_back();
                    let after = b[i + word.len()..].chars().next();
                    let ident =
                        |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
                    !ident(before) && !ident(after)
                })
            })
        };
        Ok(PolicySet {
            version: version_of(src),
            origin: origin.to_string(),
            eval: Evaluator {
                by_action,
                meta,
                authorizer: cedar_policy::Authorizer::new(),
            },
            uses_params: mentions("params"),
            uses_text: mentions("text"),
            verdicts: BoundedCache::new(VERDICT_CACHE_ENTRIES),
            subjects: BoundedCache::new(SUBJECT_CACHE_ENTRIES),
        })
    }

    /// A set without policies: Cedar denies every request.
    fn deny_all(origin: &str) -> Self {
        let eval = Evaluator {
            by_action: HashMap::new(),
            meta: HashMap::new(),
            authorizer: cedar_policy::Authorizer::new(),
        };
        PolicySet {
            version: version_of(""),
            origin: origin.to_string(),
            eval,
            uses_params: false,
            uses_text: false,
            verdicts: BoundedCache::new(0),
            subjects: BoundedCache::new(0),
        }
    }

    /// Replaces the verdict cache with one of `entries` entries (0 disables
    /// it), for benchmarks and tools that want every decision evaluated.
    pub fn with_verdict_cache(mut self, entries: usize) -> Self {
        self.verdicts = BoundedCache::new(entries);
        self
    }

    /// First 16 hex digits of the SHA-256 of the policy text.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// Where the policy text came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Ids of the policies, in source order.
    pub fn policy_ids(&self) -> Vec<String> {
        let mut metas: Vec<&PolicyMeta> = self.eval.meta.values().collect();
        metas.sort_by_key(|m| m.position);
        metas.into_iter().map(|m| m.id.clone()).collect()
    }

    pub fn decide_connect(&self, identity: &Identity, conn: &ConnectionInfo) -> Decision {
        self.decide_action(identity, conn, "connect", false)
    }

    /// True only if `unmask` is allowed outright (a review does not unmask).
    pub fn decide_unmask(&self, identity: &Identity, conn: &ConnectionInfo) -> bool {
        self.decide_action(identity, conn, "unmask", false).verdict == Verdict::Allow
    }

    /// Any non-SQL action (`connect`, `unmask`, `ssh:exec`, `http:write`, ...)
    /// with a context of only `approved` and `grant`. Not cached.
    pub fn decide_action(
        &self,
        identity: &Identity,
        conn: &ConnectionInfo,
        action: &str,
        grant: bool,
    ) -> Decision {
        let judgement = match self.subject(identity, conn) {
            Ok(subject) => self
                .eval
                .judge(&subject, action, &eval::session_facts(grant)),
            Err(e) => Judgement::fail_closed(e),
        };
        self.decision(&judgement, action, 0)
    }

    /// Judges each statement with its class's action; the strictest verdict
    /// wins and the first statement with it is reported. When several
    /// statements need review, one approval covers them all, so the review
    /// terms are merged (reviewer groups united, the highest approval count,
    /// the shortest TTL). No statements: allow, action `sql:other`.
    pub fn decide_sql(
        &self,
        identity: &Identity,
        conn: &ConnectionInfo,
        cls: &Classification,
        ctx: &PolicyContext,
    ) -> Decision {
        let mut subject = None;
        let mut best: Option<(usize, Judgement)> = None;
        for (i, stmt) in cls.statements.iter().enumerate() {
            let j = self.judge_statement(identity, conn, stmt, ctx, &mut subject);
            match &mut best {
                Some((_, b)) if j.verdict < b.verdict => {}
                Some((_, b)) if j.verdict == b.verdict => {
                    if j.verdict == Verdict::Review {
                        b.merge_review(&j);
                    }
                }
                _ => best = Some((i, (*j).clone())),
            }
        }
        match best {
            Some((i, j)) => {
                let action = cls
                    .statements
                    .get(i)
                    .map(|s| s.class.sql_action())
                    .unwrap_or("sql:unknown");
                self.decision(&j, action, i)
            }
            None => self.decision(&Judgement::allow_nothing(), "sql:other", 0),
        }
    }

    /// The verdict for every statement and the overall decision, for
    /// `airlock policy explain`.
    pub fn explain(
        &self,
        identity: &Identity,
        conn: &ConnectionInfo,
        cls: &Classification,
        ctx: &PolicyContext,
    ) -> Explanation {
        let mut subject = None;
        let statements = cls
            .statements
            .iter()
            .enumerate()
            .map(|(i, stmt)| {
                let j = self.judge_statement(identity, conn, stmt, ctx, &mut subject);
                StatementExplanation {
                    index: i,
                    statement: stmt.clone(),
                    decision: self.decision(&j, stmt.class.sql_action(), i),
                }
            })
            .collect();
        Explanation {
            identity: identity.clone(),
            connection: conn.clone(),
            policy_version: self.version.clone(),
            policy_origin: self.origin.clone(),
            decision: self.decide_sql(identity, conn, cls, ctx),
            statements,
        }
    }

    /// One statement's judgement, from the cache when possible. `subject` is
    /// built on the first miss and reused for the command's other statements.
    fn judge_statement(
        &self,
        identity: &Identity,
        conn: &ConnectionInfo,
        stmt: &SqlStatement,
        ctx: &PolicyContext,
        subject: &mut Option<Result<Arc<Subject>, String>>,
    ) -> Arc<Judgement> {
        let cacheable = !self.uses_text || stmt.text.len() <= MAX_CACHED_TEXT;
        let key = (cacheable && self.verdicts.is_enabled())
            .then(|| self.cache_key(identity, conn, stmt, ctx));
        if let Some(hit) = key.as_deref().and_then(|k| self.verdicts.get(k)) {
            return hit;
        }
        let subject = subject.get_or_insert_with(|| self.subject(identity, conn));
        let judgement = match subject {
            Ok(s) => self.eval.judge(
                s,
                stmt.class.sql_action(),
                &eval::sql_facts(stmt, ctx, self.uses_params),
            ),
            Err(e) => Judgement::fail_closed(e.clone()),
        };
        let judgement = Arc::new(judgement);
        if let Some(k) = key {
            self.verdicts.insert(&k, Arc::clone(&judgement));
        }
        judgement
    }

    /// The Cedar principal, resource and entities of an identity on a
    /// connection, cached: they only change when the identity's or the
    /// connection's facts do, and those are part of the key.
    fn subject(&self, identity: &Identity, conn: &ConnectionInfo) -> Result<Arc<Subject>, String> {
        let mut key = String::with_capacity(96);
        subject_key(&mut key, identity, conn);
        if let Some(hit) = self.subjects.get(&key) {
            return Ok(hit);
        }
        let subject = Arc::new(Subject::new(names()?, identity, conn)?);
        self.subjects.insert(&key, Arc::clone(&subject));
        Ok(subject)
    }

    /// Everything the verdict depends on besides the policy set itself,
    /// length-prefixed so that no two inputs share a key.
    fn cache_key(
        &self,
        identity: &Identity,
        conn: &ConnectionInfo,
        stmt: &SqlStatement,
        ctx: &PolicyContext,
    ) -> String {
        let mut key = String::with_capacity(160);
        subject_key(&mut key, identity, conn);
        key.push(if ctx.grant { 'G' } else { 'g' });
        field(&mut key, &stmt.kind);
        field(&mut key, stmt.class.as_str());
        list(&mut key, &stmt.tables_read);
        list(&mut key, &stmt.tables_written);
        key.push(match stmt.has_where {
            None => 'n',
            Some(true) => 'w',
            Some(false) => 'x',
        });
        list(&mut key, &stmt.functions);
        if self.uses_text {
            field(&mut key, &stmt.text);
        }
        if self.uses_params {
            let _ = write!(key, "{}[", ctx.params.len());
            for p in &ctx.params {
                match p {
                    Some(p) => field(&mut key, p),
                    None => key.push('~'),
                }
            }
        }
        key
    }

    fn decision(&self, j: &Judgement, action: &str, statement: usize) -> Decision {
        Decision {
            verdict: j.verdict,
            action: action.to_string(),
            policies: j.policies.clone(),
            reason: j.reason.clone(),
            reviewers: j.reviewers.clone(),
            min_approvals: j.min_approvals,
            approval_ttl_secs: j.approval_ttl_secs,
            policy_version: self.version.clone(),
            statement,
        }
    }
}

fn field(key: &mut String, s: &str) {
    let _ = write!(key, "{}:", s.len());
    key.push_str(s);
}

fn list(key: &mut String, items: &[String]) {
    let _ = write!(key, "{}[", items.len());
    for i in items {
        field(key, i);
    }
}

/// Appends the identity's and connection's policy-visible facts to `key`.
fn subject_key(key: &mut String, identity: &Identity, conn: &ConnectionInfo) {
    field(key, &identity.name);
    field(key, identity.kind.as_str());
    list(key, &identity.groups);
    field(key, &conn.name);
    field(key, conn.protocol.as_str());
    list(key, &conn.tags);
}

/// For each action, the policies whose scope admits it (see [`Evaluator::by_action`]).
fn split_by_action(
    policies: &cedar_policy::PolicySet,
) -> Result<HashMap<&'static str, eval::ActionPolicies>, String> {
    let names = names()?;
    let mut out = HashMap::new();
    for action in ACTIONS {
        let uid = names
            .action(action)
            .ok_or_else(|| format!("unknown action {action:?}"))?;
        let mut sets = eval::ActionPolicies {
            all: cedar_policy::PolicySet::new(),
            permits: cedar_policy::PolicySet::new(),
        };
        for policy in policies.policies().filter(|p| eval::admits(p, uid)) {
            sets.all.add(policy.clone()).map_err(|e| e.to_string())?;
            if policy.effect() == Effect::Permit {
                sets.permits
                    .add(policy.clone())
                    .map_err(|e| e.to_string())?;
            }
        }
        out.insert(action, sets);
    }
    Ok(out)
}

/// The schema, parsed; errors point into [`SCHEMA_SOURCE`].
fn schema() -> Result<Schema, PolicyError> {
    match Schema::from_cedarschema_str(SCHEMA_SOURCE) {
        Ok((schema, _warnings)) => Ok(schema),
        Err(e) => Err(PolicyError::new(
            SCHEMA_ORIGIN,
            vec![PolicyDiagnostic::from_miette(SCHEMA_SOURCE, &e)],
        )),
    }
}

/// `policy7` → 7: Cedar's default ids follow the order of the text.
fn default_position(id: &PolicyId) -> usize {
    id.to_string()
        .strip_prefix("policy")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX)
}

/// First 16 hex digits of the SHA-256 of `src`.
pub fn version_of(src: &str) -> String {
    let digest = Sha256::digest(src.as_bytes());
    let mut hex = hex::encode(digest);
    hex.truncate(16);
    hex
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
