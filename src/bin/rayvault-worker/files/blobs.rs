//! Blobs, the inputs a job names by digest: uploaded with
//! `PUT /blobs/{sha256}` (streamed to a temporary file, digest verified,
//! stored once) or sent inline in `POST /jobs` (checked and written before
//! the job commits, synced and renamed into place beside the commit).

use crate::apierror::ApiError;
use crate::handlers::Data;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use rayvault::artifacts::temp_path_for;
use rayvault::protocol::{self, ApiCode, BlobStored};
use sha2::{Digest, Sha256};
use std::io::Write;

/// Marks a staged blob as used now. Retention prunes blobs by their
/// modification time, so a blob announced again or named by a new job must
/// look new, or it could be deleted before the job that needs it runs.
pub fn touch(path: &std::path::Path) {
    let result = std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "could not refresh a blob's time; retention may prune it early");
    }
}

/// An input sent inline, checked and written to its temporary file, not
/// yet synced and renamed into place ([`finish_inline`]). Dropped before
/// that, its temporary file is removed.
pub struct PendingBlob {
    pub sha256: String,
    file: Option<std::fs::File>,
    tmp: std::path::PathBuf,
    dest: std::path::PathBuf,
    size: u64,
    /// The temporary file's name is already durable (a spare made ahead
    /// of time, see [`crate::spares`]), so the rename needs no sync of the
    /// folder before the job is acknowledged.
    named: bool,
}

impl PendingBlob {
    /// The temporary file the input was written to.
    pub fn temp_path(&self) -> &std::path::Path {
        &self.tmp
    }
}

impl Drop for PendingBlob {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Decodes the inputs a `POST /jobs` carried inline and checks that each
/// hashes to its digest (`DIGEST_MISMATCH` otherwise): digest and bytes.
fn decode_inline(inline: Vec<protocol::InlineBlob>) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    use base64::Engine;
    inline
        .into_iter()
        .map(|blob| {
            let data = base64::engine::general_purpose::STANDARD
                .decode(blob.data_b64.as_bytes())
                .map_err(|e| ApiError::bad_request(format!("inline blob {} is not valid base64 (standard alphabet, padded): {e}", blob.sha256)))?;
            let got = hex::encode(Sha256::digest(&data));
            if got != blob.sha256 {
                return Err(ApiError::new(ApiCode::DigestMismatch, format!("inline blob {} hashes to {got}; the job was not accepted", blob.sha256)));
            }
            Ok((blob.sha256, data))
        })
        .collect()
}

/// The first half of storing the inputs a `POST /jobs` carried inline, as
/// `PUT /blobs/{sha256}` would: each is decoded and checked
/// ([`decode_inline`]); a blob already stored is only touched, the others
/// are written to a temporary file, a spare one made ahead of time when one
/// is ready ([`crate::spares`]), else a new one (a full disk shows here, as
/// `DISK_FULL`, before the job is accepted). Blocking.
pub fn prepare_inline(
    paths: &rayvault::store::WorkerPaths,
    spares: &std::sync::Arc<crate::spares::Spares>,
    inline: Vec<protocol::InlineBlob>,
) -> Result<Vec<PendingBlob>, ApiError> {
    let mut pending = Vec::new();
    for (sha256, data) in decode_inline(inline)? {
        let dest = paths.blob_path(&sha256);
        if dest.is_file() {
            touch(&dest);
            continue;
        }
        let (tmp, mut f, named) = match spares.take() {
            Some(s) => (s.path, s.file, s.named),
            None => {
                let tmp = temp_path_for(&dest);
                let f = std::fs::File::create(&tmp).map_err(|e| ApiError::io("storing an inline blob", e))?;
                (tmp, f, false)
            }
        };
        let mut p = PendingBlob { sha256, file: None, tmp, dest, size: data.len() as u64, named };
        p.file = Some(f.try_clone().map_err(|e| ApiError::io("storing an inline blob", e))?);
        f.write_all(&data).map_err(|e| ApiError::io("storing an inline blob", e))?;
        pending.push(p);
    }
    Ok(pending)
}

