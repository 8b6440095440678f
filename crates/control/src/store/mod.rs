//! The audit store: an append-only journal on the hot path, indexed into
//! SQLite for reading; events hash-chained per session.
//!
//! Every audit event goes through [`Store::append`] (the pipeline's
//! [`AuditSink`]): it is chained and written to the [`journal`] (and, with
//! `sync = "full"`, fsynced by a group commit) before the append resolves,
//! which is what "recorded before forwarded" waits for. The [`indexer`]
//! copies the journal into SQLite in batches, off the commands' path; reads
//! (`list_sessions`, `get_session`, `verify`) first wait for it to catch up,
//! so they always see every event appended before them. Reads use a small
//! pool of read-only connections. See [`chain`] for the hash chain that
//! `verify` checks.

mod chain;
mod indexer;
mod journal;
mod query;
mod schema;
pub mod types;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_pipeline::record::{AuditEvent, AuditSink, RecordError, RecordFuture};
use sqlx::ConnectOptions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::task::JoinHandle;

pub use chain::{ChainInput, GENESIS, event_hash};
pub use types::*;

use indexer::{IndexCtl, Indexer, Stats};
use journal::{Appended, Head, Journal, JournalOptions, PendingEvent, SlowEvent};

/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page size of a new database file (an existing one keeps its own). The
/// index inserts two rows per statement; with 16 KiB pages each row costs
/// less CPU than with SQLite's default 4 KiB (fewer page splits and WAL
/// frames per row).
const PAGE_SIZE: u32 = 16 * 1024;
/// Read connections; listing and verification are rare next to appends.
const READ_POOL_SIZE: u32 = 4;

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Every journal group commit is fdatasynced before its commands go
    /// upstream; survives power loss.
    #[default]
    Full,
    /// The journal is written (to the OS) before commands go upstream, but
    /// not fsynced: survives a crash of Airlock, but the last events may be
    /// lost if the machine itself goes down.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub sync: SyncMode,
    /// Most events indexed into SQLite in one transaction.
    pub max_batch: usize,
    /// A journal segment is sealed and a new one started past this size.
    pub max_segment_bytes: u64,
    /// New events are refused (commands fail closed) while more than this
    /// many journal bytes wait to be indexed, e.g. because SQLite is broken.
    pub max_unindexed_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncMode::Full,
            max_batch: 2048,
            max_segment_bytes: 64 << 20,
            max_unindexed_bytes: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error(
        "the store has schema version {found}, newer than this binary supports ({supported}); upgrade Airlock"
    )]
    SchemaTooNew { found: i64, supported: i64 },
    #[error("the audit store is closed")]
    Closed,
    #[error("audit journal {path}: {source}")]
    Journal {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the audit index is behind the journal: {0}")]
    IndexBehind(String),
    #[error("the audit journal holds a damaged event: {0}")]
    Corrupt(String),
    #[error(
        "the store is in use by another Airlock process (journal {0} is locked); one store serves one gateway"
    )]
    InUse(PathBuf),
}

/// Handle to the store. Cloning is cheap; every clone feeds the same writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Arc<Journal>,
    index: Arc<IndexCtl>,
    pool: SqlitePool,
    path: PathBuf,
    stats: Arc<Stats>,
    indexer: Mutex<Option<JoinHandle<()>>>,
    slow_lane: Mutex<Option<JoinHandle<()>>>,
    /// An exclusive lock on the journal directory, held until `close`: a
    /// second process on the same store would replay and delete the
    /// segments this one is writing.
    dir_lock: Mutex<Option<std::fs::File>>,
    sync: SyncMode,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// `sqlite://PATH` (relative or absolute: `sqlite:///var/lib/airlock.db`).
fn parse_url(url: &str) -> Result<PathBuf, StoreError> {
    let invalid = |reason| StoreError::InvalidUrl {
        url: url.to_owned(),
        reason,
    };
    let path = url
        .strip_prefix("sqlite://")
        .ok_or_else(|| invalid("expected sqlite://PATH"))?;
    if path.is_empty() {
        return Err(invalid("no file path after sqlite://"));
    }
    if path.contains('?') || path.starts_with(":memory:") {
        // A separate writer connection and read pool need a real file to share.
        return Err(invalid("only a plain file path is supported"));
    }
    Ok(PathBuf::from(path))
}

