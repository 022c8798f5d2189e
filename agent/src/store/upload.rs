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

/// The uncompressed size of each zstd frame. Frames are compressed
/// independently (on all cores at once), so that any of them can be
/// decompressed alone: a table's data is read back from the frames that
/// hold it, without the rest of the backup (`store::ranges`).
pub const FRAME: usize = 2 << 20;

/// What `compress` wrote: the bytes it read, and each frame's size
/// (uncompressed, compressed), in order.
#[derive(Debug, Default)]
pub struct Compressed {
    pub size: u64,
    pub frames: Vec<(u64, u64)>,
}

/// Read `input` to the end, compress it into `tx` as independent zstd
/// frames of `FRAME` bytes on `threads` threads, followed by a seek table
/// (zstd's seekable format: a skippable frame that `zstd -d` and every
/// decoder pass over), encrypted to `seal`'s recipients if any. Blocking:
/// run it on a blocking thread. Adds the uncompressed bytes to `processed`
/// as it goes.
pub fn compress(
    mut input: impl Read,
    tx: mpsc::Sender<Bytes>,
    level: i32,
    threads: u32,
    seal: &Recipients,
    processed: &AtomicU64,
) -> Result<Compressed> {
    let mut sink = Frames { out: seal.seal(ChannelWriter::new(tx))?, done: Compressed::default() };
    let mut read = || -> Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; FRAME];
        let mut n = 0;
        while n < FRAME {
            match input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("reading the dump"),
            }
        }
        processed.fetch_add(n as u64, Ordering::Relaxed);
        buf.truncate(n);
        Ok((n > 0).then_some(buf))
    };
    if threads <= 1 {
        let mut z = frame_compressor(level)?;
        while let Some(plain) = read()? {
            let frame = z.compress(&plain).context("compressing")?;
            sink.frame(plain.len(), frame)?;
        }
    } else {
        sink = std::thread::scope(|s| -> Result<Frames> {
            let (work, jobs) = std::sync::mpsc::sync_channel::<(u64, Vec<u8>)>(threads as usize);
            let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
            let (finished, results) = std::sync::mpsc::sync_channel::<(u64, usize, Result<Vec<u8>>)>(threads as usize);
            for _ in 0..threads {
                let (jobs, finished) = (jobs.clone(), finished.clone());
                s.spawn(move || {
                    let mut z = frame_compressor(level);
                    loop {
                        let job = jobs.lock().expect("the job queue").recv();
                        let Ok((seq, plain)) = job else { break };
                        let frame = match &mut z {
                            Ok(z) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| z.compress(&plain)))
                                .unwrap_or_else(|_| Err(std::io::Error::other("a compressor thread panicked")))
                                .context("compressing"),
                            Err(e) => Err(anyhow::anyhow!("{e:#}")),
                        };
                        if finished.send((seq, plain.len(), frame)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop((jobs, finished));
            let writer = s.spawn(move || -> Result<Frames> {
                let mut waiting = std::collections::BTreeMap::new();
                let mut next = 0u64;
                for (seq, plain, frame) in results {
                    waiting.insert(seq, (plain, frame));
                    while let Some((plain, frame)) = waiting.remove(&next) {
                        sink.frame(plain, frame?)?;
                        next += 1;
                    }
                }
                if !waiting.is_empty() {
                    bail!("a compressor thread stopped: frames of the dump are missing");
                }
                Ok(sink)
            });
            let mut seq = 0u64;
            let reading = loop {
                match read() {
                    Ok(Some(plain)) => {
                        if work.send((seq, plain)).is_err() {
                            break Ok(()); // the writer stopped: its error says why
                        }
                        seq += 1;
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            drop(work);
            let written = writer.join().map_err(|_| anyhow::anyhow!("the compressor's writer panicked"))?;
            reading?;
            written
        })?;
    }
    if sink.done.frames.is_empty() {
        // An empty input is still one (empty) frame, as zstd writes it.
        let frame = frame_compressor(level)?.compress(&[]).context("compressing")?;
        sink.frame(0, frame)?;
    }
    let Frames { mut out, done } = sink;
    out.write_all(&seek_table(&done.frames)).context("compressing")?;
    out.finish()?.flush()?;
    Ok(done)
}

/// Where compressed frames go, in order, and what was written.
struct Frames {
    out: crate::store::crypt::Sealed<ChannelWriter>,
    done: Compressed,
}

impl Frames {
    fn frame(&mut self, plain: usize, frame: Vec<u8>) -> Result<()> {
        self.out.write_all(&frame).context("compressing")?;
        self.done.size += plain as u64;
        self.done.frames.push((plain as u64, frame.len() as u64));
        Ok(())
    }
}

/// One frame's compressor: zstd at `level`, each frame with its content
/// checksum.
fn frame_compressor(level: i32) -> Result<zstd::bulk::Compressor<'static>> {
    let mut z = zstd::bulk::Compressor::new(level).context("starting zstd")?;
    z.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true)).context("starting zstd")?;
    Ok(z)
}

/// zstd's seek table (contrib/seekable_format): a skippable frame listing
/// each frame's compressed and uncompressed size, then their number, a
/// descriptor (no checksums) and the seekable format's magic number.
pub fn seek_table(frames: &[(u64, u64)]) -> Vec<u8> {
    let body = frames.len() * 8 + 9;
    let mut t = Vec::with_capacity(8 + body);
    t.extend_from_slice(&0x184D_2A5Eu32.to_le_bytes());
    t.extend_from_slice(&(body as u32).to_le_bytes());
    for &(plain, stored) in frames {
        t.extend_from_slice(&(stored as u32).to_le_bytes());
        t.extend_from_slice(&(plain as u32).to_le_bytes());
    }
    t.extend_from_slice(&(frames.len() as u32).to_le_bytes());
    t.push(0);
    t.extend_from_slice(&0x8F92_EAB1u32.to_le_bytes());
    t
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
        assert_eq!(n.size, processed.load(Ordering::Relaxed));
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
    async fn frames_decompress_alone_and_the_seek_table_lists_them() {
        let data: Vec<u8> = (0..2_500_000u32).flat_map(|i| (i % 777).to_le_bytes()).collect();
        let store = Arc::new(InMemory::new());
        let pipe = Pipe::start(&TaskTracker::new(), store.clone(), Path::from("k"));
        let (tx, d) = (pipe.tx.clone(), data.clone());
        let done =
            tokio::task::spawn_blocking(move || compress(&d[..], tx, 3, 3, &Recipients::default(), &AtomicU64::new(0)))
                .await
                .unwrap()
                .unwrap();
        pipe.finish(true).await.unwrap();
        let bytes = store.get(&Path::from("k")).await.unwrap().bytes().await.unwrap();
        assert_eq!(done.frames.len(), data.len().div_ceil(FRAME));
        let (mut u, mut c) = (0usize, 0usize);
        for &(plain, stored) in &done.frames {
            let frame = &bytes[c..c + stored as usize];
            assert_eq!(zstd::decode_all(frame).unwrap(), &data[u..u + plain as usize]);
            u += plain as usize;
            c += stored as usize;
        }
        assert_eq!(&bytes[c..], &seek_table(&done.frames)[..]);
        assert_eq!(&bytes[bytes.len() - 4..], &0x8F92_EAB1u32.to_le_bytes());
        // The whole object is still one stream any decoder takes.
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), data);
    }

    /// Not a test: `cargo test --release -p pgbackups --bin pgbackups
    /// frames_against_one_multithreaded_frame -- --ignored --nocapture`
    /// times compress() against zstd's own multithreaded single frame (what
    /// captures used before frames) on COPY-like text, on all cores.
    #[test]
    #[ignore]
    fn frames_against_one_multithreaded_frame() {
        use std::time::Instant;
        let mut data = Vec::with_capacity(600 << 20);
        let mut x: u64 = 42;
        let mut i = 0u64;
        while data.len() < 600 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            i += 1;
            data.extend_from_slice(
                format!(
                    "{i}\t{}\t{{\"ua\": \"Mozilla/5.0 {}\", \"session\": \"{:016x}{:016x}\"}}\t{}.{:02}\t2026-0{}-1{} 12:{:02}:00+00\n",
                    1 + x % 1_000_000,
                    x % 100,
                    x,
                    x.rotate_left(17),
                    x % 500,
                    x % 100,
                    1 + x % 9,
                    x % 10,
                    x % 60
                )
                .as_bytes(),
            );
        }
        let threads = all_cores();
        for round in 0..2 {
            let t = Instant::now();
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
            enc.include_checksum(true).unwrap();
            enc.multithread(threads).unwrap();
            std::io::Write::write_all(&mut enc, &data).unwrap();
            let one = enc.finish().unwrap().len();
            let mt = t.elapsed();
            let (tx, mut rx) = mpsc::channel::<Bytes>(64);
            let sink = std::thread::spawn(move || {
                let mut n = 0;
                while let Some(b) = rx.blocking_recv() {
                    n += b.len();
                }
                n
            });
            let t = Instant::now();
            compress(&data[..], tx, 3, threads, &Recipients::default(), &AtomicU64::new(0)).unwrap();
            let framed = sink.join().unwrap();
            let fr = t.elapsed();
            println!(
                "round {round}: {} MB; one multithreaded frame {mt:?} ({one} bytes); frames {fr:?} ({framed} bytes)",
                data.len() >> 20
            );
        }
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
