-- Seeing it: is every database backed up recently (health()), and an event
-- on every status change of a transfer (NOTIFY backups_events), for
-- applications and on-call tools that LISTEN.

-- The interval between two runs of a schedule around its next run: a day
-- for `daily`, a week for `weekly`, an hour for `hourly`. No SET clause,
-- so that PostgreSQL inlines it into health()'s query (a function call per
-- database cost a third of health()); every name in it is qualified, so
-- no search_path can change what it calls.
CREATE FUNCTION backups._period(s backups.schedules) RETURNS interval
LANGUAGE sql STABLE
AS $$ SELECT backups._next_run(s.cron, s.timezone, s.next_run_at) OPERATOR(pg_catalog.-) s.next_run_at $$;

-- One row per database the caller may act on that has a schedule, or
-- exists and has any backup: its last completed backup and that backup's age, its schedule,
-- its last failed capture, and a status:
--   failing  the last scheduled capture failed;
--   never    no completed backup;
--   late     none completed within 1.5 schedule periods (25 hours without a schedule);
--   ok       otherwise.
-- The monitoring query: SELECT * FROM backups.health() WHERE status <> 'ok';
-- (`everyone`: every database, for the agent's status page and metrics.)
CREATE FUNCTION backups._health(everyone boolean)
RETURNS TABLE (database name, status text, last_backup text, last_backup_at timestamptz, backup_age interval,
               schedule text, last_failure text, last_failure_at timestamptz)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    -- A database is one database, not a name: its backups are those of
    -- its oid, taken while its owner now owned it. One dropped and its name
    -- taken by another owner's starts afresh (`never`), and shows nothing
    -- of the first one's backups or failures. The databases: every one
    -- with a schedule (even one that no longer exists), and every other
    -- one with a capture (a database dropped since is no longer watched;
    -- its backups stay in list()). Each fact is one index entry per
    -- database (a LATERAL join: read once, not once per field), and the
    -- caller's rights are looked up once, not per database.
    SELECT coalesce(d.datname, s.database),
           CASE WHEN l.status = 'failed' THEN 'failing'
                WHEN g.id IS NULL THEN 'never'
                WHEN g.finished_at < now() - CASE WHEN s.id IS NULL THEN interval '25 hours'
                                                  ELSE 1.5 * backups._period(s) END THEN 'late'
                ELSE 'ok' END,
           g.name, g.finished_at, date_trunc('second', now() - g.finished_at),
           s.spec, b.name || ': ' || split_part(coalesce(b.error, 'failed'), E'\n', 1), b.finished_at
      FROM pg_catalog.pg_database d
      FULL JOIN backups.schedules s ON s.database = d.datname
     CROSS JOIN (SELECT _health.everyone OR backups._is_admin() AS all_of_them OFFSET 0) caller
      LEFT JOIN LATERAL (SELECT t.id, t.name, t.finished_at FROM backups.transfers t
                          WHERE t.kind = 'capture' AND t.source IS NULL AND t.database_oid = d.oid
                            AND t.owner_role = d.datdba AND t.status = 'completed' AND t.deleted_at IS NULL
                          ORDER BY t.finished_at DESC, t.id DESC LIMIT 1) g ON true
      LEFT JOIN LATERAL (SELECT t.name, t.error, t.finished_at FROM backups.transfers t
                          WHERE t.kind = 'capture' AND t.status = 'failed' AND t.source IS NULL
                            AND t.database_oid = d.oid AND t.owner_role = d.datdba
                          ORDER BY t.finished_at DESC, t.id DESC LIMIT 1) b ON true
      LEFT JOIN LATERAL (SELECT t.status FROM backups.transfers t
                          WHERE t.kind = 'capture' AND t.database_oid = d.oid AND t.owner_role = d.datdba AND t.scheduled
                            AND t.status IN ('completed', 'failed', 'expired')
                          ORDER BY t.finished_at DESC, t.id DESC LIMIT 1) l ON true
     WHERE (s.id IS NOT NULL
            OR EXISTS (SELECT 1 FROM backups.transfers t
                        WHERE t.kind = 'capture' AND t.source IS NULL AND t.database_oid = d.oid))
       AND (caller.all_of_them OR pg_catalog.pg_has_role(session_user, d.datdba, 'MEMBER'))
     ORDER BY 1
$$;

CREATE FUNCTION backups.health()
RETURNS TABLE (database name, status text, last_backup text, last_backup_at timestamptz, backup_age interval,
               schedule text, last_failure text, last_failure_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT * FROM backups._health(false) $$;

-- What the agent's status page and /metrics show, in one read: every
-- database's health, the queue, the running transfers with their
-- progress, and each database's completed captures (the latest 50) for
-- the charts, as one set of arrays per database. Every database: the agent's role only, and the page is
-- behind a signed link (status_url()).
-- (Without `charts`, for /metrics: no history, and the running transfers
-- by id only.)
-- Each part reads per database through an index, never the whole history:
-- the charts take each watched database's latest 50 captures (a page of
-- a thousand databases stays a few MB).
CREATE FUNCTION backups._overview(charts boolean DEFAULT true) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off
AS $$
    WITH health AS MATERIALIZED (SELECT * FROM backups._health(true))
    SELECT jsonb_build_object(
        'at', now(),
        'health', coalesce((SELECT jsonb_agg(to_jsonb(h) ORDER BY h.database) FROM health h), '[]'),
        'pending', (SELECT count(*) FROM backups.transfers t WHERE t.status = 'pending' AND t.deleted_at IS NULL),
        'running', coalesce((SELECT jsonb_agg(CASE WHEN NOT _overview.charts THEN jsonb_build_object('id', t.name) ELSE jsonb_build_object(
                                 'id', t.name, 'kind', t.kind, 'database', t.database, 'agent', t.agent_id,
                                 'started_at', t.started_at, 'processed', t.processed_bytes,
                                 'expected', backups._expected(t), 'progress', backups._progress(t),
                                 'current', t.current_object) END ORDER BY t.id)
                               FROM backups.transfers t WHERE t.status = 'running'), '[]'),
        -- A chart per database, as arrays (oldest first): one JSON
        -- object per database, not one per capture.
        'charts', coalesce((SELECT jsonb_agg(jsonb_build_object(
                                'database', w.database, 'ids', c.ids, 'finished_at', c.finished_at,
                                'seconds', c.seconds, 'stored', c.stored) ORDER BY w.database)
                              FROM health w
                             CROSS JOIN LATERAL (
                                   SELECT array_agg(h.name ORDER BY h.finished_at, h.id) AS ids,
                                          array_agg(h.finished_at ORDER BY h.finished_at, h.id) AS finished_at,
                                          array_agg(extract(epoch FROM h.finished_at - h.started_at) ORDER BY h.finished_at, h.id) AS seconds,
                                          array_agg(h.stored_size ORDER BY h.finished_at, h.id) AS stored
                                     FROM (SELECT t.id, t.name, t.finished_at, t.started_at, t.stored_size FROM backups.transfers t
                                            WHERE t.kind = 'capture' AND t.status IN ('completed', 'expired')
                                              AND t.database = w.database
                                              AND t.finished_at IS NOT NULL AND t.started_at IS NOT NULL
                                            ORDER BY t.finished_at DESC, t.id DESC LIMIT 50) h) c
                             WHERE _overview.charts AND c.ids IS NOT NULL), '[]'))
$$;

-- A signed link to the agent's status page, like url()'s: the page shows
-- every database's name and health, so only admins get one.
CREATE FUNCTION backups.status_url(expires_in interval DEFAULT '1 hour') RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT backups._is_admin() THEN
        RAISE EXCEPTION 'permission denied for the status page'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The status page shows every database; it is for backups_admin. SELECT * FROM backups.health(); shows yours.';
    END IF;
    -- Signed as the name `/`: no backup is named that (naming::is_name).
    RETURN backups._signed_link('/', '/', status_url.expires_in);
END
$$;

-- Every status change of a transfer, as JSON on channel backups_events:
-- {"id", "kind", "status", "database", "error"} (the error's first line,
-- cut at 1000 characters). Sent at commit, as every NOTIFY.
CREATE FUNCTION backups._event() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.status = NEW.status THEN
        RETURN NULL;
    END IF;
    PERFORM pg_catalog.pg_notify('backups_events', pg_catalog.json_build_object(
        'id', NEW.name, 'kind', NEW.kind, 'status', NEW.status, 'database', NEW.database,
        'error', left(split_part(NEW.error, E'\n', 1), 1000))::text);
    RETURN NULL;
END
$$;
CREATE TRIGGER transfers_events AFTER INSERT OR UPDATE OF status ON backups.transfers
    FOR EACH ROW EXECUTE FUNCTION backups._event();
