//! Everything that talks to a worker.
//!
//! - [`WorkerClient`] (this file): a signed HTTP client for every endpoint
//!   of the current contract (awc-based, so it runs inside an actix system;
//!   the tests use it directly). Artifact downloads alone bypass awc: see
//!   [`fetch`] and [`download`].
//! - [`legacy_v05`]: the v0.5 contract's client.
//! - `stream`: a submission answered in two lines (the acceptance, then the
//!   job's end), [`WorkerClient::submit_streamed`].
//! - [`node`]: [`NodeClient`], one interface over both contracts (submit,
//!   poll, cancel, log, download, health, caps, blob upload).
//! - [`error`]: [`CallError`] and its [`CallErrorKind`].
//! - [`probe`]: contract detection and caps normalisation.
//! - [`liveness`]: the lease fence and the watchdog beside a long-poll.
//! - [`pool`]: one keep-alive HTTP client per node.
//!
//! This tree is core: it knows nothing of the actors.
//!
//! Every request except `/health` carries an HMAC `Authorization` header
//! made by [`crate::auth::Keyring`] over the exact bytes sent; the header
//! value is marked sensitive. Errors keep the worker's `code` so callers can
//! tell a transient failure (connect error, 5xx, 429) from a final one.

use crate::artifacts::{sha256_file, ArtifactEntry};
use crate::auth::{Keyring, RequestTarget};
use crate::protocol::{
    self, ArtifactManifest, BlobStored, Caps, ErrorBody, FoundJobs, Health, JobView, LogChunk, SubmitJob, Submitted,
};
use awc::http::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use awc::http::{Method, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

mod download;
mod part_file;
mod stream;
mod fetch;
pub mod error;
pub mod legacy_v05;
pub mod liveness;
pub mod node;
pub mod pool;
pub mod probe;

pub use error::{auth_reason, skew_reason, CallError, CallErrorKind};
pub use node::{part_path, Accepted, CurrentClient, HeldPoll, NodeClient, Polled, Submission};
pub use pool::ClientPool;
pub use stream::HeldEnd;

/// Largest JSON response the client accepts.
const MAX_JSON: usize = 16 * 1024 * 1024;

/// Files up to this size are uploaded from memory in one read.
const SMALL_UPLOAD: u64 = 1 << 20;

/// A failure talking to a worker.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// The worker could not be reached, or the connection broke.
    #[error("cannot reach the worker at {url}: {message}")]
    Unreachable { url: String, kind: CallErrorKind, message: String },
    /// The worker answered with an error body.
    #[error("worker answered {status} {code}: {message}")]
    Api { status: u16, code: String, message: String, server_time: Option<u64> },
    /// The worker answered something the protocol does not allow.
    #[error("unexpected answer from the worker: {0}")]
    Protocol(String),
    /// A local file could not be read or written.
    #[error("local file error: {0}")]
    Io(String),
    /// A local file could not be written because the disk is full
    /// (`DISK_FULL`): free space, then retry (a download resumes).
    #[error("DISK_FULL: the local disk is full ({0}); free space, then retry")]
    DiskFull(String),
    /// A downloaded artifact does not hash to its manifest digest.
    #[error("artifact {name} has sha256 {actual}, the manifest says {expected}; the download was discarded")]
    Digest { name: String, expected: String, actual: String },
}

impl ClientError {
    /// True when retrying may help: connection failures, 5xx and 429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The worker's error code, if the worker answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

fn io_err(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(format!("{what}: {e}"))
}

/// Cancels a download when dropped (after the download ended, it has
/// nothing left to stop).
struct CancelOnDrop(Arc<fetch::Cancel>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A raw answer: status, selected headers and the body.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl RawResponse {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The error body, if the answer is one.
    pub fn error_body(&self) -> Option<ErrorBody> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A client for one worker.
pub struct WorkerClient {
    /// `http://host:port`, without a trailing slash.
    base: String,
    /// The worker's id: signed into every request so a signature made for
    /// one worker is useless on another.
    worker_id: String,
    keyring: Arc<Keyring>,
    http: awc::Client,
    timeout: Duration,
    /// Send the bare secret as `Authorization: Bearer` instead of signing
    /// (the controller's opt-in plain-token fallback; never the default).
    plain: bool,
}

impl std::fmt::Debug for WorkerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerClient").field("base", &self.base).field("worker_id", &self.worker_id).finish()
    }
}

impl WorkerClient {
    /// A client for the worker at `base` (e.g. `http://100.101.102.103:8787`)
    /// whose id is `worker_id`.
    /// It has connections of its own; [`WorkerClient::with_http`] shares a
    /// node's pooled ones instead.
    pub fn new(base: &str, worker_id: &str, keyring: Arc<Keyring>) -> Self {
        WorkerClient {
            base: base.trim_end_matches('/').to_string(),
            worker_id: worker_id.to_string(),
            keyring,
            http: pool::new_client(),
            timeout: Duration::from_secs(30),
            plain: false,
        }
    }

