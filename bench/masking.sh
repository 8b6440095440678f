#!/usr/bin/env bash
# Masking throughput and gateway memory: one large plain SELECT (DataRow
# messages, not COPY) of a table with an e-mail and a card-number column,
# read by psql through these paths to one throwaway PostgreSQL:
#   direct                  psql -> PostgreSQL
#   off                     psql -> Airlock, connection without masking rules
#   columns                 psql -> Airlock, column rules (email, *card*; partial)
#   columns+detectors       psql -> Airlock, column rules + all 9 detectors
#                           (email/card by column rule, the name column scanned)
#   detectors               psql -> Airlock, all 9 detectors only (every text
#                           cell scanned; e-mail and card found in every row)
#
# Usage:  bench/masking.sh            (from any directory; root or a sudoer)
#
# Environment (all optional):
#   BENCH_ROWS=1000000      rows of the large SELECT (and of the table)
#   BENCH_SMALL_ROWS=100000 rows of the small SELECT (memory comparison)
#   BENCH_REPS=7            repetitions per target and size; medians reported
#   BENCH_TARGETS=direct,off,columns,columns+detectors,detectors
#   BENCH_STORE_SYNC=full   Airlock [store] sync: full | normal
#   BENCH_OUT=              markdown output (default bench/results/masking-<date>.md)
#   AIRLOCK_BIN=            use this binary instead of `cargo build --release -p airlock`
#   BENCH_KEEP=1            keep the temp dir (logs, configs) after the run
#
# Every measured Airlock run uses a fresh `airlock serve` process: start it,
# check a few rows through the target connection (masked where they must be,
# raw where they must not be; the script fails otherwise), reset the peak-RSS
# counter (`echo 5 > /proc/PID/clear_refs`), run the timed SELECT, read VmHWM
# (peak resident memory during the SELECT), VmRSS and the gateway's CPU time,
# stop it. So the peak of a 1M-row run and of a small run are measured alike.
# Before the measured runs, one warm-up pass reads the whole large result once
# per target into a file and checks every row (row count; direct and `off`
# byte-identical; masked targets have no raw e-mail or card number in any row),
# which also puts the table in the page cache.
# The timed command is the whole `psql -X -A -t -q -c "SELECT ..." -o /dev/null`
# process (start, connect, query, read and format every row), timed with
# CLOCK_MONOTONIC; rows/s = rows / that time. Each repetition runs every
# target back to back at one size, then at the other, alternating the order of
# targets (forward, reversed, forward, ...) so that drift in the machine's load
# hits all targets alike.
set -euo pipefail

# shellcheck source=bench/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH_ROWS="${BENCH_ROWS:-1000000}"
BENCH_SMALL_ROWS="${BENCH_SMALL_ROWS:-100000}"
BENCH_REPS="${BENCH_REPS:-7}"
BENCH_TARGETS="${BENCH_TARGETS:-direct,off,columns,columns+detectors,detectors}"
BENCH_STORE_SYNC="${BENCH_STORE_SYNC:-full}"
STAMP="$(date +%Y-%m-%d-%H%M%S)"
BENCH_OUT="${BENCH_OUT:-$ROOT/bench/results/masking-$STAMP.md}"

