//! One interface over the two worker contracts the controller speaks: the
//! current one ([`crate::protocol`], HMAC-signed requests) and the legacy
//! v0.5 one ([`crate::legacy_v05`]). The JobRunner, NodeProbe and
//! ArtifactSync only see [`NodeClient`] and [`CallError`].

use super::super::messages::Compat;
use super::super::node_probe::NodeHandle;
use crate::artifacts::ArtifactEntry;
use crate::auth::Keyring;
use crate::client::{ClientError, WorkerClient};
use crate::legacy_v05::{describe_send_error, LegacyAuth, LegacyClient, LegacyFailure};
use crate::protocol::{self, ArtifactManifest, JobView, Submitted};
use bytes::Bytes;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why a call to a worker failed, classified for retry decisions.
#[derive(Debug, Clone, PartialEq)]
pub enum CallError {
    /// No connection, a broken one, or a timeout: retry, then treat the node as lost.
    Unreachable(String),
    /// 401: the worker's message verbatim plus the README's troubleshooting hint.
    Auth(String),
    /// 5xx, 429, 503: the worker is alive but cannot serve now; retry.
    Busy(u16, String),
    /// Any other refusal, with the worker's code and message.
    Refused { status: u16, code: String, message: String },
    /// A body that does not follow the contract, or a local file problem.
    Other(String),
    /// A local write failed because this machine's disk is full (ENOSPC):
    /// a download's `.part` could not grow.
    DiskFull(String),
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
            CallError::DiskFull(m) => write!(f, "the disk is full: {m}"),
        }
    }
}

/// The hint for a refused credential. A clock difference is never the
/// cause: a worker tells a caller whose signature verified that its
/// timestamp is off ([`skew_reason`]), so this is a secret mismatch.
const SECRETS_HINT: &str = "secrets differ between Mac and Windows";

/// The hint for a timestamp outside the worker's window.
const CLOCK_HINT: &str = "sync system clocks (NTP)";

/// A 401 as the controller reports it, from the message alone: for a
/// peer whose answers carry no machine code (a v0.5 worker, the daemon).
/// The skew message is rebuilt from [`skew_reason`], so its hint appears
/// once whatever the peer's own text already says.
pub fn auth_reason(message: &str, server_time: Option<u64>) -> String {
    if message.starts_with(protocol::SKEW_MESSAGE) {
        skew_reason(server_time)
    } else {
        format!("401 {message}: {SECRETS_HINT}")
    }
}

