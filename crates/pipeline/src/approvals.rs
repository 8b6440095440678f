//! Human-in-the-loop approvals: the request a held command becomes, the rules
//! that decide it, and the broker interface the pipeline holds commands with.
//!
//! The broker (in `airlock-control`) persists requests, notifies reviewers,
//! applies decisions and wakes the held session. The rules themselves live
//! here ([`check_reviewer`], [`tally`]) so every front end (API, CLI, Slack)
//! applies the same ones.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Classification, Identity, IdentityKind};

/// Where an approval request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    Expired,
    Withdrawn,
    /// Approved and released: the held bytes were forwarded (single use).
    Executed,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::Expired => "expired",
            ApprovalStatus::Withdrawn => "withdrawn",
            ApprovalStatus::Executed => "executed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => ApprovalStatus::Pending,
            "approved" => ApprovalStatus::Approved,
            "rejected" => ApprovalStatus::Rejected,
            "expired" => ApprovalStatus::Expired,
            "withdrawn" => ApprovalStatus::Withdrawn,
            "executed" => ApprovalStatus::Executed,
            _ => return None,
        })
    }

    /// No further decision can change it.
    pub fn is_final(self) -> bool {
        !matches!(self, ApprovalStatus::Pending | ApprovalStatus::Approved)
    }
}

/// What a reviewer said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecisionKind {
    Approve,
    Reject,
}

/// One reviewer's decision on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDecision {
    pub reviewer: String,
    pub decision: DecisionKind,
    pub comment: Option<String>,
    pub at_us: i64,
}

/// What kind of thing is being approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalSubject {
    /// One held command: exactly these bytes may be released.
    Command {
        session_id: Uuid,
        seq: u64,
        protocol: String,
        text: String,
        params: Vec<Option<String>>,
        /// Hex SHA-256 of the exact held wire bytes.
        wire_sha256: String,
        classification: Classification,
        policy_version: String,
    },
    /// Just-in-time access to a connection for a while.
    Access { duration_secs: u64, reason: String },
}

/// An approval request with everything reviewers need to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: Uuid,
    pub requester: String,
    pub requester_kind: IdentityKind,
    pub connection: String,
    pub subject: ApprovalSubject,
    /// Policies that made the difference, and their `@reason`.
    pub policies: Vec<String>,
    pub reason: Option<String>,
    /// Groups a reviewer must belong to (any of them); empty = any human.
    pub reviewers: Vec<String>,
    pub min_approvals: u32,
    pub created_at_us: i64,
    pub expires_at_us: i64,
    pub status: ApprovalStatus,
    pub decisions: Vec<ReviewDecision>,
}

/// How a held command's wait ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Approved and claimed: forward the held bytes now (once).
    Released,
    Rejected {
        by: String,
        comment: Option<String>,
    },
    Expired,
    Withdrawn,
    /// The broker failed; fail closed.
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    #[error("approval request {0} not found")]
    NotFound(Uuid),
    #[error("{0}")]
    NotAllowed(String),
    #[error("approval request is {0}")]
    NotPending(&'static str),
    #[error("approval store unavailable: {0}")]
    Unavailable(String),
}

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The pipeline's view of the approval machinery.
pub trait ApprovalBroker: Send + Sync + 'static {
    /// Persists a new pending request and notifies reviewers.
    fn submit(&self, request: ApprovalRequest) -> BoxFut<'_, Result<(), ApprovalError>>;
    /// Waits until the request is decided, expires or is withdrawn. On
    /// approval it atomically claims the request (approved → executed) and
    /// returns `Released` only to the one caller that won the claim.
    fn wait(&self, id: Uuid) -> BoxFut<'_, Resolution>;
    /// The client cancelled or went away: withdraw a still-pending request.
    fn withdraw(&self, id: Uuid) -> BoxFut<'_, ()>;
    /// Whether `identity` holds an approved, unexpired access grant on
    /// `connection` (just-in-time access).
    fn has_grant(&self, identity: &str, connection: &str) -> bool;
}

