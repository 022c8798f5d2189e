//! pg_dump's custom archive format, read as it streams (no seeking), so
//! that a restore can start loading while the backup is still being
//! fetched: first the header and table of contents (kept as bytes, which
//! make a data-less archive that pg_restore reads for everything but the
//! data), then the data blocks one by one, each handed on framed as it
//! was, or, for a large table in an uncompressed archive, cut at row
//! boundaries into several blocks of the same entry, so that several
//! `pg_restore` processes load one table at once.
//!
//! The layout follows pg_backup_archiver.c (ReadHead, ReadToc, ReadInt,
//! ReadStr, ReadOffset) and pg_backup_custom.c (_ReadExtraToc, block
//! headers, `_CustomWriteFunc`'s length-prefixed chunks ending in a zero
//! length) for archive versions 1.12 to 1.16 (pg_dump 9.5 to 17).

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Block types of the custom format.
pub const BLK_DATA: u8 = 1;
pub const BLK_BLOBS: u8 = 3;

/// A chunk's bytes are read at most this many at a time, so that a
/// length that corruption made huge costs no more than the bytes that
/// actually arrive.
pub const SLICE: usize = 1 << 20;

/// One entry of the table of contents, as far as a restore needs it.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: i32,
    /// It has a data block.
    pub had_dumper: bool,
    pub desc: String,
    /// `schema.name`, for messages.
    pub label: String,
    pub namespace: String,
    pub tag: String,
    /// Its data is COPY text (pg_dump without --inserts): the statement
    /// that loads it.
    pub copy_stmt: Option<String>,
    /// Where its data is, in a directory-format archive (`3241.dat`).
    pub filename: Option<String>,
    /// Its SQL, as pg_restore would run it (every name qualified).
    pub defn: Option<String>,
    /// The entries it depends on.
    pub deps: Vec<i32>,
}

impl Entry {
    pub fn copy(&self) -> bool {
        self.copy_stmt.is_some()
    }
}

/// The header and table of contents.
#[derive(Debug)]
pub struct Head {
    /// Their bytes as they were read: an archive with no data blocks.
    pub bytes: bytes::Bytes,
    int_size: usize,
    /// The data is not compressed inside the archive (`-Z0`, as the agent
    /// captures it).
    pub uncompressed: bool,
    /// The client encoding of its COPY text (the ENCODING entry).
    pub encoding: Option<String>,
    pub entries: Vec<Entry>,
}

impl Head {
    /// It holds large objects, whose metadata pg_dump 17 moved into the
    /// data section: such archives are staged, not streamed.
    pub fn has_large_objects(&self) -> bool {
        self.entries.iter().any(|e| matches!(e.desc.as_str(), "BLOBS" | "BLOB" | "BLOB METADATA"))
    }

    /// The SHA-256 of its bytes, hex: what a capture records and a
    /// streamed restore checks (`contents::Contents::head_sha256`).
    pub fn sha256(&self) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&self.bytes))
    }
}

/// The archive's reader: bytes in order, recorded while the head is read.
pub struct Reader<R> {
    inner: R,
    /// A directory-format `toc.dat` rather than a custom-format archive.
    directory: bool,
    record: Option<Vec<u8>>,
    version: u32,
    int_size: usize,
    off_size: usize,
    /// Bytes read so far: where in the archive the reader is.
    pos: u64,
}

