//! PostgreSQL adapter: the listener, per-client sessions, the upstream
//! connection, cancel keys, and response tracking.

pub mod cancel;
pub mod catalog;
pub mod masking;
pub mod session;
pub mod tracker;
pub mod upstream;

use std::collections::HashMap;
use std::sync::Arc;

use airlock_pipeline::Pipeline;

use crate::session_threads::SessionThreads;
use metrics::{Counter, Histogram};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub use cancel::CancelRegistry;
pub use upstream::{PgTarget, UpstreamTlsMode};

/// Adapter settings from `[postgres]`.
#[derive(Debug, Clone)]
pub struct PgSettings {
    pub max_message_bytes: usize,
    pub require_tls: bool,
    pub allow_cleartext_without_tls: bool,
    /// From connecting to the password message; then the connection closes.
    pub login_timeout: std::time::Duration,
}

pub(crate) struct Meters {
    pub bytes_from_client: Counter,
    pub bytes_to_client: Counter,
    pub command_seconds: Histogram,
    pub command_errors: Counter,
    pub connections: Counter,
    pub login_timeouts: Counter,
}

impl Meters {
    fn new() -> Self {
        Meters {
            bytes_from_client: metrics::counter!("airlock_bytes_total", "protocol" => "postgres", "direction" => "from_client"),
            bytes_to_client: metrics::counter!("airlock_bytes_total", "protocol" => "postgres", "direction" => "to_client"),
            command_seconds: metrics::histogram!("airlock_command_duration_seconds", "protocol" => "postgres"),
            command_errors: metrics::counter!("airlock_command_errors_total", "protocol" => "postgres"),
            connections: metrics::counter!("airlock_connections_total", "protocol" => "postgres"),
            login_timeouts: metrics::counter!("airlock_login_timeouts_total", "protocol" => "postgres"),
        }
    }
}

/// Everything a PostgreSQL session needs, shared by all sessions.
pub struct PgAdapter {
    pub pipeline: Arc<Pipeline>,
    pub targets: HashMap<String, Arc<PgTarget>>,
    pub tls: Arc<ServerConfig>,
    pub settings: PgSettings,
    pub cancels: CancelRegistry,
    /// Table names for masking rules that name `table.column`.
    pub catalog: catalog::Catalog,
    pub(crate) meters: Meters,
}

impl PgAdapter {
    pub fn new(
        pipeline: Arc<Pipeline>,
        targets: Vec<PgTarget>,
        tls: Arc<ServerConfig>,
        settings: PgSettings,
    ) -> Arc<PgAdapter> {
        Arc::new(PgAdapter {
            pipeline,
            targets: targets
                .into_iter()
                .map(|t| (t.name.clone(), Arc::new(t)))
                .collect(),
            tls,
            settings,
            cancels: CancelRegistry::default(),
            catalog: catalog::Catalog::default(),
            meters: Meters::new(),
        })
    }

    /// Accepts clients until `shutdown` turns true. Each client runs in its
    /// own task on one of the session `threads`; one failing session never
    /// affects another.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        threads: Arc<SessionThreads>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        self.meters.connections.increment(1);
                        // Re-registered on the session's own thread.
                        let tcp = match tcp.into_std() {
                            Ok(tcp) => tcp,
                            Err(e) => {
                                tracing::warn!(client = %peer, error = %e, "cannot hand the connection to a session thread");
                                continue;
                            }
                        };
                        let adapter = self.clone();
                        let stop = shutdown.clone();
                        threads.spawn(move || async move {
                            match TcpStream::from_std(tcp) {
                                Ok(tcp) => session::run(adapter, tcp, peer, stop).await,
                                Err(e) => tracing::warn!(client = %peer, error = %e, "cannot register the connection on its session thread"),
                            }
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => {
                    if *shutdown.borrow() {
                        break;
                    }
                }
            }
        }
    }
}
