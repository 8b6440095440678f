//! Cedar requests and the two-evaluation rule: allow, review or deny, and what determined it.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::LazyLock;

use cedar_policy::{
    ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, Policy, PolicyId, Request, Response, RestrictedExpression,
};

use crate::model::{ConnectionInfo, Identity, SqlStatement, Verdict};

use super::PolicyContext;

/// Every action of the schema, in schema order.
pub const ACTIONS: [&str; 19] = [
    "connect",
    "unmask",
    "sql:read",
    "sql:write",
    "sql:ddl",
    "sql:admin",
    "sql:tx",
    "sql:other",
    "sql:unknown",
    "ssh:shell",
    "ssh:exec",
    "ssh:forward",
    "ssh:sftp",
    "http:read",
    "http:write",
    "k8s:read",
    "k8s:write",
    "k8s:exec",
    "mcp:tool",
];

/// Entity type names and action uids, built once per process.
pub(super) struct Names {
    identity: EntityTypeName,
    group: EntityTypeName,
    connection: EntityTypeName,
    actions: HashMap<&'static str, EntityUid>,
}

static NAMES: LazyLock<Result<Names, String>> = LazyLock::new(Names::new);

/// The shared names; an error (which constant names cannot produce) makes
/// every decision fail closed.
pub(super) fn names() -> Result<&'static Names, String> {
    NAMES.as_ref().map_err(Clone::clone)
}

impl Names {
    fn new() -> Result<Self, String> {
        let ty = |s: &str| EntityTypeName::from_str(s).map_err(|e| format!("{s}: {e}"));
        let action_type = ty("Airlock::Action")?;
        let actions = ACTIONS
            .iter()
            .map(|a| {
                (
                    *a,
                    EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a)),
                )
            })
            .collect();
        Ok(Names {
            identity: ty("Airlock::Identity")?,
            group: ty("Airlock::Group")?,
            connection: ty("Airlock::Connection")?,
            actions,
        })
    }

    pub(super) fn action(&self, name: &str) -> Option<&EntityUid> {
        self.actions.get(name)
    }
}

/// What the loader learned about one policy: its id, order and annotations.
#[derive(Debug, Clone)]
pub(super) struct PolicyMeta {
    pub id: String,
    /// The policy's text mentions `approved`: only such a permit can apply
    /// with approval and not without (its inputs are otherwise the same).
    pub mentions_approved: bool,
    /// Position in the source, so that "first @reason" means the first in the file.
    pub position: usize,
    pub reason: Option<String>,
    pub reviewers: Vec<String>,
    pub min_approvals: Option<u32>,
    pub approval_ttl_secs: Option<u64>,
}

impl PolicyMeta {
    /// Reads and checks the annotations; the error names the bad annotation.
    pub(super) fn parse(policy: &Policy, position: usize) -> Result<Self, (String, String)> {
        let id = policy.id().to_string();
        let reviewers = match policy.annotation("reviewers") {
            None => Vec::new(),
            Some(raw) => {
                let list: Vec<String> = raw
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if list.is_empty() {
                    return Err((
                        format!("@reviewers(\"{raw}\")"),
                        format!("policy {id}: @reviewers must name at least one group"),
                    ));
                }
                list
            }
        };
        let min_approvals = match policy.annotation("min_approvals") {
            None => None,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err((
                        format!("@min_approvals(\"{raw}\")"),
                        format!(
                            "policy {id}: @min_approvals(\"{raw}\") must be a whole number of at least 1"
                        ),
                    ));
                }
            },
        };
        let approval_ttl_secs = match policy.annotation("approval_ttl") {
            None => None,
            Some(raw) => match humantime::parse_duration(raw.trim()) {
                Ok(d) if d.as_secs() >= 1 => Some(d.as_secs()),
                _ => {
                    return Err((
                        format!("@approval_ttl(\"{raw}\")"),
                        format!(
                            "policy {id}: @approval_ttl(\"{raw}\") must be a duration of at least 1s, like \"15m\""
                        ),
                    ));
                }
            },
        };
        Ok(PolicyMeta {
            id,
            mentions_approved: policy.to_string().contains("approved"),
            position,
            reason: policy.annotation("reason").map(str::to_string),
            reviewers,
            min_approvals,
            approval_ttl_secs,
        })
    }
}

