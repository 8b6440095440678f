//! The audit journal: the append-only file every event is written to before
//! its command may go upstream.
//!
//! SQLite is too slow to sit on every statement's path (one transaction costs
//! 0.2–0.7 ms here), so the durable record of an event is one line appended
//! to a segment file; the [`indexer`](super::indexer) copies the lines into
//! SQLite in large batches shortly after. An append:
//!
//! 1. takes the journal lock, extends the session's hash chain from the head
//!    kept in memory, and encodes the line into the pending buffer (the lock
//!    fixes one order for the file, the chains and the indexer);
//! 2. writes it with [`Journal::write_through`], which writes every pending
//!    line in one `write` unless an earlier call already wrote this one (the
//!    store calls it after one turn of the session thread's run queue, so
//!    sessions that append in the same turn share the write); with `sync =
//!    "normal"` that is all: the line is in the OS and survives a crash of
//!    Airlock;
//! 3. with `sync = "full"` then waits for the syncer thread's next `fdatasync`,
//!    which covers every line written before it started: group commit with
//!    no timer, so one session waits one fsync and many share it.
//!
//! A failed write is undone by truncating the segment back (its lines stay
//! pending, and each waiting caller refuses its command, a refusal that is
//! recorded after them); a failed fsync
//! poisons the journal (after one, the kernel no longer says which writes
//! reached the disk), and every later append is refused: fail closed.
//!
//! Segments are `NNNNNNNNNNNNNNNNNNNN.log` in one directory, rotated at a size
//! limit and deleted by the indexer once all their events are in SQLite.
//!
//! With `sync = "full"` segments are *preallocated*: a helper thread writes
//! a spare file full of zeros and syncs it before the journal switches to
//! it (a hard link to the segment's name, which never replaces an existing
//! file, then a directory sync), and lines are then written over the zeros. An fdatasync after an
//! append that grows a file must also commit the new file size (a file
//! system journal commit); over preallocated blocks it flushes only the
//! data (measured here: 100–125 µs instead of 140–175 µs for a 1.3 kB
//! append). The data of a segment ends where a line would start with a NUL
//! byte; readers stop there. Until a spare is ready (and if preparing one
//! fails) the journal writes a plain, growing segment as before.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, mpsc, oneshot, watch};

use super::SyncMode;
use super::chain::{ChainInput, GENESIS, decimal, event_hash};

/// An event serialised by the appender, so JSON work happens on the
/// caller's thread and the journal lock covers only chaining and the write.
pub(crate) struct PendingEvent {
    pub session_id: String,
    pub at_us: i64,
    pub kind: &'static str,
    pub body_json: String,
}

impl PendingEvent {
    /// The first event of a session's chain needs no head from anywhere.
    fn starts_chain(&self) -> bool {
        matches!(self.kind, "session_start" | "auth_failed")
    }

    /// After these a session appends rarely, so its head leaves memory.
    fn ends_chain(&self) -> bool {
        matches!(self.kind, "session_end" | "auth_failed")
    }
}

/// A place in the journal: segment number, then byte offset in it. Ordered,
/// so "everything up to here" is one comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub(crate) struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// The last event of a session's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Head {
    pub seq: i64,
    pub hash: String,
}

impl Head {
    pub fn genesis() -> Head {
        Head {
            seq: 0,
            hash: GENESIS.to_owned(),
        }
    }
}

/// What the syncer has made durable (with `sync = "full"`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Durable {
    pub upto: Pos,
    /// Set once an fsync failed; nothing after `upto` will ever be durable.
    pub error: Option<Arc<str>>,
}

/// What became of an append.
#[derive(Debug)]
pub(crate) enum Appended {
    /// Chained and encoded, and written with the next write;
    /// [`Journal::write_through`] with this mark writes it now.
    Encoded(u64),
    /// The session's chain head is not in memory (its session ended, or the
    /// gateway restarted), so the event went to the slow lane, which reads
    /// the head from SQLite and writes it; the receiver gets the outcome.
    Queued(oneshot::Receiver<Result<(), String>>),
    /// Refused; the caller must not forward its command.
    Refused(String),
}

/// An event waiting in the slow lane, with where to report its outcome.
pub(crate) type SlowEvent = (PendingEvent, oneshot::Sender<Result<(), String>>);

/// How often the background thread writes pending lines, and (with `sync =
/// "full"`) syncs writes nobody waited for.
const TICK: std::time::Duration = std::time::Duration::from_millis(50);
/// Pending lines are written at once past this size.
const PENDING_FLUSH_BYTES: usize = 64 * 1024;

/// The first spare after start is small, so a gateway that records little
/// does not write a whole segment of zeros; later spares are a full segment.
const FIRST_SPARE_BYTES: u64 = 4 << 20;
/// Spares are prepared as `spare-<pid>-<n>.tmp` (not a `.log` name, so
/// recovery never reads one; unique, so no two preparations share a file).
const SPARE_PREFIX: &str = "spare-";
const SPARE_SUFFIX: &str = ".tmp";
static SPARE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Past this many cached chain heads the cache is cleared; heads of live
/// sessions are then read back from SQLite on their next event.
const MAX_CACHED_HEADS: usize = 100_000;

pub(crate) struct JournalOptions {
    pub sync: SyncMode,
    /// A segment is sealed and a new one started past this size.
    pub max_segment_bytes: u64,
    /// Appends are refused while more than this many bytes wait to be
    /// indexed, so a broken SQLite cannot fill the disk unnoticed.
    pub max_unindexed_bytes: u64,
}

