-- Verify: prove a stored backup by restoring it into a scratch database
-- and comparing every table with what its capture read (the agent:
-- transfer/kinds/verify.rs). Named v001; a schedule with verify => true
-- queues one after each capture it makes (lifecycle.sql: _finish).

SELECT backups._register_kind('verify', 'v', 'verification', queued_by => 'backups_user');

-- Queue the verification of completed backup `backup_id` (verify(), or a
-- schedule with verify => true once its capture completes); its name. Its
-- log tells of the backup's tables and rows, so it is seen by whoever may
-- read the backup's data: the database's owner when the capture ran with
-- the owner's rights, else (an admin's capture, or a named source's) only
-- admins.
CREATE FUNCTION backups._queue_verify(backup_id bigint, why text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b backups.transfers;
BEGIN
    SELECT * INTO b FROM backups.transfers x WHERE x.id = _queue_verify.backup_id;
    RETURN backups._enqueue('verify', b.database,
        format('%s: restore %s into a scratch database and compare every table with what its capture read', _queue_verify.why, b.name),
        source => b.name, owner_role => b.owner_role, database_oid => b.database_oid,
        options => CASE WHEN b.source IS NOT NULL OR NOT b.options ? 'role' THEN '{"admins_only": true}'::jsonb
                        ELSE '{}'::jsonb END);
END
$$;

-- Prove a backup: the agent restores it into a scratch database, tallies
-- every table as its capture did (rows and digest of the COPY text), and
-- compares; the scratch database is dropped either way. NULL: the newest
-- completed backup the caller may see.
CREATE FUNCTION backups.verify(id text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b    backups.transfers;
    busy text;
BEGIN
    b := backups._readable_backup(verify.id, 'verify');
    SELECT * INTO b FROM backups.transfers x WHERE x.id = b.id FOR SHARE;
    IF b.status <> 'completed' OR b.deleted_at IS NOT NULL THEN
        RAISE EXCEPTION 'backup % is %, not completed: there is nothing to verify', b.name, b.status
            USING HINT = 'SELECT * FROM backups.list(); shows the completed backups.';
    END IF;
    SELECT v.name INTO busy FROM backups.transfers v
     WHERE v.kind = 'verify' AND v.source = b.name AND v.status IN ('pending', 'running') LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'backup % is already being verified by %', b.name, busy
            USING HINT = format('Follow it with SELECT backups.wait(%L);', busy);
    END IF;
    RETURN backups._queue_verify(b.id, format('queued by %s', session_user));
END
$$;

GRANT EXECUTE ON FUNCTION backups.verify(text) TO backups_user;
