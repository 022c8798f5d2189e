//! TLS for the agent's own connections, with libpq's settings and meaning:
//! tokio-postgres knows only sslmode disable/prefer/require and refuses
//! sslrootcert, so the TLS keys are taken out of a connection string here
//! and turned into rustls settings (verify-ca, verify-full, client
//! certificates), and given back as keywords for pg_dump and friends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};
use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode as PgSslMode};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config as PgConfig, Connection, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

/// The stream under a connection opened here, encrypted or not.
pub type Stream = <MakeRustlsConnect as MakeTlsConnect<Socket>>::Stream;

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain only.
    Disable,
    /// Plain first; TLS if the server refuses plain.
    Allow,
    /// TLS first; plain if TLS fails (libpq's default).
    Prefer,
    /// TLS; the certificate is checked only if a root certificate is given.
    Require,
    /// TLS; the server's certificate chain is checked against sslrootcert.
    VerifyCa,
    /// TLS; the chain and that the certificate names the host.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => bail!(Fatal(format!(
                "invalid sslmode {s:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
            ))),
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A TLS failure that trying again will not mend: a bad setting, a missing
/// or unreadable file, a certificate refused.
#[derive(Debug)]
pub struct Fatal(pub String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// The TLS settings a connection string spells out (libpq's keywords).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub mode: Option<SslMode>,
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub crl: Option<PathBuf>,
}

impl Settings {
    /// Take `key=value` if it is a TLS setting; false if it is not one.
    fn take(&mut self, key: &str, value: &str) -> Result<bool> {
        // An empty value leaves the setting unset, as in libpq.
        let path = || (!value.is_empty()).then(|| PathBuf::from(value));
        match key {
            "sslmode" => self.mode = Some(SslMode::parse(value)?),
            "sslrootcert" => self.rootcert = path(),
            "sslcert" => self.cert = path(),
            "sslkey" => self.key = path(),
            "sslcrl" => self.crl = path(),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The settings as libpq keywords, for the tools: only those given
    /// (the tools read the same environment and defaults as `connect`),
    /// files made absolute (the tools may run elsewhere).
    pub fn keywords(&self) -> Vec<(&'static str, String)> {
        let file = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string();
        let mut out = Vec::new();
        if let Some(m) = self.mode {
            out.push(("sslmode", m.as_str().to_string()));
        }
        for (k, v) in
            [("sslrootcert", &self.rootcert), ("sslcert", &self.cert), ("sslkey", &self.key), ("sslcrl", &self.crl)]
        {
            if let Some(p) = v {
                out.push((k, file(p)));
            }
        }
        out
    }

    /// What applies, as libpq decides it: the string's settings, else the
    /// `PGSSL*` variables, else the files of `~/.postgresql/`; a file that
    /// does not exist counts as not given, except a root certificate that
    /// verify-ca and verify-full need.
    fn resolve(&self, env: &dyn Fn(&str) -> Option<String>, home: Option<&Path>) -> Result<Resolved> {
        let mode = match (self.mode, env("PGSSLMODE")) {
            (Some(m), _) => m,
            (None, Some(m)) if !m.is_empty() => SslMode::parse(&m)?,
            _ => SslMode::Prefer,
        };
        let named = |given: &Option<PathBuf>, var: &str, default: &str| -> Option<PathBuf> {
            given
                .clone()
                .or_else(|| env(var).filter(|v| !v.is_empty()).map(PathBuf::from))
                .or_else(|| home.map(|h| h.join(".postgresql").join(default)))
        };
        let existing = |p: Option<PathBuf>| p.filter(|p| p.exists());
        let rootcert = named(&self.rootcert, "PGSSLROOTCERT", "root.crt");
        if rootcert.as_deref() == Some(Path::new("system")) {
            bail!(Fatal(
                "sslrootcert=system (the system's certificate authorities) is not supported: name a PEM file".into()
            ));
        }
        let verify = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
        let rootcert = match existing(rootcert.clone()) {
            None if verify => bail!(Fatal(match rootcert {
                Some(p) => format!("sslmode={}: root certificate file {} does not exist", mode.as_str(), p.display()),
                None => format!(
                    "sslmode={} needs sslrootcert: a PEM file of the certificate authorities to trust",
                    mode.as_str()
                ),
            })),
            None => {
                if let Some(p) = self.rootcert.as_ref().filter(|_| mode != SslMode::Disable) {
                    tracing::warn!(
                        "sslrootcert {} does not exist: the server's certificate is not checked (sslmode={}), as libpq does",
                        p.display(),
                        mode.as_str()
                    );
                }
                None
            }
            found => found,
        };
        let crl = existing(named(&self.crl, "PGSSLCRL", "root.crl"));
        let cert = existing(named(&self.cert, "PGSSLCERT", "postgresql.crt"));
        let key = named(&self.key, "PGSSLKEY", "postgresql.key");
        let cert = match (cert, key) {
            (Some(c), Some(k)) if k.exists() => Some((c, k)),
            (Some(c), k) if mode != SslMode::Disable => bail!(Fatal(format!(
                "sslcert {} is there but not its private key sslkey{}",
                c.display(),
                k.map(|k| format!(" {}", k.display())).unwrap_or_default()
            ))),
            _ => None,
        };
        Ok(Resolved { mode, rootcert, cert, crl })
    }
}

/// The TLS settings that apply to one connection.
#[derive(Debug, PartialEq, Eq)]
struct Resolved {
    mode: SslMode,
    rootcert: Option<PathBuf>,
    /// Client certificate and key.
    cert: Option<(PathBuf, PathBuf)>,
    crl: Option<PathBuf>,
}

/// Take the TLS settings out of a connection string (a `postgres://` URL or
/// libpq keyword/value pairs); the rest, unchanged, for tokio-postgres.
pub fn split(conninfo: &str) -> Result<(Settings, String)> {
    let mut settings = Settings::default();
    let is_url = conninfo.starts_with("postgres://") || conninfo.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = conninfo.split_once('?') else {
            return Ok((settings, conninfo.to_string()));
        };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(k).decode_utf8_lossy();
            let value = percent_decode_str(v).decode_utf8_lossy();
            if !settings.take(&key, &value)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((settings, rest));
    }
    let mut rest = String::new();
    let mut copied = 0;
    for (span, key, value) in pairs(conninfo)? {
        if settings.take(&key, &value)? {
            rest.push_str(&conninfo[copied..span.start]);
            copied = span.end;
        }
    }
    rest.push_str(&conninfo[copied..]);
    Ok((settings, rest))
}

/// libpq's `key = value` pairs (values bare or in single quotes, with
/// backslash escapes), each with where it is in the string.
fn pairs(s: &str) -> Result<Vec<(std::ops::Range<usize>, String, String)>> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i == b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        skip_ws(&mut i);
        if i == b.len() || b[i] != b'=' {
            bail!("missing \"=\" after {key:?} in the connection string");
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        let quoted = i < b.len() && b[i] == b'\'';
        if quoted {
            i += 1;
        }
        loop {
            match b.get(i) {
                None if quoted => bail!("unterminated quoted value of {key:?} in the connection string"),
                None => break,
                Some(b'\'') if quoted => {
                    i += 1;
                    break;
                }
                Some(c) if !quoted && c.is_ascii_whitespace() => break,
                Some(b'\\') if i + 1 < b.len() => {
                    value.push(b[i + 1]);
                    i += 2;
                }
                Some(&c) => {
                    value.push(c);
                    i += 1;
                }
            }
        }
        out.push((start..i, key, String::from_utf8_lossy(&value).into_owned()));
    }
}

