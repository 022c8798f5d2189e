-- Pins: backups.keep() exempts a completed backup from retention (the
-- schedule's and backups.keep_manual, tick.sql: _expire) and from delete()
-- until it is unkept. A kept backup does not count against retention
-- either: it never takes the slot of a backup the policy would keep.

CREATE FUNCTION backups.keep(id text, keep boolean DEFAULT true) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    IF keep.id IS NULL OR keep.keep IS NULL THEN
        RAISE EXCEPTION 'backups.keep() needs the id of a backup, and true to keep it or false to unkeep it'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'For example SELECT backups.keep(''b001''); or SELECT backups.keep(''b001'', false);';
    END IF;
    -- Who may act on a backup: as for delete() (_find: those who may see it).
    t := backups._find(keep.id, ARRAY['capture']);
    SELECT * INTO t FROM backups.transfers x WHERE x.id = t.id FOR UPDATE;
    PERFORM backups._require(t.database, 'keep the backups of');
    IF keep.keep THEN
        -- Checked under the row lock: retention or delete() may have come first.
        IF t.status <> 'completed' OR t.deleted_at IS NOT NULL THEN
            RAISE EXCEPTION 'cannot keep %: it is %, not completed', t.name,
                            CASE WHEN t.deleted_at IS NOT NULL THEN 'deleted' ELSE t.status END
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Only completed backups can be kept; SELECT * FROM backups.list(); shows their status.';
        END IF;
        IF t.kept_at IS NULL THEN
            UPDATE backups.transfers x SET kept_at = now(), kept_by = session_user WHERE x.id = t.id;
            PERFORM backups._log(t.id, format('kept by %s: exempt from retention and delete() until unkept', session_user));
            PERFORM backups._notify('keep ' || t.name);
        END IF;
        RETURN 'kept';
    END IF;
    IF t.kept_at IS NOT NULL THEN
        UPDATE backups.transfers x SET kept_at = NULL, kept_by = NULL WHERE x.id = t.id;
        PERFORM backups._log(t.id, format('unkept by %s (kept since %s by %s): retention applies to it again',
                                          session_user, t.kept_at, t.kept_by));
        PERFORM backups._notify('keep ' || t.name);
        -- Unkept, retention may take it now.
        PERFORM backups._retention_due();
    END IF;
    RETURN 'not kept';
END
$$;
