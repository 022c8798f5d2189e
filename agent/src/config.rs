//! Settings, each declared once: a field of `StoreOptions` (what every
//! command needs) or `AgentOptions` (what only `pgbackups agent` needs),
//! with its flag, its `PGBACKUPS_*` variable, its default and its help, all
//! on the field. Three layers, merged as TOML tables: the defaults (clap's,
//! read from the declarations), the file given with `--config`, and what
//! the command line and environment set; a layer wins over the ones before
//! it. `resolve` only converts (seconds into durations, recipients into
//! keys) and checks. The reference in docs/configuration.md is rendered
//! from these declarations, and a test keeps it so. Connection secrets live
//! here, never in the control database's tables.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, FromArgMatches};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_aux::serde_introspection::serde_introspect;

use crate::store::crypt::{Identities, Recipients};
use crate::webhook::{Webhook, WebhookTarget};

/// How often a running transfer reports progress and learns of a cancel.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// `--config FILE`: a TOML file with any of the options below, plus
/// `[sources.NAME]` and `[storage_options]`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigFile {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "PGBACKUPS_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Where the control database and the backups are.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct StoreOptions {
    /// The control database, where the extension lives (postgres://...).
    #[arg(long, env = "PGBACKUPS_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where backups go: file:///path or s3://bucket/prefix.
    #[arg(long, env = "PGBACKUPS_STORAGE", default_value = "file:///var/lib/pgbackups")]
    pub storage: Option<String>,
    /// How long storage requests are retried before a transfer fails, in seconds.
    #[arg(long, env = "PGBACKUPS_STORAGE_RETRY_TIMEOUT", default_value = "120")]
    pub storage_retry_timeout: Option<u64>,
    /// An age identity file (age-keygen's AGE-SECRET-KEY-1... lines) to
    /// decrypt encrypted backups with (repeatable: keep old keys after a
    /// rotation).
    #[arg(long, env = "PGBACKUPS_IDENTITY_FILE", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub identity_file: Vec<PathBuf>,
    /// Extra object_store options for S3 and friends (endpoint, region, keys,
    /// aws_server_side_encryption); file only.
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub storage_options: BTreeMap<String, String>,
}

