-- Permissions: nothing for PUBLIC; users read, capture and take back their
-- own pending requests, on the databases they own (the functions check
-- that: tenancy.sql, _may_act_on); admins may also destroy, restore, copy,
-- keep (pin) or schedule, anywhere. Superusers bypass these checks. Each
-- kind grants its own entry function (sql/kinds/); this file comes last.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA backups FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA backups FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA backups FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    backups.wait(text, interval),
    backups.list(integer, text, name, text, text),
    backups.info(text),
    backups.url(text, interval),
    backups.database_info(name),
    backups.schedules(),
    backups.cancel(text),
    backups.health(),
    backups.contents(text)
TO backups_user;
GRANT EXECUTE ON FUNCTION
    backups.delete(text),
    backups.keep(text, boolean),
    backups.schedule(text, name, integer, integer, integer, boolean),
    backups.unschedule(name),
    backups.status_url(interval)
TO backups_admin;
-- Adoption (`pgbackups adopt`) writes catalog rows: an admin's act.
GRANT EXECUTE ON FUNCTION backups._adopt(jsonb), backups._pass_name(text), backups._system_identifier() TO backups_admin;
-- The agent's role: the lifecycle calls (claim, heartbeat, log, finish, hand
-- back), announcing itself, purging, and reading back what it stored.
GRANT EXECUTE ON FUNCTION
    backups._claim(text, text[], text[], integer),
    backups._heartbeat(bigint, text, integer, bigint, text, bigint),
    backups._record_start(bigint, text, integer, bigint, text, text, jsonb, text[]),
    backups._agent_log(bigint, text[], text[]),
    backups._finish(bigint, text, integer, text, bigint, bigint, text, integer, text, jsonb, jsonb),
    backups._record_swap(bigint, text, integer, oid),
    backups._hand_back(bigint, text, integer, text),
    backups._announce(text, text, text, text[]),
    backups._retire(text),
    backups._to_purge(integer, bigint[]),
    backups._purged(bigint, integer, text),
    backups._stored(text),
    backups._unfinished(),
    backups._overview(boolean),
    backups._manifest_facts(bigint),
    backups._pins_to_write(integer),
    backups._pin_written(bigint, boolean),
    backups._system_identifier()
TO backups_agent;