impl Store {
    /// Opens (creating if needed) the store at `url`, indexes whatever an
    /// earlier run left in the journal, and starts the journal and the
    /// indexer. Must be called inside a Tokio runtime.
    pub async fn open(url: &str, opts: StoreOptions) -> Result<Store, StoreError> {
        let path = parse_url(url)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| StoreError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let journal_dir = journal_dir(&path);
        tokio::fs::create_dir_all(&journal_dir)
            .await
            .map_err(|source| StoreError::CreateDir {
                path: journal_dir.clone(),
                source,
            })?;
        let dir_lock = lock_dir(&journal_dir)?;
        // The index commits durably when the journal does: the journal
        // segments are deleted once the index has them, so an index commit
        // lost to a power cut would lose those events.
        let synchronous = match opts.sync {
            SyncMode::Full => SqliteSynchronous::Full,
            SyncMode::Normal => SqliteSynchronous::Normal,
        };
        let base = SqliteConnectOptions::new()
            .filename(&path)
            .busy_timeout(BUSY_TIMEOUT);
        let mut conn = base
            .clone()
            .create_if_missing(true)
            .page_size(PAGE_SIZE)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .connect()
            .await?;
        schema::migrate(&mut conn).await?;
        // The writer's connection already switched the file to WAL, which is
        // persistent, so readers need not (and read-only ones could not).
        let pool = SqlitePoolOptions::new()
            .max_connections(READ_POOL_SIZE)
            .connect_with(base.read_only(true))
            .await?;
        let stats = Arc::new(Stats::default());
        let mut indexer =
            Indexer::open(conn, journal_dir.clone(), opts.max_batch, stats.clone()).await?;
        let segment = indexer.replay().await?;
        let (lane_tx, lane_rx) = tokio::sync::mpsc::unbounded_channel();
        let journal = Journal::open(
            &journal_dir,
            segment,
            JournalOptions {
                sync: opts.sync,
                max_segment_bytes: opts.max_segment_bytes.max(1),
                max_unindexed_bytes: opts.max_unindexed_bytes,
            },
            lane_tx,
        )
        .map_err(|source| StoreError::Journal {
            path: journal_dir.clone(),
            source,
        })?;
        let index = IndexCtl::new(indexer.pos());
        let task = tokio::spawn(indexer.run(journal.clone(), index.clone()));
        let lane = tokio::spawn(slow_lane(
            lane_rx,
            journal.clone(),
            index.clone(),
            pool.clone(),
        ));
        Ok(Store {
            inner: Arc::new(Inner {
                journal,
                index,
                pool,
                path,
                stats,
                indexer: Mutex::new(Some(task)),
                slow_lane: Mutex::new(Some(lane)),
                dir_lock: Mutex::new(Some(dir_lock)),
                sync: opts.sync,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How hard commits try to reach the disk.
    pub fn sync_mode(&self) -> SyncMode {
        self.inner.sync
    }

    /// The journal's directory.
    pub fn journal_dir(&self) -> &Path {
        self.inner.journal.dir()
    }

    /// False once the store was closed or the journal failed: appends now fail.
    pub fn is_writable(&self) -> bool {
        self.inner.journal.is_open()
    }

    /// Counters since open.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            journal_writes: self.inner.journal.writes(),
            ..self.inner.stats.snapshot()
        }
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Waits until SQLite holds every event appended before the call.
    /// Every read of events goes through this first.
    pub(crate) async fn caught_up(&self) -> Result<(), StoreError> {
        self.inner.index.caught_up(&self.inner.journal).await
    }

    /// Resolves once every event appended before the call is durable in the
    /// journal and indexed into SQLite.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if !self.inner.journal.is_open() {
            return Err(StoreError::Closed);
        }
        self.inner
            .journal
            .flush_pending()
            .map_err(StoreError::IndexBehind)?;
        let pos = self.inner.journal.written_pos();
        self.inner
            .journal
            .wait_durable(pos)
            .await
            .map_err(StoreError::IndexBehind)?;
        self.caught_up().await
    }

    /// Graceful shutdown: refuses new events, writes the ones already
    /// accepted, syncs the journal, indexes everything in it, stops the
    /// indexer and closes the read pool. Later appends and queries fail.
    /// Calling it again is harmless.
    pub async fn close(&self) {
        self.inner.journal.stop_accepting();
        join_once(&self.inner.slow_lane, "audit slow lane").await;
        self.inner.journal.close().await;
        self.inner.index.close();
        join_once(&self.inner.indexer, "audit indexer task").await;
        self.inner.pool.close().await;
        // Another process may take the store over from here.
        drop(self.inner.dir_lock.lock().ok().and_then(|mut l| l.take()));
    }
}

/// Awaits a background task the first time it is called; later calls (a
/// second `close`) find it taken and return at once.
async fn join_once(task: &Mutex<Option<JoinHandle<()>>>, what: &str) {
    let handle = task.lock().ok().and_then(|mut t| t.take());
    if let Some(handle) = handle
        && let Err(e) = handle.await
    {
        tracing::error!(error = %e, "{what} failed");
    }
}

/// Takes the journal directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    let path = dir.join("LOCK");
    let io = |source| StoreError::Journal {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse(dir.to_owned())),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Writes, one at a time and in the order they were appended, the events
/// whose chain head was not in memory: waits for the index to hold every
/// earlier event, reads the head from it, and appends after it.
async fn slow_lane(
    mut events: tokio::sync::mpsc::UnboundedReceiver<SlowEvent>,
    journal: Arc<Journal>,
    index: Arc<IndexCtl>,
    pool: SqlitePool,
) {
    while let Some((ev, ack)) = events.recv().await {
        let head = match index.caught_up(&journal).await {
            Ok(()) => load_head(&pool, &ev.session_id)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let outcome = match head {
            Ok(head) => match journal.append_slow(&ev, head) {
                Ok(pos) => journal.wait_durable(pos).await,
                Err(e) => Err(e),
            },
            Err(e) => {
                journal.slow_failed(&ev.session_id);
                Err(format!("cannot read the audit chain head: {e}"))
            }
        };
        let _ = ack.send(outcome);
    }
}

/// Ready at its second poll: the first wakes its own task and returns
/// `Pending`, which puts the task at the back of its runtime's run queue, so
/// the tasks already woken there (on a session thread: the other sessions
/// whose sockets were ready in the same turn) run first. Unlike
/// `tokio::task::yield_now`, which defers the wake-up until the runtime has
/// polled its I/O driver again (one more `epoll_wait`).
struct RunQueueTurn(bool);

impl std::future::Future for RunQueueTurn {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.0 {
            return std::task::Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// The journal lives beside the database file.
fn journal_dir(db: &Path) -> PathBuf {
    let mut name = db.file_name().unwrap_or_default().to_os_string();
    name.push(".journal.d");
    db.with_file_name(name)
}

async fn load_head(pool: &SqlitePool, session_id: &str) -> Result<Head, sqlx::Error> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT last_seq, last_hash FROM session_heads WHERE session_id = ?")
            .bind(session_id)
            .fetch_optional(pool)
            .await?;
    Ok(match row {
        Some((seq, hash)) => Head { seq, hash },
        None => Head::genesis(),
    })
}

fn pending_event(event: &AuditEvent) -> Result<PendingEvent, RecordError> {
    let body_json = serde_json::to_string(&event.body)
        .map_err(|e| RecordError::Unavailable(format!("cannot encode audit event: {e}")))?;
    Ok(PendingEvent {
        session_id: event.session_id.hyphenated().to_string(),
        at_us: event.at_us,
        kind: event.body.kind(),
        body_json,
    })
}

impl AuditSink for Store {
    /// Written to the journal before this returns; nobody waits, so it goes
    /// out with the next write (or within 50 ms) and costs no syscall or
    /// fsync of its own.
    fn append_detached(&self, event: AuditEvent) {
        let outcome = pending_event(&event).map(|p| self.inner.journal.append(p));
        match outcome {
            Ok(Appended::Encoded(_) | Appended::Queued(_)) => {
                self.inner.stats.journaled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Appended::Refused(msg)) => {
                tracing::error!(error = %msg, kind = event.body.kind(), "audit event refused");
            }
            Err(e) => tracing::error!(error = %e, "audit event refused"),
        }
    }

    fn append(&self, event: AuditEvent) -> RecordFuture {
        let pending = match pending_event(&event) {
            Ok(p) => p,
            Err(err) => return Box::pin(std::future::ready(Err(err))),
        };
        // Chained and encoded here, not inside the future, which fixes the
        // order of a session's events at the call: a caller that drops the
        // future still gets its event written (with the next write, or by
        // the journal's thread within 50 ms), after the ones it appended
        // earlier. The write happens in the future, after one turn of the
        // run queue, so the sessions of a session thread that append in
        // the same turn share one write.
        match self.inner.journal.append(pending) {
            Appended::Encoded(mark) => {
                self.inner.stats.journaled.fetch_add(1, Ordering::Relaxed);
                let journal = self.inner.journal.clone();
                Box::pin(async move {
                    RunQueueTurn(false).await;
                    let pos = journal
                        .write_through(mark)
                        .map_err(RecordError::Unavailable)?;
                    // Returns at once with `normal`: the line is in the OS.
                    journal
                        .wait_durable(pos)
                        .await
                        .map_err(RecordError::Unavailable)
                })
            }
            // Rare: an event after its session ended, or after a restart.
            Appended::Queued(outcome) => {
                self.inner.stats.journaled.fetch_add(1, Ordering::Relaxed);
                Box::pin(async move {
                    outcome
                        .await
                        .unwrap_or_else(|_| Err("the audit store stopped".into()))
                        .map_err(RecordError::Unavailable)
                })
            }
            Appended::Refused(msg) => {
                Box::pin(std::future::ready(Err(RecordError::Unavailable(msg))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_pipeline::record::{AuditEvent, EventBody};
    use journal::JournalOptions;

    /// A `sync = "full"` journal in the store's directory, on its
    /// preallocated segment 2, with a session start and `results` results;
    /// returns the end of each line.
    async fn prefilled_journal(db: &Path, results: u64) -> Vec<journal::Pos> {
        let jdir = journal_dir(db);
        std::fs::create_dir_all(&jdir).unwrap();
        let (tx, _lane) = tokio::sync::mpsc::unbounded_channel();
        let opts = JournalOptions {
            sync: SyncMode::Full,
            max_segment_bytes: 1 << 20,
            max_unindexed_bytes: u64::MAX,
        };
        let j = journal::Journal::open(&jdir, 1, opts, tx).unwrap();
        assert!(j.spare_settled());
        let id = uuid::Uuid::new_v4();
        let mut events = vec![EventBody::SessionStart {
            identity: "alice".into(),
            identity_kind: "human".into(),
            connection: "c".into(),
            protocol: "postgres".into(),
            client_addr: "127.0.0.1:1".into(),
            application_name: None,
            tls: false,
        }];
        events.extend((1..=results).map(|seq| EventBody::CommandResult {
            seq,
            tags: vec!["SELECT 1".into()],
            rows: 1,
            duration_us: 5,
            error_code: None,
            error_message: None,
            masked: vec![],
        }));
        let mut ends = Vec::new();
        for body in events {
            let ev = pending_event(&AuditEvent::now(id, body)).unwrap();
            match j.append(ev) {
                journal::Appended::Encoded(mark) => ends.push(j.write_through(mark).unwrap()),
                other => panic!("{other:?}"),
            }
        }
        assert!(
            ends.iter().all(|p| p.segment == 2),
            "written over the preallocated segment"
        );
        j.stop_accepting();
        j.close().await;
        ends
    }

    /// A power cut can leave a page of a preallocated segment unwritten
    /// (zeros) in the middle of a line, with later lines on disk: nothing
    /// after it was acknowledged, so the data ends there; what is dropped
    /// is counted and the chain still verifies.
    #[tokio::test]
    async fn a_page_lost_to_a_power_cut_ends_the_segment() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let ends = prefilled_journal(&db, 4).await;
        let seg = journal::segment_path(&journal_dir(&db), 2);
        let hole = ends[1].offset + 10..ends[1].offset + 30;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        let zeros = vec![0u8; (hole.end - hole.start) as usize];
        std::os::unix::fs::FileExt::write_all_at(&f, &zeros, hole.start).unwrap();
        drop(f);

        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url, StoreOptions::default()).await.unwrap();
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events, 2, "the two lines before the hole");
        let torn = 10;
        let after = ends[4].offset - hole.end;
        assert_eq!(store.stats().skipped_bytes, torn + after);
        store.close().await;
    }

    /// After a crash with `sync = "full"` the live segment is lines, maybe
    /// a torn one, then the zeros it was preallocated with: recovery indexes
    /// the lines, drops the torn one and stops at the zeros.
    #[tokio::test]
    async fn recovery_reads_a_preallocated_segment_up_to_its_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let end = *prefilled_journal(&db, 1).await.last().unwrap();
        let jdir = journal_dir(&db);
        // The crash tore the next line.
        const TORN: &[u8] = br#"{"sid":"to"#;
        let seg = journal::segment_path(&jdir, 2);
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, TORN, end.offset).unwrap();
        drop(f);

        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url, StoreOptions::default()).await.unwrap();
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events, 2);
        assert_eq!(
            store.stats().skipped_bytes,
            TORN.len() as u64,
            "only the torn line is skipped, not the zeros after it"
        );
        assert!(!seg.exists(), "replayed and deleted");
        store.close().await;
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("sqlite://a/b.db").unwrap(),
            PathBuf::from("a/b.db")
        );
        assert_eq!(
            parse_url("sqlite:///var/lib/x.db").unwrap(),
            PathBuf::from("/var/lib/x.db")
        );
        assert!(parse_url("postgres://x").is_err());
        assert!(parse_url("sqlite://").is_err());
        assert!(parse_url("sqlite://:memory:").is_err());
    }
}