/// What only the agent needs.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
pub struct AgentOptions {
    /// The connection for the control cluster's databases: what captures read,
    /// and restores and copies replace (default: --database-url). See the
    /// docs/operations.md for the rights it needs.
    #[arg(long, env = "PGBACKUPS_DATA_URL")]
    pub data_url: Option<String>,
    /// How many transfers this agent runs at once.
    #[arg(long, env = "PGBACKUPS_MAX_CONCURRENT", default_value = "2")]
    pub max_concurrent: Option<usize>,
    /// How many of them may be of databases with the same owner (default:
    /// all but one, at least one), so that one tenant's transfers waiting
    /// on its own locks never take every slot; superusers' and
    /// backups_admin members' databases are not capped.
    #[arg(long, env = "PGBACKUPS_MAX_PER_OWNER")]
    pub max_per_owner: Option<usize>,
    /// This agent's name in the queue (default: hostname-pid).
    #[arg(long, env = "PGBACKUPS_AGENT_ID")]
    pub agent_id: Option<String>,
    /// A name for the control cluster, kept in every backup's manifest
    /// beside its system identifier (default: the host the agent runs on):
    /// what `pgbackups list --cluster` and `adopt --cluster` go by once a
    /// rebuild gave the cluster a new identifier.
    #[arg(long, env = "PGBACKUPS_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Keep the password verifiers of the roles a backup names in its
    /// manifest, so that `pgbackups restore --create` recreates them with
    /// their passwords (reading them needs a superuser data role).
    #[arg(long, env = "PGBACKUPS_KEEP_ROLE_PASSWORDS")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_role_passwords: bool,
    /// Local directory for files in flight (parallel dumps, restores).
    #[arg(long, env = "PGBACKUPS_STAGING_DIR", default_value = "/var/tmp/pgbackups")]
    pub staging_dir: Option<PathBuf>,
    /// A directory holding pg_dump, pg_restore and psql of one PostgreSQL major
    /// (repeatable, one per major); /usr/lib/postgresql/*/bin and PATH are
    /// searched after them, and each transfer takes the lowest major that
    /// is at least its servers'.
    #[arg(long, env = "PGBACKUPS_PG_BIN_DIR", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub pg_bin_dir: Vec<PathBuf>,
    /// Encrypt new backups with age to this X25519 recipient (age1...;
    /// repeatable): every stored object, the manifest too.
    #[arg(long, env = "PGBACKUPS_ENCRYPT_TO", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "one_or_many")]
    pub encrypt_to: Vec<String>,
    /// zstd compression level (1-19).
    #[arg(long, env = "PGBACKUPS_COMPRESSION_LEVEL", default_value = "3")]
    pub compression_level: Option<i32>,
    /// Schemas pg_dump leaves out (repeatable).
    #[arg(long = "exclude-schema", env = "PGBACKUPS_EXCLUDE_SCHEMA", value_delimiter = ',')]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_schema: Vec<String>,
    /// Seconds to let running transfers finish on SIGTERM before handing them back.
    #[arg(long, env = "PGBACKUPS_SHUTDOWN_GRACE", default_value = "30")]
    pub shutdown_grace: Option<u64>,
    /// Seconds between polls of the queue (NOTIFY wakes the agent sooner).
    #[arg(long, env = "PGBACKUPS_POLL_INTERVAL", default_value = "2")]
    pub poll_interval: Option<f64>,
    /// Give up a capture or copy when pg_dump waits longer than this for a
    /// table's lock, someone's open transaction (e.g. 30s; 0: wait forever).
    #[arg(long, env = "PGBACKUPS_LOCK_WAIT_TIMEOUT", default_value = "10min")]
    pub lock_wait_timeout: Option<String>,
    /// Serve signed download links on this address (e.g. 127.0.0.1:8432).
    #[arg(long, env = "PGBACKUPS_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// How many download links are served at once; another waits up to 5 s
    /// for its turn, then gets 503 and a Retry-After.
    #[arg(long, env = "PGBACKUPS_MAX_DOWNLOADS", default_value = "8")]
    pub max_downloads: Option<usize>,
    /// The secret links are signed with: the same as backups.link_secret.
    #[arg(long, env = "PGBACKUPS_LINK_SECRET", hide_env_values = true)]
    pub link_secret: Option<String>,
    /// A file holding the link secret (so that it does not show in `ps`).
    #[arg(long, env = "PGBACKUPS_LINK_SECRET_FILE")]
    pub link_secret_file: Option<PathBuf>,
    /// Serve /metrics on --listen to scrapers that send this bearer token
    /// (`Authorization: Bearer <token>`); without one, /metrics is off.
    #[arg(long, env = "PGBACKUPS_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// A file holding the metrics token (so that it does not show in `ps`).
    #[arg(long, env = "PGBACKUPS_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// Let restores fetch URLs on loopback, private, link-local and cloud
    /// metadata addresses (refused by default).
    #[arg(long, env = "PGBACKUPS_ALLOW_PRIVATE_URLS")]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private_urls: bool,
    /// The largest download a restore from a URL accepts, in bytes.
    #[arg(long, env = "PGBACKUPS_URL_MAX_BYTES", default_value = "1099511627776")]
    pub url_max_bytes: Option<u64>,
    /// How long a restore may take to download a URL, in seconds.
    #[arg(long, env = "PGBACKUPS_URL_TIMEOUT", default_value = "21600")]
    pub url_timeout: Option<u64>,
    /// A copy splits tables larger than this many bytes (pg_table_size) into
    /// ctid ranges that several COPY streams read at once; a restore loads a
    /// table whose data passes this many bytes over several connections
    /// (0: never).
    #[arg(long, env = "PGBACKUPS_SPLIT_TABLES_LARGER_THAN", default_value = "67108864")]
    pub split_tables_larger_than: Option<u64>,
    /// POST a JSON message to this URL when a transfer this agent runs
    /// fails (repeatable; space-separated in the environment). In the file,
    /// `[[webhook]]` tables choose the statuses too: `url = "https://..."`,
    /// `events = ["failed", "completed"]` (of running, completed, failed,
    /// cancelled; default failed).
    #[arg(long = "webhook", env = "PGBACKUPS_WEBHOOK", value_delimiter = ' ', hide_env_values = true)]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhook: Vec<Webhook>,
    /// Named sources (replicas, forks, other servers), by name; file only
    /// (or PGBACKUPS_SOURCE_<NAME>=url).
    #[arg(skip)]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sources: BTreeMap<String, SourceConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection URL of the named source.
    pub url: String,
}

