//! The v0.5 worker contract (the Python `worker_server.py` generation), as
//! far as the controller needs it: detection, its two ways of
//! authenticating, its lower-case step list, submit, poll, artifact and log
//! download, cancel. `docs/protocol.md` ("Legacy v0.5 contract") is the
//! reference; `tests/legacy_worker_v05.py` is a double that follows it.
//!
//! Architecture Invariant: this module and [`crate::protocol`] are the only
//! places that know a wire format; v0.5 is a different contract, not a
//! variant of the current one, so it lives apart from the current client.

use super::error::{payload_failure, send_failure, CallErrorKind};
use crate::auth::Keyring;
use crate::nodes::NodeConfig;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The header carrying a v0.5 credential.
pub const TOKEN_HEADER: &str = "X-Auth-Token";

/// Prefix of a v0.5 HMAC token: `v05:<ts>:<hex sig>`.
pub const HMAC_PREFIX: &str = "v05:";

/// How the controller authenticates to a v0.5 worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyAuth {
    Hmac,
    /// The bare shared secret (only with `RAYVAULT_ALLOW_PLAIN_FALLBACK=1`).
    Plain,
}

/// True when a `/health` body is a v0.5 worker's (no `contract`, a 0.5 version).
pub fn is_legacy_health(health: &Value) -> bool {
    health.get("contract").is_none()
        && health.get("version").and_then(Value::as_str).is_some_and(|v| v == "0.5" || v.starts_with("0.5."))
}

/// The string a v0.5 HMAC token signs: `<ts>\n<METHOD>\n<path>`.
pub fn string_to_sign(ts: u64, method: &str, path: &str) -> String {
    format!("{ts}\n{method}\n{path}")
}

/// The v0.5 `X-Auth-Token` value for a request.
pub fn token(keyring: &Keyring, auth: LegacyAuth, method: &str, path: &str) -> String {
    match auth {
        LegacyAuth::Hmac => {
            let ts = crate::auth::unix_now();
            format!("{HMAC_PREFIX}{ts}:{}", keyring.current.sign(&string_to_sign(ts, method, path)))
        }
        LegacyAuth::Plain => keyring.current.plain_token().to_string(),
    }
}

/// A v0.5 job as `GET /jobs/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyJob {
    pub job_id: String,
    #[serde(default)]
    pub job_type: String,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    #[serde(default)]
    pub cached: bool,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<LegacyError>,
    #[serde(default)]
    pub artifacts: Vec<crate::artifacts::ArtifactEntry>,
}

impl LegacyJob {
    pub fn is_terminal(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "cancelled")
    }
}

/// A v0.5 job error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyError {
    pub code: String,
    pub message: String,
}

/// Why a v0.5 request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyFailure {
    /// No connection, or it broke: the node may be down.
    Unreachable(CallErrorKind, String),
    /// 401 with the worker's message verbatim.
    Auth(String),
    /// Any other non-success status, with the body's message.
    Status(u16, String),
    /// A body that does not match the contract.
    Protocol(String),
}

impl std::fmt::Display for LegacyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LegacyFailure::Unreachable(_, m) => write!(f, "unreachable ({m})"),
            LegacyFailure::Auth(m) => write!(f, "401 {m}"),
            LegacyFailure::Status(s, m) => write!(f, "HTTP {s}: {m}"),
            LegacyFailure::Protocol(m) => write!(f, "unexpected v0.5 response: {m}"),
        }
    }
}

/// A client for one v0.5 node.
pub struct LegacyClient {
    base: String,
    http: awc::Client,
    /// The time allowed for each answer.
    timeout: Duration,
    keyring: std::sync::Arc<Keyring>,
    pub auth: LegacyAuth,
}