case "$BENCH_STORE_SYNC" in full|normal) ;; *) die "BENCH_STORE_SYNC must be full or normal, not '$BENCH_STORE_SYNC'" ;; esac
[[ "$BENCH_ROWS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_ROWS must be a positive integer"
[[ "$BENCH_SMALL_ROWS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_SMALL_ROWS must be a positive integer"
[ "$BENCH_SMALL_ROWS" -lt "$BENCH_ROWS" ] || die "BENCH_SMALL_ROWS must be smaller than BENCH_ROWS"
[[ "$BENCH_REPS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPS must be a positive integer"
IFS=',' read -r -a TARGETS <<<"$BENCH_TARGETS"
[ "${#TARGETS[@]}" -gt 0 ] || die "BENCH_TARGETS is empty"
for t in "${TARGETS[@]}"; do
    case "$t" in direct|off|columns|columns+detectors|detectors) ;; *) die "unknown target '$t' in BENCH_TARGETS" ;; esac
done
has_target() { [[ ",$BENCH_TARGETS," == *",$1,"* ]]; }
SIZES=("$BENCH_ROWS" "$BENCH_SMALL_ROWS")

# ---------------------------------------------------------------------------
# 0. Dependencies (idempotent), 1. Airlock binary, temp dir
# ---------------------------------------------------------------------------
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
# The timer: Perl's Time::HiRes (CLOCK_MONOTONIC); perl-base alone lacks it.
perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e 1 >/dev/null 2>&1 || need+=(perl)
install_deps "${need[@]}"

locate_airlock_bin
make_tmp
AIRLOCK_RUNS=0

# ---------------------------------------------------------------------------
# 2. PostgreSQL and the table
# ---------------------------------------------------------------------------
DB_USER="bench_owner"
DB_PASSWORD="pw-$(rand_hex 12)"
BENCHER_TOKEN="tok-bencher-$(rand_hex 16)"
export BENCHER_TOKEN BENCH_DB_PASSWORD="$DB_PASSWORD"

start_postgres
admin_sql "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD';"
admin_sql "CREATE DATABASE bench OWNER $DB_USER;"

# customers(id int4, name text, email text, card_number text): e-mails
# user<id>@example.com, Visa-shaped card numbers "4000 0000 0001 2346" (id 1234)
# (16 digits, valid Luhn check digit, so the credit_card detector finds them).
say "loading $BENCH_ROWS rows into customers"
admin_sql "
SET ROLE $DB_USER;
CREATE FUNCTION luhn_check_digit(body text) RETURNS int LANGUAGE sql IMMUTABLE AS \$\$
  SELECT (10 - sum(CASE WHEN k % 2 = 1
                        THEN (CASE WHEN 2 * d > 9 THEN 2 * d - 9 ELSE 2 * d END)
                        ELSE d END) % 10) % 10
  FROM (SELECT k, substr(body, length(body) - k + 1, 1)::int AS d
        FROM generate_series(1, length(body)) AS k) AS digits
\$\$;
CREATE TABLE customers (
  id          int4 PRIMARY KEY,
  name        text NOT NULL,
  email       text NOT NULL,
  card_number text NOT NULL
);
INSERT INTO customers
SELECT i, 'Customer ' || i, 'user' || i || '@example.com',
       substr(c, 1, 4) || ' ' || substr(c, 5, 4) || ' ' || substr(c, 9, 4) || ' ' || substr(c, 13, 4)
FROM generate_series(1, $BENCH_ROWS) AS i,
     LATERAL (SELECT '4' || lpad(i::text, 14, '0') AS body) AS b,
     LATERAL (SELECT b.body || luhn_check_digit(b.body) AS c) AS card;
" bench
admin_sql "VACUUM (ANALYZE) customers;" bench
TABLE_SIZE="$(admin_sql "SELECT pg_size_pretty(pg_table_size('customers'))" bench)"

export PGSSLMODE=disable   # plain TCP on every path (Airlock accepts it from loopback)
export PGAPPNAME=masking-bench

# ---------------------------------------------------------------------------
# 3. Airlock: one config, one connection per masking setup; a fresh process
#    per measured run
# ---------------------------------------------------------------------------
mkdir -p "$TMP/airlock-data"
connection_block() { airlock_connection "$1" bench BENCH_DB_PASSWORD bench; }
{
    airlock_config_head
    # A human in "dba" but not in "pii-readers": the default policy allows
    # reads on a connection without the "production" tag, and does not allow
    # unmask.
    airlock_identity bencher human dba BENCHER_TOKEN
    connection_block plain     # off
    connection_block masked    # columns
    connection_block detect    # columns+detectors
    connection_block scan      # detectors
    cat <<'EOF'

[[masking]]
name = "pii-columns"
connections = ["masked", "detect"]
columns = ["email", "*card*"]
strategy = "partial"

[[masking]]
name = "pii-in-text"
connections = ["detect", "scan"]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "ip_address", "aws_access_key", "jwt", "private_key"]
strategy = "redact"
EOF
} >"$TMP/airlock.toml"

target_conn() {   # target -> Airlock connection name (empty for direct)
    case "$1" in
        direct) echo "" ;;
        off) echo plain ;;
        columns) echo masked ;;
        columns+detectors) echo detect ;;
        detectors) echo scan ;;
    esac
}

