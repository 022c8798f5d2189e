//! Signed download links, served by `pgbackups agent --listen ADDR`.
//!
//! `GET /backups/<id>.dump?expires=<unix>&signature=<hex>` streams a
//! custom-format backup, decompressed, as a file pg_restore accepts;
//! `<id>.tar` streams a directory-format (parallel) backup as a tar of its
//! directory (`tar xf b002.tar && pg_restore -Fd ...`). The signature
//! (HMAC-SHA256 with the link secret, made by `backups.url()`) is checked in
//! constant time before anything else; a bad or expired link gets 403, an
//! unknown or deleted backup 404, and neither says more. Every byte served
//! is read through `store::verify`: a stored object that does not match its
//! checksum ends the response in an error (the client sees a failed
//! download, never a clean end). A directory-format backup's tar is built
//! as it is sent, file after file, each verified as it streams (its
//! manifest, which names them and their checksums, against the recorded
//! checksum first): nothing is staged.
//!
//! At most `--max-downloads` links are served at once; another waits a few
//! seconds for a free turn, then gets 503 with a Retry-After. A download
//! holds a control connection only while it looks its backup up, so that
//! many of them never take the connections the cluster's users need.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use futures::StreamExt;
use pgbackups_core::{link, naming};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::ctx::Ctx;
use crate::pg::conn;
use crate::serve::Served;
use crate::store::backups::{self, Stored};
use crate::store::layout::Format;
use crate::store::verify;
use tokio::sync::OwnedSemaphorePermit;

#[derive(Deserialize)]
pub struct Signed {
    expires: Option<String>,
    signature: Option<String>,
}

impl Signed {
    /// True when the query signs `name` with the link secret and has not
    /// expired (checked in constant time, expiry after the signature).
    pub fn allows(&self, secret: &[u8], name: &str) -> bool {
        let (Some(expires), Some(signature)) =
            (self.expires.as_deref().and_then(|e| e.parse::<i64>().ok()), self.signature.as_deref())
        else {
            return false;
        };
        link::verify(secret, name, expires, signature, chrono::Utc::now().timestamp()).is_ok()
    }
}

pub fn routes() -> Router<Served> {
    Router::new().route("/backups/{file}", get(download))
}

pub fn status(code: StatusCode) -> Response {
    (code, code.canonical_reason().unwrap_or_default()).into_response()
}

async fn download(State(s): State<Served>, Path(file): Path<String>, Query(q): Query<Signed>) -> Response {
    let Some((name, ext)) = file.rsplit_once('.') else {
        return status(StatusCode::NOT_FOUND);
    };
    if !naming::is_name(name) || !matches!(ext, "dump" | "tar") {
        return status(StatusCode::NOT_FOUND);
    }
    if !q.allows(&s.secret, name) {
        return status(StatusCode::FORBIDDEN);
    }
    let Ok(Ok(turn)) = tokio::time::timeout(TURN_PATIENCE, s.downloads.clone().acquire_owned()).await else {
        return busy();
    };
    match respond(&s.ctx, name, ext, turn).await {
        Ok(Some(r)) => r,
        Ok(None) => status(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::warn!(backup = name, "serving a link: {e:#}");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// How long a download waits for its turn before it gets 503.
const TURN_PATIENCE: Duration = Duration::from_secs(5);

/// 503, come back later.
fn busy() -> Response {
    let mut r = status(StatusCode::SERVICE_UNAVAILABLE);
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
    r
}

/// The response for backup `name` as a `.ext` file; `turn` is held until
/// its last byte is sent.
async fn respond(ctx: &Arc<Ctx>, name: &str, ext: &str, turn: OwnedSemaphorePermit) -> Result<Option<Response>> {
    // The control connection, only for the lookup.
    let found = {
        let control = conn::connect(ctx.cfg.control()?).await?;
        backups::find(&control, Some(name)).await
    };
    let Ok(b) = found else {
        return Ok(None);
    };
    let want = match b.format {
        Format::Custom => "dump",
        Format::Directory => "tar",
    };
    if ext != want {
        return Ok(None);
    }
    let body = match b.format {
        Format::Custom => custom_body(ctx, &b, turn).await?,
        Format::Directory => tar_body(ctx, &b, turn).await?,
    };
    tracing::info!(backup = name, "serving a download link");
    Ok(Some(
        (
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_string()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.{ext}\"")),
            ],
            body,
        )
            .into_response(),
    ))
}

/// The stored object, decrypted, decompressed and verified as it streams:
/// a link serves a plain dump whether or not the backup is encrypted.
async fn custom_body(ctx: &Ctx, b: &Stored, turn: OwnedSemaphorePermit) -> Result<Body> {
    let object = verify::open(&ctx.storage, &b.keys(&ctx.storage).dump(), &b.checksum, None).await?;
    let mut stream = ReaderStream::with_capacity(verify::decompressed(object, &b.encrypted_to).await?, 1 << 16);
    Ok(Outlet::body(&b.name, turn, |out| async move {
        while let Some(piece) = stream.next().await {
            out.send(piece?).await?;
        }
        Ok(())
    }))
}

