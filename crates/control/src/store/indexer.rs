//! The indexer: copies journal lines into SQLite, where the API, the CLI and
//! `audit verify` read them.
//!
//! It tails the journal from the checkpoint kept in SQLite, so the file is
//! the queue: memory stays flat however far behind it falls, and recovery
//! after a crash is the same loop run over the segments left on disk. Every
//! transaction inserts a batch of events (hashes as the journal computed
//! them), updates the derived `sessions` rows and `session_heads`, and moves
//! the checkpoint, all at once, so an event is indexed exactly once. A
//! segment is deleted only after the checkpoint has moved past it.
//!
//! Idle, it waits for the journal's "written" signal and then lingers a few
//! milliseconds so that a trickle of events becomes one transaction, not
//! one each. Readers that need to see the latest events call
//! [`IndexCtl::caught_up`], which cuts the linger short.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_pipeline::record::EventBody;
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection};
use tokio::sync::{Notify, watch};

use super::StoreError;
use super::journal::{Journal, Line, Pos, list_segments, parse_lines, segment_path};
use super::types::StoreStats;

/// How long the indexer waits after the first new event for more, so a
/// trickle of events becomes one transaction instead of one each.
const LINGER: Duration = Duration::from_millis(20);
/// No lingering once this much is waiting.
const LINGER_BELOW: u64 = 1 << 20;
/// Most bytes read from a segment per batch.
const READ_CHUNK: usize = 4 << 20;
/// Most rows per multi-row statement (at 7 parameters a row, far below
/// SQLite's limit of 32,766).
const MAX_STATEMENT_ROWS: usize = 256;
/// How long a reader waits for the index to catch up before giving up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(30);

/// How far the index has got, published after every commit.
#[derive(Debug, Clone, Default)]
pub(crate) struct Indexed {
    pub upto: Pos,
    /// Failed transactions so far, and the last error.
    pub failures: u64,
    pub last_error: Option<String>,
}

/// What the store holds to steer the indexer task and wait on it.
pub(crate) struct IndexCtl {
    pub indexed: watch::Sender<Indexed>,
    /// Skip the linger: somebody is waiting to read.
    urgent: Notify,
    closing: AtomicBool,
}

impl IndexCtl {
    pub fn new(at: Pos) -> Arc<IndexCtl> {
        Arc::new(IndexCtl {
            indexed: watch::Sender::new(Indexed {
                upto: at,
                ..Indexed::default()
            }),
            urgent: Notify::new(),
            closing: AtomicBool::new(false),
        })
    }

    /// Resolves once everything the journal held at the call is in SQLite.
    /// Fails if the indexer fails in the meantime, or takes too long.
    pub async fn caught_up(&self, journal: &Journal) -> Result<(), StoreError> {
        // Lines still pending after a failed write are not in the index
        // either: a reader (the slow lane reading a chain head, above all)
        // must not take the index for the whole story.
        journal.flush_pending().map_err(StoreError::IndexBehind)?;
        let target = journal.written_pos();
        let mut rx = self.indexed.subscribe();
        let failures_before = rx.borrow().failures;
        if rx.borrow().upto >= target {
            return Ok(());
        }
        self.urgent.notify_one();
        let waited = tokio::time::timeout(
            CATCH_UP_TIMEOUT,
            rx.wait_for(|s| s.upto >= target || s.failures > failures_before),
        )
        .await;
        match waited {
            Ok(Ok(s)) if s.upto >= target => Ok(()),
            Ok(Ok(s)) => Err(StoreError::IndexBehind(
                s.last_error
                    .clone()
                    .unwrap_or_else(|| "indexing failed".into()),
            )),
            Ok(Err(_)) => Err(StoreError::Closed),
            Err(_) => Err(StoreError::IndexBehind(format!(
                "indexing did not catch up within {}s",
                CATCH_UP_TIMEOUT.as_secs()
            ))),
        }
    }

    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.urgent.notify_one();
    }
}

/// Counters shared with [`super::Store::stats`].
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Events accepted by the journal.
    pub journaled: std::sync::atomic::AtomicU64,
    batches: std::sync::atomic::AtomicU64,
    events: std::sync::atomic::AtomicU64,
    max_batch: std::sync::atomic::AtomicU64,
    failed_batches: std::sync::atomic::AtomicU64,
    skipped_bytes: std::sync::atomic::AtomicU64,
}