impl LegacyClient {
    /// A client sending through `http` (the node's keep-alive client from
    /// [`super::ClientPool`]), allowing `timeout` for each answer.
    pub fn new(node: &NodeConfig, http: awc::Client, keyring: std::sync::Arc<Keyring>, auth: LegacyAuth, timeout: Duration) -> Self {
        LegacyClient { base: node.base_url(), http, timeout, keyring, auth }
    }

    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Bytes, LegacyFailure> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        }
        .timeout(self.timeout)
        .insert_header((TOKEN_HEADER, token(&self.keyring, self.auth, method, path)));
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| unreachable(send_failure(&e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| {
                let (kind, m) = payload_failure(&e);
                LegacyFailure::Unreachable(kind, format!("response body broke off: {m}"))
            })?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let message = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
        Err(if status == 401 { LegacyFailure::Auth(message) } else { LegacyFailure::Status(status, message) })
    }

    async fn call_json<T: serde::de::DeserializeOwned>(&self, method: &str, path: &str, body: Option<&Value>) -> Result<T, LegacyFailure> {
        let bytes = self.call(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| LegacyFailure::Protocol(format!("{path}: {e}")))
    }

    /// `GET /caps` (authenticated).
    pub async fn caps(&self) -> Result<Value, LegacyFailure> {
        self.call_json("GET", "/caps", None).await
    }

    /// `POST /jobs` with the legacy step name.
    pub async fn submit(&self, job_type: &str, payload: &Value, inputs_hash: &str) -> Result<LegacyJob, LegacyFailure> {
        let body = serde_json::json!({"job_type": job_type, "payload": payload, "inputs_hash": inputs_hash});
        self.call_json("POST", "/jobs", Some(&body)).await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, job_id: &str) -> Result<LegacyJob, LegacyFailure> {
        self.call_json("GET", &format!("/jobs/{job_id}"), None).await
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel(&self, job_id: &str) -> Result<(), LegacyFailure> {
        self.call("POST", &format!("/jobs/{job_id}/cancel"), None).await.map(|_| ())
    }

    /// `GET /jobs/{id}/log`: the whole log.
    pub async fn log(&self, job_id: &str) -> Result<Bytes, LegacyFailure> {
        self.call("GET", &format!("/jobs/{job_id}/log"), None).await
    }

    /// `GET /jobs/{id}/artifacts/{name}` streamed into `dest` (v0.5 has no
    /// Range support, so a download always starts from the beginning).
    pub async fn download(&self, job_id: &str, name: &str, dest: &Path) -> Result<u64, LegacyFailure> {
        let path = format!("/jobs/{job_id}/artifacts/{name}");
        let url = format!("{}{path}", self.base);
        let mut resp = self
            .http
            .get(&url)
            .timeout(self.timeout)
            .insert_header((TOKEN_HEADER, token(&self.keyring, self.auth, "GET", &path)))
            .send()
            .await
            .map_err(|e| unreachable(send_failure(&e)))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(if status == 401 { LegacyFailure::Auth("auth_token invalid".into()) } else { LegacyFailure::Status(status, format!("downloading {name}")) });
        }
        let mut file = tokio::fs::File::create(dest).await.map_err(|e| LegacyFailure::Protocol(format!("writing {}: {e}", dest.display())))?;
        let mut n = 0u64;
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| {
                let (kind, m) = payload_failure(&e);
                LegacyFailure::Unreachable(kind, format!("download broke off: {m}"))
            })?;
            n += chunk.len() as u64;
            tokio::io::AsyncWriteExt::write_all(&mut file, &chunk)
                .await
                .map_err(|e| LegacyFailure::Protocol(format!("writing {}: {e}", dest.display())))?;
        }
        tokio::io::AsyncWriteExt::flush(&mut file).await.map_err(|e| LegacyFailure::Protocol(e.to_string()))?;
        Ok(n)
    }
}

fn unreachable((kind, message): (CallErrorKind, String)) -> LegacyFailure {
    LegacyFailure::Unreachable(kind, message)
}

/// The lower-case step names a v0.5 `/caps` lists (`capabilities`, or
/// `steps` in later 0.5 builds).
pub fn listed_steps(caps: &Value) -> Vec<String> {
    ["capabilities", "steps"]
        .iter()
        .filter_map(|k| caps.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_ascii_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detects_legacy_health() {
        assert!(is_legacy_health(&json!({"ok": true, "worker_id": "w", "version": "0.5.2"})));
        assert!(!is_legacy_health(&json!({"status": "ok", "worker_id": "w", "contract": "rayvault-worker/1", "version": "0.1.0"})));
        assert!(!is_legacy_health(&json!({"version": "0.6.0"})));
    }

    #[test]
    fn lists_lower_case_steps() {
        assert_eq!(listed_steps(&json!({"capabilities": ["ffprobe_analyze", "TTS_Render_Chunks"]})), vec!["ffprobe_analyze", "tts_render_chunks"]);
    }

    #[test]
    fn golden_string_to_sign() {
        assert_eq!(string_to_sign(1_700_000_000, "GET", "/caps"), "1700000000\nGET\n/caps");
    }
}
