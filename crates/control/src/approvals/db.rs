//! The SQL behind the broker: approval rows to records and back, decisions,
//! and the guarded status changes that make every transition happen once.

use std::collections::HashMap;

use airlock_pipeline::approvals::{
    ApprovalRequest, ApprovalStatus, ApprovalSubject, DecisionKind, ReviewDecision,
};
use airlock_pipeline::model::{Identity, IdentityKind};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{ApprovalFilter, ApprovalRecord, DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT, SubjectKind};

const COLUMNS: &str = "id, status, request, expires_us, decided_us, claimed_us, \
     grant_until_us, revoked_us, revoked_by";

fn decode_err(what: &str, e: impl std::fmt::Display) -> sqlx::Error {
    sqlx::Error::Decode(format!("approvals: {what}: {e}").into())
}

/// `,a,b,` so that `instr(reviewers, ',a,')` matches one group exactly,
/// without LIKE's wildcards.
fn reviewers_column(groups: &[String]) -> String {
    let mut s = String::from(",");
    for g in groups {
        s.push_str(g);
        s.push(',');
    }
    s
}

pub(super) fn subject_kind(subject: &ApprovalSubject) -> SubjectKind {
    match subject {
        ApprovalSubject::Command { .. } => SubjectKind::Command,
        ApprovalSubject::Access { .. } => SubjectKind::Access,
    }
}

fn record_from_row(row: &SqliteRow) -> Result<ApprovalRecord, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let status: String = row.try_get("status")?;
    let json: String = row.try_get("request")?;
    let mut request: ApprovalRequest =
        serde_json::from_str(&json).map_err(|e| decode_err(&format!("request {id}"), e))?;
    request.status = ApprovalStatus::parse(&status)
        .ok_or_else(|| decode_err(&format!("request {id}"), format!("status {status:?}")))?;
    request.expires_at_us = row.try_get("expires_us")?;
    request.decisions.clear();
    Ok(ApprovalRecord {
        request,
        decided_at_us: row.try_get("decided_us")?,
        executed_at_us: row.try_get("claimed_us")?,
        grant_until_us: row.try_get("grant_until_us")?,
        revoked_at_us: row.try_get("revoked_us")?,
        revoked_by: row.try_get("revoked_by")?,
    })
}

/// Fills in each record's decisions, in the order they were given.
async fn attach_decisions(
    conn: &mut SqliteConnection,
    records: &mut [ApprovalRecord],
) -> Result<(), sqlx::Error> {
    if records.is_empty() {
        return Ok(());
    }
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
        "SELECT approval_id, reviewer, decision, comment, at_us FROM approval_decisions \
         WHERE approval_id IN (",
    );
    let mut ids = qb.separated(", ");
    for r in records.iter() {
        ids.push_bind(r.request.id.hyphenated().to_string());
    }
    qb.push(") ORDER BY at_us, rowid");
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let mut by_id: HashMap<String, Vec<ReviewDecision>> = HashMap::new();
    for row in rows {
        let id: String = row.try_get("approval_id")?;
        let decision: String = row.try_get("decision")?;
        let decision = match decision.as_str() {
            "approve" => DecisionKind::Approve,
            "reject" => DecisionKind::Reject,
            other => return Err(decode_err("decision", other)),
        };
        by_id.entry(id).or_default().push(ReviewDecision {
            reviewer: row.try_get("reviewer")?,
            decision,
            comment: row.try_get("comment")?,
            at_us: row.try_get("at_us")?,
        });
    }
    for r in records.iter_mut() {
        if let Some(d) = by_id.remove(&r.request.id.hyphenated().to_string()) {
            r.request.decisions = d;
        }
    }
    Ok(())
}

pub(super) async fn load(
    conn: &mut SqliteConnection,
    id: Uuid,
) -> Result<Option<ApprovalRecord>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM approvals WHERE id = ?"))
        .bind(id.hyphenated().to_string())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let mut records = [record_from_row(&row)?];
    attach_decisions(conn, &mut records).await?;
    let [record] = records;
    Ok(Some(record))
}

