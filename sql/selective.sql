-- Selective capture: the patterns capture() passes to pg_dump's
-- --exclude-table-data and --exclude-schema, checked before anything is
-- queued. The syntax is pg_dump's (core/src/pattern.rs); the agent checks
-- again, against the source's catalog, just before pg_dump runs.

-- `patterns` as the capture's option (NULL for none), or an ERROR naming
-- the malformed one, or those that match nothing when `here` (the source is
-- the database this function runs in, whose catalog it can read). Here an
-- unqualified table pattern counts as matching when it matches a table of
-- any schema; the agent then checks it on the search_path, as pg_dump does.
CREATE FUNCTION backups._exclude_option(patterns text[], what text, here boolean) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    p         text;
    r         text[];
    v_missing text[] := '{}';
    v_found   boolean;
BEGIN
    IF patterns IS NULL OR cardinality(patterns) = 0 THEN
        RETURN NULL;
    END IF;
    IF cardinality(patterns) > 1000 THEN
        RAISE EXCEPTION '% has % patterns, more than the 1000 a capture takes', what, cardinality(patterns)
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use wildcards (log_*) to name many tables or schemas at once.';
    END IF;
    IF array_ndims(patterns) > 1 THEN
        RAISE EXCEPTION '% must be a one-dimensional array of patterns', what
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example ARRAY[''public.audit_log'', ''logs_*''].';
    END IF;
    FOREACH p IN ARRAY patterns LOOP
        IF p IS NULL THEN
            RAISE EXCEPTION 'invalid % pattern: NULL', what
                USING ERRCODE = 'invalid_parameter_value', HINT = 'Leave NULL elements out of the array.';
        END IF;
        r := backups._pattern_regexes(what, p);
        -- Unquoted regular expression characters pass through, as in
        -- pg_dump: refuse what the server would not compile.
        BEGIN
            PERFORM '' ~ r[2], '' ~ coalesce(r[1], '');
        EXCEPTION WHEN invalid_regular_expression THEN
            RAISE EXCEPTION 'invalid % pattern %: %', what, p, SQLERRM
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Outside double quotes, characters such as ( ) [ ] { } | + are regular expression syntax; put a name that holds them in double quotes.';
        END;
        IF here THEN
            IF what = 'exclude_schemas' THEN
                v_found := EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n
                                    WHERE n.nspname ~ (r[2] COLLATE pg_catalog."default"));
            ELSE
                v_found := EXISTS (SELECT 1 FROM pg_catalog.pg_class c
                                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                                    WHERE c.relkind IN ('r', 'S', 'v', 'm', 'f', 'p')
                                      AND c.relname ~ (r[2] COLLATE pg_catalog."default")
                                      AND (r[1] IS NULL OR n.nspname ~ (r[1] COLLATE pg_catalog."default")));
            END IF;
            IF NOT v_found THEN
                v_missing := v_missing || p;
            END IF;
        END IF;
    END LOOP;
    IF cardinality(v_missing) > 0 THEN
        RAISE EXCEPTION '% matches nothing in database "%": %', what, current_database(),
                        array_to_string(ARRAY(SELECT quote_literal(m) FROM unnest(v_missing) m), ', ')
            USING ERRCODE = 'undefined_object',
                  HINT = CASE WHEN what = 'exclude_schemas' THEN 'SELECT nspname FROM pg_namespace; lists the schemas. '
                              ELSE 'SELECT schemaname, tablename FROM pg_tables; lists the tables. ' END
                         || backups._pattern_syntax();
    END IF;
    RETURN to_jsonb(patterns);
END
$$;
