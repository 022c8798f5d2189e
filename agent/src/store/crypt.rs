//! Encryption at rest with age (X25519): captures write every stored
//! object (the dump, each file of a directory-format dump, the manifest)
//! through `Recipients::seal`, and every reader gets the plain bytes back
//! through `Identities::open`. The SHA-256 recorded is always that of the
//! stored, encrypted bytes, checked before anything is decrypted.
//!
//! age's X25519 stanzas do not say whom a file is encrypted to, so the
//! recipients are recorded with the backup (`transfers.encrypted_to`) and
//! named when this agent holds none of their identities.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use age::x25519;
use anyhow::{anyhow, bail, Context, Result};
use tokio::io::AsyncRead;
use tokio_util::compat::{FuturesAsyncReadCompatExt, TokioAsyncReadCompatExt};

/// The public keys new captures are encrypted to (`--encrypt-to`); none:
/// stored as they are.
#[derive(Clone, Default)]
pub struct Recipients(Vec<x25519::Recipient>);

impl std::fmt::Debug for Recipients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl Recipients {
    /// Parse `age1...` recipients, refusing anything else by name.
    pub fn parse(list: &[String]) -> Result<Recipients> {
        let mut out: Vec<x25519::Recipient> = Vec::new();
        for s in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
            let r: x25519::Recipient = s.parse().map_err(|e| {
                // What is not even shaped like a recipient may be the
                // secret key itself (AGE-SECRET-KEY-1...), given by mistake:
                // never echoed into logs.
                let given = if s.starts_with("age1") { format!("{s:?}") } else { "(a value not shown)".into() };
                anyhow!(
                    "--encrypt-to {given} is not an age X25519 recipient ({e}): expected age1... \
                     (age-keygen -y KEYFILE prints the recipient of an identity file)"
                )
            })?;
            if !out.contains(&r) {
                out.push(r);
            }
        }
        Ok(Recipients(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The recipients as `age1...` strings, as recorded with a backup.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|r| r.to_string()).collect()
    }

    /// `w`, writing what it is given encrypted to these recipients (or
    /// plain, with none). `Sealed::finish` writes the last chunk.
    pub fn seal<W: Write>(&self, w: W) -> Result<Sealed<W>> {
        if self.0.is_empty() {
            return Ok(Sealed::Plain(w));
        }
        let enc = age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| anyhow!("encrypting: {e}"))?;
        Ok(Sealed::Age(enc.wrap_output(w).context("writing the age header")?))
    }

    /// Small objects (the manifest), whole.
    pub fn seal_bytes(&self, plain: Vec<u8>) -> Result<Vec<u8>> {
        if self.0.is_empty() {
            return Ok(plain);
        }
        let mut w = self.seal(Vec::with_capacity(plain.len() + 256))?;
        w.write_all(&plain)?;
        Ok(w.finish()?)
    }
}

