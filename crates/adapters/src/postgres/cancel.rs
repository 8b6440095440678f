//! Cancel keys. Clients get the upstream's process id (so `pg_backend_pid()`
//! and NOTIFY sender pids agree with BackendKeyData) but a secret of our own;
//! a CancelRequest is mapped to the upstream's real key, which never leaves
//! the gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Where and how to cancel the upstream backend of one session.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    pub host: String,
    pub port: u16,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Debug)]
struct Entry {
    client_secret: i32,
    upstream: UpstreamKey,
    /// Wakes the session if it is holding a command for approval: a cancel
    /// then withdraws the approval request.
    on_cancel: Arc<Notify>,
}

/// Live sessions' cancel keys, keyed by the pid the client was given.
/// Several upstream servers may reuse a pid, so each pid holds a list.
#[derive(Debug, Default, Clone)]
pub struct CancelRegistry {
    inner: Arc<Mutex<HashMap<i32, Vec<Entry>>>>,
}

/// Removes the key when the session ends.
pub struct CancelGuard {
    registry: CancelRegistry,
    pid: i32,
    client_secret: i32,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.inner.lock()
            && let Some(list) = map.get_mut(&self.pid)
        {
            list.retain(|e| e.client_secret != self.client_secret);
            if list.is_empty() {
                map.remove(&self.pid);
            }
        }
    }
}

impl CancelRegistry {
    /// Registers a session; returns the secret to give the client.
    pub fn register(&self, upstream: UpstreamKey, on_cancel: Arc<Notify>) -> (i32, CancelGuard) {
        let pid = upstream.pid;
        let mut map = match self.inner.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        let list = map.entry(pid).or_default();
        let mut client_secret: i32 = rand::random();
        while list.iter().any(|e| e.client_secret == client_secret) {
            client_secret = rand::random();
        }
        list.push(Entry {
            client_secret,
            upstream,
            on_cancel,
        });
        (
            client_secret,
            CancelGuard {
                registry: self.clone(),
                pid,
                client_secret,
            },
        )
    }

    /// Looks up the upstream key for a client's (pid, secret).
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<UpstreamKey> {
        self.lookup_entry(pid, secret).map(|(k, _)| k)
    }

    fn lookup_entry(&self, pid: i32, secret: i32) -> Option<(UpstreamKey, Arc<Notify>)> {
        let map = self.inner.lock().ok()?;
        let list = map.get(&pid)?;
        let mut found = None;
        for e in list {
            if bool::from(e.client_secret.ct_eq(&secret)) {
                found = Some((e.upstream.clone(), e.on_cancel.clone()));
            }
        }
        found
    }

    /// Forwards a cancel to the upstream, if the key is known. Unknown keys
    /// are ignored silently, as PostgreSQL does.
    pub async fn cancel(&self, pid: i32, secret: i32) -> bool {
        let Some((key, on_cancel)) = self.lookup_entry(pid, secret) else {
            return false;
        };
        // No stored permit: a cancel only affects a command held right now.
        on_cancel.notify_waiters();
        let mut msg = BytesMut::with_capacity(16);
        airlock_wire::build::cancel_request(&mut msg, key.pid, key.secret);
        match TcpStream::connect((key.host.as_str(), key.port)).await {
            Ok(mut s) => {
                let ok = s.write_all(&msg).await.is_ok();
                let _ = s.shutdown().await;
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not reach upstream to forward a cancel request");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: i32) -> UpstreamKey {
        UpstreamKey {
            host: "127.0.0.1".into(),
            port: 5432,
            pid,
            secret: 777,
        }
    }

    #[test]
    fn lookup_needs_the_client_secret_not_the_upstream_one() {
        let reg = CancelRegistry::default();
        let (secret, _guard) = reg.register(key(42), Arc::new(Notify::new()));
        assert_eq!(reg.lookup(42, secret).map(|k| k.secret), Some(777));
        assert!(reg.lookup(42, 777).is_none() || secret == 777);
        assert!(reg.lookup(43, secret).is_none());
    }

    #[test]
    fn guard_removes_key() {
        let reg = CancelRegistry::default();
        let (secret, guard) = reg.register(key(42), Arc::new(Notify::new()));
        drop(guard);
        assert!(reg.lookup(42, secret).is_none());
    }
}
