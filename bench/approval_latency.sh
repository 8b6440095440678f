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

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_N="${BENCH_N:-50}"
BENCH_WARMUP="${BENCH_WARMUP:-5}"
BENCH_STORE_SYNC="${BENCH_STORE_SYNC:-full}"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
BENCH_OUT="${BENCH_OUT:-$ROOT/bench/results/approval-latency-$STAMP-sync-$BENCH_STORE_SYNC.md}"

case "$BENCH_STORE_SYNC" in full|normal) ;; *) die "BENCH_STORE_SYNC must be full or normal, not '$BENCH_STORE_SYNC'" ;; esac
[[ "$BENCH_N" =~ ^[1-9][0-9]*$ ]] || die "BENCH_N must be a positive integer"
[[ "$BENCH_WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be an integer"

# ---------------------------------------------------------------------------
# 0. Dependencies (idempotent)
# ---------------------------------------------------------------------------
need=()
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
install_deps "${need[@]}"

# psycopg: the tests' venv (scripts/install-test-deps creates it when missing).
PY="${AIRLOCK_TEST_PYTHON:-${CARGO_TARGET_DIR:-$ROOT/target}/test-venv/bin/python}"
if ! "$PY" -c 'import psycopg' >/dev/null 2>&1; then
    say "no psycopg in $PY; running scripts/install-test-deps"
    py_line="$("$ROOT/scripts/install-test-deps" | tail -n 1)"
    PY="${py_line#AIRLOCK_TEST_PYTHON=}"
    "$PY" -c 'import psycopg' >/dev/null 2>&1 || die "psycopg is still not importable by $PY"
fi

# ---------------------------------------------------------------------------
# 1. Airlock binary, temp dir
# ---------------------------------------------------------------------------
locate_airlock_bin
make_tmp

# ---------------------------------------------------------------------------
# 2. PostgreSQL
# ---------------------------------------------------------------------------
DB_USER="shop_owner"
DB_PASSWORD="pw-$(rand_hex 12)"
AGENT_TOKEN="tok-agent-$(rand_hex 16)"
DBA_TOKEN="tok-dba-$(rand_hex 16)"
export AGENT_TOKEN DBA_TOKEN SHOP_DB_PASSWORD="$DB_PASSWORD"

start_postgres
ROWS=$(( 2 * (BENCH_N + BENCH_WARMUP) + 10 ))
admin_sql "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';"
admin_sql "CREATE DATABASE shop OWNER $DB_USER;"
admin_sql "SET ROLE $DB_USER; CREATE TABLE payments (id int PRIMARY KEY, amount int NOT NULL);
           INSERT INTO payments SELECT g, g * 10 FROM generate_series(1, $ROWS) g;" shop

# The disk's fdatasync latency bounds every commit on the release path.
measure_fdatasync

# ---------------------------------------------------------------------------
# 3. Airlock (default policy pack: an agent's write on production is held
#    for a member of `dba`; the DBA's own write is allowed)
# ---------------------------------------------------------------------------
mkdir -p "$TMP/airlock-data"
{
    airlock_config_head
    airlock_identity agent agent agents AGENT_TOKEN
    airlock_identity dba human dba DBA_TOKEN
    airlock_connection shop shop SHOP_DB_PASSWORD production
} >"$TMP/airlock.toml"
start_airlock
say "Airlock ($AIRLOCK_READY), store sync=$BENCH_STORE_SYNC"

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
report_facts
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

write_report