/// Why `reviewer` may not decide `request`, if they may not. The same rules
/// for every front end: humans only, never one's own request, a required
/// group, one decision per reviewer, and only while pending.
pub fn check_reviewer(request: &ApprovalRequest, reviewer: &Identity) -> Result<(), ApprovalError> {
    if request.status != ApprovalStatus::Pending {
        return Err(ApprovalError::NotPending(request.status.as_str()));
    }
    if reviewer.kind != IdentityKind::Human {
        return Err(ApprovalError::NotAllowed(format!(
            "{} is not a human; only humans can decide approvals",
            reviewer.name
        )));
    }
    if reviewer.name == request.requester {
        return Err(ApprovalError::NotAllowed(
            "a requester cannot decide their own request".into(),
        ));
    }
    if !request.reviewers.is_empty() && !request.reviewers.iter().any(|g| reviewer.in_group(g)) {
        return Err(ApprovalError::NotAllowed(format!(
            "{} is not in any of the required reviewer groups: {}",
            reviewer.name,
            request.reviewers.join(", ")
        )));
    }
    if request
        .decisions
        .iter()
        .any(|d| d.reviewer == reviewer.name)
    {
        return Err(ApprovalError::NotAllowed(format!(
            "{} has already decided this request",
            reviewer.name
        )));
    }
    Ok(())
}

/// The status that follows from the decisions so far: one rejection rejects,
/// `min_approvals` distinct approvals approve.
pub fn tally(request: &ApprovalRequest) -> ApprovalStatus {
    if request
        .decisions
        .iter()
        .any(|d| d.decision == DecisionKind::Reject)
    {
        return ApprovalStatus::Rejected;
    }
    let mut approvers: Vec<&str> = request
        .decisions
        .iter()
        .filter(|d| d.decision == DecisionKind::Approve)
        .map(|d| d.reviewer.as_str())
        .collect();
    approvers.sort_unstable();
    approvers.dedup();
    if approvers.len() as u32 >= request.min_approvals.max(1) {
        ApprovalStatus::Approved
    } else {
        ApprovalStatus::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn human(name: &str, groups: &[&str]) -> Identity {
        Identity {
            name: name.into(),
            kind: IdentityKind::Human,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn request(min: u32) -> ApprovalRequest {
        ApprovalRequest {
            id: Uuid::nil(),
            requester: "agent".into(),
            requester_kind: IdentityKind::Agent,
            connection: "shop".into(),
            subject: ApprovalSubject::Access {
                duration_secs: 60,
                reason: "test".into(),
            },
            policies: vec![],
            reason: None,
            reviewers: vec!["dba".into()],
            min_approvals: min,
            created_at_us: 0,
            expires_at_us: 1,
            status: ApprovalStatus::Pending,
            decisions: vec![],
        }
    }

    fn decide(r: &mut ApprovalRequest, who: &str, d: DecisionKind) {
        r.decisions.push(ReviewDecision {
            reviewer: who.into(),
            decision: d,
            comment: None,
            at_us: 0,
        });
        r.status = tally(r);
    }

    #[test]
    fn reviewer_rules() {
        let r = request(1);
        assert!(check_reviewer(&r, &human("alice", &["dba"])).is_ok());
        assert!(check_reviewer(&r, &human("carol", &["devs"])).is_err());
        let mut bot = human("bot", &["dba"]);
        bot.kind = IdentityKind::Agent;
        assert!(check_reviewer(&r, &bot).is_err());
        let mut own = request(1);
        own.requester = "alice".into();
        assert!(check_reviewer(&own, &human("alice", &["dba"])).is_err());
    }

    #[test]
    fn two_approvals_needed_and_one_rejection_rejects() {
        let mut r = request(2);
        decide(&mut r, "alice", DecisionKind::Approve);
        assert_eq!(r.status, ApprovalStatus::Pending);
        assert!(
            check_reviewer(&r, &human("alice", &["dba"])).is_err(),
            "no second vote"
        );
        decide(&mut r, "bob", DecisionKind::Approve);
        assert_eq!(r.status, ApprovalStatus::Approved);

        let mut r = request(2);
        decide(&mut r, "alice", DecisionKind::Approve);
        decide(&mut r, "bob", DecisionKind::Reject);
        assert_eq!(r.status, ApprovalStatus::Rejected);
    }
}