/// Who may see a request besides admins and auditors: its requester, and
/// anyone who could decide it (a human in one of its reviewer groups, or any
/// human when it names none).
pub(super) fn push_visibility(qb: &mut QueryBuilder<'_, Sqlite>, viewer: &Identity) {
    qb.push(" AND (requester = ").push_bind(viewer.name.clone());
    if viewer.kind == IdentityKind::Human {
        qb.push(" OR reviewers = ','");
        for g in &viewer.groups {
            qb.push(" OR instr(reviewers, ")
                .push_bind(format!(",{g},"))
                .push(") > 0");
        }
    }
    qb.push(")");
}

pub(super) async fn list(
    conn: &mut SqliteConnection,
    filter: &ApprovalFilter,
    viewer: Option<&Identity>,
) -> Result<Vec<ApprovalRecord>, sqlx::Error> {
    let mut qb: QueryBuilder<Sqlite> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM approvals WHERE 1 = 1"));
    if let Some(status) = filter.status {
        qb.push(" AND status = ").push_bind(status.as_str());
    }
    if let Some(connection) = &filter.connection {
        qb.push(" AND connection = ").push_bind(connection.clone());
    }
    if let Some(identity) = &filter.identity {
        qb.push(" AND requester = ").push_bind(identity.clone());
    }
    if let Some(kind) = filter.kind {
        qb.push(" AND kind = ").push_bind(kind.as_str());
    }
    if let Some(viewer) = viewer {
        push_visibility(&mut qb, viewer);
    }
    let limit = filter
        .limit
        .unwrap_or(DEFAULT_LIST_LIMIT)
        .clamp(1, MAX_LIST_LIMIT);
    qb.push(" ORDER BY created_us DESC, id DESC LIMIT ")
        .push_bind(i64::from(limit));
    let rows = qb.build().fetch_all(&mut *conn).await?;
    let mut records = rows
        .iter()
        .map(record_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    attach_decisions(conn, &mut records).await?;
    Ok(records)
}

/// Ids starting with `prefix` (lower-cased), at most `limit`, among those
/// `viewer` may see.
pub(super) async fn find_ids(
    conn: &mut SqliteConnection,
    prefix: &str,
    viewer: Option<&Identity>,
    limit: u32,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let low = prefix.to_ascii_lowercase();
    // A range on the primary key: no wildcard escaping, and the index is used.
    let high = format!("{low}\u{7f}");
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT id FROM approvals WHERE id >= ");
    qb.push_bind(low).push(" AND id < ").push_bind(high);
    if let Some(viewer) = viewer {
        push_visibility(&mut qb, viewer);
    }
    qb.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
    let ids: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
    ids.iter()
        .map(|s| Uuid::parse_str(s).map_err(|e| decode_err("id", e)))
        .collect()
}

pub(super) async fn insert(
    conn: &mut SqliteConnection,
    request: &ApprovalRequest,
) -> Result<(), sqlx::Error> {
    let subject = serde_json::to_string(&request.subject).map_err(|e| decode_err("subject", e))?;
    let json = serde_json::to_string(request).map_err(|e| decode_err("request", e))?;
    let session_id = match &request.subject {
        ApprovalSubject::Command { session_id, .. } => Some(session_id.hyphenated().to_string()),
        ApprovalSubject::Access { .. } => None,
    };
    sqlx::query(
        "INSERT INTO approvals (id, kind, status, requester, connection, session_id, reviewers, \
         min_approvals, subject, request, created_us, expires_us) \
         VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(request.id.hyphenated().to_string())
    .bind(subject_kind(&request.subject).as_str())
    .bind(&request.requester)
    .bind(&request.connection)
    .bind(session_id)
    .bind(reviewers_column(&request.reviewers))
    .bind(i64::from(request.min_approvals))
    .bind(subject)
    .bind(json)
    .bind(request.created_at_us)
    .bind(request.expires_at_us)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

pub(super) async fn insert_decision(
    conn: &mut SqliteConnection,
    id: Uuid,
    d: &ReviewDecision,
) -> Result<(), sqlx::Error> {
    let decision = match d.decision {
        DecisionKind::Approve => "approve",
        DecisionKind::Reject => "reject",
    };
    sqlx::query(
        "INSERT INTO approval_decisions (approval_id, reviewer, decision, comment, at_us) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(id.hyphenated().to_string())
    .bind(&d.reviewer)
    .bind(decision)
    .bind(&d.comment)
    .bind(d.at_us)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves a request from `from` to `to`; true if this call made the change.
pub(super) async fn transition(
    conn: &mut SqliteConnection,
    id: Uuid,
    from: ApprovalStatus,
    to: ApprovalStatus,
    at_us: i64,
    grant_until_us: Option<i64>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE approvals SET status = ?, decided_us = ?, grant_until_us = ? \
         WHERE id = ? AND status = ?",
    )
    .bind(to.as_str())
    .bind(at_us)
    .bind(grant_until_us)
    .bind(id.hyphenated().to_string())
    .bind(from.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The single-use claim of an approved command: true for exactly one caller.
pub(super) async fn claim(
    conn: &mut SqliteConnection,
    id: Uuid,
    at_us: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE approvals SET status = 'executed', claimed = 1, claimed_us = ? \
         WHERE id = ? AND status = 'approved' AND claimed = 0 AND kind = 'command'",
    )
    .bind(at_us)
    .bind(id.hyphenated().to_string())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends an active grant early; true if this call ended it.
pub(super) async fn revoke(
    conn: &mut SqliteConnection,
    id: Uuid,
    by: &str,
    at_us: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE approvals SET revoked_us = ?, revoked_by = ? \
         WHERE id = ? AND kind = 'access' AND status = 'approved' AND revoked_us IS NULL \
         AND grant_until_us > ?",
    )
    .bind(at_us)
    .bind(by)
    .bind(id.hyphenated().to_string())
    .bind(at_us)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Held commands a previous run of the gateway left behind: their sessions
/// died with it, so nothing can ever release them.
pub(super) async fn orphaned_commands(
    conn: &mut SqliteConnection,
) -> Result<Vec<(Uuid, ApprovalStatus)>, sqlx::Error> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT id, status FROM approvals WHERE kind = 'command' \
         AND (status = 'pending' OR (status = 'approved' AND claimed = 0))",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, status)| {
            let id = Uuid::parse_str(&id).map_err(|e| decode_err("id", e))?;
            let status =
                ApprovalStatus::parse(&status).ok_or_else(|| decode_err("status", &status))?;
            Ok((id, status))
        })
        .collect()
}

/// Pending access requests: `(id, expires_us)`.
pub(super) async fn pending_access(
    conn: &mut SqliteConnection,
) -> Result<Vec<(Uuid, i64)>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT id, expires_us FROM approvals WHERE kind = 'access' AND status = 'pending'",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, exp)| Ok((Uuid::parse_str(&id).map_err(|e| decode_err("id", e))?, exp)))
        .collect()
}

/// Grants still running at `now_us`: `(id, identity, connection, until_us)`.
pub(super) async fn active_grants(
    conn: &mut SqliteConnection,
    now_us: i64,
) -> Result<Vec<(Uuid, String, String, i64)>, sqlx::Error> {
    let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT id, requester, connection, grant_until_us FROM approvals \
         WHERE kind = 'access' AND status = 'approved' AND revoked_us IS NULL \
         AND grant_until_us > ?",
    )
    .bind(now_us)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(id, who, conn, until)| {
            Ok((
                Uuid::parse_str(&id).map_err(|e| decode_err("id", e))?,
                who,
                conn,
                until,
            ))
        })
        .collect()
}

/// One notification delivery attempt.
pub(crate) struct DeliveryRow<'a> {
    pub delivery_id: Uuid,
    pub approval_id: Uuid,
    pub event: &'a str,
    pub target: &'a str,
    pub attempt: u32,
    pub at_us: i64,
    pub ok: bool,
    pub status_code: Option<u16>,
    pub error: Option<&'a str>,
}

pub(crate) async fn insert_delivery(
    conn: &mut SqliteConnection,
    d: &DeliveryRow<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO notify_deliveries (delivery_id, approval_id, event, target, attempt, at_us, \
         ok, status_code, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(d.delivery_id.hyphenated().to_string())
    .bind(d.approval_id.hyphenated().to_string())
    .bind(d.event)
    .bind(d.target)
    .bind(i64::from(d.attempt))
    .bind(d.at_us)
    .bind(d.ok)
    .bind(d.status_code.map(i64::from))
    .bind(d.error)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
