//! Restores from a URL reach out of the agent's network on a user's word,
//! so what they may fetch is decided here: http(s) only; no loopback,
//! private, link-local or cloud-metadata address (checked on every address a
//! name resolves to and on every redirect, so a name cannot be re-pointed
//! between check and connect) unless the configuration allows them; a size
//! and a time limit. A URL is named in messages without its credentials or
//! query string.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::config::UrlPolicy;

/// How many redirects a download follows.
const MAX_REDIRECTS: usize = 5;

/// A client that fetches only what `policy` allows.
pub fn client(policy: &UrlPolicy) -> Result<reqwest::Client> {
    let allow = policy.allow_private;
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else if let Err(e) = check(attempt.url(), allow) {
            attempt.error(e.to_string())
        } else {
            attempt.follow()
        }
    });
    Ok(reqwest::Client::builder()
        .redirect(redirects)
        .dns_resolver(Arc::new(Resolver { allow }))
        .no_proxy()
        .connect_timeout(Duration::from_secs(30))
        .timeout(policy.timeout)
        .build()?)
}

/// The scheme, and the host when it is an address (names are checked when
/// resolved).
pub fn check(url: &url::Url, allow_private: bool) -> Result<()> {
    if !matches!(url.scheme(), "http" | "https") {
        bail!("only http and https URLs can be restored from, not {}", url.scheme());
    }
    let ip = match url.host() {
        Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
        Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
        Some(url::Host::Domain(_)) => return Ok(()),
        None => bail!("{} has no host", redact(url)),
    };
    if !allow_private && !is_public(ip) {
        bail!("{} is a {} address{}", redact(url), kind(ip), REFUSED);
    }
    Ok(())
}

const REFUSED: &str = ": refused (set allow_private_urls in the agent's configuration to restore from such addresses)";

/// A URL fit for messages: no user, password, query or fragment.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let hidden = u.query().is_some() || u.fragment().is_some();
    u.set_query(None);
    u.set_fragment(None);
    if hidden {
        format!("{u}?***")
    } else {
        u.to_string()
    }
}

/// Resolves names, keeping only the addresses the policy allows.
struct Resolver {
    allow: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow = self.allow;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                addrs.into_iter().partition(|a| allow || is_public(a.ip()));
            if ok.is_empty() {
                let what = refused.first().map(|a| kind(a.ip())).unwrap_or("unknown");
                return Err(format!("{host} resolves to a {what} address{REFUSED}").into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(ok.into_iter());
            Ok(addrs)
        })
    }
}

/// An address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    kind(ip) == "public"
}

/// What kind of address this is, for the refusal.
fn kind(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(a) => kind_v4(a),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => kind_v4(v4),
            None => kind_v6(a),
        },
    }
}

fn kind_v4(a: Ipv4Addr) -> &'static str {
    let [o1, o2, o3, _] = a.octets();
    if a.is_loopback() {
        "loopback"
    } else if a.is_link_local() {
        // 169.254.169.254 is where clouds serve instance metadata.
        "link-local (cloud metadata)"
    } else if a.is_private() || (o1 == 100 && (o2 & 0xc0) == 64) {
        // 100.64/10 (shared address space) holds some clouds' metadata too.
        "private"
    } else if a.is_unspecified()
        || a.is_broadcast()
        || a.is_multicast()
        || o1 == 0
        || o1 >= 240
        || (o1 == 192 && o2 == 0 && o3 == 0)
        || (o1 == 198 && (o2 & 0xfe) == 18)
    {
        "reserved"
    } else {
        "public"
    }
}

fn kind_v6(a: Ipv6Addr) -> &'static str {
    let seg = a.segments();
    let first = seg[0];
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from(((hi as u32) << 16) | lo as u32);
    // Addresses that carry an IPv4 address reach it: judge that one.
    if seg[..6] == [0; 6] && !a.is_loopback() && !a.is_unspecified() {
        return kind_v4(v4(seg[6], seg[7])); // ::a.b.c.d (IPv4-compatible)
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return kind_v4(v4(seg[6], seg[7])); // NAT64
    }
    if first == 0x2002 {
        return kind_v4(v4(seg[1], seg[2])); // 6to4
    }
    if a.is_loopback() {
        "loopback"
    } else if a.is_unspecified() || a.is_multicast() {
        "reserved"
    } else if (first & 0xffc0) == 0xfe80 {
        "link-local (cloud metadata)"
    } else if (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfec0 || (first == 0x64 && seg[1] == 0xff9b) {
        // Unique local (fd00:ec2::254, AWS's metadata, among them), the old
        // site-local, local-use NAT64.
        "private"
    } else if (first == 0x2001 && (seg[1] == 0 || seg[1] == 0xdb8)) || (first & 0xe000) != 0x2000 {
        // Teredo tunnels, documentation, and everything outside 2000::/3.
        "reserved"
    } else {
        "public"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_metadata_addresses_are_not_public() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
        ] {
            assert!(!is_public(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "8.8.8.8", "2606:4700::1111"] {
            assert!(is_public(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        assert!(check(&u("http://127.0.0.1:8432/x.dump"), false).is_err());
        assert!(check(&u("http://127.0.0.1:8432/x.dump"), true).is_ok());
        assert!(check(&u("http://[::1]/x"), false).is_err());
        assert!(check(&u("http://169.254.169.254/latest/meta-data/"), false).is_err());
        assert!(check(&u("https://backups.example.com/x.dump"), false).is_ok());
        assert!(check(&u("ftp://example.com/x.dump"), true).is_err());
        assert_eq!(
            redact(&u("https://alice:s3cret@example.com/b001.dump?expires=1&signature=abc#x")),
            "https://example.com/b001.dump?***"
        );
        assert_eq!(redact(&u("https://example.com/b001.dump")), "https://example.com/b001.dump");
    }
}
