-- pg_backups internals shared by the SQL surface, the lifecycle functions
-- and the worker's tick: notifications, names, log lines, lookups and the
-- checks every entry point makes before it queues anything.
--
-- Every function here and in the other sql/ files that touches the tables is
-- SECURITY DEFINER with a pinned search_path; EXECUTE is revoked from PUBLIC
-- and granted role by role (grants.sql, and each kind's own file).

-- The channel the agent LISTENs on. Payload: a transfer name, or a word.
CREATE FUNCTION backups._notify(payload text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_notify('pg_backups', payload) $$;

-- Register a kind of transfer (its file in sql/kinds/ does, once): its
-- row (with the role whose members may queue it, to whom the file grants
-- its entry function), and a name sequence for each of its letters. A sequence never
-- waits: a tenant who queues a transfer and leaves the transaction open
-- holds up no one else's. Numbers are never reused, even after a backup is
-- deleted; one drawn by a call that rolled back is skipped. The sequences
-- are dumped with the control database's data.
CREATE FUNCTION backups._register_kind(kind text, prefix text, description text, queued_by name,
                                       scheduled_prefix text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p text;
BEGIN
    IF EXISTS (SELECT 1 FROM backups.kinds k
                WHERE _register_kind.prefix IN (k.prefix, k.scheduled_prefix)
                   OR _register_kind.scheduled_prefix IN (k.prefix, k.scheduled_prefix)) THEN
        RAISE EXCEPTION 'the letter of kind % is taken', _register_kind.kind;
    END IF;
    INSERT INTO backups.kinds (kind, prefix, scheduled_prefix, description, queued_by)
    VALUES (_register_kind.kind, _register_kind.prefix, _register_kind.scheduled_prefix, _register_kind.description,
            _register_kind.queued_by);
    FOREACH p IN ARRAY array_remove(ARRAY[_register_kind.prefix, _register_kind.scheduled_prefix], NULL) LOOP
        EXECUTE format('CREATE SEQUENCE backups.%I', 'names_' || p);
        EXECUTE format('REVOKE ALL ON SEQUENCE backups.%I FROM PUBLIC', 'names_' || p);
        PERFORM pg_catalog.pg_extension_config_dump(format('backups.%I', 'names_' || p)::regclass, '');
    END LOOP;
END
$$;

-- This cluster's system identifier (pg_control_system), as text: what
-- tells its backups apart from another cluster's in shared storage, and
-- the folder new captures are stored under.
CREATE FUNCTION backups._system_identifier() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT s.system_identifier::text FROM pg_catalog.pg_control_system() s $$;

-- Retention has something new to look at (tick.sql: _tick). A sequence:
-- never waits, whatever transaction calls it.
CREATE FUNCTION backups._retention_due() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT FROM pg_catalog.nextval('backups.retention_changes') $$;

-- The next name with letter `prefix`: three digits, more when needed.
-- (plpgsql, whose body is resolved when first called: _format_name is one of
-- the Rust helpers, which the extension script may create after this file.)
CREATE FUNCTION backups._next_name(prefix text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM backups.kinds k WHERE _next_name.prefix IN (k.prefix, k.scheduled_prefix)) THEN
        RAISE EXCEPTION 'no kind of transfer is named with the letter %', quote_nullable(_next_name.prefix);
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

-- A URL as it may be shown: no user or password, no query string (signed
-- links carry their signature there), no fragment.
CREATE FUNCTION backups._redact_url(url text) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT regexp_replace(regexp_replace(url, '^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@', '\1***@'),
                          '[?#].*$', '?***')
$$;

-- Look a transfer up by name; NULL means the newest one (of `kinds`, NULL:
-- of every kind) the caller may see. Deleted backups are gone as far as
-- users are concerned.
CREATE FUNCTION backups._find(id text, kinds text[] DEFAULT NULL)
RETURNS backups.transfers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t       backups.transfers;
    v_kinds text[] := coalesce(_find.kinds, ARRAY(SELECT k.kind FROM backups.kinds k));
BEGIN
    IF _find.id IS NULL THEN
        -- The newest the caller may see: through the owners' index for a
        -- tenant (not _may_see on every newer row of everyone's).
        SELECT * INTO t FROM backups.transfers x
        WHERE x.kind = ANY (v_kinds) AND x.deleted_at IS NULL
          AND (backups._is_admin()
               OR x.owner_role = ANY (ARRAY(SELECT r.oid FROM pg_catalog.pg_roles r
                                             WHERE pg_catalog.pg_has_role(session_user, r.oid, 'MEMBER'))))
          AND backups._may_see(x)
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
                  HINT = 'Transfers are named like '
                         || (SELECT string_agg(format('%s001 (%s)', k.prefix, k.description)
                                               || coalesce(format(', %s001 (scheduled %s)', k.scheduled_prefix, k.description), ''),
                                               ', ' ORDER BY k.kind)
                               FROM backups.kinds k)
                         || '; SELECT * FROM backups.list(); shows them.';
    END IF;
    IF NOT backups._may_see(t) THEN
        RAISE EXCEPTION 'permission denied for transfer %', t.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'A backups_user sees only the transfers of databases whose owner role it is a member of; SELECT * FROM backups.list(); shows them.';
    END IF;
    IF NOT t.kind = ANY (v_kinds) THEN
        RAISE EXCEPTION '"%" is a %, not a %', t.name, t.kind, array_to_string(v_kinds, ' or ')
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