impl Stats {
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            events: self.journaled.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            indexed_events: self.events.load(Ordering::Relaxed),
            max_batch: self.max_batch.load(Ordering::Relaxed),
            failed_batches: self.failed_batches.load(Ordering::Relaxed),
            skipped_bytes: self.skipped_bytes.load(Ordering::Relaxed),
            journal_writes: 0,
        }
    }
}

struct Metrics {
    batch_size: metrics::Histogram,
    commit_seconds: metrics::Histogram,
    errors: metrics::Counter,
    lag_bytes: metrics::Gauge,
}

impl Metrics {
    fn register() -> Self {
        metrics::describe_histogram!(
            "airlock_store_batch_size",
            metrics::Unit::Count,
            "Audit events indexed into SQLite per transaction"
        );
        metrics::describe_histogram!(
            "airlock_store_commit_seconds",
            metrics::Unit::Seconds,
            "Time to index and commit one batch of audit events into SQLite"
        );
        metrics::describe_counter!(
            "airlock_store_errors_total",
            metrics::Unit::Count,
            "SQLite index transactions that failed (retried; the journal keeps the events)"
        );
        metrics::describe_gauge!(
            "airlock_store_index_lag_bytes",
            metrics::Unit::Bytes,
            "Journal bytes written but not yet indexed into SQLite"
        );
        Metrics {
            batch_size: metrics::histogram!("airlock_store_batch_size"),
            commit_seconds: metrics::histogram!("airlock_store_commit_seconds"),
            errors: metrics::counter!("airlock_store_errors_total"),
            lag_bytes: metrics::gauge!("airlock_store_index_lag_bytes"),
        }
    }
}

pub(crate) struct Indexer {
    conn: SqliteConnection,
    dir: PathBuf,
    /// The checkpoint: everything before it is in SQLite.
    pos: Pos,
    max_batch: usize,
    buf: Vec<u8>,
    reader: Option<(u64, File)>,
    stats: Arc<Stats>,
    metrics: Metrics,
}

/// What one batch did.
enum Step {
    /// Indexed this many bytes of lines.
    Indexed(u64),
    /// The sealed segment has nothing more.
    SegmentDone,
    /// Nothing new in the live segment.
    Idle,
}

impl Indexer {
    /// Reads the checkpoint. `dir` is the journal directory.
    pub async fn open(
        mut conn: SqliteConnection,
        dir: PathBuf,
        max_batch: usize,
        stats: Arc<Stats>,
    ) -> Result<Indexer, StoreError> {
        let (segment, offset): (i64, i64) =
            sqlx::query_as("SELECT segment, offset FROM journal_checkpoint WHERE id = 1")
                .fetch_one(&mut conn)
                .await?;
        Ok(Indexer {
            conn,
            dir,
            pos: Pos {
                segment: segment.max(1) as u64,
                offset: offset.max(0) as u64,
            },
            max_batch: max_batch.max(1),
            buf: Vec::new(),
            reader: None,
            stats,
            metrics: Metrics::register(),
        })
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }

    /// Recovery: indexes every segment left on disk (events written before a
    /// crash or stop that were not indexed yet), deletes them, and returns
    /// the number of the segment the new journal starts.
    pub async fn replay(&mut self) -> Result<u64, StoreError> {
        let segments = list_segments(&self.dir).map_err(|e| StoreError::Journal {
            path: self.dir.clone(),
            source: e,
        })?;
        for &n in &segments {
            if n < self.pos.segment {
                // Indexed before; its deletion was interrupted.
                self.remove_segment(n);
                continue;
            }
            if n > self.pos.segment {
                self.pos = Pos {
                    segment: n,
                    offset: 0,
                };
            }
            let mut replayed = 0u64;
            while let Step::Indexed(_) = self.step(None).await? {
                replayed += 1;
            }
            self.finish_segment().await?;
            if replayed > 0 {
                tracing::info!(
                    segment = n,
                    batches = replayed,
                    "replayed audit journal segment into the index"
                );
            }
        }
        Ok(self.pos.segment)
    }

