//! The one way a stored object is read back: every byte is hashed as it
//! streams, and the stream ends in an error unless the whole object's
//! SHA-256 is the one recorded. Restores, download links and `pgbackups
//! download` all read through it. Decompression reads it to its very end
//! (the decoder takes any number of frames, so it asks for more until the
//! object ends), so a corrupt object is an error, never a clean end, even
//! where zstd itself would not notice; and zstd frames carry content
//! checksums of their own.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::Result;
use async_compression::tokio::bufread::ZstdDecoder;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use object_store::path::Path;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, BufReader};
use tokio_util::io::StreamReader;

use crate::store::crypt::Identities;
use crate::store::storage::Storage;

/// A stored object's bytes, checked at their end.
pub struct Verified {
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    hasher: Sha256,
    expected: String,
    key: Path,
    fetched: Option<Arc<AtomicU64>>,
    done: bool,
    identities: Arc<Identities>,
}

/// Open `key`, to be checked against `expected` (hex SHA-256); `fetched`
/// counts the stored bytes as they arrive.
pub async fn open(storage: &Storage, key: &Path, expected: &str, fetched: Option<Arc<AtomicU64>>) -> Result<Verified> {
    // The first GET now, so that a missing object fails here; a body that
    // breaks off later is resumed (`Storage::read`).
    let mut inner = storage.read(key).peekable();
    if let Some(Err(_)) = std::pin::Pin::new(&mut inner).peek().await {
        let e = inner.next().await.expect("peeked").expect_err("peeked an error");
        return Err(anyhow::Error::from(e).context(format!("reading {key}")));
    }
    let inner = inner.boxed();
    Ok(Verified {
        inner,
        hasher: Sha256::new(),
        expected: expected.to_string(),
        key: key.clone(),
        fetched,
        done: false,
        identities: storage.identities.clone(),
    })
}

impl Stream for Verified {
    type Item = std::io::Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                self.hasher.update(&chunk);
                if let Some(f) = &self.fetched {
                    f.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(Said(format!("reading {}: {e}", self.key))))))
            }
            Poll::Ready(None) => {
                self.done = true;
                let sum = hex::encode(std::mem::take(&mut self.hasher).finalize());
                if sum == self.expected {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        Said(format!(
                            "checksum mismatch for {}: stored object sha256 {sum}, recorded {}; the backup is corrupt",
                            self.key, self.expected
                        )),
                    ))))
                }
            }
        }
    }
}

/// An error this module words itself (storage, checksum), as opposed to
/// one from the decoder.
#[derive(Debug)]
struct Said(String);

