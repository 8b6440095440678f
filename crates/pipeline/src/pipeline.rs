//! The pipeline every adapter calls: authenticate and open a session, then for
//! each command classify, decide, record (before forwarding) and answer with
//! an [`Admission`]. Results are recorded after the fact. Nothing here knows
//! a wire format.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use metrics::{Counter, Histogram};
use uuid::Uuid;

use crate::approvals::{
    ApprovalBroker, ApprovalRequest, ApprovalStatus, ApprovalSubject, Resolution,
};
use crate::auth::IdentityRegistry;
use crate::classify::{ClassifyLimits, SqlClassifier, SqlDialect};
use crate::mask::{ConnectionMasker, Masker};
use crate::model::{
    Classification, CommandInput, ConnectionInfo, Decision, Identity, Protocol, SessionInfo,
    Verdict,
};
use crate::policy::{PolicyContext, PolicyEngine};
use crate::record::{AuditEvent, AuditSink, EventBody, MaskCount};

/// Why a connection attempt was refused. The adapter maps each to its
/// protocol's error; the variants are deliberately coarse for the client.
#[derive(Debug, Clone)]
pub enum ConnectRefusal {
    /// Unknown identity or wrong token (indistinguishable on purpose).
    BadCredentials,
    /// The connection name does not exist (or is not of this protocol).
    UnknownConnection,
    /// Policy does not allow `connect`.
    Denied(Decision),
    /// The audit store could not record the session: fail closed.
    AuditUnavailable,
}

/// Facts about a connection attempt, as the adapter saw them.
#[derive(Debug, Clone)]
pub struct ConnectRequest<'a> {
    pub user: &'a str,
    pub token: &'a [u8],
    pub connection: &'a str,
    pub protocol: Protocol,
    pub client_addr: SocketAddr,
    pub application_name: Option<String>,
    pub tls: bool,
}

/// What the adapter must do with a command.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Forward it; it has been recorded as command `seq`.
    Forward { seq: u64 },
    /// Hold it until people approve: tell the client `notice` now, then
    /// wait with [`Session::await_hold`].
    Hold(Hold),
    /// Do not forward it; tell the client `message` with `sqlstate`.
    Refuse {
        seq: u64,
        sqlstate: &'static str,
        message: String,
    },
}

/// A command waiting for approval.
#[derive(Debug, Clone)]
pub struct Hold {
    pub seq: u64,
    pub request_id: Uuid,
    /// One line for the client, e.g. `airlock: statement held for approval
    /// <id>: <url> (needs 1 of: dba)`.
    pub notice: String,
}

/// What came back for a command, reported by the adapter.
#[derive(Debug, Clone, Default)]
pub struct CommandOutcome {
    pub tags: Vec<String>,
    pub rows: u64,
    pub duration: Duration,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub masked: Vec<MaskCount>,
}

/// Byte and command counts for the end-of-session record.
#[derive(Debug, Clone, Default)]
pub struct SessionTotals {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub commands: u64,
}

/// Everything the pipeline needs, built by the binary from config.
pub struct PipelineParts {
    pub identities: IdentityRegistry,
    pub connections: Vec<ConnectionInfo>,
    pub policy: Arc<PolicyEngine>,
    pub audit: Arc<dyn AuditSink>,
    pub masker: Masker,
    pub classify_limits: ClassifyLimits,
    /// Where review verdicts are held; without one, review refuses.
    pub approvals: Option<Arc<dyn ApprovalBroker>>,
    /// Base URL for links in notices.
    pub public_url: String,
    /// Expiry of a held command when policy gives no `@approval_ttl`.
    pub pending_ttl: Duration,
}

struct Meters {
    sessions: Counter,
    auth_failures: Counter,
    allowed: Counter,
    denied: Counter,
    reviewed: Counter,
    audit_errors: Counter,
    decide_seconds: Histogram,
}

