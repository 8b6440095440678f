//! `airlock serve`: builds the pipeline from config and runs the listeners
//! and the API until a shutdown signal.

use std::path::PathBuf;
use std::sync::Arc;

use airlock_adapters::postgres::{PgAdapter, PgSettings, PgTarget, UpstreamTlsMode};
use airlock_adapters::session_threads::SessionThreads;
use airlock_adapters::tls;
use airlock_control::api::{self, ApiState, ApprovalsApi};
use airlock_control::approvals::{Broker, BrokerSettings};
use airlock_control::config::{Config, LogFormat, SyncSetting, UpstreamTls};
use airlock_control::notify;
use airlock_control::store::{Store, StoreOptions, SyncMode};
use airlock_pipeline::Pipeline;
use airlock_pipeline::classify::ClassifyLimits;
use airlock_pipeline::mask::Masker;
use airlock_pipeline::pipeline::PipelineParts;
use airlock_pipeline::policy::{self, PolicyEngine, PolicySet};
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Sets up logging once: human-readable text, or JSON lines for collectors.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("AIRLOCK_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// A running gateway: where it listens, and how to stop it.
pub struct Running {
    pub api_addr: std::net::SocketAddr,
    pub postgres_addr: Option<std::net::SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    session_threads: Option<Arc<SessionThreads>>,
    store: Store,
}

/// How long a stopping gateway waits for its sessions to end.
/// Longer than the 5 s a session gives its upstream to finish answering
/// once its client half has stopped, so that session's end is recorded.
const SESSION_DRAIN: std::time::Duration = std::time::Duration::from_secs(6);

impl Running {
    /// The line test harnesses and scripts wait for.
    pub fn ready_line(&self) -> String {
        let mut line = format!("airlock ready api={}", self.api_addr);
        if let Some(pg) = self.postgres_addr {
            line.push_str(&format!(" postgres={pg}"));
        }
        line
    }

    /// Stops accepting, ends the sessions, lets the store drain, and returns.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
        }
        // Established sessions saw the same signal: each tells its client
        // (57P01) and records its end, which needs the store still open.
        // Whatever is left after that (a client still in startup) is
        // dropped with its thread.
        if let Some(threads) = self.session_threads {
            if !threads.drained(SESSION_DRAIN).await {
                tracing::warn!(
                    live = ?threads.live(),
                    "sessions still open after {}s of shutdown are dropped",
                    SESSION_DRAIN.as_secs()
                );
            }
            let _ = tokio::task::spawn_blocking(move || threads.stop()).await;
        }
        self.store.close().await;
    }
}

fn load_policy(cfg: &Config) -> anyhow::Result<(PolicySet, Option<PathBuf>)> {
    match &cfg.file.policy.file {
        Some(path) => {
            let set = policy::load_file(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok((set, Some(path.clone())))
        }
        None => Ok((PolicySet::default_pack(), None)),
    }
}

fn pg_target(t: &airlock_control::config::Target) -> anyhow::Result<PgTarget> {
    let (mode, tls_config) = match t.tls {
        UpstreamTls::Disable => (UpstreamTlsMode::Disable, None),
        UpstreamTls::Prefer => (
            UpstreamTlsMode::Prefer,
            Some(tls::client_config_encrypt_only()?),
        ),
        UpstreamTls::Require => (
            UpstreamTlsMode::Require,
            Some(tls::client_config_encrypt_only()?),
        ),
        UpstreamTls::VerifyFull => (
            UpstreamTlsMode::VerifyFull,
            Some(
                tls::client_config_verify(t.ca_file.as_deref()).with_context(|| {
                    format!(
                        "connection '{}': loading the CA for verify-full",
                        t.info.name
                    )
                })?,
            ),
        ),
    };
    Ok(PgTarget {
        name: t.info.name.clone(),
        host: t.host.clone(),
        port: t.port,
        database: t.database.clone(),
        username: t.username.clone(),
        password: t.password.clone(),
        tls: mode,
        tls_config,
        tls_server_name: t.tls_server_name.clone(),
    })
}

/// Raises the soft limit on open files to the hard one. Each session holds
/// two sockets, and the usual soft limit (1024 under systemd) would refuse
/// new clients at about 500 sessions, while the hard limit is far higher.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => {
            tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open files limit")
        }
        Err(e) => {
            tracing::warn!(limit = ?limit.current, error = %e, "cannot raise the open files limit")
        }
    }
}

