//! The login a restore or copy applies an archive with. `SET ROLE owner`
//! alone is no boundary: code in the archive (a CHECK constraint's function,
//! a trigger, an index expression) can `RESET ROLE` back to the session's
//! login. So the archive is applied by a throwaway login role made for the
//! transfer: NOINHERIT, a member of the target's owner and of nothing else,
//! with a random password that is never stored or sent (the server gets its
//! SCRAM verifier). Whatever the archive runs, it has at most the owner's
//! rights. The role is made, and shown to log in, before the target is
//! touched. It is disabled and dropped when the transfer stops, however it
//! stops; one left by a killed agent is dropped by the transfer's next
//! attempt, and cannot log in after its VALID UNTIL anyway.

use anyhow::{Context, Result};

use crate::pg::cluster::target::Target;
use crate::pg::cluster::teardown::Teardown;
use crate::pg::cluster::Cluster;
use crate::pg::conn::quote::{ident, literal};
use crate::pg::conn::{self, Conn};

/// Names of the throwaway roles start with this.
const PREFIX: &str = "pgbackups_apply_";

/// How long a throwaway role can log in: longer than any transfer, short
/// enough that a leftover one is soon inert.
const LIFETIME_DAYS: i64 = 7;

/// A throwaway login for one transfer's target, dropped with it.
pub struct Applier {
    role: String,
    password: String,
    target: Target,
    data_url: String,
    teardown: Teardown,
    closed: bool,
}

impl Applier {
    /// Create the role for attempt `attempt` of transfer `name` into
    /// `target`, and log in with it once. Dropping the `Applier` drops the
    /// role (a step of `teardown`, which the supervisor waits for).
    pub async fn create(
        cluster: &Cluster,
        target: &Target,
        name: &str,
        attempt: i32,
        teardown: &Teardown,
    ) -> Result<Self> {
        let transfer = format!("{PREFIX}{}_", name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"));
        sweep(&*cluster.client().await?, &transfer).await;
        let role = format!("{transfer}{attempt}");
        let password = hex::encode(random_bytes::<32>()?);
        let until = (chrono::Utc::now() + chrono::Duration::days(LIFETIME_DAYS)).to_rfc3339();
        cluster
            .execute(&format!(
                "CREATE ROLE {r} LOGIN NOINHERIT PASSWORD {pw} VALID UNTIL {until} IN ROLE {owner}",
                r = ident(&role),
                pw = literal(&scram_verifier(&password)?),
                until = literal(&until),
                owner = ident(&target.owner),
            ))
            .await
            .with_context(|| {
                format!(
                "creating the login {role} that applies the archive as {} (see docs/operations.md: the agent's roles)",
                target.owner
            )
            })?;
        let applier = Applier {
            role,
            password,
            target: target.clone(),
            data_url: cluster.data_url.clone(),
            teardown: teardown.clone(),
            closed: false,
        };
        // Before the target is touched: can it log in at all?
        let login = Conn::login_as(&applier.data_url, None, &applier.role, &applier.password)?;
        conn::connect(&login.with_password()).await.with_context(|| {
            format!(
                "logging in as {}, the login that applies the archive: pg_hba.conf must accept password logins for it \
                 (see docs/operations.md: the agent's roles)",
                applier.role
            )
        })?;
        Ok(applier)
    }

    /// The login's name.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// The connection to the target that the tools use.
    pub fn conn(&self) -> Result<Conn> {
        Conn::login_as(&self.data_url, Some(&self.target.name), &self.role, &self.password)
    }

    /// Drop the role now, before the database it applied into is swapped
    /// in: its sessions end, and what it made goes to the owner.
    pub async fn close(mut self) -> Result<()> {
        self.closed = true;
        drop_role(&self.data_url, &self.role, &self.target).await
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let (role, target, url) = (self.role.clone(), self.target.clone(), self.data_url.clone());
        self.teardown.then(async move {
            if let Err(e) = drop_role(&url, &role, &target).await {
                tracing::warn!("could not drop the login {role}: {e:#} (the next attempt or restore drops it)");
            }
        });
    }
}

/// Disable it (which works whatever the archive did to it: gave it a new
/// password, say), end its sessions, give what it created (after a RESET
/// ROLE) to the owner, and drop it.
async fn drop_role(url: &str, role: &str, target: &Target) -> Result<()> {
    let c = conn::connect(url).await?;
    disable(&c, role).await?;
    // (A data role that is not a superuser may not be allowed to: its
    // sessions end with the tools anyway.)
    c.execute(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1",
        &[&role],
    )
    .await
    .ok();
    // A data role that is not a superuser needs the login's privileges for
    // REASSIGN and DROP OWNED (CREATEROLE lets it take them), and the
    // database grant the login got must go, or DROP ROLE refuses.
    take_role(&c, role).await.ok();
    c.batch_execute(&format!("REVOKE ALL ON DATABASE {} FROM {}", ident(&target.name), ident(role))).await.ok();
    if let Ok(t) = conn::connect(&Conn::new(url, Some(&target.name))?.with_password()).await {
        t.batch_execute(&format!(
            "REASSIGN OWNED BY {r} TO {o}; DROP OWNED BY {r}",
            r = ident(role),
            o = ident(&target.owner)
        ))
        .await
        .ok();
    }
    c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(role))).await?;
    Ok(())
}