    /// Sends through `http` (a node's keep-alive client from
    /// [`ClientPool`]) instead of a client of its own.
    pub fn with_http(mut self, http: awc::Client) -> Self {
        self.http = http;
        self
    }

    /// Authenticates with the plain token (`Authorization: Bearer <secret>`)
    /// instead of HMAC: only for a worker that rejects HMAC, when the
    /// operator set `RAYVAULT_ALLOW_PLAIN_FALLBACK=1`.
    pub fn with_plain_token(mut self) -> Self {
        self.plain = true;
        self
    }

    /// Sets the time allowed for a response head (long-polls add their wait).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, kind: CallErrorKind, message: String) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), kind, message }
    }

    /// A request that could not be sent or got no answer head.
    fn send_failed(&self, e: awc::error::SendRequestError) -> ClientError {
        let (kind, message) = error::send_failure(&e);
        self.unreachable(kind, message)
    }

    /// An answer body that broke off.
    fn body_failed(&self, e: awc::error::PayloadError) -> ClientError {
        let (kind, message) = error::payload_failure(&e);
        self.unreachable(kind, message)
    }

    /// The signed `Authorization` value for a request.
    pub fn authorization(&self, method: &str, path_and_query: &str, body_sha256: &str) -> String {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        self.keyring.authorization(&RequestTarget { method, path, query, worker_id: &self.worker_id, body_sha256 })
    }

    /// The `Authorization` value to send: signed, or the plain token.
    fn auth_value(&self, method: &str, path_and_query: &str, body_sha256: &str) -> String {
        if self.plain {
            format!("{} {}", protocol::PLAIN_SCHEME, self.keyring.current.plain_token())
        } else {
            self.authorization(method, path_and_query, body_sha256)
        }
    }

    fn request(&self, method: Method, path_and_query: &str, body_sha256: &str, extra: Duration) -> Result<awc::ClientRequest, ClientError> {
        let auth = self.auth_value(method.as_str(), path_and_query, body_sha256);
        let mut value = HeaderValue::from_str(&auth).map_err(|e| ClientError::Protocol(format!("bad header: {e}")))?;
        value.set_sensitive(true);
        Ok(self
            .http
            .request(method, format!("{}{}", self.base, path_and_query))
            .timeout(self.timeout + extra)
            .insert_header((AUTHORIZATION, value)))
    }

    /// Sends a signed request and reads the whole answer, whatever its
    /// status (tests use this for hostile variants).
    pub async fn send_raw(&self, method: Method, path_and_query: &str, body: Bytes) -> Result<RawResponse, ClientError> {
        let sha = protocol::sha256_hex(&body);
        let req = self.request(method, path_and_query, &sha, Duration::ZERO)?;
        let req = if body.is_empty() { req } else { req.insert_header((CONTENT_TYPE, "application/json")) };
        let mut res = req.send_body(body).await.map_err(|e| self.send_failed(e))?;
        let headers = res
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
        Ok(RawResponse { status: res.status().as_u16(), headers, body })
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path_and_query: &str, body: Option<Bytes>, extra: Duration) -> Result<T, ClientError> {
        let body = body.unwrap_or_default();
        let sha = protocol::sha256_hex(&body);
        let mut req = self.request(method, path_and_query, &sha, extra)?;
        if !body.is_empty() {
            req = req.insert_header((CONTENT_TYPE, "application/json"));
        }
        let mut res = req.send_body(body).await.map_err(|e| self.send_failed(e))?;
        let status = res.status();
        let bytes = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
        decode(status, &bytes)
    }

    /// `GET /health` (unsigned).
    pub async fn health(&self) -> Result<Health, ClientError> {
        let mut res = self.http.get(format!("{}/health", self.base)).timeout(self.timeout).send().await.map_err(|e| self.send_failed(e))?;
        let status = res.status();
        let bytes = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
        decode(status, &bytes)
    }