/// The second half: syncs each written input and renames it into place
/// under its digest, so that it survives a power cut. An input written
/// into a spare file, whose name was made durable ahead of time, needs
/// nothing more: a rename lost to a power cut is redone at the next start
/// from that name ([`crate::spares::recover_leftovers`]). Otherwise the
/// blobs folder is synced once after the renames. The worker runs this
/// while it commits the job that names them (the syncs overlap) and
/// starts the job only after both (or, for a job started early, reads
/// the temporary files meanwhile); an input that could not be stored
/// leaves the job to fail for its missing input when it runs. Blocking.
///
/// `keep_temp`: a job started before its acceptance reads the temporary
/// files while this runs, so each is hard-linked into place rather than
/// renamed, and the job removes the temporary name once its step is done
/// (a name left by a crash is removed at the next start, as its blob is
/// there already).
pub fn finish_inline(pending: Vec<PendingBlob>, keep_temp: bool) -> std::io::Result<()> {
    let mut folder = None;
    for mut p in pending {
        if let Some(f) = p.file.take() {
            let stored = f.sync_all().and_then(|()| {
                drop(f);
                if keep_temp {
                    match std::fs::hard_link(&p.tmp, &p.dest) {
                        // Stored meanwhile by another submission: the same bytes.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                        other => other,
                    }
                } else {
                    std::fs::rename(&p.tmp, &p.dest)
                }
            });
            if let Err(e) = stored {
                let _ = std::fs::remove_file(&p.tmp);
                return Err(e);
            }
            tracing::info!(sha256 = %p.sha256, size = p.size, "blob stored (inline)");
            rayvault::metrics::worker().blob_inline(p.size);
            if !p.named {
                folder = p.dest.parent().map(std::path::Path::to_path_buf);
            }
        }
    }
    match folder {
        Some(dir) => rayvault::artifacts::sync_dir(&dir),
        None => Ok(()),
    }
}

/// `PUT /blobs/{sha256}`: stores the body under its digest once. The bytes
/// are written to a temporary file and hashed as they arrive (in blocking
/// tasks, a MiB at a time); only a matching digest is renamed into place.
pub async fn put_blob(st: Data, req: HttpRequest, digest: web::Path<String>, mut body: web::Payload) -> Result<HttpResponse, ApiError> {
    let digest = digest.into_inner();
    if !protocol::is_sha256_hex(&digest) {
        return Err(ApiError::bad_request("the blob path must be /blobs/<sha256 as 64 lower-case hex digits>"));
    }
    let max = st.limits.max_blob_bytes;
    let too_large = || ApiError::new(ApiCode::PayloadTooLarge, format!("the blob exceeds {max} bytes (worker.max_blob_bytes)"));
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH) {
        let len = len.to_str().ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))?;
        if len > max {
            return Err(too_large());
        }
    }
    let final_path = st.env.paths.blob_path(&digest);
    if tokio::fs::try_exists(&final_path).await.unwrap_or(false) {
        let p = final_path.clone();
        web::block(move || touch(&p)).await?;
        let size = tokio::fs::metadata(&final_path).await.map(|m| m.len()).unwrap_or(0);
        return Ok(HttpResponse::Ok().json(BlobStored { sha256: digest, size, created: false }));
    }
    let tmp = temp_path_for(&final_path);
    let t = tmp.clone();
    let file = web::block(move || std::fs::File::create(&t)).await?.map_err(|e| ApiError::io("creating the blob file", e))?;
    let mut sink = Some((file, Sha256::new()));
    let mut pending = web::BytesMut::new();
    let mut total = 0u64;
    let result: Result<(), ApiError> = async {
        loop {
            let next = body.next().await;
            if let Some(chunk) = &next {
                let chunk = chunk.as_ref().map_err(|e| ApiError::bad_request(format!("reading the upload failed: {e}")))?;
                total += chunk.len() as u64;
                if total > max {
                    return Err(too_large());
                }
                pending.extend_from_slice(chunk);
            }
            if pending.len() >= (1 << 20) || (next.is_none() && !pending.is_empty()) {
                let data = pending.split().freeze();
                let (mut f, mut h) = sink.take().ok_or_else(|| ApiError::internal("blob upload", "sink lost"))?;
                let (f, h) = web::block(move || -> std::io::Result<_> {
                    h.update(&data);
                    f.write_all(&data)?;
                    Ok((f, h))
                })
                .await?
                .map_err(|e| ApiError::io("writing the blob", e))?;
                sink = Some((f, h));
            }
            if next.is_none() {
                return Ok(());
            }
        }
    }
    .await;
    let finish = match (result, sink) {
        (Ok(()), Some((f, h))) => {
            let got = hex::encode(h.finalize());
            if got != digest {
                Err(ApiError::new(ApiCode::DigestMismatch, format!("the uploaded bytes hash to {got}, not {digest}; the upload was discarded")))
            } else {
                let (t, fp) = (tmp.clone(), final_path.clone());
                web::block(move || -> std::io::Result<()> {
                    f.sync_all()?;
                    drop(f);
                    std::fs::rename(&t, &fp)?;
                    // The new name, too, must survive a power cut.
                    fp.parent().map_or(Ok(()), rayvault::artifacts::sync_dir)
                })
                .await?
                .map_err(|e| ApiError::io("storing the blob", e))
            }
        }
        (Err(e), _) => Err(e),
        (Ok(()), None) => Err(ApiError::internal("blob upload", "sink lost")),
    };
    if let Err(e) = finish {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(e);
    }
    tracing::info!(sha256 = %digest, size = total, "blob stored");
    rayvault::metrics::worker().blob_bytes_received(total);
    Ok(HttpResponse::Created().json(BlobStored { sha256: digest, size: total, created: true }))
}
