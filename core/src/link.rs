//! Signed, expiring download links.
//!
//! `backups.url()` signs `name` and an expiry (unix seconds) with a secret
//! only the server side knows (the superuser-only GUC `backups.link_secret`,
//! the same value in the agent's configuration); the agent's HTTP endpoint
//! checks the signature in constant time before serving anything.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    #[error("the link secret is empty")]
    NoSecret,
    #[error("the link has expired")]
    Expired,
    #[error("the link signature is not valid")]
    BadSignature,
}

fn mac(secret: &[u8], name: &str, expires: i64) -> Result<HmacSha256, LinkError> {
    if secret.is_empty() {
        return Err(LinkError::NoSecret);
    }
    let mut m = HmacSha256::new_from_slice(secret).map_err(|_| LinkError::NoSecret)?;
    // The newline keeps ("b1", 23) and ("b12", 3) apart.
    m.update(name.as_bytes());
    m.update(b"\n");
    m.update(expires.to_string().as_bytes());
    Ok(m)
}

/// Hex HMAC-SHA256 of `name` and `expires`.
pub fn sign(secret: &[u8], name: &str, expires: i64) -> Result<String, LinkError> {
    Ok(hex::encode(mac(secret, name, expires)?.finalize().into_bytes()))
}

/// Check a link at time `now` (unix seconds). The signature comparison is
/// constant-time; expiry is checked after it so a forged link learns nothing.
pub fn verify(secret: &[u8], name: &str, expires: i64, signature: &str, now: i64) -> Result<(), LinkError> {
    let sig = hex::decode(signature).map_err(|_| LinkError::BadSignature)?;
    mac(secret, name, expires)?.verify_slice(&sig).map_err(|_| LinkError::BadSignature)?;
    if now > expires {
        return Err(LinkError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn signed_link_verifies_until_it_expires() {
        let s = sign(KEY, "b001", 1_000).unwrap();
        assert_eq!(s.len(), 64);
        assert_eq!(verify(KEY, "b001", 1_000, &s, 999), Ok(()));
        assert_eq!(verify(KEY, "b001", 1_000, &s, 1_000), Ok(()));
        assert_eq!(verify(KEY, "b001", 1_000, &s, 1_001), Err(LinkError::Expired));
    }

    #[test]
    fn tampering_is_refused() {
        let s = sign(KEY, "b001", 1_000).unwrap();
        assert_eq!(verify(KEY, "b002", 1_000, &s, 0), Err(LinkError::BadSignature));
        assert_eq!(verify(KEY, "b001", 2_000, &s, 0), Err(LinkError::BadSignature));
        assert_eq!(verify(b"another key", "b001", 1_000, &s, 0), Err(LinkError::BadSignature));
        let mut flipped = s.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        assert_eq!(verify(KEY, "b001", 1_000, std::str::from_utf8(&flipped).unwrap(), 0), Err(LinkError::BadSignature));
        assert_eq!(verify(KEY, "b001", 1_000, "zz", 0), Err(LinkError::BadSignature));
        assert_eq!(verify(KEY, "b001", 1_000, "", 0), Err(LinkError::BadSignature));
        // Name and expiry are separated, so they cannot slide into each other.
        assert_ne!(sign(KEY, "b1", 23).unwrap(), sign(KEY, "b12", 3).unwrap());
    }

    #[test]
    fn empty_secret_signs_nothing() {
        assert_eq!(sign(b"", "b001", 1), Err(LinkError::NoSecret));
    }
}