fn version(major: u8, minor: u8, rev: u8) -> u32 {
    ((major as u32) << 16) | ((minor as u32) << 8) | rev as u32
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(inner: R) -> Self {
        Reader { inner, directory: false, record: Some(Vec::new()), version: 0, int_size: 4, off_size: 8, pos: 0 }
    }

    /// How many bytes of the archive were read so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// A reader of the data blocks of the archive `head` heads, from a
    /// stream that starts at a block (a range of a stored archive).
    pub fn blocks_of(inner: R, head: &Head, at: u64) -> Self {
        Reader { record: None, int_size: head.int_size, pos: at, ..Reader::new(inner) }
    }

    /// The `toc.dat` of a directory-format dump: the same header and table
    /// of contents, each entry naming its data file.
    pub fn directory(inner: R) -> Self {
        Reader { directory: true, ..Reader::new(inner) }
    }

    async fn bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf).await.context("the archive ends early")?;
        self.pos += n as u64;
        if let Some(r) = &mut self.record {
            r.extend_from_slice(&buf);
        }
        Ok(buf)
    }

    async fn byte(&mut self) -> Result<u8> {
        Ok(self.bytes(1).await?[0])
    }

    /// ReadInt: a sign byte, then `int_size` bytes, least significant first.
    async fn int(&mut self) -> Result<i64> {
        let sign = self.byte().await?;
        let raw = self.bytes(self.int_size).await?;
        let mut v: i64 = 0;
        for (i, b) in raw.iter().enumerate().take(8) {
            v |= (*b as i64) << (8 * i);
        }
        Ok(if sign != 0 { -v } else { v })
    }

    /// ReadStr: a length (negative for NULL), then the bytes.
    async fn str(&mut self) -> Result<Option<String>> {
        let n = self.int().await?;
        if n < 0 {
            return Ok(None);
        }
        if n > 1 << 30 {
            bail!("a string of {n} bytes in the archive's table of contents: it is corrupt");
        }
        let b = self.bytes(n as usize).await?;
        Ok(Some(String::from_utf8_lossy(&b).into_owned()))
    }

    /// The header and table of contents; None for an archive version
    /// this reader does not know (what was read is kept: `stage`).
    pub async fn head(&mut self) -> Result<Option<Head>> {
        let magic = self.bytes(5).await?;
        if magic != b"PGDMP" {
            bail!("not a pg_dump custom-format archive");
        }
        let (major, minor) = (self.byte().await?, self.byte().await?);
        let rev = self.byte().await?;
        self.version = version(major, minor, rev);
        if self.version < version(1, 12, 0) || self.version > version(1, 16, 0) {
            return Ok(None);
        }
        self.int_size = self.byte().await? as usize;
        self.off_size = self.byte().await? as usize;
        if !(1..=8).contains(&self.int_size) || !(1..=16).contains(&self.off_size) {
            bail!("the archive's integer sizes are implausible: it is corrupt");
        }
        let format = self.byte().await?;
        if self.directory && format == 1 || !self.directory && format != 1 {
            bail!("not a {}-format archive", if self.directory { "directory" } else { "custom" });
        }
        let uncompressed =
            if self.version >= version(1, 15, 0) { self.byte().await? == 0 } else { self.int().await? == 0 };
        for _ in 0..7 {
            self.int().await?; // the creation time
        }
        self.str().await?; // database name
        self.str().await?; // server version
        self.str().await?; // pg_dump version
        let count = self.int().await?;
        if !(0..=10_000_000).contains(&count) {
            bail!("{count} entries in the archive's table of contents: it is corrupt");
        }
        let mut entries = Vec::with_capacity(count as usize);
        let mut encoding = None;
        for _ in 0..count {
            let (entry, defn) = self.entry().await?;
            if entry.desc == "ENCODING" {
                // `SET client_encoding = 'UTF8';`
                encoding = defn.as_deref().and_then(|d| d.split('\'').nth(1)).map(str::to_string);
            }
            entries.push(entry);
        }
        Ok(Some(Head {
            bytes: self.record.take().unwrap_or_default().into(),
            int_size: self.int_size,
            uncompressed,
            encoding,
            entries,
        }))
    }

    /// One entry, and its definition.
    async fn entry(&mut self) -> Result<(Entry, Option<String>)> {
        let id = self.int().await? as i32;
        let had_dumper = self.int().await? != 0;
        self.str().await?; // table oid
        self.str().await?; // oid
        let tag = self.str().await?.unwrap_or_default();
        let desc = self.str().await?.unwrap_or_default();
        self.int().await?; // section
        let defn = self.str().await?;
        self.str().await?; // drop statement
        let copy_stmt = self.str().await?.filter(|s| s.starts_with("COPY "));
        let namespace = self.str().await?;
        self.str().await?; // tablespace
        if self.version >= version(1, 14, 0) {
            self.str().await?; // table access method
        }
        if self.version >= version(1, 16, 0) {
            self.int().await?; // relkind
        }
        self.str().await?; // owner
        self.str().await?; // with oids
        let mut deps = Vec::new();
        while let Some(d) = self.str().await? {
            deps.extend(d.trim().parse::<i32>().ok());
        }
        let filename = if self.directory {
            // pg_backup_directory.c's _ReadExtraToc: the data file's name.
            self.str().await?.filter(|f| !f.is_empty())
        } else {
            // pg_backup_custom.c's: the data offset (a flag byte and `off_size` bytes).
            self.byte().await?;
            self.bytes(self.off_size).await?;
            None
        };
        let namespace = namespace.unwrap_or_default();
        let label = if namespace.is_empty() { tag.clone() } else { format!("{namespace}.{tag}") };
        let entry =
            Entry { id, had_dumper, desc, label, namespace, tag, copy_stmt, filename, defn: defn.clone(), deps };
        Ok((entry, defn))
    }

    /// The next block's type and entry, or None where the archive ends.
    pub async fn block(&mut self) -> Result<Option<(u8, i32)>> {
        let mut kind = [0u8; 1];
        if self.inner.read(&mut kind).await? == 0 {
            return Ok(None);
        }
        self.pos += 1;
        let id = self.int().await? as i32;
        if kind[0] != BLK_DATA && kind[0] != BLK_BLOBS {
            bail!("unknown block type {} in the archive: it is corrupt", kind[0]);
        }
        Ok(Some((kind[0], id)))
    }

    /// The oid of the next large object of a BLOBS block; 0 at its end.
    pub async fn blob_oid(&mut self) -> Result<i64> {
        self.int().await
    }

    /// The length of the next chunk of a data block, or None at the
    /// block's end; its bytes follow (`slice`).
    pub async fn chunk_len(&mut self) -> Result<Option<usize>> {
        let n = self.int().await?;
        if n == 0 {
            return Ok(None);
        }
        if !(1..=1 << 30).contains(&n) {
            bail!("a data chunk of {n} bytes in the archive: it is corrupt");
        }
        Ok(Some(n as usize))
    }

    /// Up to `SLICE` of the `left` bytes of a chunk, appended to `out`;
    /// how many.
    pub async fn slice(&mut self, left: usize, out: &mut Vec<u8>) -> Result<usize> {
        let n = left.min(SLICE);
        let at = out.len();
        out.resize(at + n, 0);
        self.inner.read_exact(&mut out[at..]).await.context("the archive ends early")?;
        self.pos += n as u64;
        Ok(n)
    }

    /// A whole chunk of `n` bytes appended to `out`.
    pub async fn rest_of_chunk(&mut self, mut n: usize, out: &mut Vec<u8>) -> Result<()> {
        while n > 0 {
            n -= self.slice(n, out).await?;
        }
        Ok(())
    }

    /// The rest of a block of type `kind` whose header was read, read
    /// past: its chunks, or a BLOBS block's (oid, chunks) until oid 0.
    pub async fn skip_block(&mut self, kind: u8) -> Result<()> {
        let mut buf = Vec::with_capacity(SLICE);
        if kind != BLK_BLOBS {
            return self.skip_chunks(&mut buf).await;
        }
        while self.blob_oid().await? != 0 {
            self.skip_chunks(&mut buf).await?;
        }
        Ok(())
    }

    /// Chunks up to the zero length that ends them, read past.
    async fn skip_chunks(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        while let Some(mut n) = self.chunk_len().await? {
            while n > 0 {
                buf.clear();
                n -= self.slice(n, buf).await?;
            }
        }
        Ok(())
    }

    /// What was read so far, then all that follows, into `file`: the
    /// archive staged whole, for what is not streamed.
    pub async fn stage(mut self, already: &[u8], file: &std::path::Path) -> Result<()> {
        let out = tokio::fs::File::create(file).await.with_context(|| format!("creating {}", file.display()))?;
        let mut out = tokio::io::BufWriter::with_capacity(4 << 20, out);
        out.write_all(already).await?;
        if let Some(r) = self.record.take() {
            out.write_all(&r).await?;
        }
        tokio::io::copy(&mut self.inner, &mut out).await.context("staging the backup")?;
        out.flush().await?;
        Ok(())
    }
}