    /// `POST /drain`: asks the worker to drain (take no new jobs) or to
    /// take jobs again.
    pub async fn drain(&self, drain: bool) -> Result<protocol::DrainState, ClientError> {
        let body = serde_json::to_vec(&protocol::DrainRequest { drain }).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.call(Method::POST, "/drain", Some(Bytes::from(body)), Duration::ZERO).await
    }

    /// `GET /caps`.
    pub async fn caps(&self) -> Result<Caps, ClientError> {
        self.call(Method::GET, "/caps", None, Duration::ZERO).await
    }

    /// `POST /jobs`: a new job, or the existing one for the same inputs.
    pub async fn submit(&self, job: &SubmitJob) -> Result<Submitted, ClientError> {
        self.submit_inline(job, &[]).await
    }

    /// `POST /jobs` carrying the inputs in `inline` (digest and bytes) in
    /// the body's `blobs` list ([`crate::protocol::InlineBlob`]), so that
    /// they need no `PUT /blobs` first. The worker must allow it (its
    /// `/caps` `inline_blob_bytes`).
    pub async fn submit_inline(&self, job: &SubmitJob, inline: &[(&str, &[u8])]) -> Result<Submitted, ClientError> {
        let body = submit_body(job, inline)?;
        self.call(Method::POST, "/jobs", Some(Bytes::from(body)), Duration::ZERO).await
    }

    /// `GET /jobs?run_id=R&job_id=J`: the jobs this worker holds for the
    /// controller's `run_id`/`job_id` (their label), newest first.
    pub async fn find_jobs(&self, run_id: &str, job_id: &str) -> Result<FoundJobs, ClientError> {
        let path = format!("/jobs?run_id={}&job_id={}", query_value(run_id), query_value(job_id));
        self.call(Method::GET, &path, None, Duration::ZERO).await
    }

    /// `GET /jobs/{id}`, long-polling up to `wait_s` seconds for completion.
    pub async fn job(&self, job_id: &str, wait_s: u64) -> Result<JobView, ClientError> {
        let path = if wait_s > 0 { format!("/jobs/{job_id}?wait_s={wait_s}") } else { format!("/jobs/{job_id}") };
        self.call(Method::GET, &path, None, Duration::from_secs(wait_s)).await
    }

    /// `GET /jobs/{id}?peek=1`: the job, without renewing its lease.
    pub async fn peek_job(&self, job_id: &str) -> Result<JobView, ClientError> {
        self.call(Method::GET, &format!("/jobs/{job_id}?peek=1"), None, Duration::ZERO).await
    }