impl Meters {
    fn new() -> Self {
        Meters {
            sessions: metrics::counter!("airlock_sessions_total"),
            auth_failures: metrics::counter!("airlock_auth_failures_total"),
            allowed: metrics::counter!("airlock_commands_total", "verdict" => "allow"),
            denied: metrics::counter!("airlock_commands_total", "verdict" => "deny"),
            reviewed: metrics::counter!("airlock_commands_total", "verdict" => "review"),
            audit_errors: metrics::counter!("airlock_audit_errors_total"),
            decide_seconds: metrics::histogram!("airlock_decide_seconds"),
        }
    }
}

/// The protocol-neutral enforcement pipeline. Cheap to share (`Arc`).
pub struct Pipeline {
    identities: ArcSwap<IdentityRegistry>,
    connections: ArcSwap<HashMap<String, Arc<ConnectionInfo>>>,
    policy: Arc<PolicyEngine>,
    sql: SqlClassifier,
    audit: Arc<dyn AuditSink>,
    masker: ArcSwap<Masker>,
    approvals: Option<Arc<dyn ApprovalBroker>>,
    public_url: String,
    pending_ttl: Duration,
    meters: Meters,
}

impl Pipeline {
    pub fn new(parts: PipelineParts) -> Arc<Pipeline> {
        let connections = parts
            .connections
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(c)))
            .collect();
        Arc::new(Pipeline {
            identities: ArcSwap::from_pointee(parts.identities),
            connections: ArcSwap::from_pointee(connections),
            policy: parts.policy,
            sql: SqlClassifier::new(SqlDialect::Postgres, parts.classify_limits),
            audit: parts.audit,
            masker: ArcSwap::from_pointee(parts.masker),
            approvals: parts.approvals,
            public_url: parts.public_url,
            pending_ttl: parts.pending_ttl,
            meters: Meters::new(),
        })
    }

    pub fn policy(&self) -> &Arc<PolicyEngine> {
        &self.policy
    }

    pub fn identities(&self) -> Arc<IdentityRegistry> {
        self.identities.load_full()
    }

    /// Classifies SQL text (cached); used at Parse to warm the cache.
    pub fn classify_sql(&self, text: &str) -> Arc<Classification> {
        self.sql.classify(text)
    }

    /// Authenticates a client, checks `connect`, and records the session
    /// start before anything reaches the target.
    pub async fn connect(
        self: &Arc<Self>,
        req: ConnectRequest<'_>,
    ) -> Result<Session, ConnectRefusal> {
        let identity = match self.identities.load().authenticate(req.user, req.token) {
            Ok(id) => id,
            Err(_) => {
                self.refused(&req, "bad credentials").await;
                return Err(ConnectRefusal::BadCredentials);
            }
        };
        let connection = match self.connections.load().get(req.connection) {
            Some(c) if c.protocol == req.protocol => c.clone(),
            _ => {
                self.refused(&req, "unknown connection").await;
                return Err(ConnectRefusal::UnknownConnection);
            }
        };
        let policy = self.policy.current();
        let decision = policy.decide_connect(&identity, &connection);
        if decision.verdict != Verdict::Allow {
            self.refused(&req, &format!("connect {}", decision.verdict.as_str()))
                .await;
            return Err(ConnectRefusal::Denied(decision));
        }
        let unmask = policy.decide_unmask(&identity, &connection);
        let masker = if unmask {
            None
        } else {
            self.masker.load().for_connection(&connection)
        };

        let info = SessionInfo {
            id: Uuid::now_v7(),
            identity: identity.clone(),
            connection: connection.clone(),
            client_addr: req.client_addr,
            application_name: req.application_name.clone(),
            tls: req.tls,
            started_at: SystemTime::now(),
        };
        let start = AuditEvent::now(
            info.id,
            EventBody::SessionStart {
                identity: identity.name.clone(),
                identity_kind: identity.kind.as_str().into(),
                connection: connection.name.clone(),
                protocol: req.protocol.as_str().into(),
                client_addr: req.client_addr.to_string(),
                application_name: req.application_name,
                tls: req.tls,
            },
        );
        if self.audit.append(start).await.is_err() {
            self.meters.audit_errors.increment(1);
            return Err(ConnectRefusal::AuditUnavailable);
        }
        self.meters.sessions.increment(1);
        Ok(Session {
            info,
            pipeline: self.clone(),
            next_seq: AtomicU64::new(0),
            masker,
            unmask,
            ended: AtomicBool::new(false),
        })
    }

    async fn refused(&self, req: &ConnectRequest<'_>, reason: &str) {
        self.meters.auth_failures.increment(1);
        let ev = AuditEvent::now(
            Uuid::now_v7(),
            EventBody::AuthFailed {
                claimed_identity: req.user.to_string(),
                connection: req.connection.to_string(),
                protocol: req.protocol.as_str().into(),
                client_addr: req.client_addr.to_string(),
                reason: reason.to_string(),
            },
        );
        if self.audit.append(ev).await.is_err() {
            self.meters.audit_errors.increment(1);
            tracing::error!("could not record a failed connection attempt");
        }
    }
}

