//! `Gateway`: the real `airlock serve` binary with a config written by the
//! test, and `GatewayConfig`, a builder for that config.
//!
//! Readiness contract: `airlock serve` prints exactly one line to stdout once
//! every listener is bound:
//!
//! ```text
//! airlock ready api=127.0.0.1:PORT postgres=127.0.0.1:PORT [key=addr ...]
//! ```
//!
//! The test config binds every listener to port 0 and the harness reads the
//! real addresses from that line.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use tempfile::TempDir;

use super::pg::PgCluster;
use super::util::{quote_single, random_hex, tail, toml_str, toml_str_array};

/// How long `airlock serve` may take to print its ready line (or a failing
/// start to exit) before the test fails. Generous: it is a failure guard,
/// not a synchronisation delay.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`Gateway::terminate`] waits after SIGTERM before SIGKILL.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);

/// Placeholder replaced by the gateway's data directory in raw TOML given to
/// [`Gateway::start_toml`] / [`Gateway::start_toml_expect_failure`].
pub const DATA_DIR_PLACEHOLDER: &str = "@DATA_DIR@";

const READY_PREFIX: &str = "airlock ready";

/// Parse the ready line: `airlock ready key=addr key=addr ...`.
/// Returns the listener addresses by key (`api`, `postgres`, ...).
pub fn parse_ready_line(line: &str) -> Result<BTreeMap<String, SocketAddr>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let rest = line
        .strip_prefix(READY_PREFIX)
        .filter(|r| r.is_empty() || r.starts_with(' '))
        .ok_or_else(|| format!("not a ready line (must start with {READY_PREFIX:?}): {line:?}"))?;
    let mut addrs = BTreeMap::new();
    for pair in rest.split_whitespace() {
        let (key, addr) = pair
            .split_once('=')
            .ok_or_else(|| format!("ready line item {pair:?} is not key=addr in {line:?}"))?;
        if key.is_empty() {
            return Err(format!("empty key in {pair:?} in {line:?}"));
        }
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("ready line address {addr:?} for {key:?}: {e} in {line:?}"))?;
        if addr.port() == 0 {
            return Err(format!("{key} reported port 0 in {line:?}"));
        }
        if addrs.insert(key.to_owned(), addr).is_some() {
            return Err(format!("duplicate key {key:?} in {line:?}"));
        }
    }
    if addrs.is_empty() {
        return Err(format!("ready line names no listener: {line:?}"));
    }
    Ok(addrs)
}

/// `NAME` → `NAME` upper-cased with every non-alphanumeric char as `_`.
fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// One `[[identities]]` entry, with the token the harness generated for it.
#[derive(Clone, Debug)]
pub struct IdentitySpec {
    pub name: String,
    pub kind: String,
    pub groups: Vec<String>,
    pub token_env: String,
    pub token: String,
}

impl IdentitySpec {
    /// An identity whose token (random) is passed in `$<NAME>_TOKEN`.
    pub fn new(name: &str, kind: &str, groups: &[&str]) -> Self {
        IdentitySpec {
            name: name.to_owned(),
            kind: kind.to_owned(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            token_env: format!("{}_TOKEN", env_name(name)),
            token: format!("tok-{name}-{}", random_hex(16)),
        }
    }

    pub fn token_env(mut self, env: &str) -> Self {
        self.token_env = env.to_owned();
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = token.to_owned();
        self
    }

    fn render(&self) -> String {
        format!(
            "[[identities]]\nname = {}\nkind = {}\ngroups = {}\ntoken_env = {}\n",
            toml_str(&self.name),
            toml_str(&self.kind),
            toml_str_array(&self.groups),
            toml_str(&self.token_env),
        )
    }
}

/// One `[[connections]]` entry, with the upstream password it passes in its
/// `password_env` variable.
#[derive(Clone, Debug)]
pub struct ConnectionSpec {
    pub name: String,
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password_env: Option<String>,
    pub password: Option<String>,
    pub tls: Option<String>,
    pub tags: Vec<String>,
    /// Extra `key = <raw TOML value>` lines.
    pub extra: Vec<(String, String)>,
}

impl ConnectionSpec {
    /// A PostgreSQL connection named `name` to `database` on `cluster` as
    /// role `username`; the role's password (if it has one) goes in
    /// `$<NAME>_DB_PASSWORD`. `tls = "prefer"`, no tags.
    pub fn postgres(name: &str, cluster: &PgCluster, database: &str, username: &str) -> Self {
        let password = match username {
            super::pg::TRUST_USER => None,
            _ => Some(cluster.password(username).to_owned()),
        };
        ConnectionSpec {
            name: name.to_owned(),
            protocol: "postgres".to_owned(),
            host: cluster.host().to_owned(),
            port: cluster.port(),
            database: database.to_owned(),
            username: username.to_owned(),
            password_env: password
                .as_ref()
                .map(|_| format!("{}_DB_PASSWORD", env_name(name))),
            password,
            tls: Some("prefer".to_owned()),
            tags: Vec::new(),
            extra: Vec::new(),
        }
    }

