-- The worker's tick, as named steps. The background worker calls _tick()
-- every second; tests call it, or one step, directly. Each step works row by
-- row, and a row that fails (a schedule whose zone tzdata no longer knows,
-- say) is logged as a WARNING and skipped: the rest of the tick goes on.
--
-- Each step says how its statements are planned (plan_cache_mode), rather
-- than leave it to the plan cache's guess: with "auto", a statement with a
-- parameter (a schedule's database, an array of ids) whose generic plan
-- looks dearer than the custom ones is planned again on every execution,
-- and planning against transfers' many indexes cost a worker at rest up to
-- 4% of a core, and retention 0.5 ms per schedule (84 µs when generic).
-- Generic where the plan does not depend on the value; _prune's cutoff
-- and batch do change its plan, and it runs once a minute: its query is
-- planned afresh each time (EXECUTE).

-- Due schedules fire once, however many slots passed while the server was
-- down: the next run is computed from now, not from the missed slot. A
-- schedule whose previous capture is still pending or running skips its
-- run, and says so on that capture.
CREATE FUNCTION backups._fire_schedules() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    s       backups.schedules;
    busy    backups.transfers;
    v_fired integer := 0;
BEGIN
    FOR s IN SELECT * FROM backups.schedules x WHERE x.next_run_at <= now()
             ORDER BY x.next_run_at FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            SELECT * INTO busy FROM backups.transfers t
             WHERE t.kind = 'capture' AND t.database = s.database AND t.scheduled
               AND t.status IN ('pending', 'running')
             ORDER BY t.id LIMIT 1;
            IF FOUND THEN
                RAISE WARNING 'pg_backups: skipping the scheduled capture of database "%": % is still %',
                    s.database, busy.name, busy.status;
                PERFORM backups._log(busy.id, format('the schedule (%s) fell due at %s while this capture was still %s; that run was skipped',
                                                     s.spec, s.next_run_at, busy.status), 'warning');
            ELSIF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = s.database AND d.datallowconn) THEN
                RAISE WARNING 'pg_backups: skipping the schedule of database "%": it does not exist or refuses connections', s.database;
            ELSE
                -- With the owner's rights, as a backups_user's own
                -- capture: its tenants may download it (url()).
                PERFORM backups._enqueue('capture', s.database, format('scheduled capture (%s), due %s', s.spec, s.next_run_at),
                                         options => jsonb_strip_nulls(jsonb_build_object('role', backups._owner_name(s.database))),
                                         schedule_id => s.id);
                v_fired := v_fired + 1;
            END IF;
            UPDATE backups.schedules x SET last_run_at = now(),
                   next_run_at = backups._next_run(s.cron, s.timezone, now())
             WHERE x.id = s.id;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_backups: skipping the schedule of database "%" (%): %; trying again in an hour',
                s.database, s.spec, SQLERRM;
            UPDATE backups.schedules x SET next_run_at = now() + interval '1 hour' WHERE x.id = s.id;
        END;
    END LOOP;
    RETURN v_fired;
END
$$;

-- Running transfers whose agent stopped heartbeating: it died or lost its
-- connection. Requeued, or ended after three attempts (see _reap).
CREATE FUNCTION backups._reap_silent(timeout interval) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    t          backups.transfers;
    v_requeued integer := 0;
    v_failed   integer := 0;
BEGIN
    FOR t IN SELECT * FROM backups.transfers x
             WHERE x.status = 'running' AND coalesce(x.heartbeat_at, x.started_at, x.created_at) < now() - timeout
             FOR UPDATE SKIP LOCKED LOOP
        BEGIN
            CASE backups._reap(t, timeout)
                WHEN 'requeued' THEN v_requeued := v_requeued + 1;
                WHEN 'failed' THEN v_failed := v_failed + 1;
                ELSE NULL;
            END CASE;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_backups: could not requeue silent transfer %: %', t.name, SQLERRM;
        END;
    END LOOP;
    RETURN jsonb_build_object('requeued', v_requeued, 'failed', v_failed);
END
$$;

-- Retention: scheduled backups by their schedule's policy, manual ones
-- beyond the newest `keep_manual` of each database (or named source).
-- "A database" is one database, not a name: the schedule's policy applies
-- to the scheduled backups of the database that has its name now (its oid)
-- taken while its owner now owned it, and manual backups are counted per
-- database oid and owner. A database dropped and its name taken by another
-- owner's expires nothing of the first owner's (those backups are kept,
-- like those of any dropped database). Kept backups (keep.sql) are left
-- out: never expired, and not counted, so they take no slot of the policy.
-- `x.kept_at IS NULL` on the locked row too: a keep() that commits while
-- this runs is seen when the row is locked.
-- Every read here is meant to go through an index of live backups, and
-- says so (enable_seqscan = off): statistics go stale exactly here, since
-- most captures turn from completed to expired and autovacuum's ANALYZE
-- waits for a tenth of the table to change, so at 10M rows the planner
-- took 4% of history for live and read all of it (6 s, not 0.3 s).
CREATE FUNCTION backups._expire(keep_manual integer) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
AS $$
DECLARE
    s         backups.schedules;
    d         pg_catalog.pg_database;
    t         backups.transfers;
    v_ids     bigint[];
    v_created timestamptz[];
    v_expired integer := 0;