/// Open a connection with `settings`, as libpq would: `allow` and `prefer`
/// try a second way when the first fails; the caller drives the connection.
pub async fn connect(cfg: &PgConfig, settings: &Settings) -> Result<(Client, Connection<Socket, Stream>)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let r = settings.resolve(&|k| std::env::var(k).ok(), home.as_deref())?;
    // libpq never asks for TLS over a Unix socket.
    let unix = cfg.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
    let attempts: &[PgSslMode] = match r.mode {
        _ if unix => &[PgSslMode::Disable],
        SslMode::Disable => &[PgSslMode::Disable],
        SslMode::Allow => &[PgSslMode::Disable, PgSslMode::Require],
        SslMode::Prefer => &[PgSslMode::Prefer, PgSslMode::Disable],
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => &[PgSslMode::Require],
    };
    let tls = if attempts.iter().all(|m| *m == PgSslMode::Disable) {
        // Never used; spares reading the certificate files.
        MakeRustlsConnect::new(
            base_config()?.with_custom_certificate_verifier(Arc::new(Unverified(provider()))).with_no_client_auth(),
        )
    } else {
        MakeRustlsConnect::new(client_config(&r)?)
    };
    let mut first: Option<anyhow::Error> = None;
    for (n, mode) in attempts.iter().enumerate() {
        let mut cfg = cfg.clone();
        cfg.ssl_mode(*mode);
        match cfg.connect(tls.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                // Only an answer from the server (a refusal, a failed
                // handshake) is worth a second way in.
                let again = e.as_db_error().is_some() || is_tls_failure(&e);
                let e = explain(e, &r, cfg.get_hosts());
                let e = match first.take() {
                    Some(f) => anyhow::anyhow!("{f:#}; then, {}: {e:#}", describe(*mode)),
                    None => e,
                };
                if !again || n + 1 == attempts.len() {
                    return Err(e);
                }
                first = Some(e);
            }
        }
    }
    unreachable!("at least one attempt")
}

