//! The approval broker: persists approval requests, applies reviewers'
//! decisions under the shared rules, wakes the held session, expires what
//! nobody decided, and keeps the just-in-time access grants.
//!
//! State lives in the store's SQLite file (tables of schema v2) and every
//! change is one guarded statement or one `BEGIN IMMEDIATE` transaction, so
//! the database arbitrates races between reviewers, timers and sessions. In
//! memory there is only what makes it fast: a `watch` per request that a
//! waiting session sleeps on (no polling), one timer task per deadline, the
//! running grants (so `has_grant` never queries), and a broadcast of
//! [`ApprovalEvent`]s for notifiers and the API's event stream.

mod db;
mod grants;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use airlock_pipeline::approvals::{
    ApprovalBroker, ApprovalError, ApprovalRequest, ApprovalStatus, ApprovalSubject, BoxFut,
    DecisionKind, Resolution, ReviewDecision, check_reviewer, tally,
};
use airlock_pipeline::model::{Identity, IdentityKind};
use airlock_pipeline::record::{AuditEvent, AuditSink, EventBody, unix_micros};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Sqlite, Transaction};
use tokio::sync::{broadcast, watch};
use tokio::task::AbortHandle;
use uuid::Uuid;

use crate::config::Config;
use crate::store::{Store, StoreError};

pub(crate) use db::{DeliveryRow, insert_delivery};
use grants::Grants;

/// How many requests a listing returns when the filter does not say.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// The most requests one listing returns.
pub const MAX_LIST_LIMIT: u32 = 1000;
/// Events buffered for slow subscribers before they start missing some.
const EVENT_CAPACITY: usize = 1024;
/// Connections for approvals; decisions are rare and short.
const POOL_SIZE: u32 = 4;
/// How long a statement waits for the audit writer's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn now_us() -> i64 {
    unix_micros(SystemTime::now())
}

fn unavailable(e: sqlx::Error) -> ApprovalError {
    tracing::error!(error = %e, "approval store query failed");
    ApprovalError::Unavailable(e.to_string())
}

/// What an approval is about, as stored in the `kind` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    Command,
    Access,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Command => "command",
            SubjectKind::Access => "access",
        }
    }
}

/// How the broker behaves; built from `[approvals]` and `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSettings {
    /// Expiry of a request submitted without one, and of access requests.
    pub pending_ttl: Duration,
    /// Groups that decide access requests made through the API.
    pub access_reviewers: Vec<String>,
    pub access_min_approvals: u32,
    /// Longest grant anyone may ask for.
    pub max_access_duration: Duration,
    /// Members may revoke anyone's grant.
    pub admin_groups: Vec<String>,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            pending_ttl: Duration::from_secs(15 * 60),
            access_reviewers: vec!["admins".into()],
            access_min_approvals: 1,
            max_access_duration: Duration::from_secs(24 * 3600),
            admin_groups: vec!["admins".into()],
        }
    }
}

impl BrokerSettings {
    pub fn from_config(cfg: &Config) -> Self {
        BrokerSettings {
            pending_ttl: cfg.approvals.pending_ttl,
            access_reviewers: cfg.approvals.access_reviewers.clone(),
            access_min_approvals: cfg.approvals.access_min_approvals,
            max_access_duration: cfg.approvals.max_access_duration,
            admin_groups: cfg.file.server.admin_groups.clone(),
        }
    }
}

/// Which requests to list. Every field narrows; `None` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalFilter {
    pub status: Option<ApprovalStatus>,
    pub connection: Option<String>,
    /// The requester.
    pub identity: Option<String>,
    pub kind: Option<SubjectKind>,
    /// Capped at [`MAX_LIST_LIMIT`]; [`DEFAULT_LIST_LIMIT`] when absent.
    pub limit: Option<u32>,
}

/// A request as stored: the request itself plus when things happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    #[serde(flatten)]
    pub request: ApprovalRequest,
    /// When it left `pending` (decided, expired or withdrawn).
    pub decided_at_us: Option<i64>,
    /// When an approved command was released (claimed).
    pub executed_at_us: Option<i64>,
    /// Access requests once approved: the grant runs until then
    /// (the approval time plus the requested duration).
    pub grant_until_us: Option<i64>,
    pub revoked_at_us: Option<i64>,
    pub revoked_by: Option<String>,
}