/// Writes blocks framed as the custom format frames them.
pub struct Framer {
    int_size: usize,
}

impl Framer {
    pub fn new(head: &Head) -> Self {
        Framer { int_size: head.int_size }
    }

    pub fn int(&self, out: &mut Vec<u8>, v: i64) {
        out.push(u8::from(v < 0));
        let v = v.unsigned_abs();
        for i in 0..self.int_size {
            out.push(if i < 8 { (v >> (8 * i)) as u8 } else { 0 });
        }
    }

    /// A block's header.
    pub fn block(&self, out: &mut Vec<u8>, kind: u8, id: i32) {
        out.push(kind);
        self.int(out, id as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ints_read_back_as_they_are_framed() {
        let head =
            Head { bytes: bytes::Bytes::new(), int_size: 4, uncompressed: true, encoding: None, entries: vec![] };
        let f = Framer::new(&head);
        let mut out = Vec::new();
        for v in [0i64, 1, 255, 256, 70_000, -3] {
            f.int(&mut out, v);
        }
        f.int(&mut out, 4);
        out.extend_from_slice(b"a\tb\n");
        f.int(&mut out, 0);
        let mut r = Reader::new(&out[..]);
        r.int_size = 4;
        for v in [0i64, 1, 255, 256, 70_000, -3] {
            assert_eq!(r.int().await.unwrap(), v);
        }
        let n = r.chunk_len().await.unwrap().unwrap();
        let mut got = Vec::new();
        r.rest_of_chunk(n, &mut got).await.unwrap();
        assert_eq!(got, b"a\tb\n");
        assert_eq!(r.chunk_len().await.unwrap(), None);
    }
}
