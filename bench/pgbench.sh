#!/usr/bin/env bash
# pgbench through three paths to one throwaway PostgreSQL:
#   direct     pgbench -> PostgreSQL
#   airlock    pgbench -> airlock serve (recording on) -> PostgreSQL
#   pgbouncer  pgbench -> PgBouncer (session mode)     -> PostgreSQL
#
# Usage:  bench/pgbench.sh            (from any directory; root or a sudoer)
#
# Environment (all optional):
#   BENCH_SECONDS=20        measured seconds per run
#   BENCH_SESSION_THREADS=   passed to `airlock serve --session-threads` (default: one per CPU)
#   BENCH_WARMUP=3          warm-up seconds before each measured run
#   BENCH_SCALE=10          pgbench -i scale factor
#   BENCH_STORE_SYNC=full   Airlock [store] sync: full | normal
#   BENCH_SCENARIOS=        comma-separated filters on scenario names, e.g.
#                           "select-only" or "select-only/c16,tpcb/c1/simple";
#                           a scenario runs if its name contains any filter
#   BENCH_TARGETS=direct,airlock,pgbouncer
#   BENCH_MASK_COLUMNS=     comma-separated column rules (e.g. "filler") for a
#                           masked Airlock connection; default none (unmasked)
#   BENCH_OUT=              markdown output (default bench/results/pgbench-<date>-sync-<mode>.md)
#   AIRLOCK_BIN=            use this binary instead of `cargo build --release -p airlock`
#   BENCH_KEEP=1            keep the temp dir (logs, configs) after the run
#
# Scenarios: {select-only (-S), tpcb (default script)} x {1 client, 16 clients
# (-c 16 -j 2)} x {-M simple, -M prepared}. Every run uses -n (no vacuum) on
# every target; the script itself runs VACUUM + TRUNCATE pgbench_history +
# CHECKPOINT directly before each measured tpcb run, which is what pgbench does
# without -n (Airlock's default policy sends TRUNCATE to review, so pgbench
# must not send it through the gateway).
# TPS is pgbench's "without initial connection time"; latency is "latency average".
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_SECONDS="${BENCH_SECONDS:-20}"
BENCH_WARMUP="${BENCH_WARMUP:-3}"
BENCH_SCALE="${BENCH_SCALE:-10}"
BENCH_STORE_SYNC="${BENCH_STORE_SYNC:-full}"
BENCH_SCENARIOS="${BENCH_SCENARIOS:-}"
BENCH_TARGETS="${BENCH_TARGETS:-direct,airlock,pgbouncer}"
BENCH_MASK_COLUMNS="${BENCH_MASK_COLUMNS:-}"
MASK_DESC="${BENCH_MASK_COLUMNS:+column rules $BENCH_MASK_COLUMNS}"; MASK_DESC="${MASK_DESC:-off}"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
BENCH_OUT="${BENCH_OUT:-$ROOT/bench/results/pgbench-$STAMP-sync-$BENCH_STORE_SYNC${BENCH_SESSION_THREADS:+-threads-$BENCH_SESSION_THREADS}${BENCH_MASK_COLUMNS:+-masked}.md}"

