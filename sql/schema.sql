-- pg_backups control schema: tables, roles and grants.
--
-- Loaded by the extension (extension_sql_file!, bootstrap) into the schema
-- `backups`. The extension records intent here; the agent does the work and
-- writes status back. Postgres is the queue: agents claim pending transfers
-- with FOR UPDATE SKIP LOCKED.

-- Refuse to install anywhere but the control database, like pg_cron: the
-- scheduler worker connects to exactly one database.
DO $guard$
DECLARE
    control text := coalesce(nullif(current_setting('backups.database_name', true), ''), 'postgres');
BEGIN
    IF current_database() <> control THEN
        RAISE EXCEPTION 'pg_backups can only be created in the control database "%"', control
            USING HINT = format('The control database is set by the GUC backups.database_name. Connect to %I and run CREATE EXTENSION there, or set backups.database_name = %L in postgresql.conf and restart the server.',
                                control, current_database());
    END IF;
END
$guard$;

-- Roles are cluster-wide and outlive the extension, so create them only once.
-- Postgres reserves the pg_ prefix for its own roles (CREATE ROLE refuses
-- it, and pg_dumpall and pg_upgrade skip such roles), hence backups_*.
-- backups_user:  capture, wait, list, info, url, database_info, and cancel
--                of its own pending transfers, on the databases whose owner
--                role it is a member of (internal.sql: _may_act_on)
-- backups_admin: all of that on every database, plus restore, copy,
--                delete, schedule, unschedule and any cancel
-- backups_agent: the agent's control role: the lifecycle functions only
--                (grants.sql); nobody has DML on the tables
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'backups_user') THEN
        CREATE ROLE backups_user NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'backups_admin') THEN
        CREATE ROLE backups_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'backups_agent') THEN
        CREATE ROLE backups_agent NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members m
                   JOIN pg_catalog.pg_roles r ON r.oid = m.roleid
                   JOIN pg_catalog.pg_roles a ON a.oid = m.member
                   WHERE r.rolname = 'backups_user' AND a.rolname = 'backups_admin') THEN
        GRANT backups_user TO backups_admin;
    END IF;
END
$roles$;

-- The kinds of transfer, one row each, registered by the kind's own file
-- in sql/kinds/ (internal.sql: _register_kind): the letter its transfers
-- are named with (Heroku's: b001 manual capture, a001 scheduled capture,
-- r001 restore, c001 copy; and ours, v001 verification), each letter
-- numbered by a sequence of its own (made with the row).
CREATE TABLE backups.kinds (
    kind             text PRIMARY KEY CHECK (kind ~ '^[a-z_]+$'),
    prefix           text NOT NULL UNIQUE CHECK (prefix ~ '^[a-z]$'),
    scheduled_prefix text UNIQUE CHECK (scheduled_prefix ~ '^[a-z]$'),   -- what a schedule queues of it, if any
    description      text NOT NULL,                                     -- "restore", as people say it
    -- The least role whose members may queue it (EXECUTE on its entry
    -- function, backups.<kind>, is granted to this role and no other).
    queued_by        name NOT NULL CHECK (queued_by IN ('backups_user', 'backups_admin'))
);

