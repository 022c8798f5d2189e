-- Signed links to what the agent serves (backups.link_base_url): a
-- backup's download (url()) and the status page (status_url()).

-- A link to the agent's `path`, signed over `name` (HMAC with
-- backups.link_secret, checked by the agent), expiring after `expires_in`
-- (1 second to 7 days): url()'s and status_url()'s.
CREATE FUNCTION backups._signed_link(path text, name text, expires_in interval) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_base    text := rtrim(coalesce(current_setting('backups.link_base_url', true), ''), '/');
    v_expires bigint;
BEGIN
    IF expires_in IS NULL OR expires_in <= interval '0' OR expires_in > interval '7 days' THEN
        RAISE EXCEPTION 'expires_in must be between 1 second and 7 days, not %', expires_in
            USING ERRCODE = 'invalid_parameter_value', HINT = 'For example expires_in => ''10 minutes''.';
    END IF;
    IF v_base = '' THEN
        RAISE EXCEPTION 'the agent link base is not configured'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Set backups.link_base_url to the agent''s public address (pgbackups agent --listen) and backups.link_secret to the agent''s link secret in postgresql.conf, then SELECT pg_reload_conf();';
    END IF;
    -- Floor: a link never outlives expires_in.
    v_expires := floor(extract(epoch FROM clock_timestamp() + expires_in))::bigint;
    RETURN format('%s%s?expires=%s&signature=%s', v_base, path, v_expires, backups._link_signature(name, v_expires));
END
$$;
