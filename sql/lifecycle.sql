-- The life of a transfer, spelled once. Every status change is one of these
-- functions; the agent, the worker's tick and the SQL surface only call them.
--
--   pending --claim--> running --finish--> completed | failed | cancelled
--      ^                  |
--      +-- hand back -----+   (the agent stops: its attempt does not count)
--      +-- requeue -------+   (the agent went silent: counted, at most 3)
--   (enqueue) --> pending --cancel--> cancelled    completed --retention--> expired
--
-- Writes about a running transfer are fenced on (agent, attempt): once the
-- worker has requeued a transfer whose agent went silent and another agent
-- has claimed it, the first agent's writes match nothing, and it learns that
-- the transfer is no longer its own ('lost') instead of overwriting the new
-- attempt. A finish is idempotent: sent again after its reply was lost, it
-- finds the row already in the state it asked for, and says so.

-- The one place a transfer is born (pending): named with its kind's letter
-- (its schedule's letter when a schedule queues it), recorded with the
-- database and owner it concerns (_record_owner), logged, and the agent
-- told. Every entry function (sql/kinds/) and the worker queue through it.
CREATE FUNCTION backups._enqueue(kind text, database name, why text, source text DEFAULT NULL,
                                 target text DEFAULT NULL, options jsonb DEFAULT '{}', source_url text DEFAULT NULL,
                                 schedule_id bigint DEFAULT NULL, owner_role oid DEFAULT NULL,
                                 database_oid oid DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k      backups.kinds;
    v_name text;
    v_id   bigint;
BEGIN
    SELECT * INTO k FROM backups.kinds x WHERE x.kind = _enqueue.kind;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no kind of transfer is called "%"', _enqueue.kind;
    END IF;
    v_name := backups._next_name(CASE WHEN _enqueue.schedule_id IS NULL THEN k.prefix
                                      ELSE coalesce(k.scheduled_prefix, k.prefix) END);
    INSERT INTO backups.transfers (name, kind, database, database_oid, owner_role, source, source_url, target, options,
                                   schedule_id, scheduled, stored_under)
    VALUES (v_name, _enqueue.kind, _enqueue.database, _enqueue.database_oid, _enqueue.owner_role, _enqueue.source,
            _enqueue.source_url, _enqueue.target, coalesce(_enqueue.options, '{}'), _enqueue.schedule_id,
            _enqueue.schedule_id IS NOT NULL, backups._system_identifier())
    RETURNING id INTO v_id;
    PERFORM backups._log(v_id, _enqueue.why);
    PERFORM backups._notify(v_name);
    RETURN v_name;
END
$$;

-- The one place a transfer ends. A restore's secret URL goes with it. A
-- restore or copy that completed replaced its target with another database
-- (a new oid, under the same name and owner): the target's history, which
-- is keyed by its oid (health, retention, database_info), moves to it.
CREATE FUNCTION backups._end(transfer_id bigint, status text, error text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t     backups.transfers;
    v_now oid;
BEGIN
    IF _end.status NOT IN ('completed', 'failed', 'cancelled') THEN
        RAISE EXCEPTION 'a transfer cannot end as "%"', _end.status;
    END IF;
    UPDATE backups.transfers x
       SET status = _end.status, finished_at = now(), current_object = NULL,
           error = coalesce(_end.error, x.error), source_url = NULL
     WHERE x.id = _end.transfer_id
    RETURNING x.* INTO t;
    IF _end.status = 'completed' THEN
        PERFORM backups._retention_due();
    END IF;
    IF _end.status = 'completed' AND t.kind IN ('restore', 'copy') AND t.database_oid IS NOT NULL THEN
        SELECT d.oid INTO v_now FROM pg_catalog.pg_database d
         WHERE d.datname = t.database AND d.datdba = t.owner_role;
        IF v_now IS NOT NULL AND v_now <> t.database_oid THEN
            UPDATE backups.transfers x SET database_oid = v_now WHERE x.database_oid = t.database_oid;
        END IF;
    END IF;
END
$$;

-- Retention's end of a completed backup (tick.sql: _expire): expired, its
-- objects for the agent to remove (_to_purge).
CREATE FUNCTION backups._expire_backup(transfer_id bigint, why text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Its per-table contents go with it (nothing reads an expired
    -- backup's): most of what a row weighs.
    UPDATE backups.transfers x SET status = 'expired', contents = NULL
     WHERE x.id = _expire_backup.transfer_id AND x.status = 'completed' AND x.kind = 'capture';
    IF FOUND THEN
        PERFORM backups._log(_expire_backup.transfer_id, _expire_backup.why);
    END IF;
END
$$;

-- Did restore or copy `t` swap its copy in? The database it recorded
-- (_record_swap) has the target's name now.
CREATE FUNCTION backups._swapped(t backups.transfers) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.kind IN ('restore', 'copy') AND t.swap_oid IS NOT NULL
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_database d WHERE d.oid = t.swap_oid AND d.datname = t.database)
$$;

-- Back to the queue. `counted` says whether the attempt counts towards the
-- three an agent gets (a requeue after silence does; a hand back does not).
-- The attempt number itself is never reused: the next claim gets a new one,
-- so it never shares object keys, staging or a fence with this one. A
-- transfer whose cancel was requested meanwhile ends cancelled instead.
CREATE FUNCTION backups._to_pending(transfer_id bigint, counted boolean, why text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    SELECT * INTO t FROM backups.transfers x WHERE x.id = _to_pending.transfer_id FOR UPDATE;
    IF t.cancel_requested THEN
        PERFORM backups._log(t.id, format('cancelled (asked while it ran) instead of going back to the queue: %s', _to_pending.why));
        PERFORM backups._end(t.id, 'cancelled');
        RETURN;
    END IF;
    PERFORM backups._log(t.id, _to_pending.why, 'warning');
    UPDATE backups.transfers x
       SET status = 'pending', agent_id = NULL, heartbeat_at = NULL, started_at = NULL,
           processed_bytes = 0, expected_bytes = NULL, current_object = NULL, source_size = NULL, format = NULL,
           object_key = NULL, tool_versions = NULL, stored_size = NULL, checksum = NULL, head_sha256 = NULL,
           handed_back = x.handed_back + CASE WHEN _to_pending.counted THEN 0 ELSE 1 END
     WHERE x.id = t.id;
    PERFORM backups._notify(t.name);
END
$$;

-- Claim the oldest pending transfer this agent can run. A capture from a
-- named source goes to an agent that knows the name; when no live agent
-- does, any agent claims it, and fails it with a clear message. `lease`:
-- the seconds without a heartbeat after which the worker requeues it
-- (backups.agent_timeout), so that an agent cut off from this database
-- for that long stops on its own instead of working on unseen.
-- `per_owner`: how many transfers of one owner (the owner of their
-- database when queued) this agent runs at once, so that one tenant's
-- transfers stuck on its own locks never take every slot: the others'
-- queue past them. Owners who are superusers or backups_admin members are
-- the operators: their databases' transfers are not capped. `swapped`: the database an earlier attempt of a restore
-- or copy swapped in (or was about to) for its target.
CREATE FUNCTION backups._claim(agent text, kinds text[], sources text[], per_owner integer DEFAULT NULL)
RETURNS TABLE (id bigint, name text, kind text, database text, source text, target text, options jsonb,
               attempt integer, lease double precision, swapped oid, stored_under text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    UPDATE backups.transfers x
       SET status = 'running', agent_id = _claim.agent, attempts = x.attempts + 1,
           started_at = now(), heartbeat_at = now(), finished_at = NULL,
           processed_bytes = 0, expected_bytes = NULL, current_object = NULL, error = NULL
     WHERE x.id = (SELECT p.id FROM backups.transfers p
                    WHERE p.status = 'pending' AND NOT p.cancel_requested AND p.kind = ANY (_claim.kinds)
                      AND (p.kind <> 'capture' OR p.source IS NULL OR p.source = ANY (_claim.sources)
                           OR NOT EXISTS (SELECT 1 FROM backups.agents a
                                           WHERE p.source = ANY (a.sources)
                                             AND a.last_seen_at > now() - interval '1 minute'))
                      AND (_claim.per_owner IS NULL OR p.owner_role IS NULL
                           OR pg_catalog.pg_has_role(p.owner_role, 'backups_admin', 'MEMBER')
                           OR (SELECT count(*) FROM backups.transfers r
                                WHERE r.status = 'running' AND r.agent_id = _claim.agent
                                  AND r.owner_role = p.owner_role) < _claim.per_owner)
                    ORDER BY p.id FOR UPDATE SKIP LOCKED LIMIT 1)
    RETURNING x.* INTO t;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM backups._log(t.id, format('claimed by agent %s (attempt %s)', _claim.agent, t.attempts));
    RETURN QUERY SELECT t.id, t.name, t.kind, t.database::text, coalesce(t.source_url, t.source), t.target, t.options, t.attempts,
        extract(epoch FROM coalesce(nullif(current_setting('backups.agent_timeout', true), ''), '60s')::interval)::double precision,
        t.swap_oid, t.stored_under;
END
$$;

-- The rows a fenced write may touch: this transfer, running, by this agent
-- at this attempt.
CREATE FUNCTION backups._is_ours(t backups.transfers, agent text, attempt integer) RETURNS boolean
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.status = 'running' AND t.agent_id = agent AND t.attempts = attempt $$;

-- Alive, with progress: 'run', 'cancel' (a cancel was requested) or 'lost'.
CREATE FUNCTION backups._heartbeat(transfer_id bigint, agent text, attempt integer,
                                   processed bigint, current_object text DEFAULT NULL, expected bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_cancel boolean;
BEGIN
    UPDATE backups.transfers t
       SET heartbeat_at = now(), processed_bytes = _heartbeat.processed, current_object = _heartbeat.current_object,
           expected_bytes = coalesce(_heartbeat.expected, t.expected_bytes)
     WHERE t.id = _heartbeat.transfer_id AND backups._is_ours(t, _heartbeat.agent, _heartbeat.attempt)
    RETURNING t.cancel_requested INTO v_cancel;
    IF NOT FOUND THEN
        RETURN 'lost';
    END IF;
    RETURN CASE WHEN v_cancel THEN 'cancel' ELSE 'run' END;
END
$$;

-- Facts known once the work has started: sizes, format, where it is
-- stored, tool versions. False when the transfer is no longer ours.
CREATE FUNCTION backups._record_start(transfer_id bigint, agent text, attempt integer, source_size bigint,
                                      format text, object_key text, tool_versions jsonb,
                                      encrypted_to text[] DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE backups.transfers t
       SET source_size = _record_start.source_size, format = _record_start.format,
           object_key = _record_start.object_key, tool_versions = _record_start.tool_versions,
           encrypted_to = nullif(_record_start.encrypted_to, '{}')
     WHERE t.id = _record_start.transfer_id AND backups._is_ours(t, _record_start.agent, _record_start.attempt);
    RETURN FOUND;
END
$$;

-- The point of no return of a restore or copy: database `shadow` (an oid)
-- is about to be swapped in for the target. Recorded before the swap, so
-- that a later attempt (this agent stopped or was cut off right after the
-- swap committed, and the worker requeued it) finds the swap done and
-- finishes, instead of restoring again over what was written since. False
-- when the transfer is no longer ours: the swap must not happen.
CREATE FUNCTION backups._record_swap(transfer_id bigint, agent text, attempt integer, shadow oid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE backups.transfers t SET swap_oid = _record_swap.shadow
     WHERE t.id = _record_swap.transfer_id AND backups._is_ours(t, _record_swap.agent, _record_swap.attempt);
    RETURN FOUND;
END
$$;

-- Log lines, in order. Logging never depends on the fence: an agent that
-- lost its transfer may still say what it did with its own attempt.
CREATE FUNCTION backups._agent_log(transfer_id bigint, levels text[], messages text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO backups.transfer_logs (transfer_id, level, message)
    SELECT _agent_log.transfer_id, l, m FROM unnest(_agent_log.levels, _agent_log.messages) AS x(l, m)
$$;

-- The end of an attempt, as the agent reports it. True when the row now
-- says `status` for this agent and attempt: just now, or already (the same
-- call, sent again after its reply was lost). False when the transfer is
-- no longer ours; the agent then removes what its attempt stored.
-- `facts`: what _record_start records, sent again with the end (the
-- control database may have been out of reach when they were learnt):
-- {source_size, format, object_key, tool_versions, encrypted_to,
-- head_sha256}. A capture is never completed without what a restore needs
-- of it: its format, where it is stored and its checksum.
CREATE FUNCTION backups._finish(transfer_id bigint, agent text, attempt integer, status text,
                                processed bigint DEFAULT NULL, stored_size bigint DEFAULT NULL,
                                checksum text DEFAULT NULL, warnings integer DEFAULT 0, error text DEFAULT NULL,
                                contents jsonb DEFAULT NULL, facts jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t backups.transfers;
BEGIN
    SELECT * INTO t FROM backups.transfers x WHERE x.id = _finish.transfer_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF t.status = _finish.status AND t.agent_id = _finish.agent AND t.attempts = _finish.attempt THEN
        RETURN true;
    END IF;
    IF NOT backups._is_ours(t, _finish.agent, _finish.attempt) THEN
        RETURN false;
    END IF;
    IF _finish.facts IS NOT NULL AND _finish.facts <> '{}'::jsonb THEN
        UPDATE backups.transfers x
           SET source_size = coalesce((_finish.facts ->> 'source_size')::bigint, x.source_size),
               format = coalesce(_finish.facts ->> 'format', x.format),
               object_key = coalesce(_finish.facts ->> 'object_key', x.object_key),
               tool_versions = coalesce(_finish.facts -> 'tool_versions', x.tool_versions),
               encrypted_to = coalesce(nullif(ARRAY(SELECT jsonb_array_elements_text(
                                           coalesce(_finish.facts -> 'encrypted_to', '[]'::jsonb))), '{}'), x.encrypted_to),
               head_sha256 = coalesce(_finish.facts ->> 'head_sha256', x.head_sha256)
         WHERE x.id = t.id
        RETURNING x.* INTO t;
    END IF;
    IF _finish.status = 'completed' AND t.kind = 'capture'
       AND (t.format IS NULL OR t.object_key IS NULL OR _finish.checksum IS NULL) THEN
        RAISE EXCEPTION 'capture % cannot be completed without its format, its object key and its checksum (got %, %, %)',
                        t.name, coalesce(t.format, 'no format'), coalesce(t.object_key, 'no key'),
                        coalesce(_finish.checksum, 'no checksum')
            USING ERRCODE = 'not_null_violation',
                  HINT = 'The agent sends them with the end of the capture; an agent that does not is out of date.';
    END IF;
    IF _finish.status = 'completed' THEN
        UPDATE backups.transfers x
           SET processed_bytes = coalesce(_finish.processed, x.processed_bytes), stored_size = _finish.stored_size,
               checksum = _finish.checksum, warnings = coalesce(_finish.warnings, 0), heartbeat_at = now(),
               contents = (SELECT jsonb_agg(e - 'columns') FROM jsonb_array_elements(_finish.contents) e)
         WHERE x.id = t.id;
    ELSIF _finish.processed IS NOT NULL THEN
        UPDATE backups.transfers x SET processed_bytes = _finish.processed WHERE x.id = t.id;
    END IF;
    PERFORM backups._end(t.id, _finish.status, _finish.error);
    IF _finish.status = 'completed' AND t.kind = 'capture'
       AND EXISTS (SELECT 1 FROM backups.schedules s WHERE s.id = t.schedule_id AND s.verify) THEN
        PERFORM backups._log(t.id, format('verification %s queued (the schedule verifies every capture)',
                                          backups._queue_verify(t.id, format('after scheduled capture %s', t.name))));
    END IF;
    RETURN true;
END
$$;

-- The agent stops (shutdown) and gives its transfer back: another agent
-- claims it (as a new attempt); this one does not count against the three.
CREATE FUNCTION backups._hand_back(transfer_id bigint, agent text, attempt integer, why text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM backups.transfers t
     WHERE t.id = _hand_back.transfer_id AND backups._is_ours(t, _hand_back.agent, _hand_back.attempt)
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM backups._to_pending(_hand_back.transfer_id, false, 'handed back to the queue: ' || _hand_back.why);
    RETURN true;
END
$$;

-- The worker's verdict on a running transfer whose agent went silent:
-- requeued while attempts remain (and no cancel was asked), else ended.
CREATE FUNCTION backups._reap(t backups.transfers, timeout interval) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Its swap committed before the agent went silent: the target was
    -- replaced, whatever else was asked meanwhile (a cancel the agent no
    -- longer heeded past its commit point). It is completed, not failed or
    -- cancelled, and not restored again.
    IF backups._swapped(t) THEN
        PERFORM backups._log(t.id, format('agent %s sent no heartbeat for %s after its swap committed: %s is the restored database',
                                          t.agent_id, timeout, t.database));
        PERFORM backups._end(t.id, 'completed');
        RETURN 'completed';
    END IF;
    IF t.attempts - t.handed_back < 3 AND NOT t.cancel_requested THEN
        PERFORM backups._to_pending(t.id, true,
            format('agent %s sent no heartbeat for %s; requeued (attempt %s of 3 used)', t.agent_id, timeout,
                   t.attempts - t.handed_back));
        RETURN 'requeued';
    END IF;
    PERFORM backups._log(t.id, format('agent %s sent no heartbeat for %s; giving up after %s attempts',
                                      t.agent_id, timeout, t.attempts - t.handed_back), 'error');
    IF t.cancel_requested THEN
        PERFORM backups._end(t.id, 'cancelled');
    ELSE
        PERFORM backups._end(t.id, 'failed',
            format('the agent stopped sending heartbeats (no news for %s) after %s attempts', timeout,
                   t.attempts - t.handed_back));
    END IF;
    RETURN 'failed';
END
$$;

-- Agents announce themselves while they run, with the names (never the
-- connection strings) of the named sources they know.
CREATE FUNCTION backups._announce(agent text, hostname text, version text, sources text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO backups.agents (agent_id, hostname, version, sources)
    VALUES (_announce.agent, _announce.hostname, _announce.version, _announce.sources)
    ON CONFLICT (agent_id) DO UPDATE SET last_seen_at = now(), sources = excluded.sources
$$;

CREATE FUNCTION backups._retire(agent text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ DELETE FROM backups.agents a WHERE a.agent_id = _retire.agent $$;

-- The name a capture's objects are stored under: its named source, or its
-- database (the agent's `Source::label` says the same).
CREATE FUNCTION backups._label(t backups.transfers) RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp
AS $$ SELECT coalesce(t.source, t.database::text) $$;

-- Captures whose objects the agent should remove: deleted or expired
-- backups, and captures that failed or were cancelled (their attempts
-- clean up after themselves, but an agent killed mid-upload cannot; the
-- grace lets a silent agent that is still winding down finish first).
-- `label` names the backup's folder: the named source, or the database.
-- `skip`: rows the agent could not purge lately, so that one stuck backup
-- never holds up the others.
CREATE FUNCTION backups._to_purge(max integer DEFAULT 50, skip bigint[] DEFAULT '{}')
RETURNS TABLE (id bigint, name text, label text, stored_under text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT t.id, t.name, backups._label(t), t.stored_under
      FROM backups.transfers t
     WHERE t.kind = 'capture' AND t.purged_at IS NULL AND NOT t.id = ANY (_to_purge.skip)
       AND (t.status = 'expired' OR t.deleted_at IS NOT NULL
            OR (t.status IN ('failed', 'cancelled') AND t.finished_at < now() - interval '10 minutes'))
     ORDER BY t.id LIMIT _to_purge.max
$$;

-- Purged: `removed` objects are gone, and nothing is left under the folder.
CREATE FUNCTION backups._purged(transfer_id bigint, removed integer, folder text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE backups.transfers t SET purged_at = now() WHERE t.id = _purged.transfer_id AND t.purged_at IS NULL;
    IF FOUND AND _purged.removed > 0 THEN
        PERFORM backups._log(_purged.transfer_id,
                             format('removed %s object(s) under %s from storage', _purged.removed, _purged.folder));
    END IF;
END
$$;

-- A completed, not deleted backup by name (NULL: the latest), as the agent
-- needs it to read it back: where it is stored and what to check.
CREATE FUNCTION backups._stored(id text DEFAULT NULL)
RETURNS TABLE (name text, label text, attempt integer, format text, checksum text, stored_size bigint,
               encrypted_to text[], contents jsonb, head_sha256 text, stored_under text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    -- Two branches, each with its index (by name; the latest), rather
    -- than one `id IS NULL OR name = ...` that can use neither.
    (SELECT t.name, backups._label(t), t.attempts, t.format, t.checksum, t.stored_size, t.encrypted_to, t.contents,
            t.head_sha256, t.stored_under
       FROM backups.transfers t
      WHERE _stored.id IS NOT NULL AND t.name = lower(btrim(_stored.id))
        AND t.kind = 'capture' AND t.status = 'completed' AND t.deleted_at IS NULL)
    UNION ALL
    (SELECT t.name, backups._label(t), t.attempts, t.format, t.checksum, t.stored_size, t.encrypted_to, t.contents,
            t.head_sha256, t.stored_under
       FROM backups.transfers t
      WHERE _stored.id IS NULL AND t.kind = 'capture' AND t.status = 'completed' AND t.deleted_at IS NULL
      ORDER BY t.finished_at DESC, t.id DESC LIMIT 1)
$$;

-- The transfers still pending or running, and their databases' oids (a
-- restore's or copy's: its target's): the agent keeps the databases and
-- roles it made for them (shadows, scratch databases, appliers), and drops
-- any other it finds.
CREATE FUNCTION backups._unfinished() RETURNS TABLE (name text, database_oid oid)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT t.name, t.database_oid FROM backups.transfers t WHERE t.status IN ('pending', 'running') $$;
