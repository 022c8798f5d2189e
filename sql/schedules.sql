-- Schedules: one per database, in the user's words, normalised to cron and
-- a zone by the Rust helpers; the worker's tick fires them (tick.sql).

CREATE FUNCTION backups.schedule(at text DEFAULT 'daily 02:00', database name DEFAULT current_database(),
                                 retain_daily integer DEFAULT 7, retain_weekly integer DEFAULT 4,
                                 retain_monthly integer DEFAULT 12, verify boolean DEFAULT false)
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
    INSERT INTO backups.schedules AS s (database, spec, cron, timezone, retain_daily, retain_weekly, retain_monthly,
                                        verify, next_run_at)
    VALUES (v_db, btrim(schedule.at), p.cron, p.timezone, retain_daily, retain_weekly, retain_monthly,
            coalesce(schedule.verify, false), v_next)
    ON CONFLICT ON CONSTRAINT schedules_database_key DO UPDATE
    SET spec = excluded.spec, cron = excluded.cron, timezone = excluded.timezone,
        retain_daily = excluded.retain_daily, retain_weekly = excluded.retain_weekly,
        retain_monthly = excluded.retain_monthly, verify = excluded.verify, next_run_at = excluded.next_run_at;
    PERFORM backups._retention_due();
    RAISE NOTICE 'database % backed up %; next run %', v_db,
        p.description || CASE WHEN schedule.verify THEN ', each backup then verified' ELSE '' END,
        to_char(v_next AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"');
    PERFORM backups._notify('schedule');
END
$$;

CREATE FUNCTION backups.schedules()
RETURNS TABLE (database name, schedule text, timezone text, next_run_at timestamptz, next_run_utc timestamp,
               next_run_local timestamp, last_run_at timestamptz,
               retain_daily integer, retain_weekly integer, retain_monthly integer, verify boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.database, s.spec, s.timezone, s.next_run_at, s.next_run_at AT TIME ZONE 'UTC',
           s.next_run_at AT TIME ZONE s.timezone, s.last_run_at,
           s.retain_daily, s.retain_weekly, s.retain_monthly, s.verify
    FROM backups.schedules s WHERE backups._may_act_on(s.database) ORDER BY s.database
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
    PERFORM backups._retention_due();
END
$$;
