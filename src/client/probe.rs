//! Contract detection: probes a node's `/health`, tells which worker
//! contract it speaks (current or v0.5, HMAC or the opt-in plain token),
//! fetches `/caps` with the right credential and normalises it for the
//! scheduler.

use super::legacy_v05::{self, LegacyAuth, LegacyClient};
use super::node::CurrentClient;
use super::{CallError, CallErrorKind, ClientPool};
use crate::auth::Keyring;
use crate::error::ErrorCode;
use crate::nodes::{Compat, NodeCaps, NodeConfig, StepSet};
use crate::steps::StepName;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Why a probe found a node unusable.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeFailure {
    /// Not reachable, or not answering in time.
    Down(String),
    /// Reachable, but misconfigured: it refused our credentials
    /// (`AUTH_REJECTED`), it is another worker (`NODE_ID_MISMATCH`), or this
    /// controller has no secret (`SECRET_MISSING`).
    Misconfigured(ErrorCode, String),
    /// Reachable and healthy enough to answer, but short of resources.
    Degraded(String),
    /// Reachable, and draining at its own request (`/health` says
    /// `"draining": true`).
    Draining,
}

/// What one probe found.
pub struct ProbeResult {
    pub health: Option<Value>,
    /// The normalised caps and the raw `/caps`, or why the node cannot be used.
    pub outcome: Result<(NodeCaps, Value), ProbeFailure>,
}

/// Probes `/health`, detects the contract, then fetches `/caps` with the
/// right credential. Tells unavailability (down) from misconfiguration
/// (credentials refused, another worker id, no secret) and from a worker
/// that says it is degraded.
pub async fn probe(cfg: NodeConfig, keyring: Option<Arc<Keyring>>, timeout: Duration, allow_plain: bool) -> ProbeResult {
    let Some(keyring) = keyring else {
        return ProbeResult {
            health: None,
            outcome: Err(ProbeFailure::Misconfigured(
                ErrorCode::SecretMissing,
                "cannot be used: this controller has no cluster secret; set RAYVAULT_CLUSTER_SECRET (the same as the worker's) in its environment, or disable the node in nodes.json".into(),
            )),
        };
    };
    let current = CurrentClient::new(cfg.base_url(), cfg.node_id.clone(), keyring.clone(), timeout);
    let health = match current.health().await {
        Ok(h) => h,
        Err(e) => return ProbeResult { health: None, outcome: Err(ProbeFailure::Down(e.to_string())) },
    };
    let claimed = health.get("worker_id").and_then(Value::as_str).unwrap_or_default();
    let outcome = if legacy_v05::is_legacy_health(&health) {
        probe_legacy(&cfg, keyring, timeout, allow_plain).await
    } else if claimed != cfg.node_id {
        // Requests are signed for the node id; a worker with another id
        // would refuse them as if the secret were wrong.
        Err(ProbeFailure::Misconfigured(
            ErrorCode::NodeIdMismatch,
            format!(
                "is misconfigured: the worker at {}:{} says it is {claimed:?}; set node_id in nodes.json to its RAYVAULT_WORKER_ID, or that worker's RAYVAULT_WORKER_ID to {:?}",
                cfg.host, cfg.port, cfg.node_id
            ),
        ))
    } else {
        match current.caps().await {
            Ok(raw) => Ok((node_caps(&raw, Compat::Current), raw)),
            Err(CallError { kind: CallErrorKind::Auth, message: reason, .. }) if allow_plain => {
                let plain = CurrentClient::new(cfg.base_url(), cfg.node_id.clone(), keyring, timeout).plain();
                match plain.caps().await {
                    Ok(raw) => {
                        tracing::warn!(node = %cfg.node_id, "worker rejected HMAC ({reason}); using the plain token because RAYVAULT_ALLOW_PLAIN_FALLBACK=1");
                        Ok((node_caps(&raw, Compat::CurrentPlainToken), raw))
                    }
                    Err(e) => Err(auth_failure(format!("{reason}; plain token also refused: {e}"))),
                }
            }
            Err(CallError { kind: CallErrorKind::Auth, message: reason, .. }) => Err(auth_failure(reason)),
            Err(e) if e.is_transient() => Err(ProbeFailure::Down(e.to_string())),
            Err(e) => Err(ProbeFailure::Down(format!("answered /caps with an error ({e})"))),
        }
    };
    // A worker short of disk space (or with a failed store) still answers;
    // it says so in /health, and takes no new jobs until it recovers.
    // A worker asked to drain says so too; it takes no new jobs either.
    let draining = health.get("draining").and_then(Value::as_bool) == Some(true);
    let outcome = match outcome {
        Ok(_) if draining => Err(ProbeFailure::Draining),
        Ok(ok) => match degraded_reason(&health) {
            Some(why) => Err(ProbeFailure::Degraded(why)),
            None => Ok(ok),
        },
        Err(e) => Err(e),
    };
    ProbeResult { health: Some(health), outcome }
}

