//! What a backup holds, table by table: its rows, its bytes, and an
//! order-independent digest of its rows' COPY text. A capture tallies them
//! as the dump streams past (no second read of the database), from the
//! custom archive on its way to storage or from each file of a directory
//! dump; `verify` tallies a restored copy the same way and compares.
//! Reading the archive to its end this way also proves it sound (every
//! entry with data has exactly one block, every block is framed as it
//! should be) before the capture is marked completed.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncRead;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::pg::formats::custom::{self, Head, BLK_BLOBS, BLK_DATA};

/// How digests are made: the sum, modulo 2^64, of the XXH3-64 of every
/// row's COPY text (without its newline), as 16 hex digits. A sum does not
/// depend on the order rows come in, which a restored copy does not keep.
pub const ALGORITHM: &str = "xxh3-64-sum";

/// One table's data, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub schema: String,
    pub table: String,
    /// The columns of its COPY text, in their order; None if the COPY
    /// statement could not be read.
    pub columns: Option<Vec<String>>,
    pub rows: u64,
    /// Bytes of COPY text, newlines included.
    pub bytes: u64,
    pub digest: String,
    /// Where its data is in a custom-format backup, so that it can be read
    /// alone (none: a directory-format backup, whose tables are files of
    /// their own, or one captured before positions were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

/// Where a table's data block is in a stored custom-format archive, and
/// the SHA-256 that proves it when it is read alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The block's first byte in the archive (uncompressed), and its length.
    pub at: u64,
    pub len: u64,
    /// SHA-256 of its COPY text (the block's chunks without their framing).
    pub sha256: String,
    /// The stored bytes (compressed; the plaintext of an encrypted object)
    /// that hold the block: `[from, to)`, whole zstd frames, the first of
    /// which starts at archive offset `frame_at`.
    pub from: u64,
    pub to: u64,
    pub frame_at: u64,
}

/// Every table of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contents {
    pub algorithm: String,
    /// The client encoding of the COPY text (the dump's ENCODING).
    pub encoding: Option<String>,
    /// The settings of the capture's session that shape COPY text and that
    /// pg_dump does not pin (a database's or a role's `bytea_output` or
    /// `lc_monetary`), for verify to read back with the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<(String, String)>,
    pub tables: Vec<Table>,
    /// A custom-format archive's head (header and table of contents: the
    /// schema's SQL), its SHA-256: recorded at capture, so that a streamed
    /// restore proves the head before it applies any of it, long before
    /// the whole backup's checksum is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_sha256: Option<String>,
}

impl Contents {
    /// Where each table's block is in the stored bytes, from the sizes of
    /// the zstd frames the archive was compressed into (uncompressed,
    /// compressed; in order): the frames that hold it, whole.
    pub fn place(&mut self, frames: &[(u64, u64)]) {
        // Each frame's start, uncompressed and stored.
        let mut starts = Vec::with_capacity(frames.len() + 1);
        let (mut u, mut c) = (0u64, 0u64);
        for &(ul, cl) in frames {
            starts.push((u, c));
            u += ul;
            c += cl;
        }
        let end = (u, c);
        for t in &mut self.tables {
            let Some(p) = &mut t.position else { continue };
            if p.at + p.len > end.0 || frames.is_empty() {
                t.position = None;
                continue;
            }
            // The last frame starting at or before the block's first byte,
            // and the first starting at or after its end.
            let first = starts.partition_point(|&(fu, _)| fu <= p.at) - 1;
            let last = starts.partition_point(|&(fu, _)| fu < p.at + p.len);
            p.frame_at = starts[first].0;
            p.from = starts[first].1;
            p.to = starts.get(last).map_or(end.1, |s| s.1);
        }
    }
}

/// The settings `Contents::settings` records.
pub const SETTINGS: [&str; 2] = ["bytea_output", "lc_monetary"];

/// Rows, bytes and digest of one stream of COPY text, fed in pieces cut
/// anywhere. A line `\.` ends the data (pg_dump writes it, and blank
/// lines, after the last row; COPY TO STDOUT does not).
#[derive(Default, Clone)]
pub struct Tally {
    rows: u64,
    bytes: u64,
    sum: u64,
    /// A row begun in an earlier piece: its hash so far, length, first bytes.
    partial: Option<Xxh3>,
    partial_len: usize,
    partial_head: [u8; 2],
    ended: bool,
}