/// A verdict for one request with what determined it; cached per statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Judgement {
    pub verdict: Verdict,
    pub policies: Vec<String>,
    pub reason: Option<String>,
    pub reviewers: Vec<String>,
    pub min_approvals: u32,
    pub approval_ttl_secs: Option<u64>,
}

impl Judgement {
    fn plain(verdict: Verdict, determining: &[&PolicyMeta]) -> Self {
        let mut j = Judgement {
            verdict,
            policies: determining.iter().map(|m| m.id.clone()).collect(),
            reason: determining.iter().find_map(|m| m.reason.clone()),
            reviewers: Vec::new(),
            min_approvals: 1,
            approval_ttl_secs: None,
        };
        if verdict == Verdict::Review {
            for m in determining {
                j.absorb_review_terms(
                    &m.reviewers,
                    m.min_approvals.unwrap_or(1),
                    m.approval_ttl_secs,
                );
            }
        }
        j
    }

    pub(super) fn fail_closed(why: String) -> Self {
        Judgement {
            verdict: Verdict::Deny,
            policies: Vec::new(),
            reason: Some(format!("denied: {why} (failing closed)")),
            reviewers: Vec::new(),
            min_approvals: 1,
            approval_ttl_secs: None,
        }
    }

    /// The empty command: nothing to judge.
    pub(super) fn allow_nothing() -> Self {
        Self::plain(Verdict::Allow, &[])
    }

