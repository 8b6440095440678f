//! The one task that writes audit events: group commit, chain by chain.
//!
//! Appenders send an event and a oneshot over a channel. The writer takes the
//! first message, drains whatever else is already queued (up to `max_batch`),
//! writes the whole batch in one transaction and only then acknowledges every
//! sender, so one fsync covers many events. A failed batch is acknowledged
//! with an error for every event in it: the callers refuse their commands
//! rather than run them unrecorded.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use airlock_pipeline::model::Verdict;
use airlock_pipeline::record::{EventBody, RecordError};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::{mpsc, oneshot};

use super::chain::{ChainInput, GENESIS, event_hash};
use super::types::StoreStats;

/// Past this many cached chain heads the cache is dropped and refilled from
/// `session_heads` on demand; it only saves a read per session.
const MAX_CACHED_HEADS: usize = 100_000;

/// An event already serialised by the appender, so JSON work happens on the
/// caller's thread rather than in the single writer.
pub(crate) struct PendingEvent {
    pub session_id: String,
    pub at_us: i64,
    pub kind: &'static str,
    pub body_json: String,
    pub body: EventBody,
}

pub(crate) type Ack = oneshot::Sender<Result<(), RecordError>>;

pub(crate) enum WriterMsg {
    /// Boxed: an event is far larger than the other messages.
    Append(Box<PendingEvent>, Ack),
    /// Acknowledged once every event sent before it is committed (or refused).
    Flush(oneshot::Sender<()>),
    /// Stop accepting events, write everything already queued, then stop.
    Close(oneshot::Sender<()>),
}

/// The last event of a session's chain.
#[derive(Debug, Clone)]
struct Head {
    seq: i64,
    hash: String,
}

/// Writer counters shared with [`super::Store::stats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    events: AtomicU64,
    max_batch: AtomicU64,
    failed_batches: AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            batches: self.batches.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
        }
    }
}

/// Metric handles registered once when the writer starts, not per batch.
struct Metrics {
    batch_size: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    errors: metrics::Counter,
}

impl Metrics {
    fn register() -> Self {
        metrics::describe_histogram!(
            "airlock_store_batch_size",
            metrics::Unit::Count,
            "Audit events committed per store transaction"
        );
        metrics::describe_histogram!(
            "airlock_store_commit_seconds",
            metrics::Unit::Seconds,
            "Time to write and commit one batch of audit events"
        );
        metrics::describe_counter!(
            "airlock_store_errors_total",
            metrics::Unit::Count,
            "Audit batches that failed to commit (their commands were refused)"
        );
        Metrics {
            batch_size: metrics::histogram!("airlock_store_batch_size"),
            commit_seconds: metrics::histogram!("airlock_store_commit_seconds"),
            errors: metrics::counter!("airlock_store_errors_total"),
        }
    }
}

pub(crate) struct Writer {
    conn: SqliteConnection,
    rx: mpsc::UnboundedReceiver<WriterMsg>,
    max_batch: usize,
    heads: HashMap<String, Head>,
    stats: Arc<Stats>,
    metrics: Metrics,
}

impl Writer {
    pub fn new(
        conn: SqliteConnection,
        rx: mpsc::UnboundedReceiver<WriterMsg>,
        max_batch: usize,
        stats: Arc<Stats>,
    ) -> Self {
        Writer {
            conn,
            rx,
            max_batch: max_batch.max(1),
            heads: HashMap::new(),
            stats,
            metrics: Metrics::register(),
        }
    }