    /// Upstream TLS mode (`disable`, `prefer`, `require`, `verify-full`, ...).
    pub fn tls(mut self, mode: &str) -> Self {
        self.tls = Some(mode.to_owned());
        self
    }

    /// Leave `tls` out of the rendered entry.
    pub fn no_tls_key(mut self) -> Self {
        self.tls = None;
        self
    }

    pub fn tags(mut self, tags: &[&str]) -> Self {
        self.tags = tags.iter().map(|t| t.to_string()).collect();
        self
    }

    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_owned();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Pass `password` to the gateway in `$env`.
    pub fn password_env(mut self, env: &str, password: &str) -> Self {
        self.password_env = Some(env.to_owned());
        self.password = Some(password.to_owned());
        self
    }

    /// No `password_env` key at all.
    pub fn no_password(mut self) -> Self {
        self.password_env = None;
        self.password = None;
        self
    }

    /// Add `key = value` (value is raw TOML, e.g. `"\"/path/ca.crt\""` or
    /// `true`), e.g. `.set("tls_ca_file", &toml_string(path))`.
    pub fn set(mut self, key: &str, raw_toml_value: &str) -> Self {
        self.extra.push((key.to_owned(), raw_toml_value.to_owned()));
        self
    }

    fn render(&self) -> String {
        let mut s = format!(
            "[[connections]]\nname = {}\nprotocol = {}\nhost = {}\nport = {}\ndatabase = {}\nusername = {}\n",
            toml_str(&self.name),
            toml_str(&self.protocol),
            toml_str(&self.host),
            self.port,
            toml_str(&self.database),
            toml_str(&self.username),
        );
        if let Some(env) = &self.password_env {
            s.push_str(&format!("password_env = {}\n", toml_str(env)));
        }
        if let Some(tls) = &self.tls {
            s.push_str(&format!("tls = {}\n", toml_str(tls)));
        }
        s.push_str(&format!("tags = {}\n", toml_str_array(&self.tags)));
        for (k, v) in &self.extra {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s
    }
}

/// Quote a string as a TOML value (for [`ConnectionSpec::set`],
/// [`GatewayConfig::server_setting`], ...).
pub fn toml_string(value: impl AsRef<str>) -> String {
    toml_str(value.as_ref())
}

/// Builder for the `airlock serve` TOML config plus the environment
/// (tokens, upstream passwords) the gateway is started with.
///
/// [`GatewayConfig::new`] renders the standard example config:
///
/// ```toml
/// [server]
/// api_listen = "127.0.0.1:0"
/// public_url = "http://127.0.0.1:8080"
/// data_dir = "<tempdir>/airlock-data"
///
/// [listeners]
/// postgres = "127.0.0.1:0"
///
/// [[identities]]
/// name = "agent"
/// kind = "agent"
/// groups = ["agents"]
/// token_env = "AGENT_TOKEN"
///
/// [[identities]]
/// name = "alice"
/// kind = "human"
/// groups = ["dba", "reviewers", "admins"]
/// token_env = "ALICE_TOKEN"
///
/// [[connections]]
/// name = "shop"
/// protocol = "postgres"
/// host = "127.0.0.1"
/// port = <cluster port>
/// database = "shop"
/// username = "scram_user"
/// password_env = "SHOP_DB_PASSWORD"
/// tls = "prefer"
/// tags = ["production", "pii"]
/// ```
///
/// It does not create the `shop` database: call
/// `cluster.create_database("shop", "scram_user")`.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub api_listen: String,
    pub public_url: String,
    /// `[server]` extra `key = <raw TOML>` lines.
    pub server_extra: Vec<(String, String)>,
    /// `[listeners]` entries (`postgres` by default), key → address.
    pub listeners: Vec<(String, String)>,
    pub identities: Vec<IdentitySpec>,
    pub connections: Vec<ConnectionSpec>,
    /// Raw TOML appended at the end (whole tables / arrays of tables).
    pub extra_toml: Vec<String>,
    /// Extra environment variables for the gateway process.
    pub env: Vec<(String, String)>,
}

impl GatewayConfig {
    /// The standard example config against `cluster` (see the type docs).
    pub fn new(cluster: &PgCluster) -> Self {
        Self::bare()
            .identity("agent", "agent", &["agents"])
            .identity("alice", "human", &["dba", "reviewers", "admins"])
            .connection(
                ConnectionSpec::postgres("shop", cluster, "shop", super::pg::SCRAM_USER)
                    .tags(&["production", "pii"]),
            )
    }

