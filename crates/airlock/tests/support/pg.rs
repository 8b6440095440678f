//! `PgCluster`: a throwaway, real PostgreSQL server built from the local
//! binaries (`initdb`, `pg_ctl`, `postgres`), with one role per
//! authentication method and, optionally, TLS.
//!
//! Roles (passwords are random per cluster, see [`PgCluster::password`]):
//!
//! | role             | pg_hba method (host 127.0.0.1/32)                     |
//! |------------------|-------------------------------------------------------|
//! | `scram_user`     | `scram-sha-256` (password stored as SCRAM)            |
//! | `md5_user`       | `md5` (password stored as md5)                        |
//! | `trust_user`     | `trust` (no password)                                 |
//! | `cleartext_user` | `password` (cleartext on the wire)                    |
//! | `tls_user`       | `hostssl` `scram-sha-256`; `hostnossl` → `reject`     |
//! | `postgres`       | superuser; `trust` on the unix socket, scram over TCP |
//! | any other role   | `scram-sha-256`                                       |

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use tempfile::TempDir;

use super::client::Output;
use super::util::{
    INSTALL_HINT, free_port, is_executable, is_root, os_user_exists, quote_single, random_hex,
    tail_file, which,
};

pub const SCRAM_USER: &str = "scram_user";
pub const MD5_USER: &str = "md5_user";
pub const TRUST_USER: &str = "trust_user";
pub const CLEARTEXT_USER: &str = "cleartext_user";
pub const TLS_USER: &str = "tls_user";
pub const SUPERUSER: &str = "postgres";

/// How many times `start` picks a new port after "Address already in use".
const PORT_ATTEMPTS: usize = 5;

/// Directory holding `initdb`, `pg_ctl` and `postgres`, or None.
///
/// Order: `$AIRLOCK_TEST_PG_BIN`; the first `$PATH` entry (or
/// `/usr/local/bin`) that has all three (symlinks resolved); else the
/// highest version under `/usr/lib/postgresql/*/bin`.
pub fn try_pg_bindir() -> Option<PathBuf> {
    static BINDIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    BINDIR.get_or_init(find_pg_bindir).clone()
}

