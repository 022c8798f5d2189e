//! A restore of one of our custom-format backups, streamed: the load starts
//! while the backup is still being fetched, decompressed and verified,
//! instead of after it was staged whole.
//!
//! 1. The archive's head (header and table of contents, `pg/custom.rs`)
//!    arrives first; kept as a small data-less archive in staging, it is
//!    what pg_restore reads for the schema, the extensions and, at the end,
//!    the indexes and constraints.
//! 2. The schema before the data is applied into the shadow.
//! 3. Data blocks are handed, as they arrive, to `pg_restore` processes
//!    reading the head and those blocks on stdin: small tables batched,
//!    a large table's COPY text cut at row boundaries (in text COPY a row
//!    ends at a newline, which data escapes) over `jobs` processes that
//!    load it at once.
//! 4. The rest (sequence values, indexes, constraints, ...) by
//!    `pg_restore -j` from the head.
//!
//! The backup's checksum is known only when its last byte arrived: the
//! shadow is swapped in (`destination.rs`) only after that, so a corrupt
//! backup never reaches the target.

use std::collections::{HashSet, VecDeque};
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinSet;

use crate::pg::cluster::target::{self, Target};
use crate::pg::conn::Conn;
use crate::pg::formats::archive::Toc;
use crate::pg::formats::custom::{Framer, Head, Reader, BLK_DATA};
use crate::pg::tools::bins::Tools;
use crate::pg::tools::tool::ToolProcess;
use crate::store::backups::Stored;
use crate::store::verify;
use crate::transfer::outcome::Completion;
use crate::transfer::progress::human;
use crate::transfer::progress::Level;
use crate::transfer::steps::apply::{self, Only};
use crate::transfer::steps::destination::Destination;
use crate::transfer::task::Task;

/// Small tables' blocks (up to this much, or up to the split threshold if
/// lower) go to one pg_restore together, up to this much in all; a larger
/// one is fed to its own as it arrives, and to more at once (up to `jobs`)
/// once it passes the split threshold (`--split-tables-larger-than`).
const BATCH_BYTES: usize = 8 << 20;
/// The data of a large table is handed on in pieces of about this.
const PIECE_BYTES: usize = 1 << 20;
/// Pieces waiting for a process to take them.
const QUEUED_PIECES: usize = 2;
/// Processes loading small tables at once, whatever the cores: each holds
/// its batch in memory until it has read it.
const BATCHES_AT_ONCE: usize = 4;

/// How a streamed restore ended: restored, or (an archive it cannot
/// stream: large objects, an unknown version) staged whole for the usual
/// restore.
pub enum Streamed {
    Restored(Completion),
    Staged(PathBuf),
}

