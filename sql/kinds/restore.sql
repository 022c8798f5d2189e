-- Restore: a backup (by id, or any http(s) URL serving a pg_dump archive)
-- into a database of this cluster, which it replaces (the agent:
-- transfer/kinds/restore.rs). Named r001.

SELECT backups._register_kind('restore', 'r', 'restore', queued_by => 'backups_admin');

CREATE FUNCTION backups.restore(backup text, target name, confirm name, in_place boolean DEFAULT false) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_backup text := btrim(restore.backup);
    v_url    text;
    b        backups.transfers;
BEGIN
    IF v_backup IS NULL OR v_backup = '' THEN
        RAISE EXCEPTION 'backups.restore() needs a backup id or an http(s) URL'
            USING HINT = 'For example SELECT backups.restore(''b001'', target => ''staging'', confirm => ''staging'');';
    END IF;
    IF v_backup ~* '^[a-z][a-z0-9+.-]*://' THEN
        IF v_backup !~* '^https?://' THEN
            RAISE EXCEPTION 'cannot restore from a % URL: only http:// and https:// URLs are supported', substring(v_backup FROM '^[^:]*')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Pass a backup id such as b001, a link from backups.url(), or any http(s) URL serving a pg_dump custom-format file.';
        END IF;
        -- Strictly [user[:password]@]host[:port][/path][?query]: a user,
        -- password or path holding a raw @ / ? or # would be cut in the wrong
        -- place when the URL is shown without its credentials.
        IF v_backup !~* '^https?://([^/?#@[:space:]]+@)?(\[[0-9a-f:.]+\]|[^/?#@:[:space:]\[\]]+)(:[0-9]{1,5})?(/[^?#@[:space:]]*)?([?#][^[:space:]]*)?$' THEN
            RAISE EXCEPTION 'cannot restore from this URL: it cannot be parsed safely (it is not shown here: it may hold a password)'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'Percent-encode @, /, ? and # in user names, passwords and paths (@ is %40), and leave no spaces.';
        END IF;
        -- Only the agent sees the URL whole: credentials and signed query
        -- strings stay out of list(), info() and the log.
        v_url := v_backup;
        v_backup := backups._redact_url(v_url);
    ELSE
        b := backups._find(v_backup, ARRAY['capture']);
        IF b.status <> 'completed' THEN
            RAISE EXCEPTION 'cannot restore %: it is %, not completed', b.name, b.status
                USING HINT = 'Restore a completed backup; SELECT * FROM backups.list(); shows their status.';
        END IF;
        v_backup := b.name;
    END IF;
    PERFORM backups._check_target(restore.target, restore.confirm, 'restore');
    RETURN backups._enqueue('restore', restore.target,
                            format('restore of %s into %s queued by %s', v_backup, restore.target, session_user),
                            source => v_backup, source_url => v_url, target => restore.target,
                            options => backups._in_place_option(restore.target, restore.in_place));
END
$$;

GRANT EXECUTE ON FUNCTION backups.restore(text, name, name, boolean) TO backups_admin;
