//! Endpoints that move files: the job log (tailing by offset), artifact
//! download (streamed, with single-range `Range` for resuming) and blob
//! upload (streamed to a temporary file, digest verified, stored once).

use crate::apierror::ApiError;
use crate::handlers::{load_job, Data};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use rayvault::artifacts::{is_safe_name, temp_path_for};
use rayvault::protocol::{self, ApiCode, BlobStored, LogChunk, MAX_LOG_CHUNK};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};

/// Query of `GET /jobs/{id}/log`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// `GET /jobs/{id}/log?offset=N[&max_bytes=M]`: the log from byte `offset`.
pub async fn log(st: Data, id: web::Path<String>, q: web::Query<LogQuery>) -> Result<HttpResponse, ApiError> {
    let mut rec = load_job(&st, &id).await?;
    let path = st.env.paths.log_path(&rec.job_id);
    let offset = q.offset;
    // At least 4 bytes, the longest UTF-8 sequence, so that a chunk that
    // starts on a character boundary always holds a whole character.
    let max = q.max_bytes.unwrap_or(MAX_LOG_CHUNK).clamp(4, MAX_LOG_CHUNK);
    // A small log is in memory while the job is queued or running, and in
    // the job's record once it ended; only a larger one is in its file.
    let live = if rec.state.is_terminal() { None } else { st.env.live_log(&rec.job_id) };
    let held = match live {
        Some(log) => log.in_memory(),
        None => {
            if !rec.state.is_terminal() {
                // It may have ended since the first read.
                rec = load_job(&st, &id).await?;
            }
            rec.log.take().map(String::into_bytes)
        }
    };
    let read = match held {
        Some(all) => {
            let size = all.len() as u64;
            let start = offset.min(size) as usize;
            let end = (offset.saturating_add(max)).min(size) as usize;
            Ok((size, all[start..end.max(start)].to_vec()))
        }
        None => web::block(move || -> std::io::Result<(u64, Vec<u8>)> {
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, Vec::new())),
            Err(e) => return Err(e),
        };
        let size = f.metadata()?.len();
        if offset >= size {
            return Ok((size, Vec::new()));
        }
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::new();
        f.take(max).read_to_end(&mut buf)?;
        Ok((size, buf))
    })
    .await?,
    }
    .map_err(|e| ApiError::internal("reading the job log", e))?;
    let (size, mut bytes) = read;
    if offset > size {
        return Err(ApiError::new(ApiCode::RangeNotSatisfiable, format!("offset {offset} is past the end of the log ({size} bytes)")));
    }
    // Never split a UTF-8 sequence: stop before an incomplete one at the end
    // so the next read starts on a character boundary. Only a finished log
    // that really ends in a broken sequence has it passed on (replaced).
    if let Err(e) = std::str::from_utf8(&bytes) {
        let log_ends_here = rec.state.is_terminal() && offset + bytes.len() as u64 >= size;
        if e.error_len().is_none() && !log_ends_here {
            bytes.truncate(e.valid_up_to());
        }
    }
    let next_offset = offset + bytes.len() as u64;
    Ok(HttpResponse::Ok().json(LogChunk {
        job_id: rec.job_id,
        offset,
        next_offset,
        size,
        data: String::from_utf8_lossy(&bytes).into_owned(),
        complete: rec.state.is_terminal() && next_offset >= size,
    }))
}

/// A parsed single `Range: bytes=` request against a file of `size` bytes:
/// the inclusive first and last byte.
pub fn parse_range(value: &str, size: u64) -> Result<(u64, u64), ()> {
    let spec = value.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    // Digits only; a number too large for u64 counts as u64::MAX, so that a
    // last byte past the end is clamped (RFC 9110 14.1.2) and a first byte
    // past the end is unsatisfiable, never an overflow.
    let num = |s: &str| -> Result<u64, ()> {
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        Ok(s.parse().unwrap_or(u64::MAX))
    };
    let (start, end) = if a.is_empty() {
        let n = num(b)?;
        if n == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size.checked_sub(1).ok_or(())?)
    } else {
        let start = num(a)?;
        let end = if b.is_empty() { size.checked_sub(1).ok_or(())? } else { num(b)?.min(size.saturating_sub(1)) };
        (start, end)
    };
    if start >= size || start > end {
        return Err(());
    }
    Ok((start, end))
}

