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
//! download, never a clean end), and a directory-format backup is verified
//! whole before its first byte is sent.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use anyhow::Result;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use pgbackups_core::{link, naming};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::ctx::Ctx;
use crate::pg::conn;
use crate::serve::Served;
use crate::store::backups::{self, Stored};
use crate::store::layout::Format;
use crate::store::verify;

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
    match respond(&s.ctx, name, ext).await {
        Ok(Some(r)) => r,
        Ok(None) => status(StatusCode::NOT_FOUND),
        Err(e) => {
            tracing::warn!(backup = name, "serving a link: {e:#}");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

async fn respond(ctx: &Arc<Ctx>, name: &str, ext: &str) -> Result<Option<Response>> {
    let control = conn::connect(&ctx.cfg.store.database_url).await?;
    let Ok(b) = backups::find(&control, Some(name)).await else {
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
        Format::Custom => custom_body(ctx, &b).await?,
        Format::Directory => tar_body(ctx, &b).await?,
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
async fn custom_body(ctx: &Ctx, b: &Stored) -> Result<Body> {
    let object = verify::open(&ctx.storage, &b.keys(&ctx.storage).dump(), &b.checksum, None).await?;
    Ok(Body::from_stream(ReaderStream::with_capacity(verify::decompressed(object, &b.encrypted_to).await?, 1 << 16)))
}

/// A directory-format backup, verified into staging, then streamed as a tar.
async fn tar_body(ctx: &Ctx, b: &Stored) -> Result<Body> {
    let staging = ctx.staging.temp("link-")?;
    let dir = backups::fetch(&ctx.storage, b, staging.path(), &Arc::new(AtomicU64::new(0))).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(8);
    let name = b.name.clone();
    tokio::task::spawn_blocking(move || {
        let _keep = staging;
        let mut t = tar::Builder::new(ChannelWriter(tx.clone()));
        let res = t.append_dir_all(&name, &dir).and_then(|_| t.finish());
        if let Err(e) = res {
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(Body::from_stream(tokio_stream_from(rx)))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
