//! Session threads: the threads client sessions run on, one single-threaded
//! Tokio runtime each (thread-per-core).
//!
//! A session's two relay halves, its upstream socket and its timers all live
//! on one thread, which blocks only in its own `epoll_wait`. On Tokio's
//! work-stealing runtime, every wake-up of a session also woke a second,
//! idle worker to look for work, so at low concurrency threads woke each
//! other (futex) about twice per statement: measured, 20–30 % more gateway
//! CPU per statement at one client and ~10 µs more latency, for no gain at
//! sixteen. The price: a session that computes for long (a huge statement to
//! parse, a large result to mask) delays the others on its thread instead of
//! having them stolen by an idle one; new sessions go to the thread with the
//! fewest live sessions.
//!
//! Everything sessions share (the pipeline, the store, the approval broker,
//! cancel keys) uses runtime-independent primitives (`Arc`, mutexes, Tokio
//! sync types), so a session may wait on work done by the main runtime.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::{Builder, Handle};
use tokio::sync::{oneshot, watch};

/// How long a stopping thread waits for blocking work its sessions started.
const BLOCKING_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// A fixed set of session threads.
pub struct SessionThreads {
    threads: Vec<SessionThread>,
    /// Live sessions on all threads, for [`SessionThreads::drained`].
    total: Arc<watch::Sender<usize>>,
}

struct SessionThread {
    handle: Handle,
    live: Arc<AtomicUsize>,
    stop: Mutex<Option<oneshot::Sender<()>>>,
    join: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl SessionThreads {
    /// Starts `count` threads (at least one), named `{name}-{i}`.
    pub fn start(name: &str, count: usize) -> io::Result<SessionThreads> {
        let mut threads = Vec::with_capacity(count.max(1));
        for i in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            let join = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    // Runs the spawned sessions until told to stop (or until
                    // the owner is gone); dropping the runtime then drops
                    // the sessions still on it, closing their sockets.
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                    // Not a plain drop, which would wait without limit for
                    // blocking work still running (a DNS lookup for an
                    // upstream or a cancel).
                    runtime.shutdown_timeout(BLOCKING_GRACE);
                })?;
            threads.push(SessionThread {
                handle,
                live: Arc::new(AtomicUsize::new(0)),
                stop: Mutex::new(Some(stop)),
                join: Mutex::new(Some(join)),
            });
        }
        Ok(SessionThreads {
            threads,
            total: Arc::new(watch::Sender::new(0)),
        })
    }

    /// Live sessions per thread, in thread order.
    pub fn live(&self) -> Vec<usize> {
        self.threads
            .iter()
            .map(|t| t.live.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs the session `make` builds on the thread with the fewest live
    /// sessions. `make` is called on that thread, so it may register sockets and timers
    /// there (a `tokio::net::TcpStream` belongs to the runtime it was
    /// created on).
    pub fn spawn<F, Fut>(&self, make: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let thread = self
            .threads
            .iter()
            .min_by_key(|t| t.live.load(Ordering::Relaxed))
            .expect("at least one session thread");
        let live = LiveGuard::enter(&thread.live, &self.total);
        // The future is built on the target thread (see above).
        thread.handle.spawn(async move {
            let _live = live;
            make().await;
        });
    }

    /// Resolves true once no session is live, or false after `within`.
    pub async fn drained(&self, within: std::time::Duration) -> bool {
        let mut rx = self.total.subscribe();
        tokio::time::timeout(within, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }

    /// Stops every thread, dropping the sessions still running on them, and
    /// waits for the threads to end. Later `spawn`s are dropped unrun.
    /// Blocks; call it off the async workers. A second call returns at once.
    pub fn stop(&self) {
        self.signal_stop();
        for t in &self.threads {
            let join = t.join.lock().ok().and_then(|mut j| j.take());
            if let Some(join) = join
                && join.join().is_err()
            {
                tracing::error!("a session thread panicked");
            }
        }
    }

    fn signal_stop(&self) {
        for t in &self.threads {
            drop(t.stop.lock().ok().and_then(|mut s| s.take()));
        }
    }
}

impl Drop for SessionThreads {
    fn drop(&mut self) {
        // Without joining: a drop may happen on an async worker.
        self.signal_stop();
    }
}

/// Counts a session as live on its thread from `spawn` until it ends (or is
/// dropped unpolled when its thread stops).
struct LiveGuard {
    thread: Arc<AtomicUsize>,
    total: Arc<watch::Sender<usize>>,
}

impl LiveGuard {
    fn enter(thread: &Arc<AtomicUsize>, total: &Arc<watch::Sender<usize>>) -> LiveGuard {
        thread.fetch_add(1, Ordering::Relaxed);
        total.send_modify(|n| *n += 1);
        LiveGuard {
            thread: thread.clone(),
            total: total.clone(),
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.thread.fetch_sub(1, Ordering::Relaxed);
        self.total.send_modify(|n| *n -= 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_go_to_the_least_busy_thread_and_stop_with_it() {
        let threads = SessionThreads::start("test-session", 2).unwrap();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let mut releases = Vec::new(); // keeps the four sessions waiting
        let mut names = Vec::new();
        for _ in 0..4 {
            let (release, wait) = oneshot::channel::<()>();
            releases.push(release);
            let started = started_tx.clone();
            threads.spawn(move || async move {
                let name = std::thread::current().name().unwrap().to_owned();
                started.send(name).unwrap();
                let _ = wait.await;
            });
            names.push(started_rx.recv().unwrap());
        }
        assert_eq!(threads.live(), vec![2, 2], "balanced by live sessions");
        names.sort();
        assert_eq!(
            names,
            [
                "test-session-0",
                "test-session-0",
                "test-session-1",
                "test-session-1"
            ]
        );

        // Draining waits for live sessions; none end here, so it gives up.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        assert!(!rt.block_on(threads.drained(std::time::Duration::from_millis(1))));
        drop(releases);
        assert!(
            rt.block_on(threads.drained(std::time::Duration::from_secs(60))),
            "all four ended once released"
        );
        assert_eq!(threads.live(), vec![0, 0]);

        // Stopping drops the sessions still waiting and joins the threads.
        let (dropped_tx, dropped_rx) = std::sync::mpsc::channel::<()>();
        struct OnDrop(std::sync::mpsc::Sender<()>);
        impl Drop for OnDrop {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let guard = OnDrop(dropped_tx);
        let (_never, wait) = oneshot::channel::<()>();
        threads.spawn(move || async move {
            let _guard = guard;
            let _ = wait.await;
        });
        threads.stop();
        dropped_rx.recv().expect("the waiting session was dropped");
    }
}
