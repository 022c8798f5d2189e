-- How far a running transfer is, for people: durations, the expected
-- total, the rows COPY has moved, and the one-line progress list() shows.

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
