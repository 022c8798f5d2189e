//! A stored custom-format backup read in pieces, never whole: the frames
//! that hold its head, then those that hold one table's data
//! (`contents::Position`), fetched with range reads, decrypted (age's
//! stream is made of chunks, each decrypted alone) and decompressed (the
//! archive is stored as independent zstd frames). What arrives is proven
//! by what the capture recorded in the control database (the head's and
//! each table's SHA-256), not by the whole object's checksum, which only a
//! whole read could check. Every byte fetched is counted.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use object_store::path::Path;
use object_store::ObjectStore;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::store::crypt::Identities;
use crate::store::storage::Storage;

/// The first fetch after a seek; each next one in a row is twice the last,
/// up to `MAX_PIECE`, so that a small table costs little more than its
/// frames and a large one streams in few requests.
const FIRST_PIECE: u64 = 256 << 10;
const MAX_PIECE: u64 = 8 << 20;
/// Decompressed pieces handed on at a time.
const HANDED: usize = 256 << 10;

/// One stored object, read with range requests as a `Read + Seek`.
struct Ranges {
    store: Arc<dyn ObjectStore>,
    key: Path,
    size: u64,
    pos: u64,
    buf: Bytes,
    buf_at: u64,
    piece: u64,
    fetched: Arc<AtomicU64>,
    rt: tokio::runtime::Handle,
}

impl Read for Ranges {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || out.is_empty() {
            return Ok(0);
        }
        let inside = self.pos >= self.buf_at && self.pos < self.buf_at + self.buf.len() as u64;
        if !inside {
            let sequential = self.pos == self.buf_at + self.buf.len() as u64 && !self.buf.is_empty();
            self.piece = if sequential { (self.piece * 2).min(MAX_PIECE) } else { FIRST_PIECE };
            let end = (self.pos + self.piece).min(self.size);
            let (store, key, range) = (self.store.clone(), self.key.clone(), self.pos..end);
            let bytes = self
                .rt
                .block_on(async move { store.get_range(&key, range).await })
                .map_err(|e| std::io::Error::other(format!("reading {}: {e}", self.key)))?;
            if bytes.len() as u64 != end - self.pos {
                return Err(std::io::Error::other(format!("{} ended early: it is truncated", self.key)));
            }
            self.fetched.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            self.buf_at = self.pos;
            self.buf = bytes;
        }
        let from = (self.pos - self.buf_at) as usize;
        let n = out.len().min(self.buf.len() - from);
        out[..n].copy_from_slice(&self.buf[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Ranges {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.size as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if pos < 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a seek before the start"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

trait ReadSeek: Read + Seek + Send {}
impl<T: Read + Seek + Send> ReadSeek for T {}

/// A backup's stored archive, to be read in pieces.
#[derive(Clone)]
pub struct Archive {
    store: Arc<dyn ObjectStore>,
    key: Path,
    size: u64,
    recipients: Vec<String>,
    identities: Arc<Identities>,
    /// Stored bytes fetched so far.
    pub fetched: Arc<AtomicU64>,
}

impl Archive {
    /// The object `key` of a backup encrypted to `recipients` (none: plain).
    pub async fn open(storage: &Storage, key: &Path, recipients: &[String]) -> Result<Archive> {
        let meta = storage.store.head(key).await.with_context(|| format!("reading {key}"))?;
        Ok(Archive {
            store: storage.store.clone(),
            key: key.clone(),
            size: meta.size,
            recipients: recipients.to_vec(),
            identities: storage.identities.clone(),
            fetched: Arc::default(),
        })
    }

    /// The archive's bytes from `skip` bytes into the frame that starts at
    /// stored offset `from`, for `len` bytes (None: to the end, for as long
    /// as they are read). Stored bytes are fetched as the reader reads, in
    /// pieces that grow while it reads on (at most one piece past `to`).
    pub fn read(&self, from: u64, to: Option<u64>, skip: u64, len: Option<u64>) -> impl AsyncRead + Send + Unpin {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(2);
        let this = self.clone();
        let rt = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = this.produce(rt, from, to, skip, len, &tx) {
                let _ = tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|b| (b, rx)) });
        StreamReader::new(Box::pin(stream))
    }

    fn produce(
        &self,
        rt: tokio::runtime::Handle,
        from: u64,
        to: Option<u64>,
        skip: u64,
        len: Option<u64>,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> Result<()> {
        let raw = Ranges {
            store: self.store.clone(),
            key: self.key.clone(),
            size: self.size,
            pos: 0,
            buf: Bytes::new(),
            buf_at: 0,
            piece: FIRST_PIECE,
            fetched: self.fetched.clone(),
            rt,
        };
        let mut plain: Box<dyn ReadSeek> = if self.recipients.is_empty() {
            Box::new(raw)
        } else {
            Box::new(self.identities.open_seekable(self.key.as_ref(), &self.recipients, raw)?)
        };
        plain.seek(SeekFrom::Start(from))?;
        let frames: Box<dyn Read + Send> = match to {
            Some(to) => Box::new(plain.take(to.saturating_sub(from))),
            None => Box::new(plain),
        };
        let mut z = zstd::stream::read::Decoder::new(frames)
            .with_context(|| format!("{} does not decompress; the backup is corrupt", self.key))?;
        std::io::copy(&mut (&mut z).take(skip), &mut std::io::sink())
            .with_context(|| format!("{} does not decompress; the backup is corrupt", self.key))?;
        let mut left = len.unwrap_or(u64::MAX);
        let mut buf = vec![0u8; HANDED];
        while left > 0 {
            let want = (buf.len() as u64).min(left) as usize;
            let n = z
                .read(&mut buf[..want])
                .with_context(|| format!("{} does not decompress; the backup is corrupt", self.key))?;
            if n == 0 {
                if len.is_some() {
                    anyhow::bail!("{} ends before the data it was to hold: the backup is corrupt", self.key);
                }
                break;
            }
            left -= n as u64;
            if tx.blocking_send(Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                break; // the reader has what it needed
            }
        }
        Ok(())
    }
}