impl ApprovalRecord {
    pub fn kind(&self) -> SubjectKind {
        db::subject_kind(&self.request.subject)
    }

    /// The rejection that decided it, if one did.
    pub fn rejection(&self) -> Option<&ReviewDecision> {
        self.request
            .decisions
            .iter()
            .find(|d| d.decision == DecisionKind::Reject)
    }
}

/// Where a just-in-time access request or grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantState {
    /// Awaiting reviewers.
    Pending,
    /// Approved and running.
    Active,
    /// Approved, and its time is up.
    Ended,
    /// Approved, then ended early.
    Revoked,
    Rejected,
    /// Nobody decided in time.
    Expired,
    Withdrawn,
}

impl GrantState {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantState::Pending => "pending",
            GrantState::Active => "active",
            GrantState::Ended => "ended",
            GrantState::Revoked => "revoked",
            GrantState::Rejected => "rejected",
            GrantState::Expired => "expired",
            GrantState::Withdrawn => "withdrawn",
        }
    }
}

/// A just-in-time access request and the grant it became, as the API lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: Uuid,
    pub identity: String,
    pub connection: String,
    pub reason: String,
    pub duration_secs: u64,
    pub state: GrantState,
    pub requested_at_us: i64,
    /// Until when reviewers may decide the request.
    pub expires_at_us: i64,
    pub approved_at_us: Option<i64>,
    pub until_us: Option<i64>,
    pub revoked_at_us: Option<i64>,
    pub revoked_by: Option<String>,
    pub reviewers: Vec<String>,
    pub min_approvals: u32,
    pub decisions: Vec<ReviewDecision>,
}

impl Grant {
    /// The grant view of an access record; `None` for held commands.
    pub fn from_record(r: &ApprovalRecord, now_us: i64) -> Option<Grant> {
        let ApprovalSubject::Access {
            duration_secs,
            reason,
        } = &r.request.subject
        else {
            return None;
        };
        let state = match r.request.status {
            ApprovalStatus::Pending => GrantState::Pending,
            ApprovalStatus::Approved | ApprovalStatus::Executed => {
                if r.revoked_at_us.is_some() {
                    GrantState::Revoked
                } else if r.grant_until_us.is_some_and(|u| u > now_us) {
                    GrantState::Active
                } else {
                    GrantState::Ended
                }
            }
            ApprovalStatus::Rejected => GrantState::Rejected,
            ApprovalStatus::Expired => GrantState::Expired,
            ApprovalStatus::Withdrawn => GrantState::Withdrawn,
        };
        let approved = matches!(
            r.request.status,
            ApprovalStatus::Approved | ApprovalStatus::Executed
        );
        Some(Grant {
            id: r.request.id,
            identity: r.request.requester.clone(),
            connection: r.request.connection.clone(),
            reason: reason.clone(),
            duration_secs: *duration_secs,
            state,
            requested_at_us: r.request.created_at_us,
            expires_at_us: r.request.expires_at_us,
            approved_at_us: if approved { r.decided_at_us } else { None },
            until_us: r.grant_until_us,
            revoked_at_us: r.revoked_at_us,
            revoked_by: r.revoked_by.clone(),
            reviewers: r.request.reviewers.clone(),
            min_approvals: r.request.min_approvals,
            decisions: r.request.decisions.clone(),
        })
    }
}

/// What happened to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalEventKind {
    Created,
    /// One reviewer decided; `decision` says how, the request its new status.
    Decided,
    Approved,
    Rejected,
    Expired,
    Withdrawn,
    /// An approved command was released to its target.
    Executed,
    /// A running grant was ended early.
    Revoked,
    /// A grant ran out.
    GrantExpired,
}

impl ApprovalEventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalEventKind::Created => "created",
            ApprovalEventKind::Decided => "decided",
            ApprovalEventKind::Approved => "approved",
            ApprovalEventKind::Rejected => "rejected",
            ApprovalEventKind::Expired => "expired",
            ApprovalEventKind::Withdrawn => "withdrawn",
            ApprovalEventKind::Executed => "executed",
            ApprovalEventKind::Revoked => "revoked",
            ApprovalEventKind::GrantExpired => "grant_expired",
        }
    }
}

