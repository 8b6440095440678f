#!/usr/bin/env bash
# Approval release latency: how long a held statement takes to run once a
# reviewer approves it, through `airlock serve` in front of a throwaway
# PostgreSQL.
#
#   an AI agent (psycopg) sends  DELETE FROM payments WHERE id = <i> RETURNING ...
#   on a connection tagged `production`: the default policy holds it for a DBA;
#   the NoticeResponse carries the request id; a human DBA then calls
#   POST /api/approvals/{id}/approve, and the clock runs from just before
#   that call until the client has the statement's result.
#
# Usage:  bench/approval_latency.sh       (from any directory; root or a sudoer)
#
# Environment (all optional):
#   BENCH_N=50              measured approvals
#   BENCH_WARMUP=5          approvals before those, not counted
#   BENCH_STORE_SYNC=full   Airlock [store] sync: full | normal
#   BENCH_OUT=              markdown output (default bench/results/approval-latency-<date>-sync-<mode>.md)
#   AIRLOCK_BIN=            use this binary instead of `cargo build --release -p airlock`
#   BENCH_KEEP=1            keep the temp dir (logs, configs) after the run
#
# Per approval it reports, from t0 = just before the approve request is
# written (CLOCK_MONOTONIC via time.perf_counter in the reviewer thread):
#   approve HTTP   the approve call's round trip (keep-alive HTTP/1.1 connection)
#   upstream exec  PostgreSQL's clock_timestamp() while it ran the released
#                  DELETE (returned by RETURNING) minus t0 (wall clock, same
#                  host): when the held bytes had reached PostgreSQL
#   result         the client's execute() returned with the result
# and, as a baseline, the same kind of DELETE sent by the DBA herself, which
# the policy allows at once (the ordinary path: decide, record, forward).
# Goal (from the issue): release under 20 ms.
set -euo pipefail

ROOT="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)"

BENCH_N="${BENCH_N:-50}"
BENCH_WARMUP="${BENCH_WARMUP:-5}"
BENCH_STORE_SYNC="${BENCH_STORE_SYNC:-full}"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
BENCH_OUT="${BENCH_OUT:-$ROOT/bench/results/approval-latency-$STAMP-sync-$BENCH_STORE_SYNC.md}"

