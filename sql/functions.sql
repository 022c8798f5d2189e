-- pg_backups SQL surface: the functions a person calls from psql.
--
-- Loaded by the extension after the Rust helpers (extension_sql_file!,
-- finalize). Every function that touches the tables is SECURITY DEFINER with a
-- pinned search_path; EXECUTE is revoked from PUBLIC and granted to
-- backups_user or backups_admin at the end of this file. None of them
-- runs pg_dump or touches storage: they record intent and notify the agent,
-- which sees the transfer once the calling transaction commits.

-- The channel the agent LISTENs on. Payload: a transfer name, or a word.
CREATE FUNCTION backups._notify(payload text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_notify('pg_backups', payload) $$;

-- b001, a001, r001, c001: three digits, more when needed, never reused.
CREATE FUNCTION backups._next_name(prefix text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO backups.counters AS c (prefix, last_value) VALUES (_next_name.prefix, 1)
    ON CONFLICT ON CONSTRAINT counters_pkey DO UPDATE SET last_value = c.last_value + 1
    RETURNING backups._format_name(c.prefix, c.last_value)
$$;

CREATE FUNCTION backups._log(transfer_id bigint, message text, level text DEFAULT 'info') RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO backups.transfer_logs (transfer_id, level, message)
    VALUES (_log.transfer_id, _log.level, _log.message)
$$;

CREATE FUNCTION backups._is_finished(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT status IN ('completed', 'failed', 'cancelled', 'expired') $$;

-- Look a transfer up by name; NULL means the newest one (of `kinds`).
-- Deleted backups are gone as far as users are concerned.
CREATE FUNCTION backups._find(id text, kinds text[] DEFAULT ARRAY['capture', 'restore', 'copy'])
RETURNS backups.transfers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    IF _find.id IS NULL THEN
        SELECT * INTO t FROM backups.transfers x
        WHERE x.kind = ANY (_find.kinds) AND x.deleted_at IS NULL
        ORDER BY x.created_at DESC, x.id DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'there are no transfers yet'
                USING HINT = 'Start one with SELECT backups.capture();';
        END IF;
        RETURN t;
    END IF;
    SELECT * INTO t FROM backups.transfers x
    WHERE x.name = lower(btrim(_find.id)) AND x.deleted_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown transfer "%"', _find.id
            USING ERRCODE = 'no_data_found',
                  HINT = 'Transfers are named like b001 (backup), a001 (scheduled backup), r001 (restore) and c001 (copy); SELECT * FROM backups.list(); shows them.';
    END IF;
    IF NOT t.kind = ANY (_find.kinds) THEN
        RAISE EXCEPTION '"%" is a %, not a %', t.name, t.kind, array_to_string(_find.kinds, ' or ')
            USING HINT = 'SELECT * FROM backups.list(); shows every transfer and its kind.';
    END IF;
    RETURN t;
END
$$;

-- A database of this cluster that a transfer may read from or write to.
CREATE FUNCTION backups._check_database(db name, role text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    d pg_catalog.pg_database;
BEGIN
    IF db IS NULL OR db = '' THEN
        RAISE EXCEPTION 'the % database must be given', role
            USING HINT = 'Name a database of this cluster: SELECT datname FROM pg_database;';
    END IF;
    SELECT * INTO d FROM pg_catalog.pg_database WHERE datname = db;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'database "%" does not exist', db
            USING ERRCODE = 'invalid_catalog_name',
                  HINT = CASE WHEN role = 'target'
                              THEN format('Create it first (CREATE DATABASE %I;), then run this again.', db)
                              ELSE 'Name a database of this cluster: SELECT datname FROM pg_database;' END;
    END IF;
    IF NOT d.datallowconn THEN
        RAISE EXCEPTION 'database "%" does not allow connections', db
            USING HINT = 'Template databases such as template0 cannot be backed up or restored into.';
    END IF;
END
$$;

-- Restore and copy replace everything in the target: ask for its name twice,
-- and never touch the database that holds the backup history.
CREATE FUNCTION backups._check_target(target name, confirm name, action text) RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF target IS NULL OR target = '' THEN
        RAISE EXCEPTION 'a target database must be given'
            USING HINT = format('backups.%s(..., target => ''mydb'', confirm => ''mydb'')', action);
    END IF;
    IF confirm IS DISTINCT FROM target THEN
        RAISE EXCEPTION 'confirm must equal the target database "%"', target
            USING HINT = format('%s replaces everything in database %I. To go ahead, pass confirm => %L.',
                                initcap(action), target, target);
    END IF;
    IF target = current_database() THEN
        RAISE EXCEPTION 'cannot % onto the control database "%"', action, target
            USING HINT = 'The control database holds the backup history and the queue; choose another target database.';
    END IF;
    PERFORM backups._check_database(target, 'target');
END
$$;

CREATE FUNCTION backups.capture(database name DEFAULT current_database(), jobs integer DEFAULT NULL, source text DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_db      name := capture.database;
    v_jobs    integer := capture.jobs;
    v_source  text := nullif(btrim(capture.source), '');
    v_name    text;
    v_id      bigint;
BEGIN
    IF v_jobs IS NOT NULL AND (v_jobs < 1 OR v_jobs > 64) THEN
        RAISE EXCEPTION 'jobs must be between 1 and 64, not %', v_jobs
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'jobs => N runs a parallel directory-format dump with N workers; leave it NULL for a single custom-format dump.';
    END IF;
    IF v_source IS NULL THEN
        PERFORM backups._check_database(v_db, 'source');
    ELSIF v_source !~ '^[A-Za-z0-9_.-]+$' THEN
        RAISE EXCEPTION 'invalid source name "%"', v_source
            USING HINT = 'A source is the name of a connection defined in the agent configuration ([sources.NAME]); names use letters, digits, _ . and -.';
    END IF;
    v_name := backups._next_name('b');
    INSERT INTO backups.transfers (name, kind, database, source, options)
    VALUES (v_name, 'capture', v_db, v_source,
            CASE WHEN v_jobs IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('jobs', v_jobs) END)
    RETURNING id INTO v_id;
    PERFORM backups._log(v_id, format('queued by %s', session_user));
    PERFORM backups._notify(v_name);
    RETURN v_name;
END
$$;

CREATE FUNCTION backups.wait(id text DEFAULT NULL, timeout interval DEFAULT '1 hour')
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t          backups.transfers;
    v_status   text;
    v_deadline timestamptz := clock_timestamp() + coalesce(wait.timeout, interval '1 hour');
BEGIN
    t := backups._find(wait.id);
    IF backups._is_finished(t.status) THEN
        RETURN t.status;
    END IF;
    IF t.created_xid = pg_current_xact_id_if_assigned() THEN
        RAISE EXCEPTION 'cannot wait for %: it was queued by this same transaction, which the agent cannot see until it commits', t.name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Commit first and call backups.wait() in a later statement, or run CALL backups.capture_and_wait(); which does both.';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'backups.wait() needs READ COMMITTED isolation to see the agent''s progress'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Call it outside the REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    LOOP
        -- In READ COMMITTED each statement takes a fresh snapshot.
        SELECT x.status INTO v_status FROM backups.transfers x WHERE x.id = t.id;
        IF v_status IS NULL OR backups._is_finished(v_status) THEN
            RETURN coalesce(v_status, 'deleted');
        END IF;
        IF clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'timed out after % waiting for % (still %)', wait.timeout, t.name, v_status
                USING ERRCODE = 'query_canceled',
                      HINT = CASE WHEN v_status = 'pending'
                                  THEN 'Nothing has claimed it: is a pgbackups agent running against this database?'
                                  ELSE 'It is still running; wait again with a longer timeout, or see SELECT * FROM backups.info(''' || t.name || ''');' END;
        END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END
$$;

-- Capture and wait in one command. A procedure can COMMIT the request before
-- waiting, which a function cannot; and a procedure with transaction control
-- may be neither SECURITY DEFINER nor carry a SET clause, so it is an
-- invoker's procedure built only on the public functions, with every name
-- schema-qualified.
CREATE PROCEDURE backups.capture_and_wait(
    database name DEFAULT current_database(),
    jobs integer DEFAULT NULL,
    source text DEFAULT NULL,
    timeout interval DEFAULT '1 hour',
    INOUT id text DEFAULT NULL,
    INOUT status text DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_deadline timestamptz;
    v_last     text := '';
    v_progress text;
BEGIN
    id := backups.capture(capture_and_wait.database, capture_and_wait.jobs, capture_and_wait.source);
    COMMIT;
    RAISE NOTICE '% queued', id;
    v_deadline := pg_catalog.clock_timestamp() + coalesce(capture_and_wait.timeout, interval '1 hour');
    LOOP
        SELECT l.status, l.progress INTO status, v_progress
        FROM backups.list() l WHERE l.id = capture_and_wait.id;
        IF status || ': ' || coalesce(v_progress, '') IS DISTINCT FROM v_last THEN
            v_last := status || ': ' || coalesce(v_progress, '');
            RAISE NOTICE '% %', id, v_last;
        END IF;
        EXIT WHEN status IN ('completed', 'failed', 'cancelled', 'expired');
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'timed out after % waiting for % (still %)', capture_and_wait.timeout, id, status
                USING HINT = 'The capture goes on; follow it with SELECT backups.wait(''' || id || ''');';
        END IF;
        -- End the snapshot so the next look sees the agent's updates.
        COMMIT;
        PERFORM pg_catalog.pg_sleep(0.5);
    END LOOP;
END
$$;

-- "4.2 s", "3 min 12 s", "1 day 02:03:04": how long a transfer took.
CREATE FUNCTION backups._duration(started timestamptz, finished timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT CASE
        WHEN started IS NULL OR finished IS NULL THEN NULL
        WHEN finished - started < interval '1 minute'
            THEN round(extract(epoch FROM finished - started), 1)::text || ' s'
        WHEN finished - started < interval '1 hour'
            THEN floor(extract(epoch FROM finished - started) / 60)::text || ' min '
                 || floor(extract(epoch FROM finished - started))::bigint % 60 || ' s'
        ELSE justify_interval(date_trunc('second', finished - started))::text
    END
$$;

CREATE FUNCTION backups.list()
RETURNS TABLE (id text, kind text, status text, created_at timestamptz, started_at timestamptz,
               finished_at timestamptz, database name, source_size bigint, stored_size bigint, progress text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.name, t.kind, t.status, t.created_at, t.started_at, t.finished_at, t.database,
           t.source_size, t.stored_size,
           CASE t.status
               WHEN 'pending' THEN CASE WHEN t.attempts > 0 THEN 'requeued, waiting for an agent'
                                        ELSE 'waiting for an agent' END
               WHEN 'running' THEN pg_size_pretty(t.processed_bytes) || ' processed'
                                   || coalesce(', ' || t.current_object, '')
               WHEN 'completed' THEN 'done' || coalesce(' in ' || backups._duration(t.started_at, t.finished_at), '')
                                     || CASE WHEN t.warnings > 0 THEN format(' with %s warnings', t.warnings) ELSE '' END
               WHEN 'failed' THEN split_part(coalesce(t.error, 'failed'), E'\n', 1)
               WHEN 'cancelled' THEN 'cancelled'
               WHEN 'expired' THEN 'expired by retention'
           END
    FROM backups.transfers t
    WHERE t.deleted_at IS NULL
    ORDER BY t.created_at DESC, t.id DESC
$$;

CREATE FUNCTION backups.info(id text DEFAULT NULL)
RETURNS TABLE (field text, value text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    t := backups._find(info.id);
    RETURN QUERY
    SELECT f.k, f.v FROM (VALUES
        (1,  'id', t.name),
        (2,  'kind', t.kind || CASE WHEN t.schedule_id IS NOT NULL OR t.name LIKE 'a%' THEN ' (scheduled)' ELSE '' END),
        (3,  'status', t.status || CASE WHEN t.cancel_requested AND NOT backups._is_finished(t.status) THEN ' (cancel requested)' ELSE '' END),
        (4,  'database', t.database::text),
        (5,  'source', t.source),
        (6,  'target', t.target),
        (7,  'options', CASE WHEN t.options = '{}'::jsonb THEN NULL ELSE t.options::text END),
        (8,  'created', t.created_at::text || ' by ' || t.created_by),
        (9,  'started', t.started_at::text),
        (10, 'finished', t.finished_at::text),
        (11, 'duration', backups._duration(t.started_at, t.finished_at)),
        (12, 'agent', t.agent_id),
        (13, 'attempts', CASE WHEN t.attempts > 1 THEN t.attempts::text END),
        (14, 'format', t.format),
        (15, 'source size', CASE WHEN t.source_size IS NOT NULL THEN pg_size_pretty(t.source_size) END),
        (16, 'processed', CASE WHEN t.processed_bytes > 0 THEN pg_size_pretty(t.processed_bytes) END),
        (17, 'stored size', CASE WHEN t.stored_size IS NOT NULL THEN pg_size_pretty(t.stored_size) END),
        (18, 'compression', CASE WHEN t.stored_size > 0 AND t.processed_bytes > 0
                                 THEN format('%s:1 (%s%% smaller than the uncompressed dump)',
                                             round(t.processed_bytes::numeric / t.stored_size, 2),
                                             round(100 - 100.0 * t.stored_size / t.processed_bytes)) END),
        (19, 'sha256', t.checksum),
        (20, 'object', t.object_key),
        (21, 'tool versions', t.tool_versions::text),
        (22, 'warnings', CASE WHEN t.warnings > 0 THEN t.warnings::text END),
        (23, 'error', t.error),
        (24, 'deleted from storage', t.purged_at::text)
    ) AS f(n, k, v)
    WHERE f.v IS NOT NULL
    ORDER BY f.n;
    RETURN QUERY
    SELECT 'log', to_char(l.logged_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"  ')
                  || CASE WHEN l.level = 'info' THEN '' ELSE upper(l.level) || ': ' END || l.message
    FROM backups.transfer_logs l WHERE l.transfer_id = t.id AND l.level <> 'debug' ORDER BY l.id;
END
$$;

CREATE FUNCTION backups.cancel(id text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    IF cancel.id IS NULL THEN
        SELECT * INTO t FROM backups.transfers x
        WHERE x.status IN ('pending', 'running')
        ORDER BY x.created_at DESC, x.id DESC LIMIT 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'nothing to cancel: no transfer is pending or running'
                USING HINT = 'SELECT * FROM backups.list(); shows every transfer and its status.';
        END IF;
    ELSE
        t := backups._find(cancel.id);
        SELECT * INTO t FROM backups.transfers x WHERE x.id = t.id FOR UPDATE;
    END IF;
    IF backups._is_finished(t.status) THEN
        RAISE EXCEPTION '% has already finished (%)', t.name, t.status
            USING HINT = CASE WHEN t.kind = 'capture' AND t.status = 'completed'
                              THEN format('To remove the backup, use SELECT backups.delete(%L);', t.name)
                              ELSE 'Only pending or running transfers can be cancelled.' END;
    END IF;
    IF t.status = 'pending' THEN
        UPDATE backups.transfers SET status = 'cancelled', finished_at = now(), cancel_requested = true
        WHERE transfers.id = t.id;
        PERFORM backups._log(t.id, format('cancelled by %s before it started', session_user));
        RETURN 'cancelled';
    END IF;
    UPDATE backups.transfers SET cancel_requested = true WHERE transfers.id = t.id;
    PERFORM backups._log(t.id, format('cancel requested by %s', session_user));
    PERFORM backups._notify('cancel ' || t.name);
    RETURN 'cancelling';
END
$$;

CREATE FUNCTION backups.delete(id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    IF delete.id IS NULL THEN
        RAISE EXCEPTION 'backups.delete() needs the id of the backup to delete'
            USING HINT = 'For example SELECT backups.delete(''b001'');';
    END IF;
    t := backups._find(delete.id, ARRAY['capture']);
    SELECT * INTO t FROM backups.transfers x WHERE x.id = t.id FOR UPDATE;
    IF NOT backups._is_finished(t.status) THEN
        RAISE EXCEPTION '% is still %', t.name, t.status
            USING HINT = format('Cancel it first: SELECT backups.cancel(%L);', t.name);
    END IF;
    UPDATE backups.transfers
    SET deleted_at = now(),
        purged_at = CASE WHEN object_key IS NULL THEN now() ELSE purged_at END
    WHERE transfers.id = t.id;
    PERFORM backups._log(t.id, format('deleted by %s', session_user));
    PERFORM backups._notify('delete ' || t.name);
END
$$;

CREATE FUNCTION backups.url(id text DEFAULT NULL, expires_in interval DEFAULT '1 hour') RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t         backups.transfers;
    v_base    text := rtrim(coalesce(current_setting('backups.link_base_url', true), ''), '/');
    v_expires bigint;
BEGIN
    IF url.id IS NULL THEN
        SELECT * INTO t FROM backups.transfers x
        WHERE x.kind = 'capture' AND x.status = 'completed' AND x.deleted_at IS NULL
        ORDER BY x.finished_at DESC, x.id DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'there is no completed backup yet'
                USING HINT = 'Capture one with CALL backups.capture_and_wait();';
        END IF;
    ELSE
        t := backups._find(url.id, ARRAY['capture']);
    END IF;
    IF t.status <> 'completed' THEN
        RAISE EXCEPTION '% is %, not completed: there is nothing to download', t.name, t.status
            USING HINT = 'Links are for completed backups; SELECT * FROM backups.list(); shows their status.';
    END IF;
    IF expires_in IS NULL OR expires_in <= interval '0' OR expires_in > interval '7 days' THEN
        RAISE EXCEPTION 'expires_in must be between 1 second and 7 days, not %', expires_in
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example backups.url(''b001'', expires_in => ''10 minutes'').';
    END IF;
    IF v_base = '' THEN
        RAISE EXCEPTION 'the agent link base is not configured'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set backups.link_base_url to the agent''s public address (pgbackups agent --listen) and backups.link_secret to the agent''s link secret in postgresql.conf, then SELECT pg_reload_conf();';
    END IF;
    -- Floor: a link never outlives expires_in.
    v_expires := floor(extract(epoch FROM clock_timestamp() + expires_in))::bigint;
    RETURN format('%s/backups/%s.%s?expires=%s&signature=%s',
                  v_base, t.name, CASE WHEN t.format = 'directory' THEN 'tar' ELSE 'dump' END,
                  v_expires, backups._link_signature(t.name, v_expires));
END
$$;

CREATE FUNCTION backups.restore(backup text, target name, confirm name) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_backup text := btrim(restore.backup);
    b        backups.transfers;
    v_name   text;
    v_id     bigint;
BEGIN
    IF v_backup IS NULL OR v_backup = '' THEN
        RAISE EXCEPTION 'backups.restore() needs a backup id or an http(s) URL'
            USING HINT = 'For example SELECT backups.restore(''b001'', target => ''staging'', confirm => ''staging'');';
    END IF;
    IF v_backup ~* '^[a-z][a-z0-9+.-]*://' THEN
        IF v_backup !~* '^https?://[^[:space:]/?#]+' OR v_backup ~ '[[:space:]]' THEN
            RAISE EXCEPTION 'cannot restore from "%": only http:// and https:// URLs are supported', v_backup
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Pass a backup id such as b001, a link from backups.url(), or any http(s) URL serving a pg_dump custom-format file.';
        END IF;
    ELSE
        b := backups._find(v_backup, ARRAY['capture']);
        IF b.status <> 'completed' THEN
            RAISE EXCEPTION 'cannot restore %: it is %, not completed', b.name, b.status
                USING HINT = 'Restore a completed backup; SELECT * FROM backups.list(); shows their status.';
        END IF;
        v_backup := b.name;
    END IF;
    PERFORM backups._check_target(restore.target, restore.confirm, 'restore');
    v_name := backups._next_name('r');
    INSERT INTO backups.transfers (name, kind, database, source, target)
    VALUES (v_name, 'restore', restore.target, v_backup, restore.target)
    RETURNING transfers.id INTO v_id;
    PERFORM backups._log(v_id, format('restore of %s into %s queued by %s', v_backup, restore.target, session_user));
    PERFORM backups._notify(v_name);
    RETURN v_name;
END
$$;

CREATE FUNCTION backups.copy(source text, target name, confirm name) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_source text := btrim(copy.source);
    v_name   text;
    v_id     bigint;
BEGIN
    IF v_source IS NULL OR v_source = '' THEN
        RAISE EXCEPTION 'backups.copy() needs a source database'
            USING HINT = 'For example SELECT backups.copy(''app'', target => ''app_staging'', confirm => ''app_staging'');';
    END IF;
    IF v_source = copy.target THEN
        RAISE EXCEPTION 'cannot copy database "%" onto itself', v_source
            USING HINT = 'Choose a different target database.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = v_source) THEN
        -- Not a database of this cluster: it must be a named source of the
        -- agent configuration, which the agent checks when it runs.
        IF v_source !~ '^[A-Za-z0-9_.-]+$' THEN
            RAISE EXCEPTION 'source "%" is neither a database of this cluster nor a valid source name', v_source
                USING HINT = 'Name a database (SELECT datname FROM pg_database;) or a connection defined in the agent configuration ([sources.NAME]).';
        END IF;
    ELSE
        PERFORM backups._check_database(v_source, 'source');
    END IF;
    PERFORM backups._check_target(copy.target, copy.confirm, 'copy');
    v_name := backups._next_name('c');
    INSERT INTO backups.transfers (name, kind, database, source, target)
    VALUES (v_name, 'copy', copy.target, v_source, copy.target)
    RETURNING transfers.id INTO v_id;
    PERFORM backups._log(v_id, format('copy of %s into %s queued by %s', v_source, copy.target, session_user));
    PERFORM backups._notify(v_name);
    RETURN v_name;
END
$$;

CREATE FUNCTION backups.schedule(at text DEFAULT 'daily 02:00', database name DEFAULT current_database(),
                                 retain_daily integer DEFAULT 7, retain_weekly integer DEFAULT 4,
                                 retain_monthly integer DEFAULT 12)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p      record;
    v_db   name := schedule.database;
    v_next timestamptz;
BEGIN
    -- Raises with a HINT listing the accepted forms when `at` is malformed.
    SELECT * INTO p FROM backups._parse_schedule(schedule.at);
    PERFORM backups._check_database(v_db, 'source');
    IF retain_daily IS NULL OR retain_weekly IS NULL OR retain_monthly IS NULL
       OR retain_daily < 0 OR retain_weekly < 0 OR retain_monthly < 0 THEN
        RAISE EXCEPTION 'retention counts must be zero or more (got daily %, weekly %, monthly %)',
                        retain_daily, retain_weekly, retain_monthly
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'retain_daily, retain_weekly and retain_monthly count the newest scheduled backup of each of the last N days, weeks and months to keep.';
    END IF;
    IF retain_daily + retain_weekly + retain_monthly = 0 THEN
        RAISE EXCEPTION 'this retention keeps no backup at all'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Keep at least one: retain_daily => 1 keeps the newest scheduled backup.';
    END IF;
    v_next := backups._next_run(p.cron, p.timezone, now());
    INSERT INTO backups.schedules AS s (database, spec, cron, timezone, retain_daily, retain_weekly, retain_monthly, next_run_at)
    VALUES (v_db, btrim(schedule.at), p.cron, p.timezone, retain_daily, retain_weekly, retain_monthly, v_next)
    ON CONFLICT ON CONSTRAINT schedules_database_key DO UPDATE
    SET spec = excluded.spec, cron = excluded.cron, timezone = excluded.timezone,
        retain_daily = excluded.retain_daily, retain_weekly = excluded.retain_weekly,
        retain_monthly = excluded.retain_monthly, next_run_at = excluded.next_run_at;
    RAISE NOTICE 'database % backed up %; next run %', v_db, p.description,
        to_char(v_next AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"');
    PERFORM backups._notify('schedule');
END
$$;

CREATE FUNCTION backups.schedules()
RETURNS TABLE (database name, schedule text, timezone text, next_run_at timestamptz, next_run_utc timestamp,
               next_run_local timestamp, last_run_at timestamptz,
               retain_daily integer, retain_weekly integer, retain_monthly integer)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.database, s.spec, s.timezone, s.next_run_at, s.next_run_at AT TIME ZONE 'UTC',
           s.next_run_at AT TIME ZONE s.timezone, s.last_run_at,
           s.retain_daily, s.retain_weekly, s.retain_monthly
    FROM backups.schedules s ORDER BY s.database
$$;

CREATE FUNCTION backups.unschedule(database name DEFAULT current_database()) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM backups.schedules s WHERE s.database = unschedule.database;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'database "%" has no backup schedule', unschedule.database
            USING ERRCODE = 'no_data_found',
                  HINT = 'SELECT * FROM backups.schedules(); lists the schedules.';
    END IF;
END
$$;

-- What `heroku pg:info` shows.
CREATE FUNCTION backups.database_info(database name DEFAULT current_database())
RETURNS TABLE (field text, value text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_db     name := database_info.database;
    v_tables bigint;
BEGIN
    PERFORM backups._check_database(v_db, 'source');
    -- pg_class is per database: tables can only be counted in this one.
    IF v_db = current_database() THEN
        SELECT count(*) INTO v_tables FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname !~ '^pg_toast'
          AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                          WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e');
    END IF;
    RETURN QUERY
    SELECT f.k, f.v FROM (VALUES
        (1, 'database', v_db::text),
        (2, 'data size', pg_size_pretty(pg_database_size(v_db))),
        (3, 'tables', coalesce(v_tables::text, 'counted only for the current database')),
        (4, 'connections', (SELECT count(*) FROM pg_catalog.pg_stat_activity a WHERE a.datname = v_db)::text
                           || '/' || current_setting('max_connections')),
        (5, 'pg version', current_setting('server_version')),
        (6, 'backups', (SELECT count(*) FROM backups.transfers t
                        WHERE t.kind = 'capture' AND t.database = v_db AND t.status = 'completed'
                          AND t.deleted_at IS NULL)::text || ' completed'),
        (7, 'latest backup', (SELECT t.name || ' at ' || t.finished_at::text FROM backups.transfers t
                              WHERE t.kind = 'capture' AND t.database = v_db AND t.status = 'completed'
                                AND t.deleted_at IS NULL ORDER BY t.finished_at DESC LIMIT 1)),
        (8, 'schedule', (SELECT s.spec || ', next run ' || s.next_run_at::text FROM backups.schedules s
                         WHERE s.database = v_db))
    ) AS f(n, k, v)
    WHERE f.v IS NOT NULL
    ORDER BY f.n;
END
$$;

-- The worker's tick: fire due schedules, re-notify pending work, requeue or
-- fail transfers whose agent went silent, expire backups past retention.
-- The background worker calls it every second; tests call it directly.
CREATE FUNCTION backups._tick(renotify boolean DEFAULT true, agent_timeout interval DEFAULT NULL,
                              keep_manual integer DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    -- An integer GUC with a unit shows as text like '60s', which is an interval.
    v_timeout  interval := coalesce(agent_timeout,
                                    coalesce(nullif(current_setting('backups.agent_timeout', true), ''), '60s')::interval);
    v_keep     integer := coalesce(keep_manual, coalesce(nullif(current_setting('backups.keep_manual', true), ''), '25')::integer);
    s          backups.schedules;
    t          backups.transfers;
    v_name     text;
    v_id       bigint;
    v_fired    integer := 0;
    v_requeued integer := 0;
    v_failed   integer := 0;
    v_expired  integer := 0;
BEGIN
    -- Due schedules fire once, however many slots passed while the server
    -- was down: the next run is computed from now, not from the missed slot.
    FOR s IN SELECT * FROM backups.schedules x WHERE x.next_run_at <= now()
             ORDER BY x.next_run_at FOR UPDATE SKIP LOCKED LOOP
        IF EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.datname = s.database AND d.datallowconn) THEN
            v_name := backups._next_name('a');
            INSERT INTO backups.transfers (name, kind, database, schedule_id)
            VALUES (v_name, 'capture', s.database, s.id) RETURNING id INTO v_id;
            PERFORM backups._log(v_id, format('scheduled capture (%s), due %s', s.spec, s.next_run_at));
            PERFORM backups._notify(v_name);
            v_fired := v_fired + 1;
        ELSE
            RAISE WARNING 'pg_backups: skipping the schedule of database "%": it does not exist or refuses connections', s.database;
        END IF;
        UPDATE backups.schedules x SET last_run_at = now(),
               next_run_at = backups._next_run(s.cron, s.timezone, now())
        WHERE x.id = s.id;
    END LOOP;

    -- An agent that stops heartbeating has died or lost its connection.
    FOR t IN SELECT * FROM backups.transfers x
             WHERE x.status = 'running' AND coalesce(x.heartbeat_at, x.started_at, x.created_at) < now() - v_timeout
             FOR UPDATE SKIP LOCKED LOOP
        IF t.attempts < 3 AND NOT t.cancel_requested THEN
            UPDATE backups.transfers x
            SET status = 'pending', agent_id = NULL, heartbeat_at = NULL, started_at = NULL,
                processed_bytes = 0, current_object = NULL
            WHERE x.id = t.id;
            PERFORM backups._log(t.id, format('agent %s sent no heartbeat for %s; requeued (attempt %s of 3 used)',
                                              t.agent_id, v_timeout, t.attempts), 'warning');
            PERFORM backups._notify(t.name);
            v_requeued := v_requeued + 1;
        ELSE
            UPDATE backups.transfers x
            SET status = CASE WHEN t.cancel_requested THEN 'cancelled' ELSE 'failed' END,
                finished_at = now(),
                error = CASE WHEN t.cancel_requested THEN x.error
                             ELSE format('the agent stopped sending heartbeats (no news for %s) after %s attempts', v_timeout, t.attempts) END
            WHERE x.id = t.id;
            PERFORM backups._log(t.id, format('agent %s sent no heartbeat for %s; giving up after %s attempts',
                                              t.agent_id, v_timeout, t.attempts), 'error');
            v_failed := v_failed + 1;
        END IF;
    END LOOP;

    -- Retention: scheduled backups by their schedule's policy ...
    FOR s IN SELECT * FROM backups.schedules LOOP
        FOR t IN SELECT x.* FROM backups.transfers x
                 WHERE x.id = ANY (backups._retention_expired(
                     ARRAY(SELECT y.id FROM backups.transfers y
                           WHERE y.database = s.database AND y.kind = 'capture' AND y.name LIKE 'a%'
                             AND y.status = 'completed' AND y.deleted_at IS NULL ORDER BY y.id),
                     ARRAY(SELECT y.created_at FROM backups.transfers y
                           WHERE y.database = s.database AND y.kind = 'capture' AND y.name LIKE 'a%'
                             AND y.status = 'completed' AND y.deleted_at IS NULL ORDER BY y.id),
                     s.timezone, s.retain_daily, s.retain_weekly, s.retain_monthly))
                 FOR UPDATE SKIP LOCKED LOOP
            UPDATE backups.transfers x SET status = 'expired' WHERE x.id = t.id;
            PERFORM backups._log(t.id, format('expired by the retention of the schedule of %s (daily %s, weekly %s, monthly %s)',
                                              s.database, s.retain_daily, s.retain_weekly, s.retain_monthly));
            v_expired := v_expired + 1;
        END LOOP;
    END LOOP;
    -- ... and manual backups beyond the newest backups.keep_manual per database.
    FOR t IN SELECT x.* FROM backups.transfers x
             JOIN (SELECT y.id, row_number() OVER (PARTITION BY y.database ORDER BY y.created_at DESC, y.id DESC) AS n
                   FROM backups.transfers y
                   WHERE y.kind = 'capture' AND y.name LIKE 'b%' AND y.status = 'completed' AND y.deleted_at IS NULL) r
               ON r.id = x.id
             WHERE r.n > v_keep
             FOR UPDATE OF x SKIP LOCKED LOOP
        UPDATE backups.transfers x SET status = 'expired' WHERE x.id = t.id;
        PERFORM backups._log(t.id, format('expired: more than backups.keep_manual = %s manual backups of %s', v_keep, t.database));
        v_expired := v_expired + 1;
    END LOOP;
    IF v_expired > 0 THEN
        PERFORM backups._notify('expire');
    END IF;

    IF renotify AND v_fired = 0 AND v_requeued = 0
       AND EXISTS (SELECT 1 FROM backups.transfers x WHERE x.status = 'pending') THEN
        PERFORM backups._notify('pending');
    END IF;
    RETURN jsonb_build_object('fired', v_fired, 'requeued', v_requeued, 'failed', v_failed, 'expired', v_expired);
END
$$;

-- Permissions: nothing for PUBLIC; users read and capture; admins may also
-- destroy or schedule. Superusers bypass these checks.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA backups FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA backups FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    backups.capture(name, integer, text),
    backups.wait(text, interval),
    backups.list(),
    backups.info(text),
    backups.url(text, interval),
    backups.database_info(name),
    backups.schedules()
TO backups_user;
GRANT EXECUTE ON PROCEDURE backups.capture_and_wait(name, integer, text, interval, text, text) TO backups_user;
GRANT EXECUTE ON FUNCTION
    backups.restore(text, name, name),
    backups.copy(text, name, name),
    backups.delete(text),
    backups.schedule(text, name, integer, integer, integer),
    backups.unschedule(name),
    backups.cancel(text)
TO backups_admin;