/// Where backups are, resolved: what `pgbackups download` runs with.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// None: storage alone (the shell verbs that read manifests).
    pub database_url: Option<String>,
    pub storage: String,
    pub storage_options: BTreeMap<String, String>,
    pub storage_retry_timeout: Duration,
    /// What encrypted backups are decrypted with.
    pub identities: Arc<Identities>,
}

/// Download links are served only with a secret to check them against.
#[derive(Debug, Clone)]
pub struct Listen {
    pub addr: SocketAddr,
    pub secret: String,
    /// The bearer token /metrics asks for; None: /metrics is off.
    pub metrics_token: Option<String>,
    /// Download links served at once.
    pub max_downloads: usize,
}

/// What a restore from a URL may fetch.
#[derive(Debug, Clone)]
pub struct UrlPolicy {
    pub allow_private: bool,
    pub max_bytes: u64,
    pub timeout: Duration,
}

/// Everything the agent runs with, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage, and the control database where the extension lives (the
    /// agent always has one; a restore from the shell with storage alone
    /// has none).
    pub store: StoreConfig,
    /// The control cluster's databases are reached through this.
    pub data_url: String,
    pub url_policy: UrlPolicy,
    pub max_concurrent: usize,
    /// At most this many of them of one database owner's.
    pub max_per_owner: usize,
    pub agent_id: String,
    /// The control cluster's name in manifests.
    pub cluster_name: String,
    pub keep_role_passwords: bool,
    pub staging_dir: PathBuf,
    pub pg_bin_dir: Vec<PathBuf>,
    pub compression_level: i32,
    /// Whom new backups are encrypted to; none: stored plain.
    pub encrypt_to: Recipients,
    pub exclude_schema: Vec<String>,
    pub shutdown_grace: Duration,
    pub poll_interval: Duration,
    pub heartbeat_interval: Duration,
    pub lock_wait_timeout: Option<String>,
    /// Bytes above which a copy or a restore splits a table; 0 never.
    pub split_tables_larger_than: u64,
    pub listen: Option<Listen>,
    pub sources: BTreeMap<String, SourceConfig>,
    /// Told of the status changes of this agent's transfers.
    pub webhooks: Vec<WebhookTarget>,
}

/// What the command line set: the matches of the subcommand, to tell what
/// its flags and environment set from clap's defaults; `None` for options
/// built by hand (tests), where whatever is set counts.
pub type Given<'a> = Option<&'a ArgMatches>;

impl StoreConfig {
    pub fn load(file: &ConfigFile, flags: &StoreOptions, given: Given) -> Result<Self> {
        let table = read_file(file.config.as_deref())?;
        Self::resolve(merge(flags, &table, given)?)
    }

    fn resolve(o: StoreOptions) -> Result<Self> {
        Ok(StoreConfig {
            database_url: o.database_url,
            storage: defaulted(o.storage, "storage")?,
            storage_options: o.storage_options,
            storage_retry_timeout: Duration::from_secs(defaulted(o.storage_retry_timeout, "storage_retry_timeout")?),
            identities: Arc::new(Identities::load(&o.identity_file)?),
        })
    }
}

impl StoreConfig {
    /// The control database's URL, which this command needs.
    pub fn control(&self) -> Result<&str> {
        self.database_url.as_deref().context(
            "no control database: pass --database-url or set PGBACKUPS_DATABASE_URL (postgres://user@host/postgres)",
        )
    }
}

