-- The SQL surface every kind shares: what a person calls from psql to
-- wait for, list, inspect, cancel and delete transfers, link and read
-- backups. Each kind's own entry function (capture(), restore(), ...) is in
-- its file in sql/kinds/. None of these runs pg_dump or touches storage:
-- they record intent and notify the agent, which sees a transfer once the
-- calling transaction commits.

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

-- History, newest first, a page at a time: at most `page_size` rows
-- (default 100) created before transfer `before` (the last id of the
-- previous page), of database `of_database`, kind `of_kind` and status
-- `of_status` if given (named apart from the columns they filter). Whom the
-- caller may see is worked out once, not per row; each page reads only its
-- rows (an index serves "newest first" for an admin, and per owner for a
-- tenant), and a backup's latest verification is looked up only for the
-- rows returned. Paging by `before` returns every row once, however many
-- transfers are queued meanwhile (they are newer than any page read).
CREATE FUNCTION backups.list(page_size integer DEFAULT 100, before text DEFAULT NULL, of_database name DEFAULT NULL,
                             of_kind text DEFAULT NULL, of_status text DEFAULT NULL)
RETURNS TABLE (id text, kind text, status text, created_at timestamptz, started_at timestamptz,
               finished_at timestamptz, database name, source_size bigint, stored_size bigint, progress text,
               kept boolean, verified text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
DECLARE
    v_admin  boolean := backups._is_admin();
    v_roles  oid[];
    v_cursor backups.transfers;
BEGIN
    IF page_size IS NULL OR page_size < 1 THEN
        RAISE EXCEPTION 'page_size must be at least 1, not %', coalesce(page_size::text, 'NULL')
            USING HINT = 'SELECT * FROM backups.list(20); then backups.list(20, before => ''<the last id shown>'')';
    END IF;
    IF NOT v_admin THEN
        -- The roles whose transfers the caller sees (_may_see), once.
        v_roles := ARRAY(SELECT r.oid FROM pg_catalog.pg_roles r WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'));
    END IF;
    IF before IS NOT NULL THEN
        -- Only a row the caller may see (deleted ones too) marks a place.
        SELECT * INTO v_cursor FROM backups.transfers x WHERE x.name = lower(btrim(list.before));
        IF NOT FOUND OR NOT backups._may_see(v_cursor) THEN
            RAISE EXCEPTION 'no transfer is called %', before
                USING HINT = 'before => takes the last id of the previous page (one the history has not pruned since).';
        END IF;
    END IF;
    RETURN QUERY
    WITH page AS MATERIALIZED (
        SELECT t.* FROM backups.transfers t
         WHERE t.deleted_at IS NULL
           AND (v_admin OR (t.owner_role = ANY (v_roles)
                            AND (t.kind <> 'capture' OR t.source IS NULL)
                            AND NOT (t.kind = 'verify' AND t.options ? 'admins_only')))
           AND (list.of_database IS NULL OR t.database = list.of_database)
           AND (list.of_kind IS NULL OR t.kind = list.of_kind)
           AND (list.of_status IS NULL OR t.status = list.of_status)
           AND (list.before IS NULL OR (t.created_at, t.id) < (v_cursor.created_at, v_cursor.id))
         ORDER BY t.created_at DESC, t.id DESC
         LIMIT list.page_size
    )
    SELECT t.name, t.kind, t.status, t.created_at, t.started_at, t.finished_at, t.database,
           t.source_size, t.stored_size,
           CASE t.status
               WHEN 'pending' THEN CASE WHEN t.attempts > 0 THEN 'requeued, waiting for an agent'
                                        ELSE 'waiting for an agent' END
               WHEN 'running' THEN backups._progress(t::backups.transfers)
               WHEN 'completed' THEN 'done' || coalesce(' in ' || backups._duration(t.started_at, t.finished_at), '')
                                     || CASE WHEN t.warnings > 0 THEN format(' with %s warnings', t.warnings) ELSE '' END
               WHEN 'failed' THEN split_part(coalesce(t.error, 'failed'), E'\n', 1)
               WHEN 'cancelled' THEN 'cancelled'
               WHEN 'expired' THEN 'expired by retention'
           END,
           t.kept_at IS NOT NULL,
           -- A backup's latest verification: how it ended, and when.
           CASE WHEN t.kind = 'capture' THEN
               (SELECT CASE v.status WHEN 'completed' THEN 'passed' ELSE v.status END
                       || coalesce(' ' || to_char(v.finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), '')
                       || ' (' || v.name || ')'
                  FROM backups.transfers v
                 WHERE v.kind = 'verify' AND v.source = t.name AND backups._may_see(v)
                 ORDER BY v.id DESC LIMIT 1)
           END
      FROM page t
     ORDER BY t.created_at DESC, t.id DESC;
END
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
        (2,  'kind', t.kind || CASE WHEN t.scheduled THEN ' (scheduled)' ELSE '' END),
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
        (13, 'attempts', CASE WHEN t.attempts > 1 THEN t.attempts::text
                              || CASE WHEN t.handed_back > 0 THEN format(' (%s handed back at shutdown)', t.handed_back) ELSE '' END END),
        (14, 'format', t.format),
        (15, 'source size', CASE WHEN t.source_size IS NOT NULL THEN pg_size_pretty(t.source_size) END),
        (16, 'processed', CASE WHEN t.processed_bytes > 0 THEN pg_size_pretty(t.processed_bytes) END),
        (16.1, 'progress', CASE WHEN t.status = 'running' THEN backups._progress(t) END),
        (16.2, 'current table', CASE WHEN t.status = 'running' THEN t.current_object END),
        (17, 'stored size', CASE WHEN t.stored_size IS NOT NULL THEN pg_size_pretty(t.stored_size) END),
        (18, 'compression', CASE WHEN t.stored_size > 0 AND t.processed_bytes > 0
                                 THEN format('%s:1 (%s%% smaller than the uncompressed dump)',
                                             round(t.processed_bytes::numeric / t.stored_size, 2),
                                             round(100 - 100.0 * t.stored_size / t.processed_bytes)) END),
        (19, 'sha256', t.checksum),
        (20, 'object', t.object_key),
        (20.5, 'encryption', 'age, to ' || array_to_string(t.encrypted_to, ', ')),
        (21, 'tool versions', t.tool_versions::text),
        (22, 'warnings', CASE WHEN t.warnings > 0 THEN t.warnings::text END),
        (23, 'error', t.error),
        (24, 'deleted from storage', t.purged_at::text),
        (25, 'kept', CASE WHEN t.kept_at IS NOT NULL THEN format('since %s by %s (exempt from retention and delete())', t.kept_at, t.kept_by) END),
        (26, 'tables', CASE WHEN t.kind = 'capture' AND t.status = 'completed'
                            THEN coalesce(jsonb_array_length(t.contents)::text
                                          || ' (rows and digests: SELECT * FROM backups.contents(' || quote_literal(t.name) || ');)',
                                          'not recorded (captured before pg_backups recorded contents)') END),
        (27, 'verified', CASE WHEN t.kind = 'capture' THEN
                              (SELECT string_agg(v.name || ' ' || v.status || coalesce(' at ' || v.finished_at::text, ''), ', ' ORDER BY v.id)
                                 FROM backups.transfers v WHERE v.kind = 'verify' AND v.source = t.name
                                  AND backups._may_see(v)) END)
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
          AND (backups._is_admin() OR (x.status = 'pending' AND x.created_by = session_user AND backups._may_see(x)))
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
    -- A backups_user may take back what it queued itself, until it starts.
    IF NOT backups._is_admin() AND NOT (t.status = 'pending' AND t.created_by = session_user) THEN
        RAISE EXCEPTION 'permission denied to cancel %', t.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A backups_user can cancel only the pending transfers it queued itself; ask a backups_admin to cancel others.';
    END IF;
    IF t.status = 'pending' THEN
        UPDATE backups.transfers SET cancel_requested = true WHERE transfers.id = t.id;
        PERFORM backups._end(t.id, 'cancelled');
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
    IF t.kept_at IS NOT NULL THEN
        RAISE EXCEPTION '% is kept (since %, by %)', t.name, t.kept_at, t.kept_by
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Unkeep it first: SELECT backups.keep(%L, false);', t.name);
    END IF;
    -- The agent removes whatever is stored under the backup's folder, every
    -- attempt's, then sets purged_at.
    UPDATE backups.transfers SET deleted_at = now() WHERE transfers.id = t.id;
    PERFORM backups._log(t.id, format('deleted by %s', session_user));
    PERFORM backups._notify('delete ' || t.name);
END
$$;

CREATE FUNCTION backups.url(id text DEFAULT NULL, expires_in interval DEFAULT '1 hour') RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    t := backups._readable_backup(url.id, 'download');
    IF t.status <> 'completed' THEN
        RAISE EXCEPTION '% is %, not completed: there is nothing to download', t.name, t.status
            USING HINT = 'Links are for completed backups; SELECT * FROM backups.list(); shows their status.';
    END IF;
    RETURN backups._signed_link(format('/backups/%s.%s', t.name, CASE WHEN t.format = 'directory' THEN 'tar' ELSE 'dump' END),
                                t.name, url.expires_in);
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
    v_oid    oid;
    v_owner  oid;
BEGIN
    PERFORM backups._check_database(v_db, 'source');
    PERFORM backups._require(v_db, 'inspect');
    SELECT d.oid, d.datdba INTO v_oid, v_owner FROM pg_catalog.pg_database d WHERE d.datname = v_db;
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
        -- This database's backups: those of its oid, taken while its
        -- owner now owned it (not those of another database that had its name).
        (6, 'backups', (SELECT count(*) FROM backups.transfers t
                        WHERE t.kind = 'capture' AND t.source IS NULL AND t.database_oid = v_oid AND t.owner_role = v_owner
                          AND t.status = 'completed' AND t.deleted_at IS NULL)::text || ' completed'),
        (7, 'latest backup', (SELECT t.name || ' at ' || t.finished_at::text FROM backups.transfers t
                              WHERE t.kind = 'capture' AND t.source IS NULL AND t.database_oid = v_oid
                                AND t.owner_role = v_owner AND t.status = 'completed' AND t.deleted_at IS NULL
                              ORDER BY t.finished_at DESC LIMIT 1)),
        (8, 'schedule', (SELECT s.spec || ', next run ' || s.next_run_at::text FROM backups.schedules s
                         WHERE s.database = v_db))
    ) AS f(n, k, v)
    WHERE f.v IS NOT NULL
    ORDER BY f.n;
END
$$;

-- What a backup holds, table by table, as its capture read it: rows, bytes
-- of COPY text, and the digest verify() compares. NULL: the newest
-- completed backup the caller may see.
CREATE FUNCTION backups.contents(id text DEFAULT NULL)
RETURNS TABLE (schema_name text, table_name text, rows bigint, bytes bigint, digest text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b backups.transfers;
BEGIN
    b := backups._readable_backup(contents.id, 'read the contents of');
    IF b.status = 'completed' AND b.contents IS NULL THEN
        RAISE NOTICE 'backup % was captured before pg_backups recorded contents: there is nothing to show', b.name
            USING HINT = 'Capture again to record them; backups.verify() still proves it restores.';
    ELSIF b.status = 'expired' THEN
        RAISE NOTICE 'backup % expired: its contents went with it', b.name;
    END IF;
    RETURN QUERY
    SELECT e->>'schema', e->>'table', (e->>'rows')::bigint, (e->>'bytes')::bigint, e->>'digest'
      FROM jsonb_array_elements(coalesce(b.contents, '[]'::jsonb)) e
     ORDER BY 1, 2;
END
$$;