/// `GET /jobs/{id}/artifacts/{name}`: the artifact's bytes, whole or the
/// requested range (206), with its digest in `X-Content-SHA256`.
pub async fn download(st: Data, req: HttpRequest, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    if !is_safe_name(&name) {
        return Err(ApiError::new(
            ApiCode::ArtifactNameInvalid,
            "artifact names are plain file names (letters, digits, '.', '_', '-'; at most 128 characters)",
        ));
    }
    let rec = load_job(&st, &id).await?;
    let Some(entry) = rec.artifacts.iter().find(|a| a.name == name).cloned() else {
        return Err(ApiError::new(ApiCode::ArtifactNotFound, format!("job {} has no artifact {name:?}; list them with GET /jobs/{}/artifacts", rec.job_id, rec.job_id)));
    };
    let file_path = st.env.paths.artifacts_dir(&rec.job_id).join(&entry.name);
    let (file, size) = web::block(move || -> std::io::Result<(std::fs::File, u64)> {
        let file = std::fs::File::open(&file_path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    })
    .await?
    .map_err(|e| ApiError::internal("opening the artifact", e))?;
    let range = match req.headers().get(header::RANGE) {
        None => None,
        Some(v) => {
            let parsed = v.to_str().ok().and_then(|s| parse_range(s, size).ok());
            match parsed {
                Some(r) => Some(r),
                None => {
                    return Ok(HttpResponse::RangeNotSatisfiable()
                        .insert_header((header::CONTENT_RANGE, format!("bytes */{size}")))
                        .json(protocol::ErrorBody {
                            error: format!("Range must be one 'bytes=start-[end]' or 'bytes=-suffix' inside the {size}-byte artifact"),
                            code: ApiCode::RangeNotSatisfiable.as_str().into(),
                            server_time: None,
                        }))
                }
            }
        }
    };
    let (start, len) = match range {
        Some((s, e)) => (s, e - s + 1),
        None => (0, size),
    };
    // One status and header set for both ways of sending the bytes.
    let status = if range.is_some() { actix_web::http::StatusCode::PARTIAL_CONTENT } else { actix_web::http::StatusCode::OK };
    let mut headers = vec![
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (header::HeaderName::from_static("x-content-sha256"), entry.sha256.clone()),
    ];
    if let Some((s, e)) = range {
        headers.push((header::CONTENT_RANGE, format!("bytes {s}-{e}/{size}")));
    }
    #[cfg(target_os = "linux")]
    let file = match crate::direct::wanted(&req, len) {
        Some(sock) => match crate::direct::send_download(&st, &req, sock, status, &headers, file, start, len).await? {
            Ok(answered) => return Ok(answered),
            // Nothing went out: the usual answer.
            Err(file) => file,
        },
        None => file,
    };
    let mut builder = HttpResponse::build(status);
    for h in headers {
        builder.insert_header(h);
    }
    builder.no_chunking(len);
    let body = file_stream(file, start, len).map_err(|e| ApiError::internal("starting the artifact reader", e))?;
    Ok(builder.streaming(body))
}

/// Bytes read from an artifact per `read` call.
const READ_BLOCK: usize = 1 << 20;
/// Bytes handed to the HTTP layer at a time: a slice of a block, not a
/// copy. actix-web copies each body chunk into its connection's write
/// buffer; with whole 1 MiB blocks that buffer grew past the allocator's
/// 128 KiB mmap threshold (see `rayvault::memory`) and was mapped, faulted
/// in and unmapped again for every block, a quarter of the worker's CPU
/// during a large download. Slices just under the threshold keep the
/// buffer on the heap and reused (worker CPU per GiB sent: 1.15 s with
/// whole blocks, 0.6-0.75 s with 64 KiB slices, 0.5-0.6 s with these).
const SEND_CHUNK: usize = 120 * 1024;
/// Blocks read ahead of the socket, per download.
const READ_AHEAD: usize = 2;

/// Streams `len` bytes of `file` from `start`, read in [`READ_BLOCK`]
/// blocks by a thread of the download's own.
///
/// The reader thread stays ahead of the socket by at most [`READ_AHEAD`]
/// blocks (so memory stays at a few blocks per download whatever the
/// artifact's size) and stops as soon as the response is dropped, e.g. when
/// the client goes away. It is a thread of its own, not one of the blocking
/// pool's: a download holds its reader for the whole transfer, and a few
/// slow downloads must not take the pool from the store and the handlers.
fn file_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> std::io::Result<impl futures_util::Stream<Item = std::io::Result<web::Bytes>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    std::thread::Builder::new().name("artifact-reader".into()).spawn(move || {
        read_blocks(file, start, len, READ_BLOCK, |block| {
            if let Ok(b) = &block {
                rayvault::metrics::worker().artifact_bytes_served(b.len() as u64);
            }
            tx.blocking_send(block).is_ok()
        })
    })?;
    let blocks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(blocks.flat_map(|block| futures_util::stream::iter(send_chunks(block))))
}