/// An option that has a default, which the defaults layer set.
fn defaulted<T>(value: Option<T>, name: &str) -> Result<T> {
    value.with_context(|| format!("option {name} has no value and no default"))
}

impl Config {
    pub fn load(file: &ConfigFile, store: &StoreOptions, agent: &AgentOptions, given: Given) -> Result<Self> {
        Self::load_reaching(file, store, agent, given, None)
    }

    /// For a restore from the shell with storage alone: the agent's
    /// settings (the file's and the defaults), reaching the cluster of
    /// `data_url`, with no control database.
    pub fn standalone(file: &ConfigFile, store: &StoreOptions, given: Given, data_url: String) -> Result<Self> {
        let mut cfg = Self::load_reaching(file, store, &AgentOptions::default(), given, Some(data_url))?;
        cfg.store.database_url = None;
        Ok(cfg)
    }

    fn load_reaching(
        file: &ConfigFile,
        store: &StoreOptions,
        agent: &AgentOptions,
        given: Given,
        reach: Option<String>,
    ) -> Result<Self> {
        let table = read_file(file.config.as_deref())?;
        let store = StoreConfig::resolve(merge(store, &table, given)?)?;
        let o: AgentOptions = merge(agent, &table, given)?;
        let compression_level = defaulted(o.compression_level, "compression_level")?;
        if !(1..=19).contains(&compression_level) {
            bail!("compression level must be between 1 and 19, not {compression_level}");
        }
        if o.keep_role_passwords && o.encrypt_to.is_empty() {
            bail!("--keep-role-passwords needs --encrypt-to: password verifiers are not kept in plain text");
        }
        let max_concurrent = defaulted(o.max_concurrent, "max_concurrent")?;
        if max_concurrent == 0 {
            bail!("--max-concurrent must be at least 1");
        }
        let max_per_owner = o.max_per_owner.unwrap_or(max_concurrent.saturating_sub(1).max(1));
        if max_per_owner == 0 {
            bail!("--max-per-owner must be at least 1");
        }
        if o.listen.is_none() && (o.metrics_token.is_some() || o.metrics_token_file.is_some()) {
            bail!("--metrics-token needs --listen: /metrics is served there");
        }
        let listen = match o.listen {
            None => None,
            Some(addr) => Some(Listen {
                addr,
                secret: link_secret(o.link_secret, o.link_secret_file.as_deref())?,
                metrics_token: metrics_token(o.metrics_token, o.metrics_token_file.as_deref())?,
                max_downloads: match defaulted(o.max_downloads, "max_downloads")? {
                    0 => bail!("--max-downloads must be at least 1"),
                    n => n,
                },
            }),
        };

        let mut sources = o.sources;
        // PGBACKUPS_SOURCE_<NAME>=url defines a named source too.
        for (k, v) in std::env::vars() {
            if let Some(name) = k.strip_prefix("PGBACKUPS_SOURCE_") {
                sources.insert(name.to_ascii_lowercase(), SourceConfig { url: v });
            }
        }
        let data_url = match (reach, o.data_url) {
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => store.control()?.to_string(),
        };
        Ok(Config {
            data_url,
            store,
            url_policy: UrlPolicy {
                allow_private: o.allow_private_urls,
                max_bytes: defaulted(o.url_max_bytes, "url_max_bytes")?,
                timeout: Duration::from_secs(defaulted(o.url_timeout, "url_timeout")?),
            },
            max_concurrent,
            max_per_owner,
            agent_id: o.agent_id.unwrap_or_else(default_agent_id),
            cluster_name: o.cluster_name.unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()),
            keep_role_passwords: o.keep_role_passwords,
            staging_dir: defaulted(o.staging_dir, "staging_dir")?,
            pg_bin_dir: o.pg_bin_dir,
            compression_level,
            encrypt_to: Recipients::parse(&o.encrypt_to)?,
            exclude_schema: o.exclude_schema,
            shutdown_grace: Duration::from_secs(defaulted(o.shutdown_grace, "shutdown_grace")?),
            poll_interval: Duration::from_secs_f64(defaulted(o.poll_interval, "poll_interval")?.max(0.1)),
            heartbeat_interval: HEARTBEAT_INTERVAL,
            // "0" (pg_dump's own default) waits forever.
            lock_wait_timeout: Some(defaulted(o.lock_wait_timeout, "lock_wait_timeout")?).filter(|t| t.trim() != "0"),
            split_tables_larger_than: defaulted(o.split_tables_larger_than, "split_tables_larger_than")?,
            listen,
            sources,
            webhooks: o.webhook.iter().enumerate().map(|(i, w)| w.checked(i)).collect::<Result<_>>()?,
        })
    }
}