/// Starts everything the config asks for and returns once all listeners are
/// bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let metrics = api::install_metrics_recorder();
    raise_open_files_limit();
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data_dir {}", cfg.data_dir.display()))?;

    let store = Store::open(
        &cfg.store_url,
        StoreOptions {
            sync: match cfg.file.store.sync {
                SyncSetting::Full => SyncMode::Full,
                SyncSetting::Normal => SyncMode::Normal,
            },
            ..StoreOptions::default()
        },
    )
    .await
    .with_context(|| format!("opening the store {}", cfg.store_url))?;
    let broker = Broker::open(&store, BrokerSettings::from_config(&cfg))
        .await
        .context("opening the approval broker")?;
    // Detached: it ends with the broker, and a delivery in flight at
    // shutdown is simply not retried.
    notify::spawn(&broker, cfg.notify.clone(), &cfg.public_url);

    let (policy_set, policy_path) = load_policy(&cfg)?;
    tracing::info!(version = policy_set.version(), file = ?policy_path, "policy loaded");
    let engine = Arc::new(PolicyEngine::new(policy_set));
    let masker = Masker::new(&cfg.masking).map_err(|e| anyhow::anyhow!("masking: {e}"))?;

    let pipeline = Pipeline::new(PipelineParts {
        identities: cfg.identities.clone(),
        connections: cfg.targets.iter().map(|t| t.info.clone()).collect(),
        policy: engine.clone(),
        audit: Arc::new(store.clone()),
        masker,
        classify_limits: ClassifyLimits::default(),
        // With approvals off, review verdicts refuse instead of holding.
        approvals: cfg.approvals.enabled.then(|| {
            Arc::new(broker.clone()) as Arc<dyn airlock_pipeline::approvals::ApprovalBroker>
        }),
        public_url: cfg.public_url.clone(),
        pending_ttl: cfg.approvals.pending_ttl,
    });

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    if let Some(path) = policy_path {
        let engine = engine.clone();
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            // It never ends by itself; `stop` must not wait for it.
            tokio::select! {
                () = policy::watch_file(engine, path) => {}
                _ = stop.wait_for(|v| *v) => {}
            }
        }));
    }

    let api_listener = TcpListener::bind(cfg.api_listen)
        .await
        .with_context(|| format!("server.api_listen: cannot listen on {}", cfg.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let state = ApiState {
        store: store.clone(),
        identities: Arc::new(arc_swap::ArcSwap::from_pointee(cfg.identities.clone())),
        admin_groups: cfg.file.server.admin_groups.clone(),
        auditor_groups: cfg.file.server.auditor_groups.clone(),
        metrics: Some(metrics),
    };
    let router = api::router_with_approvals(state, ApprovalsApi::from_config(broker.clone(), &cfg));
    let mut api_shutdown = shutdown_rx.clone();
    let api_broker = broker.clone();
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(api_listener, router).with_graceful_shutdown(async move {
            let _ = api_shutdown.wait_for(|v| *v).await;
            // Ends the approval event streams, which would otherwise keep
            // the graceful shutdown waiting for their clients.
            api_broker.close();
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "API server failed");
        }
    }));

    let mut postgres_addr = None;
    let mut session_threads = None;
    if let Some(addr) = cfg.postgres_listen {
        let count = cfg.file.server.session_threads.map_or_else(
            || std::thread::available_parallelism().map_or(2, |n| n.get()),
            usize::from,
        );
        let threads = Arc::new(
            SessionThreads::start("airlock-session", count)
                .context("starting the session threads")?,
        );
        session_threads = Some(threads.clone());
        let server_tls = match (&cfg.file.postgres.tls_cert, &cfg.file.postgres.tls_key) {
            (Some(cert), Some(key)) => tls::server_config_from_files(cert, key)?,
            _ => tls::self_signed_server_config(&cfg.data_dir.join("tls"))?,
        };
        let targets = cfg
            .targets
            .iter()
            .filter(|t| t.info.protocol == airlock_pipeline::model::Protocol::Postgres)
            .map(pg_target)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let adapter = PgAdapter::new(
            pipeline.clone(),
            targets,
            server_tls,
            PgSettings {
                max_message_bytes: cfg.file.postgres.max_message_bytes,
                require_tls: cfg.file.postgres.require_tls,
                allow_cleartext_without_tls: cfg.file.postgres.allow_cleartext_without_tls,
                login_timeout: cfg.postgres_login_timeout,
            },
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listeners.postgres: cannot listen on {addr}"))?;
        postgres_addr = Some(listener.local_addr()?);
        tasks.push(tokio::spawn(adapter.serve(
            listener,
            threads,
            shutdown_rx.clone(),
        )));
    }

    Ok(Running {
        api_addr,
        postgres_addr,
        shutdown: shutdown_tx,
        tasks,
        session_threads,
        store,
    })
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `airlock serve`.
/// `session_threads` (from `--session-threads`) overrides `[server]
/// session_threads`.
pub async fn run(config_path: PathBuf, session_threads: Option<u16>) -> anyhow::Result<()> {
    let mut cfg = Config::load(&config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if session_threads.is_some() {
        cfg.file.server.session_threads = session_threads;
    }
    init_logging(cfg.file.server.log_format);
    let running = start(cfg).await?;
    {
        // The one stdout line scripts wait for; a closed stdout is no error.
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.ready_line());
        let _ = out.flush();
    }
    tracing::info!(api = %running.api_addr, postgres = ?running.postgres_addr, "airlock is serving");
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}
