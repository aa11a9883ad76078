//! The signed client of the daemon's loopback API (same HMAC scheme as the
//! workers, with the target id `controller`).

use crate::daemon::{JobView, DAEMON_ID};
use anyhow::{anyhow, bail};
use rayvault::auth::{Keyring, RequestTarget};
use rayvault::config::Settings;
use rayvault::protocol::{self, ErrorBody};
use rayvault::receipt::JobSpec;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// A connection to a running daemon.
pub struct DaemonClient {
    base: String,
    http: awc::Client,
    keyring: Arc<Keyring>,
}

impl DaemonClient {
    /// Connects to the daemon named by the settings. `Ok(None)` when none is
    /// listening; an error when one answers but refuses our credentials.
    pub async fn connect(settings: &Settings, keyring: Arc<Keyring>) -> anyhow::Result<Option<DaemonClient>> {
        let c = &settings.controller;
        let host = if c.api_host.contains(':') { format!("[{}]", c.api_host) } else { c.api_host.clone() };
        let client = DaemonClient {
            base: format!("http://{host}:{}", c.api_port),
            http: awc::Client::builder().disable_timeout().finish(),
            keyring,
        };
        match client.call("GET", "/v1/health", "", None, Duration::from_secs(3)).await {
            Ok(_) => Ok(Some(client)),
            Err(CallFailure::Unreachable(_)) => Ok(None),
            Err(CallFailure::Refused(e)) if e.status == 401 && e.code == "AUTH_INVALID" => Err(anyhow!(
                "a daemon is listening at {} but refused us: {}. The daemon and this command both run on this machine, so \
                 their cluster secrets differ: give both environments the same RAYVAULT_CLUSTER_SECRET, or restart the daemon \
                 from this environment",
                client.base,
                e.message
            )),
            Err(CallFailure::Refused(e)) => Err(anyhow!("a daemon is listening at {} but refused us: {e}", client.base)),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn call(&self, method: &str, path: &str, query: &str, body: Option<Vec<u8>>, timeout: Duration) -> Result<Value, CallFailure> {
        let body = body.unwrap_or_default();
        let sha = protocol::sha256_hex(&body);
        let auth = self.keyring.authorization(&RequestTarget { method, path, query, worker_id: DAEMON_ID, body_sha256: &sha });
        let url = if query.is_empty() { format!("{}{path}", self.base) } else { format!("{}{path}?{query}", self.base) };
        let m = awc::http::Method::from_bytes(method.as_bytes()).unwrap_or(awc::http::Method::GET);
        let mut resp = self
            .http
            .request(m, url)
            .insert_header(("Authorization", auth))
            .insert_header(("Content-Type", "application/json"))
            .timeout(timeout)
            .send_body(body)
            .await
            .map_err(|e| CallFailure::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let bytes = resp.body().limit(64 * 1024 * 1024).await.map_err(|e| CallFailure::Unreachable(e.to_string()))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&bytes)
                .map_err(|e| CallFailure::Refused(Refusal { status, code: String::new(), message: format!("unexpected answer: {e}") }));
        }
        let refusal = match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(b) if status == 401 && b.code == "AUTH_SKEW" => {
                let message = rayvault::client::auth_reason(&b.error, b.server_time);
                Refusal { status, code: b.code, message }
            }
            Ok(b) if status == 401 => Refusal { status, message: format!("401 {}", b.error), code: b.code },
            Ok(b) => Refusal { status, message: format!("{} {}: {}", status, b.code, b.error), code: b.code },
            Err(_) => Refusal { status, code: String::new(), message: format!("HTTP {status}") },
        };
        Err(CallFailure::Refused(refusal))
    }

    /// Hands a job to the daemon.
    pub async fn submit(&self, spec: &JobSpec) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(spec)?;
        self.call("POST", "/v1/jobs", "", Some(body), Duration::from_secs(10)).await.map_err(Into::into)
    }

    /// Long-polls a job: returns when it ends, when new progress arrives,
    /// or after `wait_s`; the request itself gives up after `wait_s` plus
    /// `slack`. An error is a [`CallFailure`] (see `is_unreachable`) or an
    /// unreadable answer.
    pub async fn wait(&self, key: &str, wait_s: u64, progress_from: usize, slack: Duration) -> anyhow::Result<JobView> {
        let query = format!("wait_s={wait_s}&progress_from={progress_from}");
        let v = self.call("GET", &format!("/v1/jobs/{key}"), &query, None, Duration::from_secs(wait_s) + slack).await?;
        serde_json::from_value(v).map_err(|e| anyhow!("unexpected job view from the daemon: {e}"))
    }

    /// The daemon's view of a job right now; `Ok(None)` when the daemon does
    /// not know it.
    pub async fn job(&self, key: &str) -> anyhow::Result<Option<JobView>> {
        match self.wait(key, 0, usize::MAX, Duration::from_secs(10)).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if refusal_code(&e) == Some("JOB_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Asks the daemon to cancel a job.
    pub async fn cancel(&self, key: &str) -> anyhow::Result<Value> {
        self.call("POST", &format!("/v1/jobs/{key}/cancel"), "", None, Duration::from_secs(10)).await.map_err(Into::into)
    }

    /// A one-time login token for the web dashboard.
    pub async fn dashboard_login(&self) -> anyhow::Result<Value> {
        self.call("POST", "/v1/dashboard/login", "", None, Duration::from_secs(10)).await.map_err(Into::into)
    }

    /// Jobs and nodes at a glance.
    pub async fn status(&self) -> anyhow::Result<Value> {
        let v = self.call("GET", "/v1/status", "", None, Duration::from_secs(30)).await?;
        if v.get("jobs").is_none() {
            bail!("unexpected status answer from the daemon");
        }
        Ok(v)
    }
}

/// Why a call to the daemon failed.
#[derive(Debug)]
pub enum CallFailure {
    /// No answer: not listening, connection lost, or timed out.
    Unreachable(String),
    /// An answer, but an error (auth, unknown job, ...).
    Refused(Refusal),
}

/// An error answer of the daemon.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    /// The stable error code (`JOB_NOT_FOUND`, `JOB_CONFLICT`, ...); empty
    /// when the answer had none.
    pub code: String,
    pub message: String,
}

/// The daemon's error code when `e` is an error answer of the daemon.
pub fn refusal_code(e: &anyhow::Error) -> Option<&str> {
    match e.downcast_ref::<CallFailure>() {
        Some(CallFailure::Refused(r)) => Some(r.code.as_str()),
        _ => None,
    }
}

/// True when `e` says the daemon did not answer at all (worth retrying),
/// false when it answered with an error.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<CallFailure>(), Some(CallFailure::Unreachable(_)))
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::Unreachable(m) => write!(f, "daemon unreachable ({m})"),
            CallFailure::Refused(r) => f.write_str(&r.message),
        }
    }
}

impl std::error::Error for CallFailure {}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}