case "$BENCH_STORE_SYNC" in full|normal) ;; *) die "BENCH_STORE_SYNC must be full or normal, not '$BENCH_STORE_SYNC'" ;; esac
[[ "$BENCH_SECONDS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SECONDS must be a positive integer"
[[ "$BENCH_WARMUP" =~ ^[0-9]+$ ]] || die "BENCH_WARMUP must be an integer"

# ---------------------------------------------------------------------------
# 0. Dependencies (idempotent), 1. Airlock binary, temp dir
# ---------------------------------------------------------------------------
need=()
command -v pgbench >/dev/null 2>&1 || [ -x "$(pg_bindir)/pgbench" ] || need+=(postgresql-contrib)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
command -v curl >/dev/null 2>&1 || need+=(curl)
install_deps "${need[@]}"
PGBENCH="$(command -v pgbench || echo "$PGBIN/pgbench")"
PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"

locate_airlock_bin
make_tmp
PGB_STARTED=0

stop_pgbouncer() {   # CLEANUP_HOOK
    if [ "$PGB_STARTED" -eq 1 ] && [ -s "$TMP/pgbouncer.pid" ]; then
        local p; p="$(cat "$TMP/pgbouncer.pid")"
        kill -TERM "$p" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    fi
    return 0
}
CLEANUP_HOOK=stop_pgbouncer

# ---------------------------------------------------------------------------
# 2. PostgreSQL
# ---------------------------------------------------------------------------
DB_USER="bench_owner"
DB_PASSWORD="pw-$(rand_hex 12)"
BENCHER_TOKEN="tok-bencher-$(rand_hex 16)"
export BENCHER_TOKEN BENCH_DB_PASSWORD="$DB_PASSWORD"

start_postgres "max_connections = 200"
admin_sql "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';"
admin_sql "CREATE DATABASE bench OWNER $DB_USER;"

export PGSSLMODE=disable   # plain TCP on every path (Airlock accepts it from loopback)
export PGAPPNAME=pgbench
say "pgbench -i -s $BENCH_SCALE (direct)"
PGPASSWORD="$DB_PASSWORD" "$PGBENCH" -i -q -s "$BENCH_SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" bench >"$TMP/pgbench-init.log" 2>&1 \
    || { cat "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }

# The disk's fdatasync latency bounds Airlock's group commit with sync=full.
measure_fdatasync

# ---------------------------------------------------------------------------
# 3a. Airlock
# ---------------------------------------------------------------------------
has_target() { [[ ",$BENCH_TARGETS," == *",$1,"* ]]; }
if has_target airlock; then
    mkdir -p "$TMP/airlock-data"
    {
        airlock_config_head
        airlock_identity bencher human dba BENCHER_TOKEN
        airlock_connection bench bench BENCH_DB_PASSWORD bench
        if [ -n "$BENCH_MASK_COLUMNS" ]; then
            # A masked session: every result gets a masking plan (and every
            # undescribed Execute a Describe of its portal), whether or not
            # the named columns are in it.
            printf '\n[[masking]]\nname = "bench"\nconnections = ["bench"]\ncolumns = [%s]\nstrategy = "redact"\n' \
                "$(printf '"%s",' ${BENCH_MASK_COLUMNS//,/ } | sed 's/,$//')"
        fi
    } >"$TMP/airlock.toml"
    start_airlock ${BENCH_SESSION_THREADS:+--session-threads "$BENCH_SESSION_THREADS"}
    say "Airlock ($AIRLOCK_READY), store sync=$BENCH_STORE_SYNC"
    PGPASSWORD="$BENCHER_TOKEN" "$PSQL" -X -q -At -h 127.0.0.1 -p "$AIRLOCK_PORT" -U bencher -d bench \
        -c "SELECT count(*) FROM pgbench_branches" >/dev/null \
        || { tail -n 40 "$AIRLOCK_LOG" >&2; die "smoke query through Airlock failed"; }
fi

# ---------------------------------------------------------------------------
# 3b. PgBouncer (session mode)
# ---------------------------------------------------------------------------
PGB_PORT=""
if has_target pgbouncer; then
    PGB_PORT="$(free_port)"
    cat >"$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $TMP/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 40
logfile = $TMP/pgbouncer.log
pidfile = $TMP/pgbouncer.pid
ignore_startup_parameters = extra_float_digits
EOF
    # Plain password: PgBouncer verifies the client's SCRAM with it and logs
    # in upstream with it.
    printf '"%s" "%s"\n' "$DB_USER" "$DB_PASSWORD" >"$TMP/userlist.txt"
    chmod 600 "$TMP/userlist.txt"
    [ "$IS_ROOT" -eq 1 ] && chown postgres:postgres "$TMP/pgbouncer.ini" "$TMP/userlist.txt"
    as_pg "$PGBOUNCER" -d "$TMP/pgbouncer.ini" >"$TMP/pgbouncer.start.log" 2>&1 \
        || { cat "$TMP/pgbouncer.start.log" "$TMP/pgbouncer.log" >&2 2>/dev/null; die "pgbouncer failed to start"; }
    PGB_STARTED=1
    ok=0
    for _ in $(seq 1 100); do
        if PGPASSWORD="$DB_PASSWORD" "$PSQL" -X -q -At -h 127.0.0.1 -p "$PGB_PORT" -U "$DB_USER" -d bench \
            -c "SELECT 1" >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.1
    done
    [ "$ok" -eq 1 ] || { tail -n 20 "$TMP/pgbouncer.log" >&2; die "PgBouncer does not answer on 127.0.0.1:$PGB_PORT"; }
    say "PgBouncer $("$PGBOUNCER" --version | awk 'NR==1{print $2}') (session mode) on 127.0.0.1:$PGB_PORT"
fi

# ---------------------------------------------------------------------------
# 4. Runs
# ---------------------------------------------------------------------------
target_args() {   # prints "PORT USER PASSWORD"
    case "$1" in
        direct)    echo "$PG_PORT $DB_USER $DB_PASSWORD" ;;
        airlock)   echo "$AIRLOCK_PORT bencher $BENCHER_TOKEN" ;;
        pgbouncer) echo "$PGB_PORT $DB_USER $DB_PASSWORD" ;;
    esac
}