fn describe(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "without TLS",
        _ => "with TLS",
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn base_config() -> Result<rustls::client::danger::DangerousClientConfigBuilder> {
    Ok(ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?.dangerous())
}

/// rustls settings for `r`: who verifies the server, and our certificate.
fn client_config(r: &Resolved) -> Result<ClientConfig> {
    let verifier: Arc<dyn ServerCertVerifier> = match &r.rootcert {
        None => Arc::new(Unverified(provider())),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Fatal(format!("cannot read sslrootcert {}: {e}", path.display())))?;
            for c in certs {
                roots.add(c).map_err(|e| Fatal(format!("sslrootcert {}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                bail!(Fatal(format!("sslrootcert {}: no certificate in it", path.display())));
            }
            let mut builder = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider());
            if let Some(crl) = &r.crl {
                let crls = CertificateRevocationListDer::pem_file_iter(crl)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| Fatal(format!("cannot read sslcrl {}: {e}", crl.display())))?;
                builder = builder.with_crls(crls);
            }
            let webpki = builder.build().map_err(|e| Fatal(format!("sslrootcert {}: {e}", path.display())))?;
            if r.mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = base_config()?.with_custom_certificate_verifier(verifier);
    Ok(match &r.cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Fatal(format!("cannot read sslcert {}: {e}", cert.display())))?;
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Fatal(format!("cannot read sslkey {}: {e}", key.display())))?;
            builder
                .with_client_auth_cert(certs, k)
                .map_err(|e| Fatal(format!("sslcert {} with sslkey {}: {e}", cert.display(), key.display())))?
        }
    })
}

/// The rustls error under a failed connection, if TLS is what failed.
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        // io::Error hides the error it wraps from `source()`.
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    rustls_error(e).is_some() || e.to_string().contains("TLS")
}