    /// `[server]` and `[listeners] postgres` only: no identities, no
    /// connections.
    pub fn bare() -> Self {
        GatewayConfig {
            api_listen: "127.0.0.1:0".to_owned(),
            public_url: "http://127.0.0.1:8080".to_owned(),
            server_extra: Vec::new(),
            listeners: vec![("postgres".to_owned(), "127.0.0.1:0".to_owned())],
            identities: Vec::new(),
            connections: Vec::new(),
            extra_toml: Vec::new(),
            env: Vec::new(),
        }
    }

    /// Add (or replace, by name) an identity with a random token in
    /// `$<NAME>_TOKEN`.
    pub fn identity(self, name: &str, kind: &str, groups: &[&str]) -> Self {
        self.identity_spec(IdentitySpec::new(name, kind, groups))
    }

    pub fn identity_spec(mut self, spec: IdentitySpec) -> Self {
        self.identities.retain(|i| i.name != spec.name);
        self.identities.push(spec);
        self
    }

    /// Add (or replace, by name) a connection.
    pub fn connection(mut self, spec: ConnectionSpec) -> Self {
        self.connections.retain(|c| c.name != spec.name);
        self.connections.push(spec);
        self
    }

    pub fn without_identity(mut self, name: &str) -> Self {
        self.identities.retain(|i| i.name != name);
        self
    }

    pub fn without_connection(mut self, name: &str) -> Self {
        self.connections.retain(|c| c.name != name);
        self
    }

    /// Add `key = <raw TOML value>` to `[server]`.
    pub fn server_setting(mut self, key: &str, raw_toml_value: &str) -> Self {
        self.server_extra
            .push((key.to_owned(), raw_toml_value.to_owned()));
        self
    }

    /// Add (or replace) a `[listeners]` entry, e.g. `.listener("http", "127.0.0.1:0")`.
    pub fn listener(mut self, key: &str, addr: &str) -> Self {
        self.listeners.retain(|(k, _)| k != key);
        self.listeners.push((key.to_owned(), addr.to_owned()));
        self
    }

    pub fn without_listener(mut self, key: &str) -> Self {
        self.listeners.retain(|(k, _)| k != key);
        self
    }

    pub fn public_url(mut self, url: &str) -> Self {
        self.public_url = url.to_owned();
        self
    }

    /// Append raw TOML (e.g. `"[masking]\n..."` or `"[[policies]]\n..."`).
    pub fn extra_toml(mut self, toml: &str) -> Self {
        self.extra_toml.push(toml.to_owned());
        self
    }

    /// An extra environment variable for the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The token of an identity.
    pub fn token(&self, identity: &str) -> &str {
        &self
            .identities
            .iter()
            .find(|i| i.name == identity)
            .unwrap_or_else(|| panic!("no identity {identity:?} in the config"))
            .token
    }