pub async fn run(task: &Task, target: &str, b: &Stored, scratch: &FsPath) -> Result<Streamed> {
    let cfg = &task.ctx.cfg;
    let jobs = apply::jobs();
    let object =
        verify::open(&task.ctx.storage, &b.keys(&task.ctx.storage).dump(), &b.checksum, Some(task.progress.counter()))
            .await?;
    let plain = verify::decompressed(object, &b.encrypted_to).await?;
    let mut reader = Reader::new(tokio::io::BufReader::with_capacity(1 << 20, plain));

    // 1. The head, as an archive of its own.
    let head = reader.head().await.with_context(|| format!("reading the head of {}", b.name))?;
    let head = match head {
        Some(h) if !h.has_large_objects() && b.head_sha256.is_some() => h,
        other => {
            let path = scratch.join("backup.dump");
            let why = match &other {
                None => "its archive version is not one it streams",
                Some(h) if h.has_large_objects() => "it holds large objects",
                Some(_) => "it was captured before the checksum of its head was recorded",
            };
            task.progress.say(Level::Info, format!("staging {} whole before restoring it: {why}", b.name));
            let already = other.map(|h| h.bytes).unwrap_or_default();
            reader.stage(&already, &path).await.with_context(|| format!("fetching {}", b.name))?;
            task.progress.say(
                Level::Info,
                format!("{} verified (sha256 {}) and staged at {}", b.name, b.checksum, scratch.display()),
            );
            return Ok(Streamed::Staged(path));
        }
    };
    // Nothing of the archive runs before its bytes are proven: the head
    // (every statement of the schema, the functions its constraints call)
    // against the checksum its capture recorded, now; the data, which only
    // goes into the shadow, against the whole backup's checksum, at its
    // end, before anything after it is applied or the shadow swapped in.
    let recorded = b.head_sha256.as_deref().unwrap_or_default();
    if head.sha256() != recorded {
        bail!(
            "checksum mismatch for {}: the head of its archive (its schema) has sha256 {}, its capture recorded \
             {recorded}; the backup is corrupt or was replaced in storage: nothing of it was applied",
            b.name,
            head.sha256()
        );
    }
    let head_file = scratch.join("head.dump");
    std::fs::write(&head_file, &head.bytes)?;
    let (toc, tools) = apply::read_archive(task, &head_file, scratch).await?;
    task.progress.say(
        Level::Info,
        format!(
            "replacing database {:?} with {}, streamed as it is fetched and verified (custom format), {jobs} jobs",
            target, b.name
        ),
    );
    // (Never in place: an in-place restore is staged and verified first.)
    let dest = Destination::prepare(task, target, false).await?;
    let conn = dest.conn()?;

    // 2. The schema before the data.
    let mut warnings =
        apply::apply(task, tools, &conn, &dest.target, &head_file, &toc, scratch, None, Only::PreData).await?;

    // 3. The data, as it arrives.
    let mut load = Load {
        task,
        tools,
        conn: &conn,
        target: &dest.target,
        toc: &toc,
        head: &head,
        framer: Framer::new(&head),
        scratch,
        jobs,
        running: VecDeque::new(),
        writers: JoinSet::new(),
        batch: Vec::with_capacity(BATCH_BYTES),
        batch_ids: Vec::new(),
        loaded: HashSet::new(),
        lists: 0,
        warnings: 0,
        split_above: cfg.split_tables_larger_than.try_into().unwrap_or(usize::MAX),
    };
    load.all(&mut reader).await?;
    warnings += load.warnings;
    let loaded = std::mem::take(&mut load.loaded);
    drop(load);
    let missing: Vec<i32> =
        head.entries.iter().filter(|e| e.had_dumper && !loaded.contains(&e.id)).map(|e| e.id).collect();
    if !missing.is_empty() {
        bail!("{} ended without the data of entries {missing:?}: it is incomplete", b.name);
    }
    task.progress.say(Level::Info, format!("{} verified (sha256 {}) as it streamed", b.name, b.checksum));

    // 4. The rest.
    warnings += apply::apply(
        task,
        tools,
        &conn,
        &dest.target,
        &head_file,
        &toc,
        scratch,
        Some(jobs),
        Only::AfterData { loaded: &loaded },
    )
    .await?;
    warnings += dest.finish(task).await?;
    Ok(Streamed::Restored(apply::completion(task, &format!("restored into {target}"), "read", warnings)))
}

/// The data blocks' loading: the pg_restore processes running, and the
/// small blocks waiting for theirs.
struct Load<'a> {
    task: &'a Task,
    tools: &'a Tools,
    conn: &'a Conn,
    target: &'a Target,
    toc: &'a Toc,
    head: &'a Head,
    framer: Framer,
    scratch: &'a FsPath,
    jobs: usize,
    running: VecDeque<ToolProcess>,
    /// What feeds the running processes their input; dropped, they stop.
    writers: JoinSet<Result<()>>,
    batch: Vec<u8>,
    batch_ids: Vec<i32>,
    loaded: HashSet<i32>,
    lists: usize,
    warnings: i32,
    /// `--split-tables-larger-than`.
    split_above: usize,
}

/// A piece of a data block, framed as a chunk. `more`: it ends inside a
/// row, whose next piece the same process must take.
struct Piece {
    bytes: Vec<u8>,
    more: bool,
}

/// Input shared by the processes loading one large table: pieces, and
/// whether a process has taken one that ended at a row's end (until then
/// only the first process, which read the block's start, may take any).
#[derive(Clone)]
struct Feed {
    pieces: Arc<Mutex<mpsc::Receiver<Piece>>>,
    aligned: Arc<AtomicBool>,
}

impl Feed {
    fn new(rx: mpsc::Receiver<Piece>) -> Self {
        Feed { pieces: Arc::new(Mutex::new(rx)), aligned: Arc::default() }
    }
}

