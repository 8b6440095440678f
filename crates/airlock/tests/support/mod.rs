//! End-to-end test harness for Airlock: real PostgreSQL servers, the real
//! `airlock serve` binary, real clients (`psql`, psycopg, tokio-postgres).
//!
//! Use from an integration test in `crates/airlock/tests/` with `mod support;`.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! let pg = PgCluster::builder().tls(true).start();
//! pg.create_database("shop", SCRAM_USER);
//! let gw = Gateway::start(GatewayConfig::new(&pg));
//! let out = psql(&gw.conninfo("agent", "shop"), "select 1", &[]);
//! assert_eq!(out.expect_success(), "1");
//! assert!(!gw.stderr_contents().contains(pg.password(SCRAM_USER)));
//! ```
//!
//! Everything the harness needs (PostgreSQL server binaries, psql, openssl,
//! python3 with psycopg) is installed by `scripts/test`; a missing tool
//! fails the test with an install hint, never a silent skip.
//!
//! Environment knobs: `AIRLOCK_TEST_PG_BIN` (directory of initdb/pg_ctl/
//! postgres), `AIRLOCK_TEST_PYTHON` (interpreter with psycopg),
//! `AIRLOCK_TEST_KEEP=1` (keep temp dirs), `RUST_LOG` (gateway log level).
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod gateway;
pub mod pg;
pub mod util;
pub mod wire;

pub use client::{
    Output, psql, psql_command, psql_path, psql_script, psql_spawn, python, python_env,
    python_path, require_psycopg, wait_output,
};
pub use gateway::{
    ConnectionSpec, DATA_DIR_PLACEHOLDER, Gateway, GatewayConfig, IdentitySpec, READY_TIMEOUT,
    parse_ready_line, toml_string,
};
pub use pg::{
    CLEARTEXT_USER, MD5_USER, PgCluster, PgClusterBuilder, SCRAM_USER, SUPERUSER, TLS_USER,
    TRUST_USER, TlsFiles, generate_tls, pg_bindir, quote_ident, quote_literal,
};
pub use util::{INSTALL_HINT, free_port, random_hex, wait_until, workspace_root};
pub use wire::{
    PROTOCOL_3_0, exchange, frontend_message, http_get, is_password_request, query_message,
    raw_login, raw_select_1, read_message, sample, send_token, startup_packet,
};

/// The example airlock config (`GatewayConfig::new(&cluster)` renders it),
/// with `{data_dir}` and `{port}` placeholders, for documentation and for
/// tests that want the literal text.
pub const EXAMPLE_CONFIG_TEMPLATE: &str = r#"[server]
api_listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
data_dir = "{data_dir}"

[listeners]
postgres = "127.0.0.1:0"

[[identities]]
name = "agent"
kind = "agent"
groups = ["agents"]
token_env = "AGENT_TOKEN"

[[identities]]
name = "alice"
kind = "human"
groups = ["dba", "reviewers", "admins"]
token_env = "ALICE_TOKEN"

[[connections]]
name = "shop"
protocol = "postgres"
host = "127.0.0.1"
port = {port}
database = "shop"
username = "scram_user"
password_env = "SHOP_DB_PASSWORD"
tls = "prefer"
tags = ["production", "pii"]
"#;

/// A multi-thread tokio runtime for tests that mix blocking harness calls
/// with async clients (`rt().block_on(async { ... })`).
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build tokio runtime")
}

/// Connect with tokio-postgres (no TLS) and drive the connection on the
/// current runtime. Returns the error instead of panicking.
pub async fn tokio_pg_connect(
    conninfo: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}