/// `401 timestamp outside allowed skew`, with the worker's clock offset
/// when it was told, and the hint once.
pub fn skew_reason(server_time: Option<u64>) -> String {
    let offset = server_time
        .map(|t| {
            let d = t as i64 - crate::auth::unix_now() as i64;
            format!(" (worker clock differs from ours by {d:+} s)")
        })
        .unwrap_or_default();
    format!("401 {}{offset}: {CLOCK_HINT}", protocol::SKEW_MESSAGE)
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

/// The current contract, through the worker engineer's signed client
/// ([`crate::client::WorkerClient`]), with its errors classified.
pub struct CurrentClient {
    inner: WorkerClient,
    plain: bool,
}

impl From<ClientError> for CallError {
    fn from(e: ClientError) -> Self {
        if let ClientError::Api { status: 401, code, .. } = &e {
            crate::metrics::controller().remote_auth_refusal(code);
        }
        match e {
            ClientError::Unreachable { message, .. } => CallError::Unreachable(describe_send_error(&message)),
            ClientError::Api { status: 401, code, server_time, .. } if code == protocol::ApiCode::AuthSkew.as_str() => {
                CallError::Auth(skew_reason(server_time))
            }
            ClientError::Api { status: 401, message, .. } => CallError::Auth(format!("401 {message}: {SECRETS_HINT}")),
            // A draining worker is not busy: asking it again soon is no use.
            ClientError::Api { status, code, message, .. } if code == protocol::ApiCode::Draining.as_str() => CallError::Refused { status, code, message },
            ClientError::Api { status, message, .. } if status >= 500 || status == 429 => CallError::Busy(status, message),
            ClientError::Api { status, code, message, .. } => CallError::Refused { status, code, message },
            ClientError::DiskFull(m) => CallError::DiskFull(m),
            other => CallError::Other(other.to_string()),
        }
    }
}

impl CurrentClient {
    pub fn new(base: String, worker_id: String, keyring: Arc<Keyring>, timeout: Duration) -> Self {
        CurrentClient { inner: WorkerClient::new(&base, &worker_id, keyring).with_timeout(timeout), plain: false }
    }

    /// Authenticates with the plain token instead of HMAC (opt-in fallback).
    pub fn plain(self) -> Self {
        CurrentClient { inner: self.inner.with_plain_token(), plain: true }
    }

    /// `GET /health` as raw JSON, so that a v0.5 answer can be recognised.
    pub async fn health(&self) -> Result<Value, CallError> {
        let raw = self.inner.send_raw(awc::http::Method::GET, "/health", Bytes::new()).await?;
        if raw.status != 200 {
            return Err(CallError::Busy(raw.status, String::from_utf8_lossy(&raw.body).chars().take(200).collect()));
        }
        serde_json::from_slice(&raw.body).map_err(|e| CallError::Other(format!("/health: not JSON ({e})")))
    }

    /// `GET /caps`, as JSON for display.
    pub async fn caps(&self) -> Result<Value, CallError> {
        let caps = self.inner.caps().await?;
        serde_json::to_value(caps).map_err(|e| CallError::Other(e.to_string()))
    }

    /// `PUT /blobs/{sha256}` streaming the file.
    pub async fn put_blob(&self, path: &Path) -> Result<String, CallError> {
        Ok(self.inner.upload_file(path).await?.sha256)
    }

    /// `POST /jobs`.
    pub async fn submit(&self, step_name: &str, payload: &Value, inputs_hash: &str, label: &str, lease_s: u64) -> Result<Submitted, CallError> {
        let body = protocol::SubmitJob {
            step_name: step_name.into(),
            payload: payload.clone(),
            inputs_hash: Some(inputs_hash.into()),
            label: Some(label.into()),
            lease_s: Some(lease_s),
        };
        Ok(self.inner.submit(&body).await?)
    }

    /// `GET /jobs/{id}?wait_s=N`: long-polls until the job ends or N passes.
    pub async fn wait(&self, job_id: &str, wait_s: u64) -> Result<JobView, CallError> {
        Ok(self.inner.job(job_id, wait_s).await?)
    }

    /// `GET /jobs/{id}/log?offset=N`: the log from `offset`, and the offset
    /// to ask for next.
    pub async fn log_from(&self, job_id: &str, offset: u64) -> Result<(String, u64), CallError> {
        let chunk = self.inner.log(job_id, offset).await?;
        Ok((chunk.data, chunk.next_offset))
    }

    /// `GET /jobs/{id}?peek=1`: the job's state without renewing its lease.
    pub async fn peek(&self, job_id: &str) -> Result<JobView, CallError> {
        Ok(self.inner.peek_job(job_id).await?)
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<(), CallError> {
        self.inner.cancel(job_id).await.map(|_| ()).map_err(Into::into)
    }

    /// `GET /jobs/{id}/artifacts`.
    pub async fn manifest(&self, job_id: &str) -> Result<ArtifactManifest, CallError> {
        Ok(self.inner.artifacts(job_id).await?)
    }

    /// The whole log.
    pub async fn log(&self, job_id: &str) -> Result<String, CallError> {
        Ok(self.inner.full_log(job_id).await?)
    }

    /// Downloads one artifact to `dest`, resuming `dest.part` with a Range
    /// request and checking size and SHA-256 before the final rename.
    pub async fn download(&self, job_id: &str, entry: &ArtifactEntry, dest: &Path) -> Result<(), CallError> {
        self.inner.download_artifact(job_id, entry, dest).await.map(|_| ()).map_err(Into::into)
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
            Compat::CurrentPlainToken => NodeClient::Current(CurrentClient::new(node.config.base_url(), node.config.node_id.clone(), keyring, timeout).plain()),
            Compat::LegacyHmacV05 => NodeClient::Legacy(LegacyClient::new(&node.config, keyring, LegacyAuth::Hmac, timeout)),
            Compat::LegacyPlainToken => NodeClient::Legacy(LegacyClient::new(&node.config, keyring, LegacyAuth::Plain, timeout)),
        }
    }

    pub fn compat(&self) -> Compat {
        match self {
            NodeClient::Current(c) if c.plain => Compat::CurrentPlainToken,
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

    /// Downloads an artifact to its final path `dest` through `dest.part`:
    /// resumed with Range on a current worker, whole on a v0.5 one; either
    /// way the size and SHA-256 are checked before the rename.
    pub async fn download(&self, job_id: &str, entry: &ArtifactEntry, dest: &Path) -> Result<(), CallError> {
        match self {
            NodeClient::Current(c) => c.download(job_id, entry, dest).await,
            NodeClient::Legacy(l) => {
                let part = part_path(dest);
                l.download(job_id, &entry.name, &part).await.map_err(CallError::from)?;
                let p = part.clone();
                let hashed = tokio::task::spawn_blocking(move || crate::artifacts::sha256_file(&p)).await;
                match hashed {
                    Ok(Ok((sha, size))) if sha == entry.sha256 && size == entry.size => {
                        crate::artifacts::commit_temp(&part, dest).map_err(|e| CallError::Other(format!("moving {} into place: {e}", entry.name)))
                    }
                    Ok(Ok((sha, _))) => {
                        let _ = tokio::fs::remove_file(&part).await;
                        Err(CallError::Other(format!("artifact {} has sha256 {sha}, the manifest says {}; the download was discarded", entry.name, entry.sha256)))
                    }
                    other => Err(CallError::Other(format!("hashing {}: {other:?}", part.display()))),
                }
            }
        }
    }

    /// The job's whole log.
    pub async fn whole_log(&self, job_id: &str) -> Result<Vec<u8>, CallError> {
        match self {
            NodeClient::Current(c) => Ok(c.log(job_id).await?.into_bytes()),
            NodeClient::Legacy(l) => Ok(l.log(job_id).await?.to_vec()),
        }
    }
}

/// Where a download in progress lives: `<final name>.part` beside it (the
/// worker client's convention), never the final name.
pub fn part_path(dest: &Path) -> std::path::PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!("{name}.part"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(e: ClientError, expected: CallError) {
        assert_eq!(CallError::from(e), expected);
    }

    #[test]
    fn worker_errors_are_classified_with_the_documented_hints() {
        check(
            ClientError::Api { status: 401, code: "AUTH_INVALID".into(), message: "auth_token invalid".into(), server_time: None },
            CallError::Auth("401 auth_token invalid: secrets differ between Mac and Windows".into()),
        );
        let now = crate::auth::unix_now();
        // The worker's own message carries a hint already; it is said once.
        let message = format!("timestamp outside allowed skew (server time {}); sync the system clocks (NTP)", now + 3600);
        let skew = CallError::from(ClientError::Api { status: 401, code: "AUTH_SKEW".into(), message, server_time: Some(now + 3600) });
        let CallError::Auth(text) = skew else { panic!("{skew:?}") };
        assert!(text.starts_with("401 timestamp outside allowed skew (worker clock differs from ours by +3"), "{text}");
        assert!(text.ends_with(": sync system clocks (NTP)"), "{text}");
        assert_eq!(text.matches("NTP").count(), 1, "{text}");
        // The message-only form (v0.5 workers, the daemon) says it once too.
        assert_eq!(auth_reason("timestamp outside allowed skew; sync the clocks (NTP)", None), "401 timestamp outside allowed skew: sync system clocks (NTP)");
        assert!(!auth_reason("auth_token invalid", None).contains("skew"));
        check(ClientError::Api { status: 503, code: "SHUTTING_DOWN".into(), message: "bye".into(), server_time: None }, CallError::Busy(503, "bye".into()));
        check(
            ClientError::Unreachable { url: "http://127.0.0.1:1".into(), message: "Connection refused (os error 111)".into() },
            CallError::Unreachable("connection refused".into()),
        );
        check(
            ClientError::Api { status: 404, code: "JOB_NOT_FOUND".into(), message: "no job".into(), server_time: None },
            CallError::Refused { status: 404, code: "JOB_NOT_FOUND".into(), message: "no job".into() },
        );
        assert!(CallError::Busy(500, String::new()).is_transient());
        assert!(!CallError::Auth(String::new()).is_transient());
    }

    #[test]
    fn partial_downloads_live_beside_the_final_name() {
        assert_eq!(part_path(Path::new("/r/ffprobe.json")), Path::new("/r/ffprobe.json.part"));
    }
}