/// One lifecycle event, as broadcast to subscribers and streamed by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalEvent {
    pub event: ApprovalEventKind,
    pub at_us: i64,
    /// The request as it stands after the event.
    pub request: ApprovalRecord,
    /// The reviewer's decision, for `decided`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<ReviewDecision>,
    /// Who revoked or withdrew, when someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// Whether `viewer` may see `request` without being an admin or auditor: it
/// is theirs, or they could decide it (a human in one of its reviewer
/// groups, or any human when it names none).
pub fn may_see(request: &ApprovalRequest, viewer: &Identity) -> bool {
    request.requester == viewer.name
        || (viewer.kind == IdentityKind::Human
            && (request.reviewers.is_empty()
                || request.reviewers.iter().any(|g| viewer.in_group(g))))
}

/// What a timer does when its deadline comes.
#[derive(Debug, Clone, Copy)]
enum Deadline {
    /// A pending request expires.
    Expire,
    /// A grant runs out.
    GrantEnd,
}

/// Handle to the broker; clones share it.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    pool: SqlitePool,
    audit: Arc<dyn AuditSink>,
    settings: BrokerSettings,
    /// `None` once closed: subscribers then see the stream end.
    events: Mutex<Option<broadcast::Sender<ApprovalEvent>>>,
    /// Per request, woken on every state change; waiting sessions sleep on it.
    wakers: Mutex<HashMap<Uuid, watch::Sender<()>>>,
    grants: RwLock<Grants>,
    /// At most one timer per request: its expiry, then its grant's end.
    timers: Mutex<HashMap<Uuid, AbortHandle>>,
    /// Where timers run: the runtime the broker was opened on, not the
    /// session thread that happened to create the request (it stops with
    /// its sessions).
    runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(timers) = self.timers.get_mut() {
            for (_, t) in timers.drain() {
                t.abort();
            }
        }
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Opens the broker on the store's file (whose schema `Store::open` has
    /// migrated), records lifecycle events into the store's audit chains,
    /// and restores state: held commands of a previous run are withdrawn
    /// (their sessions are gone), pending access requests get their expiry
    /// timers back, and running grants are loaded.
    pub async fn open(store: &Store, settings: BrokerSettings) -> Result<Broker, StoreError> {
        // Decisions are as durable as the audit journal, no more: with
        // `sync = "normal"` they survive an Airlock crash, not a power cut.
        let synchronous = match store.sync_mode() {
            crate::store::SyncMode::Full => sqlx::sqlite::SqliteSynchronous::Full,
            crate::store::SyncMode::Normal => sqlx::sqlite::SqliteSynchronous::Normal,
        };
        let options = SqliteConnectOptions::new()
            .filename(store.path())
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(synchronous);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_SIZE)
            .connect_with(options)
            .await?;
        let audit: Arc<dyn AuditSink> = Arc::new(store.clone());
        Self::start(pool, audit, settings).await
    }

    async fn start(
        pool: SqlitePool,
        audit: Arc<dyn AuditSink>,
        settings: BrokerSettings,
    ) -> Result<Broker, StoreError> {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let broker = Broker {
            inner: Arc::new(Inner {
                pool,
                audit,
                settings,
                events: Mutex::new(Some(events)),
                wakers: Mutex::new(HashMap::new()),
                grants: RwLock::new(Grants::default()),
                timers: Mutex::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        let now = now_us();
        let mut conn = broker.inner.pool.acquire().await?;
        for (id, status) in db::orphaned_commands(&mut conn).await? {
            if db::transition(&mut conn, id, status, ApprovalStatus::Withdrawn, now, None).await? {
                tracing::info!(request = %id, "withdrew a held command left by a previous run");
                broker
                    .finish(id, &[ApprovalEventKind::Withdrawn], None, None)
                    .await;
            }
        }
        for (id, expires_us) in db::pending_access(&mut conn).await? {
            broker.schedule(id, expires_us, Deadline::Expire);
        }
        let running = db::active_grants(&mut conn, now).await?;
        drop(conn);
        for (id, identity, connection, until) in running {
            broker
                .write_grants()
                .insert(id, &identity, &connection, until);
            broker.schedule(id, until, Deadline::GrantEnd);
        }
        Ok(broker)
    }

    pub fn settings(&self) -> &BrokerSettings {
        &self.inner.settings
    }

    /// Every lifecycle event from now on (an ended stream after [`close`]).
    ///
    /// [`close`]: Broker::close
    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalEvent> {
        match self.lock_events().as_ref() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    /// Ends the event stream for every subscriber (the API's event streams,
    /// the notifier), so a graceful shutdown need not wait for clients that
    /// follow it. Decisions still work; they are just not announced.
    pub fn close(&self) {
        self.lock_events().take();
    }

    fn lock_events(&self) -> std::sync::MutexGuard<'_, Option<broadcast::Sender<ApprovalEvent>>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        self.inner
            .settings
            .admin_groups
            .iter()
            .any(|g| who.in_group(g))
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<ApprovalRecord>, ApprovalError> {
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        db::load(&mut conn, id).await.map_err(unavailable)
    }

    /// Requests matching `filter`, newest first; with a `viewer`, only those
    /// [`may_see`] allows (admins and auditors pass `None`).
    pub async fn list(
        &self,
        filter: &ApprovalFilter,
        viewer: Option<&Identity>,
    ) -> Result<Vec<ApprovalRecord>, ApprovalError> {
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        db::list(&mut conn, filter, viewer)
            .await
            .map_err(unavailable)
    }

    /// Ids starting with `prefix` that `viewer` may see (all with `None`).
    pub async fn find_ids(
        &self,
        prefix: &str,
        viewer: Option<&Identity>,
        limit: u32,
    ) -> Result<Vec<Uuid>, ApprovalError> {
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        db::find_ids(&mut conn, prefix, viewer, limit)
            .await
            .map_err(unavailable)
    }

    /// Persists a new pending request, starts its expiry timer and announces
    /// it. A held command's request is first recorded in its session's
    /// audit chain; if that fails nothing is created (fail closed).
    pub async fn create(
        &self,
        mut request: ApprovalRequest,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let now = now_us();
        request.status = ApprovalStatus::Pending;
        request.decisions.clear();
        request.min_approvals = request.min_approvals.max(1);
        if request.created_at_us <= 0 {
            request.created_at_us = now;
        }
        if request.expires_at_us <= request.created_at_us {
            request.expires_at_us =
                request.created_at_us + duration_us(self.inner.settings.pending_ttl);
        }
        if let ApprovalSubject::Command {
            session_id, seq, ..
        } = &request.subject
        {
            let body = EventBody::ApprovalRequested {
                request_id: request.id,
                seq: *seq,
                reviewers: request.reviewers.clone(),
                min_approvals: request.min_approvals,
                expires_at_us: request.expires_at_us,
            };
            self.inner
                .audit
                .append(AuditEvent::now(*session_id, body))
                .await
                .map_err(|e| ApprovalError::Unavailable(e.to_string()))?;
        }
        let id = request.id;
        // The waker exists before the row, so a session that starts waiting
        // right after `submit` cannot miss the first decision.
        drop(self.waker(id));
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        if let Err(e) = db::insert(&mut conn, &request).await {
            self.forget_waker(id);
            if let sqlx::Error::Database(db) = &e
                && db.is_unique_violation()
            {
                return Err(ApprovalError::NotAllowed(format!(
                    "approval request {id} already exists"
                )));
            }
            return Err(unavailable(e));
        }
        drop(conn);
        self.schedule(id, request.expires_at_us, Deadline::Expire);
        let record = ApprovalRecord {
            request,
            decided_at_us: None,
            executed_at_us: None,
            grant_until_us: None,
            revoked_at_us: None,
            revoked_by: None,
        };
        self.emit(ApprovalEventKind::Created, record.clone(), None, None);
        Ok(record)
    }

    /// Asks for time-bound access to `connection`. Once approved, the grant
    /// runs from the approval (not from now) for `duration`.
    pub async fn request_access(
        &self,
        requester: &Identity,
        connection: &str,
        duration: Duration,
        reason: String,
        reviewers: Vec<String>,
        min_approvals: u32,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let max = self.inner.settings.max_access_duration;
        if duration < Duration::from_secs(1) {
            return Err(ApprovalError::NotAllowed(
                "access must be asked for at least 1s".into(),
            ));
        }
        if duration > max {
            return Err(ApprovalError::NotAllowed(format!(
                "access can be asked for at most {}",
                humantime::format_duration(max)
            )));
        }
        let reason = reason.trim().to_owned();
        if reason.is_empty() {
            return Err(ApprovalError::NotAllowed(
                "an access request needs a reason".into(),
            ));
        }
        if connection.trim().is_empty() {
            return Err(ApprovalError::NotAllowed(
                "an access request needs a connection".into(),
            ));
        }
        let now = now_us();
        let request = ApprovalRequest {
            // Random (v4), not time-ordered: people type the first characters.
            id: Uuid::new_v4(),
            requester: requester.name.clone(),
            requester_kind: requester.kind,
            connection: connection.to_owned(),
            subject: ApprovalSubject::Access {
                duration_secs: duration.as_secs(),
                reason: reason.clone(),
            },
            policies: Vec::new(),
            reason: Some(reason),
            reviewers,
            min_approvals: min_approvals.max(1),
            created_at_us: now,
            expires_at_us: now + duration_us(self.inner.settings.pending_ttl),
            status: ApprovalStatus::Pending,
            decisions: Vec::new(),
        };
        Ok(self.create(request).await?.request)
    }

    /// One reviewer's decision. The rules ([`check_reviewer`], [`tally`]) are
    /// applied to the row as re-read inside a `BEGIN IMMEDIATE` transaction,
    /// so concurrent reviewers are judged one after the other on fresh state.
    pub async fn decide(
        &self,
        id: Uuid,
        reviewer: &Identity,
        decision: DecisionKind,
        comment: Option<String>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let now = now_us();
        let comment = comment
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty());
        let mut tx = self.begin().await?;
        let Some(record) = db::load(&mut tx, id).await.map_err(unavailable)? else {
            return Err(ApprovalError::NotFound(id));
        };
        let mut request = record.request;
        if request.status == ApprovalStatus::Pending && now >= request.expires_at_us {
            // The timer has not fired yet, but the deadline has passed.
            let expired = db::transition(
                &mut tx,
                id,
                ApprovalStatus::Pending,
                ApprovalStatus::Expired,
                now,
                None,
            )
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            if expired {
                self.finish(id, &[ApprovalEventKind::Expired], None, None)
                    .await;
            }
            return Err(ApprovalError::NotPending(ApprovalStatus::Expired.as_str()));
        }
        check_reviewer(&request, reviewer)?;
        let d = ReviewDecision {
            reviewer: reviewer.name.clone(),
            decision,
            comment,
            at_us: now,
        };
        db::insert_decision(&mut tx, id, &d)
            .await
            .map_err(unavailable)?;
        request.decisions.push(d.clone());
        let status = tally(&request);
        if status != ApprovalStatus::Pending {
            let grant_until = match (&request.subject, status) {
                (ApprovalSubject::Access { duration_secs, .. }, ApprovalStatus::Approved) => {
                    Some(now.saturating_add(secs_us(*duration_secs)))
                }
                _ => None,
            };
            let moved = db::transition(
                &mut tx,
                id,
                ApprovalStatus::Pending,
                status,
                now,
                grant_until,
            )
            .await
            .map_err(unavailable)?;
            if !moved {
                // Unreachable under the write lock, but never count a
                // decision on a request that is no longer pending.
                return Err(ApprovalError::NotPending("no longer pending"));
            }
        }
        tx.commit().await.map_err(unavailable)?;
        request.status = status;

        let mut kinds = vec![ApprovalEventKind::Decided];
        match status {
            ApprovalStatus::Approved => kinds.push(ApprovalEventKind::Approved),
            ApprovalStatus::Rejected => kinds.push(ApprovalEventKind::Rejected),
            _ => {}
        }
        if let Some(record) = self.finish(id, &kinds, Some(d), None).await
            && status == ApprovalStatus::Approved
            && let (SubjectKind::Access, Some(until)) = (record.kind(), record.grant_until_us)
        {
            self.write_grants().insert(
                id,
                &record.request.requester,
                &record.request.connection,
                until,
            );
            self.schedule(id, until, Deadline::GrantEnd);
        }
        Ok(request)
    }

    /// Ends a running grant early (admins, or the grantee); a still-pending
    /// access request is withdrawn instead.
    pub async fn revoke_grant(
        &self,
        id: Uuid,
        by: &Identity,
    ) -> Result<ApprovalRecord, ApprovalError> {
        let now = now_us();
        let mut tx = self.begin().await?;
        let Some(record) = db::load(&mut tx, id).await.map_err(unavailable)? else {
            return Err(ApprovalError::NotFound(id));
        };
        if record.kind() != SubjectKind::Access {
            return Err(ApprovalError::NotAllowed(
                "this is a held command, not an access grant; reject it instead".into(),
            ));
        }
        if !self.is_admin(by) && by.name != record.request.requester {
            return Err(ApprovalError::NotAllowed(format!(
                "only admins or the grantee ({}) can revoke this grant",
                record.request.requester
            )));
        }
        let kind = match record.request.status {
            ApprovalStatus::Pending => {
                let moved = db::transition(
                    &mut tx,
                    id,
                    ApprovalStatus::Pending,
                    ApprovalStatus::Withdrawn,
                    now,
                    None,
                )
                .await
                .map_err(unavailable)?;
                if !moved {
                    return Err(ApprovalError::NotPending("no longer pending"));
                }
                ApprovalEventKind::Withdrawn
            }
            ApprovalStatus::Approved => {
                if !db::revoke(&mut tx, id, &by.name, now)
                    .await
                    .map_err(unavailable)?
                {
                    let state = if record.revoked_at_us.is_some() {
                        "revoked"
                    } else {
                        "ended"
                    };
                    return Err(ApprovalError::NotPending(state));
                }
                ApprovalEventKind::Revoked
            }
            other => return Err(ApprovalError::NotPending(other.as_str())),
        };
        tx.commit().await.map_err(unavailable)?;
        self.write_grants().remove(id);
        self.unschedule(id);
        self.finish(id, &[kind], None, Some(by.name.clone()))
            .await
            .ok_or_else(|| ApprovalError::Unavailable("cannot read the request back".into()))
    }

    /// Withdraws a request nobody has used: still pending, or an approved
    /// command not yet released (its session went away before the claim).
    /// True if this call withdrew it.
    pub async fn withdraw_request(&self, id: Uuid) -> Result<bool, ApprovalError> {
        let now = now_us();
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        let mut done = db::transition(
            &mut conn,
            id,
            ApprovalStatus::Pending,
            ApprovalStatus::Withdrawn,
            now,
            None,
        )
        .await
        .map_err(unavailable)?;
        if !done {
            // `claim` requires claimed = 0 and status 'approved', so this
            // and a concurrent claim cannot both succeed.
            let r = sqlx::query(
                "UPDATE approvals SET status = 'withdrawn' WHERE id = ? AND status = 'approved' \
                 AND claimed = 0 AND kind = 'command'",
            )
            .bind(id.hyphenated().to_string())
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
            done = r.rows_affected() == 1;
        }
        drop(conn);
        if done {
            self.finish(id, &[ApprovalEventKind::Withdrawn], None, None)
                .await;
        }
        Ok(done)
    }

    /// Waits for the request to be decided; see [`ApprovalBroker::wait`].
    pub async fn wait_for(&self, id: Uuid) -> Resolution {
        let resolution = self.wait_loop(id).await;
        self.forget_idle_waker(id);
        resolution
    }

    async fn wait_loop(&self, id: Uuid) -> Resolution {
        let mut woken = self.waker(id);
        loop {
            // Subscribed before reading, so a change between the read and
            // the sleep is still seen.
            let record = match self.get(id).await {
                Ok(Some(r)) => r,
                Ok(None) => return Resolution::Failed(format!("approval request {id} not found")),
                Err(e) => return Resolution::Failed(e.to_string()),
            };
            match record.request.status {
                ApprovalStatus::Pending => {
                    if now_us() >= record.request.expires_at_us {
                        self.expire(id).await;
                        continue;
                    }
                    if woken.changed().await.is_err() {
                        woken = self.waker(id);
                    }
                }
                ApprovalStatus::Approved => {
                    if record.kind() == SubjectKind::Access {
                        return Resolution::Released;
                    }
                    match self.claim(id).await {
                        Ok(true) => return Resolution::Released,
                        // Someone else claimed or withdrew it: read again.
                        Ok(false) => continue,
                        Err(e) => return Resolution::Failed(e.to_string()),
                    }
                }
                ApprovalStatus::Rejected => {
                    let (by, comment) = record
                        .rejection()
                        .map(|d| (d.reviewer.clone(), d.comment.clone()))
                        .unwrap_or_default();
                    return Resolution::Rejected { by, comment };
                }
                ApprovalStatus::Expired => return Resolution::Expired,
                ApprovalStatus::Withdrawn => return Resolution::Withdrawn,
                ApprovalStatus::Executed => {
                    return Resolution::Failed(
                        "the approval was already used; an approval releases once".into(),
                    );
                }
            }
        }
    }

    /// The single-use claim, then its audit record. If the record cannot be
    /// written the command is not released (fail closed).
    async fn claim(&self, id: Uuid) -> Result<bool, ApprovalError> {
        let mut conn = self.inner.pool.acquire().await.map_err(unavailable)?;
        let claimed = db::claim(&mut conn, id, now_us())
            .await
            .map_err(unavailable)?;
        drop(conn);
        if !claimed {
            return Ok(false);
        }
        let record = self
            .finish(id, &[ApprovalEventKind::Executed], None, None)
            .await;
        match record {
            Some(r) => match self.audit(&r, None).await {
                Ok(()) => Ok(true),
                Err(e) => Err(e),
            },
            None => Err(ApprovalError::Unavailable(
                "cannot read the request back".into(),
            )),
        }
    }

    async fn expire(&self, id: Uuid) {
        let mut conn = match self.inner.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(request = %id, error = %e, "cannot expire an approval request");
                return;
            }
        };
        match db::transition(
            &mut conn,
            id,
            ApprovalStatus::Pending,
            ApprovalStatus::Expired,
            now_us(),
            None,
        )
        .await
        {
            Ok(true) => {
                drop(conn);
                self.finish(id, &[ApprovalEventKind::Expired], None, None)
                    .await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(request = %id, error = %e, "cannot expire an approval request")
            }
        }
    }

    async fn end_grant(&self, id: Uuid) {
        self.write_grants().remove(id);
        match self.get(id).await {
            Ok(Some(record)) if record.revoked_at_us.is_none() => {
                self.emit(ApprovalEventKind::GrantExpired, record, None, None);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(request = %id, error = %e, "cannot read an ended grant"),
        }
    }

    /// After a committed change: reads the request back, announces it,
    /// records it in the session's audit chain (held commands), wakes
    /// waiters and drops timers it no longer needs.
    async fn finish(
        &self,
        id: Uuid,
        kinds: &[ApprovalEventKind],
        decision: Option<ReviewDecision>,
        by: Option<String>,
    ) -> Option<ApprovalRecord> {
        let record = match self.get(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(request = %id, error = %e, "cannot read an approval request back");
                // Waiters re-read and will see the change, or fail closed.
                self.wake(id, false);
                return None;
            }
        };
        let status = record.request.status;
        let done = status.is_final()
            || (status == ApprovalStatus::Approved && record.kind() == SubjectKind::Access);
        if status != ApprovalStatus::Pending {
            // Decided one way or another: the expiry no longer applies (an
            // approved grant's end is scheduled by `decide` afterwards).
            self.unschedule(id);
        }
        // The executed record is written by `claim`, which waits for it.
        if !kinds.contains(&ApprovalEventKind::Executed)
            && let Err(e) = self.audit(&record, decision.as_ref()).await
        {
            tracing::error!(request = %id, error = %e, "cannot record an approval decision in the audit log");
        }
        for kind in kinds {
            let d = (*kind == ApprovalEventKind::Decided)
                .then(|| decision.clone())
                .flatten();
            self.emit(*kind, record.clone(), d, by.clone());
        }
        self.wake(id, done);
        Some(record)
    }

    /// Appends `approval_decided` to a held command's session chain.
    async fn audit(
        &self,
        record: &ApprovalRecord,
        decision: Option<&ReviewDecision>,
    ) -> Result<(), ApprovalError> {
        let ApprovalSubject::Command { session_id, .. } = &record.request.subject else {
            return Ok(());
        };
        let body = EventBody::ApprovalDecided {
            request_id: record.request.id,
            status: record.request.status.as_str().to_owned(),
            reviewer: decision.map(|d| d.reviewer.clone()),
            decision: decision.map(|d| {
                match d.decision {
                    DecisionKind::Approve => "approve",
                    DecisionKind::Reject => "reject",
                }
                .to_owned()
            }),
            comment: decision.and_then(|d| d.comment.clone()),
        };
        self.inner
            .audit
            .append(AuditEvent::now(*session_id, body))
            .await
            .map_err(|e| ApprovalError::Unavailable(e.to_string()))
    }

    fn emit(
        &self,
        kind: ApprovalEventKind,
        request: ApprovalRecord,
        decision: Option<ReviewDecision>,
        by: Option<String>,
    ) {
        let events = self.lock_events();
        let Some(tx) = events.as_ref() else {
            return;
        };
        // No subscribers is fine: nobody is listening.
        let _ = tx.send(ApprovalEvent {
            event: kind,
            at_us: now_us(),
            request,
            decision,
            by,
        });
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>, ApprovalError> {
        // IMMEDIATE takes the write lock before the read, so two reviewers
        // deciding at once are serialised on fresh rows.
        self.inner
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(unavailable)
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, watch::Sender<()>>> {
        // A poisoned lock only means another thread panicked mid-insert;
        // the map itself is still usable.
        self.inner
            .wakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_timers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, AbortHandle>> {
        self.inner
            .timers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_grants(&self) -> std::sync::RwLockWriteGuard<'_, Grants> {
        self.inner
            .grants
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn waker(&self, id: Uuid) -> watch::Receiver<()> {
        self.lock_wakers()
            .entry(id)
            .or_insert_with(|| watch::channel(()).0)
            .subscribe()
    }

    fn wake(&self, id: Uuid, done: bool) {
        let mut wakers = self.lock_wakers();
        if let Some(tx) = wakers.get(&id) {
            tx.send_replace(());
        }
        if done {
            wakers.remove(&id);
        }
    }

    fn forget_waker(&self, id: Uuid) {
        self.lock_wakers().remove(&id);
    }

    /// Drops the waker of a request nobody waits on any more, so waits on
    /// finished requests leave nothing behind.
    fn forget_idle_waker(&self, id: Uuid) {
        let mut wakers = self.lock_wakers();
        if wakers.get(&id).is_some_and(|tx| tx.receiver_count() == 0) {
            wakers.remove(&id);
        }
    }

    fn schedule(&self, id: Uuid, at_us: i64, what: Deadline) {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wait = Duration::from_micros(u64::try_from(at_us - now_us()).unwrap_or(0));
        let deadline = tokio::time::Instant::now() + wait;
        let task = self.inner.runtime.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let broker = Broker { inner };
            // Fired: take this timer out of the map first, so the work below
            // (whose `finish` unschedules the request) cannot abort itself.
            broker.disarm_current(id);
            match what {
                Deadline::Expire => broker.expire(id).await,
                Deadline::GrantEnd => broker.end_grant(id).await,
            }
        });
        if let Some(old) = self.lock_timers().insert(id, task.abort_handle()) {
            old.abort();
        }
    }

    fn disarm_current(&self, id: Uuid) {
        let me = tokio::task::id();
        let mut timers = self.lock_timers();
        if timers.get(&id).is_some_and(|t| t.id() == me) {
            timers.remove(&id);
        }
    }

    fn unschedule(&self, id: Uuid) {
        if let Some(t) = self.lock_timers().remove(&id) {
            t.abort();
        }
    }
}

fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn secs_us(secs: u64) -> i64 {
    i64::try_from(secs)
        .unwrap_or(i64::MAX / 1_000_000)
        .saturating_mul(1_000_000)
}

impl ApprovalBroker for Broker {
    fn submit(&self, request: ApprovalRequest) -> BoxFut<'_, Result<(), ApprovalError>> {
        Box::pin(async move { self.create(request).await.map(|_| ()) })
    }

    fn wait(&self, id: Uuid) -> BoxFut<'_, Resolution> {
        Box::pin(self.wait_for(id))
    }

    fn withdraw(&self, id: Uuid) -> BoxFut<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.withdraw_request(id).await {
                tracing::error!(request = %id, error = %e, "cannot withdraw an approval request");
            }
        })
    }

    fn has_grant(&self, identity: &str, connection: &str) -> bool {
        self.inner
            .grants
            .read()
            .map(|g| g.has(identity, connection, now_us()))
            // A poisoned map cannot be trusted to say yes: no grant.
            .unwrap_or(false)
    }
}
