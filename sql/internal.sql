-- pg_backups internals shared by the SQL surface, the lifecycle functions
-- and the worker's tick: notifications, names, log lines, lookups and the
-- checks every entry point makes before it queues anything.
--
-- Every function here and in the other sql/ files that touches the tables is
-- SECURITY DEFINER with a pinned search_path; EXECUTE is revoked from PUBLIC
-- and granted role by role in grants.sql.

-- The channel the agent LISTENs on. Payload: a transfer name, or a word.
CREATE FUNCTION backups._notify(payload text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_notify('pg_backups', payload) $$;

-- b001, a001, r001, c001: three digits, more when needed, never reused,
-- from the prefix's sequence (schema.sql: it never waits on another
-- caller's open transaction).
-- (plpgsql, whose body is resolved when first called: _format_name is one of
-- the Rust helpers, which the extension script may create after this file.)
CREATE FUNCTION backups._next_name(prefix text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF _next_name.prefix IS NULL OR _next_name.prefix NOT IN ('a', 'b', 'c', 'r', 'v') THEN
        RAISE EXCEPTION 'no transfer is named with the prefix %', quote_nullable(_next_name.prefix);
    END IF;
    RETURN backups._format_name(_next_name.prefix,
                                pg_catalog.nextval(pg_catalog.format('backups.%I', 'names_' || _next_name.prefix)::regclass));
END
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

-- Tenancy. Superusers and members of backups_admin act on every database;
-- a backups_user acts only on the databases whose owner role it is a member
-- of. The caller is session_user: inside a SECURITY DEFINER function
-- current_user is the extension's owner, and a login role can only SET ROLE
-- to roles it is a member of, so its session_user has at least the rights
-- its current_user had. (pg_has_role is true for superusers.)
CREATE FUNCTION backups._is_admin() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_has_role(session_user, 'backups_admin', 'MEMBER') $$;

CREATE FUNCTION backups._may_act_on(db name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT backups._is_admin()
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_database d
                    WHERE d.datname = _may_act_on.db AND pg_catalog.pg_has_role(session_user, d.datdba, 'MEMBER'))
$$;

-- A transfer a user may see: one on a database whose owner, when it was
-- queued, the user is a member of (not whoever owns that name now: a
-- database dropped or renamed and its name taken by another tenant does not
-- hand over its backups). A capture from a named source (one of the
-- agent's connections, not a database of this cluster) is an admin's.
CREATE FUNCTION backups._may_see(t backups.transfers) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT backups._is_admin()
        OR ((t.kind <> 'capture' OR t.source IS NULL)
            AND NOT (t.kind = 'verify' AND t.options ? 'admins_only')
            AND CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = t.owner_role) THEN false
                     ELSE pg_catalog.pg_has_role(session_user, t.owner_role, 'MEMBER') END)
$$;

-- The name of `db`'s owner role (NULL for no such database).
CREATE FUNCTION backups._owner_name(db name) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database d WHERE d.datname = _owner_name.db $$;

-- Refuse, before anything is queued, what the caller may not do to `db`.
CREATE FUNCTION backups._require(db name, action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT backups._may_act_on(_require.db) THEN
        RAISE EXCEPTION 'permission denied to % database "%"', _require.action, _require.db
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('A backups_user acts only on databases whose owner role it is a member of; %I is owned by %I. '
                                'Ask its owner to GRANT %I TO %I, or ask a backups_admin.',
                                _require.db, backups._owner_name(_require.db), backups._owner_name(_require.db),
                                session_user);
    END IF;
END
$$;

-- A URL as it may be shown: no user or password, no query string (signed
-- links carry their signature there), no fragment.
CREATE FUNCTION backups._redact_url(url text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(regexp_replace(url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1***@'),
                          '[?#].*$', '?***')
$$;

-- Look a transfer up by name; NULL means the newest one (of `kinds`) the
-- caller may see. Deleted backups are gone as far as users are concerned.
CREATE FUNCTION backups._find(id text, kinds text[] DEFAULT ARRAY['capture', 'restore', 'copy', 'verify'])
RETURNS backups.transfers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    IF _find.id IS NULL THEN
        SELECT * INTO t FROM backups.transfers x
        WHERE x.kind = ANY (_find.kinds) AND x.deleted_at IS NULL AND backups._may_see(x)
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
                  HINT = 'Transfers are named like b001 (backup), a001 (scheduled backup), r001 (restore), c001 (copy) and v001 (verification); SELECT * FROM backups.list(); shows them.';
    END IF;
    IF NOT backups._may_see(t) THEN
        RAISE EXCEPTION 'permission denied for transfer %', t.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A backups_user sees only the transfers of databases whose owner role it is a member of; SELECT * FROM backups.list(); shows them.';
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_busy   text;
    v_status text;
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
    -- One restore or copy into a database at a time: a second one's drop
    -- would end the first. The lock orders two callers racing to queue.
    PERFORM pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pg_backups target ' || target));
    SELECT t.name, t.status INTO v_busy, v_status FROM backups.transfers t
     WHERE t.kind IN ('restore', 'copy') AND t.target = _check_target.target AND t.status IN ('pending', 'running')
     ORDER BY t.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'database "%" is already the target of % (%)', target, v_busy, v_status
            USING ERRCODE = 'lock_not_available',
                  HINT = format('Wait for it to end (SELECT backups.wait(%L);), or cancel it (SELECT backups.cancel(%L);).', v_busy, v_busy);
    END IF;
END
$$;

-- The options of a restore or copy that replaces `target` in place, with
-- its risk spelled out: by default the archive goes into a shadow database
-- swapped in at the end, which needs room for a second copy of the target.
CREATE FUNCTION backups._in_place_option(target name, in_place boolean) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF in_place IS NOT TRUE THEN
        RETURN '{}'::jsonb;
    END IF;
    RAISE NOTICE 'in place: database "%" is dropped as soon as the transfer starts; if it then fails or is cancelled, "%" is left empty or half-restored', target, target
        USING HINT = 'Leave in_place out to restore into a shadow database that replaces the target only once complete (it needs free space for a second copy of the target).';
    RETURN '{"in_place": true}'::jsonb;
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

-- What a transfer is expected to process in all, for its percentage: a
-- capture's is the last like it of the same database (same source, format
-- and options: the best guess of its dump's size), else the agent's
-- estimate from the source's table sizes; a copy's is the source's table
-- sizes; a restore's or a verification's, the backup's stored size.
CREATE FUNCTION backups._expected(t backups.transfers) RETURNS bigint
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT coalesce(
        CASE WHEN t.kind = 'capture' THEN
            (SELECT p.processed_bytes FROM backups.transfers p
              WHERE p.kind = 'capture' AND p.status = 'completed' AND p.database = t.database
                AND p.source IS NOT DISTINCT FROM t.source AND p.format IS NOT DISTINCT FROM t.format
                AND p.options = t.options AND p.processed_bytes > 0
                -- (a name reused by another owner: not its estimate)
                AND p.owner_role IS NOT DISTINCT FROM t.owner_role
              ORDER BY p.finished_at DESC, p.id DESC LIMIT 1) END,
        nullif(t.expected_bytes, 0))
$$;

-- Per-table detail where the server has it (pg_stat_progress_copy, 14 and
-- later): the rows the agent's COPY commands under way have moved, when the
-- transfer's database is on this cluster (a capture's source, a restore's
-- or copy's target, or the shadow it fills).
CREATE FUNCTION backups._copy_rows(t backups.transfers) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_rows bigint;
    v_dbs  name[];
BEGIN
    -- (A verification restores into a scratch database: not counted.)
    IF t.status <> 'running' OR current_setting('server_version_num')::int < 140000
       OR t.kind NOT IN ('capture', 'restore', 'copy') OR (t.kind = 'capture' AND t.source IS NOT NULL) THEN
        RETURN NULL;
    END IF;
    v_dbs := ARRAY[t.database] || CASE WHEN t.kind IN ('restore', 'copy')
        THEN (SELECT array_agg(('pgbackups_shadow_' || d.oid)::name) FROM pg_catalog.pg_database d WHERE d.datname = t.database)
        ELSE '{}' END;
    EXECUTE $q$SELECT sum(p.tuples_processed)::bigint
                 FROM pg_catalog.pg_stat_progress_copy p JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
                WHERE a.application_name = 'pgbackups' AND p.datname = ANY ($1)
                  AND p.command = CASE WHEN $2 = 'capture' THEN 'COPY TO' ELSE 'COPY FROM' END$q$
       INTO v_rows USING v_dbs, t.kind;
    RETURN CASE WHEN v_rows > 0 THEN v_rows || ' rows in COPY' END;
END
$$;

-- A running transfer's progress for people: `42%, 430 MB of ~1.0 GB,
-- about 3 min 10 s left, "public"."events"`. The percentage stops at 99
-- until the transfer ends (an estimate can be short); the time left
-- assumes the rate so far. Without an estimate: the bytes processed.
CREATE FUNCTION backups._progress(t backups.transfers) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_expected bigint := backups._expected(t);
    v_elapsed  interval := now() - t.started_at;
    v_left     float8;
    v_text     text;
BEGIN
    IF v_expected IS NULL THEN
        v_text := pg_size_pretty(t.processed_bytes) || ' processed';
    ELSIF t.processed_bytes >= v_expected THEN
        v_text := format('99%%, %s of ~%s, finishing', pg_size_pretty(t.processed_bytes), pg_size_pretty(v_expected));
    ELSE
        v_text := format('%s%%, %s of ~%s', floor(100.0 * t.processed_bytes / v_expected),
                         pg_size_pretty(t.processed_bytes), pg_size_pretty(v_expected));
        IF t.processed_bytes > 0 AND v_elapsed > interval '0' THEN
            -- In seconds, capped: a stall far from the end must not
            -- overflow an interval (and fail list() for everyone).
            v_left := extract(epoch FROM v_elapsed) * (v_expected - t.processed_bytes)::float8 / t.processed_bytes;
            v_text := v_text || CASE WHEN v_left > 30 * 86400 THEN ', more than 30 days left'
                                     ELSE ', about ' || backups._duration(now(), now() + make_interval(secs => floor(v_left)))
                                          || ' left' END;
        END IF;
    END IF;
    RETURN v_text || coalesce(', ' || t.current_object, '') || coalesce(', ' || backups._copy_rows(t), '');
END
$$;

-- Queue the verification of completed backup `backup_id` (verify(), or a
-- schedule with verify => true once its capture completes); its name. Its
-- log tells of the backup's tables and rows, so it is seen by whoever may
-- read the backup's data: the database's owner when the capture ran with
-- the owner's rights, else (an admin's capture, or a named source's) only
-- admins.
CREATE FUNCTION backups._queue_verify(backup_id bigint, why text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b      backups.transfers;
    v_name text;
    v_id   bigint;
BEGIN
    SELECT * INTO b FROM backups.transfers x WHERE x.id = _queue_verify.backup_id;
    v_name := backups._next_name('v');
    INSERT INTO backups.transfers (name, kind, database, database_oid, source, owner_role, options)
    VALUES (v_name, 'verify', b.database, b.database_oid, b.name, b.owner_role,
            CASE WHEN b.source IS NOT NULL OR NOT b.options ? 'role' THEN '{"admins_only": true}'::jsonb
                 ELSE '{}'::jsonb END)
    RETURNING id INTO v_id;
    PERFORM backups._log(v_id, format('%s: restore %s into a scratch database and compare every table with what its capture read', _queue_verify.why, b.name));
    PERFORM backups._notify(v_name);
    RETURN v_name;
END
$$;

-- The backup named `id` (NULL: the newest completed one) whose data the
-- caller may get at, to `action` it (download, verify, read the contents
-- of). A capture an admin queued read with the agent's rights, so it may
-- hold what the database's owner may not read: only admins get at its
-- data, or at what tells of it.
CREATE FUNCTION backups._readable_backup(id text, action text) RETURNS backups.transfers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b backups.transfers;
BEGIN
    IF _readable_backup.id IS NULL THEN
        SELECT * INTO b FROM backups.transfers x
        WHERE x.kind = 'capture' AND x.status = 'completed' AND x.deleted_at IS NULL AND backups._may_see(x)
          AND (backups._is_admin() OR x.options ? 'role')
        ORDER BY x.finished_at DESC, x.id DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'there is no completed backup yet'
                USING HINT = 'Capture one with CALL backups.capture_and_wait();';
        END IF;
        RETURN b;
    END IF;
    b := backups._find(_readable_backup.id, ARRAY['capture']);
    IF NOT backups._is_admin() AND NOT b.options ? 'role' THEN
        RAISE EXCEPTION 'permission denied to % %', _readable_backup.action, b.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'It was captured by a backups_admin with the agent''s rights, and may hold data the database''s owner cannot read. Capture one yourself (SELECT backups.capture();), or ask a backups_admin.';
    END IF;
    RETURN b;
END
$$;

-- A link to the agent's `path`, signed over `name` (HMAC with
-- backups.link_secret, checked by the agent), expiring after `expires_in`
-- (1 second to 7 days): url()'s and status_url()'s.
CREATE FUNCTION backups._signed_link(path text, name text, expires_in interval) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_base    text := rtrim(coalesce(current_setting('backups.link_base_url', true), ''), '/');
    v_expires bigint;
BEGIN
    IF expires_in IS NULL OR expires_in <= interval '0' OR expires_in > interval '7 days' THEN
        RAISE EXCEPTION 'expires_in must be between 1 second and 7 days, not %', expires_in
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example expires_in => ''10 minutes''.';
    END IF;
    IF v_base = '' THEN
        RAISE EXCEPTION 'the agent link base is not configured'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set backups.link_base_url to the agent''s public address (pgbackups agent --listen) and backups.link_secret to the agent''s link secret in postgresql.conf, then SELECT pg_reload_conf();';
    END IF;
    -- Floor: a link never outlives expires_in.
    v_expires := floor(extract(epoch FROM clock_timestamp() + expires_in))::bigint;
    RETURN format('%s%s?expires=%s&signature=%s', v_base, path, v_expires, backups._link_signature(name, v_expires));
END
$$;
