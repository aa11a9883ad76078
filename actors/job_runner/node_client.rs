//! One interface over the two worker contracts the controller speaks: the
//! current one ([`crate::protocol`], HMAC-signed requests) and the legacy
//! v0.5 one ([`crate::legacy_v05`]). The JobRunner, NodeProbe and
//! ArtifactSync only see [`NodeClient`] and [`CallError`].

use super::super::messages::Compat;
use super::super::node_probe::NodeHandle;
use crate::artifacts::ArtifactEntry;
use crate::auth::{Keyring, RequestTarget};
use crate::legacy_v05::{describe_send_error, LegacyAuth, LegacyClient, LegacyFailure};
use crate::protocol::{self, ArtifactManifest, ErrorBody, JobView, LogChunk, Submitted};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why a call to a worker failed, classified for retry decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No connection, a broken one, or a timeout: retry, then treat the node as lost.
    Unreachable(String),
    /// 401: the worker's message verbatim plus the seed's troubleshooting hint.
    Auth(String),
    /// 5xx, 429, 503: the worker is alive but cannot serve now; retry.
    Busy(u16, String),
    /// Any other refusal, with the worker's code and message.
    Refused { status: u16, code: String, message: String },
    /// A body that does not follow the contract, or a local file problem.
    Other(String),
}

impl CallError {
    /// Worth trying again on the same node.
    pub fn is_transient(&self) -> bool {
        matches!(self, CallError::Unreachable(_) | CallError::Busy(..))
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) => write!(f, "unreachable ({m})"),
            CallError::Auth(m) => f.write_str(m),
            CallError::Busy(s, m) => write!(f, "HTTP {s}: {m}"),
            CallError::Refused { status, code, message } => write!(f, "HTTP {status} {code}: {message}"),
            CallError::Other(m) => f.write_str(m),
        }
    }
}

/// The worker's 401 message verbatim, followed by the seed's hint.
pub fn auth_reason(message: &str, server_time: Option<u64>) -> String {
    if message.contains(protocol::SKEW_MESSAGE) {
        let offset = server_time
            .map(|t| {
                let d = t as i64 - crate::auth::unix_now() as i64;
                format!(" (worker clock differs from ours by {d:+} s)")
            })
            .unwrap_or_default();
        format!("401 {message}{offset}: sync system clocks (NTP)")
    } else {
        format!("401 {message}: secrets differ between Mac and Windows, or clock skew too large")
    }
}

impl From<LegacyFailure> for CallError {
    fn from(f: LegacyFailure) -> Self {
        match f {
            LegacyFailure::Unreachable(m) => CallError::Unreachable(m),
            LegacyFailure::Auth(m) => CallError::Auth(auth_reason(&m, None)),
            LegacyFailure::Status(s, m) if s >= 500 || s == 429 => CallError::Busy(s, m),
            LegacyFailure::Status(s, m) => CallError::Refused { status: s, code: String::new(), message: m },
            LegacyFailure::Protocol(m) => CallError::Other(m),
        }
    }
}

/// A signed client for one node of the current contract.
pub struct CurrentClient {
    base: String,
    worker_id: String,
    http: awc::Client,
    keyring: Arc<Keyring>,
    timeout: Duration,
}

impl CurrentClient {
    pub fn new(base: String, worker_id: String, keyring: Arc<Keyring>, timeout: Duration) -> Self {
        // No client-wide timeout: long-polls and downloads set their own.
        let http = awc::Client::builder().disable_timeout().finish();
        CurrentClient { base, worker_id, http, keyring, timeout }
    }

    fn request(&self, method: &str, path: &str, query: &str, body_sha256: &str, timeout: Duration) -> awc::ClientRequest {
        let url = if query.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{query}", self.base) };
        let auth = self.keyring.authorization(&RequestTarget { method, path, query, worker_id: &self.worker_id, body_sha256 });
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap_or(awc::http::Method::GET);
        self.http
            .request(m, url)
            .insert_header((awc::http::header::AUTHORIZATION, awc::http::header::HeaderValue::from_str(&auth).map(|mut v| {
                v.set_sensitive(true);
                v
            }).unwrap_or_else(|_| awc::http::header::HeaderValue::from_static("invalid"))))
            .timeout(timeout)
    }

    async fn finish(resp: Result<awc::ClientResponse<impl futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin>, awc::error::SendRequestError>) -> Result<(u16, Bytes), CallError> {
        let mut resp = resp.map_err(|e| CallError::Unreachable(describe_send_error(&e.to_string())))?;
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(64 * 1024 * 1024).await.map_err(|e| CallError::Unreachable(format!("response broke off: {e}")))?;
        if (200..300).contains(&status) {
            return Ok((status, bytes));
        }
        Err(error_from(status, &bytes))
    }