impl Config {
    /// The control database's URL.
    pub fn control(&self) -> Result<&str> {
        self.store.control()
    }
}

/// The link secret, from the option or the file; never empty.
fn link_secret(value: Option<String>, file: Option<&Path>) -> Result<String> {
    let secret = secret("link secret", "--link-secret", value, file)?.unwrap_or_default();
    if secret.is_empty() {
        bail!(
            "--listen needs --link-secret or --link-secret-file (PGBACKUPS_LINK_SECRET): the same non-empty secret as backups.link_secret"
        );
    }
    Ok(secret)
}

/// The metrics token, from the option or the file; never empty.
fn metrics_token(value: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    let token = secret("metrics token", "--metrics-token", value, file)?;
    if token.as_deref() == Some("") {
        bail!("the metrics token is empty: give a non-empty --metrics-token or --metrics-token-file");
    }
    Ok(token)
}

/// A secret given as `--<flag>` or `--<flag>-file` (one line, its newline
/// dropped), at most one of them.
fn secret(what: &str, flag: &str, value: Option<String>, file: Option<&Path>) -> Result<Option<String>> {
    Ok(match (value, file) {
        (Some(_), Some(_)) => bail!("give the {what} once: {flag} or {flag}-file, not both"),
        (Some(v), None) => Some(v),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the {what} from {}", f.display()))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        ),
        (None, None) => None,
    })
}

/// A list, or one value alone (`pg_bin_dir = "/usr/lib/postgresql/16/bin"`).
fn one_or_many<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(v) => vec![v],
        OneOrMany::Many(v) => v,
    })
}