-- One schedule per database. `cron` and `timezone` are the normalised form
-- of `spec`, which is kept as the user wrote it.
CREATE TABLE backups.schedules (
    id             bigserial PRIMARY KEY,
    database       name NOT NULL UNIQUE,
    spec           text NOT NULL,
    cron           text NOT NULL,
    timezone       text NOT NULL,
    retain_daily   integer NOT NULL CHECK (retain_daily >= 0),
    retain_weekly  integer NOT NULL CHECK (retain_weekly >= 0),
    retain_monthly integer NOT NULL CHECK (retain_monthly >= 0),
    verify         boolean NOT NULL DEFAULT false,      -- verify every capture it makes once it completes
    next_run_at    timestamptz NOT NULL,
    last_run_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- The tick's first question, every second: is a schedule due?
CREATE INDEX schedules_next_run_idx ON backups.schedules (next_run_at);

-- Captures, restores and copies.
CREATE TABLE backups.transfers (
    id                  bigserial PRIMARY KEY,
    name                text NOT NULL UNIQUE,           -- b001, a001, r001, c001, v001
    kind                text NOT NULL REFERENCES backups.kinds (kind),
    status              text NOT NULL DEFAULT 'pending'
                        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'expired')),
    database            name NOT NULL,                  -- capture: the database dumped; restore/copy: the target
    database_oid        oid,                            -- the oid of `database` when queued: what "this database"
                                                        -- means (health, retention), not whatever has its name later
    owner_role          oid,                            -- the owner of `database` when queued: whose members may see
                                                        -- the transfer (tenancy), whoever owns the name later
    source              text,                           -- capture: named source from the agent config (NULL: this cluster);
                                                        -- verify: the backup verified;
                                                        -- restore: backup name or URL; copy: source database or named source
    source_url          text,                           -- restore from a URL: the URL whole, for the agent only (source
                                                        -- holds it redacted); cleared when the transfer ends
    target              text,                           -- restore/copy: target database
    options             jsonb NOT NULL DEFAULT '{}',    -- e.g. {"jobs": 4}
    schedule_id         bigint REFERENCES backups.schedules (id) ON DELETE SET NULL,
    scheduled           boolean NOT NULL DEFAULT false, -- queued by a schedule (schedule_id, until that schedule goes)
    created_at          timestamptz NOT NULL DEFAULT now(),
    created_by          name NOT NULL DEFAULT session_user,
    created_xid         xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    started_at          timestamptz,
    finished_at         timestamptz,
    heartbeat_at        timestamptz,
    agent_id            text,
    attempts            integer NOT NULL DEFAULT 0,     -- claims so far, never reused: fences writes, names objects
    handed_back         integer NOT NULL DEFAULT 0,     -- claims given back at an agent's shutdown: not counted
                                                        -- against the 3 attempts the worker allows
    cancel_requested    boolean NOT NULL DEFAULT false,
    source_size         bigint,                         -- pg_database_size at start
    processed_bytes     bigint NOT NULL DEFAULT 0,      -- bytes read from the source so far
    expected_bytes      bigint,                         -- what processed_bytes is expected to reach, for progress
                                                        -- (capture, copy: the source's table sizes; restore: the stored size)
    stored_size         bigint,                         -- bytes in storage
    current_object      text,                           -- the table being worked on, when known
    format              text CHECK (format IN ('custom', 'directory')),
    object_key          text,
    stored_under        text,                           -- capture: the folder of the cluster whose catalog holds it,
                                                        -- below the storage prefix (that cluster's system identifier;
                                                        -- an adopted backup keeps its old cluster's); NULL: stored
                                                        -- before backups had a cluster folder
    checksum            text,                           -- sha256 of the stored bytes, hex
    head_sha256         text,                           -- capture, custom format: sha256 of the archive's head (header
                                                        -- and table of contents, the schema's SQL), proven before a
                                                        -- streamed restore applies any of it
    swap_oid            oid,                            -- restore/copy: the database swapped in for the target, recorded
                                                        -- before the swap; a later attempt that finds it under the
                                                        -- target's name finishes instead of restoring again
    tool_versions       jsonb,
    encrypted_to        text[],                         -- capture: the age recipients its objects are encrypted to (NULL: plain)
    error               text,
    warnings            integer NOT NULL DEFAULT 0,
    contents            jsonb,                          -- capture: every table's rows, bytes and digest, as read at capture
                                                        -- ([{schema, table, rows, bytes, digest}])
    kept_stored         boolean NOT NULL DEFAULT false, -- what storage says of the pin (a `kept.json` beside the
                                                        -- manifest, for adoption), written by the agent after keep()
    kept_at             timestamptz,                    -- backups.keep(): pinned, exempt from retention and from
    kept_by             name,                           -- delete() until unkept; and who pinned it
    deleted_at          timestamptz,                    -- backups.delete(): hidden from list(), the agent removes the objects
    purged_at           timestamptz                     -- when the agent removed the objects (after delete or expiry)
);
-- Every way a transfer is queued records which database it was, and who
-- owned it, then.
CREATE FUNCTION backups._record_owner() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- (A verification takes its backup's, which it is given.)
    IF NEW.owner_role IS NULL THEN
        NEW.owner_role := (SELECT d.datdba FROM pg_catalog.pg_database d WHERE d.datname = NEW.database);
    END IF;
    IF NEW.database_oid IS NULL THEN
        NEW.database_oid := (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = NEW.database);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER transfers_record_owner BEFORE INSERT ON backups.transfers
    FOR EACH ROW EXECUTE FUNCTION backups._record_owner();

CREATE INDEX transfers_pending_idx ON backups.transfers (id) WHERE status = 'pending';
CREATE INDEX transfers_running_idx ON backups.transfers (heartbeat_at) WHERE status = 'running';
-- A schedule that falls due: is its database's previous capture still
-- queued or running? (A thousand schedules due at once: a thousand probes
-- of this small index, not of each database's whole history.)
CREATE INDEX transfers_unfinished_idx ON backups.transfers (database, id) WHERE status IN ('pending', 'running');
CREATE INDEX transfers_database_idx ON backups.transfers (database, created_at);
CREATE INDEX transfers_verified_idx ON backups.transfers (source, id) WHERE kind = 'verify';
-- list(), newest first: every row (an admin), and an owner's (a tenant).
CREATE INDEX transfers_newest_idx ON backups.transfers (created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX transfers_owner_newest_idx ON backups.transfers (owner_role, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
-- health() and retention: a database's captures, latest first.
CREATE INDEX transfers_db_captures_idx ON backups.transfers (database_oid, finished_at DESC, id DESC)
    WHERE kind = 'capture';
-- Retention and health(), per database and owner: its live backups (few,
-- among many expired), latest first, so that health()'s "last backup" is
-- one index entry (with the owner in the key: no heap row to filter on).
CREATE INDEX transfers_live_backups_idx ON backups.transfers (database_oid, owner_role, finished_at DESC, id DESC)
    WHERE kind = 'capture' AND status = 'completed' AND deleted_at IS NULL;
-- health(): a database's latest failed capture (rare: its own index).
CREATE INDEX transfers_db_failures_idx ON backups.transfers (database_oid, owner_role, finished_at DESC, id DESC)
    WHERE kind = 'capture' AND status = 'failed';
-- _to_purge(): captures whose objects are still to remove.
CREATE INDEX transfers_to_purge_idx ON backups.transfers (id)
    WHERE kind = 'capture' AND purged_at IS NULL
      AND (status IN ('expired', 'failed', 'cancelled') OR deleted_at IS NOT NULL);
-- The status page's charts: a database's latest captures, by name.
CREATE INDEX transfers_db_charts_idx ON backups.transfers (database, finished_at DESC, id DESC)
    WHERE kind = 'capture' AND status IN ('completed', 'expired');
-- _pins_to_write(): backups whose pin (kept.json) storage has yet to
-- follow; usually none (the purge loop asks every few seconds).
CREATE INDEX transfers_pins_to_write_idx ON backups.transfers (id)
    WHERE kind = 'capture' AND status = 'completed' AND deleted_at IS NULL AND purged_at IS NULL
      AND (kept_at IS NOT NULL) <> kept_stored;
-- _prune(): ended transfers, oldest first.
CREATE INDEX transfers_ended_idx ON backups.transfers (finished_at)
    WHERE status IN ('completed', 'failed', 'cancelled', 'expired') AND (kind <> 'capture' OR purged_at IS NOT NULL);
-- _stored(): the latest completed backup.
CREATE INDEX transfers_latest_backup_idx ON backups.transfers (finished_at DESC, id DESC)
    WHERE kind = 'capture' AND status = 'completed' AND deleted_at IS NULL;

-- Changes retention has to look at (a transfer completed, a schedule
-- changed, a backup unkept or adopted): counted by a sequence, which no
-- writer ever waits on (backups._retention_due()).
CREATE SEQUENCE backups.retention_changes;
-- The worker's memory between ticks (one row, only the worker writes it):
-- the changes its last retention run saw, so that an idle tick does not
-- walk every backup. Retention also runs when keep_manual changed, and
-- hourly.
CREATE TABLE backups.worker_state (
    one          boolean PRIMARY KEY DEFAULT true CHECK (one),
    seen_changes bigint,
    rerun        boolean NOT NULL DEFAULT false,  -- a change was seen: look once more next tick (a transaction that
                                                  -- counted its change may have committed after the run read)
    keep_manual  integer,
    expired_at   timestamptz,
    pruned_at    timestamptz                      -- history retention runs once a minute (NULL: at the next tick)
);
INSERT INTO backups.worker_state DEFAULT VALUES;

-- What the agent and the worker say about a transfer; backups.info() shows it.
CREATE TABLE backups.transfer_logs (
    id          bigserial PRIMARY KEY,
    transfer_id bigint NOT NULL REFERENCES backups.transfers (id) ON DELETE CASCADE,
    logged_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    level       text NOT NULL DEFAULT 'info' CHECK (level IN ('debug', 'info', 'warning', 'error')),
    message     text NOT NULL
);
CREATE INDEX transfer_logs_transfer_idx ON backups.transfer_logs (transfer_id, id);

-- Agents announce themselves here while they run, with the names (never the
-- connection strings) of the named sources their configuration defines, so
-- that a capture from a named source goes to an agent that knows it.
CREATE TABLE backups.agents (
    agent_id     text PRIMARY KEY,
    hostname     text,
    version      text,
    sources      text[] NOT NULL DEFAULT '{}',
    started_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- No direct access for anyone: users and the agent go through SECURITY
-- DEFINER functions, guarded by EXECUTE grants (grants.sql). USAGE on the
-- schema only lets a role look names up, so that one without the grant is
-- told "permission denied for function restore" rather than about the schema.
REVOKE ALL ON ALL TABLES IN SCHEMA backups FROM PUBLIC;
-- (The kinds' name sequences, made later, are revoked in grants.sql.)
REVOKE ALL ON ALL SEQUENCES IN SCHEMA backups FROM PUBLIC;
GRANT USAGE ON SCHEMA backups TO PUBLIC;

-- The agent's own rows are data, not configuration: keep them in dumps of
-- the control database.
SELECT pg_catalog.pg_extension_config_dump('backups.schedules', '');
SELECT pg_catalog.pg_extension_config_dump('backups.transfers', '');
SELECT pg_catalog.pg_extension_config_dump('backups.transfer_logs', '');