/// A block as the [`SEND_CHUNK`]-sized slices it is sent in (an error as
/// itself).
fn send_chunks(block: std::io::Result<web::Bytes>) -> Vec<std::io::Result<web::Bytes>> {
    match block {
        Err(e) => vec![Err(e)],
        Ok(b) => (0..b.len()).step_by(SEND_CHUNK).map(|at| Ok(b.slice(at..b.len().min(at + SEND_CHUNK)))).collect(),
    }
}

/// Reads `len` bytes of `file` from `start` and hands them to `send` in
/// blocks of `block` bytes (the last one shorter), until `send` returns
/// false (nobody wants the rest). A file shorter than announced ends with
/// an `UnexpectedEof` error, a read error with that error.
///
/// The blocks circulate: a block's memory comes back here when the
/// response has sent (and dropped) it, so a download reuses the same few
/// buffers instead of allocating and page-faulting a new one per block.
fn read_blocks(mut file: std::fs::File, start: u64, len: u64, block: usize, mut send: impl FnMut(std::io::Result<web::Bytes>) -> bool) {
    let (home, free) = std::sync::mpsc::channel::<Vec<u8>>();
    if let Err(e) = file.seek(SeekFrom::Start(start)) {
        send(Err(e));
        return;
    }
    let mut left = len;
    while left > 0 {
        let mut buf = free.try_recv().unwrap_or_else(|_| vec![0u8; block]);
        let want = left.min(block as u64) as usize;
        let mut filled = 0;
        while filled < want {
            match file.read(&mut buf[filled..want]) {
                Ok(0) => {
                    send(Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the artifact shrank while it was being sent")));
                    return;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    send(Err(e));
                    return;
                }
            }
        }
        left -= filled as u64;
        let chunk = web::Bytes::from_owner(Recycled { buf, len: filled, home: home.clone() });
        if !send(Ok(chunk)) {
            return;
        }
    }
}

/// A block of [`read_blocks`] on its way to the socket; dropping it hands
/// its memory back to the reader.
struct Recycled {
    buf: Vec<u8>,
    len: usize,
    home: std::sync::mpsc::Sender<Vec<u8>>,
}

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        // The reader may have finished already; the memory is then freed.
        let _ = self.home.send(std::mem::take(&mut self.buf));
    }
}

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
        let (tmp, mut f) = match spares.take() {
            Some(s) => (s.path, s.file),
            None => {
                let tmp = temp_path_for(&dest);
                let f = std::fs::File::create(&tmp).map_err(|e| ApiError::io("storing an inline blob", e))?;
                (tmp, f)
            }
        };
        let mut p = PendingBlob { sha256, file: None, tmp, dest, size: data.len() as u64 };
        p.file = Some(f.try_clone().map_err(|e| ApiError::io("storing an inline blob", e))?);
        f.write_all(&data).map_err(|e| ApiError::io("storing an inline blob", e))?;
        pending.push(p);
    }
    Ok(pending)
}