impl Tally {
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.ended {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    self.line(&data[..i]);
                    data = &data[i + 1..];
                }
                None => {
                    self.grow(data);
                    return;
                }
            }
        }
    }

    fn grow(&mut self, part: &[u8]) {
        for (k, &b) in part.iter().take(2usize.saturating_sub(self.partial_len)).enumerate() {
            self.partial_head[self.partial_len + k] = b;
        }
        self.partial_len += part.len();
        self.partial.get_or_insert_with(Xxh3::new).update(part);
    }

    /// The end of a row: `tail` is its part in the current piece.
    fn line(&mut self, tail: &[u8]) {
        let begun = self.partial_len;
        let len = begun + tail.len();
        let terminator = len == 2 && {
            let mut h = [0u8; 2];
            h[..begun].copy_from_slice(&self.partial_head[..begun]);
            h[begun..].copy_from_slice(tail);
            &h == b"\\."
        };
        let hash = match self.partial.take() {
            None => xxh3_64(tail),
            Some(mut h) => {
                h.update(tail);
                h.digest()
            }
        };
        self.partial_len = 0;
        if terminator {
            self.ended = true;
            return;
        }
        self.rows += 1;
        self.bytes += len as u64 + 1;
        self.sum = self.sum.wrapping_add(hash);
    }

    /// Rows, bytes and digest; a last row without its newline counts.
    pub fn finish(mut self) -> (u64, u64, String) {
        if let Some(h) = self.partial.take() {
            if !self.ended {
                self.rows += 1;
                self.bytes += self.partial_len as u64;
                self.sum = self.sum.wrapping_add(h.digest());
            }
        }
        (self.rows, self.bytes, format!("{:016x}", self.sum))
    }
}

/// A custom-format archive read to its end as it streams (pg_dump's
/// stdout on its way to storage), every table's COPY text tallied.
pub async fn read_custom<R: AsyncRead + Unpin>(input: R) -> Result<Contents> {
    let mut r = custom::Reader::new(input);
    let head = r.head().await?.context("pg_dump wrote an archive version this agent does not know")?;
    let by_id: HashMap<i32, &custom::Entry> = head.entries.iter().map(|e| (e.id, e)).collect();
    let mut tallies = HashMap::new();
    let mut positions = HashMap::new();
    let mut seen = HashSet::new();
    let mut buf = Vec::with_capacity(custom::SLICE);
    loop {
        let at = r.position();
        let Some((kind, id)) = r.block().await? else { break };
        let entry = by_id
            .get(&id)
            .with_context(|| format!("a data block for entry {id}, which is not in the table of contents"))?;
        if !entry.had_dumper {
            bail!("a data block for {} {}, which has no data", entry.desc, entry.label);
        }
        if !seen.insert(id) {
            bail!("two data blocks for {} {}", entry.desc, entry.label);
        }
        let mut tally = (kind == BLK_DATA && is_table_data(entry) && head.uncompressed).then(Tally::default);
        if kind == BLK_BLOBS {
            r.skip_block(kind).await?;
        } else {
            let mut sha = tally.is_some().then(sha2::Sha256::default);
            skip_chunks(&mut r, &mut buf, tally.as_mut(), sha.as_mut()).await?;
            if let Some(sha) = sha {
                use sha2::Digest;
                let sha256 = hex::encode(sha.finalize());
                let len = r.position() - at;
                positions.insert(id, Position { at, len, sha256, from: 0, to: 0, frame_at: 0 });
            }
        }
        if let Some(t) = tally {
            tallies.insert(id, t);
        }
    }
    let missing: Vec<&str> =
        head.entries.iter().filter(|e| e.had_dumper && !seen.contains(&e.id)).map(|e| e.label.as_str()).collect();
    if !missing.is_empty() {
        bail!("the archive ends without the data of {}", missing.join(", "));
    }
    let mut contents = assemble(&head, |e| tallies.remove(&e.id));
    contents.head_sha256 = Some(head.sha256());
    let data: HashMap<(&str, &str), i32> = head
        .entries
        .iter()
        .filter(|e| is_table_data(e))
        .map(|e| ((e.namespace.as_str(), e.tag.as_str()), e.id))
        .collect();
    for t in &mut contents.tables {
        t.position = data.get(&(t.schema.as_str(), t.table.as_str())).and_then(|id| positions.remove(id));
    }
    Ok(contents)
}

/// The chunks of one data block, fed to `tally`.
async fn skip_chunks<R: AsyncRead + Unpin>(
    r: &mut custom::Reader<R>,
    buf: &mut Vec<u8>,
    mut tally: Option<&mut Tally>,
    mut sha: Option<&mut sha2::Sha256>,
) -> Result<()> {
    while let Some(mut n) = r.chunk_len().await? {
        while n > 0 {
            buf.clear();
            n -= r.slice(n, buf).await?;
            if let Some(t) = tally.as_deref_mut() {
                t.feed(buf);
            }
            if let Some(h) = sha.as_deref_mut() {
                sha2::Digest::update(h, &buf[..]);
            }
        }
    }
    Ok(())
}

