//! The files of a job's receipt folder, as the dashboard lists and serves
//! them: only plain names ([`is_safe_name`]) of regular files directly in
//! that folder, never a symbolic link, never a path outside it.

use super::{error, Data};
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use rayvault::artifacts::is_safe_name;
use rayvault::receipt::{receipt_dir, Receipt, LOG_FILE, RECEIPT_FILE};
use serde::Serialize;
use std::io::{Read as _, Seek as _};
use std::path::{Path, PathBuf};

/// How the page shows a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Audio,
    Video,
    /// Anything else: a download.
    File,
}

/// A file's Content-Type and how the page shows it, from its extension.
pub fn kind_of(name: &str) -> (&'static str, Kind) {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => ("image/jpeg", Kind::Image),
        "png" => ("image/png", Kind::Image),
        "webp" => ("image/webp", Kind::Image),
        "gif" => ("image/gif", Kind::Image),
        "wav" => ("audio/wav", Kind::Audio),
        "mp3" => ("audio/mpeg", Kind::Audio),
        "flac" => ("audio/flac", Kind::Audio),
        "ogg" | "oga" => ("audio/ogg", Kind::Audio),
        "m4a" => ("audio/mp4", Kind::Audio),
        "mp4" | "m4v" => ("video/mp4", Kind::Video),
        "webm" => ("video/webm", Kind::Video),
        "json" => ("application/json", Kind::File),
        "txt" | "log" | "srt" | "vtt" => ("text/plain; charset=utf-8", Kind::File),
        _ => ("application/octet-stream", Kind::File),
    }
}

/// One file in a job's listing.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub kind: Kind,
    /// Where the page fetches it (`/files/{run_id}/{job_id}/{name}`).
    pub url: String,
}

/// The file `name` of the receipt folder `dir`, when it is a regular file
/// there (not a link, not a folder). Blocking.
fn regular_file(dir: &Path, name: &str) -> Option<(PathBuf, u64)> {
    if !is_safe_name(name) {
        return None;
    }
    let path = dir.join(name);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    meta.file_type().is_file().then_some((path, meta.len()))
}

/// The receipt's artifacts, then the log and the receipt itself, that
/// exist in the receipt folder. Blocking.
pub fn listing(dir: &Path, receipt: Option<&Receipt>) -> Vec<Listed> {
    let (Some(run), Some(job)) = (dir.parent().and_then(Path::file_name), dir.file_name()) else { return Vec::new() };
    let (run, job) = (run.to_string_lossy(), job.to_string_lossy());
    let artifacts = receipt.map(|r| r.artifacts.iter().map(|a| a.name.as_str()).collect::<Vec<_>>()).unwrap_or_default();
    let mut out: Vec<Listed> = Vec::new();
    for name in artifacts.into_iter().chain([LOG_FILE, RECEIPT_FILE]) {
        if out.iter().any(|l| l.name == name) {
            continue;
        }
        if let Some((_, size)) = regular_file(dir, name) {
            out.push(Listed { name: name.to_string(), size, kind: kind_of(name).1, url: format!("/files/{run}/{job}/{name}") });
        }
    }
    out
}

/// Reads at most `max` bytes of `path` from `offset`: (text, next offset,
/// size). A missing file reads as empty. Blocking.
pub fn read_from(path: &Path, offset: u64, max: u64) -> std::io::Result<(String, u64, u64)> {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((String::new(), offset, 0)),
        Err(e) => return Err(e),
    };
    let size = f.metadata()?.len();
    let start = offset.min(size);
    f.seek(std::io::SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(max).read_to_end(&mut buf)?;
    // Stop before a UTF-8 sequence cut in half; the next read starts there.
    let cut = match std::str::from_utf8(&buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    buf.truncate(cut);
    Ok((String::from_utf8_lossy(&buf).into_owned(), start + cut as u64, size))
}

/// The byte range a `Range` header asks for, inclusive, within a file of
/// `len` bytes: `Ok(None)` for the whole file (no header, or one we do not
/// serve in part: several ranges, another unit), `Err(())` when the range
/// lies outside the file (416).
pub fn byte_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else { return Ok(None) };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| s.parse::<u64>().map_err(|_| ());
    let range = match (first.is_empty(), last.is_empty()) {
        // `bytes=-N`: the last N bytes.
        (true, false) => {
            let n = parse(last)?;
            if n == 0 || len == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len - 1)
        }
        (false, true) => (parse(first)?, len.saturating_sub(1)),
        (false, false) => (parse(first)?, parse(last)?.min(len.saturating_sub(1))),
        (true, true) => return Ok(None),
    };
    if range.0 >= len || range.0 > range.1 {
        return Err(());
    }
    Ok(Some(range))
}

