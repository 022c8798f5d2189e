-- Copy: one database (of this cluster, or a named source) streamed into
-- another of this cluster, which it replaces, without going through
-- storage (the agent: transfer/kinds/copy.rs). Named c001.

SELECT backups._register_kind('copy', 'c', 'copy', queued_by => 'backups_admin');

CREATE FUNCTION backups.copy(source text, target name, confirm name, in_place boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_source text := btrim(copy.source);
    v_named  boolean;
BEGIN
    IF v_source IS NULL OR v_source = '' THEN
        RAISE EXCEPTION 'backups.copy() needs a source database'
            USING HINT = 'For example SELECT backups.copy(''app'', target => ''app_staging'', confirm => ''app_staging'');';
    END IF;
    IF v_source = copy.target THEN
        RAISE EXCEPTION 'cannot copy database "%" onto itself', v_source
            USING HINT = 'Choose a different target database.';
    END IF;
    v_named := NOT EXISTS (SELECT 1 FROM pg_catalog.pg_database WHERE datname = v_source);
    IF v_named THEN
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
    RETURN backups._enqueue('copy', copy.target, format('copy of %s into %s queued by %s', v_source, copy.target, session_user),
                            source => v_source, target => copy.target,
                            options => CASE WHEN v_named THEN '{"named_source": true}'::jsonb ELSE '{}'::jsonb END
                                       || backups._in_place_option(copy.target, copy.in_place));
END
$$;

GRANT EXECUTE ON FUNCTION backups.copy(text, name, name, boolean) TO backups_admin;
