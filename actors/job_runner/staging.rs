//! Staging: turning local input paths in a payload into content-addressed
//! blob references, and mapping results back.
//!
//! The protocol's convention: a payload string `blob:sha256:<hex>` names a
//! blob uploaded with `PUT /blobs/{sha256}`. The controller replaces local
//! file paths in the step's declared input fields
//! ([`StepName::input_file_fields`]) with such references, so the
//! `inputs_hash` covers file content rather than a path, and a worker on
//! another machine can read the inputs.

use crate::protocol::BLOB_REF_PREFIX;
use crate::steps::{InputFileField, StepName};
use serde_json::Value;
use std::path::PathBuf;

/// One local file to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub sha256: String,
    pub size: u64,
    pub path: PathBuf,
    /// The payload string it replaced.
    pub original: String,
    /// The file's bytes, read once while staging, when it is small enough
    /// to travel inside the submission ([`crate::protocol::INLINE_BLOB_MAX`]).
    pub bytes: Option<bytes::Bytes>,
}

/// A payload with its local inputs replaced by blob references.
#[derive(Debug, Clone, PartialEq)]
pub struct Staged {
    pub payload: Value,
    pub blobs: Vec<Blob>,
}

/// Hashes every existing local file named by one of the step's input
/// fields and returns the payload with those fields rewritten. Paths that do
/// not exist here are left alone (they may name a file on the worker), and
/// so is a payload for an unknown step (it fails with `STEP_UNKNOWN`
/// later). Reads files: call it from `spawn_blocking` unless [`is_quick`].
pub fn stage(step_name: &str, payload: &Value) -> std::io::Result<Staged> {
    let mut out = payload.clone();
    let mut blobs = Vec::new();
    let fields = StepName::parse(step_name).map(StepName::input_file_fields).unwrap_or_default();
    if let Value::Object(map) = &mut out {
        for field in fields {
            match *field {
                InputFileField::One(name) => {
                    if let Some(v) = map.get_mut(name) {
                        stage_value(v, &mut blobs)?;
                    }
                }
                InputFileField::List(name) => {
                    if let Some(Value::Array(items)) = map.get_mut(name) {
                        for v in items {
                            stage_value(v, &mut blobs)?;
                        }
                    }
                }
            }
        }
    }
    blobs.sort_by(|a, b| a.sha256.cmp(&b.sha256));
    blobs.dedup_by(|a, b| a.sha256 == b.sha256);
    Ok(Staged { payload: out, blobs })
}

/// Whether staging this payload is quick enough to run inline: every input
/// path names a regular file, a blob reference or nothing here, and the
/// files hold at most [`crate::artifacts::INLINE_IO_BYTES`] together. Costs one `stat` per
/// input path; a file that grows before it is read is still read whole.
pub fn is_quick(step_name: &str, payload: &Value) -> bool {
    let Ok(step) = StepName::parse(step_name) else { return true };
    let Value::Object(map) = payload else { return true };
    let mut total = 0u64;
    let mut quick = |v: &Value| {
        let Value::String(s) = v else { return true };
        if s.starts_with(BLOB_REF_PREFIX) {
            return true;
        }
        match std::fs::metadata(s) {
            Ok(m) if m.is_file() => {
                total = total.saturating_add(m.len());
                total <= crate::artifacts::INLINE_IO_BYTES as u64
            }
            // A folder fails staging, quickly; a missing path stays as is.
            Ok(m) => m.is_dir(),
            Err(_) => true,
        }
    };
    step.input_file_fields().iter().all(|field| match *field {
        InputFileField::One(name) => map.get(name).map_or(true, &mut quick),
        InputFileField::List(name) => match map.get(name) {
            Some(Value::Array(items)) => items.iter().all(&mut quick),
            _ => true,
        },
    })
}

fn stage_value(v: &mut Value, blobs: &mut Vec<Blob>) -> std::io::Result<()> {
    let Value::String(s) = v else { return Ok(()) };
    if s.starts_with(BLOB_REF_PREFIX) {
        return Ok(());
    }
    let path = PathBuf::from(s.as_str());
    if path.is_dir() {
        // A folder here is a mistake, not a path meant for the worker.
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{s} is a folder, not a file; name a media file")));
    }
    if !path.is_file() {
        return Ok(());
    }
    let (sha256, size, bytes) = read_small(&path)?;
    let original = std::mem::replace(s, format!("{BLOB_REF_PREFIX}{sha256}"));
    blobs.push(Blob { sha256, size, path, original, bytes });
    Ok(())
}

/// Rewrites a remote result for the receipt: blob references become the
/// local paths they stood for, and worker paths ending in a synced
/// artifact's name become the local copy's path.
/// Digest and size of the file at `path`, with its bytes when it is no
/// larger than [`crate::protocol::INLINE_BLOB_MAX`] (read once, hashed from
/// memory); a larger file is hashed as it is read and not kept.
fn read_small(path: &std::path::Path) -> std::io::Result<(String, u64, Option<bytes::Bytes>)> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len > crate::protocol::INLINE_BLOB_MAX {
        let (sha256, size) = crate::artifacts::sha256_file(path)?;
        return Ok((sha256, size, None));
    }
    // Sized to the file (and the byte past it), so that it is read in one
    // call rather than in a growing series of small ones.
    let mut data = Vec::with_capacity(len as usize + 1);
    // One byte past the limit tells a file that grew since its metadata.
    f.by_ref().take(crate::protocol::INLINE_BLOB_MAX + 1).read_to_end(&mut data)?;
    if data.len() as u64 > crate::protocol::INLINE_BLOB_MAX {
        let (sha256, size) = crate::artifacts::sha256_file(path)?;
        return Ok((sha256, size, None));
    }
    let sha256 = hex::encode(sha2::Sha256::digest(&data));
    Ok((sha256, data.len() as u64, Some(bytes::Bytes::from(data))))
}

