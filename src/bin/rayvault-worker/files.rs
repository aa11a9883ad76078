//! Endpoints that move files: the job log (tailing by offset), artifact
//! download (streamed, with single-range `Range` for resuming) and blobs
//! (`blobs.rs`: uploads and inputs sent inline).

mod blobs;
pub use blobs::{finish_inline, prepare_inline, put_blob, touch, PendingBlob};

use crate::apierror::ApiError;
use crate::handlers::{load_job, Data};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use rayvault::artifacts::is_safe_name;
use rayvault::protocol::{self, ApiCode, LogChunk, MAX_LOG_CHUNK};
use serde::Deserialize;
use std::io::{Read, Seek, SeekFrom};

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