impl Load<'_> {
    async fn all<R: AsyncRead + Unpin>(&mut self, reader: &mut Reader<R>) -> Result<()> {
        let small = match self.split_above {
            0 => BATCH_BYTES,
            n => BATCH_BYTES.min(n),
        };
        while let Some((kind, id)) = reader.block().await? {
            let entry = self
                .head
                .entries
                .iter()
                .find(|e| e.id == id)
                .filter(|e| e.had_dumper && kind == BLK_DATA)
                .with_context(|| format!("the archive holds data for entry {id}, which has none: it is corrupt"))?;
            if !self.loaded.insert(id) {
                bail!("the archive holds the data of entry {id} twice: it is corrupt");
            }
            let splittable = entry.copy() && self.head.uncompressed && self.split_above > 0;
            let label = entry.label.clone();
            // Read the block while it stays small: most end so.
            let mut framed = Vec::new();
            self.framer.block(&mut framed, kind, id);
            let big = loop {
                match reader.chunk_len().await? {
                    None => break None,
                    Some(n) if framed.len() + n > small => break Some(n),
                    Some(n) => {
                        self.framer.int(&mut framed, n as i64);
                        reader.rest_of_chunk(n, &mut framed).await?;
                    }
                }
            };
            let Some(pending) = big else {
                self.framer.int(&mut framed, 0);
                if self.batch.len() + framed.len() > BATCH_BYTES {
                    self.flush().await?;
                }
                self.batch.extend_from_slice(&framed);
                self.batch_ids.push(id);
                continue;
            };
            self.flush().await?;
            if splittable {
                self.split(reader, id, &label, framed, pending).await?;
            } else {
                self.whole(reader, id, &label, framed, pending).await?;
            }
        }
        self.flush().await?;
        self.drain().await?;
        while let Some(w) = self.writers.join_next().await {
            w??;
        }
        Ok(())
    }

    /// A pg_restore of the entries `ids`, reading on its stdin the head,
    /// `first`, what `input` sends (shared with other processes, each taking
    /// what it can), and `last`. Processes started earlier (which have all
    /// their input) are let end first while `at_once` run.
    async fn start(
        &mut self,
        ids: &[i32],
        at_once: usize,
        first: Vec<u8>,
        input: Option<Feed>,
        last: Vec<u8>,
    ) -> Result<()> {
        while self.running.len() >= at_once.max(1) {
            self.reap().await?;
        }
        self.lists += 1;
        let list = self.scratch.join(format!("data-{}.list", self.lists));
        self.toc.write_ids(&list, ids)?;
        let mut cmd = target::pg_restore(self.tools, self.conn, self.target, None, Some(&list))?;
        // Data that does not load fails the restore (the target is not
        // touched): a table cut over several connections would otherwise
        // be left part-loaded, with a warning.
        cmd.arg("--exit-on-error").stdin_piped();
        let mut proc = cmd.spawn(self.task.progress.tool_output())?;
        let mut stdin = proc.take_stdin();
        let head: Bytes = self.head.bytes.clone();
        self.writers.spawn(async move {
            stdin.write_all(&head).await?;
            stdin.write_all(&first).await?;
            drop(first);
            if let Some(input) = input {
                loop {
                    let mut rx = input.pieces.lock().await;
                    let Some(mut piece) = rx.recv().await else { break };
                    // A row longer than a piece comes in several: they are
                    // taken in a row, the lock held, and written as they
                    // come (the agent never holds a whole row).
                    while piece.more {
                        stdin.write_all(&piece.bytes).await?;
                        piece = rx.recv().await.context("a data block ended inside a row")?;
                    }
                    input.aligned.store(true, Ordering::SeqCst);
                    drop(rx);
                    stdin.write_all(&piece.bytes).await?;
                }
            }
            stdin.write_all(&last).await?;
            stdin.shutdown().await?;
            Ok(())
        });
        self.running.push_back(proc);
        Ok(())
    }

    /// Wait for the oldest running pg_restore.
    async fn reap(&mut self) -> Result<()> {
        if let Some(mut p) = self.running.pop_front() {
            self.warnings += target::restore_warnings(&p.wait().await?)?;
        }
        Ok(())
    }

    /// Let every running pg_restore end (before a large block, whose
    /// processes are fed as it arrives).
    async fn drain(&mut self) -> Result<()> {
        while !self.running.is_empty() {
            self.reap().await?;
        }
        Ok(())
    }

    /// The processes fed as a block arrived stopped taking it: their exit
    /// says why.
    async fn stopped(&mut self, label: &str) -> anyhow::Error {
        match self.drain().await {
            Err(e) => e,
            Ok(()) => anyhow::anyhow!("the processes loading {label} stopped reading it"),
        }
    }

    /// The small blocks gathered so far, to one pg_restore.
    async fn flush(&mut self) -> Result<()> {
        if self.batch_ids.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.batch_ids);
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH_BYTES));
        self.start(&ids, self.jobs.min(BATCHES_AT_ONCE), batch, None, Vec::new()).await
    }

    /// A large block that cannot be cut (compressed, or not COPY text):
    /// one pg_restore, fed as it arrives, a slice at a time. `framed` is
    /// its start; the next chunk, `pending` bytes long, is still unread.
    async fn whole<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Reader<R>,
        id: i32,
        label: &str,
        framed: Vec<u8>,
        pending: usize,
    ) -> Result<()> {
        self.task.progress.say(Level::Info, format!("loading {label} as it arrives"));
        self.drain().await?;
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let mut end = Vec::new();
        self.framer.int(&mut end, 0);
        self.start(&[id], 1, framed, Some(Feed::new(rx)), end).await?;
        let mut next = Some(pending);
        while let Some(mut left) = next {
            let mut buf = Vec::new();
            self.framer.int(&mut buf, left as i64);
            while left > 0 {
                left -= reader.slice(left, &mut buf).await?;
                let full = buf.len() >= PIECE_BYTES || left == 0;
                if full && tx.send(Piece { bytes: std::mem::take(&mut buf), more: false }).await.is_err() {
                    return Err(self.stopped(label).await);
                }
            }
            next = reader.chunk_len().await?;
        }
        Ok(())
    }

    /// A large table's COPY text, fed as it arrives to one pg_restore,
    /// and once it passed the split threshold to up to `jobs`, each taking
    /// the next piece it can: pieces are cut at row boundaries, and a row
    /// longer than a piece goes out in several that one process takes in a
    /// row, so that memory stays bounded whatever a row holds. `framed` is
    /// its start, as read; the next chunk, `pending` bytes long, is still
    /// unread.
    async fn split<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut Reader<R>,
        id: i32,
        label: &str,
        framed: Vec<u8>,
        pending: usize,
    ) -> Result<()> {
        self.drain().await?;
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let feed = Feed::new(rx);
        // The first process reads the start as it was framed.
        let framed_len = framed.len();
        let mut end = Vec::new();
        self.framer.int(&mut end, 0);
        self.start(&[id], self.jobs, framed, Some(feed.clone()), end).await?;
        let mut lanes = 1;
        let mut seen = framed_len;
        let mut text = Vec::new();
        let mut next = Some(pending);
        loop {
            // Up to a piece of COPY text, a slice at a time.
            let open = match next {
                Some(left) => {
                    let n = reader.slice(left, &mut text).await?;
                    seen += n;
                    next = if n == left { reader.chunk_len().await? } else { Some(left - n) };
                    true
                }
                None => false,
            };
            // Other processes join only once a piece that ends a row was
            // taken: from then on every piece they can take starts a row.
            if lanes < self.jobs && seen > self.split_above && feed.aligned.load(Ordering::SeqCst) {
                while lanes < self.jobs {
                    self.lane(id, &feed).await?;
                    lanes += 1;
                }
                self.task.progress.say(
                    Level::Info,
                    format!("{label} passed {}: loading it over {lanes} connections", human(self.split_above as u64)),
                );
            }
            if text.len() >= PIECE_BYTES || (!open && !text.is_empty()) {
                // Whole rows: in COPY text a row ends at a newline (one
                // inside a value is escaped). A piece without one is part
                // of a long row.
                let cut = if open { text.iter().rposition(|b| *b == b'\n').map(|i| i + 1) } else { Some(text.len()) };
                let (piece, more) = match cut {
                    Some(cut) => {
                        let rest = text.split_off(cut);
                        (std::mem::replace(&mut text, rest), false)
                    }
                    None => (std::mem::take(&mut text), true),
                };
                let mut buf = Vec::with_capacity(piece.len() + 9);
                self.framer.int(&mut buf, piece.len() as i64);
                buf.extend_from_slice(&piece);
                if tx.send(Piece { bytes: buf, more }).await.is_err() {
                    return Err(self.stopped(label).await);
                }
            }
            if !open && text.is_empty() {
                return Ok(());
            }
        }
    }

    /// One more process loading entry `id`: its block header, then the
    /// pieces it takes from `feed`.
    async fn lane(&mut self, id: i32, feed: &Feed) -> Result<()> {
        let mut first = Vec::new();
        self.framer.block(&mut first, BLK_DATA, id);
        let mut end = Vec::new();
        self.framer.int(&mut end, 0);
        self.start(&[id], self.jobs, first, Some(feed.clone()), end).await
    }
}
