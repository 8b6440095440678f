//! Real client programs: `psql` and python3 with psycopg.
//!
//! These never panic on a failed command: they return an [`Output`] and the
//! test asserts on it. They do panic, with an install hint, when the client
//! program itself is missing.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;

use super::util::{INSTALL_HINT, is_executable, target_dir, which};

/// Libpq environment variables that must not leak from the developer's
/// environment into a test client.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGREQUIRESSL",
    "PGTARGETSESSIONATTRS",
    "PGCHANNELBINDING",
    "PGGSSENCMODE",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PSQLRC",
];

/// What a client program did: exit status and its output as text.
#[derive(Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics (showing stdout/stderr) unless the command succeeded; returns
    /// stdout with the trailing newline removed.
    #[track_caller]
    pub fn expect_success(&self) -> &str {
        assert!(self.success(), "command failed: {self:?}");
        self.stdout.trim_end_matches('\n')
    }

    /// Panics (showing stdout/stderr) unless the command failed; returns
    /// stderr.
    #[track_caller]
    pub fn expect_failure(&self) -> &str {
        assert!(!self.success(), "command unexpectedly succeeded: {self:?}");
        &self.stderr
    }

    /// stdout split into lines (`psql -At` prints one row per line).
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }

    fn from_std(out: std::process::Output) -> Output {
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Path of the `psql` binary: next to the PostgreSQL server binaries if
/// there is one there, else `psql` on `$PATH`.
pub fn psql_path() -> PathBuf {
    static PSQL: OnceLock<PathBuf> = OnceLock::new();
    PSQL.get_or_init(|| {
        if let Some(bindir) = super::pg::try_pg_bindir() {
            let candidate = bindir.join("psql");
            if is_executable(&candidate) {
                return candidate;
            }
        }
        which("psql")
            .unwrap_or_else(|| panic!("`psql` not found (PostgreSQL client): {INSTALL_HINT}"))
    })
    .clone()
}

/// A `psql -X -v ON_ERROR_STOP=1 -At -d CONNINFO` command with a clean libpq
/// environment plus `env`. Stdin is null; use it to spawn a client that is
/// expected to block (e.g. a command held for approval).
pub fn psql_command(conninfo: &str, env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(psql_path());
    cmd.args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-d", conninfo]);
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    // Never fall back to ~/.pgpass: a test must say which password it uses.
    cmd.env("PGPASSFILE", "/dev/null");
    cmd.env("PGCONNECT_TIMEOUT", "30");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Run one SQL string with `psql -c` against `conninfo` (a libpq conninfo
/// string or URI).
pub fn psql(conninfo: &str, sql: &str, env: &[(&str, &str)]) -> Output {
    let out = psql_command(conninfo, env)
        .args(["-c", sql])
        .output()
        .unwrap_or_else(|e| panic!("run psql: {e}; {INSTALL_HINT}"));
    Output::from_std(out)
}

/// Run an SQL script fed to `psql` on stdin (`-f -`): several statements,
/// psql meta-commands, `\copy`, etc.
pub fn psql_script(conninfo: &str, script: &str, env: &[(&str, &str)]) -> Output {
    let mut child = psql_command(conninfo, env)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn psql: {e}; {INSTALL_HINT}"));
    feed_stdin(&mut child, script);
    Output::from_std(child.wait_with_output().expect("wait for psql"))
}

/// Spawn `psql -c SQL` without waiting, e.g. for a command the gateway holds
/// until a reviewer decides; collect it later with [`wait_output`].
pub fn psql_spawn(conninfo: &str, sql: &str, env: &[(&str, &str)]) -> Child {
    psql_command(conninfo, env)
        .args(["-c", sql])
        .spawn()
        .unwrap_or_else(|e| panic!("spawn psql: {e}; {INSTALL_HINT}"))
}

/// Wait for a spawned client and collect its output.
pub fn wait_output(child: Child) -> Output {
    Output::from_std(child.wait_with_output().expect("wait for child"))
}

fn feed_stdin(child: &mut Child, input: &str) {
    let mut stdin = child.stdin.take().expect("child stdin is piped");
    let input = input.to_owned();
    // Write from a thread so a large script cannot deadlock against a full
    // stdout pipe.
    std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
}

/// The python interpreter used for client tests, in this order:
/// `$AIRLOCK_TEST_PYTHON`, the venv `scripts/test` creates
/// (`<target>/test-venv/bin/python`), `python3` on `$PATH`.
pub fn python_path() -> PathBuf {
    if let Some(p) = std::env::var_os("AIRLOCK_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = target_dir().join("test-venv/bin/python");
    if is_executable(&venv) {
        return venv;
    }
    which("python3").unwrap_or_else(|| {
        panic!(
            "python3 not found: run scripts/test (creates target/test-venv with psycopg), \
             or apt-get install python3 python3-venv"
        )
    })
}

/// Panics with an install hint unless `python_path()` can `import psycopg`.
pub fn require_psycopg() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = python_path();
            let out = Command::new(&python)
                .args(["-c", "import psycopg; print(psycopg.__version__)"])
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => Ok(python),
                Ok(o) => Err(format!(
                    "psycopg is not importable by {}: {}\nrun scripts/test (it creates \
                     target/test-venv with psycopg), or `{} -m pip install 'psycopg[binary]'`",
                    python.display(),
                    String::from_utf8_lossy(&o.stderr).trim(),
                    python.display()
                )),
                Err(e) => Err(format!(
                    "cannot run {}: {e}\nrun scripts/test, or apt-get install python3 python3-venv",
                    python.display()
                )),
            }
        })
        .clone()
        .unwrap_or_else(|msg| panic!("{msg}"))
}

/// Run `python -c SCRIPT ARGS...` with psycopg available (`sys.argv[1:]` are
/// `args`).
pub fn python(script: &str, args: &[&str]) -> Output {
    python_env(script, args, &[])
}

/// [`python`] with extra environment variables (libpq variables from the
/// test's own environment are removed first).
pub fn python_env(script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let python = require_psycopg();
    let mut cmd = Command::new(&python);
    cmd.arg("-c").arg(script).args(args);
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    cmd.env("PGPASSFILE", "/dev/null");
    cmd.env("PYTHONUNBUFFERED", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", python.display()));
    Output::from_std(out)
}
