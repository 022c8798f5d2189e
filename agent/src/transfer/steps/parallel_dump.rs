//! Parallel capture: `pg_dump -Fd -j N` writes one file per table into a
//! staging directory. Each file is compressed and uploaded *while* pg_dump
//! writes it: inotify reports the file's creation, a reader follows it as it
//! grows, and pg_dump closing it (IN_CLOSE_WRITE) marks its end. The file is
//! deleted as soon as its upload completes, so local disk holds only the
//! files in flight, and the biggest table is compressed in step with its
//! dump instead of after it. After pg_dump exits, a last scan catches
//! anything an overflowing event queue missed. Each data file is tallied
//! as it passes (`contents`), and the table of contents read at the end.
//!
//! Stopping (a failure, a cancel, a hand back) drops this work: pg_dump and
//! its workers are killed as a group, the readers of growing files see the
//! stop flag and give up (closing their files), their uploads abort, and
//! the staging directory goes with its guard. The supervisor waits for the
//! readers and uploads (they run on its tracker), then removes whatever
//! this attempt had already stored.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use tokio::task::JoinHandle;

use crate::pg::formats::contents::{self, Contents, Tally};
use crate::pg::tools::tool::ToolCommand;
use crate::store::layout::Keys;
use crate::store::manifest::FileEntry;
use crate::store::upload::{self, Pipe};
use crate::transfer::progress::Level;
use crate::transfer::task::Task;

/// Run `cmd` (pg_dump with the capture's flags) as a directory-format dump
/// with `jobs` workers, storing each file under `keys`; each data file is
/// tallied as it passes, and `toc.dat` read at the end (`contents`).
pub async fn dump(task: &Task, mut cmd: ToolCommand, jobs: u32, keys: &Keys) -> Result<(Vec<FileEntry>, Contents)> {
    let staging = task.staging()?;
    let stop = StopOnDrop::default();
    task.progress.say(
        Level::Info,
        format!("directory format with {jobs} jobs, each file compressed and uploaded as pg_dump finishes it"),
    );
    let inotify = Inotify::init().context("inotify")?;
    inotify
        .watches()
        .add(staging.path(), WatchMask::CREATE | WatchMask::CLOSE_WRITE)
        .context("watching the staging directory")?;
    let mut events = inotify.into_event_stream(vec![0u8; 4096])?;
    cmd.arg("--format=directory").arg(format!("--jobs={jobs}")).arg("--file").arg(staging.path());
    let mut pg_dump = cmd.spawn(task.progress.tool_output())?;
    let mut files =
        Files { task, keys, stop: stop.0.clone(), closed: HashMap::new(), uploads: FuturesUnordered::new() };
    let mut done = Vec::new();

    let exit = {
        let wait = pg_dump.wait();
        tokio::pin!(wait);
        loop {
            tokio::select! {
                exit = &mut wait => break exit?,
                Some(ev) = events.next() => {
                    let ev = ev?;
                    if let Some(name) = ev.name {
                        let path = staging.path().join(name);
                        files.follow(path, ev.mask.contains(EventMask::CLOSE_WRITE));
                    }
                }
                // A storage error: returning stops pg_dump and the other uploads.
                Some(res) = files.uploads.next(), if !files.uploads.is_empty() => {
                    done.push(res.context("a file upload panicked")??);
                }
            }
        }
    };
    exit.check()?;

    // pg_dump is done: every file in staging is complete.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(10), events.next()).await {
        if let Some(name) = ev?.name {
            files.follow(staging.path().join(name), true);
        }
    }
    let mut left: Vec<PathBuf> = std::fs::read_dir(staging.path())?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    left.sort();
    for path in left {
        files.follow(path, true);
    }
    for flag in files.closed.values() {
        flag.store(true, Ordering::Release);
    }
    while let Some(res) = files.uploads.next().await {
        done.push(res.context("a file upload panicked")??);
    }
    let stored: HashSet<String> = done.iter().map(|(f, _)| f.name.clone()).collect();
    let (mut toc, mut tallies) = (None, HashMap::new());
    let mut entries = Vec::with_capacity(done.len());
    for (file, seen) in done {
        match seen {
            Seen::Rows(t) => {
                tallies.insert(file.name.clone(), *t);
            }
            Seen::Toc(bytes) => toc = Some(bytes),
            Seen::Other => {}
        }
        entries.push(file);
    }
    let toc = toc.context("pg_dump wrote no toc.dat")?;
    let contents =
        contents::read_directory(&toc, tallies, &stored).await.context("the dump pg_dump wrote is not sound")?;
    Ok((entries, contents))
}

