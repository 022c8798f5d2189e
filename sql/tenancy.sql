-- Tenancy: who may act on which database, and see which transfers and
-- backups. Superusers and members of backups_admin act on every database;
-- a backups_user acts only on the databases whose owner role it is a member
-- of, and sees the transfers queued while that role owned them.

-- Tenancy. Superusers and members of backups_admin act on every database;
-- a backups_user acts only on the databases whose owner role it is a member
-- of. The caller is session_user: inside a SECURITY DEFINER function
-- current_user is the extension's owner, and a login role can only SET ROLE
-- to roles it is a member of, so its session_user has at least the rights
-- its current_user had. (pg_has_role is true for superusers.)
CREATE FUNCTION backups._is_admin() RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_has_role(session_user, 'backups_admin', 'MEMBER') $$;

CREATE FUNCTION backups._may_act_on(db name) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT backups._is_admin()
        OR EXISTS (SELECT 1 FROM pg_catalog.pg_database d
                    WHERE d.datname = _may_act_on.db AND pg_catalog.pg_has_role(session_user, d.datdba, 'MEMBER'))
$$;

-- A transfer a user may see: one on a database whose owner, when it was
-- queued, the user is a member of (not whoever owns that name now: a
-- database dropped or renamed and its name taken by another tenant does not
-- hand over its backups). A capture from a named source (one of the
-- agent's connections, not a database of this cluster) is an admin's.
CREATE FUNCTION backups._may_see(t backups.transfers) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT backups._is_admin()
        OR ((t.kind <> 'capture' OR t.source IS NULL)
            AND NOT (t.kind = 'verify' AND t.options ? 'admins_only')
            AND CASE WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid = t.owner_role) THEN false
                     ELSE pg_catalog.pg_has_role(session_user, t.owner_role, 'MEMBER') END)
$$;

-- The name of `db`'s owner role (NULL for no such database).
CREATE FUNCTION backups._owner_name(db name) RETURNS name
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT pg_catalog.pg_get_userbyid(d.datdba) FROM pg_catalog.pg_database d WHERE d.datname = _owner_name.db $$;

-- Refuse, before anything is queued, what the caller may not do to `db`.
CREATE FUNCTION backups._require(db name, action text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT backups._may_act_on(_require.db) THEN
        RAISE EXCEPTION 'permission denied to % database "%"', _require.action, _require.db
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('A backups_user acts only on databases whose owner role it is a member of; %I is owned by %I. '
                                'Ask its owner to GRANT %I TO %I, or ask a backups_admin.',
                                _require.db, backups._owner_name(_require.db), backups._owner_name(_require.db),
                                session_user);
    END IF;
END
$$;

-- The backup named `id` (NULL: the newest completed one) whose data the
-- caller may get at, to `action` it (download, verify, read the contents
-- of). A capture an admin queued read with the agent's rights, so it may
-- hold what the database's owner may not read: only admins get at its
-- data, or at what tells of it.
CREATE FUNCTION backups._readable_backup(id text, action text) RETURNS backups.transfers
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    b backups.transfers;
BEGIN
    IF _readable_backup.id IS NULL THEN
        SELECT * INTO b FROM backups.transfers x
        WHERE x.kind = 'capture' AND x.status = 'completed' AND x.deleted_at IS NULL AND backups._may_see(x)
          AND (backups._is_admin() OR x.options ? 'role')
        ORDER BY x.finished_at DESC, x.id DESC LIMIT 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'there is no completed backup yet'
                USING HINT = 'Capture one with CALL backups.capture_and_wait();';
        END IF;
        RETURN b;
    END IF;
    b := backups._find(_readable_backup.id, ARRAY['capture']);
    IF NOT backups._is_admin() AND NOT b.options ? 'role' THEN
        RAISE EXCEPTION 'permission denied to % %', _readable_backup.action, b.name
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'It was captured by a backups_admin with the agent''s rights, and may hold data the database''s owner cannot read. Capture one yourself (SELECT backups.capture();), or ask a backups_admin.';
    END IF;
    RETURN b;
END
$$;