impl std::fmt::Display for Said {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Said {}

/// The object decrypted (when its backup is `encrypted_to` age recipients:
/// with the storage's identities) and decompressed, read to its end: any
/// corruption is a read error. The only place stored bytes become plain.
pub async fn decompressed(object: Verified, encrypted_to: &[String]) -> Result<impl AsyncRead + Unpin + Send> {
    let key = object.key.to_string();
    let identities = object.identities.clone();
    let stored = StreamReader::new(object);
    let plain: Box<dyn AsyncRead + Unpin + Send> = if encrypted_to.is_empty() {
        Box::new(stored)
    } else {
        Box::new(identities.open(&key, encrypted_to, stored).await?)
    };
    let mut decoder = ZstdDecoder::new(BufReader::with_capacity(1 << 20, plain));
    decoder.multiple_members(true);
    Ok(ErrorAfterData { inner: decoder, error: None, key })
}

/// The decoder can hand back bytes and an error from one read, which
/// `AsyncRead` forbids (readers may drop the bytes, or assert): the bytes
/// come first, the error on the next read. The decoder's own errors (a
/// frame whose content checksum does not match, say) are said to be what
/// they are: corruption.
struct ErrorAfterData<R> {
    inner: R,
    error: Option<std::io::Error>,
    key: String,
}

impl<R> ErrorAfterData<R> {
    fn worded(&self, e: std::io::Error) -> std::io::Error {
        if e.get_ref().is_some_and(|inner| inner.is::<Said>()) {
            return e;
        }
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} does not decompress ({e}); the backup is corrupt", self.key),
        )
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for ErrorAfterData<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(e) = self.error.take() {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) => {
                let e = self.worded(e);
                if buf.filled().len() > before {
                    self.error = Some(e);
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    async fn read_back(bytes: Vec<u8>, expected: &str) -> std::io::Result<Vec<u8>> {
        let dir = tempfile::tempdir().unwrap();
        let s =
            Storage::open_url(&format!("file://{}", dir.path().display()), &BTreeMap::new(), Duration::from_secs(1))
                .unwrap();
        let key = Path::from("db/b001/backup.dump.zst");
        s.store.put(&key, bytes.into()).await.unwrap();
        let mut out = Vec::new();
        decompressed(open(&s, &key, expected, None).await.unwrap(), &[])
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .map(|_| out)
    }

    #[tokio::test]
    async fn the_whole_object_is_checked_even_where_zstd_sees_nothing_wrong() {
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let stored = zstd::encode_all(&plain[..], 3).unwrap();
        let sum = hex::encode(Sha256::digest(&stored));
        assert_eq!(read_back(stored.clone(), &sum).await.unwrap(), plain);
        // Bytes after the frame: zstd stops at its end, the check does not.
        let mut longer = stored.clone();
        longer.extend_from_slice(b"trailing");
        assert!(read_back(longer, &sum).await.is_err());
        // A flipped byte anywhere.
        for at in [10, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 1;
            let e = read_back(bad, &sum).await.expect_err("a flipped byte went unnoticed").to_string();
            assert!(e.contains("corrupt"), "{at}: {e}");
        }
        // The right bytes with the wrong record.
        let e = read_back(stored, &"0".repeat(64)).await.unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }

    #[tokio::test]
    async fn an_encrypted_object_is_checked_then_decrypted_and_any_damage_is_corruption() {
        use crate::store::crypt::{Identities, Recipients};
        use age::secrecy::ExposeSecret;
        let dir = tempfile::tempdir().unwrap();
        let key = age::x25519::Identity::generate();
        let key_file = dir.path().join("key.txt");
        std::fs::write(&key_file, format!("{}\n", key.to_string().expose_secret())).unwrap();
        let to = Recipients::parse(&[key.to_public().to_string()]).unwrap();
        let mut s =
            Storage::open_url(&format!("file://{}", dir.path().display()), &BTreeMap::new(), Duration::from_secs(1))
                .unwrap();
        s.identities = Arc::new(Identities::load(&[key_file]).unwrap());
        let plain: Vec<u8> = (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let stored = to.seal_bytes(zstd::encode_all(&plain[..], 3).unwrap()).unwrap();
        let key = Path::from("db/b001/backup.dump.zst.age");
        let read = |bytes: Vec<u8>, sum: String| {
            let (s, key, names) = (s.clone(), key.clone(), to.names());
            async move {
                s.store.put(&key, bytes.into()).await.unwrap();
                let mut out = Vec::new();
                let r = decompressed(open(&s, &key, &sum, None).await.unwrap(), &names).await;
                match r {
                    Ok(mut r) => r.read_to_end(&mut out).await.map(|_| out).map_err(anyhow::Error::from),
                    Err(e) => Err(e),
                }
            }
        };
        let sum = hex::encode(Sha256::digest(&stored));
        assert_eq!(read(stored.clone(), sum.clone()).await.unwrap(), plain);
        // The header, the payload, the last chunk; and bytes cut off the end.
        for at in [40, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.clone();
            bad[at] ^= 1;
            let e = format!("{:#}", read(bad, sum.clone()).await.expect_err("a flipped byte went unnoticed"));
            assert!(e.contains("corrupt"), "{at}: {e}");
        }
        let e = format!("{:#}", read(stored[..stored.len() - 100].to_vec(), sum.clone()).await.unwrap_err());
        assert!(e.contains("corrupt") || e.contains("checksum mismatch"), "{e}");
        let e = format!("{:#}", read(stored, "0".repeat(64)).await.unwrap_err());
        assert!(e.contains("checksum mismatch"), "{e}");
    }
}