/// A data role that is not a superuser takes `role`, one it made (its
/// CREATEROLE lets it), to act as it: own a database it owns, REASSIGN
/// or DROP what it owns. A superuser needs nothing.
pub async fn take_role(c: &tokio_postgres::Client, role: &str) -> Result<(), tokio_postgres::Error> {
    c.batch_execute(&format!(
        "DO $$ BEGIN
             IF NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
                 EXECUTE pg_catalog.format('GRANT %I TO %I', {l}, current_user);
             END IF;
         END $$",
        l = literal(role)
    ))
    .await
}

/// No login, no password, no membership.
async fn disable(c: &tokio_postgres::Client, role: &str) -> Result<()> {
    c.batch_execute(&format!("ALTER ROLE {} NOLOGIN PASSWORD NULL VALID UNTIL '-infinity'", ident(role))).await?;
    let granted: Vec<String> = c
        .query(
            "SELECT pg_catalog.pg_get_userbyid(m.roleid) FROM pg_catalog.pg_auth_members m
               JOIN pg_catalog.pg_roles r ON r.oid = m.member WHERE r.rolname = $1",
            &[&role],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for g in granted {
        c.batch_execute(&format!("REVOKE {} FROM {}", ident(&g), ident(role))).await?;
    }
    Ok(())
}

/// Disable and drop the throwaway roles of earlier attempts of this
/// transfer (an agent killed mid-restore leaves one), and any that can no
/// longer log in; one that still owns something stays, disabled.
async fn sweep(c: &tokio_postgres::Client, transfer: &str) {
    let Ok(rows) = c
        .query(
            "SELECT rolname::text FROM pg_catalog.pg_roles
              WHERE pg_catalog.starts_with(rolname, $1)
                 OR (pg_catalog.starts_with(rolname, $2) AND rolvaliduntil < pg_catalog.now())",
            &[&transfer, &PREFIX],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let role: String = r.get(0);
        if let Err(e) = retire(c, &role).await {
            tracing::debug!("leaving disabled login {role}: {e:#}");
        }
    }
}

/// Disable throwaway login `role` and drop it; one that still owns
/// something (an in-place restore's objects, its agent killed) stays,
/// disabled, and the error says so.
pub async fn retire(c: &tokio_postgres::Client, role: &str) -> Result<()> {
    disable(c, role).await?;
    c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(role))).await?;
    Ok(())
}

/// The transfer throwaway login `role` was made for, if it is one.
pub fn transfer_of(role: &str) -> Option<&str> {
    role.strip_prefix(PREFIX)?.rsplit_once('_').map(|(t, _)| t)
}

/// PostgreSQL's SCRAM-SHA-256 verifier of `password` (what `CREATE ROLE
/// ... PASSWORD` stores), so that the password itself never travels in a
/// statement that a log could keep.
fn scram_verifier(password: &str) -> Result<String> {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    const ITERATIONS: u32 = 4096;
    let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        m.update(data);
        m.finalize().into_bytes().into()
    };
    let salt = random_bytes::<16>()?;
    // PBKDF2-HMAC-SHA-256, one block.
    let mut u = hmac(password.as_bytes(), &[&salt[..], &1u32.to_be_bytes()].concat());
    let mut salted = u;
    for _ in 1..ITERATIONS {
        u = hmac(password.as_bytes(), &u);
        for (s, x) in salted.iter_mut().zip(u) {
            *s ^= x;
        }
    }
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key"));
    let server_key = hmac(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(format!("SCRAM-SHA-256${ITERATIONS}:{}${}:{}", b64.encode(salt), b64.encode(stored_key), b64.encode(server_key)))
}

/// `N` random bytes from the kernel.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_has_postgres_scram_form() {
        let v = scram_verifier("secret").unwrap();
        let (head, keys) = v.split_once('$').unwrap().1.split_once('$').unwrap();
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert_eq!(head.split_once(':').unwrap().1.len(), 24, "a 16-byte salt in base64");
        let (stored, server) = keys.split_once(':').unwrap();
        assert_eq!((stored.len(), server.len()), (44, 44));
        assert!(!v.contains("secret"));
    }
}