# Airlock's own view of a run: deltas of its Prometheus histograms.
METRICS=(airlock_journal_sync_seconds airlock_journal_append_seconds airlock_store_commit_seconds airlock_store_batch_size airlock_decide_seconds airlock_command_duration_seconds)
metrics_snapshot() {   # prints "sum count" per metric in METRICS order (summed over labels)
    local text m
    text="$(curl -fsS --max-time 5 "http://$AIRLOCK_API/metrics" 2>/dev/null || true)"
    for m in "${METRICS[@]}"; do
        awk -v m="$m" '
            $1 ~ "^"m"_sum(\\{|$)"   { s += $2 }
            $1 ~ "^"m"_count(\\{|$)" { c += $2 }
            END { printf "%s %s\n", s+0, c+0 }' <<<"$text"
    done
}
metrics_delta() {   # before-file after-file seconds -> "fsyncs/s ms/fsync append_us index_commits/s events/index_commit decide_us cmd_us"
    paste -d' ' "$1" "$2" | awk -v secs="$3" '
        { ds[NR] = $3 - $1; dc[NR] = $4 - $2 }
        END {
            printf "%.0f %.3f %.1f %.0f %.1f %.1f %.0f\n",
                dc[1] / secs,
                (dc[1] > 0 ? ds[1] / dc[1] * 1000 : 0),
                (dc[2] > 0 ? ds[2] / dc[2] * 1e6 : 0),
                dc[3] / secs,
                (dc[4] > 0 ? ds[4] / dc[4] : 0),
                (dc[5] > 0 ? ds[5] / dc[5] * 1e6 : 0),
                (dc[6] > 0 ? ds[6] / dc[6] * 1e6 : 0)
        }'
}

SCENARIOS=()
for script in select-only tpcb; do
    for clients in 1 16; do
        for mode in simple prepared; do
            name="$script/c$clients/$mode"
            if [ -n "$BENCH_SCENARIOS" ]; then
                keep=0
                IFS=',' read -r -a filters <<<"$BENCH_SCENARIOS"
                for f in "${filters[@]}"; do [ -n "$f" ] && [[ "$name" == *"$f"* ]] && keep=1; done
                [ "$keep" -eq 1 ] || continue
            fi
            SCENARIOS+=("$name")
        done
    done
