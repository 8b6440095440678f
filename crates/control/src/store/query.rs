//! Reads: session listings, one session's timeline, and chain verification.
//!
//! All reads go through the read-only pool, never the writer's connection,
//! so they cannot delay a commit (WAL lets them proceed alongside it).

use std::collections::HashMap;

use airlock_pipeline::record::EventBody;
use futures::TryStreamExt;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::chain::{ChainInput, GENESIS, event_hash};
use super::types::{
    CommandEntry, CommandOutcome, DEFAULT_LIST_LIMIT, EventEntry, MAX_LIST_LIMIT, Problem,
    SessionDetail, SessionFilter, SessionStatus, SessionSummary, VerifyReport,
};
use super::{Store, StoreError};

const SUMMARY_COLUMNS: &str = "session_id, identity, identity_kind, connection, protocol, \
     client_addr, application_name, tls, started_us, ended_us, bytes_from_client, \
     bytes_to_client, commands, denied, failed, status, end_reason";

fn count(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn summary_from_row(row: &SqliteRow) -> Result<SessionSummary, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(SessionSummary {
        id: row.try_get("session_id")?,
        identity: row.try_get("identity")?,
        identity_kind: row.try_get("identity_kind")?,
        connection: row.try_get("connection")?,
        protocol: row.try_get("protocol")?,
        client_addr: row.try_get("client_addr")?,
        application_name: row.try_get("application_name")?,
        tls: row.try_get("tls")?,
        started_at_us: row.try_get("started_us")?,
        ended_at_us: row.try_get("ended_us")?,
        bytes_from_client: count(row.try_get("bytes_from_client")?),
        bytes_to_client: count(row.try_get("bytes_to_client")?),
        commands: count(row.try_get("commands")?),
        denied: count(row.try_get("denied")?),
        failed: row.try_get("failed")?,
        status: SessionStatus::from_column(&status),
        end_reason: row.try_get("end_reason")?,
    })
}

/// One stored event row.
struct EventRow {
    seq: i64,
    at_us: i64,
    kind: String,
    body: String,
}

/// Where the walk over one session's chain has got to.
struct Walk {
    session_id: String,
    last_seq: i64,
    last_hash: String,
}