AIRLOCK_READY_SECS=30
start_fresh_airlock() {   # a new gateway process, logs in TMP/airlock-<n>.{out,log}
    AIRLOCK_RUNS=$(( AIRLOCK_RUNS + 1 ))
    AIRLOCK_OUT="$TMP/airlock-$AIRLOCK_RUNS.out"
    AIRLOCK_LOG="$TMP/airlock-$AIRLOCK_RUNS.log"
    start_airlock
}

# ---------------------------------------------------------------------------
# 4. Client, checks, probes
# ---------------------------------------------------------------------------
query() { echo "SELECT id, name, email, card_number FROM customers WHERE id <= $1"; }

run_psql() {   # target sql outfile -> psql exit status
    local target="$1" sql="$2" outfile="$3" conn
    conn="$(target_conn "$target")"
    if [ "$target" = direct ]; then
        PGPASSWORD="$DB_PASSWORD" "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$DB_USER" -d bench \
            -c "$sql" -o "$outfile"
    else
        PGPASSWORD="$BENCHER_TOKEN" "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$AIRLOCK_PORT" -U bencher -d "$conn" \
            -c "$sql" -o "$outfile"
    fi
}

# The timed run: the whole psql process on CLOCK_MONOTONIC. Prints
# "wall_seconds client_cpu_seconds" (psql's user + system time).
timed_psql() {   # target sql
    local target="$1" sql="$2" conn port user pw
    conn="$(target_conn "$target")"
    if [ "$target" = direct ]; then
        port="$PG_PORT"; user="$DB_USER"; pw="$DB_PASSWORD"; conn=bench
    else
        port="$AIRLOCK_PORT"; user=bencher; pw="$BENCHER_TOKEN"
    fi
    PGPASSWORD="$pw" perl -MTime::HiRes=clock_gettime,CLOCK_MONOTONIC -e '
        my $t0 = clock_gettime(CLOCK_MONOTONIC);
        my $rc = system(@ARGV);
        my $t1 = clock_gettime(CLOCK_MONOTONIC);
        my @t = times;
        printf "%.6f %.3f\n", $t1 - $t0, $t[2] + $t[3];
        exit($rc == 0 ? 0 : 1);' -- \
        "$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$user" -d "$conn" -c "$sql" -o /dev/null
}

# Checks psql -A -t output of the query: exactly `rows` rows with ids 1..rows,
# names untouched, and e-mail/card raw (direct, off) or masked (the others)
# in every row. Prints a reason and fails otherwise.
check_output() {   # target file rows
    local mode=raw
    case "$1" in direct|off) mode=raw ;; *) mode=masked ;; esac
    awk -F'|' -v mode="$mode" -v want="$3" '
        function fail(why) { printf "line %d: %s: %s\n", NR, why, $0; bad = 1; exit 1 }
        {
            n++
            if (NF != 4) fail("expected 4 fields")
            if ($1 !~ /^[0-9]+$/ || $1 < 1 || $1 > want || seen[$1]++) fail("bad or repeated id")
            if ($2 != "Customer " $1) fail("name changed")
            raw_email = "user" $1 "@example.com"
            if (mode == "raw") {
                if ($3 != raw_email) fail("e-mail is not the raw value")
                if ($4 !~ /^4[0-9][0-9][0-9] [0-9][0-9][0-9][0-9] [0-9][0-9][0-9][0-9] [0-9][0-9][0-9][0-9]$/) fail("card is not the raw value")
            } else {
                if (index($3, "@example.com") || index($3, "user" $1 "@")) fail("raw e-mail leaked")
                if (index($3, "****") == 0) fail("e-mail not masked")
                digits = $4; gsub(/[^0-9]/, "", digits)
                if (length(digits) > 4) fail("card number digits leaked")
                if (index($4, "****") == 0) fail("card not masked")
            }
        }
        END { if (!bad && n != want) { printf "%d rows, expected %d\n", n, want; exit 1 } }' "$2"
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
bytes_to_client() {
    curl -fsS --max-time 5 "http://$AIRLOCK_API/metrics" 2>/dev/null \
        | awk '$1 ~ /^airlock_bytes_total\{/ && $1 ~ /direction="to_client"/ && $1 ~ /protocol="postgres"/ { s += $2 } END { printf "%.0f\n", s + 0 }'
}

