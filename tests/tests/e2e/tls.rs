//! TLS end to end: certificates made by the test (a CA, a server certificate
//! for localhost and 127.0.0.1 signed by it, and an unrelated CA), a cluster
//! that takes TCP connections over TLS only, and the real agent, whose own
//! connections and pg_dump's check the server as `sslmode` says; a
//! certificate refused stops the agent with a clear message, having claimed
//! nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use pgbackups_e2e::agent::Agent;
use pgbackups_e2e::cluster::Cluster;
use pgbackups_e2e::data::{create_db, wait, wait_for};
use pgbackups_e2e::env::store_url;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// The test's certificates: `ca.pem` signed the server's and the client
/// certificate `client.pem` (of role `tlsagent`, key `client.key`);
/// `other-ca.pem` signed nothing the server has.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn new() -> Self {
        let ca = |name: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, name);
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages =
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
            CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap()
        };
        let (ca, other) = (ca("pg_backups test CA"), ca("some other CA"));
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let server = p.signed_by(&key, &ca).unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "tlsagent");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate().unwrap();
        let client = p.signed_by(&client_key, &ca).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client.pem()).unwrap();
        // libpq refuses a key others can read.
        let key_path = dir.path().join("client.key");
        std::fs::write(&key_path, client_key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        Pki { dir, server_cert: server.pem(), server_key: key.serialize_pem() }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.pem")
    }
}