impl Store {
    /// Sessions matching `filter`, newest first.
    pub async fn list_sessions(
        &self,
        filter: &SessionFilter,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        self.caught_up().await?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "SELECT {SUMMARY_COLUMNS} FROM sessions WHERE 1 = 1"
        ));
        if let Some(identity) = &filter.identity {
            qb.push(" AND identity = ").push_bind(identity.clone());
        }
        if let Some(connection) = &filter.connection {
            qb.push(" AND connection = ").push_bind(connection.clone());
        }
        if let Some(since) = filter.since_us {
            qb.push(" AND started_us >= ").push_bind(since);
        }
        if filter.failed_only {
            qb.push(" AND failed = 1");
        }
        let limit = filter
            .limit
            .unwrap_or(DEFAULT_LIST_LIMIT)
            .clamp(1, MAX_LIST_LIMIT);
        qb.push(" ORDER BY started_us DESC, session_id DESC LIMIT ")
            .push_bind(i64::from(limit));
        let rows = qb.build().fetch_all(self.pool()).await?;
        Ok(rows
            .iter()
            .map(summary_from_row)
            .collect::<Result<_, _>>()?)
    }

    /// Ids of sessions whose id starts with `prefix` (lower-cased), at most
    /// `limit`, optionally only those of `identity`. Lets people type the
    /// short ids the CLI shows.
    pub async fn find_session_ids(
        &self,
        prefix: &str,
        identity: Option<&str>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        self.caught_up().await?;
        let low = prefix.to_ascii_lowercase();
        // A range on the primary key instead of LIKE: no wildcard escaping,
        // and the index is used. Session ids are ASCII, all below DEL.
        let high = format!("{low}\u{7f}");
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("SELECT session_id FROM sessions WHERE session_id >= ");
        qb.push_bind(low).push(" AND session_id < ").push_bind(high);
        if let Some(identity) = identity {
            qb.push(" AND identity = ").push_bind(identity.to_owned());
        }
        qb.push(" ORDER BY session_id LIMIT ")
            .push_bind(i64::from(limit));
        let ids = qb
            .build_query_scalar::<String>()
            .fetch_all(self.pool())
            .await?;
        Ok(ids)
    }

    /// One session with its timeline, or `None` if it is not in the store.
    pub async fn get_session(&self, session_id: &str) -> Result<Option<SessionDetail>, StoreError> {
        self.caught_up().await?;
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {SUMMARY_COLUMNS} FROM sessions WHERE session_id = ?"
        ))
        .bind(session_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let summary = summary_from_row(&row)?;
        let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(
            "SELECT seq, at_us, kind, body FROM events WHERE session_id = ? ORDER BY seq",
        )
        .bind(session_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let rows = rows
            .into_iter()
            .map(|(seq, at_us, kind, body)| EventRow {
                seq,
                at_us,
                kind,
                body,
            })
            .collect();
        Ok(Some(timeline(summary, rows)))
    }

    /// Walks every session's chain and reports every problem found: altered
    /// events, broken links, missing events, and tails missing according to
    /// `session_heads`.
    pub async fn verify(&self) -> Result<VerifyReport, StoreError> {
        self.caught_up().await?;
        // One read transaction, so the heads and the events come from the
        // same snapshot even while the writer keeps committing.
        let mut tx = self.pool().begin().await?;
        let mut heads: HashMap<String, (i64, String)> = sqlx::query_as::<_, (String, i64, String)>(
            "SELECT session_id, last_seq, last_hash FROM session_heads",
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|(id, seq, hash)| (id, (seq, hash)))
        .collect();

        let mut report = VerifyReport::default();
        let mut walk: Option<Walk> = None;
        {
            // The (session_id, seq) unique index serves this order, so the
            // rows stream without a sort and memory stays flat.
            let mut rows = sqlx::query(
                "SELECT session_id, seq, at_us, kind, body, prev_hash, hash FROM events \
                 ORDER BY session_id, seq",
            )
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                let session_id: String = row.try_get("session_id")?;
                let seq: i64 = row.try_get("seq")?;
                let at_us: i64 = row.try_get("at_us")?;
                let kind: String = row.try_get("kind")?;
                let body: String = row.try_get("body")?;
                let prev_hash: String = row.try_get("prev_hash")?;
                let hash: String = row.try_get("hash")?;

                if walk.as_ref().is_none_or(|w| w.session_id != session_id) {
                    if let Some(done) = walk.take() {
                        finish(done, &mut heads, &mut report);
                    }
                    report.sessions += 1;
                    walk = Some(Walk {
                        session_id: session_id.clone(),
                        last_seq: 0,
                        last_hash: GENESIS.to_owned(),
                    });
                }
                let Some(w) = walk.as_mut() else {
                    continue;
                };
                report.events += 1;
                let problem = |seq: Option<i64>, problem: String| Problem {
                    session_id: session_id.clone(),
                    seq,
                    problem,
                };

                let recomputed = event_hash(&ChainInput {
                    prev_hash: &prev_hash,
                    session_id: &session_id,
                    seq,
                    at_us,
                    kind: &kind,
                    body: &body,
                });
                if recomputed != hash {
                    report.problems.push(problem(
                        Some(seq),
                        "event altered: its contents do not match its hash".into(),
                    ));
                }
                let expected = w.last_seq + 1;
                if seq > expected {
                    report
                        .problems
                        .push(problem(Some(expected), missing(expected, seq - 1)));
                } else if seq < expected {
                    report.problems.push(problem(
                        Some(seq),
                        format!("unexpected sequence number (expected {expected})"),
                    ));
                } else if prev_hash != w.last_hash {
                    // Only checked when no event is missing in between; a gap
                    // is reported once, as the gap.
                    report.problems.push(problem(
                        Some(seq),
                        "broken link: prev_hash does not match the previous event's hash".into(),
                    ));
                }
                w.last_seq = seq;
                w.last_hash = hash;
            }
        }
        if let Some(done) = walk.take() {
            finish(done, &mut heads, &mut report);
        }
        // Heads left over belong to sessions with no events left at all.
        let mut orphans: Vec<_> = heads.into_iter().collect();
        orphans.sort();
        for (session_id, (last_seq, _)) in orphans {
            report.sessions += 1;
            report.problems.push(Problem {
                session_id,
                seq: Some(1),
                problem: missing(1, last_seq),
            });
        }
        tx.commit().await?;
        Ok(report)
    }
}

