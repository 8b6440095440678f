//! The audit store: SQLite, one group-committing writer, hash-chained events.
//!
//! Every audit event goes through [`Store::append`] (the pipeline's
//! [`AuditSink`]) to a single writer task that owns one dedicated connection;
//! reads use a small separate pool of read-only connections, so listing
//! sessions never waits behind a commit. See [`writer`] for group commit and
//! [`chain`] for the hash chain that `verify` checks.

mod chain;
mod query;
mod schema;
pub mod types;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_pipeline::record::{AuditEvent, AuditSink, RecordError, RecordFuture};
use sqlx::ConnectOptions;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use chain::{ChainInput, GENESIS, event_hash};
pub use types::*;

use writer::{PendingEvent, Stats, Writer, WriterMsg};

/// How long a connection waits for a lock held by another before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Read connections; listing and verification are rare next to appends.
const READ_POOL_SIZE: u32 = 4;

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// `synchronous=FULL`: every group commit is fsynced; survives power loss.
    #[default]
    Full,
    /// WAL with `synchronous=NORMAL`: survives a crash of the process, but the
    /// last commits may be lost if the machine loses power.
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    pub sync: SyncMode,
    /// Most events written in one transaction.
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            sync: SyncMode::Full,
            max_batch: 512,
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
}

/// Handle to the store. Cloning is cheap; every clone feeds the same writer.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    /// Unbounded because `append` must enqueue synchronously to fix event
    /// order, and because it is bounded in practice anyway: each session
    /// awaits its record before forwarding, so at most a few events per
    /// session are ever in flight.
    tx: mpsc::UnboundedSender<WriterMsg>,
    pool: SqlitePool,
    path: PathBuf,
    stats: Arc<Stats>,
    writer: Mutex<Option<JoinHandle<()>>>,
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
    /// Opens (creating if needed) the store at `url` and starts its writer.
    /// Must be called inside a Tokio runtime.
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
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let writer = tokio::spawn(Writer::new(conn, rx, opts.max_batch, stats.clone()).run());
        Ok(Store {
            inner: Arc::new(Inner {
                tx,
                pool,
                path,
                stats,
                writer: Mutex::new(Some(writer)),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// False once the writer has stopped (closed, or died): appends now fail.
    pub fn is_writable(&self) -> bool {
        !self.inner.tx.is_closed()
    }

    /// Writer counters since open.
    pub fn stats(&self) -> StoreStats {
        self.inner.stats.snapshot()
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.inner.pool
    }

    /// Resolves once every event appended before the call is committed (or refused).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.inner
            .tx
            .send(WriterMsg::Flush(done))
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)
    }

    /// Graceful shutdown: refuses new events, commits every event already
    /// queued, stops the writer and closes the read pool. Later appends and
    /// queries fail. Calling it again is harmless.
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.inner.tx.send(WriterMsg::Close(done)).is_ok() {
            let _ = wait.await;
        }
        let handle = self.inner.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(handle) = handle
            && let Err(e) = handle.await
        {
            tracing::error!(error = %e, "audit writer task failed");
        }
        self.inner.pool.close().await;
    }
}

impl AuditSink for Store {
    fn append(&self, event: AuditEvent) -> RecordFuture {
        let body_json = match serde_json::to_string(&event.body) {
            Ok(json) => json,
            Err(e) => {
                let err = RecordError::Unavailable(format!("cannot encode audit event: {e}"));
                return Box::pin(std::future::ready(Err(err)));
            }
        };
        let pending = Box::new(PendingEvent {
            session_id: event.session_id.hyphenated().to_string(),
            at_us: event.at_us,
            kind: event.body.kind(),
            body_json,
            body: event.body,
        });
        let (ack, acked) = oneshot::channel();
        // Sending here, not inside the future, fixes the order of events at
        // the call: a caller that drops the future still gets its event
        // written, after the ones it appended earlier.
        if self.inner.tx.send(WriterMsg::Append(pending, ack)).is_err() {
            let err = RecordError::Unavailable("the audit store is closed".into());
            return Box::pin(std::future::ready(Err(err)));
        }
        Box::pin(async move {
            acked.await.unwrap_or_else(|_| {
                Err(RecordError::Unavailable(
                    "the audit writer stopped before committing".into(),
                ))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