    /// Long-polls until the job is finished or `timeout` passes, `poll_s`
    /// seconds per request; returns the last state seen.
    pub async fn wait(&self, job_id: &str, timeout: Duration, poll_s: u64) -> Result<JobView, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now()).as_secs();
            let view = self.job(job_id, left.min(poll_s.max(1))).await?;
            if view.state.is_terminal() || left == 0 {
                return Ok(view);
            }
        }
    }

    /// `GET /jobs/{id}/log?offset=N`.
    pub async fn log(&self, job_id: &str, offset: u64) -> Result<LogChunk, ClientError> {
        self.call(Method::GET, &format!("/jobs/{job_id}/log?offset={offset}"), None, Duration::ZERO).await
    }

    /// The whole log, read chunk by chunk.
    pub async fn full_log(&self, job_id: &str) -> Result<String, ClientError> {
        let mut out = String::new();
        let mut offset = 0;
        loop {
            let chunk = self.log(job_id, offset).await?;
            out.push_str(&chunk.data);
            if chunk.next_offset == offset || chunk.next_offset >= chunk.size {
                return Ok(out);
            }
            offset = chunk.next_offset;
        }
    }

    /// `GET /jobs/{id}/artifacts`.
    pub async fn artifacts(&self, job_id: &str) -> Result<ArtifactManifest, ClientError> {
        self.call(Method::GET, &format!("/jobs/{job_id}/artifacts"), None, Duration::ZERO).await
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<JobView, ClientError> {
        self.call(Method::POST, &format!("/jobs/{job_id}/cancel"), None, Duration::from_secs(15)).await
    }

    /// Downloads an artifact to `dest`, resuming from `dest` + `.part` if a
    /// previous attempt left one, and checks the manifest's size and digest
    /// before the file gets its final name. Returns the bytes transferred
    /// this time.
    ///
    /// The transfer runs on a thread of its own over a plain TCP connection
    /// ([`fetch`]), with reads and writes on the socket timed out after the
    /// client's timeout; dropping the returned future shuts the connection
    /// down. The digest is computed while the bytes arrive (a resumed download
    /// hashes the kept prefix once first), so this is the only verification
    /// the artifact needs: a file under `dest` is whole and verified, and a
    /// mismatch deletes the `.part` file. A transfer cut short keeps its
    /// `.part` file for the next attempt to resume.
    pub async fn download_artifact(&self, job_id: &str, entry: &ArtifactEntry, dest: &Path) -> Result<u64, ClientError> {
        let part = fetch::part_of(dest, entry);
        let mut have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);
        if have > entry.size {
            tokio::fs::remove_file(&part).await.map_err(|e| io_err("removing a stale partial download", e))?;
            have = 0;
        }
        if have == entry.size {
            // A whole .part file left by an attempt stopped before the
            // rename: hash it (once) and settle it like a fresh download.
            let (p, d, name, sha) = (part.clone(), dest.to_path_buf(), entry.name.clone(), entry.sha256.clone());
            return tokio::task::spawn_blocking(move || {
                let received = download::Sink::start(p.clone(), have)?.finish()?;
                match download::settle(received, &p, &d, &sha) {
                    Ok(Ok(())) => Ok(0),
                    Ok(Err(actual)) => Err(ClientError::Digest { name, expected: sha, actual }),
                    Err(e) => Err(download::local_io("moving the download into place", e)),
                }
            })
            .await
            .map_err(|e| io_err("checking the download", e))?;
        }
        let path = format!("/jobs/{job_id}/artifacts/{}", entry.name);
        let job = fetch::Fetch {
            base: self.base.clone(),
            authorization: self.auth_value("GET", &path, protocol::EMPTY_SHA256),
            path,
            entry: entry.clone(),
            dest: dest.to_path_buf(),
            part,
            have,
            connect_timeout: pool::CONNECT_TIMEOUT,
            io_timeout: self.timeout,
        };
        // The download runs on a thread of its own, not one of the blocking
        // pool's: it holds it for the whole transfer, and the pool is kept
        // small for short file work. If this future is dropped (the caller
        // gave up), the guard shuts its socket down and the thread ends,
        // keeping what arrived in the .part file.
        let cancel = Arc::new(fetch::Cancel::default());
        let _guard = CancelOnDrop(cancel.clone());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let worker_cancel = cancel.clone();
        std::thread::Builder::new()
            .name("artifact-download".into())
            .spawn(move || {
                download::bulk_thread();
                let _ = tx.send(job.run(&worker_cancel));
            })
            .map_err(|e| io_err("starting the download thread", e))?;
        rx.await.map_err(|e| io_err("downloading", e))?
    }

    /// `PUT /blobs/{sha256}` from bytes in memory.
    pub async fn upload_bytes(&self, data: Bytes) -> Result<BlobStored, ClientError> {
        let sha = protocol::sha256_hex(&data);
        let path = format!("/blobs/{sha}");
        let mut res = self.request(Method::PUT, &path, &sha, Duration::ZERO)?.send_body(data).await.map_err(|e| self.send_failed(e))?;
        let status = res.status();
        let bytes = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
        decode(status, &bytes)
    }

    /// `PUT /blobs/{sha256}` with a local file (read whole when it is at
    /// most 1 MiB, else streamed); returns the stored
    /// blob (use `blob:sha256:<digest>` in a payload to refer to it).
    pub async fn upload_file(&self, file: &Path) -> Result<BlobStored, ClientError> {
        // A small file (most inputs of short jobs) is read and hashed in one
        // go and sent from memory: one hand-off to the blocking pool instead
        // of a hashing pass and a stream of reads.
        let f = file.to_path_buf();
        let small = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Bytes>> {
            use std::io::Read;
            let mut h = std::fs::File::open(&f)?;
            let len = h.metadata()?.len();
            if len > SMALL_UPLOAD {
                return Ok(None);
            }
            let mut data = Vec::with_capacity(len as usize);
            h.read_to_end(&mut data)?;
            Ok(Some(Bytes::from(data)))
        })
        .await
        .map_err(|e| io_err("reading the input", e))?
        .map_err(|e| io_err(&format!("reading {}", file.display()), e))?;
        if let Some(data) = small {
            return self.upload_bytes(data).await;
        }
        let f = file.to_path_buf();
        let (sha, size) = tokio::task::spawn_blocking(move || sha256_file(&f))
            .await
            .map_err(|e| io_err("hashing the input", e))?
            .map_err(|e| io_err(&format!("reading {}", file.display()), e))?;
        let path = format!("/blobs/{sha}");
        let handle = tokio::fs::File::open(file).await.map_err(|e| io_err(&format!("opening {}", file.display()), e))?;
        let stream = futures_util::stream::unfold(handle, |mut h| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; 256 * 1024];
            match h.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), h))
                }
                Err(e) => Some((Err(e), h)),
            }
        });
        let body = awc::body::SizedStream::new(size, stream.boxed_local());
        let mut res = self
            .request(Method::PUT, &path, &sha, Duration::from_secs(3600))?
            .send_body(body)
            .await
            .map_err(|e| self.send_failed(e))?;
        let status = res.status();
        let bytes = res.body().limit(MAX_JSON).await.map_err(|e| self.body_failed(e))?;
        decode(status, &bytes)
    }
}

