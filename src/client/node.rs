//! One interface over the two worker contracts the controller speaks: the
//! current one ([`crate::protocol`], HMAC-signed requests) and the legacy
//! v0.5 one ([`super::legacy_v05`]). The JobRunner, NodeProbe and
//! ArtifactSync only see [`NodeClient`] and [`CallError`]. Every client for
//! a node sends through that node's keep-alive client from
//! [`ClientPool::shared`], except a current worker's artifact downloads,
//! which read their own connection (see `WorkerClient::download_artifact`).

use super::legacy_v05::{LegacyAuth, LegacyClient};
use super::{CallError, CallErrorKind, ClientPool, WorkerClient};
use crate::artifacts::ArtifactEntry;
use crate::auth::Keyring;
use crate::nodes::{Compat, NodeHandle};
use crate::protocol::{self, ArtifactManifest, JobState, JobView, Submitted};
use crate::receipt::ReceiptError;
use crate::steps::StepName;
use bytes::Bytes;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The current contract, through the signed [`WorkerClient`], with its
/// errors classified.
pub struct CurrentClient {
    inner: WorkerClient,
    plain: bool,
    /// The node's `inline_blob_bytes` (0: it takes no input inline).
    inline_blob_bytes: u64,
    /// The node's `submit_stream`: submissions are answered in two lines.
    submit_stream: bool,
}

impl CurrentClient {
    /// A client for the node `worker_id` at `base`, allowing `timeout` for
    /// each answer (a long-poll adds its wait).
    pub fn new(base: String, worker_id: String, keyring: Arc<Keyring>, timeout: Duration) -> Self {
        let http = ClientPool::shared().http(&worker_id, &base);
        CurrentClient {
            inner: WorkerClient::new(&base, &worker_id, keyring).with_http(http).with_timeout(timeout),
            plain: false,
            inline_blob_bytes: 0,
            submit_stream: false,
        }
    }

    /// Authenticates with the plain token instead of HMAC (opt-in fallback).
    pub fn plain(self) -> Self {
        CurrentClient { inner: self.inner.with_plain_token(), plain: true, ..self }
    }

    /// Sends inputs of up to `bytes` in all inside `POST /jobs` (what the
    /// node's `/caps` allows).
    pub fn with_inline_blobs(self, bytes: u64) -> Self {
        CurrentClient { inline_blob_bytes: bytes, ..self }
    }

    /// Submits with a streamed answer (what the node's `/caps` says).
    pub fn with_submit_stream(self, on: bool) -> Self {
        CurrentClient { submit_stream: on, ..self }
    }

    /// `GET /jobs?run_id=R&job_id=J`: the jobs this worker holds under the
    /// controller's `run_id`/`job_id`, newest first.
    pub async fn find(&self, run_id: &str, job_id: &str) -> Result<Vec<JobView>, CallError> {
        Ok(self.inner.find_jobs(run_id, job_id).await?.jobs)
    }

    /// The most input bytes the node takes inside `POST /jobs` (0: none).
    pub fn inline_blob_bytes(&self) -> u64 {
        self.inline_blob_bytes
    }

    /// `GET /health` as raw JSON, so that a v0.5 answer can be recognised.
    pub async fn health(&self) -> Result<Value, CallError> {
        let raw = self.inner.send_raw(awc::http::Method::GET, "/health", Bytes::new()).await?;
        if raw.status != 200 {
            let text: String = String::from_utf8_lossy(&raw.body).chars().take(200).collect();
            return Err(CallError::new(CallErrorKind::Busy { status: raw.status }, text));
        }
        serde_json::from_slice(&raw.body).map_err(|e| CallError::protocol(format!("/health: not JSON ({e})")))
    }

    /// `GET /caps`, as JSON for display.
    pub async fn caps(&self) -> Result<Value, CallError> {
        let caps = self.inner.caps().await?;
        serde_json::to_value(caps).map_err(|e| CallError::protocol(e.to_string()))
    }

    /// `PUT /blobs/{sha256}` streaming the file.
    pub async fn put_blob(&self, path: &Path) -> Result<String, CallError> {
        Ok(self.inner.upload_file(path).await?.sha256)
    }

    /// `POST /jobs`, with the inputs in `inline` (digest and bytes) inside
    /// the body.
    pub async fn submit(&self, step_name: &str, payload: &Value, inputs_hash: &str, label: &str, lease_s: u64, inline: &[(&str, &[u8])]) -> Result<Submitted, CallError> {
        Ok(self.inner.submit_inline(&submit_job(step_name, payload, inputs_hash, label, lease_s), inline).await?)
    }

