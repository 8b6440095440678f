//! The `airlock` binary: the gateway (`serve`), the quick start (`demo`) and
//! the operator CLI that talks to the REST API.

mod cli;
mod demo;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Airlock: a Layer 7 access gateway. Native clients connect through it; it
/// authenticates them, decides every command with policy, holds risky ones
/// for approval, masks sensitive data and records every session.
#[derive(Parser)]
#[command(name = "airlock", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file.
        #[arg(long, short, env = "AIRLOCK_CONFIG", default_value = "airlock.toml")]
        config: PathBuf,
        /// Threads that run client sessions, each with its own event loop
        /// (default: `[server] session_threads`, else one per CPU).
        /// `--worker-threads` is the older name.
        #[arg(long, alias = "worker-threads", env = "AIRLOCK_SESSION_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        session_threads: Option<u16>,
    },
    /// Start a throwaway PostgreSQL with sample PII data and the gateway in
    /// front of it, and print ready-to-paste psql lines. Ctrl-C cleans up.
    Demo(demo::DemoArgs),
    /// Recorded sessions (via the REST API: AIRLOCK_URL, AIRLOCK_TOKEN).
    #[command(subcommand)]
    Sessions(cli::sessions::SessionsCmd),
    /// The tamper-evident audit log (via the REST API).
    #[command(subcommand)]
    Audit(cli::audit::AuditCmd),
    /// Validate policies and explain verdicts (local, no API needed).
    #[command(subcommand)]
    Policy(cli::policy::PolicyCmd),
    /// Approval requests: list, show, approve, reject, watch (via the REST API).
    #[command(subcommand)]
    Approvals(cli::approvals::ApprovalsCmd),
    /// Just-in-time access to a connection: request, list, revoke (via the REST API).
    #[command(subcommand)]
    Access(cli::access::AccessCmd),
}

fn main() -> ExitCode {
    // One TLS provider for the whole process (aws-lc-rs; ring is not built
    // in). reqwest's rustls backend is compiled without a provider of its
    // own and uses this one for any client not given a ready TLS config.
    // An error only means one is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    // Sessions run on threads of their own (`SessionThreads`); this runtime
    // serves the API, the store's background work and the CLI.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve {
                config,
                session_threads,
            } => serve::run(config, session_threads).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Sessions(cmd) => cli::sessions::run(cmd).await,
            Command::Audit(cmd) => cli::audit::run(cmd).await,
            Command::Policy(cmd) => cli::policy::run(cmd).await,
            Command::Approvals(cmd) => cli::approvals::run(cmd).await,
            Command::Access(cmd) => cli::access::run(cmd).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(cli::Failure(code)) = e.downcast_ref::<cli::Failure>() {
                return ExitCode::from(*code);
            }
            eprintln!("airlock: {e:#}");
            ExitCode::from(1)
        }
    }
}