/// A directory-format backup as a tar of a folder named after it, built as
/// it is sent: a header per file of its manifest (which has their sizes),
/// then the file, decompressed and verified as it streams.
async fn tar_body(ctx: &Ctx, b: &Stored, turn: OwnedSemaphorePermit) -> Result<Body> {
    let manifest = backups::manifest(&ctx.storage, b).await?;
    let keys = b.keys(&ctx.storage);
    let mut files = Vec::new();
    for f in &manifest.files {
        let key = keys.dir_file(&f.name).with_context(|| format!("the manifest of {}", b.name))?;
        files.push((f.name.clone(), f.size, key, f.sha256.clone()));
    }
    // The same bytes for every download of a backup: its files dated when
    // it was taken.
    let mtime = chrono::DateTime::parse_from_rfc3339(&manifest.created_at).map_or(0, |t| t.timestamp().max(0) as u64);
    let (storage, b) = (ctx.storage.clone(), b.clone());
    Ok(Outlet::body(&b.name.clone(), turn, |out| async move { send_tar(&storage, &b, &files, mtime, &out).await }))
}

/// How long a download may take nothing before it is ended (its turn is
/// freed for others).
const IDLE_PATIENCE: Duration = Duration::from_secs(60);

/// Where a response's bytes go, from a task of its own that holds the
/// download's turn until the last byte is taken, the client goes away, or
/// it takes nothing for `IDLE_PATIENCE`.
struct Outlet(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl Outlet {
    /// A body fed by `fill`; an error it returns ends the response in an
    /// error (the client sees a failed download, never a clean end).
    fn body<F, Fut>(name: &str, turn: OwnedSemaphorePermit, fill: F) -> Body
    where
        F: FnOnce(Outlet) -> Fut,
        Fut: std::future::Future<Output = Result<()>> + Send + 'static,
    {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
        let fed = fill(Outlet(tx.clone()));
        let name = name.to_string();
        tokio::spawn(async move {
            let _turn = turn;
            if let Err(e) = fed.await {
                tracing::warn!(backup = %name, "serving a link: {e:#}");
                let _ =
                    tokio::time::timeout(IDLE_PATIENCE, tx.send(Err(std::io::Error::other(format!("{e:#}"))))).await;
            }
        });
        Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    async fn send(&self, bytes: Bytes) -> Result<()> {
        match tokio::time::timeout(IDLE_PATIENCE, self.0.send(Ok(bytes))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => bail!("the client went away"),
            Err(_) => bail!("the client took nothing for {IDLE_PATIENCE:?}: ending the download"),
        }
    }
}

/// The tar's bytes into `out`: the folder, each file, the end.
async fn send_tar(
    storage: &crate::store::storage::Storage,
    b: &Stored,
    files: &[(String, u64, object_store::path::Path, String)],
    mtime: u64,
    out: &Outlet,
) -> Result<()> {
    out.send(tar_header(&format!("{}/", b.name), 0, mtime, true)?).await?;
    for (name, size, key, sha256) in files {
        out.send(tar_header(&format!("{}/{name}", b.name), *size, mtime, false)?).await?;
        let object = verify::open(storage, key, sha256, None).await?;
        let mut body = ReaderStream::with_capacity(verify::decompressed(object, &b.encrypted_to).await?, 1 << 16);
        let mut sent = 0u64;
        while let Some(piece) = body.next().await {
            let piece = piece.with_context(|| format!("reading {key}"))?;
            sent += piece.len() as u64;
            if sent > *size {
                bail!("{key} holds more than the {size} bytes its manifest says");
            }
            out.send(piece).await?;
        }
        if sent != *size {
            bail!("{key} holds {sent} bytes, not the {size} its manifest says");
        }
        let pad = (512 - (size % 512) as usize) % 512;
        if pad > 0 {
            out.send(Bytes::from(vec![0u8; pad])).await?;
        }
    }
    // The end of the archive: two empty blocks.
    out.send(Bytes::from(vec![0u8; 1024])).await
}

/// A tar header for `path`, a file of `size` bytes or a folder.
fn tar_header(path: &str, size: u64, mtime: u64, folder: bool) -> Result<Bytes> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path).with_context(|| format!("naming {path:?} in a tar"))?;
    h.set_size(size);
    h.set_mode(if folder { 0o755 } else { 0o644 });
    h.set_mtime(mtime);
    h.set_entry_type(if folder { tar::EntryType::Directory } else { tar::EntryType::Regular });
    h.set_cksum();
    Ok(Bytes::copy_from_slice(h.as_bytes()))
}