/// What was read of a file on its way to storage: a data file's rows, the
/// table of contents, or neither.
enum Seen {
    Rows(Box<Tally>),
    Toc(Vec<u8>),
    Other,
}

/// A file's reader that also keeps what `Seen` needs.
struct Watched<R> {
    inner: R,
    seen: Seen,
}

impl<R: Read> Watched<R> {
    fn new(inner: R, name: &str) -> Self {
        let seen = match name.strip_suffix(".dat") {
            Some("toc") => Seen::Toc(Vec::new()),
            Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) => Seen::Rows(Box::default()),
            _ => Seen::Other,
        };
        Watched { inner, seen }
    }
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        match &mut self.seen {
            Seen::Rows(t) => t.feed(&buf[..n]),
            Seen::Toc(b) => b.extend_from_slice(&buf[..n]),
            Seen::Other => {}
        }
        Ok(n)
    }
}

/// Set when the dump is dropped: readers of growing files stop waiting.
#[derive(Default)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// The files being followed, by name; the flag says pg_dump closed it.
struct Files<'a> {
    task: &'a Task,
    keys: &'a Keys,
    stop: Arc<AtomicBool>,
    closed: HashMap<String, Arc<AtomicBool>>,
    uploads: FuturesUnordered<JoinHandle<Result<(FileEntry, Seen)>>>,
}

impl Files<'_> {
    /// Start following `path` unless it is followed already; `closed`: pg_dump has closed it.
    fn follow(&mut self, path: PathBuf, closed: bool) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_string) else { return };
        if let Some(flag) = self.closed.get(&name) {
            if closed {
                flag.store(true, Ordering::Release);
            }
            return;
        }
        let flag = Arc::new(AtomicBool::new(closed));
        self.closed.insert(name.clone(), flag.clone());
        let growing = Growing { file: None, path, closed: flag, stop: self.stop.clone() };
        let key = self.keys.dir_file(&name);
        let task = self.task;
        let (storage, tracker, level, counter) =
            (task.ctx.storage.clone(), task.tracker.clone(), task.ctx.cfg.compression_level, task.progress.counter());
        let seal = task.ctx.cfg.encrypt_to.clone();
        self.uploads.push(task.tracker.spawn(async move {
            let key = key?;
            let pipe = Pipe::start(&tracker, storage.store.clone(), key.clone());
            let tx = pipe.tx.clone();
            let path = growing.path.clone();
            // One zstd thread per file: pg_dump's jobs already write files in parallel.
            let file = name.clone();
            let compressed = tracker
                .spawn_blocking(move || {
                    let mut reader = Watched::new(growing.open()?, &file);
                    let size = upload::compress(&mut reader, tx, level, 1, &seal, &counter)?.size;
                    Ok::<_, anyhow::Error>((size, reader.seen))
                })
                .await
                .context("the compressor panicked")?;
            let stored = pipe.finish(compressed.is_ok()).await;
            let (size, seen) = compressed?;
            let stored = stored?;
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            let entry =
                FileEntry { path: storage.relative(&key), name, size, stored_size: stored.size, sha256: stored.sha256 };
            Ok((entry, seen))
        }));
    }
}

/// `Read` over a file pg_dump is still writing: at the current end it waits
/// for more, until pg_dump has closed the file and everything is read, or
/// the dump is stopped.
struct Growing {
    file: Option<std::fs::File>,
    path: PathBuf,
    closed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Growing {
    fn open(mut self) -> Result<Self> {
        self.file = Some(std::fs::File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?);
        Ok(self)
    }
}

impl Read for Growing {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let file = self.file.as_mut().expect("opened");
        loop {
            if self.stop.load(Ordering::Acquire) {
                return Err(std::io::Error::other("the dump was stopped"));
            }
            // Read the flag first: a zero-byte read after seeing it set is the real end.
            let was_closed = self.closed.load(Ordering::Acquire);
            let n = file.read(buf)?;
            if n > 0 || was_closed {
                return Ok(n);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_of_a_growing_file_gives_up_when_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("3245.dat");
        std::fs::write(&path, b"abc").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let g = Growing { file: None, path, closed: Arc::new(AtomicBool::new(false)), stop: stop.clone() };
        let reader = std::thread::spawn(move || {
            let mut g = g.open().unwrap();
            let mut all = Vec::new();
            g.read_to_end(&mut all)
        });
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Release);
        let res = reader.join().unwrap();
        assert!(res.is_err(), "the reader kept waiting");
    }
}