/// A writer that encrypts, or not.
pub enum Sealed<W: Write> {
    Plain(W),
    Age(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealed<W> {
    /// End the stream (age's last chunk), handing back the inner writer.
    pub fn finish(self) -> std::io::Result<W> {
        match self {
            Sealed::Plain(w) => Ok(w),
            Sealed::Age(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Sealed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sealed::Plain(w) => w.write(buf),
            Sealed::Age(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sealed::Plain(w) => w.flush(),
            Sealed::Age(w) => w.flush(),
        }
    }
}

/// The secret keys this agent decrypts with (`--identity-file`).
#[derive(Clone, Default)]
pub struct Identities {
    keys: Vec<x25519::Identity>,
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        write!(f, "{} age identities from {:?}", self.keys.len(), self.files)
    }
}

impl Identities {
    /// Read age identity files (`age-keygen -o FILE`: `#` comments and
    /// `AGE-SECRET-KEY-1...` lines), each of which must hold a key.
    pub fn load(files: &[PathBuf]) -> Result<Identities> {
        let mut keys = Vec::new();
        for file in files {
            let found = read_identity_file(file)?;
            if found.is_empty() {
                bail!(
                    "the identity file {} holds no age identity (AGE-SECRET-KEY-1...): make one with age-keygen -o {}",
                    file.display(),
                    file.display()
                );
            }
            keys.extend(found);
        }
        Ok(Identities { keys, files: files.to_vec() })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The recipients these keys are the identities of (`age1...`).
    pub fn public_names(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.to_public().to_string()).collect()
    }

    /// Whether one of these keys is the identity of `recipient` (`age1...`).
    fn holds_any(&self, recipients: &[String]) -> bool {
        self.keys.iter().any(|k| recipients.contains(&k.to_public().to_string()))
    }

    /// Why `what`, encrypted to `recipients`, cannot be read here.
    fn not_held(&self, what: &str, recipients: &[String]) -> anyhow::Error {
        let held = if self.files.is_empty() {
            "this agent has no --identity-file".to_string()
        } else {
            let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
            format!("none of the identities in {} matches", files.join(", "))
        };
        anyhow!(
            "{what} is encrypted with age to {}, and {held}: pass the --identity-file (PGBACKUPS_IDENTITY_FILE) \
             holding the secret key of one of those recipients",
            recipients.join(", ")
        )
    }

    /// The plain bytes of a stored object encrypted to `recipients` (as
    /// recorded with its backup), decrypted as they are read.
    pub async fn open<R>(
        &self,
        what: &str,
        recipients: &[String],
        stored: R,
    ) -> Result<impl AsyncRead + Unpin + Send + use<R>>
    where
        R: AsyncRead + Unpin + Send,
    {
        if !self.holds_any(recipients) {
            return Err(self.not_held(what, recipients));
        }
        let buffered = tokio::io::BufReader::with_capacity(1 << 16, stored).compat();
        let d = age::Decryptor::new_async_buffered(buffered).await.map_err(|e| unreadable(what, e))?;
        match d.decrypt_async(self.keys.iter().map(|k| k as &dyn age::Identity)) {
            Ok(plain) => Ok(plain.compat()),
            Err(e) => Err(damaged(what, e)),
        }
    }

    /// A small object whose recipients are not known before it is read (a
    /// manifest found in storage), whole: None when none of these keys
    /// opens it (or there are none).
    pub fn try_open_bytes(&self, what: &str, stored: &[u8]) -> Result<Option<Vec<u8>>> {
        if self.keys.is_empty() {
            return Ok(None);
        }
        let d = age::Decryptor::new_buffered(stored).map_err(|e| unreadable(what, e))?;
        let mut r = match d.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)) {
            Ok(r) => r,
            Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
            Err(e) => return Err(damaged(what, e)),
        };
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).map_err(|e| anyhow!("{what} does not decrypt ({e}); the backup is corrupt"))?;
        Ok(Some(plain))
    }

    /// The plain bytes of a stored object encrypted to `recipients`, as a
    /// reader that seeks (age's chunks decrypt alone): for reading parts of
    /// it (`store::ranges`).
    pub fn open_seekable<R: std::io::Read + std::io::Seek>(
        &self,
        what: &str,
        recipients: &[String],
        stored: R,
    ) -> Result<age::stream::StreamReader<R>> {
        if !self.holds_any(recipients) {
            return Err(self.not_held(what, recipients));
        }
        let d = age::Decryptor::new(stored).map_err(|e| unreadable(what, e))?;
        d.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)).map_err(|e| damaged(what, e))
    }

    /// A small object (the manifest), whole.
    pub fn open_bytes(&self, what: &str, recipients: &[String], stored: &[u8]) -> Result<Vec<u8>> {
        if !self.holds_any(recipients) {
            return Err(self.not_held(what, recipients));
        }
        let d = age::Decryptor::new_buffered(stored).map_err(|e| unreadable(what, e))?;
        let mut r = d.decrypt(self.keys.iter().map(|k| k as &dyn age::Identity)).map_err(|e| damaged(what, e))?;
        let mut plain = Vec::new();
        r.read_to_end(&mut plain).map_err(|e| anyhow!("{what} does not decrypt ({e}); the backup is corrupt"))?;
        Ok(plain)
    }
}