    pub async fn run(mut self) {
        let mut batch: Vec<(Box<PendingEvent>, Ack)> = Vec::with_capacity(self.max_batch);
        let mut flushed: Vec<oneshot::Sender<()>> = Vec::new();
        let mut closed: Vec<oneshot::Sender<()>> = Vec::new();
        // `recv` yields None once every sender is gone, or once the channel
        // was closed by a Close message and everything queued before the
        // close has been taken.
        while let Some(first) = self.rx.recv().await {
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append(ev, ack) => batch.push((ev, ack)),
                    WriterMsg::Flush(done) => flushed.push(done),
                    WriterMsg::Close(done) => {
                        self.rx.close();
                        closed.push(done);
                    }
                }
                if batch.len() < self.max_batch {
                    next = self.rx.try_recv().ok();
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch).await;
            }
            for done in flushed.drain(..) {
                let _ = done.send(());
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the audit writer connection failed");
        }
        for done in closed {
            let _ = done.send(());
        }
    }

    async fn commit(&mut self, batch: &mut Vec<(Box<PendingEvent>, Ack)>) {
        let started = Instant::now();
        let n = batch.len() as u64;
        match write_batch(&mut self.conn, &self.heads, batch).await {
            Ok(touched) => {
                self.metrics.batch_size.record(n as f64);
                self.metrics
                    .commit_seconds
                    .record(started.elapsed().as_secs_f64());
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.events.fetch_add(n, Ordering::Relaxed);
                self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
                if self.heads.len() + touched.len() > MAX_CACHED_HEADS {
                    self.heads.clear();
                }
                self.heads.extend(touched);
                // A session that ended rarely appends again; if it does, its
                // head is read back from session_heads.
                for (ev, _) in batch.iter() {
                    if matches!(
                        ev.body,
                        EventBody::SessionEnd { .. } | EventBody::AuthFailed { .. }
                    ) {
                        self.heads.remove(&ev.session_id);
                    }
                }
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                // The transaction rolled back, but whether a failed COMMIT
                // left anything behind is not knowable here, so the cache is
                // rebuilt from session_heads rather than trusted.
                self.heads.clear();
                self.metrics.errors.increment(1);
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, events = n, "audit batch failed to commit; refusing its commands");
                let msg = format!("audit store write failed: {e}");
                for (_, ack) in batch.drain(..) {
                    let _ = ack.send(Err(RecordError::Unavailable(msg.clone())));
                }
            }
        }
    }
}

/// Writes one batch in one transaction and returns the new chain heads of
/// the sessions it touched. Nothing in `cache` changes, so a failure leaves
/// the writer's view of the chains as it was.
async fn write_batch(
    conn: &mut SqliteConnection,
    cache: &HashMap<String, Head>,
    batch: &[(Box<PendingEvent>, Ack)],
) -> Result<HashMap<String, Head>, sqlx::Error> {
    // IMMEDIATE takes the write lock up front, so a concurrent writer from
    // another process waits on busy_timeout instead of failing mid-batch.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut touched: HashMap<String, Head> = HashMap::new();
    for (ev, _) in batch {
        let prev = match touched
            .get(&ev.session_id)
            .or_else(|| cache.get(&ev.session_id))
        {
            Some(head) => head.clone(),
            None => load_head(&mut tx, &ev.session_id).await?,
        };
        let seq = prev.seq + 1;
        let hash = event_hash(&ChainInput {
            prev_hash: &prev.hash,
            session_id: &ev.session_id,
            seq,
            at_us: ev.at_us,
            kind: ev.kind,
            body: &ev.body_json,
        });
        sqlx::query(
            "INSERT INTO events (session_id, seq, at_us, kind, body, prev_hash, hash) \
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&ev.session_id)
        .bind(seq)
        .bind(ev.at_us)
        .bind(ev.kind)
        .bind(&ev.body_json)
        .bind(&prev.hash)
        .bind(&hash)
        .execute(&mut *tx)
        .await?;
        update_session(&mut tx, ev).await?;
        touched.insert(ev.session_id.clone(), Head { seq, hash });
    }
    for (session_id, head) in &touched {
        sqlx::query(
            "INSERT INTO session_heads (session_id, last_seq, last_hash) VALUES (?, ?, ?) \
             ON CONFLICT (session_id) DO UPDATE SET \
             last_seq = excluded.last_seq, last_hash = excluded.last_hash",
        )
        .bind(session_id)
        .bind(head.seq)
        .bind(&head.hash)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(touched)
}

async fn load_head(conn: &mut SqliteConnection, session_id: &str) -> Result<Head, sqlx::Error> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT last_seq, last_hash FROM session_heads WHERE session_id = ?")
            .bind(session_id)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(match row {
        Some((seq, hash)) => Head { seq, hash },
        None => Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        },
    })
}

