//! The streaming half of a capture: bytes from pg_dump are compressed with
//! zstd (each frame carrying a content checksum), hashed (SHA-256 of the
//! stored bytes) and uploaded as a multipart upload. Memory stays bounded: a
//! small channel between the compressor and the uploader, and at most
//! `PARTS_IN_FLIGHT` parts of `PART_SIZE` being sent. The upload only becomes
//! visible if the caller commits it; anything else aborts it, leaving
//! nothing behind: a `Pipe` dropped without `finish` aborts at once, in a
//! task of the caller's tracker, so that whoever stops a transfer can wait
//! for its uploads to be gone.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::store::crypt::Recipients;

pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// All cores, for one stream.
pub fn all_cores() -> u32 {
    std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1)
}
pub const PARTS_IN_FLIGHT: usize = 2;
const CHUNK: usize = 1024 * 1024;
const CHANNEL_CHUNKS: usize = 4;

#[derive(Debug, Clone)]
pub struct Stored {
    pub size: u64,
    pub sha256: String,
}

/// A compressed stream on its way to storage.
pub struct Pipe {
    pub tx: mpsc::Sender<Bytes>,
    commit: oneshot::Sender<bool>,
    task: tokio::task::JoinHandle<Result<Stored>>,
}

impl Pipe {
    /// Start a multipart upload of `key`, in a task of `tracker`; feed it
    /// through `tx`.
    pub fn start(tracker: &TaskTracker, store: std::sync::Arc<dyn ObjectStore>, key: Path) -> Self {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        let (commit, commit_rx) = oneshot::channel();
        let task = tracker.spawn(upload(store, key, rx, commit_rx));
        Pipe { tx, commit, task }
    }

    /// Whether the upload already stopped (it failed: storage error).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// End the stream, then make the object visible (`true`) or abort it
    /// (`false`). Clones of `tx` must have been dropped already.
    pub async fn finish(self, commit: bool) -> Result<Stored> {
        let Pipe { tx, commit: commit_tx, task } = self;
        drop(tx);
        let _ = commit_tx.send(commit);
        task.await.context("upload task panicked")?
    }
}

async fn upload(
    store: std::sync::Arc<dyn ObjectStore>,
    key: Path,
    mut rx: mpsc::Receiver<Bytes>,
    mut commit: oneshot::Receiver<bool>,
) -> Result<Stored> {
    let upload = store.put_multipart(&key).await.with_context(|| format!("starting upload of {key}"))?;
    let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    // Set once the owner has decided; `Some(true)` only after the last chunk.
    let mut decided = None;
    loop {
        let chunk = tokio::select! {
            chunk = rx.recv() => chunk,
            d = &mut commit, if decided.is_none() => {
                decided = Some(d == Ok(true));
                if decided == Some(false) {
                    break;
                }
                continue;
            }
        };
        let Some(chunk) = chunk else { break };
        if let Err(e) = w.wait_for_capacity(PARTS_IN_FLIGHT).await {
            let _ = w.abort().await;
            return Err(e).with_context(|| format!("uploading {key}"));
        }
        hasher.update(&chunk);
        size += chunk.len() as u64;
        w.put(chunk);
    }
    let commit = match decided {
        Some(d) => d,
        None => commit.await == Ok(true),
    };
    if !commit {
        w.abort().await.with_context(|| format!("aborting upload of {key}"))?;
        bail!("upload of {key} aborted");
    }
    w.finish().await.with_context(|| format!("completing upload of {key}"))?;
    Ok(Stored { size, sha256: hex::encode(hasher.finalize()) })
}

/// Read `input` to the end, compress it into `tx` with `threads` zstd
/// workers, encrypted to `seal`'s recipients if any. Blocking: run it on a
/// blocking thread. Adds the uncompressed bytes to `processed` as it goes.
pub fn compress(
    mut input: impl Read,
    tx: mpsc::Sender<Bytes>,
    level: i32,
    threads: u32,
    seal: &Recipients,
    processed: &AtomicU64,
) -> Result<u64> {
    let mut enc = zstd::stream::write::Encoder::new(seal.seal(ChannelWriter::new(tx))?, level)?;
    enc.include_checksum(true)?;
    if threads > 1 {
        enc.multithread(threads)?;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading the dump"),
        };
        enc.write_all(&buf[..n]).context("compressing")?;
        total += n as u64;
        processed.fetch_add(n as u64, Ordering::Relaxed);
    }
    enc.finish()?.finish()?.flush()?;
    Ok(total)
}

/// `Write` into a channel of `Bytes`, in chunks of about `CHUNK`.
struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        ChannelWriter { tx, buf: Vec::with_capacity(CHUNK) }
    }

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(chunk)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the upload stopped"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use std::sync::Arc;

    async fn roundtrip(data: Vec<u8>, commit: bool) -> (Result<Stored>, Arc<InMemory>) {
        let store = Arc::new(InMemory::new());
        let pipe = Pipe::start(&TaskTracker::new(), store.clone(), Path::from("db/b001/backup.dump.zst"));
        let tx = pipe.tx.clone();
        let processed = Arc::new(AtomicU64::new(0));
        let p = processed.clone();
        let none = Recipients::default();
        let n = tokio::task::spawn_blocking(move || compress(&data[..], tx, 3, 2, &none, &p)).await.unwrap().unwrap();
        assert_eq!(n, processed.load(Ordering::Relaxed));
        let stored = pipe.finish(commit).await;
        (stored, store)
    }

    #[tokio::test]
    async fn committed_stream_is_stored_compressed_and_hashed() {
        let data: Vec<u8> = (0..3_000_000u32).flat_map(|i| (i % 1000).to_le_bytes()).collect();
        let (stored, store) = roundtrip(data.clone(), true).await;
        let stored = stored.unwrap();
        let bytes = store.get(&Path::from("db/b001/backup.dump.zst")).await.unwrap().bytes().await.unwrap();
        assert_eq!(bytes.len() as u64, stored.size);
        assert!(stored.size < data.len() as u64 / 4, "compressed to {}", stored.size);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), data);
    }

    #[tokio::test]
    async fn a_pipe_dropped_mid_stream_aborts_its_upload_at_once() {
        let store = Arc::new(InMemory::new());
        let tracker = TaskTracker::new();
        let pipe = Pipe::start(&tracker, store.clone(), Path::from("db/b001/backup.dump.zst"));
        // A producer that is still sending when the owner goes away.
        let tx = pipe.tx.clone();
        tx.send(Bytes::from(vec![1u8; 1000])).await.unwrap();
        drop(pipe);
        tracker.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await.expect("the upload ended");
        assert!(store.get(&Path::from("db/b001/backup.dump.zst")).await.is_err());
        drop(tx);
    }

    #[tokio::test]
    async fn an_uncommitted_stream_leaves_nothing() {
        let (stored, store) = roundtrip(vec![7u8; 100_000], false).await;
        assert!(stored.is_err());
        assert!(store.get(&Path::from("db/b001/backup.dump.zst")).await.is_err());
    }
}