/// An age header that could not be read: storage failed (its error says
/// why), or what is stored is not what was written.
fn unreadable(what: &str, e: age::DecryptError) -> anyhow::Error {
    match e {
        age::DecryptError::Io(e) => anyhow::Error::from(e).context(format!("reading {what}")),
        e => anyhow!("{what} is not an age-encrypted object ({e}); the backup is corrupt"),
    }
}

/// A header that does not open although one of our identities is among
/// the recorded recipients: it was damaged.
fn damaged(what: &str, e: age::DecryptError) -> anyhow::Error {
    anyhow!("{what} does not decrypt with this agent's identity of its recipient ({e}); the backup is corrupt")
}

/// The identities in one file; what is not a comment must be a key, and a
/// line that is not is named by number only (it may be a secret).
fn read_identity_file(file: &Path) -> Result<Vec<x25519::Identity>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading the identity file {}", file.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key: x25519::Identity = line.parse().map_err(|e| {
            anyhow!(
                "the identity file {}, line {}: not an age X25519 identity ({e}); expected AGE-SECRET-KEY-1... \
                 as age-keygen writes it",
                file.display(),
                i + 1
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use age::secrecy::ExposeSecret;
    use tokio::io::AsyncReadExt;

    fn key_file(dir: &Path, name: &str, keys: &[&x25519::Identity]) -> PathBuf {
        let path = dir.join(name);
        let mut text = String::from("# created: by a test\n");
        for k in keys {
            text.push_str(&format!("# public key: {}\n{}\n", k.to_public(), k.to_string().expose_secret()));
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn what_is_sealed_opens_with_a_matching_identity_only() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (x25519::Identity::generate(), x25519::Identity::generate());
        let to = Recipients::parse(&[a.to_public().to_string()]).unwrap();
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let stored = to.seal_bytes(plain.clone()).unwrap();
        assert!(stored.starts_with(b"age-encryption.org/v1"));
        let names = to.names();

        let ours = Identities::load(&[key_file(dir.path(), "a.txt", &[&b, &a])]).unwrap();
        assert_eq!(ours.open_bytes("x", &names, &stored).unwrap(), plain);
        let mut out = Vec::new();
        ours.open("x", &names, &stored[..]).await.unwrap().read_to_end(&mut out).await.unwrap();
        assert_eq!(out, plain);

        let theirs = Identities::load(&[key_file(dir.path(), "b.txt", &[&b])]).unwrap();
        let e = theirs.open_bytes("b001", &names, &stored).unwrap_err().to_string();
        assert!(e.contains(&names[0]) && e.contains("--identity-file") && e.contains("b.txt"), "{e}");
        let e = Identities::default().open("b001", &names, &stored[..]).await.err().unwrap().to_string();
        assert!(e.contains("has no --identity-file") && e.contains(&names[0]), "{e}");

        // A flipped byte in the payload does not decrypt.
        let mut bad = stored.clone();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        assert!(ours.open_bytes("x", &names, &bad).is_err());
    }

    #[test]
    fn bad_recipients_and_identity_files_are_refused_clearly() {
        let e = Recipients::parse(&["age1nope".into()]).unwrap_err().to_string();
        assert!(e.contains("age1nope") && e.contains("not an age X25519 recipient"), "{e}");
        // A secret key passed as a recipient by mistake is not repeated.
        let secret = x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&secret.to_string()).to_string();
        let e = Recipients::parse(std::slice::from_ref(&secret)).unwrap_err().to_string();
        assert!(e.contains("not an age X25519 recipient") && !e.contains(&secret[15..]), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = Identities::load(&[dir.path().join("missing")]).unwrap_err().to_string();
        assert!(e.contains("reading the identity file"), "{e}");
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "# nothing here\n").unwrap();
        let e = Identities::load(&[empty]).unwrap_err().to_string();
        assert!(e.contains("holds no age identity"), "{e}");
        let junk = dir.path().join("junk.txt");
        std::fs::write(&junk, "# a comment\nAGE-SECRET-KEY-1SECRETISH\n").unwrap();
        let e = Identities::load(&[junk]).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("SECRETISH"), "{e}");
    }
}