/// The second half: syncs each written input, renames it into place
/// under its digest and syncs the blobs folder once, so that the names too
/// survive a power cut. The worker runs this while it commits the job that
/// names them (the syncs overlap) and starts the job only after both;
/// an input that could not be stored leaves the job to fail for its
/// missing input when it runs. Blocking.
pub fn finish_inline(pending: Vec<PendingBlob>) -> std::io::Result<()> {
    let mut folder = None;
    for mut p in pending {
        if let Some(f) = p.file.take() {
            let stored = f.sync_all().and_then(|()| {
                drop(f);
                std::fs::rename(&p.tmp, &p.dest)
            });
            if let Err(e) = stored {
                let _ = std::fs::remove_file(&p.tmp);
                return Err(e);
            }
            tracing::info!(sha256 = %p.sha256, size = p.size, "blob stored (inline)");
            rayvault::metrics::worker().blob_inline(p.size);
            folder = p.dest.parent().map(std::path::Path::to_path_buf);
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

#[cfg(test)]
mod tests {
    use super::{parse_range, read_blocks, send_chunks, SEND_CHUNK};
    use std::io::Write;

    /// A file of `len` bytes that are not all alike.
    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&bytes).unwrap();
        (f, bytes)
    }

    /// Every block [`read_blocks`] sends, or the error it ended with.
    fn read_all(f: &tempfile::NamedTempFile, start: u64, len: u64, block: usize) -> (Vec<Vec<u8>>, Option<std::io::Error>) {
        let (mut blocks, mut err) = (Vec::new(), None);
        read_blocks(f.reopen().unwrap(), start, len, block, |b| {
            match b {
                Ok(b) => blocks.push(b.to_vec()),
                Err(e) => err = Some(e),
            }
            true
        });
        (blocks, err)
    }

    #[test]
    fn a_range_is_read_in_whole_blocks() {
        let (f, bytes) = file_of(10_000);
        let (blocks, err) = read_all(&f, 1_000, 8_500, 4_096);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(blocks.iter().map(Vec::len).collect::<Vec<_>>(), [4_096, 4_096, 308]);
        assert_eq!(blocks.concat(), &bytes[1_000..9_500]);
        let (blocks, _) = read_all(&f, 0, 10_000, 1 << 20);
        assert_eq!(blocks, std::slice::from_ref(&bytes), "a file smaller than a block is one chunk");
    }

    #[test]
    fn a_file_shorter_than_announced_ends_with_an_error() {
        let (f, bytes) = file_of(5_000);
        let (blocks, err) = read_all(&f, 0, 6_000, 4_096);
        assert_eq!(blocks.concat(), &bytes[..4_096]);
        assert_eq!(err.map(|e| e.kind()), Some(std::io::ErrorKind::UnexpectedEof));
    }

    #[test]
    fn reading_stops_when_nobody_wants_the_rest_and_blocks_are_reused() {
        let (f, _) = file_of(40_000);
        let mut seen = Vec::new();
        read_blocks(f.reopen().unwrap(), 0, 40_000, 4_096, |b| {
            // The block is dropped here, as the response drops a block it
            // has sent: its memory goes back to the reader for the next one.
            seen.push(b.unwrap().as_ptr());
            seen.len() < 3
        });
        assert_eq!(seen.len(), 3, "the reader went on after the receiver left");
        assert!(seen.iter().all(|p| *p == seen[0]), "each block reused the memory of the one before: {seen:?}");
    }

    #[test]
    fn a_block_is_sent_as_slices_of_its_own_memory() {
        let bytes: Vec<u8> = (0..SEND_CHUNK * 2 + 100).map(|i| (i % 251) as u8).collect();
        let block = actix_web::web::Bytes::from(bytes.clone());
        let chunks: Vec<_> = send_chunks(Ok(block.clone())).into_iter().map(Result::unwrap).collect();
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), [SEND_CHUNK, SEND_CHUNK, 100]);
        assert_eq!(chunks.concat(), bytes);
        assert_eq!(chunks[1].as_ptr(), block[SEND_CHUNK..].as_ptr(), "a slice, not a copy");
        let err = send_chunks(Err(std::io::Error::other("boom")));
        assert!(matches!(&err[..], [Err(e)] if e.to_string() == "boom"));
    }

    #[test]
    fn ranges() {
        let check = |v: &str, size: u64, want: Result<(u64, u64), ()>| assert_eq!(parse_range(v, size), want, "{v}");
        check("bytes=0-9", 100, Ok((0, 9)));
        check("bytes=10-", 100, Ok((10, 99)));
        check("bytes=-10", 100, Ok((90, 99)));
        check("bytes=90-200", 100, Ok((90, 99)));
        check("bytes=100-", 100, Err(()));
        check("bytes=5-4", 100, Err(()));
        check("bytes=0-1,5-6", 100, Err(()));
        check("bytes=a-b", 100, Err(()));
        check("bytes=-0", 100, Err(()));
        check("items=0-1", 100, Err(()));
        check("bytes=0-", 0, Err(()));
        check("bytes=99999999999999999999-", 100, Err(()));
        check("bytes=0-99999999999999999999", 100, Ok((0, 99)));
        check("bytes=0-18446744073709551615", 100, Ok((0, 99)));
        check("bytes=-99999999999999999999", 100, Ok((0, 99)));
        check("bytes=18446744073709551615-", u64::MAX, Err(()));
        check("bytes=18446744073709551614-", u64::MAX, Ok((u64::MAX - 1, u64::MAX - 1)));
    }
}