pub fn map_back(result: &mut Value, blobs: &[Blob], artifacts: &[(String, String)]) {
    match result {
        Value::String(s) => {
            if let Some(digest) = s.strip_prefix(BLOB_REF_PREFIX) {
                if let Some(b) = blobs.iter().find(|b| b.sha256 == digest) {
                    *s = b.original.clone();
                }
                return;
            }
            if s.contains(['/', '\\']) {
                let file = s.rsplit(['/', '\\']).next().unwrap_or_default();
                if let Some((_, local)) = artifacts.iter().find(|(name, _)| name == file) {
                    *s = local.clone();
                } else if let Some(b) = blobs.iter().find(|b| b.sha256 == file) {
                    // The worker's own copy of a staged input, named by digest.
                    *s = b.original.clone();
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| map_back(i, blobs, artifacts)),
        Value::Object(map) => map.values_mut().for_each(|i| map_back(i, blobs, artifacts)),
        _ => {}
    }
}

/// Rewrites a worker's message so that it names the user's files: every
/// path or reference that contains a staged blob's digest (the worker's
/// `.../blobs/<sha256>` copy, or `blob:sha256:<hex>`) becomes the path the
/// user gave. With several inputs, each is named by its own path.
pub fn user_paths(message: &str, blobs: &[Blob]) -> String {
    let mut out = message.to_string();
    for b in blobs {
        while let Some(at) = out.find(&b.sha256) {
            let end = at + b.sha256.len();
            // The token around the digest: back to a space, quote or
            // opening bracket, so `C:\w\blobs\<hex>` and `/w/blobs/<hex>`
            // are replaced whole.
            let start = out[..at]
                .char_indices()
                .rev()
                .find(|(_, c)| c.is_whitespace() || matches!(c, '"' | '\'' | '(' | '[' | '{' | '`' | '='))
                .map_or(0, |(i, c)| i + c.len_utf8());
            out.replace_range(start..end, &b.original);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stages_known_fields_and_maps_back() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.wav");
        std::fs::write(&f, b"abc").unwrap();
        let fp = f.to_string_lossy().to_string();
        let payload = json!({"media_path": fp, "audio_paths": [fp, "/nonexistent/b.wav"], "text": fp});
        let staged = stage("FFMPEG_PROBE", &payload).unwrap();
        let digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(staged.payload["media_path"], json!(format!("blob:sha256:{digest}")));
        assert_eq!(staged.payload["audio_paths"][0], json!(fp), "only the step's own fields are staged");
        assert_eq!(staged.payload["text"], json!(fp), "unknown fields are never rewritten");
        assert_eq!(staged.blobs.len(), 1);
        let post = stage("AUDIO_POSTCHECK", &payload).unwrap();
        assert_eq!(post.payload["audio_paths"][0], json!(format!("blob:sha256:{digest}")));
        assert_eq!(post.payload["audio_paths"][1], json!("/nonexistent/b.wav"));
        assert_eq!(post.payload["media_path"], json!(fp));
        assert_eq!(stage("TTS_RENDER_CHUNKS", &payload).unwrap().blobs.len(), 0);
        assert_eq!(stage("NOT_A_STEP", &payload).unwrap().payload, payload);
        let mut result = json!({"media_path": format!("blob:sha256:{digest}"), "input": format!("/w/blobs/{digest}"), "frames": ["C:\\w\\jobs\\1\\frame_0001.jpg"]});
        map_back(&mut result, &staged.blobs, &[("frame_0001.jpg".into(), "/r/frame_0001.jpg".into())]);
        assert_eq!(result, json!({"media_path": fp, "input": fp, "frames": ["/r/frame_0001.jpg"]}));
    }

    #[test]
    fn only_a_few_small_files_are_staged_inline() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.wav");
        std::fs::write(&small, vec![1u8; 40 * 1024]).unwrap();
        let big = dir.path().join("big.wav");
        std::fs::write(&big, vec![2u8; crate::artifacts::INLINE_IO_BYTES + 1]).unwrap();
        let (s, b) = (small.to_string_lossy().to_string(), big.to_string_lossy().to_string());
        let blob = format!("blob:sha256:{}", "a".repeat(64));
        assert!(is_quick("AUDIO_POSTCHECK", &json!({"audio_paths": [s, blob, "/nonexistent/x.wav"]})));
        assert!(!is_quick("AUDIO_POSTCHECK", &json!({"audio_paths": [b]})), "a large file is hashed on a blocking thread");
        assert!(!is_quick("AUDIO_POSTCHECK", &json!({"audio_paths": [s, s]})), "so are small ones that are large together");
        assert!(is_quick("FFMPEG_PROBE", &json!({"media_path": s, "audio_paths": [b]})), "only the step's own fields count");
        assert!(is_quick("FFMPEG_PROBE", &json!({"media_path": dir.path()})), "a folder fails staging at once");
        assert!(is_quick("NOT_A_STEP", &json!({"media_path": b})));
    }

    #[test]
    fn messages_name_the_users_files() {
        let blob = |sha: &str, original: &str| Blob { sha256: sha.into(), size: 1, path: original.into(), original: original.into(), bytes: None };
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let blobs = [blob(&a, "clips/one.wav"), blob(&b, "/home/u/two.wav")];
        let msg = format!("cannot decode /srv/state/worker/blobs/{a}: bad header; also 'C:\\w\\blobs\\{b}' and blob:sha256:{a}");
        assert_eq!(user_paths(&msg, &blobs), "cannot decode clips/one.wav: bad header; also '/home/u/two.wav' and clips/one.wav");
        assert_eq!(user_paths("no digests here", &blobs), "no digests here");
    }
}