/// A directory-format dump's contents: its `toc.dat`, and the tallies of
/// its data files by name. Every file the table of contents names must
/// have been stored (`stored`).
pub async fn read_directory(
    toc: &[u8],
    mut tallies: HashMap<String, Tally>,
    stored: &HashSet<String>,
) -> Result<Contents> {
    let head = custom::Reader::directory(toc)
        .head()
        .await
        .context("reading the dump's toc.dat")?
        .context("pg_dump wrote an archive version this agent does not know")?;
    let missing: Vec<&str> = head
        .entries
        .iter()
        .filter(|e| e.filename.as_ref().is_some_and(|f| !stored.contains(f)))
        .map(|e| e.label.as_str())
        .collect();
    if !missing.is_empty() {
        bail!("the dump has no data file for {}", missing.join(", "));
    }
    Ok(assemble(&head, |e| e.filename.as_ref().and_then(|f| tallies.remove(f))))
}

fn is_table_data(e: &custom::Entry) -> bool {
    e.desc == "TABLE DATA" && e.copy()
}

fn assemble(head: &Head, mut tally_of: impl FnMut(&custom::Entry) -> Option<Tally>) -> Contents {
    let mut tables = Vec::new();
    for e in head.entries.iter().filter(|e| e.had_dumper && is_table_data(e)) {
        let (rows, bytes, digest) = tally_of(e).unwrap_or_default().finish();
        tables.push(Table {
            schema: e.namespace.clone(),
            table: e.tag.clone(),
            columns: e.copy_stmt.as_deref().and_then(copy_columns),
            rows,
            bytes,
            digest,
            position: None,
        });
    }
    tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
    Contents {
        algorithm: ALGORITHM.into(),
        encoding: head.encoding.clone(),
        settings: Vec::new(),
        tables,
        head_sha256: None,
    }
}

/// The column list of pg_dump's `COPY "s"."t" ("a", "b") FROM stdin;`.
pub fn copy_columns(stmt: &str) -> Option<Vec<String>> {
    let rest = stmt.strip_prefix("COPY ")?;
    let (_, rest) = ident_path(rest)?;
    let rest = rest.trim_start();
    if rest.starts_with("FROM stdin") {
        return Some(Vec::new());
    }
    let mut rest = rest.strip_prefix('(')?;
    let mut cols = Vec::new();
    loop {
        let (col, after) = ident(rest.trim_start())?;
        cols.push(col);
        let after = after.trim_start();
        if let Some(a) = after.strip_prefix(',') {
            rest = a;
        } else {
            after.strip_prefix(')')?.trim_start().starts_with("FROM stdin").then_some(())?;
            return Some(cols);
        }
    }
}

/// `a.b` or `"a"."b"`: the parts, and what follows.
fn ident_path(s: &str) -> Option<(Vec<String>, &str)> {
    let mut parts = Vec::new();
    let (first, mut rest) = ident(s)?;
    parts.push(first);
    while let Some(r) = rest.strip_prefix('.') {
        let (p, r) = ident(r)?;
        parts.push(p);
        rest = r;
    }
    Some((parts, rest))
}

/// One identifier, quoted (`""` inside is `"`) or plain.
fn ident(s: &str) -> Option<(String, &str)> {
    if let Some(q) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if q[i + 1..].starts_with('"') {
                    out.push('"');
                    chars.next();
                } else {
                    return Some((out, &q[i + 1..]));
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let end = s.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_string(), &s[end..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(pieces: &[&[u8]]) -> (u64, u64, String) {
        let mut t = Tally::default();
        for p in pieces {
            t.feed(p);
        }
        t.finish()
    }

    #[test]
    fn a_tally_does_not_depend_on_where_pieces_are_cut_nor_on_row_order() {
        let text = b"1\tx\n2\ta\\nb\n3\t\\\\.\n\\.\n\n\n";
        let whole = tally(&[text]);
        assert_eq!(whole.0, 3);
        assert_eq!(whole.1, 17);
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                assert_eq!(tally(&[&text[..cut], &text[cut..cut2], &text[cut2..]]), whole, "cut at {cut}, {cut2}");
            }
        }
        // What COPY TO STDOUT gives: no terminator, any order.
        assert_eq!(tally(&[b"3\t\\\\.\n1\tx\n2\ta\\nb\n"]), whole);
        assert_ne!(tally(&[b"3\t\\\\.\n1\tx\n2\ta\\nc\n"]).2, whole.2);
        assert_ne!(tally(&[b"1\tx\n2\ta\\nb\n"]), whole);
        assert_eq!(tally(&[b""]), (0, 0, "0000000000000000".into()));
    }

    #[test]
    fn copy_statements_give_their_columns() {
        assert_eq!(
            copy_columns("COPY \"public\".\"t\" (\"a\", \"B c\", \"d\"\"e\") FROM stdin;\n"),
            Some(vec!["a".into(), "B c".into(), "d\"e".into()])
        );
        assert_eq!(copy_columns("COPY public.t (a, b) FROM stdin;\n"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(copy_columns("COPY \"s\".\"empty\"  FROM stdin;\n"), Some(vec![]));
        assert_eq!(copy_columns("COPY \"s\".\"t\" (\"a\" FROM stdin;"), None);
    }
}