pub(crate) struct Journal {
    /// Itself, for the spare-preparing thread (which must not keep it alive).
    me: Weak<Journal>,
    dir: PathBuf,
    opts: JournalOptions,
    state: Mutex<State>,
    /// Wakes the syncer when there is something new to sync, or on close
    /// (and is notified when a spare segment is ready).
    sync_wanted: Condvar,
    durable: watch::Sender<Durable>,
    /// Wakes the indexer when lines were written.
    pub written: Notify,
    /// Bytes ever written and bytes the indexer has committed, for back pressure.
    indexed_bytes: AtomicU64,
    /// Successful writes to segment files.
    writes: AtomicU64,
    syncer: Mutex<Option<JoinHandle<()>>>,
    metrics: Metrics,
}

struct State {
    file: Arc<File>,
    pos: Pos,
    /// The current segment is rotated before a write would pass this size.
    capacity: u64,
    /// The current segment was preallocated: its tail is zeros, so a failed
    /// write is undone by zeroing, not truncating.
    preallocated: bool,
    /// A preallocated file ready to become the next segment: the file, its
    /// size and its path.
    spare: Option<(File, u64, PathBuf)>,
    /// The helper thread is preparing a spare, or gave up for this run.
    spare_busy: bool,
    written_bytes: u64,
    heads: HashMap<String, Head>,
    /// Sessions with events in the slow lane: their later events queue
    /// behind them, so a session's events keep the order of the calls.
    slow: HashMap<String, usize>,
    /// `None` once the store stops accepting events.
    slow_lane: Option<mpsc::UnboundedSender<SlowEvent>>,
    /// Encoded lines not written yet: events nobody waits for (command
    /// results) wait here for the next write, so they cost no syscall of
    /// their own; the background thread writes them within [`TICK`].
    pending: Vec<u8>,
    /// Somebody waits for durability: the syncer should sync now. Appends
    /// whose future nobody awaits (command results) do not ask, and ride
    /// along with the next sync instead of costing one of their own.
    sync_requested: bool,
    /// The syncer finishes its last sync and exits.
    stopping: bool,
    poisoned: Option<Arc<str>>,
}

struct Metrics {
    append_seconds: metrics::Histogram,
    write_seconds: metrics::Histogram,
    sync_seconds: metrics::Histogram,
    events: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
}

impl Metrics {
    fn register() -> Self {
        metrics::describe_histogram!(
            "airlock_journal_sync_seconds",
            metrics::Unit::Seconds,
            "Time of one fdatasync of the audit journal (sync = \"full\"); each covers every event written before it"
        );
        metrics::describe_histogram!(
            "airlock_journal_append_seconds",
            metrics::Unit::Seconds,
            "Time to chain and encode one audit event for the journal, lock wait included (the write to the file is airlock_journal_write_seconds)"
        );
        metrics::describe_histogram!(
            "airlock_journal_write_seconds",
            metrics::Unit::Seconds,
            "Time of one write to the journal file; appends that come together share one"
        );
        metrics::describe_counter!(
            "airlock_journal_events_total",
            metrics::Unit::Count,
            "Audit events written to the journal"
        );
        metrics::describe_counter!(
            "airlock_journal_bytes_total",
            metrics::Unit::Bytes,
            "Bytes written to the audit journal"
        );
        metrics::describe_counter!(
            "airlock_journal_errors_total",
            metrics::Unit::Count,
            "Audit events refused by the journal (write or sync failure, index too far behind, closed)"
        );
        Metrics {
            append_seconds: metrics::histogram!("airlock_journal_append_seconds"),
            write_seconds: metrics::histogram!("airlock_journal_write_seconds"),
            sync_seconds: metrics::histogram!("airlock_journal_sync_seconds"),
            events: metrics::counter!("airlock_journal_events_total"),
            bytes: metrics::counter!("airlock_journal_bytes_total"),
            errors: metrics::counter!("airlock_journal_errors_total"),
        }
    }
}

/// The file of segment `n`.
pub(crate) fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(format!("{n:020}.log"))
}

