-- Capture: a logical backup of a database of this cluster, or of a named
-- source of the agent's configuration, into storage (the agent:
-- transfer/kinds/capture.rs). Named b001; a001 when a schedule queues it.

SELECT backups._register_kind('capture', 'b', 'backup', queued_by => 'backups_user', scheduled_prefix => 'a');

CREATE FUNCTION backups.capture(database name DEFAULT current_database(), jobs integer DEFAULT NULL, source text DEFAULT NULL,
                                exclude_table_data text[] DEFAULT NULL, exclude_schemas text[] DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_db      name := capture.database;
    v_jobs    integer := capture.jobs;
    v_source  text := nullif(btrim(capture.source), '');
    v_data    jsonb;
    v_schemas jsonb;
BEGIN
    IF v_jobs IS NOT NULL AND (v_jobs < 1 OR v_jobs > 64) THEN
        RAISE EXCEPTION 'jobs must be between 1 and 64, not %', v_jobs
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'jobs => N runs a parallel directory-format dump with N workers; leave it NULL for a single custom-format dump.';
    END IF;
    IF v_source IS NULL THEN
        PERFORM backups._check_database(v_db, 'source');
        PERFORM backups._require(v_db, 'capture');
    ELSIF v_source !~ '^[A-Za-z0-9_.-]+$' THEN
        RAISE EXCEPTION 'invalid source name "%"', v_source
            USING HINT = 'A source is the name of a connection defined in the agent configuration ([sources.NAME]); names use letters, digits, _ . and -.';
    ELSIF NOT backups._is_admin() THEN
        RAISE EXCEPTION 'permission denied to capture the named source "%"', v_source
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Named sources are the agent''s own connections: only a backups_admin captures them. Capture a database you own with SELECT backups.capture(''mydb'');';
    END IF;
    -- Selective capture (selective.sql): checked against the catalog when it is this database's.
    v_data := backups._exclude_option(capture.exclude_table_data, 'exclude_table_data', v_source IS NULL AND v_db = current_database());
    v_schemas := backups._exclude_option(capture.exclude_schemas, 'exclude_schemas', v_source IS NULL AND v_db = current_database());
    -- A backups_user's capture holds what the database's owner may read,
    -- not what the agent's role may: pg_dump runs with the owner's rights.
    RETURN backups._enqueue('capture', v_db, format('queued by %s', session_user), source => v_source,
        options => jsonb_strip_nulls(jsonb_build_object(
                       'jobs', v_jobs,
                       'exclude_table_data', v_data,
                       'exclude_schemas', v_schemas,
                       'role', CASE WHEN v_source IS NULL AND NOT backups._is_admin()
                                    THEN backups._owner_name(v_db)
                               END)));
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
    INOUT status text DEFAULT NULL,
    exclude_table_data text[] DEFAULT NULL,
    exclude_schemas text[] DEFAULT NULL)
LANGUAGE plpgsql
AS $$
DECLARE
    v_deadline timestamptz;
    v_last     text := '';
    v_progress text;
BEGIN
    id := backups.capture(capture_and_wait.database, capture_and_wait.jobs, capture_and_wait.source,
                          capture_and_wait.exclude_table_data, capture_and_wait.exclude_schemas);
    COMMIT;
    RAISE NOTICE '% queued', id;
    v_deadline := pg_catalog.clock_timestamp() + coalesce(capture_and_wait.timeout, interval '1 hour');
    LOOP
        SELECT max(i.value) FILTER (WHERE i.field = 'status'), max(i.value) FILTER (WHERE i.field = 'progress')
          INTO status, v_progress
          FROM backups.info(capture_and_wait.id) i;
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

GRANT EXECUTE ON FUNCTION backups.capture(name, integer, text, text[], text[]) TO backups_user;
GRANT EXECUTE ON PROCEDURE backups.capture_and_wait(name, integer, text, interval, text, text, text[], text[]) TO backups_user;