    fn absorb_review_terms(&mut self, reviewers: &[String], min: u32, ttl: Option<u64>) {
        for r in reviewers {
            if !self.reviewers.contains(r) {
                self.reviewers.push(r.clone());
            }
        }
        self.min_approvals = self.min_approvals.max(min);
        self.approval_ttl_secs = match (self.approval_ttl_secs, ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Folds another statement's review into this one: one approval then
    /// covers both, so it must satisfy the stricter terms of each.
    pub(super) fn merge_review(&mut self, other: &Judgement) {
        for p in &other.policies {
            if !self.policies.contains(p) {
                self.policies.push(p.clone());
            }
        }
        if self.reason.is_none() {
            self.reason = other.reason.clone();
        }
        self.absorb_review_terms(
            &other.reviewers,
            other.min_approvals,
            other.approval_ttl_secs,
        );
    }
}

/// Principal, resource and entity store of one (identity, connection) pair,
/// built once per command and shared by its statements.
pub(super) struct Subject {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

impl Subject {
    pub(super) fn new(
        names: &Names,
        identity: &Identity,
        conn: &ConnectionInfo,
    ) -> Result<Self, String> {
        let principal =
            EntityUid::from_type_name_and_id(names.identity.clone(), EntityId::new(&identity.name));
        let resource =
            EntityUid::from_type_name_and_id(names.connection.clone(), EntityId::new(&conn.name));
        let parents: HashSet<EntityUid> = identity
            .groups
            .iter()
            .map(|g| EntityUid::from_type_name_and_id(names.group.clone(), EntityId::new(g)))
            .collect();
        let identity_entity = Entity::new(
            principal.clone(),
            HashMap::from([(
                "kind".to_string(),
                RestrictedExpression::new_string(identity.kind.as_str().to_string()),
            )]),
            parents,
        )
        .map_err(|e| format!("identity entity: {e}"))?;
        let connection_entity = Entity::new(
            resource.clone(),
            HashMap::from([
                (
                    "protocol".to_string(),
                    RestrictedExpression::new_string(conn.protocol.as_str().to_string()),
                ),
                ("tags".to_string(), string_set(conn.tags.iter())),
            ]),
            HashSet::new(),
        )
        .map_err(|e| format!("connection entity: {e}"))?;
        // No schema here: the entities are built by this code, with the
        // schema's shapes; validating them again per request costs time.
        let entities = Entities::from_entities([identity_entity, connection_entity], None)
            .map_err(|e| format!("entities: {e}"))?;
        Ok(Subject {
            principal,
            resource,
            entities,
        })
    }
}

fn string_set<'a>(items: impl Iterator<Item = &'a String>) -> RestrictedExpression {
    RestrictedExpression::new_set(items.map(|s| RestrictedExpression::new_string(s.clone())))
}

/// The context record of a request, minus `approved` (set per evaluation).
pub(super) type Facts = Vec<(String, RestrictedExpression)>;

/// `SessionContext` / `CommandContext` facts: only the grant.
pub(super) fn session_facts(grant: bool) -> Facts {
    vec![("grant".into(), RestrictedExpression::new_bool(grant))]
}

/// `SqlContext` facts of one statement. Each set attribute costs about half
/// a microsecond per Cedar context built, which is why tables read alone are
/// not a separate attribute (`tables` minus `tables_written` comes close).
pub(super) fn sql_facts(stmt: &SqlStatement, ctx: &PolicyContext, with_params: bool) -> Facts {
    let mut tables: Vec<&String> = stmt.tables_read.iter().collect();
    for t in &stmt.tables_written {
        if !tables.contains(&t) {
            tables.push(t);
        }
    }
    let mut table_names: Vec<String> = Vec::with_capacity(tables.len());
    for t in &tables {
        let bare = t.rsplit('.').next().unwrap_or(t).to_string();
        if !table_names.contains(&bare) {
            table_names.push(bare);
        }
    }
    let mut facts = vec![
        ("grant".into(), RestrictedExpression::new_bool(ctx.grant)),
        (
            "kind".into(),
            RestrictedExpression::new_string(stmt.kind.clone()),
        ),
        (
            "class".into(),
            RestrictedExpression::new_string(stmt.class.as_str().to_string()),
        ),
        ("tables".into(), string_set(tables.into_iter())),
        (
            "tables_written".into(),
            string_set(stmt.tables_written.iter()),
        ),
        ("table_names".into(), string_set(table_names.iter())),
        (
            "has_where".into(),
            RestrictedExpression::new_bool(stmt.has_where.unwrap_or(true)),
        ),
        ("functions".into(), string_set(stmt.functions.iter())),
        (
            "text".into(),
            RestrictedExpression::new_string(stmt.text.clone()),
        ),
    ];
    if with_params {
        facts.push((
            "params".into(),
            string_set(ctx.params.iter().filter_map(|p| p.as_ref())),
        ));
    }
    facts
}

/// The policies that can apply to one action, all and permits only.
pub(super) struct ActionPolicies {
    pub all: cedar_policy::PolicySet,
    /// The permits alone: tells which permits applied without approval when
    /// a forbid decided the first evaluation (Cedar reports only the forbids).
    pub permits: cedar_policy::PolicySet,
}

/// The compiled policies of a set plus what evaluation needs around them.
pub(super) struct Evaluator {
    /// Policies split by the action their scope admits. Cedar evaluates every
    /// policy of a set on each request (about 1 µs each); a policy whose
    /// action scope excludes the request's action cannot be satisfied and,
    /// the scope being checked first, cannot error either, so leaving it out
    /// changes nothing but the time taken.
    pub by_action: HashMap<&'static str, ActionPolicies>,
    pub meta: HashMap<PolicyId, PolicyMeta>,
    pub authorizer: Authorizer,
}

/// Whether a policy's action scope can admit `action`. The schema declares
/// no action groups, so `action in [...]` holds only for the listed actions;
/// should a name that is not a known action ever appear there (a group added
/// to the schema later), the policy is kept for every action to stay exact.
pub(super) fn admits(policy: &Policy, action: &EntityUid) -> bool {
    match policy.action_constraint() {
        ActionConstraint::Any => true,
        ActionConstraint::Eq(uid) => &uid == action,
        ActionConstraint::In(uids) => uids
            .iter()
            .any(|uid| uid == action || !ACTIONS.iter().any(|a| uid.id().unescaped() == *a)),
    }
}

impl Evaluator {
    fn request(
        &self,
        subject: &Subject,
        action: &EntityUid,
        facts: &Facts,
        approved: bool,
    ) -> Result<Request, String> {
        let mut pairs = Vec::with_capacity(facts.len() + 1);
        pairs.push((
            "approved".to_string(),
            RestrictedExpression::new_bool(approved),
        ));
        pairs.extend(facts.iter().cloned());
        let context = Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))?;
        Request::new(
            subject.principal.clone(),
            action.clone(),
            subject.resource.clone(),
            context,
            None,
        )
        .map_err(|e| format!("request: {e}"))
    }