/// A failed connection in words to act on: which check refused the
/// server's certificate, against which file or host name.
fn explain(e: tokio_postgres::Error, r: &Resolved, hosts: &[Host]) -> anyhow::Error {
    let hosts: Vec<String> = hosts
        .iter()
        .map(|h| match h {
            Host::Tcp(s) => s.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let root = r.rootcert.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let what = match rustls_error(&e) {
        None => return e.into(),
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => format!(
            "TLS: the server's certificate is not valid for host {} (sslmode=verify-full checks the name)",
            hosts.join(",")
        ),
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            format!("TLS: the server's certificate is not trusted by sslrootcert {root}")
        }
        Some(rustls::Error::InvalidCertificate(_)) => {
            format!("TLS: the server's certificate was refused (checked against sslrootcert {root})")
        }
        Some(_) => "TLS: the handshake with the server failed".to_string(),
    };
    anyhow::Error::new(e).context(Fatal(what))
}

/// verify-ca, and require with a root certificate: the chain is checked
/// against the roots, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // WebPkiServerVerifier checks the chain first: a name error means
        // the chain is good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// prefer, allow and require without a root certificate: encrypted, the
/// certificate taken as it comes (the handshake's signatures still checked).
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_takes_the_tls_keys_out_of_a_url() {
        let (s, rest) = split(
            "postgres://u:p@h:5433/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca%20dir%2Fca.pem&sslcert=/c.pem&sslkey=/k.pem&sslcrl=/r.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://u:p@h:5433/db?application_name=x");
        assert_eq!(s.mode, Some(SslMode::VerifyFull));
        assert_eq!(s.rootcert.as_deref(), Some(Path::new("/etc/ca dir/ca.pem")));
        assert_eq!(s.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(s.key.as_deref(), Some(Path::new("/k.pem")));
        assert_eq!(s.crl.as_deref(), Some(Path::new("/r.pem")));
        let (s, rest) = split("postgresql://h/db?sslmode=require").unwrap();
        assert_eq!((s.mode, rest.as_str()), (Some(SslMode::Require), "postgresql://h/db"));
        let (s, rest) = split("postgres://h/db?sslrootcert=&sslmode=prefer").unwrap();
        assert_eq!((s.rootcert, rest.as_str()), (None, "postgres://h/db"));
        let (s, rest) = split("postgres://h/db").unwrap();
        assert_eq!((s, rest.as_str()), (Settings::default(), "postgres://h/db"));
        assert!(split("postgres://h/db?sslmode=verify").unwrap_err().to_string().contains("invalid sslmode"));
    }

    #[test]
    fn split_takes_the_tls_keys_out_of_keywords() {
        let (s, rest) = split(
            "host=h sslmode = verify-ca  port=5432 sslrootcert='/tmp/my ca\\'s.pem' password='a b' sslkey=/k\\ x",
        )
        .unwrap();
        assert_eq!(rest, "host=h   port=5432  password='a b' ");
        assert_eq!(s.mode, Some(SslMode::VerifyCa));
        assert_eq!(s.rootcert.as_deref(), Some(Path::new("/tmp/my ca's.pem")));
        assert_eq!(s.key.as_deref(), Some(Path::new("/k x")));
        // What is left is for tokio-postgres, which takes it.
        let cfg: PgConfig = rest.parse().unwrap();
        assert_eq!(cfg.get_password(), Some(&b"a b"[..]));
        assert!(split("host=h sslmode='require").is_err());
        assert!(split("host=h sslmode").is_err());
    }

    #[test]
    fn keywords_give_the_tools_the_same_settings() {
        let (s, _) = split("host=h sslmode=verify-full sslrootcert=ca.pem sslcert=/c.pem sslkey=/k.pem").unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            s.keywords(),
            vec![
                ("sslmode", "verify-full".to_string()),
                ("sslrootcert", cwd.join("ca.pem").display().to_string()),
                ("sslcert", "/c.pem".to_string()),
                ("sslkey", "/k.pem".to_string()),
            ]
        );
    }

    #[test]
    fn resolve_follows_libpq() {
        let none = |_: &str| None;
        let home = tempfile::tempdir().unwrap();
        let ca = home.path().join("ca.pem");
        std::fs::write(&ca, "").unwrap();
        // Default: prefer, nothing verified.
        let r = Settings::default().resolve(&none, Some(home.path())).unwrap();
        assert_eq!(r, Resolved { mode: SslMode::Prefer, rootcert: None, cert: None, crl: None });
        // verify-* need a root certificate that exists.
        let s = Settings { mode: Some(SslMode::VerifyFull), ..Default::default() };
        assert!(s.resolve(&none, Some(home.path())).unwrap_err().to_string().contains("root certificate file"));
        assert!(s.resolve(&none, None).unwrap_err().to_string().contains("needs sslrootcert"));
        let s = Settings { rootcert: Some("system".into()), ..Default::default() };
        assert!(s.resolve(&none, None).unwrap_err().to_string().contains("sslrootcert=system"));
        // require with a missing one goes on unverified, as libpq does.
        let s =
            Settings { mode: Some(SslMode::Require), rootcert: Some("/nonexistent.pem".into()), ..Default::default() };
        assert_eq!(s.resolve(&none, None).unwrap().rootcert, None);
        // The environment, then ~/.postgresql, fill in what the string leaves out.
        let env = |k: &str| match k {
            "PGSSLMODE" => Some("verify-ca".to_string()),
            "PGSSLROOTCERT" => Some(ca.display().to_string()),
            _ => None,
        };
        let r = Settings::default().resolve(&env, Some(home.path())).unwrap();
        assert_eq!((r.mode, r.rootcert.as_deref()), (SslMode::VerifyCa, Some(ca.as_path())));
        std::fs::create_dir(home.path().join(".postgresql")).unwrap();
        std::fs::write(home.path().join(".postgresql/root.crt"), "").unwrap();
        std::fs::write(home.path().join(".postgresql/postgresql.crt"), "").unwrap();
        let s = Settings { mode: Some(SslMode::Require), ..Default::default() };
        let r = s.resolve(&none, Some(home.path()));
        assert!(r.unwrap_err().to_string().contains("but not its private key"));
        std::fs::write(home.path().join(".postgresql/postgresql.key"), "").unwrap();
        let r = s.resolve(&none, Some(home.path())).unwrap();
        assert_eq!(r.rootcert, Some(home.path().join(".postgresql/root.crt")));
        assert!(r.cert.is_some());
        // An explicit setting wins over the environment.
        let s = Settings { mode: Some(SslMode::Disable), ..Default::default() };
        assert_eq!(s.resolve(&env, None).unwrap().mode, SslMode::Disable);
    }

    #[test]
    fn a_missing_root_certificate_is_a_clear_error() {
        let r =
            Resolved { mode: SslMode::VerifyFull, rootcert: Some("/nonexistent/ca.pem".into()), cert: None, crl: None };
        let e = client_config(&r).unwrap_err();
        assert!(e.to_string().starts_with("cannot read sslrootcert /nonexistent/ca.pem"), "{e}");
        assert!(e.downcast_ref::<Fatal>().is_some());
    }
}