done
[ "${#SCENARIOS[@]}" -gt 0 ] || die "BENCH_SCENARIOS='$BENCH_SCENARIOS' matches no scenario"
IFS=',' read -r -a TARGETS <<<"$BENCH_TARGETS"
for t in "${TARGETS[@]}"; do
    case "$t" in direct|airlock|pgbouncer) ;; *) die "unknown target '$t' in BENCH_TARGETS" ;; esac
done

declare -A TPS LAT FAILED STORE PROXY_TICKS TXNS
FAILURES=()
LOADS=()

prepare_run() {   # what pgbench does itself without -n, done directly
    if [[ "$1" == tpcb/* ]]; then
        local q
        for q in "VACUUM pgbench_branches" "VACUUM pgbench_tellers" "TRUNCATE pgbench_history" "CHECKPOINT"; do
            admin_sql "$q" bench
        done
    fi
}

run_pgbench() {   # scenario target seconds logfile
    local scen="$1" target="$2" secs="$3" log="$4" script clients mode port user pw
    IFS=/ read -r script clients mode <<<"$scen"
    clients="${clients#c}"
    read -r port user pw <<<"$(target_args "$target")"
    local args=(-n -T "$secs" -M "$mode" -c "$clients" -h 127.0.0.1 -p "$port" -U "$user")
    [ "$clients" -gt 1 ] && args+=(-j 2)
    [ "$script" = select-only ] && args+=(-S)
    # pgbench stops on its own after -T; the outer timeout only guards a hang.
    PGPASSWORD="$pw" timeout --kill-after=10 "$(( secs + 60 ))" "$PGBENCH" "${args[@]}" bench >"$log" 2>&1
}

total=$(( ${#SCENARIOS[@]} * ${#TARGETS[@]} ))
n=0
for scen in "${SCENARIOS[@]}"; do
    for target in "${TARGETS[@]}"; do
        n=$(( n + 1 ))
        log="$TMP/run-${scen//\//_}-$target.log"
        prepare_run "$scen"
        if [ "$BENCH_WARMUP" -gt 0 ]; then
            run_pgbench "$scen" "$target" "$BENCH_WARMUP" "$log.warmup" || true
            prepare_run "$scen"
        fi
        load="$(cut -d' ' -f1 /proc/loadavg)"
        LOADS+=("$load")
        say "[$n/$total] $scen via $target (${BENCH_SECONDS}s, load average $load)"
        rc=0
        proxy_pid=""
        [ "$target" = airlock ] && proxy_pid="$AIRLOCK_PID"
        [ "$target" = pgbouncer ] && [ -s "$TMP/pgbouncer.pid" ] && proxy_pid="$(cat "$TMP/pgbouncer.pid")"
        [ -n "$proxy_pid" ] && pcpu0="$(cpu_ticks "$proxy_pid")"
        if [ "$target" = airlock ]; then metrics_snapshot >"$log.m0"; cpu0="$(cpu_ticks "$AIRLOCK_PID")"; fi
        run_pgbench "$scen" "$target" "$BENCH_SECONDS" "$log" || rc=$?
        [ -n "$proxy_pid" ] && PROXY_TICKS["$scen,$target"]="$(( $(cpu_ticks "$proxy_pid") - pcpu0 ))"
        if [ "$target" = airlock ]; then
            cpu1="$(cpu_ticks "$AIRLOCK_PID")"
            metrics_snapshot >"$log.m1"
            cpu_pct="$(awk -v a="$cpu0" -v b="$cpu1" -v hz="$CLK_TCK" -v secs="$BENCH_SECONDS" 'BEGIN{printf "%.0f", (b-a)/hz/secs*100}')"
            STORE["$scen"]="$(metrics_delta "$log.m0" "$log.m1" "$BENCH_SECONDS") $cpu_pct"
            read -r fps msps aus ics epc dus cus cpu <<<"${STORE[$scen]}"
            say "  airlock: $fps fsyncs/s, $msps ms/fsync, append $aus µs, $ics index commits/s, $epc events/commit, decide $dus µs, command $cus µs, CPU $cpu%"
        fi
        tps="$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time).*/\1/p' "$log" | head -n1)"
        lat="$(sed -n 's/^latency average = \([0-9.]*\) ms.*/\1/p' "$log" | head -n1)"
        failed="$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' "$log" | head -n1)"
        if [ "$rc" -ne 0 ] || [ -z "$tps" ] || [ -z "$lat" ] || { [ -n "$failed" ] && [ "$failed" != 0 ]; }; then
            say "  FAILED (exit $rc); pgbench output:"
            sed 's/^/    /' "$log" | tail -n 20 >&2
            if [ "$target" = airlock ]; then
                say "  airlock log tail:"
                tail -n 30 "$AIRLOCK_LOG" | sed 's/^/    /' >&2
                mkdir -p "$ROOT/bench/results"
                cp "$AIRLOCK_LOG" "$ROOT/bench/results/airlock-stderr-$STAMP.log"
                say "  airlock log saved to bench/results/airlock-stderr-$STAMP.log"
            fi
            FAILURES+=("$scen via $target: exit $rc, $(grep -m1 -iE 'error|abort|fatal' "$log" || echo 'no tps line')")
        fi
        TPS["$scen,$target"]="${tps:-}"
        TXNS["$scen,$target"]="$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$log" | head -n1)"
        LAT["$scen,$target"]="${lat:-}"
        FAILED["$scen,$target"]="${failed:-}"
        say "  tps=${tps:-?} latency=${lat:-?} ms failed=${failed:-?}"
    done
done

# ---------------------------------------------------------------------------
# 5. Report
# ---------------------------------------------------------------------------
fmt_tps() { [ -n "$1" ] && printf '%.0f' "$1" || printf 'n/a'; }
fmt_lat() { [ -n "$1" ] && printf '%.3f' "$1" || printf 'n/a'; }
added_us() {   # airlock_lat direct_lat statements_per_tx
    if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v d="$2" -v n="$3" 'BEGIN{ printf "%.0f", (a-d)*1000/n }'; else printf 'n/a'; fi
}

cpu_per_stmt() {   # ticks transactions statements_per_tx
    if [ -n "$1" ] && [ -n "$2" ] && [ "$2" -gt 0 ]; then
        awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" -v s="$3" 'BEGIN{ printf "%.1f", t/hz*1e6/(n*s) }'
    else printf 'n/a'; fi
}

report_facts

{
    echo "# pgbench: direct vs Airlock vs PgBouncer"
    echo
    echo "- date: $(date -u +'%Y-%m-%d %H:%M UTC'); airlock $GIT_REV$GIT_DIRTY; store sync=\`$BENCH_STORE_SYNC\` (recording on); session threads: ${BENCH_SESSION_THREADS:-one per CPU}; masking: $MASK_DESC"
    echo "- machine: $(nproc) CPUs ($CPU_MODEL), kernel $(uname -r); pgbench, PostgreSQL, PgBouncer and Airlock share the machine"
    echo "- PostgreSQL $PG_VERSION (defaults, max_connections=200), PgBouncer $("$PGBOUNCER" --version | awk 'NR==1{print $2}') session mode, scale $BENCH_SCALE"
    echo "- each run: ${BENCH_WARMUP} s warm-up, then ${BENCH_SECONDS} s; \`-n\`; 16 clients use \`-j 2\`; TPS without initial connection time; latency = pgbench average per transaction (ms)"
    echo "- fdatasync of one 8 kB write (pg_test_fsync, temp dir): ${FDATASYNC_US:-n/a} µs; 1-min load average before the runs: $(min_max "${LOADS[@]}") (pgbench + PostgreSQL + proxy account for ~1–2 of it; more means other work on the machine)"
    echo "- added µs/stmt (1 client only): (Airlock avg latency − direct avg latency) / statements per transaction (select-only: 1, tpcb: 7)"
    echo
    echo "| scenario | direct TPS | airlock TPS | pgbouncer TPS | airlock/direct | airlock/pgbouncer | direct lat ms | airlock lat ms | pgbouncer lat ms | added µs/stmt (1 client) |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for scen in "${SCENARIOS[@]}"; do
        d="${TPS[$scen,direct]:-}"; a="${TPS[$scen,airlock]:-}"; b="${TPS[$scen,pgbouncer]:-}"
        dl="${LAT[$scen,direct]:-}"; al="${LAT[$scen,airlock]:-}"; bl="${LAT[$scen,pgbouncer]:-}"
        added="–"
        if [[ "$scen" == */c1/* ]]; then
            stmts=1; [[ "$scen" == tpcb/* ]] && stmts=7
            added="$(added_us "$al" "$dl" "$stmts")"
        fi
        echo "| $scen | $(fmt_tps "$d") | $(fmt_tps "$a") | $(fmt_tps "$b") | $(ratio "$a" "$d") | $(ratio "$a" "$b") | $(fmt_lat "$dl") | $(fmt_lat "$al") | $(fmt_lat "$bl") | $added |"
    done
    if has_target airlock; then
        echo
        echo "Airlock's own metrics over each measured run (deltas of its /metrics histograms):"
        echo
        echo "| scenario | journal fsyncs/s | ms per fsync | µs per journal append | index commits/s | events per index commit | decide µs/stmt | command µs/stmt | airlock CPU (% of one core) |"
        echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
        for scen in "${SCENARIOS[@]}"; do
            [ -n "${STORE[$scen]:-}" ] || continue
            read -r fps msps aus ics epc dus cus cpu <<<"${STORE[$scen]}"
            echo "| $scen | $fps | $msps | $aus | $ics | $epc | $dus | $cus | $cpu |"
        done
    fi
    if has_target airlock && has_target pgbouncer; then
        echo
        echo "What the proxy process itself spends per statement (CPU time, user + system, over the measured run / statements), the figure TPS ratios hide on a shared machine:"
        echo
        echo "| scenario | airlock CPU µs/stmt | pgbouncer CPU µs/stmt | airlock/pgbouncer |"
        echo "|---|---:|---:|---:|"
        for scen in "${SCENARIOS[@]}"; do
            stmts=1; [[ "$scen" == tpcb/* ]] && stmts=7
            a="$(cpu_per_stmt "${PROXY_TICKS[$scen,airlock]:-}" "${TXNS[$scen,airlock]:-}" "$stmts")"
            b="$(cpu_per_stmt "${PROXY_TICKS[$scen,pgbouncer]:-}" "${TXNS[$scen,pgbouncer]:-}" "$stmts")"
            r="n/a"; [ "$a" != n/a ] && [ "$b" != n/a ] && r="$(ratio "$a" "$b")"
            echo "| $scen | $a | $b | $r |"
        done
    fi
    if [ "${#FAILURES[@]}" -gt 0 ]; then
        echo
        echo "Failed runs:"
        for f in "${FAILURES[@]}"; do echo "- $f"; done
    fi
    if has_target airlock; then
        echo
        errs="$(sed 's/\x1b\[[0-9;]*m//g' "$AIRLOCK_LOG" | grep -cE ' (ERROR|WARN) ' || true)"
        echo "Airlock stderr: $(wc -l <"$AIRLOCK_LOG") lines, ${errs:-0} ERROR/WARN lines; store $(du -sh "$TMP/airlock-data" | cut -f1)."
    fi
} >"$TMP/report.md"

write_report
[ "${#FAILURES[@]}" -eq 0 ] || exit 1