    /// The steady loop: index whatever the journal has written, until the
    /// store closes and everything is indexed.
    pub async fn run(mut self, journal: Arc<Journal>, ctl: Arc<IndexCtl>) {
        let mut backoff = Duration::from_millis(50);
        let mut failures_while_closing = 0;
        // What this round indexes: the end of the journal when it began.
        let mut plan = self.pos;
        loop {
            if self.pos >= plan {
                let closing = ctl.closing.load(Ordering::Acquire);
                let written = journal.written_pos();
                self.metrics.lag_bytes.set(lag(self.pos, written) as f64);
                let mut urgent = closing;
                if self.pos >= written {
                    if closing {
                        break;
                    }
                    urgent = tokio::select! {
                        _ = journal.written.notified() => false,
                        _ = ctl.urgent.notified() => true,
                    };
                }
                // Let a trickle gather into one transaction, unless a reader
                // is waiting or a backlog is already there.
                if !urgent && lag(self.pos, journal.written_pos()) < LINGER_BELOW {
                    tokio::select! {
                        _ = tokio::time::sleep(LINGER) => {}
                        _ = ctl.urgent.notified() => {}
                    }
                }
                plan = journal.written_pos();
                continue;
            }
            let end = (self.pos.segment == plan.segment).then_some(plan.offset);
            let step = match self.step(end).await {
                Ok(Step::SegmentDone) => self.finish_segment().await.map(|()| 0),
                Ok(Step::Indexed(n)) => Ok(n),
                Ok(Step::Idle) => {
                    // Nothing where the plan said there would be; do not spin.
                    plan = self.pos;
                    Ok(0)
                }
                Err(e) => Err(e),
            };
            match step {
                Ok(n) => {
                    backoff = Duration::from_millis(50);
                    journal.add_indexed_bytes(n);
                    let pos = self.pos;
                    ctl.indexed.send_modify(|s| s.upto = pos);
                }
                Err(e) => {
                    self.metrics.errors.increment(1);
                    self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "indexing the audit journal into SQLite failed; the events stay in the journal and indexing is retried");
                    let msg = e.to_string();
                    ctl.indexed.send_modify(|s| {
                        s.failures += 1;
                        s.last_error = Some(msg);
                    });
                    if ctl.closing.load(Ordering::Acquire) {
                        failures_while_closing += 1;
                        if failures_while_closing >= 3 {
                            tracing::error!(
                                "stopping with part of the audit journal not indexed; it is indexed at the next start"
                            );
                            break;
                        }
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the audit index connection failed");
        }
    }

    /// Indexes one batch from the checkpoint: up to `end` in the live
    /// segment, or to the end of the file for a sealed one (`None`).
    async fn step(&mut self, end: Option<u64>) -> Result<Step, StoreError> {
        let segment = self.pos.segment;
        let avail = end.map(|e| e.saturating_sub(self.pos.offset));
        if avail == Some(0) {
            return Ok(Step::Idle);
        }
        let mut want = READ_CHUNK;
        loop {
            let want_now =
                avail.map_or(want, |a| usize::try_from(a).unwrap_or(usize::MAX).min(want));
            let mut read = self.read(segment, want_now)?;
            // Journal lines never hold a NUL (JSON escapes it). A sealed
            // preallocated segment's data ends at its first NUL: the zeros
            // it was filled with, or a page a power cut did not write, after
            // which nothing was acknowledged. The live segment is read only
            // up to what the journal wrote, so a NUL there is damage.
            let mut at_zeros = false;
            if let Some(z) = memchr::memchr(0, &self.buf[..read]) {
                if end.is_some() {
                    return Err(StoreError::Corrupt(format!(
                        "journal segment {segment} has a NUL byte at offset {} inside written data",
                        self.pos.offset + z as u64
                    )));
                }
                if z == 0 {
                    // The segment ends here. Bytes after the NUL are not
                    // indexed; if any are not zeros (a write a power cut
                    // tore, or damage), say so loudly.
                    let data = &self.buf[..read];
                    if let (Some(first), Some(last)) = (
                        data.iter().position(|&b| b != 0),
                        data.iter().rposition(|&b| b != 0),
                    ) {
                        tracing::error!(
                            segment,
                            offset = self.pos.offset,
                            "audit journal segment has data after a run of NUL bytes (a write a power cut tore, or damage); it is not indexed"
                        );
                        self.stats
                            .skipped_bytes
                            .fetch_add((last + 1 - first) as u64, Ordering::Relaxed);
                    }
                    return Ok(Step::SegmentDone);
                }
                read = z;
                at_zeros = true;
            }
            if read == 0 {
                return Ok(if end.is_none() {
                    Step::SegmentDone
                } else {
                    Step::Idle
                });
            }
            let more_may_follow =
                !at_zeros && read == want_now && avail.is_none_or(|a| a > want_now as u64);
            let buf = std::mem::take(&mut self.buf);
            let result = self.index_buf(&buf[..read], more_may_follow).await;
            self.buf = buf;
            match result? {
                // One line longer than the chunk: read more of it.
                None => want = want.saturating_mul(2),
                Some(step) => return Ok(step),
            }
        }
    }

    /// Indexes the complete lines at the start of `data` (at most a batch).
    /// `None`: not even one complete line, and more bytes may follow.
    async fn index_buf(
        &mut self,
        data: &[u8],
        more_may_follow: bool,
    ) -> Result<Option<Step>, StoreError> {
        let (lines, used) = match parse_lines(data, self.max_batch) {
            Ok((lines, used)) if !lines.is_empty() => (lines, used),
            Ok(_) if more_may_follow => return Ok(None),
            Ok(_) => {
                // An unterminated last line: the tail of a write cut short
                // by a crash (up to the zeros of a preallocated segment).
                // Nothing was acknowledged for it.
                self.skip(data.len(), "an unterminated last line").await?;
                return Ok(Some(Step::Indexed(data.len() as u64)));
            }
            Err((0, e)) => {
                // Damage inside the file: skip that one line and go on.
                let len = data
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(data.len(), |n| n + 1);
                self.skip(len, &format!("a line that does not parse ({e})"))
                    .await?;
                return Ok(Some(Step::Indexed(len as u64)));
            }
            Err((good, _)) => {
                // Index the good lines first; the bad one is met next time.
                parse_lines(&data[..good], self.max_batch)
                    .map_err(|(_, e)| StoreError::Corrupt(e))?
            }
        };
        let next = Pos {
            segment: self.pos.segment,
            offset: self.pos.offset + used as u64,
        };
        let started = Instant::now();
        write_batch(&mut self.conn, &lines, next).await?;
        let n = lines.len() as u64;
        self.metrics.batch_size.record(n as f64);
        self.metrics
            .commit_seconds
            .record(started.elapsed().as_secs_f64());
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.events.fetch_add(n, Ordering::Relaxed);
        self.stats.max_batch.fetch_max(n, Ordering::Relaxed);
        self.pos = next;
        Ok(Some(Step::Indexed(used as u64)))
    }

    /// Skips `bytes` from the checkpoint, loudly. Only a crash mid-write or
    /// damage to the file gets here.
    async fn skip(&mut self, bytes: usize, what: &str) -> Result<(), StoreError> {
        tracing::error!(
            segment = self.pos.segment,
            offset = self.pos.offset,
            bytes,
            "audit journal segment has {what}; skipping it"
        );
        self.stats
            .skipped_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
        let next = Pos {
            segment: self.pos.segment,
            offset: self.pos.offset + bytes as u64,
        };
        set_checkpoint(&mut self.conn, next).await?;
        self.pos = next;
        Ok(())
    }

    fn read(&mut self, segment: u64, want: usize) -> Result<usize, StoreError> {
        let path = segment_path(&self.dir, segment);
        let io = |e| StoreError::Journal {
            path: path.clone(),
            source: e,
        };
        if self.reader.as_ref().is_none_or(|(n, _)| *n != segment) {
            match File::open(&path) {
                Ok(f) => self.reader = Some((segment, f)),
                // Already indexed and removed, or never created.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(io(e)),
            }
        }
        let Some((_, file)) = &self.reader else {
            return Ok(0);
        };
        self.buf.resize(want, 0);
        let mut got = 0;
        while got < want {
            match file.read_at(&mut self.buf[got..want], self.pos.offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        Ok(got)
    }

    /// Moves the checkpoint to the start of the next segment and deletes the
    /// finished one.
    async fn finish_segment(&mut self) -> Result<(), StoreError> {
        let done = self.pos.segment;
        let next = Pos {
            segment: done + 1,
            offset: 0,
        };
        set_checkpoint(&mut self.conn, next).await?;
        self.pos = next;
        self.reader = None;
        self.remove_segment(done);
        Ok(())
    }

    fn remove_segment(&self, n: u64) {
        let path = segment_path(&self.dir, n);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an indexed journal segment")
            }
        }
    }
}

/// Bytes between two places, counting only within one segment (a rough
/// figure for the lag gauge).
fn lag(from: Pos, to: Pos) -> u64 {
    if from.segment == to.segment {
        to.offset.saturating_sub(from.offset)
    } else {
        to.offset
    }
}

async fn set_checkpoint(conn: &mut SqliteConnection, pos: Pos) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE journal_checkpoint SET segment = ?, offset = ? WHERE id = 1")
        .bind(pos.segment as i64)
        .bind(pos.offset as i64)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether a command event's body records a denial, without a second JSON
/// pass over it (the line parser already checked it is valid JSON). In
/// valid JSON a raw `"` never occurs inside a string (it is escaped as
/// `\"`), so this byte sequence can only be the body's own `decision`
/// object, whose first field the serialiser writes is `verdict`; a unit test
/// pins that layout.
fn is_denied_command(body: &str) -> bool {
    memchr::memmem::find(body.as_bytes(), DENIED_NEEDLE).is_some()
}

const DENIED_NEEDLE: &[u8] = br#""decision":{"verdict":"deny""#;

/// Per-session counters of one batch, applied with one upsert each.
#[derive(Default)]
struct SessionDelta<'a> {
    first_at_us: i64,
    commands: i64,
    denied: i64,
    head: Option<(i64, &'a str)>,
}

/// Splits `rows` into chunks of [`MAX_STATEMENT_ROWS`], then halves for
/// the rest (256, 256, 128, 32, 4, 1 …), so a batch takes few statements
/// and their texts come from a small set that stays in sqlx's statement
/// cache instead of being prepared anew each time.
fn row_chunks<T>(rows: &[T]) -> impl Iterator<Item = &[T]> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let n = if rest.len() >= MAX_STATEMENT_ROWS {
            MAX_STATEMENT_ROWS
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        Some(chunk)
    })
}