BEGIN
    FOR s IN SELECT * FROM backups.schedules LOOP
        BEGIN
            SELECT * INTO d FROM pg_catalog.pg_database x WHERE x.datname = s.database;
            CONTINUE WHEN NOT FOUND;
            SELECT array_agg(y.id ORDER BY y.id), array_agg(y.created_at ORDER BY y.id) INTO v_ids, v_created
              FROM backups.transfers y
             WHERE y.kind = 'capture' AND y.scheduled AND y.database_oid = d.oid AND y.owner_role = d.datdba
               AND y.status = 'completed' AND y.deleted_at IS NULL AND y.kept_at IS NULL;
            CONTINUE WHEN v_ids IS NULL;
            -- Bound first: a function in the WHERE clause could be planned
            -- to run once per row of history.
            v_ids := backups._retention_expired(v_ids, v_created, s.timezone,
                                                s.retain_daily, s.retain_weekly, s.retain_monthly);
            FOR t IN SELECT x.* FROM backups.transfers x
                     WHERE x.id = ANY (v_ids)
                       AND x.kept_at IS NULL
                     FOR UPDATE SKIP LOCKED LOOP
                PERFORM backups._expire_backup(t.id, format('expired by the retention of the schedule of %s (daily %s, weekly %s, monthly %s)',
                                                            s.database, s.retain_daily, s.retain_weekly, s.retain_monthly));
                v_expired := v_expired + 1;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'pg_backups: skipping the retention of the schedule of database "%": %', s.database, SQLERRM;
        END;
    END LOOP;
    FOR t IN SELECT x.* FROM backups.transfers x
             JOIN (SELECT y.id, row_number() OVER (PARTITION BY y.source,
                                                                CASE WHEN y.source IS NULL THEN y.database_oid END,
                                                                CASE WHEN y.source IS NULL THEN y.owner_role END
                                                   ORDER BY y.created_at DESC, y.id DESC) AS n
                   FROM backups.transfers y
                   WHERE y.kind = 'capture' AND NOT y.scheduled AND y.status = 'completed' AND y.deleted_at IS NULL
                     AND y.kept_at IS NULL) r
               ON r.id = x.id
             WHERE r.n > keep_manual AND x.kept_at IS NULL
             FOR UPDATE OF x SKIP LOCKED LOOP
        PERFORM backups._expire_backup(t.id, format('expired: more than backups.keep_manual = %s manual backups of %s',
                                                    keep_manual, coalesce('source ' || t.source, t.database::text)));
        v_expired := v_expired + 1;
    END LOOP;
    IF v_expired > 0 THEN
        PERFORM backups._notify('expire');
    END IF;
    RETURN v_expired;
END
$$;

-- History retention: ended transfers older than `retention` (by when
-- they ended) go, with their logs, `batch` at a time; a backup's row only
-- once its objects were removed from storage (expired, deleted, failed or
-- cancelled, and purged): a completed backup is never forgotten while it
-- exists, nor its latest verification (what `verified` shows). NULL or
-- zero keeps everything.
CREATE FUNCTION backups._prune(retention interval, batch integer DEFAULT 1000) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_ids bigint[];
BEGIN
    IF retention IS NULL OR retention <= interval '0' THEN
        RETURN 0;
    END IF;
    -- The ids first, then the delete: planned on an array, never per row.
    -- Planned afresh with the cutoff and batch each time (EXECUTE): they
    -- decide the plan. Rows someone holds a lock on (a session reading
    -- them FOR UPDATE, a log line being added) are skipped while choosing,
    -- so they neither make pruning wait nor take a place in the batch.
    EXECUTE $q$
        SELECT ARRAY(SELECT t.id FROM backups.transfers t
                      WHERE t.status IN ('completed', 'failed', 'cancelled', 'expired') AND t.finished_at < $1
                        AND (t.kind <> 'capture' OR t.purged_at IS NOT NULL)
                        AND NOT (t.kind = 'verify' AND t.id = (SELECT max(v.id) FROM backups.transfers v
                                                                WHERE v.kind = 'verify' AND v.source = t.source)
                                 AND EXISTS (SELECT 1 FROM backups.transfers c
                                              WHERE c.name = t.source AND c.kind = 'capture' AND c.purged_at IS NULL))
                      ORDER BY t.finished_at LIMIT $2
                      FOR UPDATE OF t SKIP LOCKED)
    $q$ INTO v_ids USING now() - retention, batch;
    DELETE FROM backups.transfers t WHERE t.id = ANY (v_ids);
    RETURN cardinality(v_ids);