say() { printf '[bench] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

case "$BENCH_STORE_SYNC" in full|normal) ;; *) die "BENCH_STORE_SYNC must be full or normal, not '$BENCH_STORE_SYNC'" ;; esac
[[ "$BENCH_N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_N must be a positive integer"
[[ "$BENCH_WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be an integer"

IS_ROOT=0; [ "$(id -u)" -eq 0 ] && IS_ROOT=1
SUDO=(); [ "$IS_ROOT" -eq 0 ] && SUDO=(sudo)

# ---------------------------------------------------------------------------
# 0. Dependencies (idempotent)
# ---------------------------------------------------------------------------
pg_bindir() {
    local d best=""
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do
        [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] && best="$d"
    done
    printf '%s' "$best"
}

need=()
[ -n "$(pg_bindir)" ] || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
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

# psycopg: the tests' venv (scripts/install-test-deps creates it when missing).
PY="${AIRLOCK_TEST_PYTHON:-${CARGO_TARGET_DIR:-$ROOT/target}/test-venv/bin/python}"
if ! "$PY" -c 'import psycopg' >/dev/null 2>&1; then
    say "no psycopg in $PY; running scripts/install-test-deps"
    py_line="$("$ROOT/scripts/install-test-deps" | tail -n 1)"
    PY="${py_line#AIRLOCK_TEST_PYTHON=}"
    "$PY" -c 'import psycopg' >/dev/null 2>&1 || die "psycopg is still not importable by $PY"
fi

# ---------------------------------------------------------------------------
# 1. Airlock binary
# ---------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------
# Temp dir, cleanup
# ---------------------------------------------------------------------------
TMP="$(mktemp -d /tmp/airlock-bench.XXXXXX)"   # /tmp: reachable by `postgres`
chmod 755 "$TMP"
PGDATA_DIR="$TMP/pgdata"; PGSOCK="$TMP/sock"; PGLOG="$TMP/postgres.log"
AIRLOCK_PID=""; PG_STARTED=0; AIRLOCK_LOG="$TMP/airlock.log"

as_pg() {   # run a PostgreSQL program as `postgres` when we are root
    if [ "$IS_ROOT" -eq 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$AIRLOCK_PID" ] && kill -0 "$AIRLOCK_PID" 2>/dev/null; then
        kill -TERM "$AIRLOCK_PID"
        for _ in $(seq 1 100); do kill -0 "$AIRLOCK_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$AIRLOCK_PID" 2>/dev/null; then
            say "airlock did not stop within 10 s of SIGTERM; sending SIGKILL"
            kill -KILL "$AIRLOCK_PID"
        fi
        wait "$AIRLOCK_PID" 2>/dev/null
    fi
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
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

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
# 2. PostgreSQL
# ---------------------------------------------------------------------------
DB_USER="shop_owner"
DB_PASSWORD="pw-$(rand_hex 12)"
AGENT_TOKEN="tok-agent-$(rand_hex 16)"
DBA_TOKEN="tok-dba-$(rand_hex 16)"
export AGENT_TOKEN DBA_TOKEN SHOP_DB_PASSWORD="$DB_PASSWORD"

mkdir -p "$PGSOCK"
[ "$IS_ROOT" -eq 1 ] && chown -R postgres:postgres "$TMP"
say "initdb ($PGBIN)"
as_pg env LC_ALL=C LANG=C "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --locale=C >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
# Defaults otherwise (fsync, synchronous_commit, ...).
cat >>"$PGDATA_DIR/postgresql.conf" <<EOF

# --- airlock bench ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PGSOCK'
password_encryption = 'scram-sha-256'
EOF
cat >"$PGDATA_DIR/pg_hba.conf" <<EOF
local  all  all                 trust
host   all  all  127.0.0.1/32   scram-sha-256
EOF

PG_PORT=""
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

admin_sql() {   # superuser over the unix socket
    as_pg "$PSQL" -X -q -v ON_ERROR_STOP=1 -At -h "$PGSOCK" -p "$PG_PORT" -U postgres -d "${2:-postgres}" -c "$1"
}
ROWS=$(( 2 * (BENCH_N + BENCH_WARMUP) + 10 ))
admin_sql "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';"
admin_sql "CREATE DATABASE shop OWNER $DB_USER;"
admin_sql "SET ROLE $DB_USER; CREATE TABLE payments (id int PRIMARY KEY, amount int NOT NULL);
           INSERT INTO payments SELECT g, g * 10 FROM generate_series(1, $ROWS) g;" shop

# The disk's fdatasync latency bounds every commit on the release path.
FDATASYNC_US=""
if [ -x "$PGBIN/pg_test_fsync" ]; then
    FDATASYNC_US="$("$PGBIN/pg_test_fsync" -s 1 -f "$TMP/fsync.test" 2>/dev/null \
        | awk '/one 8kB write/{b=1} b && $1=="fdatasync"{print $(NF-1); exit}')" || true
    rm -f "$TMP/fsync.test"
    say "fdatasync of one 8 kB write in $TMP: ${FDATASYNC_US:-?} µs"
fi

# ---------------------------------------------------------------------------
# 3. Airlock (default policy pack: an agent's write on production is held
#    for a member of `dba`; the DBA's own write is allowed)
# ---------------------------------------------------------------------------
mkdir -p "$TMP/airlock-data"
cat >"$TMP/airlock.toml" <<EOF
[server]
api_listen = "127.0.0.1:0"
data_dir = "$TMP/airlock-data"

[store]
sync = "$BENCH_STORE_SYNC"

[listeners]
postgres = "127.0.0.1:0"

[[identities]]
name = "agent"
kind = "agent"
groups = ["agents"]
token_env = "AGENT_TOKEN"

[[identities]]
name = "dba"
kind = "human"
groups = ["dba"]
token_env = "DBA_TOKEN"

[[connections]]
name = "shop"
protocol = "postgres"
host = "127.0.0.1"
port = $PG_PORT
database = "shop"
username = "$DB_USER"
password_env = "SHOP_DB_PASSWORD"
tls = "disable"
tags = ["production"]
EOF
: >"$TMP/airlock.out"
NO_COLOR=1 "$AIRLOCK_BIN" serve --config "$TMP/airlock.toml" >"$TMP/airlock.out" 2>"$AIRLOCK_LOG" </dev/null &
AIRLOCK_PID=$!
ready=""
for _ in $(seq 1 600); do
    ready="$(grep -m1 '^airlock ready' "$TMP/airlock.out" || true)"
    [ -n "$ready" ] && break
    kill -0 "$AIRLOCK_PID" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$ready" ]; then
    tail -n 40 "$AIRLOCK_LOG" >&2
    die "airlock serve did not print its ready line within 60 s"
fi
AIRLOCK_PORT="$(sed -n 's/.* postgres=[^ ]*:\([0-9]\+\).*/\1/p' <<<"$ready")"
AIRLOCK_API="$(sed -n 's/.* api=\([^ ]*\).*/\1/p' <<<"$ready")"
[ -n "$AIRLOCK_PORT" ] && [ -n "$AIRLOCK_API" ] || die "cannot parse the listeners from: $ready"
say "Airlock ($ready), store sync=$BENCH_STORE_SYNC"

# ---------------------------------------------------------------------------
# 4. Measure (psycopg client, reviewer over HTTP/1.1 keep-alive)
# ---------------------------------------------------------------------------
cat >"$TMP/measure.py" <<'PYEOF'
import http.client, json, math, queue, sys, threading, time
import psycopg

port, api, agent_token, dba_token, n, warmup = sys.argv[1:7]
n, warmup = int(n), int(warmup)
MARKER = "statement held for approval "
SQL = ("DELETE FROM payments WHERE id = {} "
       "RETURNING extract(epoch FROM clock_timestamp())::float8")

def conninfo(user, token):
    return (f"host=127.0.0.1 port={port} dbname=shop user={user} "
            f"password={token} sslmode=disable application_name=approval-bench")

notices = queue.Queue()
agent = psycopg.connect(conninfo("agent", agent_token), autocommit=True)
agent.add_notice_handler(lambda d: notices.put(d.message_primary))
dba = psycopg.connect(conninfo("dba", dba_token), autocommit=True)
api_host, api_port = api.rsplit(":", 1)
api_conn = http.client.HTTPConnection(api_host, int(api_port), timeout=30)

def approve(request_id):
    api_conn.request("POST", f"/api/approvals/{request_id}/approve",
                 body=json.dumps({"comment": "bench"}),
                 headers={"Authorization": f"Bearer {dba_token}",
                          "Content-Type": "application/json"})
    resp = api_conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        sys.exit(f"approve {request_id}: HTTP {resp.status}: {body[:300]!r}")

def held_run(row_id):
    """One held DELETE: returns (approve_http, upstream_exec, result) in ms."""
    out = {}
    def client():
        try:
            with agent.cursor() as cur:
                cur.execute(SQL.format(row_id))
                out["pg_wall"] = cur.fetchone()[0]
                out["done"] = time.perf_counter()
                out["rows"] = cur.rowcount
        except Exception as e:  # reported by the main thread
            out["error"] = e
            notices.put(None)
    t = threading.Thread(target=client)
    t.start()
    notice = notices.get(timeout=30)
    if notice is None:
        sys.exit(f"the DELETE of row {row_id} failed instead of being held: {out['error']}")
    if MARKER not in notice:
        sys.exit(f"expected a hold notice, got: {notice}")
    request_id = notice.split(MARKER, 1)[1].split(":", 1)[0].strip()
    t0_wall, t0 = time.time(), time.perf_counter()
    approve(request_id)
    t1 = time.perf_counter()
    t.join(timeout=30)
    if t.is_alive() or "error" in out:
        sys.exit(f"the approved DELETE of row {row_id} did not finish: {out.get('error')}")
    if out["rows"] != 1:
        sys.exit(f"the approved DELETE of row {row_id} deleted {out['rows']} rows")
    return ((t1 - t0) * 1e3, (out["pg_wall"] - t0_wall) * 1e3, (out["done"] - t0) * 1e3)

def direct_run(row_id):
    """The same kind of DELETE, allowed at once (the DBA's own): ms."""
    t0 = time.perf_counter()
    with dba.cursor() as cur:
        cur.execute(SQL.format(row_id))
        cur.fetchone()
    return (time.perf_counter() - t0) * 1e3

sys.setswitchinterval(0.0005)
row = 1
for _ in range(warmup):
    held_run(row); direct_run(row + 1); row += 2
held, direct = [], []
for _ in range(n):
    held.append(held_run(row))
    direct.append(direct_run(row + 1))
    row += 2

def stats(xs):
    s = sorted(xs)
    p95 = s[max(0, math.ceil(0.95 * len(s)) - 1)]
    return (s[0], s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2, p95, s[-1])

for name, xs in (("approve HTTP round trip", [h[0] for h in held]),
                 ("approve -> executing upstream", [h[1] for h in held]),
                 ("approve -> result at client", [h[2] for h in held]),
                 ("same DELETE, no hold (baseline)", direct)):
    print("%s|%.2f|%.2f|%.2f|%.2f" % ((name,) + stats(xs)))
PYEOF

say "warm-up: $BENCH_WARMUP approvals; measuring: $BENCH_N approvals"
LOAD_BEFORE="$(cut -d' ' -f1 /proc/loadavg)"
"$PY" "$TMP/measure.py" "$AIRLOCK_PORT" "$AIRLOCK_API" "$AGENT_TOKEN" "$DBA_TOKEN" "$BENCH_N" "$BENCH_WARMUP" >"$TMP/stats.txt" \
    || { tail -n 30 "$AIRLOCK_LOG" >&2; die "measurement failed"; }
LOAD_AFTER="$(cut -d' ' -f1 /proc/loadavg)"

# Every approved DELETE ran exactly once; nothing else was deleted.
LEFT="$(admin_sql "SELECT count(*) FROM payments" shop)"
[ "$LEFT" -eq $(( ROWS - 2 * (BENCH_N + BENCH_WARMUP) )) ] || die "expected $(( ROWS - 2 * (BENCH_N + BENCH_WARMUP) )) rows left, found $LEFT"

# ---------------------------------------------------------------------------
# 5. Report
# ---------------------------------------------------------------------------
RESULT_MEDIAN="$(awk -F'|' '$1 == "approve -> result at client" {print $3}' "$TMP/stats.txt")"
RESULT_MAX="$(awk -F'|' '$1 == "approve -> result at client" {print $5}' "$TMP/stats.txt")"
RESULT_P95="$(awk -F'|' '$1 == "approve -> result at client" {print $4}' "$TMP/stats.txt")"
MET="$(awk -v m="$RESULT_P95" 'BEGIN { print (m < 20) ? "yes" : "no" }')"
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
GIT_REV="$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)"
GIT_DIRTY="$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)' || true)"
{
    echo "# Approval release latency"
    echo
    echo "- date: $(date -u +'%Y-%m-%d %H:%M UTC'); airlock $GIT_REV$GIT_DIRTY; store sync=\`$BENCH_STORE_SYNC\`"
    echo "- machine: $(nproc) CPUs ($CPU_MODEL), kernel $(uname -r); PostgreSQL $PG_VERSION (defaults), client, reviewer and Airlock on one host"
    echo "- $BENCH_N approvals measured after $BENCH_WARMUP warm-up ones; 1-min load average $LOAD_BEFORE before, $LOAD_AFTER after; fdatasync of one 8 kB write (pg_test_fsync, temp dir): ${FDATASYNC_US:-n/a} µs"
    echo
    echo "| ms | min | median | p95 | max |"
    echo "|---|---:|---:|---:|---:|"
    while IFS='|' read -r name mn med p95 mx; do
        echo "| $name | $mn | $med | $p95 | $mx |"
    done <"$TMP/stats.txt"
    echo
    echo "Goal: approve → result under 20 ms. p95 $RESULT_P95 ms (median $RESULT_MEDIAN, max $RESULT_MAX): met: **$MET**."
} >"$TMP/report.md"

mkdir -p "$(dirname "$BENCH_OUT")"
cp "$TMP/report.md" "$BENCH_OUT"
echo
cat "$TMP/report.md"
echo
say "markdown written to ${BENCH_OUT#"$ROOT"/}"