    /// `POST /jobs?wait_ms=N&stream=1`: the acceptance, and the job's view
    /// once it ends or `job.hold` passes (see
    /// [`WorkerClient::submit_streamed`]).
    pub async fn submit_streamed(&self, job: &Submission<'_>) -> Result<(Submitted, HeldPoll), CallError> {
        let body = submit_job(job.step_name, job.payload, job.inputs_hash, job.label, job.lease_s);
        let (submitted, end) = self.inner.submit_streamed(&body, job.inline, job.hold).await?;
        let end: HeldPoll = Box::pin(async move { Ok(end.await?.into()) });
        Ok((submitted, end))
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

fn submit_job(step_name: &str, payload: &Value, inputs_hash: &str, label: &str, lease_s: u64) -> protocol::SubmitJob {
    protocol::SubmitJob {
        step_name: step_name.into(),
        payload: payload.clone(),
        inputs_hash: Some(inputs_hash.into()),
        label: Some(label.into()),
        lease_s: Some(lease_s),
    }
}

/// The end of a job submitted with a streamed answer: its view once it
/// ended, or when the worker's wait passed (then still running), as the
/// first long-poll would give it.
pub type HeldPoll = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Polled, CallError>>>>;

/// A job a worker accepted.
pub struct Accepted {
    pub job_id: String,
    /// An existing job for the same inputs.
    pub cached: bool,
    /// With a streamed answer: its second line, to await as the first poll.
    pub held: Option<HeldPoll>,
}

/// A job to submit, in the terms of both contracts.
pub struct Submission<'a> {
    pub step_name: &'a str,
    /// The payload with staged inputs replaced by blob references (the
    /// current contract).
    pub payload: &'a Value,
    /// The payload as the user gave it (a v0.5 worker has no blobs).
    pub unstaged_payload: &'a Value,
    pub inputs_hash: &'a str,
    /// The controller's `run_id/job_id`, to find the job again later.
    pub label: &'a str,
    /// The lease the job is held under, seconds (the current contract).
    pub lease_s: u64,
    /// Staged inputs sent inside the submission (digest and bytes) rather
    /// than uploaded before it (the current contract).
    pub inline: &'a [(&'a str, &'a [u8])],
    /// How long the worker may hold the answer's second line for the job
    /// to end, when it streams its answer (the current contract, if its
    /// `/caps` says `submit_stream`).
    pub hold: Duration,
}

/// One poll of a job's state, in either contract's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Polled {
    pub state: JobState,
    pub result: Option<Value>,
    pub error: Option<ReceiptError>,
    pub artifacts: Vec<ArtifactEntry>,
    /// The whole log, when the worker's final answer carried it
    /// (`JobView.log`, small logs of finished jobs).
    pub log: Option<String>,
}

impl From<JobView> for Polled {
    fn from(v: JobView) -> Polled {
        let error = v.error.map(|e| ReceiptError { code: e.code, message: e.message });
        Polled { state: v.state, result: v.result, error, artifacts: v.artifacts, log: v.log }
    }
}

/// A client for one node, whichever contract it speaks.
pub enum NodeClient {
    Current(CurrentClient),
    Legacy(LegacyClient),
}