    async fn json<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str, query: &str, body: Option<Vec<u8>>, timeout: Duration) -> Result<(u16, T), CallError> {
        let sha = body.as_deref().map(protocol::sha256_hex).unwrap_or_else(|| protocol::EMPTY_SHA256.to_string());
        let req = self.request(method, path, query, &sha, timeout);
        let resp = match body {
            Some(b) => req.insert_header((awc::http::header::CONTENT_TYPE, "application/json")).send_body(b).await,
            None => req.send().await,
        };
        let (status, bytes) = Self::finish(resp).await?;
        let v = serde_json::from_slice(&bytes).map_err(|e| CallError::Other(format!("{path}: unexpected response ({e})")))?;
        Ok((status, v))
    }

    /// `GET /health` (not authenticated).
    pub async fn health(&self) -> Result<Value, CallError> {
        let resp = self.http.get(format!("{}/health", self.base)).timeout(self.timeout).send().await;
        let (_, bytes) = Self::finish(resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| CallError::Other(format!("/health: not JSON ({e})")))
    }

    /// `GET /caps`.
    pub async fn caps(&self) -> Result<Value, CallError> {
        Ok(self.json("GET", "/caps", "", None, self.timeout).await?.1)
    }

    /// `PUT /blobs/{sha256}`, streaming the file with its length.
    pub async fn put_blob(&self, sha256: &str, path: &Path, size: u64) -> Result<(), CallError> {
        let file = tokio::fs::File::open(path).await.map_err(|e| CallError::Other(format!("reading {}: {e}", path.display())))?;
        let stream = futures_util::stream::unfold(file, |mut f| async move {
            let mut buf = vec![0u8; 1 << 20];
            match tokio::io::AsyncReadExt::read(&mut f, &mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok::<Bytes, std::io::Error>(Bytes::from(buf)), f))
                }
                Err(e) => Some((Err(e), f)),
            }
        });
        let path_s = format!("/blobs/{sha256}");
        // An upload may take long; allow a generous time per GiB.
        let t = self.timeout + Duration::from_secs(60 + size / (8 * 1024 * 1024));
        let resp = self.request("PUT", &path_s, "", sha256, t).send_body(awc::body::SizedStream::new(size, Box::pin(stream))).await;
        Self::finish(resp).await.map(|_| ())
    }

    /// `POST /jobs`; the status tells a cached job (200) from a new one (201).
    pub async fn submit(&self, step_name: &str, payload: &Value, inputs_hash: &str, label: &str) -> Result<Submitted, CallError> {
        let body = protocol::SubmitJob { step_name: step_name.into(), payload: payload.clone(), inputs_hash: Some(inputs_hash.into()), label: Some(label.into()) };
        let bytes = serde_json::to_vec(&body).map_err(|e| CallError::Other(e.to_string()))?;
        Ok(self.json("POST", "/jobs", "", Some(bytes), self.timeout).await?.1)
    }

    /// `GET /jobs/{id}?wait_s=N`: long-polls until the job ends or N passes.
    pub async fn wait(&self, job_id: &str, wait_s: u64) -> Result<JobView, CallError> {
        let t = self.timeout + Duration::from_secs(wait_s + 2);
        Ok(self.json("GET", &format!("/jobs/{job_id}"), &format!("wait_s={wait_s}"), None, t).await?.1)
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<(), CallError> {
        self.json::<Value>("POST", &format!("/jobs/{job_id}/cancel"), "", Some(Vec::new()), self.timeout).await.map(|_| ())
    }

    /// `GET /jobs/{id}/artifacts`.
    pub async fn manifest(&self, job_id: &str) -> Result<ArtifactManifest, CallError> {
        Ok(self.json("GET", &format!("/jobs/{job_id}/artifacts"), "", None, self.timeout).await?.1)
    }

    /// `GET /jobs/{id}/log?offset=N`.
    pub async fn log(&self, job_id: &str, offset: u64) -> Result<LogChunk, CallError> {
        Ok(self.json("GET", &format!("/jobs/{job_id}/log"), &format!("offset={offset}"), None, self.timeout).await?.1)
    }

    /// `GET /jobs/{id}/artifacts/{name}` from `offset` (a Range request),
    /// appended to `dest`.
    pub async fn download(&self, job_id: &str, name: &str, dest: &Path, offset: u64) -> Result<(), CallError> {
        let path = format!("/jobs/{job_id}/artifacts/{name}");
        let mut req = self.request("GET", &path, "", protocol::EMPTY_SHA256, self.timeout);
        if offset > 0 {
            req = req.insert_header((awc::http::header::RANGE, format!("bytes={offset}-")));
        }
        let mut resp = req.send().await.map_err(|e| CallError::Unreachable(describe_send_error(&e.to_string())))?;
        let status = resp.status().as_u16();
        let append = match status {
            206 => true,
            200 => false,
            _ => {
                let body = resp.body().limit(64 * 1024).await.unwrap_or_default();
                return Err(error_from(status, &body));
            }
        };
        write_stream(&mut resp, dest, append).await
    }
}