/// Segment numbers present in `dir`, ascending.
pub(crate) fn list_segments(dir: &Path) -> std::io::Result<Vec<u64>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|s| s.parse::<u64>().ok())
        {
            found.push(n);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Makes a new directory entry durable (needed after creating a segment).
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A plain segment: empty, grown by each write. Lines are written at
/// explicit offsets (`write_all_at`), so it is not opened in append mode.
fn create_segment(dir: &Path, n: u64, sync: SyncMode) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(segment_path(dir, n))?;
    if sync == SyncMode::Full {
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Writes `size` zero bytes to a new file at `path` and syncs data and size.
fn preallocate(path: &Path, size: u64) -> std::io::Result<File> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(zeros.len());
        (&file).write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

impl Journal {
    /// Starts a new, empty segment `segment` in `dir` (the caller has replayed
    /// and removed older ones) and, with `sync = "full"`, the syncer thread.
    /// Events whose chain head is not in memory go to `slow_lane`.
    pub fn open(
        dir: &Path,
        segment: u64,
        opts: JournalOptions,
        slow_lane: mpsc::UnboundedSender<SlowEvent>,
    ) -> std::io::Result<Arc<Journal>> {
        let file = create_segment(dir, segment, opts.sync)?;
        // Spares left by an earlier run are not trusted; new ones are made.
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(SPARE_PREFIX) && name.ends_with(SPARE_SUFFIX) {
                std::fs::remove_file(dir.join(&*name))?;
            }
        }
        let journal = Arc::new_cyclic(|me| Journal {
            me: me.clone(),
            dir: dir.to_owned(),
            state: Mutex::new(State {
                file: Arc::new(file),
                pos: Pos { segment, offset: 0 },
                capacity: opts.max_segment_bytes,
                preallocated: false,
                spare: None,
                spare_busy: false,
                written_bytes: 0,
                heads: HashMap::new(),
                slow: HashMap::new(),
                slow_lane: Some(slow_lane),
                pending: Vec::with_capacity(64 * 1024),
                sync_requested: false,
                stopping: false,
                poisoned: None,
            }),
            sync_wanted: Condvar::new(),
            durable: watch::Sender::new(Durable {
                upto: Pos { segment, offset: 0 },
                error: None,
            }),
            written: Notify::new(),
            indexed_bytes: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            syncer: Mutex::new(None),
            metrics: Metrics::register(),
            opts,
        });
        let j = journal.clone();
        let handle = std::thread::Builder::new()
            .name("airlock-journal".into())
            .spawn(move || j.background())?;
        *journal.syncer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        if journal.opts.sync == SyncMode::Full {
            let first = FIRST_SPARE_BYTES.min(journal.opts.max_segment_bytes);
            journal.prepare_spare(&mut journal.lock(), first);
        }
        Ok(journal)
    }

    /// Starts the helper thread that writes the next preallocated segment,
    /// unless a spare is ready or on its way. It hands the file over under
    /// the lock; the next write then switches to it if the current segment
    /// is a plain one.
    fn prepare_spare(&self, st: &mut State, size: u64) {
        if st.spare_busy || st.spare.is_some() || st.stopping {
            return;
        }
        st.spare_busy = true;
        let me = self.me.clone();
        let path = self.dir.join(format!(
            "{SPARE_PREFIX}{}-{}{SPARE_SUFFIX}",
            std::process::id(),
            SPARE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let spawned = std::thread::Builder::new()
            .name("airlock-journal-spare".into())
            .spawn(move || {
                let made = preallocate(&path, size);
                let Some(journal) = me.upgrade() else {
                    let _ = std::fs::remove_file(&path);
                    return;
                };
                let mut st = journal.lock();
                match made {
                    Ok(file) if !st.stopping && st.poisoned.is_none() => {
                        st.spare = Some((file, size, path));
                        st.spare_busy = false;
                        drop(st);
                        // For waiters on state changes (tests); the syncer
                        // rechecks its own condition and sleeps again.
                        journal.sync_wanted.notify_all();
                    }
                    Ok(_) => {
                        let _ = std::fs::remove_file(&path);
                    }
                    Err(e) => {
                        // Plain segments from now on; `spare_busy` stays set,
                        // so this run does not try again.
                        tracing::warn!(error = %e, path = %path.display(), "cannot preallocate an audit journal segment; using growing segments (slower fsyncs)");
                        let _ = std::fs::remove_file(&path);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the journal's preallocation thread");
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave a half-written line
        // recorded as written (the position moves only after the write), so
        // the state stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The end of what has been written so far.
    pub fn written_pos(&self) -> Pos {
        self.lock().pos
    }

    pub fn is_open(&self) -> bool {
        let st = self.lock();
        st.slow_lane.is_some() && st.poisoned.is_none()
    }

    /// Successful writes to segment files so far.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Called by the indexer after each commit.
    pub fn add_indexed_bytes(&self, n: u64) {
        self.indexed_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Chains and encodes one event (or queues it in the slow lane); it is
    /// written with the next write, or now by [`Journal::write_through`]
    /// with the returned mark. With `sync = "full"` the caller then waits
    /// for [`Journal::wait_durable`].
    pub fn append(&self, ev: PendingEvent) -> Appended {
        let started = std::time::Instant::now();
        let mut st = self.lock();
        let Some(lane) = &st.slow_lane else {
            drop(st);
            self.metrics.errors.increment(1);
            return Appended::Refused("the audit store is closed".into());
        };
        if let Err(refused) = self.admissible(&st) {
            drop(st);
            self.metrics.errors.increment(1);
            return Appended::Refused(refused);
        }
        let head = match st.heads.get(&ev.session_id) {
            _ if st.slow.contains_key(&ev.session_id) => None,
            Some(h) => Some(h.clone()),
            None if ev.starts_chain() => Some(Head::genesis()),
            None => None,
        };
        let Some(prev) = head else {
            let (ack, outcome) = oneshot::channel();
            let sid = ev.session_id.clone();
            if lane.send((ev, ack)).is_err() {
                return Appended::Refused("the audit store is closed".into());
            }
            *st.slow.entry(sid).or_default() += 1;
            return Appended::Queued(outcome);
        };
        let before = st.pos;
        let result = self.write_event(&mut st, &ev, prev, true);
        let end = st.written_bytes + st.pending.len() as u64;
        drop(st);
        match result {
            Ok(pos) => {
                self.wrote(started, pos != before);
                Appended::Encoded(end)
            }
            Err(e) => {
                self.metrics.errors.increment(1);
                Appended::Refused(e)
            }
        }
    }

    /// The slow lane's append: `stored` is the head read from SQLite after
    /// the index caught up (a head in memory, if any, is newer and wins).
    pub fn append_slow(&self, ev: &PendingEvent, stored: Head) -> Result<Pos, String> {
        let started = std::time::Instant::now();
        let mut st = self.lock();
        if let Some(n) = st.slow.get_mut(&ev.session_id) {
            *n -= 1;
            if *n == 0 {
                st.slow.remove(&ev.session_id);
            }
        }
        let result = match self.admissible(&st) {
            Ok(()) => {
                let prev = st.heads.get(&ev.session_id).cloned().unwrap_or(stored);
                self.write_event(&mut st, ev, prev, false)
            }
            Err(refused) => Err(refused),
        };
        drop(st);
        match &result {
            Ok(_) => self.wrote(started, true),
            Err(_) => self.metrics.errors.increment(1),
        }
        result
    }

    /// A slow-lane event that failed before reaching [`Journal::append_slow`].
    pub fn slow_failed(&self, session_id: &str) {
        let mut st = self.lock();
        if let Some(n) = st.slow.get_mut(session_id) {
            *n -= 1;
            if *n == 0 {
                st.slow.remove(session_id);
            }
        }
    }

    /// Whether a write may happen now: not poisoned, index not too far behind.
    fn admissible(&self, st: &State) -> Result<(), String> {
        if let Some(err) = &st.poisoned {
            return Err(poisoned(err));
        }
        let behind = (st.written_bytes + st.pending.len() as u64)
            .saturating_sub(self.indexed_bytes.load(Ordering::Relaxed));
        if behind > self.opts.max_unindexed_bytes {
            return Err(format!(
                "the audit store is {} MiB behind indexing the journal; refusing new events until it catches up",
                behind >> 20
            ));
        }
        Ok(())
    }

    /// Metrics after an append, and (if bytes reached the file) a wake-up
    /// for the indexer. Outside the lock.
    fn wrote(&self, started: std::time::Instant, to_file: bool) {
        self.metrics.events.increment(1);
        self.metrics
            .append_seconds
            .record(started.elapsed().as_secs_f64());
        if to_file {
            self.written.notify_one();
        }
    }

    /// Chains `ev` after `prev` and writes it (after any pending lines, in
    /// the same write), or only encodes it when `detached`. Called with the
    /// lock held.
    fn write_event(
        &self,
        st: &mut State,
        ev: &PendingEvent,
        prev: Head,
        detached: bool,
    ) -> Result<Pos, String> {
        let seq = prev.seq + 1;
        let hash = event_hash(&ChainInput {
            prev_hash: &prev.hash,
            session_id: &ev.session_id,
            seq,
            at_us: ev.at_us,
            kind: ev.kind,
            body: &ev.body_json,
        });
        let before = st.pending.len();
        encode_line(&mut st.pending, ev, seq, &prev.hash, &hash);
        if (!detached || st.pending.len() >= PENDING_FLUSH_BYTES)
            && let Err(e) = self.flush_locked(st)
        {
            if detached {
                // Kept pending (the chain already counts it); the next
                // write or the background thread tries again.
                tracing::warn!(error = %e, "writing pending audit events failed; retrying");
            } else {
                // This event is refused; earlier pending lines stay.
                st.pending.truncate(before);
                return Err(e);
            }
        }
        if ev.ends_chain() {
            st.heads.remove(&ev.session_id);
        } else {
            if st.heads.len() >= MAX_CACHED_HEADS {
                st.heads.clear();
            }
            st.heads.insert(ev.session_id.clone(), Head { seq, hash });
        }
        Ok(st.pos)
    }

    /// Writes every pending line at the end of the current segment in one
    /// write, rotating first if it would grow past the limit. On failure the
    /// file is cut back and the lines stay pending.
    fn flush_locked(&self, st: &mut State) -> Result<u64, String> {
        if st.pending.is_empty() {
            return Ok(0);
        }
        let len = st.pending.len() as u64;
        let full = st.pos.offset > 0 && st.pos.offset + len > st.capacity;
        // A plain segment gives way as soon as a preallocated one is ready.
        let upgrade = !st.preallocated && st.spare.is_some();
        if full || upgrade {
            self.rotate(st)?;
        }
        let started = std::time::Instant::now();
        if let Err(e) = st.file.write_all_at(&st.pending, st.pos.offset) {
            // A partial line would corrupt the segment for the indexer and
            // for recovery: cut it off (zero it, in a preallocated segment),
            // or stop writing altogether.
            let undone = if st.preallocated {
                let zeros = vec![0u8; st.pending.len()];
                st.file.write_all_at(&zeros, st.pos.offset)
            } else {
                st.file.set_len(st.pos.offset)
            };
            if let Err(trunc) = undone {
                let msg: Arc<str> =
                    format!("write failed ({e}) and could not be undone ({trunc})").into();
                tracing::error!(error = %msg, "audit journal poisoned");
                // Sessions waiting for an fsync must hear it too.
                self.durable.send_modify(|d| d.error = Some(msg.clone()));
                st.poisoned = Some(msg);
            }
            return Err(format!("cannot write the audit journal: {e}"));
        }
        self.metrics
            .write_seconds
            .record(started.elapsed().as_secs_f64());
        st.pending.clear();
        self.writes.fetch_add(1, Ordering::Relaxed);
        st.pos.offset += len;
        st.written_bytes += len;
        if st.preallocated && st.pos.offset >= st.capacity / 2 {
            self.prepare_spare(st, self.opts.max_segment_bytes);
        }
        self.metrics.bytes.increment(len);
        Ok(len)
    }

    /// Makes sure everything appended up to `mark` (from
    /// [`Appended::Encoded`]) is written, writing every pending line in one
    /// write if it is not yet, and returns where the written data ends. A
    /// session thread's sessions that append in the same turn of its
    /// runtime share that one write: the first to get here writes them all.
    pub fn write_through(&self, mark: u64) -> Result<Pos, String> {
        let mut st = self.lock();
        if st.written_bytes >= mark {
            return Ok(st.pos);
        }
        if let Some(err) = &st.poisoned {
            return Err(poisoned(err));
        }
        // A failed write leaves the lines pending (the chains count them):
        // the caller refuses its command and records that, and the lines
        // are written by a later write, with the refusal after them.
        let result = self.flush_locked(&mut st).map(|_| st.pos);
        drop(st);
        if result.is_ok() {
            self.written.notify_one();
        } else {
            self.metrics.errors.increment(1);
        }
        result
    }

    /// Writes pending lines now (readers call this before waiting for the
    /// index, so they see command results at once). Fails if they could
    /// not be written.
    pub fn flush_pending(&self) -> Result<(), String> {
        let wrote = {
            let mut st = self.lock();
            self.flush_locked(&mut st)?
        };
        if wrote > 0 {
            self.written.notify_one();
        }
        Ok(())
    }

    /// Seals the current segment and starts the next. With `sync = "full"`
    /// the sealed segment is synced here, so the syncer only ever has to
    /// sync the current file.
    fn rotate(&self, st: &mut State) -> Result<(), String> {
        let fail = |st: &mut State, what: String| {
            let msg: Arc<str> = what.into();
            tracing::error!(error = %msg, "audit journal poisoned");
            st.poisoned = Some(msg.clone());
            self.durable.send_modify(|d| d.error = Some(msg.clone()));
            format!("audit journal failed: {msg}")
        };
        if self.opts.sync == SyncMode::Full
            && let Err(e) = st.file.sync_data()
        {
            return Err(fail(st, format!("fsync of a sealed segment failed: {e}")));
        }
        let next = st.pos.segment + 1;
        let segment = match st.spare.take() {
            // A link, not a rename: it never replaces an existing segment.
            Some((file, size, path)) => {
                match std::fs::hard_link(&path, segment_path(&self.dir, next)) {
                    Ok(()) => {
                        let _ = std::fs::remove_file(&path);
                        if let Err(e) = sync_dir(&self.dir) {
                            return Err(fail(
                                st,
                                format!("cannot make a new segment durable: {e}"),
                            ));
                        }
                        Ok((file, size, true))
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&path);
                        tracing::warn!(error = %e, "cannot use the preallocated journal segment; starting a growing one");
                        create_segment(&self.dir, next, self.opts.sync)
                            .map(|f| (f, self.opts.max_segment_bytes, false))
                    }
                }
            }
            None => create_segment(&self.dir, next, self.opts.sync)
                .map(|f| (f, self.opts.max_segment_bytes, false)),
        };
        match segment {
            Ok((file, capacity, preallocated)) => {
                st.file = Arc::new(file);
                st.capacity = capacity;
                st.preallocated = preallocated;
                st.pos = Pos {
                    segment: next,
                    offset: 0,
                };
                if !preallocated && self.opts.sync == SyncMode::Full {
                    self.prepare_spare(st, self.opts.max_segment_bytes);
                }
                if self.opts.sync == SyncMode::Full {
                    // Everything in the sealed segment is durable now.
                    self.durable.send_modify(|d| {
                        d.upto = d.upto.max(Pos {
                            segment: next,
                            offset: 0,
                        })
                    });
                }
                Ok(())
            }
            Err(e) => Err(fail(st, format!("cannot start a new segment: {e}"))),
        }
    }

    /// Waits until a spare segment is ready (true) or its preparation gave
    /// up (false).
    #[cfg(test)]
    pub(crate) fn spare_settled(&self) -> bool {
        let st = self
            .sync_wanted
            .wait_while(self.lock(), |st| st.spare.is_none() && st.spare_busy)
            .unwrap_or_else(|e| e.into_inner());
        st.spare.is_some()
    }

    /// Resolves once everything up to `pos` is on disk (immediately with
    /// `sync = "normal"`).
    pub async fn wait_durable(&self, pos: Pos) -> Result<(), String> {
        if self.opts.sync == SyncMode::Normal {
            return Ok(());
        }
        if self.durable.borrow().upto >= pos {
            return Ok(());
        }
        // Set under the lock, so the syncer cannot miss it between its
        // check and its wait.
        self.lock().sync_requested = true;
        self.sync_wanted.notify_one();
        let mut rx = self.durable.subscribe();
        let state = rx
            .wait_for(|d| d.upto >= pos || d.error.is_some())
            .await
            .map_err(|_| "the audit journal stopped".to_owned())?;
        if state.upto >= pos {
            Ok(())
        } else {
            Err(format!(
                "the audit journal could not be synced: {}",
                state.error.as_deref().unwrap_or("unknown error")
            ))
        }
    }

    /// The background thread: writes pending lines every [`TICK`], and with
    /// `sync = "full"` syncs the current segment whenever somebody waits for
    /// something written past the last sync (one sync covers everything
    /// written before it), and within a tick for writes nobody waited for.
    fn background(&self) {
        let full = self.opts.sync == SyncMode::Full;
        let mut synced = self.durable.borrow().upto;
        loop {
            let (file, target) = {
                let mut st = self.lock();
                loop {
                    if st.poisoned.is_some() {
                        return;
                    }
                    if st.stopping {
                        if let Err(e) = self.flush_locked(&mut st) {
                            tracing::error!(error = %e, "audit events still pending at close were lost");
                        }
                        if !full || st.pos <= synced {
                            return;
                        }
                        break;
                    }
                    if full && st.pos > synced && st.sync_requested {
                        break;
                    }
                    let (guard, waited) = self
                        .sync_wanted
                        .wait_timeout(st, TICK)
                        .unwrap_or_else(|e| e.into_inner());
                    st = guard;
                    if waited.timed_out() {
                        if matches!(self.flush_locked(&mut st), Ok(n) if n > 0) {
                            self.written.notify_one();
                        }
                        if full && st.pos > synced {
                            break;
                        }
                    }
                }
                st.sync_requested = false;
                (st.file.clone(), st.pos)
            };
            let started = std::time::Instant::now();
            match file.sync_data() {
                Ok(()) => {
                    self.metrics
                        .sync_seconds
                        .record(started.elapsed().as_secs_f64());
                    synced = target;
                    self.durable.send_modify(|d| d.upto = d.upto.max(target));
                }
                Err(e) => {
                    let msg: Arc<str> = format!("fdatasync failed: {e}").into();
                    tracing::error!(error = %msg, "audit journal poisoned; refusing every command from now on");
                    self.lock().poisoned = Some(msg.clone());
                    self.durable.send_modify(|d| d.error = Some(msg));
                    return;
                }
            }
        }
    }

    /// Refuses new appends from now on; the slow lane drains what it has.
    pub fn stop_accepting(&self) {
        self.lock().slow_lane = None;
    }

    /// After [`Journal::stop_accepting`] and the slow lane's end: makes what
    /// was written durable and stops the syncer. Idempotent.
    pub async fn close(self: &Arc<Self>) {
        {
            let mut st = self.lock();
            st.slow_lane = None;
            st.stopping = true;
            if let Some((_, _, path)) = st.spare.take() {
                let _ = std::fs::remove_file(path);
            }
        }
        self.sync_wanted.notify_all();
        let handle = self.syncer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.written.notify_one();
    }
}

/// The refusal of a journal that a failed write or fsync poisoned.
fn poisoned(err: &str) -> String {
    format!("the audit journal failed and refuses writes until Airlock restarts: {err}")
}

/// One journal line: the chained columns of an event as a JSON object, with
/// the event body embedded verbatim (its exact text is what the hash covers).
/// The other fields are ASCII that needs no escaping: a UUID, a snake_case
/// kind, integers and hex digests.
fn encode_line(out: &mut Vec<u8>, ev: &PendingEvent, seq: i64, prev: &str, hash: &str) {
    out.extend_from_slice(b"{\"sid\":\"");
    out.extend_from_slice(ev.session_id.as_bytes());
    out.extend_from_slice(b"\",\"seq\":");
    out.extend_from_slice(decimal(seq, &mut [0; 20]));
    out.extend_from_slice(b",\"at\":");
    out.extend_from_slice(decimal(ev.at_us, &mut [0; 20]));
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(ev.kind.as_bytes());
    out.extend_from_slice(b"\",\"prev\":\"");
    out.extend_from_slice(prev.as_bytes());
    out.extend_from_slice(b"\",\"hash\":\"");
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(b"\",\"body\":");
    out.extend_from_slice(ev.body_json.as_bytes());
    out.extend_from_slice(b"}\n");
}

/// A journal line read back.
#[derive(Debug, Deserialize)]
pub(crate) struct Line<'a> {
    pub sid: &'a str,
    pub seq: i64,
    pub at: i64,
    pub kind: &'a str,
    pub prev: &'a str,
    pub hash: &'a str,
    #[serde(borrow)]
    pub body: &'a RawValue,
}

/// Splits `buf` into complete lines and parses at most `limit` of them.
/// Returns the lines and how many bytes they span; an unterminated tail is
/// left for later. A line that does not parse is an error carrying its
/// offset within `buf`.
pub(crate) fn parse_lines(
    buf: &[u8],
    limit: usize,
) -> Result<(Vec<Line<'_>>, usize), (usize, String)> {
    let mut lines = Vec::new();
    let mut at = 0;
    while lines.len() < limit
        && let Some(nl) = memchr::memchr(b'\n', &buf[at..])
    {
        let raw = &buf[at..at + nl];
        match serde_json::from_slice::<Line<'_>>(raw) {
            Ok(line) => lines.push(line),
            Err(e) => return Err((at, e.to_string())),
        }
        at += nl + 1;
    }
    Ok((lines, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_pipeline::record::EventBody;

    fn pending(sid: &str, body: EventBody) -> PendingEvent {
        PendingEvent {
            session_id: sid.to_owned(),
            at_us: 7,
            kind: body.kind(),
            body_json: serde_json::to_string(&body).unwrap(),
        }
    }

    fn end() -> EventBody {
        EventBody::SessionEnd {
            bytes_from_client: 1,
            bytes_to_client: 2,
            commands: 0,
            reason: "done \"quoted\"\nnewline".into(),
        }
    }

    #[test]
    fn lines_round_trip_with_the_body_verbatim() {
        let ev = pending("s-1", end());
        let mut buf = Vec::new();
        encode_line(&mut buf, &ev, 3, GENESIS, "abc");
        assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), 1);
        buf.extend_from_slice(b"{\"sid\":\"torn");
        let (lines, used) = parse_lines(&buf, usize::MAX).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(used, buf.len() - "{\"sid\":\"torn".len());
        let l = &lines[0];
        assert_eq!((l.sid, l.seq, l.at, l.kind), ("s-1", 3, 7, "session_end"));
        assert_eq!((l.prev, l.hash), (GENESIS, "abc"));
        assert_eq!(l.body.get(), ev.body_json);
    }

    #[test]
    fn a_garbled_line_is_reported_at_its_offset() {
        let ev = pending("s-1", end());
        let mut buf = Vec::new();
        encode_line(&mut buf, &ev, 1, GENESIS, "abc");
        let first = buf.len();
        buf.extend_from_slice(b"not json\n");
        assert_eq!(parse_lines(&buf, usize::MAX).unwrap_err().0, first);
    }

    /// Writes an appended event now; where the written data ends.
    fn written(j: &Journal, a: Appended) -> Pos {
        j.write_through(encoded(a)).unwrap()
    }

    fn encoded(a: Appended) -> u64 {
        match a {
            Appended::Encoded(mark) => mark,
            other => panic!("expected an encoded event, got {other:?}"),
        }
    }

    fn open(
        dir: &Path,
        max_segment_bytes: u64,
        max_unindexed_bytes: u64,
    ) -> (Arc<Journal>, mpsc::UnboundedReceiver<SlowEvent>) {
        open_at(
            dir,
            1,
            SyncMode::Normal,
            max_segment_bytes,
            max_unindexed_bytes,
        )
    }

    /// A journal starting at `segment`, and its slow lane.
    fn open_at(
        dir: &Path,
        segment: u64,
        sync: SyncMode,
        max_segment_bytes: u64,
        max_unindexed_bytes: u64,
    ) -> (Arc<Journal>, mpsc::UnboundedReceiver<SlowEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let opts = JournalOptions {
            sync,
            max_segment_bytes,
            max_unindexed_bytes,
        };
        (Journal::open(dir, segment, opts, tx).unwrap(), rx)
    }

    fn start() -> EventBody {
        EventBody::SessionStart {
            identity: "a".into(),
            identity_kind: "agent".into(),
            connection: "c".into(),
            protocol: "postgres".into(),
            client_addr: "x".into(),
            application_name: None,
            tls: false,
        }
    }

    #[test]
    fn appends_chain_and_rotate() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 600, u64::MAX);
        let p1 = written(&j, j.append(pending("s", start())));
        let p2 = written(&j, j.append(pending("s", start())));
        let p3 = written(&j, j.append(pending("s", start())));
        assert!(p1 < p2 && p2 < p3);
        assert!(p3.segment > 1, "rotated past 600 bytes: {p3:?}");
        assert_eq!(list_segments(dir.path()).unwrap().len() as u64, p3.segment);
        let mut seqs = Vec::new();
        for n in list_segments(dir.path()).unwrap() {
            let data = std::fs::read(segment_path(dir.path(), n)).unwrap();
            let (lines, used) = parse_lines(&data, usize::MAX).unwrap();
            assert_eq!(used, data.len());
            seqs.extend(lines.iter().map(|l| l.seq));
        }
        assert_eq!(seqs, [1, 2, 3], "the chain continues across segments");
    }

    #[test]
    fn a_session_without_a_head_goes_to_the_slow_lane_and_keeps_its_order() {
        let dir = tempfile::tempdir().unwrap();
        let (j, mut lane) = open(dir.path(), 1 << 20, u64::MAX);
        written(&j, j.append(pending("s", start())));
        written(&j, j.append(pending("s", end())));
        // Ended: its head left memory, so the next event is queued.
        let late = PendingEvent {
            session_id: "s".into(),
            at_us: 8,
            kind: "approval_decided",
            body_json: "{}".into(),
        };
        assert!(matches!(j.append(late), Appended::Queued(_)));
        // A later event of the same session queues behind it even though
        // the first one will have put a head back by then.
        assert!(matches!(
            j.append(pending("s", start())),
            Appended::Queued(_)
        ));
        // Other sessions are not held up.
        written(&j, j.append(pending("t", start())));
        let (first, _ack) = lane.try_recv().unwrap();
        let pos = j
            .append_slow(
                &first,
                Head {
                    seq: 2,
                    hash: "h".into(),
                },
            )
            .unwrap();
        let (second, _ack) = lane.try_recv().unwrap();
        j.append_slow(&second, Head::genesis()).unwrap();
        assert!(pos.offset > 0);
        let data = std::fs::read(segment_path(dir.path(), 1)).unwrap();
        let (lines, _) = parse_lines(&data, usize::MAX).unwrap();
        let s: Vec<(i64, &str)> = lines
            .iter()
            .filter(|l| l.sid == "s")
            .map(|l| (l.seq, l.prev))
            .collect();
        assert_eq!(s[2], (3, "h"), "continues from the stored head");
        assert_eq!(s[3].0, 4, "the in-memory head wins over a stale one");
        // Drained: the session is back on the fast path.
        assert!(j.lock().slow.is_empty());
        written(&j, j.append(pending("s", start())));
    }

    fn result_of(sid: &str) -> PendingEvent {
        PendingEvent {
            session_id: sid.into(),
            at_us: 9,
            kind: "command_result",
            body_json: "{}".into(),
        }
    }

    #[test]
    fn detached_events_are_written_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 1 << 20, u64::MAX);
        let seg = segment_path(dir.path(), 1);
        let first = written(&j, j.append(pending("s", start())));
        let len = std::fs::metadata(&seg).unwrap().len();
        assert_eq!(first.offset, len);
        encoded(j.append(result_of("s")));
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            len,
            "not written yet"
        );
        assert_eq!(j.written_pos(), first, "the indexer does not see it yet");
        written(&j, j.append(pending("t", start())));
        let data = std::fs::read(&seg).unwrap();
        let (lines, _) = parse_lines(&data, usize::MAX).unwrap();
        let order: Vec<(&str, i64)> = lines.iter().map(|l| (l.sid, l.seq)).collect();
        assert_eq!(
            order,
            [("s", 1), ("s", 2), ("t", 1)],
            "in call order, chained"
        );
        encoded(j.append(result_of("t")));
        j.flush_pending().unwrap();
        let data = std::fs::read(&seg).unwrap();
        assert_eq!(parse_lines(&data, usize::MAX).unwrap().0.len(), 4);
        assert_eq!(j.written_pos().offset, data.len() as u64);
    }

    #[test]
    fn one_write_through_writes_everything_encoded_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 1 << 20, u64::MAX);
        let seg = segment_path(dir.path(), 1);
        let marks: Vec<u64> = ["a", "b", "c"]
            .iter()
            .map(|sid| encoded(j.append(pending(sid, start()))))
            .collect();
        assert!(marks[0] < marks[1] && marks[1] < marks[2]);
        assert_eq!(
            std::fs::metadata(&seg).unwrap().len(),
            0,
            "nothing written yet"
        );
        // The first caller's write takes the later lines along.
        let pos = j.write_through(marks[0]).unwrap();
        let data = std::fs::read(&seg).unwrap();
        assert_eq!(pos.offset, data.len() as u64);
        assert_eq!(data.len() as u64, marks[2]);
        let sids: Vec<&str> = parse_lines(&data, usize::MAX)
            .unwrap()
            .0
            .iter()
            .map(|l| l.sid)
            .collect();
        assert_eq!(sids, ["a", "b", "c"]);
        // The others find theirs written: no second write.
        let bytes_before = j.lock().written_bytes;
        assert_eq!(j.write_through(marks[2]).unwrap(), pos);
        assert_eq!(j.write_through(marks[1]).unwrap(), pos);
        assert_eq!(j.lock().written_bytes, bytes_before);
        assert_eq!(std::fs::read(&seg).unwrap(), data);
    }

    #[test]
    fn a_poisoned_journal_refuses_to_write_through() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 1 << 20, u64::MAX);
        let mark = encoded(j.append(pending("a", start())));
        j.lock().poisoned = Some("disk on fire".into());
        let err = j.write_through(mark).unwrap_err();
        assert!(err.contains("disk on fire"), "{err}");
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            0
        );
    }

    /// A write that fails and cannot be undone poisons the journal: every
    /// caller hears it, including one waiting for an fsync, and so does a
    /// reader flushing pending lines (the slow lane reads chain heads only
    /// after such a flush).
    #[tokio::test]
    async fn a_write_that_cannot_be_undone_fails_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open_at(dir.path(), 1, SyncMode::Full, 1 << 20, u64::MAX);
        let first = written(&j, j.append(pending("a", start())));
        let mark = encoded(j.append(pending("b", start())));
        {
            // A read-only handle: the write fails and so does the undo.
            let mut st = j.lock();
            st.spare = None;
            st.spare_busy = true;
            st.file = Arc::new(File::open(segment_path(dir.path(), 1)).unwrap());
        }
        assert!(j.write_through(mark).is_err());
        assert!(j.lock().poisoned.is_some());
        assert!(j.flush_pending().is_err(), "pending lines are reported");
        // The bound only turns a hang (the bug this guards against) into a
        // failure.
        let waited = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            j.wait_durable(Pos {
                segment: first.segment,
                offset: first.offset + 1,
            }),
        )
        .await
        .expect("a waiter for an fsync of a poisoned journal must not hang");
        assert!(waited.is_err(), "a waiter for an fsync hears it too");
        assert!(matches!(
            j.append(pending("c", start())),
            Appended::Refused(_)
        ));
    }

    /// The data of a segment: up to the first NUL where a line would start.
    fn segment_data(dir: &Path, n: u64) -> Vec<u8> {
        let mut data = std::fs::read(segment_path(dir, n)).unwrap();
        let mut at = 0;
        while at < data.len() && data[at] != 0 {
            at += memchr::memchr(b'\n', &data[at..]).map_or(data.len() - at, |i| i + 1);
        }
        data.truncate(at);
        data
    }

    #[test]
    fn full_sync_writes_over_preallocated_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open_at(dir.path(), 1, SyncMode::Full, 4096, u64::MAX);
        assert!(j.spare_settled(), "a spare is prepared at open");
        let spare = j.lock().spare.as_ref().map(|s| s.2.clone()).unwrap();
        assert_eq!(std::fs::metadata(&spare).unwrap().len(), 4096);
        // The first write switches from the (empty) plain segment to it.
        let first = written(&j, j.append(pending("s", start())));
        assert_eq!(first.segment, 2);
        assert!(!spare.exists(), "linked into place, its own name gone");
        assert_eq!(
            std::fs::metadata(segment_path(dir.path(), 1))
                .unwrap()
                .len(),
            0
        );
        let seg2 = segment_path(dir.path(), 2);
        assert_eq!(
            std::fs::metadata(&seg2).unwrap().len(),
            4096,
            "size never changes"
        );
        let raw = std::fs::read(&seg2).unwrap();
        assert!(
            raw[first.offset as usize..].iter().all(|&b| b == 0),
            "the tail is zeros"
        );

        // Past half of it the next spare is made; past its end, rotation.
        let mut last = first;
        while last.segment == 2 {
            last = written(&j, j.append(pending("s", start())));
        }
        assert_eq!(last.segment, 3);
        let mut seqs = Vec::new();
        for n in 1..=3 {
            let data = segment_data(dir.path(), n);
            let (lines, used) = parse_lines(&data, usize::MAX).unwrap();
            assert_eq!(used, data.len());
            seqs.extend(lines.iter().map(|l| l.seq));
        }
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "one unbroken chain"
        );
        assert_eq!(segment_data(dir.path(), 3).len() as u64, last.offset);
    }

    /// Two journals on one directory (only possible inside one process: the
    /// store's lock keeps other processes out): one never replaces a
    /// segment the other writes; it refuses instead.
    #[test]
    fn a_spare_never_replaces_an_existing_segment() {
        let dir = tempfile::tempdir().unwrap();
        // The other journal writes segment 2 (`normal`: no spare of its own).
        let (j2, _lane2) = open_at(dir.path(), 2, SyncMode::Normal, 1 << 20, u64::MAX);
        assert_eq!(written(&j2, j2.append(pending("b", start()))).segment, 2);
        let before = std::fs::read(segment_path(dir.path(), 2)).unwrap();
        // This one has a spare ready and moves on to segment 2 at its first
        // write: the name is taken, so it refuses rather than replace it.
        let (j1, _lane1) = open_at(dir.path(), 1, SyncMode::Full, 4096, u64::MAX);
        assert!(j1.spare_settled());
        let mark = encoded(j1.append(pending("a", start())));
        assert!(j1.write_through(mark).is_err(), "the write is refused");
        assert_eq!(std::fs::read(segment_path(dir.path(), 2)).unwrap(), before);
    }

    #[test]
    fn a_closed_journal_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 1 << 20, u64::MAX);
        j.stop_accepting();
        assert!(!j.is_open());
        assert!(matches!(
            j.append(pending("t", start())),
            Appended::Refused(m) if m.contains("closed")
        ));
    }

    #[test]
    fn too_much_unindexed_data_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _lane) = open(dir.path(), 1 << 20, 100);
        written(&j, j.append(pending("a", start())));
        let refused = j.append(pending("b", start()));
        assert!(matches!(refused, Appended::Refused(m) if m.contains("behind")));
        j.add_indexed_bytes(10_000);
        written(&j, j.append(pending("b", start())));
    }
}