    /// Every environment variable the gateway gets from this config: tokens,
    /// upstream passwords, then `env(...)` entries (which win).
    pub fn process_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        for i in &self.identities {
            env.push((i.token_env.clone(), i.token.clone()));
        }
        for c in &self.connections {
            if let (Some(k), Some(v)) = (&c.password_env, &c.password) {
                env.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// The TOML text, with `data_dir` set to `data_dir`.
    pub fn render(&self, data_dir: &Path) -> String {
        let mut s = format!(
            "[server]\napi_listen = {}\npublic_url = {}\ndata_dir = {}\n",
            toml_str(&self.api_listen),
            toml_str(&self.public_url),
            toml_str(&data_dir.to_string_lossy()),
        );
        for (k, v) in &self.server_extra {
            s.push_str(&format!("{k} = {v}\n"));
        }
        s.push_str("\n[listeners]\n");
        for (k, v) in &self.listeners {
            s.push_str(&format!("{k} = {}\n", toml_str(v)));
        }
        for i in &self.identities {
            s.push('\n');
            s.push_str(&i.render());
        }
        for c in &self.connections {
            s.push('\n');
            s.push_str(&c.render());
        }
        for extra in &self.extra_toml {
            s.push('\n');
            s.push_str(extra.trim_end());
            s.push('\n');
        }
        s
    }
}

enum StdoutEvent {
    Ready(String),
    Eof,
}

/// A running `airlock serve`. Killed on drop (its temp dir removed unless
/// `AIRLOCK_TEST_KEEP=1`).
pub struct Gateway {
    program: PathBuf,
    program_args: Vec<String>,
    child: Option<Child>,
    dir: Option<TempDir>,
    root: PathBuf,
    config: GatewayConfig,
    config_path: PathBuf,
    data_dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    env: Vec<(String, String)>,
    addrs: BTreeMap<String, SocketAddr>,
    ready_line: String,
}

/// What spawning produced, before readiness is judged.
struct Spawned {
    child: Child,
    events: mpsc::Receiver<StdoutEvent>,
}

impl Gateway {
    /// Write `config`, start `airlock serve --config <file>` and wait for its
    /// ready line. Fails the test (with the captured stderr) if the process
    /// exits or prints no ready line within [`READY_TIMEOUT`].
    pub fn start(config: GatewayConfig) -> Gateway {
        let mut gw = Self::prepare(config, None);
        gw.spawn_and_wait_ready();
        gw
    }

    /// Start with a raw TOML config text (`@DATA_DIR@` is replaced by the
    /// data directory) and extra environment variables.
    pub fn start_toml(toml: &str, env: &[(&str, &str)]) -> Gateway {
        let mut config = GatewayConfig::bare();
        for (k, v) in env {
            config = config.env(k, v);
        }
        let mut gw = Self::prepare(config, Some(toml));
        gw.spawn_and_wait_ready();
        gw
    }

    /// Start a config that must make `airlock serve` fail: waits for the
    /// process to exit and returns its exit status and stderr. Fails the
    /// test if the gateway prints its ready line instead, or does not exit
    /// within [`READY_TIMEOUT`].
    pub fn start_expect_failure(config: GatewayConfig) -> (ExitStatus, String) {
        let mut gw = Self::prepare(config, None);
        gw.expect_failure()
    }

    /// [`start_expect_failure`](Self::start_expect_failure) with a raw TOML
    /// text (e.g. deliberately malformed).
    pub fn start_toml_expect_failure(toml: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut config = GatewayConfig::bare();
        for (k, v) in env {
            config = config.env(k, v);
        }
        let mut gw = Self::prepare(config, Some(toml));
        gw.expect_failure()
    }

    /// Harness self-test hook: like [`start`](Self::start) but runs
    /// `program args... serve --config <file>` instead of the airlock binary.
    #[doc(hidden)]
    pub fn start_with_program(program: &Path, args: &[&str], config: GatewayConfig) -> Gateway {
        let mut gw = Self::prepare(config, None);
        gw.program = program.to_path_buf();
        gw.program_args = args.iter().map(|a| a.to_string()).collect();
        gw.spawn_and_wait_ready();
        gw
    }

    /// Harness self-test hook for [`start_expect_failure`](Self::start_expect_failure).
    #[doc(hidden)]
    pub fn start_expect_failure_with_program(
        program: &Path,
        args: &[&str],
        config: GatewayConfig,
    ) -> (ExitStatus, String) {
        let mut gw = Self::prepare(config, None);
        gw.program = program.to_path_buf();
        gw.program_args = args.iter().map(|a| a.to_string()).collect();
        gw.expect_failure()
    }

    fn prepare(mut config: GatewayConfig, raw_toml: Option<&str>) -> Gateway {
        if raw_toml.is_some() {
            // The raw text defines the listeners; `config` only carries env.
            config.listeners.clear();
        }
        let dir = tempfile::Builder::new()
            .prefix("airlock-gw-")
            .tempdir()
            .expect("create gateway temp dir");
        let root = dir.path().to_path_buf();
        let data_dir = root.join("airlock-data");
        let config_path = root.join("airlock.toml");
        let text = match raw_toml {
            Some(raw) => raw.replace(DATA_DIR_PLACEHOLDER, &data_dir.to_string_lossy()),
            None => config.render(&data_dir),
        };
        fs::write(&config_path, text).expect("write airlock.toml");
        let env = config.process_env();
        Gateway {
            program: PathBuf::from(env!("CARGO_BIN_EXE_airlock")),
            program_args: Vec::new(),
            child: None,
            dir: Some(dir),
            stdout_path: root.join("stdout.log"),
            stderr_path: root.join("stderr.log"),
            root,
            config,
            config_path,
            data_dir,
            env,
            addrs: BTreeMap::new(),
            ready_line: String::new(),
        }
    }

    fn spawn(&self) -> Spawned {
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .expect("open gateway stderr log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.program_args)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(&self.root)
            .env_remove("AIRLOCK_URL")
            .env_remove("AIRLOCK_TOKEN")
            .env("RUST_BACKTRACE", "1")
            // Plain log text (tracing-subscriber honours NO_COLOR).
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env(
                "RUST_LOG",
                "info,airlock=debug,airlock_wire=debug,airlock_pipeline=debug,\
                 airlock_adapters=debug,airlock_control=debug",
            );
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} serve: {e}", self.program.display()));
        let stdout = child.stdout.take().expect("gateway stdout is piped");
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.stdout_path)
            .expect("open gateway stdout log");
        let (tx, rx) = mpsc::channel();
        // Copies stdout to stdout.log for the life of the process and
        // reports the ready line (and EOF) to the test.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            let mut ready_sent = false;
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let _ = log.write_all(&buf);
                        let _ = log.flush();
                        let line = String::from_utf8_lossy(&buf);
                        if !ready_sent && line.starts_with(READY_PREFIX) {
                            ready_sent = true;
                            let _ = tx.send(StdoutEvent::Ready(line.trim_end().to_owned()));
                        }
                    }
                }
            }
            let _ = tx.send(StdoutEvent::Eof);
        });
        Spawned { child, events: rx }
    }

    fn spawn_and_wait_ready(&mut self) {
        let Spawned { mut child, events } = self.spawn();
        match events.recv_timeout(READY_TIMEOUT) {
            Ok(StdoutEvent::Ready(line)) => match parse_ready_line(&line) {
                Ok(addrs) => {
                    self.child = Some(child);
                    let missing: Vec<String> = std::iter::once("api")
                        .chain(self.config.listeners.iter().map(|(k, _)| k.as_str()))
                        .filter(|k| !addrs.contains_key(*k))
                        .map(str::to_owned)
                        .collect();
                    if !missing.is_empty() {
                        self.kill();
                        panic!(
                            "ready line {line:?} does not name listener(s) {missing:?}\n{}",
                            self.captured()
                        );
                    }
                    self.addrs = addrs;
                    self.ready_line = line;
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "bad ready line from airlock serve: {e}\n{}",
                        self.captured()
                    );
                }
            },
            Ok(StdoutEvent::Eof) => {
                let status = child.wait().expect("wait for airlock serve");
                panic!(
                    "airlock serve exited ({status}) before printing its ready line\n{}",
                    self.captured()
                );
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "airlock serve printed no ready line within {READY_TIMEOUT:?}\n{}",
                    self.captured()
                );
            }
        }
    }

    fn expect_failure(&mut self) -> (ExitStatus, String) {
        let Spawned { mut child, events } = self.spawn();
        match events.recv_timeout(READY_TIMEOUT) {
            Ok(StdoutEvent::Ready(line)) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "expected airlock serve to fail, but it became ready: {line}\n{}",
                    self.captured()
                );
            }
            Ok(StdoutEvent::Eof) => {
                let status = child.wait().expect("wait for airlock serve");
                (status, self.stderr_contents())
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "expected airlock serve to fail, but it neither exited nor became ready \
                     within {READY_TIMEOUT:?}\n{}",
                    self.captured()
                );
            }
        }
    }

    fn captured(&self) -> String {
        format!(
            "--- config ({}) ---\n{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.config_path.display(),
            fs::read_to_string(&self.config_path).unwrap_or_default(),
            tail(&self.stdout_contents(), 50),
            tail(&self.stderr_contents(), 200)
        )
    }

    /// Address of a listener by its key in the ready line.
    pub fn addr(&self, key: &str) -> Option<SocketAddr> {
        self.addrs.get(key).copied()
    }

    /// All listener addresses from the ready line.
    pub fn addrs(&self) -> &BTreeMap<String, SocketAddr> {
        &self.addrs
    }

    /// Names of the gateway process's threads (from `/proc`).
    pub fn thread_names(&self) -> Vec<String> {
        let pid = self.pid().expect("gateway is running");
        let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("the gateway's /proc/PID/task")
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_owned())
            .collect();
        names.sort();
        names
    }

    /// The PostgreSQL listener.
    pub fn pg_addr(&self) -> SocketAddr {
        self.addr("postgres")
            .unwrap_or_else(|| panic!("no postgres listener in {:?}", self.ready_line))
    }

    pub fn pg_port(&self) -> u16 {
        self.pg_addr().port()
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.addr("api").expect("api address")
    }

    /// `http://127.0.0.1:PORT` of the API listener.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr())
    }

    pub fn ready_line(&self) -> &str {
        &self.ready_line
    }

    /// libpq conninfo for `identity` (password = its token) to connection
    /// `connection` (dbname) through the gateway's PostgreSQL listener.
    pub fn conninfo(&self, identity: &str, connection: &str) -> String {
        let addr = self.pg_addr();
        format!(
            "host={} port={} user={identity} dbname={connection} password={}",
            addr.ip(),
            addr.port(),
            quote_single(self.token(identity))
        )
    }

    /// Runs the operator CLI (`airlock ARGS...`) against this gateway's API
    /// with `token`.
    pub fn cli(&self, token: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
            .args(args)
            .env("AIRLOCK_URL", self.api_url())
            .env("AIRLOCK_TOKEN", token)
            .output()
            .expect("run airlock CLI")
    }

    /// The CLI's `--json` output for `args`, run as `alice` (an admin in the
    /// harness's config); fails the test if the command fails.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(self.token("alice"), args);
        assert!(
            out.status.success(),
            "airlock {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("CLI --json output is JSON")
    }

    /// `psql -c SQL` as `identity` to `connection` through the gateway.
    pub fn psql(&self, identity: &str, connection: &str, sql: &str) -> super::client::Output {
        super::client::psql(&self.conninfo(identity, connection), sql, &[])
    }

    pub fn token(&self, identity: &str) -> &str {
        self.config.token(identity)
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `<tempdir>/airlock-data` (the config's `data_dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The gateway's temp dir (config, logs, data dir).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Everything the gateway wrote to stderr so far (its log), across
    /// restarts.
    pub fn stderr_contents(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Everything the gateway wrote to stdout so far.
    pub fn stdout_contents(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and reap. Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to [`TERMINATE_TIMEOUT`] for exit (then SIGKILL).
    /// Returns the exit status, or None if it had to be killed or was not
    /// running.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .stdin(Stdio::null())
            .status();
        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        let graceful = rx.recv_timeout(TERMINATE_TIMEOUT).is_ok();
        if !graceful {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stdin(Stdio::null())
                .status();
        }
        let status = waiter.join().ok().and_then(|s| s.ok());
        if graceful { status } else { None }
    }

    /// [`terminate`](Self::terminate), asserting a clean exit (status 0
    /// within the timeout), with the gateway's stderr if not.
    pub fn terminate_cleanly(&mut self) {
        let status = self.terminate();
        assert!(
            status.is_some_and(|s| s.success()),
            "SIGTERM stops the gateway cleanly: {status:?}\n{}",
            self.stderr_contents()
        );
    }

    /// Stop (SIGTERM, see [`terminate`](Self::terminate)) and start again
    /// with the same config, data dir and logs; waits for the new ready line
    /// (listener ports change).
    pub fn restart(&mut self) {
        self.terminate();
        self.addrs.clear();
        self.ready_line.clear();
        self.spawn_and_wait_ready();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- airlock serve stderr tail ({}) ---\n{}",
                self.stderr_path.display(),
                tail(&self.stderr_contents(), 60)
            );
        }
        self.kill();
        if std::env::var_os("AIRLOCK_TEST_KEEP").is_some_and(|v| !v.is_empty())
            && let Some(dir) = self.dir.take()
        {
            eprintln!("AIRLOCK_TEST_KEEP: keeping {}", dir.keep().display());
        }
    }
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