/// Writes a response body to `dest` (appending for a Range response).
async fn write_stream<S>(resp: &mut S, dest: &Path, append: bool) -> Result<(), CallError>
where
    S: futures_util::Stream<Item = Result<Bytes, awc::error::PayloadError>> + Unpin,
{
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(dest)
        .await
        .map_err(|e| CallError::Other(format!("writing {}: {e}", dest.display())))?;
    while let Some(chunk) = resp.next().await {
        // Whatever arrived before a break stays in the partial file, so the
        // next attempt resumes after it.
        let chunk = chunk.map_err(|e| CallError::Unreachable(format!("download broke off: {e}")))?;
        file.write_all(&chunk).await.map_err(|e| CallError::Other(format!("writing {}: {e}", dest.display())))?;
    }
    file.flush().await.map_err(|e| CallError::Other(e.to_string()))
}

/// Classifies an error response of the current contract.
fn error_from(status: u16, body: &[u8]) -> CallError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message, server_time) = match parsed {
        Some(b) => (b.code, b.error, b.server_time),
        None => (String::new(), String::from_utf8_lossy(body).chars().take(300).collect(), None),
    };
    match status {
        401 => CallError::Auth(auth_reason(&message, server_time)),
        429 | 500..=599 => CallError::Busy(status, message),
        _ => CallError::Refused { status, code, message },
    }
}

/// A client for one node, whichever contract it speaks.
pub enum NodeClient {
    Current(CurrentClient),
    Legacy(LegacyClient),
}

impl NodeClient {
    pub fn new(node: &NodeHandle, keyring: Arc<Keyring>, timeout: Duration) -> NodeClient {
        match node.compat {
            Compat::Current => NodeClient::Current(CurrentClient::new(node.config.base_url(), node.config.node_id.clone(), keyring, timeout)),
            Compat::LegacyHmacV05 => NodeClient::Legacy(LegacyClient::new(&node.config, keyring, LegacyAuth::Hmac, timeout)),
            Compat::LegacyPlainToken => NodeClient::Legacy(LegacyClient::new(&node.config, keyring, LegacyAuth::Plain, timeout)),
        }
    }

    pub fn compat(&self) -> Compat {
        match self {
            NodeClient::Current(_) => Compat::Current,
            NodeClient::Legacy(l) if l.auth == LegacyAuth::Plain => Compat::LegacyPlainToken,
            NodeClient::Legacy(_) => Compat::LegacyHmacV05,
        }
    }

    /// The artifact manifest of a finished job.
    pub async fn manifest(&self, job_id: &str) -> Result<Vec<ArtifactEntry>, CallError> {
        match self {
            NodeClient::Current(c) => Ok(c.manifest(job_id).await?.artifacts),
            NodeClient::Legacy(l) => Ok(l.job(job_id).await?.artifacts),
        }
    }

    /// Downloads an artifact into `dest` from `offset` (legacy: always whole).
    pub async fn download(&self, job_id: &str, name: &str, dest: &Path, offset: u64) -> Result<(), CallError> {
        match self {
            NodeClient::Current(c) => c.download(job_id, name, dest, offset).await,
            NodeClient::Legacy(l) => l.download(job_id, name, dest).await.map(|_| ()).map_err(Into::into),
        }
    }

    /// The job's whole log.
    pub async fn whole_log(&self, job_id: &str) -> Result<Vec<u8>, CallError> {
        match self {
            NodeClient::Current(c) => {
                let mut out = Vec::new();
                let mut offset = 0;
                loop {
                    let chunk = c.log(job_id, offset).await?;
                    out.extend_from_slice(chunk.data.as_bytes());
                    if chunk.complete || chunk.next_offset <= offset || chunk.next_offset >= chunk.size {
                        return Ok(out);
                    }
                    offset = chunk.next_offset;
                }
            }
            NodeClient::Legacy(l) => Ok(l.log(job_id).await?.to_vec()),
        }
    }
}
