//! The login a restore or copy applies an archive with. `SET ROLE owner`
//! alone is no boundary: code in the archive (a CHECK constraint's function,
//! a trigger, an index expression) can `RESET ROLE` back to the session's
//! login. So the archive is applied by a throwaway login role made for the
//! transfer: NOINHERIT, a member of the target's owner and of nothing else,
//! with a random password that is never stored. Whatever the archive runs,
//! it has at most the owner's rights. The role is dropped when the transfer
//! stops, however it stops; one left by a killed agent cannot log in after
//! its VALID UNTIL, and is dropped by the next restore or copy.

use anyhow::{Context, Result};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::pg::conn::{self, Conn};
use crate::pg::target::{ident, literal, Target};

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
    tracker: TaskTracker,
}

impl Applier {
    /// Create the role for attempt `attempt` of transfer `name` into `target`.
    /// Dropping the `Applier` drops the role (on `tracker`, which the
    /// supervisor waits for).
    pub async fn create(
        cfg: &Config,
        target: &Target,
        name: &str,
        attempt: i32,
        tracker: &TaskTracker,
    ) -> Result<Self> {
        let c = conn::connect(&cfg.data_url).await?;
        sweep(&c).await;
        let role = format!("{PREFIX}{}_{attempt}", name.replace(|ch: char| !ch.is_ascii_alphanumeric(), "_"));
        let password = random_password()?;
        let until = (chrono::Utc::now() + chrono::Duration::days(LIFETIME_DAYS)).to_rfc3339();
        c.batch_execute(&format!(
            "DROP ROLE IF EXISTS {r}; CREATE ROLE {r} LOGIN NOINHERIT PASSWORD {pw} VALID UNTIL {until} IN ROLE {owner}",
            r = ident(&role),
            pw = literal(&password),
            until = literal(&until),
            owner = ident(&target.owner),
        ))
        .await
        .with_context(|| {
            format!("creating the login {role} that applies the archive as {} (see the README: the agent's roles)", target.owner)
        })?;
        Ok(Applier { role, password, target: target.clone(), data_url: cfg.data_url.clone(), tracker: tracker.clone() })
    }

    /// The connection to the target that the tools use.
    pub fn conn(&self) -> Result<Conn> {
        Conn::login_as(&self.data_url, &self.target.name, &self.role, &self.password)
    }
}

impl Drop for Applier {
    fn drop(&mut self) {
        let (role, target, url) = (self.role.clone(), self.target.clone(), self.data_url.clone());
        self.tracker.spawn(async move {
            if let Err(e) = drop_role(&url, &role, &target).await {
                tracing::warn!("could not drop the login {role}: {e:#} (it expires on its own)");
            }
        });
    }
}

/// End its sessions, give what it created (after a RESET ROLE) to the
/// owner, and drop it.
async fn drop_role(url: &str, role: &str, target: &Target) -> Result<()> {
    let c = conn::connect(url).await?;
    // (A data role that is not a superuser may not be allowed to: its
    // sessions end with the tools anyway.)
    c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", &[&role]).await.ok();
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

/// Drop the throwaway roles that can no longer log in (left by an agent
/// that was killed); those that still own something stay, inert.
async fn sweep(c: &tokio_postgres::Client) {
    let Ok(rows) = c
        .query(
            "SELECT rolname::text FROM pg_roles WHERE starts_with(rolname, $1) AND rolvaliduntil < now()",
            &[&PREFIX],
        )
        .await
    else {
        return;
    };
    for r in rows {
        let role: String = r.get(0);
        if let Err(e) = c.batch_execute(&format!("DROP ROLE IF EXISTS {}", ident(&role))).await {
            tracing::debug!("leaving expired login {role}: {e}");
        }
    }
}

/// 32 random bytes from the kernel, as hex.
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(hex::encode(bytes))
}