    fn run(
        &self,
        request: &Request,
        set: &cedar_policy::PolicySet,
        subject: &Subject,
    ) -> Result<Response, String> {
        let response = self
            .authorizer
            .is_authorized(request, set, &subject.entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(response)
        } else {
            // Cedar skips a policy that errors; a skipped forbid could turn
            // into an allow, so any error denies.
            Err(format!("policy evaluation error: {}", errors.join("; ")))
        }
    }

    /// The metadata of `ids`, in source order.
    fn determining<'a>(&'a self, ids: impl Iterator<Item = &'a PolicyId>) -> Vec<&'a PolicyMeta> {
        let mut metas: Vec<&PolicyMeta> = ids.filter_map(|id| self.meta.get(id)).collect();
        metas.sort_by_key(|m| m.position);
        metas.dedup_by_key(|m| m.position);
        metas
    }

    /// The two-evaluation rule for one request.
    pub(super) fn judge(&self, subject: &Subject, action: &str, facts: &Facts) -> Judgement {
        match self.try_judge(subject, action, facts) {
            Ok(j) => j,
            Err(why) => Judgement::fail_closed(why),
        }
    }

    fn try_judge(
        &self,
        subject: &Subject,
        action: &str,
        facts: &Facts,
    ) -> Result<Judgement, String> {
        let unknown = || format!("unknown action {action:?}");
        let uid = names()?.action(action).ok_or_else(unknown)?;
        let sets = self.by_action.get(action).ok_or_else(unknown)?;
        let first_request = self.request(subject, uid, facts, false)?;
        let first = self.run(&first_request, &sets.all, subject)?;
        if first.decision() == CedarDecision::Allow {
            let permits = self.determining(first.diagnostics().reason());
            return Ok(Judgement::plain(Verdict::Allow, &permits));
        }
        let second_request = self.request(subject, uid, facts, true)?;
        let second = self.run(&second_request, &sets.all, subject)?;
        if second.decision() == CedarDecision::Allow {
            // Denied first: its reasons are the forbids that applied, all of
            // which stopped applying with approval (the second allowed).
            let forbids: Vec<&PolicyMeta> = self.determining(first.diagnostics().reason());
            // Permits that applied only with approval. Without any forbid in
            // the first evaluation, no permit applied then at all; and a
            // permit that does not mention `approved` applied both times.
            // Only otherwise is a third evaluation needed to tell.
            let maybe_new = second
                .diagnostics()
                .reason()
                .any(|id| self.meta.get(id).is_some_and(|m| m.mentions_approved));
            let before: HashSet<PolicyId> = if forbids.is_empty() {
                HashSet::new()
            } else if !maybe_new {
                second.diagnostics().reason().cloned().collect()
            } else {
                let permits_first = self.run(&first_request, &sets.permits, subject)?;
                permits_first.diagnostics().reason().cloned().collect()
            };
            let permits_only_approved = self.determining(
                second
                    .diagnostics()
                    .reason()
                    .filter(|id| !before.contains(id)),
            );
            let mut determining = forbids;
            determining.extend(permits_only_approved);
            return Ok(Judgement::plain(Verdict::Review, &determining));
        }
        // Still denied with approval: the forbids that apply regardless.
        let forbids = self.determining(second.diagnostics().reason());
        Ok(Judgement::plain(Verdict::Deny, &forbids))
    }
}
