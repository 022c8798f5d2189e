-- The catalog as storage keeps it: what a backup's manifest carries of its
-- row (so that storage alone can list, describe and restore it once this
-- cluster is gone), and adoption, which brings backups found in storage
-- back into this catalog (`pgbackups adopt`, after a rebuild).

-- What capture `transfer_id`'s manifest says of its row: everything the
-- catalog knows of it at the end of the capture but its sizes, checksum
-- and contents, which the agent adds. `stored_under` names the cluster
-- whose catalog it belongs to.
CREATE FUNCTION backups._manifest_facts(transfer_id bigint) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT jsonb_build_object(
               'name', t.name, 'kind', t.kind, 'database', t.database, 'source', t.source,
               'owner', CASE WHEN t.owner_role IS NOT NULL THEN pg_catalog.pg_get_userbyid(t.owner_role) END,
               'created_at', t.created_at, 'created_by', t.created_by, 'started_at', t.started_at,
               'attempt', t.attempts, 'options', t.options, 'scheduled', t.scheduled,
               'schedule', (SELECT jsonb_build_object('spec', s.spec, 'cron', s.cron, 'timezone', s.timezone,
                                                      'retain_daily', s.retain_daily, 'retain_weekly', s.retain_weekly,
                                                      'retain_monthly', s.retain_monthly, 'verify', s.verify)
                              FROM backups.schedules s WHERE s.id = t.schedule_id),
               'stored_under', t.stored_under,
               'kept', t.kept_at IS NOT NULL)
      FROM backups.transfers t
     WHERE t.id = _manifest_facts.transfer_id AND t.kind = 'capture'
$$;

-- Adopt a backup found in storage, whose manifest the agent has read and
-- checked against its objects: a completed capture under its own name,
-- with its facts, contents, checksum and pin. The name counter moves past
-- it, so that no later capture takes its name. 'adopted'; 'present' when
-- this catalog has it already (the same name and checksum), so that
-- adopting twice adopts nothing twice; 'taken' when another backup has its
-- name here (this catalog captured before it adopted).
-- `b` has: name, database, owner, source, created_at, created_by,
-- started_at, finished_at, attempt, options, scheduled, kept (kept_at,
-- kept_by), stored_under,
-- format, object_key, checksum, head_sha256, source_size, processed,
-- stored_size, tool_versions, encrypted_to, contents, cluster (a label for
-- the log).
CREATE FUNCTION backups._adopt(b jsonb) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_name   text := b ->> 'name';
    v_prefix text := left(v_name, 1);
    v_db     pg_catalog.pg_database;
    v_owner  oid;
    v_id       bigint;
    v_sched    boolean := coalesce((b ->> 'scheduled')::boolean, false);
    v_options  jsonb;
    v_created  timestamptz;
    v_started  timestamptz;
    v_finished timestamptz;