/// The worker's own reason when its `/health` says `"status": "degraded"`.
fn degraded_reason(health: &Value) -> Option<String> {
    if health.get("status").and_then(Value::as_str) != Some("degraded") {
        return None;
    }
    let why = health
        .get("degraded_reason")
        .or_else(|| health.get("reason"))
        .and_then(Value::as_str)
        .unwrap_or("no reason given");
    let free = health.get("free_bytes").and_then(Value::as_u64).map(|b| format!(" ({} MiB free)", b / (1024 * 1024))).unwrap_or_default();
    Some(format!("is degraded: {why}{free}"))
}

fn auth_failure(reason: String) -> ProbeFailure {
    ProbeFailure::Misconfigured(ErrorCode::AuthRejected, format!("refused our credentials: {reason}"))
}

async fn probe_legacy(cfg: &NodeConfig, keyring: Arc<Keyring>, timeout: Duration, allow_plain: bool) -> Result<(NodeCaps, Value), ProbeFailure> {
    let http = ClientPool::shared().http(&cfg.node_id, &cfg.base_url());
    let hmac = LegacyClient::new(cfg, http.clone(), keyring.clone(), LegacyAuth::Hmac, timeout);
    match hmac.caps().await.map_err(CallError::from) {
        Ok(raw) => Ok((node_caps(&raw, Compat::LegacyHmacV05), raw)),
        Err(CallError { kind: CallErrorKind::Auth, message: reason, .. }) if allow_plain => {
            let plain = LegacyClient::new(cfg, http, keyring, LegacyAuth::Plain, timeout);
            match plain.caps().await.map_err(CallError::from) {
                Ok(raw) => {
                    tracing::warn!(node = %cfg.node_id, "v0.5 worker rejected HMAC ({reason}); using the plain token because RAYVAULT_ALLOW_PLAIN_FALLBACK=1");
                    Ok((node_caps(&raw, Compat::LegacyPlainToken), raw))
                }
                Err(e) => Err(auth_failure(format!("{reason}; plain token also refused: {e}"))),
            }
        }
        Err(CallError { kind: CallErrorKind::Auth, message: reason, .. }) => Err(auth_failure(format!("{reason} (a v0.5 worker; RAYVAULT_ALLOW_PLAIN_FALLBACK=1 would allow the plain token)"))),
        Err(e) => Err(ProbeFailure::Down(e.to_string())),
    }
}

/// Normalises a `/caps` body: the documented caps keys plus the steps the node runs.
pub fn node_caps(raw: &Value, compat: Compat) -> NodeCaps {
    let num = |k: &str| raw.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    let gpu = raw.get("gpu_model").and_then(Value::as_str).unwrap_or("");
    let mut steps = StepSet::default();
    if compat.is_legacy() {
        let listed = legacy_v05::listed_steps(raw);
        for s in StepName::ALL {
            if listed.iter().any(|l| l == s.legacy_name()) {
                steps.insert(s);
            }
        }
    } else if let Some(list) = raw.get("steps").and_then(Value::as_array) {
        for s in list.iter().filter_map(Value::as_str) {
            if let Ok(step) = StepName::parse(s) {
                steps.insert(step);
            }
        }
    }
    let unavailable: Vec<(StepName, String)> = raw
        .get("unavailable_steps")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| Some((StepName::parse(k).ok()?, v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    NodeCaps {
        inline_blob_bytes: if compat.is_legacy() { 0 } else { raw.get("inline_blob_bytes").and_then(Value::as_u64).unwrap_or(0) },
        submit_stream: !compat.is_legacy() && raw.get("submit_stream").and_then(Value::as_bool).unwrap_or(false),
        unavailable: unavailable.into(),
        os: raw.get("os").and_then(Value::as_str).unwrap_or("unknown").to_ascii_lowercase(),
        ram_gb: num("ram_gb"),
        vram_gb: num("vram_gb"),
        has_gpu: !gpu.is_empty() && !gpu.eq_ignore_ascii_case("none"),
        steps,
        compat,
    }
}