/// A query value percent-encoded (everything but RFC 3986's unreserved
/// characters), so that the bytes signed are the bytes sent.
fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a JSON answer, or the protocol's error body for a 4xx/5xx.
fn decode<T: DeserializeOwned>(status: StatusCode, bytes: &[u8]) -> Result<T, ClientError> {
    if status.is_success() {
        return serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(format!("{status}: {e}")));
    }
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => Err(ClientError::Api { status: status.as_u16(), code: b.code, message: b.error, server_time: b.server_time }),
        Err(_) => Err(ClientError::Api {
            status: status.as_u16(),
            code: "UNKNOWN".into(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            server_time: None,
        }),
    }
}

/// The body of `POST /jobs`: the job, with the inputs in `inline` (digest
/// and bytes) in its `blobs` list ([`crate::protocol::InlineBlob`]).
fn submit_body(job: &SubmitJob, inline: &[(&str, &[u8])]) -> Result<Vec<u8>, ClientError> {
    let protocol_err = |e: serde_json::Error| ClientError::Protocol(e.to_string());
    let mut body = serde_json::to_vec(job).map_err(protocol_err)?;
    if !inline.is_empty() {
        // Appended to the job's JSON object in place, each input
        // base64-encoded straight into the body: one buffer, however
        // large the inputs (digests are hex and base64 needs no JSON
        // escaping).
        use base64::Engine;
        let encoded: usize = inline.iter().map(|(_, d)| base64::encoded_len(d.len(), true).unwrap_or(0) + 96).sum();
        body.reserve(encoded + 16);
        if body.pop() != Some(b'}') {
            return Err(ClientError::Protocol("the job did not serialise as a JSON object".into()));
        }
        body.extend_from_slice(b",\"");
        body.extend_from_slice(crate::protocol::INLINE_BLOBS_KEY.as_bytes());
        body.extend_from_slice(b"\":[");
        for (i, (sha256, data)) in inline.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(b"{\"sha256\":");
            serde_json::to_writer(&mut body, sha256).map_err(protocol_err)?;
            body.extend_from_slice(b",\"data_b64\":\"");
            let at = body.len();
            body.resize(at + base64::encoded_len(data.len(), true).unwrap_or(0), 0);
            base64::engine::general_purpose::STANDARD
                .encode_slice(data, &mut body[at..])
                .map_err(|e| ClientError::Protocol(format!("encoding an inline input: {e}")))?;
            body.extend_from_slice(b"\"}");
        }
        body.extend_from_slice(b"]}");
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::submit_body;
    use crate::protocol::{InlineBlob, SubmitJob};
    use base64::Engine;
    use serde_json::json;

    #[test]
    fn a_submission_carries_its_inline_inputs_as_a_blobs_list() {
        let job = SubmitJob { step_name: "AUDIO_POSTCHECK".into(), payload: json!({"audio_paths": ["blob:sha256:aa"]}), inputs_hash: None, label: Some("r/j".into()), lease_s: Some(4) };
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&submit_body(&job, &[]).unwrap()).unwrap(), serde_json::to_value(&job).unwrap());
        let (a, b): (Vec<u8>, Vec<u8>) = ((0..=255).collect(), b"xy".to_vec());
        let body = submit_body(&job, &[("aa", &a), ("bb", &b)]).unwrap();
        let mut doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let blobs: Vec<InlineBlob> = serde_json::from_value(doc.as_object_mut().unwrap().remove("blobs").unwrap()).unwrap();
        assert_eq!(doc, serde_json::to_value(&job).unwrap(), "the job itself is unchanged");
        let decoded: Vec<(String, Vec<u8>)> =
            blobs.into_iter().map(|b| (b.sha256, base64::engine::general_purpose::STANDARD.decode(b.data_b64).unwrap())).collect();
        assert_eq!(decoded, [("aa".to_string(), a), ("bb".to_string(), b)]);
    }
}