/// Like [`try_pg_bindir`] but fails the test with an install hint.
pub fn pg_bindir() -> PathBuf {
    try_pg_bindir().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in \
             $AIRLOCK_TEST_PG_BIN, $PATH, /usr/local/bin or /usr/lib/postgresql/*/bin: {INSTALL_HINT}"
        )
    })
}

fn has_server_binaries(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|b| is_executable(&dir.join(b)))
}

fn find_pg_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("AIRLOCK_TEST_PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        assert!(
            has_server_binaries(&dir),
            "$AIRLOCK_TEST_PG_BIN={} has no initdb/pg_ctl/postgres: unset it, or {INSTALL_HINT}",
            dir.display()
        );
        return Some(dir);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/local/bin"));
    for dir in dirs {
        if has_server_binaries(&dir) {
            // Resolve symlinks (e.g. /usr/local/bin/initdb ->
            // /usr/lib/postgresql/15/bin/initdb) so the tools find their
            // siblings and share directory.
            let real = fs::canonicalize(dir.join("initdb")).ok()?;
            let real_dir = real.parent()?.to_path_buf();
            return Some(if has_server_binaries(&real_dir) {
                real_dir
            } else {
                dir
            });
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Option<Vec<u32>> = name.split('.').map(|p| p.parse().ok()).collect();
            let bin = e.path().join("bin");
            match version {
                Some(v) if has_server_binaries(&bin) => Some((v, bin)),
                _ => None,
            }
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Options for a [`PgCluster`].
#[derive(Clone, Debug)]
pub struct PgClusterBuilder {
    tls: bool,
    password_encryption: String,
    settings: Vec<(String, String)>,
    hba_lines: Vec<String>,
}

impl PgClusterBuilder {
    /// Serve TLS (ssl = on) with a server certificate for `localhost` and
    /// `127.0.0.1` signed by a throwaway CA, and enable `tls_user`.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// The server's default `password_encryption` (`scram-sha-256` or
    /// `md5`). The built-in roles set theirs explicitly whatever this is.
    pub fn password_encryption(mut self, method: &str) -> Self {
        self.password_encryption = method.to_owned();
        self
    }

    /// An extra postgresql.conf setting, e.g. `.setting("max_connections", "50")`.
    /// The value is quoted for you.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_owned(), value.to_owned()));
        self
    }

    /// An extra pg_hba.conf line, placed after the built-in roles' lines and
    /// before the catch-all `host all all 127.0.0.1/32 scram-sha-256`.
    pub fn hba_line(mut self, line: &str) -> Self {
        self.hba_lines.push(line.to_owned());
        self
    }

    /// initdb, configure, start (waits until it accepts connections) and
    /// create the roles. Panics with the server log tail on failure.
    pub fn start(self) -> PgCluster {
        PgCluster::start_with(self)
    }
}

/// Paths of the throwaway TLS material.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A running throwaway PostgreSQL server. Stopped (`-m immediate`) and its
/// directory removed on drop; set `AIRLOCK_TEST_KEEP=1` to keep the
/// directory for inspection.
pub struct PgCluster {
    dir: Option<TempDir>,
    root: PathBuf,
    bindir: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    port: u16,
    tls: Option<TlsFiles>,
    passwords: BTreeMap<String, String>,
    password_encryption: String,
    running: bool,
}

impl PgCluster {
    pub fn builder() -> PgClusterBuilder {
        PgClusterBuilder {
            tls: false,
            password_encryption: "scram-sha-256".to_owned(),
            settings: Vec::new(),
            hba_lines: Vec::new(),
        }
    }

    /// A plain (no TLS) cluster with default options.
    pub fn start() -> PgCluster {
        Self::builder().start()
    }

    fn start_with(opts: PgClusterBuilder) -> PgCluster {
        let bindir = pg_bindir();
        if is_root() {
            assert!(
                os_user_exists("postgres"),
                "running as root, so PostgreSQL must run as the `postgres` OS user, which does \
                 not exist: {INSTALL_HINT}"
            );
        }
        // As root the directory must be reachable by `postgres`: /tmp is,
        // whatever $TMPDIR says.
        let base = if is_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("airlock-pg-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("create temp dir in {}: {e}", base.display()));
        let root = dir.path().to_path_buf();
        let sock = root.join("sock");
        fs::create_dir(&sock).expect("create socket dir");

        let tls = opts.tls.then(|| generate_tls(&root.join("tls")));

        let mut passwords = BTreeMap::new();
        for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER, TLS_USER, SUPERUSER] {
            passwords.insert(user.to_owned(), format!("pw-{user}-{}", random_hex(12)));
        }

        let mut cluster = PgCluster {
            dir: Some(dir),
            data: root.join("data"),
            log: root.join("postgres.log"),
            root,
            bindir,
            sock,
            port: 0,
            tls,
            passwords,
            password_encryption: opts.password_encryption.clone(),
            running: false,
        };

        if is_root() {
            chown_postgres(&cluster.root);
        }
        cluster.initdb();
        cluster.write_config(&opts);
        cluster.start_on_free_port();
        cluster.create_roles();
        cluster
    }

    /// A command for a PostgreSQL program, run as `postgres` when we are
    /// root, with a C locale and the cluster directory as cwd.
    fn pg_command(&self, program: &Path) -> Command {
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.current_dir(&self.root)
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .env_remove("PGDATA")
            .env_remove("PGPORT")
            .env_remove("PGHOST")
            .stdin(Stdio::null());
        cmd
    }

    fn run_checked(&self, mut cmd: Command, what: &str) -> std::process::Output {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}; {INSTALL_HINT}"));
        if !out.status.success() {
            panic!(
                "{what} failed ({}):\n{}\n{}\n--- server log tail ({}) ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log.display(),
                tail_file(&self.log, 40)
            );
        }
        out
    }

    fn initdb(&self) {
        let mut cmd = self.pg_command(&self.bindir.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.run_checked(cmd, "initdb");
    }

    fn write_config(&self, opts: &PgClusterBuilder) {
        let mut conf = String::from("\n# --- airlock test harness ---\n");
        let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {}\n", quote_single(v)));
        set("listen_addresses", "127.0.0.1");
        set("unix_socket_directories", &self.sock.to_string_lossy());
        set("password_encryption", &opts.password_encryption);
        // Fast, and still crash-safe against a process kill (`stop` is
        // `-m immediate`): commits reach the OS before they return; only an
        // OS crash could lose them. (synchronous_commit stays on for that.)
        set("fsync", "off");
        set("full_page_writes", "off");
        set("shared_buffers", "32MB");
        set("max_connections", "100");
        set("log_min_messages", "info");
        set("log_connections", "on");
        set("log_disconnections", "on");
        if let Some(tls) = &self.tls {
            set("ssl", "on");
            set("ssl_cert_file", &tls.server_cert.to_string_lossy());
            set("ssl_key_file", &tls.server_key.to_string_lossy());
        }
        for (k, v) in &opts.settings {
            set(k, v);
        }
        let conf_path = self.data.join("postgresql.conf");
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(&conf_path)
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes()).expect("write postgresql.conf");

        let addr = "127.0.0.1/32";
        let mut hba = String::from(
            "# TYPE     DATABASE USER            ADDRESS       METHOD\n\
             local      all      all                            trust\n",
        );
        hba.push_str(&format!(
            "hostnossl  all      {TLS_USER:<15} {addr:<13} reject\n"
        ));
        if self.tls.is_some() {
            hba.push_str(&format!(
                "hostssl    all      {TLS_USER:<15} {addr:<13} scram-sha-256\n"
            ));
        }
        for (user, method) in [
            (SCRAM_USER, "scram-sha-256"),
            (MD5_USER, "md5"),
            (TRUST_USER, "trust"),
            (CLEARTEXT_USER, "password"),
            (SUPERUSER, "scram-sha-256"),
        ] {
            hba.push_str(&format!(
                "host       all      {user:<15} {addr:<13} {method}\n"
            ));
        }
        for line in &opts.hba_lines {
            hba.push_str(line);
            hba.push('\n');
        }
        hba.push_str(&format!(
            "host       all      all             {addr:<13} scram-sha-256\n"
        ));
        // Truncating keeps the file's owner (postgres, from initdb).
        fs::write(self.data.join("pg_hba.conf"), hba).expect("write pg_hba.conf");
    }

    fn pg_ctl_start(&self) -> std::process::Output {
        let mut cmd = self.pg_command(&self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "120", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.output()
            .unwrap_or_else(|e| panic!("run pg_ctl: {e}; {INSTALL_HINT}"))
    }

    fn start_on_free_port(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port();
            let log_len_before = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
            let out = self.pg_ctl_start();
            if out.status.success() {
                self.running = true;
                return;
            }
            let log = fs::read(&self.log).unwrap_or_default();
            let new_log = String::from_utf8_lossy(&log[(log_len_before as usize).min(log.len())..]);
            let collided = new_log.contains("Address already in use")
                || new_log.contains("could not create any TCP/IP sockets");
            if !collided || attempt == PORT_ATTEMPTS {
                panic!(
                    "PostgreSQL failed to start on port {} (attempt {attempt}):\n{}\n{}\n\
                     --- server log tail ({}) ---\n{}",
                    self.port,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    self.log.display(),
                    tail_file(&self.log, 40)
                );
            }
        }
    }

    fn create_roles(&self) {
        let pw = |u: &str| quote_literal(self.password(u));
        let sql = format!(
            "SET password_encryption = 'scram-sha-256';\n\
             CREATE ROLE {SCRAM_USER} LOGIN PASSWORD {};\n\
             CREATE ROLE {CLEARTEXT_USER} LOGIN PASSWORD {};\n\
             CREATE ROLE {TLS_USER} LOGIN PASSWORD {};\n\
             CREATE ROLE {TRUST_USER} LOGIN;\n\
             ALTER ROLE {SUPERUSER} PASSWORD {};\n\
             SET password_encryption = 'md5';\n\
             CREATE ROLE {MD5_USER} LOGIN PASSWORD {};\n",
            pw(SCRAM_USER),
            pw(CLEARTEXT_USER),
            pw(TLS_USER),
            pw(SUPERUSER),
            pw(MD5_USER),
        );
        self.psql_admin(&sql);
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Host the server listens on: `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// Directory of the unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// The cluster's temp directory (data/, sock/, tls/, postgres.log).
    pub fn dir(&self) -> &Path {
        &self.root
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log so far.
    pub fn log_contents(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// The server's default `password_encryption`.
    pub fn password_encryption(&self) -> &str {
        &self.password_encryption
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The TLS material (panics for a cluster built without `.tls(true)`).
    pub fn tls_files(&self) -> &TlsFiles {
        self.tls
            .as_ref()
            .expect("this PgCluster was started without .tls(true)")
    }

    /// The certificate to trust for `sslmode=verify-full` / upstream
    /// verification: the throwaway CA that signed the server certificate
    /// (use it as libpq `sslrootcert`).
    pub fn cert_path(&self) -> &Path {
        &self.tls_files().ca_cert
    }

    /// Same as [`cert_path`](Self::cert_path).
    pub fn ca_cert_path(&self) -> &Path {
        &self.tls_files().ca_cert
    }

    /// The server's own (leaf) certificate, for `localhost` and `127.0.0.1`.
    pub fn server_cert_path(&self) -> &Path {
        &self.tls_files().server_cert
    }

    /// The password of a built-in role (`scram_user`, `md5_user`,
    /// `cleartext_user`, `tls_user`, `postgres`). Panics for other names.
    pub fn password(&self, user: &str) -> &str {
        self.passwords
            .get(user)
            .unwrap_or_else(|| panic!("no password known for role {user:?}"))
    }

    /// A libpq conninfo for `user` on `dbname` over TCP, with the role's
    /// password if it has one (append e.g. ` sslmode=require`).
    pub fn conninfo(&self, user: &str, dbname: &str) -> String {
        let mut s = format!(
            "host={} port={} user={user} dbname={dbname}",
            self.host(),
            self.port
        );
        if let Some(pw) = self.passwords.get(user) {
            s.push_str(&format!(" password={}", quote_single(pw)));
        }
        s
    }

    /// Run SQL as the superuser over the unix socket in database `postgres`
    /// (psql -X -v ON_ERROR_STOP=1 -At, script on stdin). Returns stdout
    /// without the trailing newline; panics with psql's stderr on failure.
    pub fn psql_admin(&self, sql: &str) -> String {
        self.psql_admin_db("postgres", sql)
    }

    /// [`psql_admin`](Self::psql_admin) in another database.
    pub fn psql_admin_db(&self, dbname: &str, sql: &str) -> String {
        let out = self.try_psql_admin_db(dbname, sql);
        assert!(
            out.success(),
            "psql_admin in {dbname:?} failed:\n{sql}\n{out:?}\n--- server log tail ---\n{}",
            tail_file(&self.log, 20)
        );
        out.stdout.trim_end_matches('\n').to_owned()
    }

    /// Like [`psql_admin_db`](Self::psql_admin_db) but returns the output
    /// instead of panicking.
    pub fn try_psql_admin_db(&self, dbname: &str, sql: &str) -> Output {
        let mut cmd = self.pg_command(&super::client::psql_path());
        cmd.arg("-h")
            .arg(&self.sock)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", dbname])
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-f", "-"])
            .env("PGPASSFILE", "/dev/null")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn psql: {e}; {INSTALL_HINT}"));
        let mut stdin = child.stdin.take().expect("psql stdin");
        let input = sql.to_owned();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
        let out = child.wait_with_output().expect("wait for psql");
        let _ = writer.join();
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `CREATE DATABASE name OWNER owner`.
    pub fn create_database(&self, name: &str, owner: &str) {
        self.psql_admin(&format!(
            "CREATE DATABASE {} OWNER {};",
            quote_ident(name),
            quote_ident(owner)
        ));
    }

    /// Stop the server now (`pg_ctl stop -m immediate`). Idempotent.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let mut cmd = self.pg_command(&self.bindir.join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "60", "stop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let out = cmd.output();
        self.running = false;
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: pg_ctl stop failed: {}",
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("warning: pg_ctl stop: {e}"),
        }
    }

    /// Start a stopped server again on the same port (e.g. after
    /// [`stop`](Self::stop) in an "upstream went away" test).
    pub fn start_again(&mut self) {
        assert!(!self.running, "start_again on a running cluster");
        let out = self.pg_ctl_start();
        assert!(
            out.status.success(),
            "PostgreSQL failed to restart on port {}:\n{}\n--- server log tail ---\n{}",
            self.port,
            String::from_utf8_lossy(&out.stderr),
            tail_file(&self.log, 40)
        );
        self.running = true;
    }

    pub fn is_running(&self) -> bool {
        self.running
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- PostgreSQL log tail ({}) ---\n{}",
                self.log.display(),
                tail_file(&self.log, 30)
            );
        }
        self.stop();
        if std::env::var_os("AIRLOCK_TEST_KEEP").is_some_and(|v| !v.is_empty())
            && let Some(dir) = self.dir.take()
        {
            eprintln!("AIRLOCK_TEST_KEEP: keeping {}", dir.keep().display());
        }
    }
}

/// Quote an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn chown_postgres(path: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run chown");
    assert!(
        out.status.success(),
        "chown -R postgres:postgres {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Airlock Test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A throwaway CA and a server certificate (CN/SAN localhost, 127.0.0.1)
/// signed by it, with the openssl CLI. EC P-256 keys (fast to generate,
/// accepted by libpq and rustls).
/// `dir` must not exist yet. Also usable on its own, e.g. for a "wrong CA".
pub fn generate_tls(dir: &Path) -> TlsFiles {
    let openssl = which("openssl").unwrap_or_else(|| {
        panic!("`openssl` CLI not found (needed for TLS tests): {INSTALL_HINT}")
    });
    fs::create_dir(dir).expect("create tls dir");
    fs::write(dir.join("openssl.cnf"), OPENSSL_CNF).expect("write openssl.cnf");
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let steps: Vec<Vec<String>> = vec![
        [
            &["req", "-x509", "-nodes"][..],
            &ec[..],
            &[
                "-config",
                "openssl.cnf",
                "-extensions",
                "v3_ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "3650",
                "-sha256",
            ][..],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            &["req", "-new", "-nodes"][..],
            &ec[..],
            &[
                "-config",
                "openssl.cnf",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ][..],
        ]
        .concat()
        .iter()
        .map(|s| s.to_string())
        .collect(),
        [
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &format!("0x{}", random_hex(8)),
            "-days",
            "3650",
            "-sha256",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "v3_server",
            "-out",
            "server.crt",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    ];
    for args in steps {
        let out = Command::new(&openssl)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // PostgreSQL refuses a key readable by group/other.
    fs::set_permissions(dir.join("server.key"), fs::Permissions::from_mode(0o600))
        .expect("chmod server.key");
    TlsFiles {
        ca_cert: dir.join("ca.crt"),
        server_cert: dir.join("server.crt"),
        server_key: dir.join("server.key"),
    }
}