/// One authenticated session, shared by the adapter's relay halves.
pub struct Session {
    info: SessionInfo,
    pipeline: Arc<Pipeline>,
    next_seq: AtomicU64,
    masker: Option<Arc<ConnectionMasker>>,
    unmask: bool,
    /// `end` was called; otherwise dropping the session records its end.
    ended: AtomicBool,
}

impl Session {
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.info.identity
    }

    /// The masker for this session's results; `None` when nothing is masked
    /// (no rule applies, or policy lets this identity `unmask`).
    pub fn masker(&self) -> Option<&Arc<ConnectionMasker>> {
        self.masker.as_ref()
    }

    pub fn unmasked(&self) -> bool {
        self.unmask
    }

    pub fn pipeline(&self) -> &Arc<Pipeline> {
        &self.pipeline
    }

    /// Classifies, decides and records one command. Only `Forward` lets the
    /// adapter send it on; a store failure refuses it (fail closed).
    pub async fn admit(&self, input: CommandInput, held: &[u8]) -> Admission {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let p = &self.pipeline;
        let started = std::time::Instant::now();
        let classification = p.sql.classify(&input.text);
        let policy = p.policy.current();
        // A just-in-time grant is a fact policy sees (`context.grant`).
        let grant = p
            .approvals
            .as_ref()
            .is_some_and(|b| b.has_grant(&self.info.identity.name, &self.info.connection.name));
        let ctx = PolicyContext {
            params: input.params.clone(),
            grant,
        };
        let decision = policy.decide_sql(
            &self.info.identity,
            &self.info.connection,
            &classification,
            &ctx,
        );
        p.meters
            .decide_seconds
            .record(started.elapsed().as_secs_f64());

        let verdict = decision.verdict;
        // Allowed commands (nearly all) need no message; build it only for refusals.
        let message = if verdict == Verdict::Allow {
            String::new()
        } else {
            decision.client_message(&self.info.connection.name)
        };
        // Only a held command needs the hash of its exact bytes.
        let hold = (verdict == Verdict::Review && p.approvals.is_some())
            .then(|| self.approval_request(seq, &input, held, &classification, &decision));
        // Recordings hold masked values only: literals and bind parameters
        // go through the connection's detectors before they are stored.
        let (text, params) = match &self.masker {
            Some(m) => (
                m.mask_text(&input.text)
                    .unwrap_or_else(|| input.text.to_string()),
                input
                    .params
                    .into_iter()
                    .map(|p| p.map(|v| m.mask_text(&v).unwrap_or(v)))
                    .collect(),
            ),
            None => (input.text.to_string(), input.params),
        };
        let event = AuditEvent::now(
            self.info.id,
            EventBody::Command {
                seq,
                text,
                params,
                via: input.via.as_str().to_string(),
                classification: {
                    let mut c = (*classification).clone();
                    if let Some(m) = &self.masker {
                        for st in &mut c.statements {
                            if let Some(masked) = m.mask_text(&st.text) {
                                st.text = masked;
                            }
                        }
                    }
                    c
                },
                decision,
            },
        );
        if p.audit.append(event).await.is_err() {
            p.meters.audit_errors.increment(1);
            return Admission::Refuse {
                seq,
                sqlstate: "58000",
                message:
                    "airlock: the audit store is unavailable, so the command was not forwarded"
                        .into(),
            };
        }
        match verdict {
            Verdict::Allow => {
                p.meters.allowed.increment(1);
                Admission::Forward { seq }
            }
            Verdict::Deny => {
                p.meters.denied.increment(1);
                Admission::Refuse {
                    seq,
                    sqlstate: "42501",
                    message,
                }
            }
            Verdict::Review => {
                p.meters.reviewed.increment(1);
                match (hold, p.approvals.as_ref()) {
                    (Some(request), Some(broker)) => {
                        let id = request.id;
                        let groups = if request.reviewers.is_empty() {
                            "any human reviewer".to_string()
                        } else {
                            request.reviewers.join(", ")
                        };
                        let notice = format!(
                            "airlock: statement held for approval {id}: {}/approvals/{id} (needs {} of: {groups})",
                            p.public_url, request.min_approvals
                        );
                        match broker.submit(request).await {
                            Ok(()) => Admission::Hold(Hold {
                                seq,
                                request_id: id,
                                notice,
                            }),
                            Err(e) => Admission::Refuse {
                                seq,
                                sqlstate: "42501",
                                message: format!(
                                    "statement needs approval, but no request could be made ({e}): {message}"
                                ),
                            },
                        }
                    }
                    // No approval path: review never lets anything through.
                    _ => Admission::Refuse {
                        seq,
                        sqlstate: "42501",
                        message: format!("statement needs approval: {message}"),
                    },
                }
            }
        }
    }

    fn approval_request(
        &self,
        seq: u64,
        input: &CommandInput,
        held: &[u8],
        classification: &Classification,
        decision: &Decision,
    ) -> ApprovalRequest {
        use sha2::{Digest, Sha256};
        // Bind the approval to the text, the parameters and the exact bytes
        // that will be forwarded.
        let mut h = Sha256::new();
        h.update(input.text.as_bytes());
        for param in &input.params {
            h.update([0u8]);
            match param {
                Some(v) => h.update(v.as_bytes()),
                None => h.update([0xffu8]),
            }
        }
        h.update([0u8]);
        h.update(held);
        let now = crate::record::unix_micros(SystemTime::now());
        let ttl = decision
            .approval_ttl_secs
            .map(Duration::from_secs)
            .unwrap_or(self.pipeline.pending_ttl);
        let (text, params) = match &self.masker {
            Some(m) => (
                m.mask_text(&input.text)
                    .unwrap_or_else(|| input.text.to_string()),
                input
                    .params
                    .iter()
                    .map(|p| {
                        p.as_ref()
                            .map(|v| m.mask_text(v).unwrap_or_else(|| v.clone()))
                    })
                    .collect(),
            ),
            None => (input.text.to_string(), input.params.clone()),
        };
        ApprovalRequest {
            // Random, so the short prefixes people type are distinct.
            id: Uuid::new_v4(),
            requester: self.info.identity.name.clone(),
            requester_kind: self.info.identity.kind,
            connection: self.info.connection.name.clone(),
            subject: ApprovalSubject::Command {
                session_id: self.info.id,
                seq,
                protocol: self.info.connection.protocol.as_str().to_string(),
                text,
                params,
                wire_sha256: hex::encode(h.finalize()),
                classification: classification.clone(),
                policy_version: decision.policy_version.clone(),
            },
            policies: decision.policies.clone(),
            reason: decision.reason.clone(),
            reviewers: decision.reviewers.clone(),
            min_approvals: decision.min_approvals.max(1),
            created_at_us: now,
            expires_at_us: now.saturating_add(ttl.as_micros() as i64),
            status: ApprovalStatus::Pending,
            decisions: Vec::new(),
        }
    }

    /// Waits for a held command's approval. Only `Forward` releases it.
    pub async fn await_hold(&self, hold: &Hold) -> Admission {
        let Some(broker) = self.pipeline.approvals.as_ref() else {
            return Admission::Refuse {
                seq: hold.seq,
                sqlstate: "42501",
                message: "airlock: approvals are not available".into(),
            };
        };
        let refuse = |message: String| Admission::Refuse {
            seq: hold.seq,
            sqlstate: "42501",
            message,
        };
        match broker.wait(hold.request_id).await {
            Resolution::Released => Admission::Forward { seq: hold.seq },
            Resolution::Rejected { by, comment } => refuse(format!(
                "airlock: approval request {} was rejected by {by}: {}",
                hold.request_id,
                comment.as_deref().unwrap_or("no reason given")
            )),
            Resolution::Expired => refuse(format!(
                "airlock: approval request {} expired before enough reviewers approved it",
                hold.request_id
            )),
            Resolution::Withdrawn => refuse(format!(
                "airlock: approval request {} was withdrawn",
                hold.request_id
            )),
            Resolution::Failed(e) => refuse(format!(
                "airlock: approval request {} failed: {e}",
                hold.request_id
            )),
        }
    }

    /// The client cancelled or disconnected while its command was held.
    pub async fn withdraw(&self, hold: &Hold) {
        if let Some(broker) = self.pipeline.approvals.as_ref() {
            broker.withdraw(hold.request_id).await;
        }
    }

    /// Records what came back for command `seq`. Does not wait for the
    /// store: the event is queued in order behind the command itself.
    pub fn record_result(&self, seq: u64, outcome: CommandOutcome) {
        let ev = AuditEvent::now(
            self.info.id,
            EventBody::CommandResult {
                seq,
                tags: outcome.tags,
                rows: outcome.rows,
                duration_us: outcome.duration.as_micros() as u64,
                error_code: outcome.error_code,
                error_message: outcome.error_message,
                masked: outcome.masked,
            },
        );
        self.pipeline.audit.append_detached(ev);
    }

    /// Records the end of the session and waits until it is stored.
    pub async fn end(&self, totals: SessionTotals, reason: &str) {
        self.ended.store(true, Ordering::Relaxed);
        let ev = AuditEvent::now(
            self.info.id,
            EventBody::SessionEnd {
                bytes_from_client: totals.bytes_from_client,
                bytes_to_client: totals.bytes_to_client,
                commands: totals.commands.max(self.next_seq.load(Ordering::Relaxed)),
                reason: reason.to_string(),
            },
        );
        if self.pipeline.audit.append(ev).await.is_err() {
            tracing::error!(session = %self.info.id, "could not record the end of a session");
        }
    }
}

impl Drop for Session {
    /// A session dropped before it called `end` (its thread stopped at
    /// shutdown while it still connected upstream or did not drain in time,
    /// or its client left before the session was ready) still gets an end
    /// in its chain, so it does not read as active forever. Byte counts are
    /// not known here.
    fn drop(&mut self) {
        if !*self.ended.get_mut() {
            self.pipeline.audit.append_detached(AuditEvent::now(
                self.info.id,
                EventBody::SessionEnd {
                    bytes_from_client: 0,
                    bytes_to_client: 0,
                    commands: *self.next_seq.get_mut(),
                    reason: "stopped before it could record its end (the client left during \
                             start-up, or the gateway shut down)"
                        .into(),
                },
            ));
        }
    }
}