/// SQLite integers are signed; counts beyond i64 are clamped, not wrapped.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Keeps the derived `sessions` row in step with the event just written.
/// Every statement is an upsert, so events arriving for a session whose start
/// was never recorded still produce a row to list.
async fn update_session(conn: &mut SqliteConnection, ev: &PendingEvent) -> Result<(), sqlx::Error> {
    match &ev.body {
        EventBody::SessionStart {
            identity,
            identity_kind,
            connection,
            protocol,
            client_addr,
            application_name,
            tls,
        } => {
            sqlx::query(
                "INSERT INTO sessions (session_id, identity, identity_kind, connection, protocol, \
                 client_addr, application_name, tls, started_us) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (session_id) DO UPDATE SET identity = excluded.identity, \
                 identity_kind = excluded.identity_kind, connection = excluded.connection, \
                 protocol = excluded.protocol, client_addr = excluded.client_addr, \
                 application_name = excluded.application_name, tls = excluded.tls, \
                 started_us = excluded.started_us",
            )
            .bind(&ev.session_id)
            .bind(identity)
            .bind(identity_kind)
            .bind(connection)
            .bind(protocol)
            .bind(client_addr)
            .bind(application_name)
            .bind(tls)
            .bind(ev.at_us)
            .execute(conn)
            .await?;
        }
        EventBody::AuthFailed {
            claimed_identity,
            connection,
            protocol,
            client_addr,
            reason,
        } => {
            sqlx::query(
                "INSERT INTO sessions (session_id, identity, connection, protocol, client_addr, \
                 started_us, ended_us, failed, status, end_reason) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, 1, 'failed', ?) \
                 ON CONFLICT (session_id) DO UPDATE SET failed = 1, status = 'failed', \
                 ended_us = excluded.ended_us, end_reason = excluded.end_reason",
            )
            .bind(&ev.session_id)
            .bind(claimed_identity)
            .bind(connection)
            .bind(protocol)
            .bind(client_addr)
            .bind(ev.at_us)
            .bind(ev.at_us)
            .bind(reason)
            .execute(conn)
            .await?;
        }
        EventBody::Command { decision, .. } => {
            let denied = i64::from(decision.verdict == Verdict::Deny);
            sqlx::query(
                "INSERT INTO sessions (session_id, started_us, commands, denied) VALUES (?, ?, 1, ?) \
                 ON CONFLICT (session_id) DO UPDATE SET commands = commands + 1, \
                 denied = denied + excluded.denied",
            )
            .bind(&ev.session_id)
            .bind(ev.at_us)
            .bind(denied)
            .execute(conn)
            .await?;
        }
        EventBody::CommandResult { .. } => {
            sqlx::query(
                "INSERT INTO sessions (session_id, started_us) VALUES (?, ?) \
                 ON CONFLICT (session_id) DO NOTHING",
            )
            .bind(&ev.session_id)
            .bind(ev.at_us)
            .execute(conn)
            .await?;
        }
        EventBody::SessionEnd {
            bytes_from_client,
            bytes_to_client,
            reason,
            ..
        } => {
            sqlx::query(
                "INSERT INTO sessions (session_id, started_us, ended_us, bytes_from_client, \
                 bytes_to_client, status, end_reason) VALUES (?, ?, ?, ?, ?, 'ended', ?) \
                 ON CONFLICT (session_id) DO UPDATE SET ended_us = excluded.ended_us, \
                 bytes_from_client = excluded.bytes_from_client, \
                 bytes_to_client = excluded.bytes_to_client, \
                 status = CASE WHEN failed = 1 THEN 'failed' ELSE 'ended' END, \
                 end_reason = CASE WHEN failed = 1 THEN end_reason ELSE excluded.end_reason END",
            )
            .bind(&ev.session_id)
            .bind(ev.at_us)
            .bind(ev.at_us)
            .bind(int(*bytes_from_client))
            .bind(int(*bytes_to_client))
            .bind(reason)
            .execute(conn)
            .await?;
        }
        // Approval events belong to a session's chain but change none of
        // its listed counters; the approvals table holds their state.
        EventBody::ApprovalRequested { .. } | EventBody::ApprovalDecided { .. } => {}
    }
    Ok(())
}