/// The agent's exit status, once it has exited by itself.
fn wait_exit(agent: &mut Agent, patience: Duration) -> ExitStatus {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(st) = agent.child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "agent still running after {patience:?}:\n{}", agent.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether `sql` (a boolean) is true, for a wait_for.
fn holds(sql: &str) -> String {
    format!("SELECT coalesce(({sql}), false)")
}

#[test]
fn verify_full_capture_restore_and_copy_run_over_tls_for_the_agent_and_its_tools() {
    let pki = Pki::new();
    let c = Cluster::start_tls(&pki.server_cert, &pki.server_key, None, &[], &["log_connections = on"]).unwrap();
    // The server refuses plain TCP connections: whatever gets in used TLS.
    let plain = Command::new("psql")
        .args(["-X", "-At", "-c", "SELECT 1", "-d", &format!("{} sslmode=disable", c.connstr("postgres"))])
        .output()
        .unwrap();
    assert!(!plain.status.success());
    assert!(String::from_utf8_lossy(&plain.stderr).contains("no encryption"), "{plain:?}");

    // Over 1 MB: a copy streams it with COPY rather than through pg_dump.
    create_db(
        &c,
        "shop",
        "CREATE TABLE items AS SELECT g AS id, md5(g::text) AS name FROM generate_series(1, 30000) g",
    )
    .unwrap();
    // A lock holds pg_dump mid-capture, long enough to look at its connection
    // (taken over the Unix socket, which needs no TLS).
    let mut locker = postgres::Client::connect(
        &format!("host={} port={} user=postgres dbname=shop", c.dir.display(), c.port),
        postgres::NoTls,
    )
    .unwrap();
    let mut lock = locker.transaction().unwrap();
    lock.batch_execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE").unwrap();

    let store = tempfile::tempdir().unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        c.port,
        pki.ca().display()
    );
    let mut agent = Agent::start(&url, &store_url(store.path()), &[], &[]).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();

    // pg_dump, waiting for its lock: a TLS connection from the agent.
    let pg_dump = "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                    WHERE a.datname = 'shop' AND a.application_name = 'pgbackups'
                      AND a.query LIKE 'LOCK TABLE%' AND a.wait_event_type = 'Lock' LIMIT 1";
    wait_for(&c, &holds(pg_dump), "t", PATIENCE).unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log_text()));
    // The agent's own connections to the control database: TLS, every one.
    let own = c
        .sql(
            "postgres",
            "SELECT count(*) || ' ' || bool_and(s.ssl) || ' ' || min(s.version)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.datname = 'postgres' AND a.application_name = 'pgbackups'",
        )
        .unwrap();
    let fields: Vec<&str> = own.split(' ').collect();
    assert!(fields.len() == 3 && fields[0].parse::<u32>().unwrap() >= 1, "{own}");
    assert_eq!(fields[1], "true", "{own}");
    assert!(fields[2].starts_with("TLSv1."), "{own}");

    lock.commit().unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());

    // A restore (psql, pg_restore) and a copy (its snapshot held on the
    // agent's own connection, pg_dump | pg_restore, psql COPY streams) go
    // over TLS too.
    let want = c.sql("shop", "SELECT count(*) || ' ' || sum(hashtext(name)) FROM items").unwrap();
    for (db, sql) in [
        ("shop_restored", format!("SELECT backups.restore('{id}', 'shop_restored', 'shop_restored')")),
        ("shop_copy", "SELECT backups.copy('shop', 'shop_copy', 'shop_copy')".to_string()),
    ] {
        c.sql("postgres", &format!("CREATE DATABASE {db}")).unwrap();
        let t = c.sql("postgres", &sql).unwrap();
        assert_eq!(wait(&c, &t, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
        assert_eq!(c.sql(db, "SELECT count(*) || ' ' || sum(hashtext(name)) FROM items").unwrap(), want, "{db}");
    }
    let copy_log = c.sql("postgres", "SELECT string_agg(value, E'\\n') FROM backups.info('c001')").unwrap();
    assert!(copy_log.contains("copying table ") && copy_log.contains("items"), "not streamed: {copy_log}");
    // The server logged the connections to both databases (the agent's
    // own, pg_dump's to shop) as TLS.
    let log = c.log_text();
    // (Restores and copies write into a shadow of their target.)
    for db in ["postgres", "shop", "pgbackups_shadow_"] {
        let line = format!("database={db}");
        let tls = log.lines().any(|l| l.contains(&line) && l.contains("SSL enabled (protocol=TLSv1."));
        assert!(tls, "no TLS connection to {db} in the server log:\n{log}");
    }
    assert!(agent.terminate(Duration::from_secs(30)).unwrap().success());
}

#[test]
fn a_certificate_from_another_ca_stops_the_agent_with_a_clear_error_and_claims_nothing() {
    let pki = Pki::new();
    let c = Cluster::start_tls(&pki.server_cert, &pki.server_key, None, &[], &[]).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture()").unwrap();
    let store = tempfile::tempdir().unwrap();
    let other = pki.other_ca().display().to_string();
    // verify-full, and require with a root certificate (which libpq takes
    // as verify-ca), against a CA that did not sign the server's.
    for mode in ["verify-full", "require"] {
        let url =
            format!("postgres://postgres:s3cret@localhost:{}/postgres?sslmode={mode}&sslrootcert={other}", c.port);
        let mut agent = Agent::start(&url, &store_url(store.path()), &[], &[]).unwrap();
        let status = wait_exit(&mut agent, Duration::from_secs(30));
        let log = agent.log_text();
        assert!(!status.success(), "{mode}: {log}");
        assert!(
            log.contains(&format!("TLS: the server's certificate is not trusted by sslrootcert {other}")),
            "{mode}: {log}"
        );
        assert!(log.contains("postgres://postgres:***@localhost"), "{mode}: {log}");
        assert!(!log.contains("s3cret"), "{mode}: the password shows: {log}");
        assert_eq!(
            c.sql("postgres", &format!("SELECT status FROM backups.transfers WHERE name = '{id}'")).unwrap(),
            "pending"
        );
    }
    // require without a root certificate: encrypted, not verified; the
    // capture runs, as its first attempt (nobody claimed it before).
    let url = format!("postgres://postgres@localhost:{}/postgres?sslmode=require", c.port);
    let agent = Agent::start(&url, &store_url(store.path()), &[], &[]).unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    assert_eq!(c.sql("postgres", &format!("SELECT attempts FROM backups.transfers WHERE name = '{id}'")).unwrap(), "1");
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let pki = Pki::new();
    let c = Cluster::start_tls(&pki.server_cert, &pki.server_key, None, &[], &[]).unwrap();
    create_db(&c, "shop", "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 100) g").unwrap();
    let store = tempfile::tempdir().unwrap();
    let ca = pki.ca().display().to_string();
    // A name the certificate does not carry, reaching the server by address.
    let host = "not-in-the-certificate.invalid";
    let url = format!(
        "postgres://postgres@{host}:{}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={ca}",
        c.port
    );
    let mut agent = Agent::start(&url, &store_url(store.path()), &[], &[]).unwrap();
    assert!(!wait_exit(&mut agent, Duration::from_secs(30)).success());
    let log = agent.log_text();
    assert!(log.contains(&format!("TLS: the server's certificate is not valid for host {host}")), "{log}");

    // verify-ca checks the chain only; in keyword/value form this time, and
    // pg_dump gets the same settings (host, hostaddr, sslmode, sslrootcert).
    let conninfo = format!(
        "host={host} hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-ca sslrootcert='{ca}'",
        c.port
    );
    let agent = Agent::start(&conninfo, &store_url(store.path()), &[], &[]).unwrap();
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
}

#[test]
fn a_client_certificate_logs_in_the_agent_and_its_tools() {
    let pki = Pki::new();
    let ca = std::fs::read_to_string(pki.ca()).unwrap();
    // Role tlsagent may log in over TCP with its certificate only.
    let c = Cluster::start_tls(
        &pki.server_cert,
        &pki.server_key,
        Some(&ca),
        &["hostssl all tlsagent 127.0.0.0/8 cert"],
        &[],
    )
    .unwrap();
    c.sql("postgres", "CREATE ROLE tlsagent SUPERUSER LOGIN").unwrap();
    create_db(&c, "shop", "CREATE TABLE items AS SELECT g AS id FROM generate_series(1, 100) g").unwrap();
    let store = tempfile::tempdir().unwrap();
    let dir = pki.dir.path().display().to_string();
    let url = format!(
        "postgres://tlsagent@localhost:{}/postgres?sslmode=verify-full&sslrootcert={dir}/ca.pem&sslcert={dir}/client.pem&sslkey={dir}/client.key",
        c.port
    );
    let agent = Agent::start(&url, &store_url(store.path()), &[], &[]).unwrap();
    // pg_dump logs in with the same certificate, or the capture fails.
    let id = c.sql("postgres", "SELECT backups.capture('shop')").unwrap();
    assert_eq!(wait(&c, &id, PATIENCE).unwrap(), "completed", "{}", agent.log_text());
    let who = c
        .sql(
            "postgres",
            "SELECT string_agg(DISTINCT s.client_dn, ',') FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.usename = 'tlsagent'",
        )
        .unwrap();
    assert_eq!(who, "/CN=tlsagent");
}
