//! `airlock demo`: a throwaway PostgreSQL (initdb/pg_ctl from the local
//! binaries, run as the `postgres` user when we are root), seeded with a
//! `shop` database that contains PII, and the gateway in front of it with
//! the default policy pack. Ctrl-C stops everything and removes the files.

use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use airlock_control::config::Config;
use anyhow::{Context, bail};
use clap::Args;

use crate::serve;

#[derive(Args)]
pub struct DemoArgs {
    /// Port for the gateway's PostgreSQL listener (a free one if taken).
    #[arg(long, default_value_t = 6432)]
    port: u16,
    /// Port for the API (a free one if taken).
    #[arg(long, default_value_t = 8080)]
    api_port: u16,
    /// Keep the demo's files on exit (prints where they are).
    #[arg(long)]
    keep: bool,
}

const SEED_SQL: &str = include_str!("demo_seed.sql");

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Finds a PostgreSQL server binary: PATH first, then Debian's layout
/// (highest version wins).
fn find_pg_bin(name: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let p = e.path().join("bin").join(name);
            p.is_file().then_some((v, p))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// `preferred` if it is free, else a free ephemeral port (0 = any).
fn free_port(preferred: u16) -> u16 {
    if preferred != 0 && StdListener::bind(("127.0.0.1", preferred)).is_ok() {
        return preferred;
    }
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(preferred)
}

fn random_token() -> String {
    let bytes: [u8; 18] = rand::random();
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Runs a PostgreSQL binary, as `postgres` when we are root (the server
/// refuses to run as root).
fn pg_command(bin: &Path, as_postgres: bool) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.arg("-u").arg("postgres").arg("--").arg(bin);
        c
    } else {
        Command::new(bin)
    }
}

fn run_checked(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

struct Cluster {
    dir: PathBuf,
    pg_ctl: PathBuf,
    as_postgres: bool,
    keep: bool,
}

impl Cluster {
    fn stop(&self) {
        let mut c = pg_command(&self.pg_ctl, self.as_postgres);
        c.arg("-D")
            .arg(self.dir.join("pgdata"))
            .arg("-m")
            .arg("fast")
            .arg("stop");
        let _ = c.stdout(Stdio::null()).stderr(Stdio::null()).status();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Attempts to start PostgreSQL, each on a fresh free port, before giving up:
/// a port found free can be taken by another process before PostgreSQL binds it.
const PG_START_ATTEMPTS: usize = 5;

/// Initialises, starts and seeds the throwaway cluster; returns it, the
/// owner's password and the port it listens on.
fn start_cluster(keep: bool) -> anyhow::Result<(Cluster, String, u16)> {
    let hint = "install PostgreSQL server binaries (Debian: apt-get install postgresql)";
    let initdb = find_pg_bin("initdb").with_context(|| format!("initdb not found; {hint}"))?;
    let pg_ctl = find_pg_bin("pg_ctl").with_context(|| format!("pg_ctl not found; {hint}"))?;
    let psql = find_pg_bin("psql").context("psql not found; install postgresql-client")?;
    let as_postgres = is_root();

    let dir = std::env::temp_dir().join(format!("airlock-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    }
    if as_postgres {
        run_checked(
            {
                let mut c = Command::new("chown");
                c.arg("postgres:").arg(&dir);
                c
            },
            "chown of the demo directory to postgres",
        )?;
    }
    let cluster = Cluster {
        dir: dir.clone(),
        pg_ctl: pg_ctl.clone(),
        as_postgres,
        keep,
    };
    let pgdata = dir.join("pgdata");
    let mut c = pg_command(&initdb, as_postgres);
    c.arg("-D").arg(&pgdata).args([
        "-U",
        "postgres",
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "-E",
        "UTF8",
        "--no-instructions",
    ]);
    run_checked(c, "initdb")?;

    // The port is chosen right before the start (initdb takes a while),
    // and chosen again if another process took it first.
    let log = dir.join("postgres.log");
    let mut attempt = 0;
    let port = loop {
        attempt += 1;
        let port = free_port(0);
        let mut c = pg_command(&pg_ctl, as_postgres);
        c.arg("-D")
            .arg(&pgdata)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1",
                dir.display()
            ))
            .args(["-w", "start"]);
        let started = run_checked(c, "pg_ctl start");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        match started {
            Ok(()) => break port,
            Err(_) if attempt < PG_START_ATTEMPTS && text.contains("could not bind") => {
                let _ = std::fs::remove_file(&log);
            }
            Err(e) => {
                return Err(e.context(format!(
                    "the demo PostgreSQL did not start; its log: {text}"
                )));
            }
        }
    };

    let owner_password = random_token();
    let seed = SEED_SQL.replace("__OWNER_PASSWORD__", &owner_password);
    let mut c = Command::new(&psql);
    c.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&dir)
        .args(["-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c
        .spawn()
        .context("running psql to seed the demo database")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(seed.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "seeding the demo database failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((cluster, owner_password, port))
}

fn demo_config(data_dir: &Path, pg_port: u16, port: u16, api_port: u16) -> String {
    format!(
        r#"
[server]
api_listen = "127.0.0.1:{api_port}"
public_url = "http://127.0.0.1:{api_port}"
data_dir = "{data_dir}"

[listeners]
postgres = "127.0.0.1:{port}"

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

[[identities]]
name = "bob"
kind = "human"
groups = ["dba", "reviewers", "pii-readers"]
token_env = "BOB_TOKEN"

[[connections]]
name = "shop"
protocol = "postgres"
host = "127.0.0.1"
port = {pg_port}
database = "shop"
username = "shop_owner"
password_env = "SHOP_DB_PASSWORD"
tls = "prefer"
tags = ["production", "pii"]

# PII never leaves the gateway unmasked, except for pii-readers (bob).
[[masking]]
name = "pii-columns"
tags = ["pii"]
columns = ["email", "*card*", "ssn", "phone"]
strategy = "partial"

[[masking]]
name = "pii-in-text"
tags = ["pii"]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "aws_access_key", "jwt", "private_key"]
strategy = "redact"
"#,
        data_dir = data_dir.display()
    )
}

/// Prints a line; a closed stdout (the reader went away) is not an error.
fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    serve::init_logging(airlock_control::config::LogFormat::Text);
    let (cluster, owner_password, pg_port) =
        tokio::task::spawn_blocking(move || start_cluster(args.keep))
            .await
            .context("starting the demo PostgreSQL")??;

    // 0: the gateway binds any free port itself (and reports it), so no
    // other process can take it in between.
    let port = if args.port == 0 {
        0
    } else {
        free_port(args.port)
    };
    let api_port = free_port(args.api_port);
    let agent = random_token();
    let alice = random_token();
    let bob = random_token();
    let src = demo_config(&cluster.dir.join("airlock-data"), pg_port, port, api_port);
    let env = |k: &str| match k {
        "AGENT_TOKEN" => Some(agent.clone()),
        "ALICE_TOKEN" => Some(alice.clone()),
        "BOB_TOKEN" => Some(bob.clone()),
        "SHOP_DB_PASSWORD" => Some(owner_password.clone()),
        _ => None,
    };
    let cfg = Config::from_toml(&src, "demo config", &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = serve::start(cfg).await?;
    let pg = running.postgres_addr.map(|a| a.port()).unwrap_or(port);
    let api = format!("http://{}", running.api_addr);
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "airlock".into());

    say(&format!(
        r#"
Airlock demo is running.

  Throwaway PostgreSQL  127.0.0.1:{pg_port}, database "shop" (only the gateway knows its password)
  Gateway (PostgreSQL)  127.0.0.1:{pg}
  API                   {api}

Connect as the AI agent "agent" (reads allowed; writes on production need review;
DROP/TRUNCATE forbidden):
  PGPASSWORD={agent} psql "host=127.0.0.1 port={pg} user=agent dbname=shop"

Connect as "alice", a human DBA and reviewer:
  PGPASSWORD={alice} psql "host=127.0.0.1 port={pg} user=alice dbname=shop"

Connect as "bob", a DBA in pii-readers (sees unmasked values):
  PGPASSWORD={bob} psql "host=127.0.0.1 port={pg} user=bob dbname=shop"

Inspect what was recorded:
  export AIRLOCK_URL={api} AIRLOCK_TOKEN={alice}
  {exe} sessions list
  {exe} audit verify

Things to try as the agent (e-mails, phones, SSNs and cards come back masked):
  SELECT * FROM customers LIMIT 5;
  UPDATE customers SET phone = NULL WHERE id = 1;
  DELETE FROM payments;
  DROP TABLE customers;

Press Ctrl-C to stop; everything is removed."#
    ));
    say(&running.ready_line());
    serve::shutdown_signal().await;
    say("\nstopping...");
    running.stop().await;
    if args.keep {
        say(&format!("demo files kept in {}", cluster.dir.display()));
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}
