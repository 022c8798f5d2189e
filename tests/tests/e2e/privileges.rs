//! Least privilege end to end: an archive never gets more rights than the
//! target's owner (a planted CHECK that would make its author superuser
//! when applied by one, through restore and through copy); restored objects
//! belong to the owner; a copy whose role is subject to row-level security
//! fails instead of copying fewer rows; the documented capture-only agent
//! (control role in backups_agent, data role in pg_read_all_data) works and
//! has no access to the tables; restores from private addresses are refused
//! and URLs are never shown with their credentials or query strings.

use std::time::Duration;

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{fingerprint, wait, SHOP};
use pgbackups_e2e::env::store_url;

const PATIENCE: Duration = Duration::from_secs(90);

/// A database owner's trap: a CHECK whose function tries to make `mallory`
/// superuser when evaluated by anyone else, as it is when the table's rows
/// are loaded: directly, after `RESET ROLE` (back to the session's login),
/// after `SET ROLE postgres` and after `RESET SESSION AUTHORIZATION`. Each
/// failure is swallowed, so the rows load either way.
const TRAP: &str = r#"
CREATE FUNCTION f(x int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'mallory' THEN
        BEGIN EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
        BEGIN EXECUTE 'RESET ROLE'; EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
        BEGIN EXECUTE 'SET ROLE postgres'; EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
        BEGIN EXECUTE 'RESET SESSION AUTHORIZATION'; EXECUTE 'ALTER ROLE mallory SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
    END IF;
    RETURN true;
END $$;
CREATE TABLE t (x int CHECK (f(x)));
INSERT INTO t SELECT generate_series(1, 10);
CREATE TABLE plain (id int PRIMARY KEY, note text);
INSERT INTO plain SELECT g, 'row ' || g FROM generate_series(1, 100) g;
"#;

fn is_superuser(c: &Cluster, role: &str) -> String {
    c.sql("postgres", &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'")).unwrap()
}

#[test]
fn an_archive_cannot_escalate_through_restore_or_copy_and_what_it_restores_belongs_to_the_owner() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE ROLE mallory LOGIN; CREATE ROLE alice LOGIN").unwrap();
    c.sql("postgres", "CREATE DATABASE evil OWNER mallory").unwrap();
    for db in ["evil_restored", "evil_copied"] {
        c.sql("postgres", &format!("CREATE DATABASE {db} OWNER alice")).unwrap();
    }
    c.sql_as("mallory", "evil", TRAP).unwrap();
    assert_eq!(is_superuser(&c, "mallory"), "f");
    let store = tempfile::tempdir().unwrap();
    // The agent runs as a superuser, as most deployments' would.
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();

    let b = c.sql("postgres", "SELECT backups.capture('evil')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'evil_restored', 'evil_restored')")).unwrap();
    let status = wait(&c, &r, PATIENCE).unwrap();
    assert_eq!(is_superuser(&c, "mallory"), "f", "the restore ran the trap with more rights than the owner's");
    assert_eq!(status, "completed", "{}", agent.log_text());
    // The trap ran (its rows are in) and got nowhere.
    assert_eq!(c.sql("evil_restored", "SELECT count(*) FROM t").unwrap(), "10");
    assert_eq!(c.sql("evil_restored", "SELECT count(*) FROM plain").unwrap(), "100");
    assert_eq!(
        c.sql(
            "evil_restored",
            "SELECT string_agg(DISTINCT tableowner, ',') FROM pg_tables WHERE schemaname = 'public'"
        )
        .unwrap(),
        "alice",
        "restored tables belong to the database's owner"
    );
    assert_eq!(
        c.sql("evil_restored", "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE proname = 'f'").unwrap(),
        "alice"
    );
    // The owner can use what was restored.
    assert_eq!(
        c.sql_as("alice", "evil_restored", "UPDATE plain SET note = 'mine' WHERE id = 1 RETURNING note").unwrap(),
        "mine"
    );

    let cp = c.sql("postgres", "SELECT backups.copy('evil', 'evil_copied', 'evil_copied')").unwrap();
    assert_eq!(wait(&c, &cp, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(is_superuser(&c, "mallory"), "f", "the copy ran the trap with more rights than the owner's");
    assert_eq!(c.sql("evil_copied", "SELECT count(*) FROM t").unwrap(), "10");
    // A verification restores it into a scratch database owned by a role
    // with no rights at all, reads it back as the agent, and gets nowhere
    // either.
    let v = c.sql("postgres", &format!("SELECT backups.verify('{b}')")).unwrap();
    assert_eq!(wait(&c, &v, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(is_superuser(&c, "mallory"), "f", "the verification ran the trap with more rights than nobody's");
    // The throwaway logins that applied them are gone, and so are the
    // scratch database and its role.
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbackups_apply%'").unwrap(), "0");
    pgbackups_e2e::data::wait_for(
        &c,
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbackups%')
              + (SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbackups%')",
        "0",
        PATIENCE,
    )
    .unwrap();
}

#[test]
fn a_copy_subject_to_row_level_security_fails_instead_of_dropping_rows() {
    let c = Cluster::start().unwrap();
    // The agent's data role: can read everything and act for the target's
    // owner, but does not bypass row-level security.
    c.sql(
        "postgres",
        "CREATE ROLE app LOGIN; CREATE ROLE copier LOGIN CREATEDB CREATEROLE IN ROLE pg_read_all_data;
         GRANT app TO copier WITH ADMIN OPTION",
    )
    .unwrap();
    for db in ["tenant", "tenant_copy"] {
        c.sql("postgres", &format!("CREATE DATABASE {db} OWNER app")).unwrap();
    }
    // Big enough (> 1 MiB) for a COPY stream of its own (pg_dump, which
    // reads the small tables, turns row_security off by itself).
    c.sql_as("app",
        "tenant",
        "CREATE TABLE secrets AS SELECT g AS id, repeat(md5(g::text), 4) AS data, g % 2 = 0 AS visible FROM generate_series(1, 20000) g;
         ALTER TABLE secrets ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
         CREATE POLICY only_visible ON secrets USING (visible);",
    ).unwrap();
    assert_eq!(c.sql_as("copier", "tenant", "SELECT count(*) FROM secrets").unwrap(), "10000", "the policy hides half");
    let store = tempfile::tempdir().unwrap();
    let data = format!("postgres://copier@127.0.0.1:{}/postgres", c.port);
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &["--data-url", &data], &[]).unwrap();
    let cp = c.sql("postgres", "SELECT backups.copy('tenant', 'tenant_copy', 'tenant_copy')").unwrap();
    assert_eq!(wait(&c, &cp, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{cp}'")).unwrap();
    assert!(err.contains("row-level security"), "{err}");
    // Nothing was copied short.
    let copied = c.sql("tenant_copy", "SELECT count(*) FROM secrets").unwrap_or_else(|_| "no table".into());
    assert!(copied != "10000", "copied {copied} rows of 20000");
    assert_eq!(c.sql("postgres", "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgbackups_apply%'").unwrap(), "0");
}

#[test]
fn the_documented_capture_only_agent_captures_and_can_do_nothing_else() {
    let c = Cluster::start().unwrap();
    // docs/operations.md, "The agent's roles": a control role that only calls the
    // lifecycle functions, and a data role that reads.
    c.sql(
        "postgres",
        "CREATE ROLE pgbackups_control LOGIN IN ROLE backups_agent;
         CREATE ROLE pgbackups_reader LOGIN BYPASSRLS IN ROLE pg_read_all_data;
         CREATE ROLE app LOGIN",
    )
    .unwrap();
    for db in ["shop", "scratch"] {
        c.sql("postgres", &format!("CREATE DATABASE {db} OWNER app")).unwrap();
    }
    c.sql_as("app", "shop", SHOP).unwrap();
    c.sql_as("app", "shop", "ALTER TABLE orders ENABLE ROW LEVEL SECURITY; CREATE POLICY none ON orders USING (false)")
        .unwrap();
    let store = tempfile::tempdir().unwrap();
    let control = format!("postgres://pgbackups_control@127.0.0.1:{}/postgres", c.port);
    let data = format!("postgres://pgbackups_reader@127.0.0.1:{}/postgres", c.port);
    let agent = Agent::start(&control, &store_url(store.path()), &["--data-url", &data], &[]).unwrap();

    for args in ["'shop'", "'shop', jobs => 2"] {
        let b = c.sql("postgres", &format!("SELECT backups.capture({args})")).unwrap();
        assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    }
    let b = c.sql("postgres", "SELECT name FROM backups.transfers WHERE kind = 'capture' ORDER BY id LIMIT 1").unwrap();
    // It cannot replace a database: restores need the owner's role.
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'scratch', 'scratch')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed");
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{r}'")).unwrap();
    assert!(err.contains("permission denied") || err.contains("must be owner"), "{err}");
    // The control role has no access to the tables themselves.
    let out = std::process::Command::new("psql")
        .args(["-X", "-At", "-h", "127.0.0.1", "-p", &c.port.to_string(), "-U", "pgbackups_control", "-d", "postgres"])
        .args(["-c", "UPDATE backups.transfers SET status = 'completed'"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("permission denied for table transfers"));
    drop(agent);

    // Restored by an agent that may act for the owner, the backup holds
    // every row, the ones the policy hides included.
    let full = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'scratch', 'scratch')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", full.log_text());
    assert_eq!(fingerprint(&c, "scratch").unwrap(), fingerprint(&c, "shop").unwrap());
}

#[test]
fn restores_from_private_addresses_are_refused_and_urls_never_shown_whole() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE DATABASE staging").unwrap();
    c.sql("staging", "CREATE TABLE keep_me (x int); INSERT INTO keep_me VALUES (42)").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let secret_url = "http://backup:pa55word@127.0.0.1:9/b001.dump?expires=1&signature=SIGNATURE123";
    let r = c.sql("postgres", &format!("SELECT backups.restore('{secret_url}', 'staging', 'staging')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed");
    let shown = c
        .sql("postgres", &format!("SELECT string_agg(field || ': ' || value, E'\\n') FROM backups.info('{r}')"))
        .unwrap();
    assert!(shown.contains("loopback address") && shown.contains("refused"), "{shown}");
    for secret in ["pa55word", "SIGNATURE123", "expires="] {
        assert!(!shown.contains(secret), "info() shows {secret}: {shown}");
        assert!(!agent.log_text().contains(secret), "the agent's log shows {secret}");
        let listed = c.sql("postgres", "SELECT string_agg(l::text, ' ') FROM backups.list() l").unwrap();
        assert!(!listed.contains(secret), "list() shows {secret}");
    }
    // Once it ended, the URL is gone from the table too.
    assert_eq!(
        c.sql("postgres", &format!("SELECT source_url IS NULL FROM backups.transfers WHERE name = '{r}'")).unwrap(),
        "t"
    );
    assert_eq!(c.sql("staging", "SELECT x FROM keep_me").unwrap(), "42", "the target was not touched");
    // Cloud metadata, by address.
    let r = c
        .sql(
            "postgres",
            "SELECT backups.restore('http://169.254.169.254/latest/meta-data/x.dump', 'staging', 'staging')",
        )
        .unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "failed");
    let err = c.sql("postgres", &format!("SELECT error FROM backups.transfers WHERE name = '{r}'")).unwrap();
    assert!(err.contains("link-local (cloud metadata) address"), "{err}");
}

#[test]
fn a_backups_users_capture_holds_no_more_than_the_owner_may_read() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE ROLE app; CREATE ROLE auditor LOGIN; CREATE ROLE alice LOGIN IN ROLE backups_user, app")
        .unwrap();
    c.sql("postgres", "CREATE DATABASE shop OWNER app").unwrap();
    c.sql("shop", "GRANT CREATE ON SCHEMA public TO auditor").unwrap();
    c.sql_as("auditor", "shop", "CREATE TABLE audit (salary text); INSERT INTO audit VALUES ('1M')").unwrap();
    c.sql("shop", "CREATE TABLE orders (id int); ALTER TABLE orders OWNER TO app").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    // alice owns shop (through app) but may not read audit: neither may her backup.
    let b = c.sql_as("alice", "postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "failed", "{}", agent.log_text());
    let err =
        c.sql_as("alice", "postgres", &format!("SELECT value FROM backups.info('{b}') WHERE field = 'error'")).unwrap();
    assert!(err.contains("permission denied for table audit"), "{err}");
    // An admin's capture reads everything.
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
}

#[test]
fn a_database_search_path_cannot_hijack_the_agents_queries() {
    let c = Cluster::start().unwrap();
    c.sql("postgres", "CREATE ROLE alice LOGIN IN ROLE backups_user").unwrap();
    c.sql("postgres", "CREATE DATABASE alicedb OWNER alice").unwrap();
    c.sql("postgres", "CREATE DATABASE alicecopy OWNER alice").unwrap();
    // Functions that shadow pg_catalog's when the database's search_path
    // names the owner's schema first, each trying to make alice superuser.
    let trap = |f: &str, args: &str, ret: &str, value: &str| {
        format!(
            "CREATE FUNCTION evil.{f}({args}) RETURNS {ret} LANGUAGE plpgsql AS $$
             BEGIN BEGIN EXECUTE 'ALTER ROLE alice SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END; RETURN {value}; END $$;"
        )
    };
    let sql = [
        "CREATE SCHEMA evil;".to_string(),
        trap("current_database", "", "name", "'alicedb'"),
        trap("pg_database_size", "name", "bigint", "1"),
        trap("pg_export_snapshot", "", "text", "'x'"),
        trap("pg_table_size", "regclass", "bigint", "1"),
        "CREATE TABLE t AS SELECT generate_series(1, 1000) AS x;".into(),
        "ALTER DATABASE alicedb SET search_path = evil, pg_catalog, public;".into(),
    ]
    .join("\n");
    c.sql_as("alice", "alicedb", &sql).unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let b = c.sql_as("alice", "postgres", "SELECT backups.capture('alicedb')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(is_superuser(&c, "alice"), "f", "the capture ran the owner's functions as the agent");
    let cp = c.sql("postgres", "SELECT backups.copy('alicedb', 'alicecopy', 'alicecopy')").unwrap();
    assert_eq!(wait(&c, &cp, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(is_superuser(&c, "alice"), "f", "the copy ran the owner's functions as the agent");
    assert_eq!(c.sql("alicecopy", "SELECT count(*) FROM t").unwrap(), "1000");
}

#[test]
fn the_throwaway_login_authenticates_with_scram_where_the_server_asks_for_passwords() {
    let c = Cluster::start().unwrap();
    // Passwords for everyone but the agent's own role (trusted here, as a
    // stand-in for whatever the deployment gives it).
    let hba = "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
    std::fs::write(c.data().join("pg_hba.conf"), hba).unwrap();
    c.sql("postgres", "SELECT pg_reload_conf()").unwrap();
    c.sql("postgres", "CREATE ROLE app").unwrap();
    for db in ["shop", "shop_copy", "shop_restored"] {
        c.sql("postgres", &format!("CREATE DATABASE {db} OWNER app")).unwrap();
    }
    c.sql("shop", "CREATE TABLE t AS SELECT generate_series(1, 100) AS x; ALTER TABLE t OWNER TO app").unwrap();
    let store = tempfile::tempdir().unwrap();
    let agent = Agent::start(&c.url("postgres"), &store_url(store.path()), &[], &[]).unwrap();
    let b = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &b, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let r = c.sql("postgres", &format!("SELECT backups.restore('{b}', 'shop_restored', 'shop_restored')")).unwrap();
    assert_eq!(wait(&c, &r, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let cp = c.sql("postgres", "SELECT backups.copy('shop', 'shop_copy', 'shop_copy')").unwrap();
    assert_eq!(wait(&c, &cp, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    for db in ["shop_restored", "shop_copy"] {
        assert_eq!(c.sql(db, "SELECT count(*) FROM t").unwrap(), "100");
    }
    // The server logged the applier's SCRAM logins, not trust ones.
    let log = c.log_text();
    assert!(!log.contains("password authentication failed"), "{log}");
}
