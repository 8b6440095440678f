# shellcheck shell=bash
# Shared set-up for the bench scripts, sourced by each of them (after
# `set -euo pipefail`). It provides:
#   ROOT, say, die, IS_ROOT/SUDO     repo root, messages, root or sudo
#   install_deps PKG...              apt-get install what is missing; sets PGBIN, PSQL
#   locate_airlock_bin               AIRLOCK_BIN, or `cargo build --release -p airlock`
#   make_tmp                         TMP (+ PGDATA_DIR, PGSOCK, PGLOG), cleanup on exit
#   as_pg, free_port, rand_hex       helpers
#   start_postgres [CONF_LINE]...    initdb, postgresql.conf, pg_hba, pg_ctl start
#                                    (port retries); sets PG_PORT, PG_VERSION
#   admin_sql SQL [DB]               superuser over the unix socket
#   measure_fdatasync                FDATASYNC_US (pg_test_fsync in TMP)
#   airlock_config_head, airlock_identity, airlock_connection   TOML blocks
#   start_airlock [SERVE_ARG]..., stop_airlock   the gateway; AIRLOCK_PID/PORT/API
#   cpu_ticks, min_max, ratio, report_facts, write_report       measurements, report
# Each script keeps its own env options, measurements and report. A script
# that starts more (PgBouncer) sets CLEANUP_HOOK to a function that stops it.

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"