/// Writes one batch in one transaction, checkpoint included.
async fn write_batch(
    conn: &mut SqliteConnection,
    lines: &[Line<'_>],
    next: Pos,
) -> Result<(), StoreError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    // Each statement is a round trip to sqlx's SQLite thread, so rows go
    // in as few multi-row statements as possible.
    for chunk in row_chunks(lines) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT OR IGNORE INTO events (session_id, seq, at_us, kind, body, prev_hash, hash) ",
        );
        qb.push_values(chunk, |mut row, l| {
            row.push_bind(l.sid)
                .push_bind(l.seq)
                .push_bind(l.at)
                .push_bind(l.kind)
                .push_bind(l.body.get())
                .push_bind(l.prev)
                .push_bind(l.hash);
        });
        qb.build().execute(&mut *tx).await?;
    }
    let mut deltas: HashMap<&str, SessionDelta> = HashMap::new();
    for l in lines {
        let d = deltas.entry(l.sid).or_insert_with(|| SessionDelta {
            first_at_us: l.at,
            ..SessionDelta::default()
        });
        d.head = Some((l.seq, l.hash));
        match l.kind {
            "command" => {
                d.commands += 1;
                d.denied += i64::from(is_denied_command(l.body.get()));
            }
            "session_start" | "auth_failed" | "session_end" => {
                let body: EventBody = serde_json::from_str(l.body.get())
                    .map_err(|e| StoreError::Corrupt(format!("{} event: {e}", l.kind)))?;
                update_session(&mut tx, l.sid, l.at, &body).await?;
            }
            _ => {}
        }
    }
    let deltas: Vec<(&str, SessionDelta)> = deltas.into_iter().collect();
    for chunk in row_chunks(&deltas) {
        // Also makes a row for a session whose start was never recorded.
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO sessions (session_id, started_us, commands, denied) ");
        qb.push_values(chunk, |mut row, (sid, d)| {
            row.push_bind(*sid)
                .push_bind(d.first_at_us)
                .push_bind(d.commands)
                .push_bind(d.denied);
        });
        qb.push(
            " ON CONFLICT (session_id) DO UPDATE SET commands = commands + excluded.commands, \
             denied = denied + excluded.denied",
        );
        qb.build().execute(&mut *tx).await?;
    }
    let heads: Vec<(&str, i64, &str)> = deltas
        .iter()
        .filter_map(|(sid, d)| d.head.map(|(seq, hash)| (*sid, seq, hash)))
        .collect();
    for chunk in row_chunks(&heads) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO session_heads (session_id, last_seq, last_hash) ");
        qb.push_values(chunk, |mut row, (sid, seq, hash)| {
            row.push_bind(*sid).push_bind(*seq).push_bind(*hash);
        });
        qb.push(
            " ON CONFLICT (session_id) DO UPDATE SET \
             last_seq = excluded.last_seq, last_hash = excluded.last_hash \
             WHERE excluded.last_seq > session_heads.last_seq",
        );
        qb.build().execute(&mut *tx).await?;
    }
    set_checkpoint(&mut tx, next).await?;
    tx.commit().await?;
    Ok(())
}