# ---------------------------------------------------------------------------
# 5. Warm-up: read the whole large result once per target and check every row
# ---------------------------------------------------------------------------
start_fresh_airlock
say "Airlock (fresh process per measured run; this one for the warm-up), store sync=$BENCH_STORE_SYNC"
declare -A RESULT_BYTES
DIRECT_SUM=""
for target in "${TARGETS[@]}"; do
    f="$TMP/warmup-$target.txt"
    run_psql "$target" "$(query "$BENCH_ROWS")" "$f" \
        || { [ "$target" = direct ] || tail -n 30 "$AIRLOCK_LOG" >&2; die "warm-up SELECT via $target failed"; }
    why="$(check_output "$target" "$f" "$BENCH_ROWS")" || die "warm-up output via $target is wrong: $why"
    RESULT_BYTES["$target"]="$(wc -c <"$f")"
    sum="$(md5sum <"$f" | cut -d' ' -f1)"
    if [ "$target" = direct ]; then DIRECT_SUM="$sum"; fi
    if [ "$target" = off ] && [ -n "$DIRECT_SUM" ] && [ "$sum" != "$DIRECT_SUM" ]; then
        die "the unmasked result through Airlock differs from the direct one"
    fi
    say "warm-up $target: $BENCH_ROWS rows checked ($(head -n1 "$f"))"
    rm -f "$f"
done
stop_airlock || die "the warm-up gateway did not exit cleanly (log: $AIRLOCK_LOG)"

