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

if ! agent_running; then
    PGBACKUPS_LOG=info nohup "$AGENT" agent --database-url "$URL" --storage "file://$STORE" \
        --staging-dir "$DEMO_DIR/staging" >"$DEMO_DIR/agent.log" 2>&1 &
    echo $! >"$PIDFILE"
    sleep 1
    agent_running || { cat "$DEMO_DIR/agent.log"; exit 1; }
fi

if [ "$("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_database WHERE datname = 'shop'")" = 0 ]; then
    echo "== creating the sample database 'shop'"
    "${PSQL[@]}" -c "CREATE DATABASE shop"
    "${PSQL[@]}" -d shop -f scripts/sample.sql
fi

echo "== capture: CALL backups.capture_and_wait('shop');"
"${PSQL[@]}" -c "CALL backups.capture_and_wait('shop')"
ID=$("${PSQL[@]}" -Atc "SELECT id FROM backups.list() WHERE kind = 'capture' AND status = 'completed' ORDER BY created_at DESC LIMIT 1")
"${PSQL[@]}" -c "SELECT id, status, database, pg_size_pretty(source_size) AS source, pg_size_pretty(stored_size) AS stored, progress FROM backups.list() LIMIT 5"

echo "== restore $ID with the standard tools into 'shop_restored'"
KEY=$("${PSQL[@]}" -Atc "SELECT object_key FROM backups.transfers WHERE name = '$ID'")
"${PSQL[@]}" -c "DROP DATABASE IF EXISTS shop_restored" -c "CREATE DATABASE shop_restored"
zstd -dc "$STORE/$KEY" >"$DEMO_DIR/latest.dump"
pg_restore --no-acl --no-owner -d "host=127.0.0.1 port=$PORT user=postgres dbname=shop_restored" "$DEMO_DIR/latest.dump"
for t in customers orders; do
    a=$("${PSQL[@]}" -d shop -Atc "SELECT count(*) FROM $t")
    b=$("${PSQL[@]}" -d shop_restored -Atc "SELECT count(*) FROM $t")
    echo "   $t: $a rows in shop, $b rows in shop_restored"
    [ "$a" = "$b" ]
done

cat <<EOT

pg_backups is running:
  cluster   127.0.0.1:$PORT (data in $CLUSTER, log $CLUSTER/postgres.log)
  agent     pid $(cat "$PIDFILE"), log $DEMO_DIR/agent.log
  storage   $STORE

Try it:
  psql -h 127.0.0.1 -p $PORT -U postgres postgres

  SELECT backups.capture('shop');                       -- queue a backup, returns its id
  SELECT backups.wait();                                 -- wait for the latest transfer
  SELECT * FROM backups.list();                          -- history
  SELECT * FROM backups.info('$ID');                    -- sizes, ratio, checksum, log
  CALL backups.capture_and_wait('shop', jobs => 2);      -- parallel dump, one command
  SELECT backups.schedule('daily 07:00 Europe/Paris', 'shop');
  SELECT * FROM backups.schedules();                     -- next run, in UTC and local time
  SELECT * FROM backups.database_info('shop');

Stop everything with: make demo-stop
EOT