fn missing(from: i64, to: i64) -> String {
    if from == to {
        format!("event {from} is missing")
    } else {
        format!("events {from} to {to} are missing")
    }
}

/// Compares the end of a walked chain with what `session_heads` recorded.
fn finish(walk: Walk, heads: &mut HashMap<String, (i64, String)>, report: &mut VerifyReport) {
    let problem = |seq: Option<i64>, problem: String| Problem {
        session_id: walk.session_id.clone(),
        seq,
        problem,
    };
    match heads.remove(&walk.session_id) {
        None => report.problems.push(problem(
            None,
            "no chain head in session_heads: the session's end cannot be checked".into(),
        )),
        Some((last_seq, last_hash)) => {
            if last_seq > walk.last_seq {
                let mut p = missing(walk.last_seq + 1, last_seq);
                p.push_str(" (truncated tail: session_heads records more events)");
                report.problems.push(problem(Some(walk.last_seq + 1), p));
            } else if last_seq < walk.last_seq {
                report.problems.push(problem(
                    Some(last_seq + 1),
                    format!("events past the recorded chain head (seq {last_seq})"),
                ));
            } else if last_hash != walk.last_hash {
                report.problems.push(problem(
                    Some(last_seq),
                    "the last event's hash does not match session_heads".into(),
                ));
            }
        }
    }
}

/// Splits a session's events into commands (joined with their results) and
/// everything else.
fn timeline(summary: SessionSummary, rows: Vec<EventRow>) -> SessionDetail {
    let mut commands: Vec<CommandEntry> = Vec::new();
    let mut by_command_seq: HashMap<u64, usize> = HashMap::new();
    let mut events = Vec::new();
    for row in rows {
        // A body that no longer parses (damaged by hand, or from a newer
        // writer) is still shown, as raw JSON or text, rather than hidden.
        match serde_json::from_str::<EventBody>(&row.body) {
            Ok(EventBody::Command {
                seq,
                text,
                params,
                via,
                classification,
                decision,
            }) => {
                by_command_seq.insert(seq, commands.len());
                commands.push(CommandEntry {
                    seq: row.seq,
                    command_seq: seq,
                    at_us: row.at_us,
                    text,
                    params,
                    via,
                    classification,
                    decision,
                    result: None,
                });
            }
            // A portal fetched with a row limit answers one command in
            // several steps (PortalSuspended, then CommandComplete): each
            // step is recorded as a result of that command, and the
            // timeline shows their sum.
            Ok(EventBody::CommandResult {
                seq,
                tags,
                rows,
                duration_us,
                error_code,
                error_message,
                masked,
            }) if by_command_seq.contains_key(&seq) => {
                let command = &mut commands[by_command_seq[&seq]];
                let step = CommandOutcome {
                    seq: row.seq,
                    at_us: row.at_us,
                    tags,
                    rows,
                    duration_us,
                    error_code,
                    error_message,
                    masked,
                    fetches: 1,
                };
                command.result = Some(match command.result.take() {
                    None => step,
                    Some(so_far) => so_far.then(step),
                });
            }
            _ => {
                let body =
                    serde_json::from_str(&row.body).unwrap_or(serde_json::Value::String(row.body));
                events.push(EventEntry {
                    seq: row.seq,
                    at_us: row.at_us,
                    kind: row.kind,
                    body,
                });
            }
        }
    }
    SessionDetail {
        summary,
        commands,
        events,
    }
}