/// The TOML file as a table (empty without one), refusing keys that no
/// option has.
fn read_file(path: Option<&Path>) -> Result<toml::Table> {
    let Some(path) = path else { return Ok(toml::Table::new()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let known: BTreeSet<&str> =
        serde_introspect::<StoreOptions>().iter().chain(serde_introspect::<AgentOptions>()).copied().collect();
    if let Some(unknown) = table.keys().find(|k| !known.contains(k.as_str())) {
        bail!(
            "parsing {}: unknown setting {unknown:?} (known: {})",
            path.display(),
            known.iter().copied().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(table)
}

/// The options of `T`: its defaults, under the file's, under those the
/// command line set (`given`, or, for options built by hand, whatever is
/// set).
fn merge<T: Args + FromArgMatches + Serialize + DeserializeOwned>(
    flags: &T,
    file: &toml::Table,
    given: Given,
) -> Result<T> {
    let mut merged = defaults::<T>()?;
    merged.extend(file.clone());
    let mut set = toml::Table::try_from(flags).context("reading the options")?;
    if let Some(m) = given {
        set.retain(|k, _| {
            matches!(
                // (value_source panics on an id clap does not know.)
                m.try_get_raw(k).ok().and_then(|_| m.value_source(k)),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        });
    }
    merged.extend(set);
    merged.try_into().context("reading the configuration file")
}

/// The defaults `T` declares (clap's `default_value`s, without the
/// environment), as a table.
fn defaults<T: Args + FromArgMatches + Serialize>() -> Result<toml::Table> {
    let cmd = T::augment_args(clap::Command::new("defaults")).mut_args(|a| a.env(None::<&str>));
    let m = cmd.try_get_matches_from(["defaults"]).context("reading the options' defaults")?;
    let t = T::from_arg_matches(&m).context("reading the options' defaults")?;
    toml::Table::try_from(&t).context("reading the options' defaults")
}

fn default_agent_id() -> String {
    format!("{}-{}", gethostname::gethostname().to_string_lossy(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::webhook::Status;

    fn file(text: &str) -> (tempfile::NamedTempFile, ConfigFile) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let c = ConfigFile { config: Some(f.path().to_path_buf()) };
        (f, c)
    }

    #[test]
    fn flags_win_over_the_file_and_defaults_fill_the_rest() {
        let (_f, c) = file(
            "database_url = \"postgres://file/postgres\"\nmax_concurrent = 5\ncompression_level = 7\n\
             pg_bin_dir = [\"/opt/pg16/bin\", \"/opt/pg17/bin\"]\n\
             [sources.replica]\nurl = \"postgres://replica/app\"\n[storage_options]\nregion = \"eu-west-3\"\n",
        );
        let store = StoreOptions { database_url: Some("postgres://flag/postgres".into()), ..Default::default() };
        let agent = AgentOptions { max_concurrent: Some(1), ..Default::default() };
        let cfg = Config::load(&c, &store, &agent, None).unwrap();
        assert_eq!(cfg.store.database_url.as_deref(), Some("postgres://flag/postgres"));
        assert_eq!(cfg.max_concurrent, 1);
        assert_eq!(cfg.compression_level, 7);
        // What neither sets takes the default declared on the option.
        assert_eq!(cfg.store.storage, "file:///var/lib/pgbackups");
        assert_eq!(cfg.split_tables_larger_than, 64 << 20);
        assert_eq!(cfg.lock_wait_timeout.as_deref(), Some("10min"));
        assert_eq!((cfg.max_per_owner, cfg.shutdown_grace), (1, Duration::from_secs(30)));
        assert_eq!(cfg.sources["replica"].url, "postgres://replica/app");
        assert_eq!(cfg.store.storage_options["region"], "eu-west-3");
        assert!(cfg.listen.is_none());
        assert_eq!(cfg.pg_bin_dir, [PathBuf::from("/opt/pg16/bin"), PathBuf::from("/opt/pg17/bin")]);
        // A flag replaces the file's list; one directory alone is a list of one.
        let flagged = AgentOptions { pg_bin_dir: vec![PathBuf::from("/x/bin")], ..Default::default() };
        assert_eq!(Config::load(&c, &store, &flagged, None).unwrap().pg_bin_dir, [PathBuf::from("/x/bin")]);
        let (_g, one) = file("database_url = \"x\"\npg_bin_dir = \"/usr/lib/postgresql/16/bin\"\n");
        let cfg = Config::load(&one, &StoreOptions::default(), &AgentOptions::default(), None).unwrap();
        assert_eq!(cfg.pg_bin_dir, [PathBuf::from("/usr/lib/postgresql/16/bin")]);
        // download reads the same file, taking only what it uses.
        let s = StoreConfig::load(&c, &StoreOptions::default(), None).unwrap();
        assert_eq!(s.database_url.as_deref(), Some("postgres://file/postgres"));
    }

    /// The reference of every option, as docs/configuration.md shows it
    /// (rendered from the declarations above; `config::tests` keeps the file
    /// so): a Markdown table of flag, environment variable, default and help.
    fn reference() -> String {
        let cmd = AgentOptions::augment_args(StoreOptions::augment_args(ConfigFile::augment_args(clap::Command::new(
            "agent",
        ))));
        let mut out = String::from("| flag | environment | default | what it does |\n|---|---|---|---|\n");
        for a in cmd.get_arguments() {
            let Some(long) = a.get_long() else { continue };
            let cell = |s: String| s.replace('|', "\\|").replace('\n', " ");
            let help = a.get_long_help().or(a.get_help()).map(|h| cell(h.to_string())).unwrap_or_default();
            let env = a.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
            let default = match a.get_default_values() {
                [] => String::new(),
                d => format!("`{}`", d.iter().map(|v| v.to_string_lossy()).collect::<Vec<_>>().join(",")),
            };
            let flag = if a.get_action().takes_values() {
                format!("`--{long} <{}>`", a.get_id().as_str().to_ascii_uppercase())
            } else {
                format!("`--{long}`")
            };
            out.push_str(&format!("| {flag} | {env} | {default} | {help} |\n"));
        }
        out
    }

    #[test]
    fn the_command_line_wins_over_the_file_which_wins_over_the_defaults() {
        let (_f, c) = file("database_url = \"x\"\nmax_concurrent = 5\ncompression_level = 7\n");
        let cmd =
            AgentOptions::augment_args(StoreOptions::augment_args(ConfigFile::augment_args(clap::Command::new("a"))));
        let path = c.config.as_ref().unwrap().display().to_string();
        // An explicit flag wins even when it says what the default says.
        let m = cmd.try_get_matches_from(["a", "--config", &path, "--max-concurrent", "2"]).unwrap();
        let (file, store, agent) = (
            ConfigFile::from_arg_matches(&m).unwrap(),
            StoreOptions::from_arg_matches(&m).unwrap(),
            AgentOptions::from_arg_matches(&m).unwrap(),
        );
        let cfg = Config::load(&file, &store, &agent, Some(&m)).unwrap();
        assert_eq!((cfg.max_concurrent, cfg.compression_level), (2, 7));
        assert_eq!(cfg.store.storage, "file:///var/lib/pgbackups");
        assert_eq!(cfg.shutdown_grace, Duration::from_secs(30));
    }

    /// docs/configuration.md shows every option as declared here (run with
    /// UPDATE_DOCS=1 to write it anew).
    #[test]
    fn the_configuration_reference_is_the_declarations() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let text = std::fs::read_to_string(&path).unwrap();
        let (begin, end) = ("<!-- options: rendered from agent/src/config.rs -->\n", "<!-- /options -->");
        let (head, rest) = text.split_once(begin).expect("the options' begin marker");
        let (table, tail) = rest.split_once(end).expect("the options' end marker");
        let want = reference();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(&path, format!("{head}{begin}{want}{end}{tail}")).unwrap();
        } else {
            assert_eq!(
                table, want,
                "docs/configuration.md is out of date: run UPDATE_DOCS=1 cargo test -p pgbackups config"
            );
        }
    }

    #[test]
    fn unknown_settings_and_secretless_links_are_refused() {
        let (_f, c) = file("database_url = \"x\"\nmax_concurent = 5\n");
        let e = StoreConfig::load(&c, &StoreOptions::default(), None).unwrap_err().to_string();
        assert!(e.contains("unknown setting \"max_concurent\""), "{e}");
        let store = StoreOptions { database_url: Some("x".into()), ..Default::default() };
        for secret in [None, Some(String::new())] {
            let agent = AgentOptions {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                link_secret: secret,
                ..Default::default()
            };
            let e = Config::load(&ConfigFile::default(), &store, &agent, None).unwrap_err().to_string();
            assert!(e.starts_with("--listen needs --link-secret"), "{e}");
        }
        let (_s, secret_file) = file("s3cret\n");
        let agent = AgentOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            link_secret_file: secret_file.config.clone(),
            ..Default::default()
        };
        let cfg = Config::load(&ConfigFile::default(), &store, &agent, None).unwrap();
        assert_eq!(cfg.listen.unwrap().secret, "s3cret");
        // A metrics token: only with --listen, never empty, given once.
        let load = |agent: AgentOptions| Config::load(&ConfigFile::default(), &store, &agent, None);
        let listening = || AgentOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            link_secret: Some("s".into()),
            ..Default::default()
        };
        let e = load(AgentOptions { metrics_token: Some("t".into()), ..Default::default() }).unwrap_err().to_string();
        assert!(e.starts_with("--metrics-token needs --listen"), "{e}");
        let e = load(AgentOptions { metrics_token: Some(String::new()), ..listening() }).unwrap_err().to_string();
        assert!(e.contains("metrics token is empty"), "{e}");
        let (_t, token_file) = file("t0ken\n");
        let both = AgentOptions {
            metrics_token: Some("t".into()),
            metrics_token_file: token_file.config.clone(),
            ..listening()
        };
        assert!(load(both).unwrap_err().to_string().contains("not both"));
        let cfg = load(AgentOptions { metrics_token_file: token_file.config.clone(), ..listening() }).unwrap();
        assert_eq!(cfg.listen.unwrap().metrics_token.as_deref(), Some("t0ken"));
    }

    #[test]
    fn webhooks_come_from_the_file_or_flags_and_are_checked() {
        let (_f, c) = file(
            "database_url = \"x\"\n[[webhook]]\nurl = \"https://hooks.example.com/T0?token=s\"\n\
             events = [\"failed\", \"completed\"]\n[[webhook]]\nurl = \"http://alerts.internal/pg\"\n",
        );
        let cfg = Config::load(&c, &StoreOptions::default(), &AgentOptions::default(), None).unwrap();
        assert_eq!(cfg.webhooks.len(), 2);
        assert_eq!(cfg.webhooks[0].events, [Status::Failed, Status::Completed]);
        assert_eq!(cfg.webhooks[1].events, [Status::Failed]);
        // A flag's URL alone: failures only; flags replace the file's list.
        let flagged = AgentOptions { webhook: vec!["https://x.example/h".parse().unwrap()], ..Default::default() };
        let cfg = Config::load(&c, &StoreOptions::default(), &flagged, None).unwrap();
        assert_eq!(cfg.webhooks.len(), 1);
        assert_eq!(
            (cfg.webhooks[0].url.as_str(), &cfg.webhooks[0].events[..]),
            ("https://x.example/h", &[Status::Failed][..])
        );
        let store = StoreOptions { database_url: Some("x".into()), ..Default::default() };
        for (url, why) in [("ftp://secret@x/y", "only http:// and https://"), ("not a url secret", "not a URL")] {
            let bad = AgentOptions { webhook: vec![url.parse().unwrap()], ..Default::default() };
            let e = Config::load(&ConfigFile::default(), &store, &bad, None).unwrap_err().to_string();
            assert!(e.starts_with("webhook 1: ") && e.contains(why) && !e.contains("secret"), "{e}");
        }
        for (text, why) in [
            ("[[webhook]]\nurl = \"http://h/\"\nevents = [\"exploded\"]\n", "unknown variant"),
            ("[[webhook]]\nurl = \"http://h/\"\nevents = []\n", "no events"),
            ("[[webhook]]\nurl = \"http://h/\"\nevent = [\"failed\"]\n", "unknown field"),
        ] {
            let (_g, c) = file(&format!("database_url = \"x\"\n{text}"));
            let e = format!(
                "{:#}",
                Config::load(&c, &StoreOptions::default(), &AgentOptions::default(), None).unwrap_err()
            );
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn encryption_settings_are_read_and_checked_at_start() {
        use age::secrecy::ExposeSecret;
        let key = age::x25519::Identity::generate();
        let public = key.to_public().to_string();
        let (_k, key_file) = file(&format!("# a key\n{}\n", key.to_string().expose_secret()));
        let key_path = key_file.config.clone().unwrap();
        let (_f, c) = file(&format!(
            "database_url = \"x\"\nencrypt_to = \"{public}\"\nidentity_file = [{:?}]\n",
            key_path.display().to_string()
        ));
        let cfg = Config::load(&c, &StoreOptions::default(), &AgentOptions::default(), None).unwrap();
        assert_eq!(cfg.encrypt_to.names(), [public]);
        assert!(format!("{:?}", cfg.store.identities).contains("1 age identities from"));
        // download reads the identities too.
        assert!(format!("{:?}", StoreConfig::load(&c, &StoreOptions::default(), None).unwrap().identities)
            .contains("1 age identities from"));
        let store = StoreOptions { database_url: Some("x".into()), ..Default::default() };
        let bad = AgentOptions { encrypt_to: vec!["age1notakey".into()], ..Default::default() };
        let e = Config::load(&ConfigFile::default(), &store, &bad, None).unwrap_err().to_string();
        assert!(e.contains("\"age1notakey\" is not an age X25519 recipient"), "{e}");
        let missing = StoreOptions { identity_file: vec!["/nonexistent/key.txt".into()], ..store };
        let e = StoreConfig::load(&ConfigFile::default(), &missing, None).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/key.txt"), "{e}");
    }
}
