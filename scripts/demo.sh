#!/usr/bin/env bash
# `make demo`: a local PostgreSQL 15 cluster with pg_backups preloaded, the
# agent on local-file storage, a sample database captured and restored.
# Idempotent: run it again and it reuses what is there. `make demo-stop`
# stops the cluster and the agent.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_DIR="${DEMO_DIR:-/var/tmp/pgbackups-demo}"
CLUSTER="$DEMO_DIR/cluster"
STORE="$DEMO_DIR/storage"
PIDFILE="$DEMO_DIR/agent.pid"
AGENT=/usr/local/bin/pgbackups
HARNESS=target/release/pgbackups-cluster

agent_running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

if [ "${1:-}" = "stop" ]; then
    if agent_running; then kill "$(cat "$PIDFILE")"; echo "agent stopped"; fi
    [ -d "$CLUSTER/data" ] && "$HARNESS" stop "$CLUSTER" && echo "cluster stopped"
    exit 0
fi

mkdir -p "$DEMO_DIR" "$STORE"
chmod 755 "$DEMO_DIR"
PORT=$("$HARNESS" start "$CLUSTER" "${DEMO_PORT:-54329}")
URL="postgres://postgres@127.0.0.1:$PORT/postgres"
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)

# Download links: the agent serves them on the next port, signed with a
# secret the cluster shares (superuser-only setting).
LINK_PORT=$((PORT + 1))
[ -f "$DEMO_DIR/link_secret" ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO_DIR/link_secret"
chmod 600 "$DEMO_DIR/link_secret"
SECRET=$(cat "$DEMO_DIR/link_secret")
# /metrics answers scrapers that send this token.
[ -f "$DEMO_DIR/metrics_token" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO_DIR/metrics_token"
chmod 600 "$DEMO_DIR/metrics_token"
"${PSQL[@]}" -c "ALTER SYSTEM SET backups.link_base_url = 'http://127.0.0.1:$LINK_PORT'" \
             -c "ALTER SYSTEM SET backups.link_secret = '$SECRET'" -c "SELECT pg_reload_conf()" >/dev/null

# (Re)start the agent, so that it is the binary just installed.
if agent_running; then kill "$(cat "$PIDFILE")"; sleep 1; fi
PGBACKUPS_LINK_SECRET="$SECRET" PGBACKUPS_LOG=info nohup "$AGENT" agent --database-url "$URL" \
    --storage "file://$STORE" --staging-dir "$DEMO_DIR/staging" --listen "127.0.0.1:$LINK_PORT" \
    --metrics-token-file "$DEMO_DIR/metrics_token" --cluster-name demo >"$DEMO_DIR/agent.log" 2>&1 &
echo $! >"$PIDFILE"
sleep 1
agent_running || { cat "$DEMO_DIR/agent.log"; exit 1; }

same_data() {  # same_data DB1 DB2: row counts and content hashes of the sample tables
    for t in customers orders; do
        q="SELECT count(*) || ' rows, md5 ' || md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))) FROM $t x"
        a=$("${PSQL[@]}" -d "$1" -Atc "$q"); b=$("${PSQL[@]}" -d "$2" -Atc "$q")
        echo "   $t in $2: $b"
        [ "$a" = "$b" ] || { echo "   ... but $1 has $a"; exit 1; }
    done
}
ensure_db() { "${PSQL[@]}" -Atc "SELECT 1 FROM pg_database WHERE datname = '$1'" | grep -q 1 || "${PSQL[@]}" -c "CREATE DATABASE $1"; }

if [ "$("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_database WHERE datname = 'shop'")" = 0 ]; then
    echo "== creating the sample database 'shop'"
    "${PSQL[@]}" -c "CREATE DATABASE shop"
    "${PSQL[@]}" -d shop -f scripts/sample.sql
fi

echo "== capture: CALL backups.capture_and_wait('shop');"
"${PSQL[@]}" -c "CALL backups.capture_and_wait('shop')"
ID=$("${PSQL[@]}" -Atc "SELECT id FROM backups.list() WHERE kind = 'capture' AND status = 'completed' ORDER BY created_at DESC LIMIT 1")
"${PSQL[@]}" -c "SELECT id, status, database, pg_size_pretty(source_size) AS source, pg_size_pretty(stored_size) AS stored, progress FROM backups.list() LIMIT 5"

echo "== url -> curl -> pg_restore: the backup as a file, with the standard tools"
LINK=$("${PSQL[@]}" -Atc "SELECT backups.url('$ID')")
echo "   $LINK"
curl -sfS -o "$DEMO_DIR/latest.dump" "$LINK"
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS shop_from_link" -c "CREATE DATABASE shop_from_link"
pg_restore --clean --if-exists --no-acl --no-owner -d "host=127.0.0.1 port=$PORT user=postgres dbname=shop_from_link" "$DEMO_DIR/latest.dump"
same_data shop shop_from_link

echo "== restore: SELECT backups.restore('$ID', 'shop_restored', 'shop_restored');"
ensure_db shop_restored
R=$("${PSQL[@]}" -Atc "SELECT backups.restore('$ID', 'shop_restored', 'shop_restored')")
echo "   $R: $("${PSQL[@]}" -Atc "SELECT backups.wait('$R')")"
same_data shop shop_restored

echo "== copy: SELECT backups.copy('shop', 'shop_copy', 'shop_copy');"
ensure_db shop_copy
C=$("${PSQL[@]}" -Atc "SELECT backups.copy('shop', 'shop_copy', 'shop_copy')")
echo "   $C: $("${PSQL[@]}" -Atc "SELECT backups.wait('$C')")"
same_data shop shop_copy

echo "== seeing it: health(), the status page, /metrics"
"${PSQL[@]}" -c "SELECT database, status, last_backup, backup_age FROM backups.health()"
STATUS=$("${PSQL[@]}" -Atc "SELECT backups.status_url('1 day')")
curl -sfS -o "$DEMO_DIR/status.html" "$STATUS"
grep -q "<svg" "$DEMO_DIR/status.html" || { echo "the status page has no chart"; exit 1; }
echo "   status page: $STATUS"
curl -sfS -H "Authorization: Bearer $(cat "$DEMO_DIR/metrics_token")" "http://127.0.0.1:$LINK_PORT/metrics" \
    | grep -E '^pgbackups_(transfers_total|last_success_timestamp_seconds)' | head -5

cat <<EOT

pg_backups is running:
  cluster   127.0.0.1:$PORT (data in $CLUSTER, log $CLUSTER/postgres.log)
  agent     pid $(cat "$PIDFILE"), log $DEMO_DIR/agent.log, links on http://127.0.0.1:$LINK_PORT
  storage   $STORE

Try it:
  psql -h 127.0.0.1 -p $PORT -U postgres postgres

  SELECT backups.capture('shop');                       -- queue a backup, returns its id
  SELECT backups.wait();                                 -- wait for the latest transfer
  SELECT * FROM backups.list();                          -- history
  SELECT * FROM backups.info('$ID');                    -- sizes, ratio, checksum, log
  SELECT backups.url('$ID');                             -- then: curl -o latest.dump '<link>'
  SELECT backups.restore('$ID', 'shop_restored', 'shop_restored');
  SELECT backups.copy('shop', 'shop_copy', 'shop_copy');
  CALL backups.capture_and_wait('shop', jobs => 2);      -- parallel dump, one command
  SELECT backups.schedule('daily 07:00 Europe/Paris', 'shop');
  SELECT * FROM backups.schedules();                     -- next run, in UTC and local time
  SELECT * FROM backups.database_info('shop');
  SELECT * FROM backups.health();                        -- is every database backed up recently?
  SELECT backups.status_url();                           -- a signed link to the status page (charts)
  LISTEN backups_events;                                 -- a JSON event on every status change

From the shell:
  curl -H "Authorization: Bearer \$(cat $DEMO_DIR/metrics_token)" http://127.0.0.1:$LINK_PORT/metrics
  PGBACKUPS_DATABASE_URL=$URL PGBACKUPS_STORAGE=file://$STORE pgbackups download   # -> latest.dump

The day the server is gone (docs/disaster-recovery.md):
  pgbackups list --storage file://$STORE                 # storage alone

Stop everything with: make demo-stop
EOT