/// SQLite integers are signed; counts beyond i64 are clamped, not wrapped.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Keeps the derived `sessions` row in step with a start, failure or end.
/// Every statement is an upsert, so the order of events within a batch and
/// a missing start both still produce a row to list.
async fn update_session(
    conn: &mut SqliteConnection,
    session_id: &str,
    at_us: i64,
    body: &EventBody,
) -> Result<(), sqlx::Error> {
    match body {
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
            .bind(session_id)
            .bind(identity)
            .bind(identity_kind)
            .bind(connection)
            .bind(protocol)
            .bind(client_addr)
            .bind(application_name)
            .bind(tls)
            .bind(at_us)
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
            .bind(session_id)
            .bind(claimed_identity)
            .bind(connection)
            .bind(protocol)
            .bind(client_addr)
            .bind(at_us)
            .bind(at_us)
            .bind(reason)
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
            .bind(session_id)
            .bind(at_us)
            .bind(at_us)
            .bind(int(*bytes_from_client))
            .bind(int(*bytes_to_client))
            .bind(reason)
            .execute(conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use airlock_pipeline::model::{Classification, Decision, Verdict};

    use super::*;

    fn command_body(verdict: Verdict, text: &str) -> String {
        serde_json::to_string(&EventBody::Command {
            seq: 1,
            text: text.into(),
            params: vec![Some(r#""decision":{"verdict":"deny""#.into())],
            via: "simplequery".into(),
            classification: Classification { statements: vec![] },
            decision: Decision {
                verdict,
                action: "sql:read".into(),
                policies: vec![],
                reason: Some(r#"{"verdict":"deny"}"#.into()),
                reviewers: vec![],
                min_approvals: 1,
                approval_ttl_secs: None,
                policy_version: "v".into(),
                statement: 0,
            },
        })
        .unwrap()
    }

    #[test]
    fn rows_go_in_few_statements_of_few_sizes() {
        let sizes = |n: usize| -> Vec<usize> {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = row_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows, "every row once, in order");
            chunks.iter().map(|c| c.len()).collect()
        };
        assert!(sizes(0).is_empty());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(7), [4, 2, 1]);
        assert_eq!(sizes(700), [256, 256, 128, 32, 16, 8, 4]);
    }

    #[test]
    fn denial_is_read_from_the_decision_not_from_strings_that_mimic_it() {
        // Text, parameters and reason all try to look like a denial.
        let sneaky = r#"SELECT '"decision":{"verdict":"deny"'"#;
        assert!(is_denied_command(&command_body(Verdict::Deny, sneaky)));
        assert!(!is_denied_command(&command_body(Verdict::Allow, sneaky)));
        assert!(!is_denied_command(&command_body(Verdict::Review, sneaky)));
    }
}
