#!/usr/bin/env bash
# `make bench-scale`: the control database after years of service. A
# throwaway cluster with DATABASES databases (TENANTS owner roles), a
# schedule each, and ROWS transfers of history (SCALE x 1,000,000; five
# log lines each), as a database-per-tenant service leaves them; then the
# median of 5 timings of every user call (as an admin and as a tenant),
# the agent's calls, the worker's tick (idle, and with every schedule due),
# the worker's CPU at rest, and a real agent's /metrics and status page
# over HTTP, on durable settings. Prints a Markdown table (for
# BENCHMARKS.md) and the table and index sizes.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-1}"
DATABASES="${DATABASES:-1000}"
TENANTS="${TENANTS:-100}"
ROWS=$(python3 -c "print(int(float('$SCALE') * 1000000))")
DIGITS=$(( ${#ROWS} > 7 ? ${#ROWS} : 7 ))  # b0000001 .. b9999999, then one more digit
DIR=$(mktemp -d /var/tmp/pgbackups-scale-XXXXXX)
HARNESS=target/release/pgbackups-cluster
PORT=$("$HARNESS" start "$DIR" "${SCALE_PORT:-54519}")
# KEEP=1 leaves the cluster running, to look into a plan.
AGENT=
cleanup() {
    [ -z "$AGENT" ] || kill "$AGENT" 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || { "$HARNESS" stop "$DIR" >/dev/null 2>&1 || true; rm -rf "$DIR"; }
}
trap cleanup EXIT
# Durable: the harness turns fsync off for tests; back on for this.
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -c "ALTER SYSTEM SET fsync = on" -c "ALTER SYSTEM SET synchronous_commit = on" \
             -c "ALTER SYSTEM SET full_page_writes = on" -c "SELECT pg_reload_conf()" >/dev/null

echo "building in $DIR (port $PORT): $DATABASES databases, $TENANTS tenants, $ROWS transfers" >&2
for t in $(seq 1 "$TENANTS"); do echo "CREATE ROLE tenant$t LOGIN IN ROLE backups_user;"; done | "${PSQL[@]}" postgres
for d in $(seq 1 "$DATABASES"); do
    echo "CREATE DATABASE db$d OWNER tenant$(( (d - 1) % TENANTS + 1 ));"
done | "${PSQL[@]}" postgres
"${PSQL[@]}" postgres <<SQL
SET client_min_messages = warning;
SELECT count(*) AS schedules FROM (SELECT backups.schedule(CASE d % 4 WHEN 0 THEN 'hourly' WHEN 1 THEN 'daily 0' || (d % 10) || ':00'
                                   WHEN 2 THEN 'weekly sunday 03:00' ELSE 'daily 07:00 Europe/Paris' END, 'db' || d)
  FROM generate_series(1, $DATABASES) d) x;
-- A year of history: mostly captures (completed, expired, failed), some
-- restores and verifications, spread over the databases.
INSERT INTO backups.transfers (name, kind, status, database, database_oid, owner_role, options, scheduled,
                               created_at, started_at, finished_at, attempts, source_size, processed_bytes,
                               stored_size, format, object_key, stored_under, checksum, purged_at, contents)
SELECT CASE WHEN k = 'capture' THEN 'b' ELSE left(k, 1) END || lpad(g::text, $DIGITS, '0'), k,
       CASE WHEN g % 50 = 0 THEN 'failed' WHEN k = 'capture' AND g < $ROWS * 0.97 THEN 'expired' ELSE 'completed' END,
       'db' || db, d.oid, d.datdba, '{}', k = 'capture' AND g % 3 > 0,
       at, at + interval '1 minute', at + interval '3 minutes', 1, 1000000, 1000000, 300000, 'custom',
       'x/db' || db || '/' || g, '7', md5(g::text),
       CASE WHEN k = 'capture' AND g < $ROWS * 0.97 THEN at + interval '1 day' END,
       CASE WHEN k = 'capture' AND g >= $ROWS * 0.97 THEN '[{"schema": "public", "table": "t", "rows": 1, "bytes": 1, "digest": "d"}]'::jsonb END
  FROM generate_series(1, $ROWS) g,
       LATERAL (SELECT CASE WHEN g % 20 = 0 THEN 'restore' WHEN g % 20 = 1 THEN 'verify' ELSE 'capture' END AS k,
                       1 + g % $DATABASES AS db,
                       now() - interval '365 days' + (g::float / $ROWS) * interval '365 days' AS at) x
  JOIN pg_database d ON d.datname = 'db' || x.db;
INSERT INTO backups.transfer_logs (transfer_id, level, message)
SELECT t.id, 'info', 'line ' || n FROM backups.transfers t, generate_series(1, 5) n;
SELECT setval('backups.names_b', $ROWS + 1) \\g /dev/null
ANALYZE;
SQL

# Median of 5, in milliseconds, of the Nth of the statements SQL..., run
# in one session as ROLE. A call that fails is not a timing: stop the run.
median_ms() {  # median_ms ROLE N SQL...
    local role=$1 n=$2 times=() args=()
    shift 2
    for sql in "$@"; do args+=(-c "$sql"); done
    for _ in 1 2 3 4 5; do
        local out
        out=$("${PSQL[@]}" -U "$role" postgres -At -c "\\timing on" "${args[@]}" 2>&1) || { echo "$* as $role: $out" >&2; exit 1; }
        times+=("$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | sed -n "${n}p")")
    done
    printf '%s\n' "${times[@]}" | sort -n | sed -n 3p
}

# Names in the history: one half way, one near the end (captures end in 5).
MID=$(printf "b%0${DIGITS}d" $(( ROWS / 2 / 20 * 20 + 5 )))
TMID=$(printf "b%0${DIGITS}d" $(( ROWS / 2 / 20 * 20 + 6 )))
LATE=$(printf "b%0${DIGITS}d" $(( (ROWS - 1000) / 20 * 20 + 5 )))
# (and db7's, which tenant7 owns, for its own calls)
TLATE=$(printf "b%0${DIGITS}d" $(( (ROWS - 1000) / 20 * 20 + 6 )))
echo "| call | as | median ms |"
echo "|---|---|---|"
for role in postgres tenant7; do
    if [ "$role" = postgres ]; then name=$LATE mid=$MID; else name=$TLATE mid=$TMID; fi
    for sql in "SELECT * FROM backups.list()" "SELECT * FROM backups.list(20)" \
               "SELECT * FROM backups.list(20, before => '$mid')" "SELECT * FROM backups.health()" \
               "SELECT * FROM backups.info('$name')" "SELECT * FROM backups.database_info('db7')"; do
        ms=$(median_ms "$role" 1 "$sql")  # (an assignment: a failed call stops the run)
        echo "| \`$sql\` | $role | $ms |"
    done
done
KINDS="ARRAY['capture', 'copy', 'restore', 'verify']"
for sql in "SELECT backups._overview(true)" "SELECT backups._overview(false)" "SELECT * FROM backups._stored(NULL)" \
           "SELECT * FROM backups._stored('$LATE')" "SELECT * FROM backups._to_purge(50, '{}')" \
           "SELECT * FROM backups._pins_to_write(50)" "SELECT * FROM backups._unfinished()" \
           "SELECT backups._tick(false)" "SELECT backups._expire(25)" "SELECT backups._prune('400 days')"; do
    ms=$(median_ms postgres 1 "$sql")
    echo "| \`$sql\` | postgres | $ms |"
done
# (Rolled back: transfers claimed by an agent that never runs them would
# be requeued a minute later, and run by the agent timed below.)
ms=$(median_ms postgres 2 BEGIN "SELECT * FROM backups._claim('bench', $KINDS, '{}', 2)" ROLLBACK)
echo "| \`SELECT * FROM backups._claim('bench', $KINDS, '{}', 2)\` | postgres | $ms |"

# Every schedule due at once: the tick that fires them all, and a claim
# with the 1,000 captures it queued; in a transaction rolled back each time.
DUE="UPDATE backups.schedules SET next_run_at = now() - interval '1 minute'"
ms=$(median_ms postgres 3 BEGIN "$DUE" "SELECT backups._tick(false)" ROLLBACK)
echo "| \`SELECT backups._tick(false)\`, all $DATABASES schedules due | postgres | $ms |"
ms=$(median_ms postgres 4 BEGIN "$DUE" "SELECT backups._tick(false)" "SELECT * FROM backups._claim('bench', $KINDS, '{}', 2)" ROLLBACK)
echo "| \`SELECT * FROM backups._claim(...)\`, $DATABASES queued | postgres | $ms |"

# The worker at rest: its CPU over a minute (no schedule due, nothing new),
# once it has caught up with what the calls above changed (their
# retention runs made changes it looks at, twice) and the next hourly
# retention is not due within the minute.
for _ in $(seq 1 120); do
    caught_up=$("${PSQL[@]}" postgres -Atc "SELECT NOT w.rerun AND w.seen_changes = s.last_value
                                                   AND w.expired_at > now() - interval '55 minutes'
                                              FROM backups.worker_state w, backups.retention_changes s")
    [ "$caught_up" = t ] && break
    sleep 1
done
sleep 5
WORKER=$("${PSQL[@]}" postgres -Atc "SELECT pid FROM pg_stat_activity WHERE backend_type = 'pg_backups scheduler'")
cpu_ticks() { awk '{print $14 + $15}' "/proc/$WORKER/stat"; }
before=$(cpu_ticks); sleep 60; after=$(cpu_ticks)
echo "| the worker at rest, CPU over 60 s | | $(python3 -c "print(f'{($after - $before) / $(getconf CLK_TCK) / 60 * 100:.2f}% of a core')") |"

# The agent's /metrics and status page, over HTTP, with no schedule due
# while they are timed (an agent capturing 250 databases at the top of
# the hour would be timed too).
# Nor any capture the schedules queued while the calls above were timed.
"${PSQL[@]}" postgres -c "UPDATE backups.schedules SET next_run_at = now() + interval '1 day'" \
    -c "SELECT backups.cancel(t.name) FROM backups.transfers t WHERE t.status = 'pending'" >/dev/null
SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
LINK_PORT=$((PORT + 1))
head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/metrics_token"
"${PSQL[@]}" postgres -c "ALTER SYSTEM SET backups.link_base_url = 'http://127.0.0.1:$LINK_PORT'" \
    -c "ALTER SYSTEM SET backups.link_secret = '$SECRET'" -c "SELECT pg_reload_conf()" >/dev/null
PGBACKUPS_LINK_SECRET="$SECRET" target/release/pgbackups agent --database-url "postgres://postgres@127.0.0.1:$PORT/postgres" \
    --storage "file://$DIR/store" --staging-dir "$DIR/staging" --listen "127.0.0.1:$LINK_PORT" \
    --metrics-token-file "$DIR/metrics_token" --cluster-name scale >"$DIR/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$LINK_PORT/" && break; sleep 0.2; done
http_ms() {  # median of 5 GETs of a URL, in ms, and the size of the answer
    local times=() code
    for _ in 1 2 3 4 5; do
        times+=("$(curl -s -o "$DIR/answer" -w '%{time_total}' "$@" | awk '{print $1 * 1000}')")
    done
    code=$(curl -s -o /dev/null -w '%{http_code}' "$@")
    echo "$(printf '%s\n' "${times[@]}" | sort -n | sed -n 3p) (HTTP $code, $(wc -c <"$DIR/answer") bytes)"
}
echo "| \`GET /metrics\` | agent | $(http_ms -H "Authorization: Bearer $(cat "$DIR/metrics_token")" "http://127.0.0.1:$LINK_PORT/metrics") |"
echo "| the status page (\`status_url()\`) | agent | $(http_ms "$("${PSQL[@]}" postgres -Atc "SELECT backups.status_url()")") |"
"${PSQL[@]}" postgres -Atc "SELECT 'transfers: ' || pg_size_pretty(pg_table_size('backups.transfers')) || ' table, '
                                   || pg_size_pretty(pg_indexes_size('backups.transfers')) || ' indexes; logs: '
                                   || pg_size_pretty(pg_total_relation_size('backups.transfer_logs'))"
