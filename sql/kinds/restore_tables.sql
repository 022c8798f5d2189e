-- Restore tables: tables of a backup recreated beside the live ones, in a
-- schema of their own (restored_<backup> by default) of a database of this
-- cluster, with their rows, defaults, constraints and indexes; nothing that
-- exists is touched (the agent: transfer/kinds/restore_tables.rs). Named
-- t001.

SELECT backups._register_kind('restore_tables', 't', 'table restore', queued_by => 'backups_user');

-- Queue the restore of the tables of `backup` that `tables` match
-- (pg_dump-style patterns: public.orders, billing.*, "Odd ""Name"""; an
-- unqualified one matches in any schema; a partitioned table brings its
-- partitions) into schema `into_schema` of `database` (by default the
-- backup's own). Tenancy follows restore and url(): a backups_user restores
-- from a capture taken with its owner's rights into a database it owns.
CREATE FUNCTION backups.restore_tables(backup text, tables text[], into_schema name DEFAULT NULL,
                                       database name DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b        backups.transfers;
    v_db     name;
    v_schema name;
    p        text;
    r        text[];
BEGIN
    IF restore_tables.backup IS NULL OR btrim(restore_tables.backup) = '' THEN
        RAISE EXCEPTION 'backups.restore_tables() needs a backup id'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example SELECT backups.restore_tables(''b001'', ARRAY[''public.orders'']); SELECT * FROM backups.list(); shows the backups.';
    END IF;
    b := backups._readable_backup(restore_tables.backup, 'restore tables from');
    IF b.status <> 'completed' OR b.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'cannot restore tables from %: it is %, not completed', b.name, b.status
            USING HINT = 'Restore from a completed backup; SELECT * FROM backups.list(); shows their status.';
    END IF;
    IF restore_tables.tables IS NULL OR cardinality(restore_tables.tables) = 0 THEN
        RAISE EXCEPTION 'name the tables to restore'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('For example ARRAY[''public.orders''] or ARRAY[''billing.*'']; SELECT * FROM backups.contents(%L); lists the tables of %s.', b.name, b.name);
    END IF;
    IF array_ndims(restore_tables.tables) > 1 OR cardinality(restore_tables.tables) > 1000 THEN
        RAISE EXCEPTION 'tables must be a one-dimensional array of at most 1000 patterns'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use wildcards (billing.*) to name many tables at once.';
    END IF;
    FOREACH p IN ARRAY restore_tables.tables LOOP
        IF p IS NULL THEN
            RAISE EXCEPTION 'invalid tables pattern: NULL'
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave NULL elements out of the array.';
        END IF;
        r := backups._pattern_regexes('tables', p);
        BEGIN
            PERFORM '' ~ r[2], '' ~ coalesce(r[1], '');
        EXCEPTION WHEN invalid_regular_expression THEN
            RAISE EXCEPTION 'invalid tables pattern %: %', p, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Outside double quotes, characters such as ( ) [ ] { } | + are regular expression syntax; put a name that holds them in double quotes.';
        END;
    END LOOP;
    v_db := coalesce(restore_tables.database, CASE WHEN b.source IS NULL THEN b.database END);
    IF v_db IS NULL THEN
        RAISE EXCEPTION 'backup % was captured from the named source %, not from a database of this cluster', b.name, b.source
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Name the database to restore its tables into: database => ''mydb''.';
    END IF;
    PERFORM backups._check_database(v_db, 'target');
    PERFORM backups._require(v_db, 'restore tables into');
    v_schema := coalesce(restore_tables.into_schema, ('restored_' || b.name)::name);
    IF v_schema = '' OR v_schema ~ '^pg_' THEN
        RAISE EXCEPTION 'cannot restore tables into schema "%"', v_schema
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Schema names starting with pg_ are reserved; leave into_schema out to use restored_' || b.name || '.';
    END IF;
    RETURN backups._enqueue('restore_tables', v_db,
                            format('restore of %s from %s into schema %I of %I queued by %s',
                                   array_to_string(restore_tables.tables, ', '), b.name, v_schema, v_db, session_user),
                            source => b.name, target => v_db,
                            options => jsonb_build_object('tables', to_jsonb(restore_tables.tables), 'into_schema', v_schema));
END
$$;

GRANT EXECUTE ON FUNCTION backups.restore_tables(text, text[], name, name) TO backups_user;