BEGIN
    IF v_name IS NULL OR v_name !~ '^[a-z][0-9]{3,18}$'
       OR NOT EXISTS (SELECT 1 FROM backups.kinds k
                       WHERE k.kind = 'capture' AND v_prefix IN (k.prefix, k.scheduled_prefix)) THEN
        RAISE EXCEPTION 'cannot adopt %: not the name of a backup', quote_nullable(v_name);
    END IF;
    IF (b ->> 'checksum') IS NULL OR (b ->> 'format') IS NULL OR (b ->> 'object_key') IS NULL
       OR (b ->> 'database') IS NULL THEN
        RAISE EXCEPTION 'cannot adopt %: its manifest lacks its database, format, object key or checksum', v_name;
    END IF;
    PERFORM 1 FROM backups.transfers t WHERE t.name = v_name;
    IF FOUND THEN
        IF EXISTS (SELECT 1 FROM backups.transfers t
                    WHERE t.name = v_name AND t.kind = 'capture' AND t.checksum = b ->> 'checksum') THEN
            RETURN 'present';
        END IF;
        RETURN 'taken';
    END IF;
    SELECT * INTO v_db FROM pg_catalog.pg_database d WHERE d.datname = b ->> 'database';
    -- Its owner by name (a rebuilt cluster's roles are made again with
    -- their names). Unknown here: an admin's alone (oid 0, no role), never
    -- whoever owns a database of that name now.
    SELECT r.oid INTO v_owner FROM pg_catalog.pg_roles r WHERE r.rolname = b ->> 'owner';
    v_owner := coalesce(v_owner, 0);
    -- Options as a capture has them; `role` (dumped with its owner's
    -- rights, so its owner may read it) only when it names that owner.
    v_options := CASE WHEN jsonb_typeof(b -> 'options') = 'object' THEN b -> 'options' ELSE '{}' END;
    IF v_options ? 'role' AND (jsonb_typeof(v_options -> 'role') <> 'string' OR v_options ->> 'role' IS DISTINCT FROM b ->> 'owner') THEN
        v_options := v_options - 'role';
    END IF;
    -- Times as they were, never in the future.
    v_finished := least(coalesce((b ->> 'finished_at')::timestamptz, now()), now());
    v_created := least(coalesce((b ->> 'created_at')::timestamptz, v_finished), v_finished);
    v_started := greatest(least((b ->> 'started_at')::timestamptz, v_finished), v_created);
    INSERT INTO backups.transfers (name, kind, status, database, database_oid, owner_role, source, options,
                                   schedule_id, scheduled, created_at, created_by, started_at, finished_at,
                                   attempts, source_size, processed_bytes, stored_size, format, object_key,
                                   stored_under, checksum, head_sha256, tool_versions, encrypted_to, contents,
                                   kept_at, kept_by, kept_stored)
    VALUES (v_name, 'capture', 'completed', b ->> 'database', v_db.oid, v_owner, b ->> 'source',
            v_options,
            CASE WHEN v_sched THEN (SELECT s.id FROM backups.schedules s WHERE s.database = b ->> 'database') END,
            v_sched, v_created, coalesce(b ->> 'created_by', session_user), v_started, v_finished,
            greatest(coalesce((b ->> 'attempt')::integer, 1), 1), (b ->> 'source_size')::bigint,
            coalesce((b ->> 'processed')::bigint, 0), (b ->> 'stored_size')::bigint, b ->> 'format',
            b ->> 'object_key', b ->> 'stored_under', b ->> 'checksum', b ->> 'head_sha256', b -> 'tool_versions',
            nullif(ARRAY(SELECT jsonb_array_elements_text(coalesce(b -> 'encrypted_to', '[]'))), '{}'),
            (SELECT jsonb_agg(e - 'columns') FROM jsonb_array_elements(coalesce(b -> 'contents', '[]')) e),
            CASE WHEN (b ->> 'kept')::boolean THEN least(coalesce((b ->> 'kept_at')::timestamptz, now()), now()) END,
            CASE WHEN (b ->> 'kept')::boolean THEN coalesce(b ->> 'kept_by', session_user) END,
            coalesce((b ->> 'kept')::boolean, false))
    RETURNING id INTO v_id;
    PERFORM backups._log(v_id, format('adopted from storage (a backup of cluster %s, stored under %s)',
                                      coalesce(b ->> 'cluster', 'unknown'), b ->> 'object_key'));
    PERFORM backups._pass_name(v_name);
    PERFORM backups._retention_due();
    RETURN 'adopted';
END
$$;

-- Move the counter of `name`'s letter past it, so that no later capture
-- takes the name of a backup found in storage: one adopted, and one that
-- was not (its objects are still there, under that name).
CREATE FUNCTION backups._pass_name(name text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_seq    regclass;
    v_number bigint;
    v_last   bigint;
    v_called boolean;
BEGIN
    IF _pass_name.name IS NULL OR _pass_name.name !~ '^[a-z][0-9]{3,18}$'
       OR NOT EXISTS (SELECT 1 FROM backups.kinds k WHERE left(_pass_name.name, 1) IN (k.prefix, k.scheduled_prefix)) THEN
        RAISE EXCEPTION '% is not the name of a transfer', quote_nullable(_pass_name.name);
    END IF;
    v_number := substr(_pass_name.name, 2)::bigint;
    v_seq := format('backups.%I', 'names_' || left(_pass_name.name, 1))::regclass;
    -- One adoption at a time moves it: read and set under the lock.
    PERFORM pg_catalog.pg_advisory_xact_lock(v_seq::oid::bigint);
    EXECUTE format('SELECT last_value, is_called FROM %s', v_seq) INTO v_last, v_called;
    IF NOT v_called OR v_last < v_number THEN
        PERFORM pg_catalog.setval(v_seq, v_number, true);
    END IF;
END
$$;

-- Pins storage does not know of yet: backups kept or unkept since the
-- agent last wrote their `kept.json` (so that adoption brings a pin back).
CREATE FUNCTION backups._pins_to_write(max integer DEFAULT 50)
RETURNS TABLE (id bigint, name text, label text, stored_under text, kept boolean, kept_at timestamptz, kept_by name)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.name, backups._label(t), t.stored_under, t.kept_at IS NOT NULL, t.kept_at, t.kept_by
      FROM backups.transfers t
     WHERE t.kind = 'capture' AND t.status = 'completed' AND t.deleted_at IS NULL AND t.purged_at IS NULL
       AND (t.kept_at IS NOT NULL) <> t.kept_stored
     ORDER BY t.id LIMIT _pins_to_write.max
$$;

-- Storage now says `kept` of this backup: unless the pin changed again
-- meanwhile, it is written.
CREATE FUNCTION backups._pin_written(transfer_id bigint, kept boolean) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    UPDATE backups.transfers t SET kept_stored = _pin_written.kept
     WHERE t.id = _pin_written.transfer_id AND (t.kept_at IS NOT NULL) = _pin_written.kept
$$;