say() { printf '[bench] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
SUDO=(); [ "$IS_ROOT" -eq 0 ] && SUDO=(sudo)

# ---------------------------------------------------------------------------
# Dependencies, Airlock binary
# ---------------------------------------------------------------------------
pg_bindir() {
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && best="$d"
    done
    printf '%s' "$best"
}

# Installs (idempotent) the PostgreSQL server and client when missing, plus the
# given packages (which the caller found missing); sets PGBIN and PSQL.
install_deps() {   # PKG...
    local need=()
    [ -n "$(pg_bindir)" ] || need+=(postgresql)
    command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
    need+=("$@")
    if [ "${#need[@]}" -gt 0 ]; then
        say "installing: ${need[*]}"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    PGBIN="$(pg_bindir)"
    [ -n "$PGBIN" ] || die "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin"
    PSQL="$(command -v psql || echo "$PGBIN/psql")"
    if [ "$IS_ROOT" -eq 1 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' OS user (apt-get install postgresql)"
    fi
}

locate_airlock_bin() {   # checks AIRLOCK_BIN, or builds it
    if [ -n "${AIRLOCK_BIN:-}" ]; then
        [ -x "$AIRLOCK_BIN" ] || die "AIRLOCK_BIN=$AIRLOCK_BIN is not executable"
    else
        if ! command -v cargo >/dev/null 2>&1 && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
            export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
        fi
        say "building airlock (cargo build --release -p airlock)"
        (cd "$ROOT" && cargo build --release -p airlock --quiet)
        AIRLOCK_BIN="$ROOT/target/release/airlock"
    fi
}

# ---------------------------------------------------------------------------
# Temp dir, cleanup
# ---------------------------------------------------------------------------
make_tmp() {
    TMP="$(mktemp -d /tmp/airlock-bench.XXXXXX)"   # /tmp: reachable by `postgres`
    chmod 755 "$TMP"
    PGDATA_DIR="$TMP/pgdata"; PGSOCK="$TMP/sock"; PGLOG="$TMP/postgres.log"
    PG_STARTED=0; PG_PORT=""
    AIRLOCK_PID=""; AIRLOCK_PORT=""; AIRLOCK_API=""
    AIRLOCK_OUT="$TMP/airlock.out"; AIRLOCK_LOG="$TMP/airlock.log"
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

as_pg() {   # run a PostgreSQL/PgBouncer program as `postgres` when we are root
    if [ "$IS_ROOT" -eq 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

stop_airlock() {   # stops the current gateway; returns its exit status
    local st=0
    if [ -n "$AIRLOCK_PID" ] && kill -0 "$AIRLOCK_PID" 2>/dev/null; then
        kill -TERM "$AIRLOCK_PID"
        for _ in $(seq 1 100); do kill -0 "$AIRLOCK_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$AIRLOCK_PID" 2>/dev/null; then
            say "airlock did not stop within 10 s of SIGTERM; sending SIGKILL"
            kill -KILL "$AIRLOCK_PID"
        fi
    fi
    if [ -n "$AIRLOCK_PID" ]; then
        wait "$AIRLOCK_PID" 2>/dev/null || st=$?
        [ "$st" -eq 0 ] || say "airlock exited with status $st (log: $AIRLOCK_LOG)"
    fi
    AIRLOCK_PID=""
    return "$st"
}

cleanup() {
    local rc=$?
    set +e
    stop_airlock
    [ -z "${CLEANUP_HOOK:-}" ] || "$CLEANUP_HOOK"
    if [ "$PG_STARTED" -eq 1 ]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w -t 60 stop >/dev/null 2>&1
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "BENCH_KEEP=1: keeping $TMP"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()' 2>/dev/null && return
    local p
    while :; do
        p=$(( 20000 + RANDOM % 30000 ))
        ss -Htln "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return; }
    done
}
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
# A fresh cluster in PGDATA_DIR, TCP on 127.0.0.1 (scram-sha-256) and a unix
# socket in PGSOCK (trust). Arguments are extra postgresql.conf lines.
start_postgres() {   # [CONF_LINE]...
    local attempt
    mkdir -p "$PGSOCK"
    if [ "$IS_ROOT" -eq 1 ]; then chown -R postgres:postgres "$TMP"; fi
    say "initdb ($PGBIN)"
    as_pg env LC_ALL=C LANG=C "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 \
        || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
    # Defaults otherwise (fsync, synchronous_commit, shared_buffers, ...).
    {
        printf '\n# --- airlock bench ---\n'
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$PGSOCK'"
        if [ "$#" -gt 0 ]; then printf '%s\n' "$@"; fi
        echo "password_encryption = 'scram-sha-256'"
    } >>"$PGDATA_DIR/postgresql.conf"
    cat >"$PGDATA_DIR/pg_hba.conf" <<EOF
local  all  all                 trust
host   all  all  127.0.0.1/32   scram-sha-256
EOF

    for attempt in 1 2 3 4 5; do
        PG_PORT="$(free_port)"
        if as_pg env LC_ALL=C "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t 120 -o "-p $PG_PORT" start >/dev/null 2>&1; then
            PG_STARTED=1; break
        fi
        grep -q -e 'Address already in use' -e 'could not create any TCP/IP sockets' "$PGLOG" 2>/dev/null \
            || { tail -n 30 "$PGLOG" >&2; die "PostgreSQL failed to start"; }
    done
    [ "$PG_STARTED" -eq 1 ] || die "PostgreSQL: no free port after 5 attempts"
    PG_VERSION="$("$PGBIN/postgres" --version | awk '{print $3}')"
    say "PostgreSQL $PG_VERSION on 127.0.0.1:$PG_PORT"
}

admin_sql() {   # superuser over the unix socket
    as_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -At -h "$PGSOCK" -p "$PG_PORT" -U postgres -d "${2:-postgres}" -c "$1"
}

# The disk's fdatasync latency (µs for one 8 kB write in TMP), which bounds
# every synchronous commit; sets FDATASYNC_US (empty when unknown).
measure_fdatasync() {
    FDATASYNC_US=""
    if [ -x "$PGBIN/pg_test_fsync" ]; then
        FDATASYNC_US="$("$PGBIN/pg_test_fsync" -s 1 -f "$TMP/fsync.test" 2>/dev/null \
            | awk '/one 8kB write/{b=1} b && $1=="fdatasync"{print $(NF-1); exit}')" || true
        rm -f "$TMP/fsync.test"
        say "fdatasync of one 8 kB write in $TMP: ${FDATASYNC_US:-?} µs"
    fi
}

# ---------------------------------------------------------------------------
# Airlock
# ---------------------------------------------------------------------------
# Blocks of the gateway's TOML config, printed to stdout.
airlock_config_head() {   # [server] (data in TMP/airlock-data), [store], [listeners]
    cat <<EOF
[server]
api_listen = "127.0.0.1:0"
data_dir = "$TMP/airlock-data"

[store]
sync = "$BENCH_STORE_SYNC"

[listeners]
postgres = "127.0.0.1:0"
EOF
}
airlock_identity() {   # name kind group token_env
    cat <<EOF

[[identities]]
name = "$1"
kind = "$2"
groups = ["$3"]
token_env = "$4"
EOF
}
airlock_connection() {   # name database password_env tag (to PG_PORT as DB_USER)
    cat <<EOF

[[connections]]
name = "$1"
protocol = "postgres"
host = "127.0.0.1"
port = $PG_PORT
database = "$2"
username = "$DB_USER"
password_env = "$3"
tls = "disable"
tags = ["$4"]
EOF
}

# Starts `airlock serve --config TMP/airlock.toml [SERVE_ARG]...` (stdout to
# AIRLOCK_OUT, stderr to AIRLOCK_LOG) and waits up to AIRLOCK_READY_SECS
# (default 60) for its `airlock ready` line; sets AIRLOCK_PID, AIRLOCK_READY,
# AIRLOCK_PORT (postgres listener) and AIRLOCK_API (host:port).
start_airlock() {   # [SERVE_ARG]...
    local secs="${AIRLOCK_READY_SECS:-60}" ready=""
    : >"$AIRLOCK_OUT"
    NO_COLOR=1 "$AIRLOCK_BIN" serve --config "$TMP/airlock.toml" "$@" >"$AIRLOCK_OUT" 2>"$AIRLOCK_LOG" </dev/null &
    AIRLOCK_PID=$!
    for _ in $(seq 1 $(( secs * 20 ))); do
        ready="$(grep -m1 '^airlock ready' "$AIRLOCK_OUT" || true)"
        [ -n "$ready" ] && break
        kill -0 "$AIRLOCK_PID" 2>/dev/null || break
        sleep 0.05
    done
    if [ -z "$ready" ]; then
        tail -n 40 "$AIRLOCK_LOG" >&2
        die "airlock serve did not print its ready line within $secs s"
    fi
    AIRLOCK_READY="$ready"
    AIRLOCK_PORT="$(sed -n 's/.* postgres=[^ ]*:\([0-9]\+\).*/\1/p' <<<"$ready")"
    AIRLOCK_API="$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$ready")"
    [ -n "$AIRLOCK_PORT" ] && [ -n "$AIRLOCK_API" ] || die "cannot parse the listeners from: $ready"
}

# ---------------------------------------------------------------------------
# Measurements, report
# ---------------------------------------------------------------------------
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }   # utime + stime of PID
min_max() { printf '%s ' "$@" | awk '{min=$1;max=$1;for(i=1;i<=NF;i++){if($i<min)min=$i;if($i>max)max=$i}; print min "–" max}'; }
ratio() { if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN{ if (b>0) printf "%.2f", a/b; else printf "n/a" }'; else printf 'n/a'; fi; }

report_facts() {   # sets CPU_MODEL, GIT_REV, GIT_DIRTY
    CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    GIT_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    GIT_DIRTY="$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)' || true)"
}

write_report() {   # copies TMP/report.md to BENCH_OUT and prints it
    mkdir -p "$(dirname "$BENCH_OUT")"
    cp "$TMP/report.md" "$BENCH_OUT"
    echo
    cat "$TMP/report.md"
    echo
    say "markdown written to ${BENCH_OUT#"$ROOT"/}"
}