/// `GET /files/{run_id}/{job_id}/{name}`: a file of the job's receipt
/// folder, streamed, whole or one byte range (so that players can seek).
/// Pictures, sound and video are shown in the page (`inline`); everything
/// else is a download (`attachment`).
pub async fn serve(dash: Data, req: HttpRequest, path: web::Path<(String, String, String)>) -> HttpResponse {
    if let Err(r) = dash.session(&req) {
        return r.response();
    }
    let (run_id, job_id, name) = path.into_inner();
    if ![&run_id, &job_id, &name].iter().all(|s| is_safe_name(s)) {
        return error(400, "BAD_REQUEST", "file names are plain names: letters, digits, '_', '-' and '.' (not leading)");
    }
    let dir = receipt_dir(&dash.settings.cluster_dir(), &run_id, &job_id);
    let n = name.clone();
    let found = web::block(move || -> Option<(std::fs::File, u64)> {
        let (path, _) = regular_file(&dir, &n)?;
        let file = std::fs::File::open(path).ok()?;
        // Measured on the open file: what is sent is what was checked.
        let meta = file.metadata().ok()?;
        meta.is_file().then_some((file, meta.len()))
    })
    .await
    .ok()
    .flatten();
    let Some((mut file, len)) = found else {
        return error(404, "FILE_NOT_FOUND", format!("no file {name} in the receipt folder of {run_id}/{job_id}"));
    };
    let (content_type, kind) = kind_of(&name);
    let disposition = if kind == Kind::File { format!("attachment; filename=\"{name}\"") } else { "inline".to_string() };
    let range = byte_range(req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()), len);
    let mut answer = match range {
        Ok(None) => HttpResponse::Ok(),
        Ok(Some((first, last))) => {
            if file.seek(std::io::SeekFrom::Start(first)).is_err() {
                return error(500, "INTERNAL", "cannot read the file");
            }
            let mut partial = HttpResponse::PartialContent();
            partial.insert_header((header::CONTENT_RANGE, format!("bytes {first}-{last}/{len}")));
            partial
        }
        Err(()) => {
            return HttpResponse::RangeNotSatisfiable().insert_header((header::CONTENT_RANGE, format!("bytes */{len}"))).finish();
        }
    };
    let send = match range {
        Ok(Some((first, last))) => last - first + 1,
        _ => len,
    };
    answer
        .content_type(content_type)
        .insert_header((header::CONTENT_DISPOSITION, disposition))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .no_chunking(send)
        .streaming(chunks(tokio::fs::File::from_std(file), send))
}

/// The first `len` bytes of `file` as a stream of chunks.
fn chunks(file: tokio::fs::File, len: u64) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> {
    use tokio::io::AsyncReadExt as _;
    futures_util::stream::unfold((file, len), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; left.min(64 * 1024) as usize];
        match file.read(&mut buf).await {
            Ok(0) => Some((Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the file shrank while it was sent")), (file, 0))),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), (file, left - n as u64)))
            }
            Err(e) => Some((Err(e), (file, 0))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_by_extension() {
        let check = |name: &str, ct: &str, kind: Kind| assert_eq!(kind_of(name), (ct, kind), "{name}");
        check("frame_0001.jpg", "image/jpeg", Kind::Image);
        check("FRAME.PNG", "image/png", Kind::Image);
        check("chunk_001.wav", "audio/wav", Kind::Audio);
        check("job_receipt.json", "application/json", Kind::File);
        check("worker.log", "text/plain; charset=utf-8", Kind::File);
        check("page.html", "application/octet-stream", Kind::File);
        check("noext", "application/octet-stream", Kind::File);
    }

    #[test]
    fn only_regular_files_with_safe_names_are_served() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("receipts").join("run").join("job");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("frame_0001.jpg"), b"jpeg").unwrap();
        std::fs::write(root.path().join("secret.txt"), b"outside").unwrap();
        assert_eq!(regular_file(&dir, "frame_0001.jpg").map(|(_, n)| n), Some(4));
        assert!(regular_file(&dir, "sub").is_none(), "a folder");
        assert!(regular_file(&dir, "missing.jpg").is_none());
        for bad in ["../../../secret.txt", "..", ".hidden", "a/b", "a\\b", ""] {
            assert!(regular_file(&dir, bad).is_none(), "{bad}");
        }
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path().join("secret.txt"), dir.join("link.txt")).unwrap();
            assert!(regular_file(&dir, "link.txt").is_none(), "a symbolic link is not followed");
        }
        let listed = listing(&dir, None);
        assert!(listed.is_empty(), "no receipt, no log: {listed:?}");
        std::fs::write(dir.join(LOG_FILE), b"line\n").unwrap();
        let listed = listing(&dir, None);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].url, "/files/run/job/worker.log");
    }

    #[test]
    fn byte_ranges() {
        let check = |h: Option<&str>, len: u64, expected: Result<Option<(u64, u64)>, ()>| assert_eq!(byte_range(h, len), expected, "{h:?} of {len}");
        check(None, 100, Ok(None));
        check(Some("bytes=0-"), 100, Ok(Some((0, 99))));
        check(Some("bytes=10-19"), 100, Ok(Some((10, 19))));
        check(Some("bytes=90-200"), 100, Ok(Some((90, 99))));
        check(Some("bytes=-10"), 100, Ok(Some((90, 99))));
        check(Some("bytes=-200"), 100, Ok(Some((0, 99))));
        check(Some("bytes=100-"), 100, Err(()));
        check(Some("bytes=20-10"), 100, Err(()));
        check(Some("bytes=-0"), 100, Err(()));
        check(Some("bytes=0-"), 0, Err(()));
        check(Some("bytes=x-1"), 100, Err(()));
        check(Some("bytes=0-1,5-6"), 100, Ok(None));
        check(Some("items=0-1"), 100, Ok(None));
        check(Some("bytes=-"), 100, Ok(None));
    }

    #[test]
    fn reads_stop_at_whole_characters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        std::fs::write(&path, "ab\u{e9}cd").unwrap();
        assert_eq!(read_from(&path, 0, 3).unwrap(), ("ab".to_string(), 2, 6));
        assert_eq!(read_from(&path, 2, 100).unwrap(), ("\u{e9}cd".to_string(), 6, 6));
        assert_eq!(read_from(&path, 60, 100).unwrap(), (String::new(), 6, 6));
        assert_eq!(read_from(&dir.path().join("none"), 5, 100).unwrap(), (String::new(), 5, 0));
    }
}