END
$$;

-- A NOTIFY sent while no agent listened is lost: say again that work waits.
CREATE FUNCTION backups._renotify() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM backups.transfers x WHERE x.status = 'pending') THEN
        PERFORM backups._notify('pending');
    END IF;
END
$$;

-- The steps, each one or all: `schedules` (fire what is due, then
-- re-notify waiting work if `renotify`), `reap` (silent agents), `retention`
-- and `prune` (history). The worker runs the first two and the last two in
-- transactions of their own, so that retention stuck on a lock or slow
-- never rolls back a schedule that fired (it delays the next tick by at
-- most backups.tick_timeout; then it is cancelled, and the worker starts
-- again with fresh plans).
CREATE FUNCTION backups._tick(renotify boolean DEFAULT true, agent_timeout interval DEFAULT NULL,
                              keep_manual integer DEFAULT NULL, history_retention interval DEFAULT NULL,
                              steps text[] DEFAULT '{schedules,reap,retention,prune}')
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- An integer GUC with a unit shows as text like '60s', which is an interval.
    v_timeout interval := coalesce(agent_timeout,
                                   coalesce(nullif(current_setting('backups.agent_timeout', true), ''), '60s')::interval);
    v_keep    integer := coalesce(keep_manual, coalesce(nullif(current_setting('backups.keep_manual', true), ''), '25')::integer);
    v_fired   integer := 0;
    v_reaped  jsonb := '{"requeued": 0, "failed": 0}';
    v_expired integer := 0;
    v_history interval := coalesce(history_retention,
                                   coalesce(nullif(current_setting('backups.history_retention', true), ''), '400d')::interval);
    v_pruned  integer := 0;
    c_prune_batch constant integer := 1000;
    v_changes bigint;
    w         backups.worker_state;
    v_retain  boolean := false;
    v_prune   boolean := false;
BEGIN
    IF steps IS NULL OR cardinality(steps) = 0 OR array_position(steps, NULL) IS NOT NULL
       OR NOT steps <@ '{schedules,reap,retention,prune}'::text[] THEN
        RAISE EXCEPTION 'unknown tick step in %', quote_nullable(steps::text)
            USING HINT = 'The steps are schedules, reap, retention and prune.';
    END IF;
    IF 'schedules' = ANY (steps) THEN
        v_fired := backups._fire_schedules();
    END IF;
    IF 'reap' = ANY (steps) THEN
        v_reaped := backups._reap_silent(v_timeout);
    END IF;
    -- Retention only when it has something new to look at, or hourly;
    -- history retention once a minute, or at once after a full batch. What
    -- is due is read without a lock; only if something is, the state row
    -- is locked and read again (an idle tick locks nothing).
    IF steps && '{retention,prune}'::text[] THEN
        SELECT s.last_value INTO v_changes FROM backups.retention_changes s;
        FOR v_pass IN 1..2 LOOP
            IF v_pass = 1 THEN
                SELECT * INTO w FROM backups.worker_state;
            ELSE
                SELECT * INTO w FROM backups.worker_state FOR UPDATE SKIP LOCKED;
            END IF;
            v_retain := 'retention' = ANY (steps) AND coalesce(w.one, false)
                        AND (w.seen_changes IS DISTINCT FROM v_changes OR w.rerun OR w.keep_manual IS DISTINCT FROM v_keep
                             OR w.expired_at IS NULL OR w.expired_at < now() - interval '1 hour');
            v_prune := 'prune' = ANY (steps) AND coalesce(w.one, false)
                       AND (w.pruned_at IS NULL OR w.pruned_at < now() - interval '1 minute');
            EXIT WHEN NOT (v_retain OR v_prune);
        END LOOP;
    END IF;
    IF v_retain THEN
        UPDATE backups.worker_state x
           SET seen_changes = v_changes, rerun = w.seen_changes IS DISTINCT FROM v_changes, keep_manual = v_keep,
               expired_at = now();
        v_expired := backups._expire(v_keep);
    END IF;
    IF v_prune THEN
        v_pruned := backups._prune(v_history, c_prune_batch);
        UPDATE backups.worker_state x SET pruned_at = CASE WHEN v_pruned < c_prune_batch THEN now() END;
    END IF;
    IF renotify AND 'schedules' = ANY (steps) AND v_fired = 0 AND (v_reaped ->> 'requeued')::integer = 0 THEN
        PERFORM backups._renotify();
    END IF;
    RETURN jsonb_build_object('fired', v_fired, 'requeued', (v_reaped ->> 'requeued')::integer,
                              'failed', (v_reaped ->> 'failed')::integer, 'expired', v_expired, 'pruned', v_pruned);
END
$$;