impl NodeClient {
    /// A client for the node, in the contract its probe found, allowing
    /// `timeout` for each answer.
    pub fn new(node: &NodeHandle, keyring: Arc<Keyring>, timeout: Duration) -> NodeClient {
        let current = || CurrentClient::new(node.config.base_url(), node.config.node_id.clone(), keyring.clone(), timeout);
        let legacy = |auth| {
            let http = ClientPool::shared().http(&node.config.node_id, &node.config.base_url());
            LegacyClient::new(&node.config, http, keyring.clone(), auth, timeout)
        };
        match node.compat {
            Compat::Current => NodeClient::Current(current().with_inline_blobs(node.inline_blob_bytes).with_submit_stream(node.submit_stream)),
            Compat::CurrentPlainToken => {
                NodeClient::Current(current().plain().with_inline_blobs(node.inline_blob_bytes).with_submit_stream(node.submit_stream))
            }
            Compat::LegacyHmacV05 => NodeClient::Legacy(legacy(LegacyAuth::Hmac)),
            Compat::LegacyPlainToken => NodeClient::Legacy(legacy(LegacyAuth::Plain)),
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

    /// Submits the job; answers the worker's job id, whether it was an
    /// existing job for the same inputs, and, when the node streams its
    /// answer, the job's end to await as the first poll.
    pub async fn submit(&self, job: &Submission<'_>) -> Result<Accepted, CallError> {
        match self {
            NodeClient::Current(c) if c.submit_stream && !job.hold.is_zero() => {
                let (s, held) = c.submit_streamed(job).await?;
                Ok(Accepted { job_id: s.job.job_id, cached: s.cached, held: Some(held) })
            }
            NodeClient::Current(c) => {
                let s = c.submit(job.step_name, job.payload, job.inputs_hash, job.label, job.lease_s, job.inline).await?;
                Ok(Accepted { job_id: s.job.job_id, cached: s.cached, held: None })
            }
            NodeClient::Legacy(l) => {
                let step = StepName::parse(job.step_name).map_err(|e| CallError::protocol(e.message))?;
                let j = l.submit(step.legacy_name(), job.unstaged_payload, job.inputs_hash).await?;
                Ok(Accepted { job_id: j.job_id, cached: j.cached, held: None })
            }
        }
    }

    /// The job's state: a long-poll of up to `wait_s` seconds on a current
    /// worker (which renews the job's lease); a v0.5 worker has no
    /// long-poll, so a job still running there is answered after a short
    /// pause instead.
    pub async fn poll(&self, job_id: &str, wait_s: u64) -> Result<Polled, CallError> {
        match self {
            NodeClient::Current(c) => Ok(c.wait(job_id, wait_s).await?.into()),
            NodeClient::Legacy(l) => {
                let j = l.job(job_id).await?;
                if !j.is_terminal() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Ok(legacy_polled(j))
            }
        }
    }

    /// The job's state without renewing its lease (for a job given up).
    pub async fn peek(&self, job_id: &str) -> Result<Polled, CallError> {
        match self {
            NodeClient::Current(c) => Ok(c.peek(job_id).await?.into()),
            NodeClient::Legacy(l) => Ok(legacy_polled(l.job(job_id).await?)),
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
                        crate::artifacts::commit_temp(&part, dest).map_err(|e| CallError::new(CallErrorKind::Local, format!("moving {} into place: {e}", entry.name)))
                    }
                    Ok(Ok((sha, _))) => {
                        let _ = tokio::fs::remove_file(&part).await;
                        Err(CallError::protocol(format!("artifact {} has sha256 {sha}, the manifest says {}; the download was discarded", entry.name, entry.sha256)))
                    }
                    other => Err(CallError::new(CallErrorKind::Local, format!("hashing {}: {other:?}", part.display()))),
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

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<(), CallError> {
        match self {
            NodeClient::Current(c) => c.cancel(job_id).await,
            NodeClient::Legacy(l) => l.cancel(job_id).await.map_err(Into::into),
        }
    }

    /// Writes a remote job's whole log into `dest`, atomically: the log the
    /// worker's final answer carried (`inline`), or else downloaded.
    pub async fn fetch_log(&self, job_id: &str, inline: Option<String>, dest: &Path) -> Result<(), String> {
        let bytes = match inline {
            Some(log) => log.into_bytes(),
            None => self.whole_log(job_id).await.map_err(|e| e.to_string())?,
        };
        // The worker keeps the job's log; this copy needs no sync. The
        // folder usually exists (made while the job ran).
        let write = move |d: &Path, bytes: &[u8]| match crate::receipt::write_log_unsynced(d, bytes) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = d.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                crate::receipt::write_log_unsynced(d, bytes)
            }
            other => other,
        };
        let written = if bytes.len() <= crate::artifacts::INLINE_IO_BYTES {
            // A short job's log (a few lines): written here, in less time
            // than a trip to a blocking thread and back takes.
            write(dest, &bytes)
        } else {
            let d = dest.to_path_buf();
            tokio::task::spawn_blocking(move || write(&d, &bytes)).await.map_err(|e| e.to_string())?
        };
        written.map_err(|e| format!("writing {}: {e}", dest.display()))
    }
}

/// A v0.5 job in the poll's terms.
fn legacy_polled(j: super::legacy_v05::LegacyJob) -> Polled {
    let state = match j.status.as_str() {
        "queued" => JobState::Queued,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        _ => JobState::Running,
    };
    Polled { state, result: j.result, error: j.error.map(|e| ReceiptError { code: e.code, message: e.message }), artifacts: j.artifacts, log: None }
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

    #[test]
    fn partial_downloads_live_beside_the_final_name() {
        assert_eq!(part_path(Path::new("/r/ffprobe.json")), Path::new("/r/ffprobe.json.part"));
    }

    /// The log the worker's final answer carried is written as it is, with
    /// no request to the worker (here: an address where nothing listens);
    /// without it the log is downloaded, which fails there.
    #[actix_rt::test]
    async fn an_inline_log_is_written_without_a_download() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Arc::new(Keyring::from_secrets("inline-log-secret", None).unwrap());
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let nobody = NodeClient::Current(CurrentClient::new(format!("http://127.0.0.1:{port}"), "w".into(), ring, Duration::from_secs(2)));
        let dest = dir.path().join("worker.log");
        nobody.fetch_log("j1", Some("line one\nline two\n".into()), &dest).await.unwrap();
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "line one\nline two\n");
        assert!(nobody.fetch_log("j1", None, &dir.path().join("other.log")).await.is_err());
    }
}