# ---------------------------------------------------------------------------
# 6. Measured runs
# ---------------------------------------------------------------------------
CLEAR_REFS_OK=1
declare -A SAMPLES   # "target,rows" -> lines "wall client_cpu gw_cpu hwm_start rss_before hwm_query rss_after bytes"
LOADS=()
FAILURES=()
total=$(( BENCH_REPS * ${#TARGETS[@]} * ${#SIZES[@]} ))
n=0
for rep in $(seq 1 "$BENCH_REPS"); do
    order=("${TARGETS[@]}")
    if [ $(( rep % 2 )) -eq 0 ]; then
        order=()
        for (( i = ${#TARGETS[@]} - 1; i >= 0; i-- )); do order+=("${TARGETS[$i]}"); done
    fi
    for rows in "${SIZES[@]}"; do
        for target in "${order[@]}"; do
            n=$(( n + 1 ))
            gw="-"; hwm0="-"; rss0="-"; hwm1="-"; rss1="-"; bytes="-"
            if [ "$target" != direct ]; then
                start_fresh_airlock
                # A few rows through this connection: masked (or raw) as they
                # must be. Also resolves the table's columns for the rules.
                run_psql "$target" "$(query 5)" "$TMP/smoke.txt" \
                    || { tail -n 30 "$AIRLOCK_LOG" >&2; die "smoke SELECT via $target failed"; }
                why="$(check_output "$target" "$TMP/smoke.txt" 5)" || die "smoke output via $target is wrong: $why"
                hwm0="$(status_kb "$AIRLOCK_PID" VmHWM)"
                b0="$(bytes_to_client)"
                # Reset VmHWM to the current RSS: the peak below is the SELECT's.
                if ! echo 5 >"/proc/$AIRLOCK_PID/clear_refs" 2>/dev/null; then CLEAR_REFS_OK=0; fi
                rss0="$(status_kb "$AIRLOCK_PID" VmRSS)"
                c0="$(cpu_ticks "$AIRLOCK_PID")"
            fi
            load="$(cut -d' ' -f1 /proc/loadavg)"
            LOADS+=("$load")
            say "[$n/$total] rep $rep: $rows rows via $target (load average $load)"
            if ! res="$(timed_psql "$target" "$(query "$rows")")"; then
                FAILURES+=("rep $rep, $rows rows via $target: psql failed")
                say "  FAILED"
                [ "$target" = direct ] || { tail -n 30 "$AIRLOCK_LOG" >&2; stop_airlock || true; }
                continue
            fi
            read -r wall ccpu <<<"$res"
            if [ "$target" != direct ]; then
                c1="$(cpu_ticks "$AIRLOCK_PID")"
                hwm1="$(status_kb "$AIRLOCK_PID" VmHWM)"
                rss1="$(status_kb "$AIRLOCK_PID" VmRSS)"
                b1="$(bytes_to_client)"
                bytes=$(( b1 - b0 ))
                gw="$(awk -v a="$c0" -v b="$c1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", (b-a)/hz}')"
                stop_airlock || FAILURES+=("rep $rep, $rows rows via $target: gateway exit status non-zero")
            fi
            SAMPLES["$target,$rows"]+="$wall $ccpu $gw $hwm0 $rss0 $hwm1 $rss1 $bytes"$'\n'
            say "  $(awk -v w="$wall" -v r="$rows" 'BEGIN{printf "%.3f s, %.0f rows/s", w, r/w}'), psql CPU ${ccpu} s, gateway CPU ${gw} s, VmHWM during SELECT ${hwm1} kB (RSS before ${rss0} kB, start-up peak ${hwm0} kB)"
        done
    done
done

# ---------------------------------------------------------------------------
# 7. Report
# ---------------------------------------------------------------------------
col() {   # target rows field# -> values, one per line
    printf '%s' "${SAMPLES[$1,$2]:-}" | awk -v f="$3" 'NF && $f != "-" {print $f}'
}
median() { sort -g | awk '{a[NR]=$1} END { if (NR == 0) print ""; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2] + a[NR/2+1]) / 2 }'; }
maxof() { sort -g | tail -n1; }
med() { col "$1" "$2" "$3" | median; }
rate() { [ -n "$2" ] && awk -v r="$1" -v w="$2" 'BEGIN{printf "%.0f", r/w}' || printf ''; }
fmt_int() { [ -n "$1" ] && printf "%'d" "$1" 2>/dev/null || printf 'n/a'; }
mib() { [ -n "$1" ] && awk -v k="$1" 'BEGIN{printf "%.1f", k/1024}' || printf 'n/a'; }
# Per-repetition ratio range: run i of target a over run i of target b (the
# same repetition, i.e. close in time).
ratio_range() {   # target_a target_b rows
    paste <(col "$1" "$3" 1) <(col "$2" "$3" 1) | awk 'NF == 2 && $2 > 0 { r = $1 / $2; if (!s++ || r < lo) lo = r; if (r > hi) hi = r } END { if (s) printf "%.2f–%.2f", lo, hi; else printf "n/a" }'
}
label() {
    case "$1" in
        direct) echo "direct (psql → PostgreSQL)" ;;
        off) echo "Airlock, masking off" ;;
        columns) echo "Airlock, column rules (email, \`*card*\`, partial)" ;;
        columns+detectors) echo "Airlock, column rules + 9 detectors (name scanned)" ;;
        detectors) echo "Airlock, 9 detectors only (every text cell scanned, 2 hits/row)" ;;
    esac
}

report_facts
declare -A MED_WALL
for t in "${TARGETS[@]}"; do for r in "${SIZES[@]}"; do MED_WALL["$t,$r"]="$(med "$t" "$r" 1)"; done; done

{
    echo "# Masking: SELECT of $BENCH_ROWS rows, direct vs Airlock masking off/on"
    echo
    echo "- date: $(date -u +'%Y-%m-%d %H:%M UTC'); airlock $GIT_REV$GIT_DIRTY; store sync=\`$BENCH_STORE_SYNC\` (recording on)"
    echo "- machine: $(nproc) CPUs ($CPU_MODEL), kernel $(uname -r); psql, PostgreSQL and Airlock share the machine"
    echo "- PostgreSQL $PG_VERSION (defaults); psql $("$PSQL" --version | awk '{print $3}'); table \`customers(id int4, name text, email text, card_number text)\`, $BENCH_ROWS rows, $TABLE_SIZE"
    echo "- query: \`$(query N)\` with N = $BENCH_ROWS and $BENCH_SMALL_ROWS; client: \`psql -X -A -t -q -c \"...\" -o /dev/null\` (simple protocol, text format), the whole process timed with CLOCK_MONOTONIC (includes psql start-up, connection and authentication); $BENCH_REPS repetitions per target and size, order alternating; medians"
    echo "- result as psql prints it: $(fmt_int "${RESULT_BYTES[direct]:-${RESULT_BYTES[off]:-}}") bytes for $BENCH_ROWS rows; every warm-up row checked on every target (raw on direct and off, byte-identical; masked e-mail and card on every masked target)"
    echo "- each Airlock run: a fresh \`airlock serve\`; VmHWM reset (\`clear_refs\` 5) after start-up and a 5-row check$( [ "$CLEAR_REFS_OK" -eq 1 ] || echo ' (**reset refused: VmHWM includes start-up**)'), so \"peak during SELECT\" is the SELECT's own peak RSS; gateway CPU = utime + stime of the process over the SELECT"
    echo "- 1-min load average before the runs: $(min_max "${LOADS[@]}")"
    echo
    echo "## Throughput ($BENCH_ROWS rows)"
    echo
    echo "| target | median s | rows/s | × masking off (range) | × direct (range) | gateway CPU s | gateway µs/row | psql CPU s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    r="$BENCH_ROWS"
    for t in "${TARGETS[@]}"; do
        w="${MED_WALL[$t,$r]}"
        vs_off="–"; vs_direct="–"
        if [ "$t" != off ] && [ "$t" != direct ] && has_target off; then
            vs_off="$(ratio "${MED_WALL[off,$r]}" "$w") ($(ratio_range off "$t" "$r"))"
        fi
        if [ "$t" != direct ] && has_target direct; then
            vs_direct="$(ratio "${MED_WALL[direct,$r]}" "$w") ($(ratio_range direct "$t" "$r"))"
        fi
        g="$(med "$t" "$r" 3)"
        gus="–"; [ -n "$g" ] && gus="$(awk -v g="$g" -v r="$r" 'BEGIN{printf "%.2f", g*1e6/r}')"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "$(label "$t")" \
            "$( [ -n "$w" ] && printf '%.3f' "$w" || echo n/a)" "$(fmt_int "$(rate "$r" "$w")")" \
            "$vs_off" "$vs_direct" "${g:-–}" "$gus" "$(med "$t" "$r" 2)"
    done
    echo
    echo "Ratios are of median rows/s; the range is over the per-repetition ratios (runs of the same repetition are adjacent in time)."
    echo
    echo "## Throughput ($BENCH_SMALL_ROWS rows)"
    echo
    echo "| target | median s | rows/s | × masking off | × direct |"
    echo "|---|---:|---:|---:|---:|"
    r="$BENCH_SMALL_ROWS"
    for t in "${TARGETS[@]}"; do
        w="${MED_WALL[$t,$r]}"
        vs_off="–"; vs_direct="–"
        [ "$t" != off ] && [ "$t" != direct ] && has_target off && vs_off="$(ratio "${MED_WALL[off,$r]}" "$w")"
        [ "$t" != direct ] && has_target direct && vs_direct="$(ratio "${MED_WALL[direct,$r]}" "$w")"
        printf '| %s | %s | %s | %s | %s |\n' "$(label "$t")" \
            "$( [ -n "$w" ] && printf '%.3f' "$w" || echo n/a)" "$(fmt_int "$(rate "$r" "$w")")" "$vs_off" "$vs_direct"
    done
    echo
    echo "## Gateway memory (fresh process per run)"
    echo
    echo "| target | rows | bytes sent to client | RSS before SELECT MiB | peak during SELECT (VmHWM) MiB, median / max over runs | RSS after MiB | start-up peak MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for t in "${TARGETS[@]}"; do
        [ "$t" = direct ] && continue
        for r in "${SIZES[@]}"; do
            printf '| %s | %s | %s | %s | %s / %s | %s | %s |\n' "$t" "$(fmt_int "$r")" "$(fmt_int "$(med "$t" "$r" 8)")" \
                "$(mib "$(med "$t" "$r" 5)")" "$(mib "$(med "$t" "$r" 6)")" "$(mib "$(col "$t" "$r" 6 | maxof)")" \
                "$(mib "$(med "$t" "$r" 7)")" "$(mib "$(med "$t" "$r" 4)")"
        done
    done
    echo
    echo "## Goals"
    echo
    echo "| goal | measured | met? |"
    echo "|---|---|---|"
    if has_target off; then
        for t in columns columns+detectors detectors; do
            has_target "$t" || continue
            x="$(ratio "${MED_WALL[off,$BENCH_ROWS]}" "${MED_WALL[$t,$BENCH_ROWS]}")"
            met="$(awk -v x="$x" 'BEGIN{ print (x+0 >= 0.7 ? "yes" : "**no**") }')"
            echo "| $t: masking on ≥ 0.7× masking off ($BENCH_ROWS rows) | ${x}× ($(ratio_range off "$t" "$BENCH_ROWS")) | $met |"
        done
    fi
    for t in "${TARGETS[@]}"; do
        [ "$t" = direct ] && continue
        big="$(col "$t" "$BENCH_ROWS" 6 | maxof)"; small="$(col "$t" "$BENCH_SMALL_ROWS" 6 | maxof)"
        [ -n "$big" ] && [ -n "$small" ] || continue
        # Independent of result size: the 10× larger result raises the peak
        # by less than 4 MiB (it is tens of MB on the wire).
        d=$(( big - small ))
        met="$(awk -v d="$d" 'BEGIN{ print (d < 4096 ? "yes" : "**no**") }')"
        echo "| $t: peak gateway memory independent of result size (max over runs; met if Δ < 4 MiB) | $(mib "$big") MiB at $(fmt_int "$BENCH_ROWS") rows vs $(mib "$small") MiB at $(fmt_int "$BENCH_SMALL_ROWS") (Δ $(mib "$d") MiB) | $met |"
    done
    if [ "${#FAILURES[@]}" -gt 0 ]; then
        echo
        echo "Failed runs:"
        for f in "${FAILURES[@]}"; do echo "- $f"; done
    fi
    echo
    errs="$(cat "$TMP"/airlock-*.log | sed 's/\x1b\[[0-9;]*m//g' | grep -cE ' (ERROR|WARN) ' || true)"
    echo "Airlock stderr over $AIRLOCK_RUNS gateway processes: $(cat "$TMP"/airlock-*.log | wc -l) lines, ${errs:-0} ERROR/WARN lines."
    echo
    echo "Raw samples (wall s, psql CPU s, gateway CPU s, start-up VmHWM kB, RSS before kB, VmHWM during SELECT kB, RSS after kB, bytes to client):"
    echo
    echo '```'
    for t in "${TARGETS[@]}"; do
        for r in "${SIZES[@]}"; do
            printf '%s' "${SAMPLES[$t,$r]:-}" | awk -v t="$t" -v r="$r" 'NF { print t, r, $0 }'
        done
    done
    echo '```'
} >"$TMP/report.md"

write_report
[ "${#FAILURES[@]}" -eq 0 ] || exit 1
