//! Background upkeep: pruning finished jobs (and their folders) and old
//! blobs after `worker.retention_days`, and refreshing the host
//! capabilities that `/caps` serves.

use crate::state::AppState;
use actix_web::web;
use std::time::{Duration, SystemTime};
use tracing::Instrument;

/// Starts the upkeep tasks on the current arbiter.
pub fn spawn(state: web::Data<AppState>) {
    let s = state.clone();
    actix_rt::spawn(async move {
        let mut tick = tokio::time::interval(PRUNE_EVERY);
        loop {
            tick.tick().await;
            prune(&s).await;
        }
    }
    .instrument(tracing::info_span!("prune")));
    actix_rt::spawn(async move {
        // The probe runs tools (ffmpeg, nvidia-smi, python), so it is done
        // in the background and its result cached; tools installed later
        // show up at the next refresh.
        let mut tick = tokio::time::interval(CAPS_REFRESH);
        loop {
            tick.tick().await;
            let caps = rayvault::caps::probe(&state.env.settings).await;
            state.host_caps.send_replace(Some(caps));
        }
    }
    .instrument(tracing::info_span!("caps_probe")));
}

/// How often finished jobs and blobs are checked against the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How often the host capabilities are probed again.
const CAPS_REFRESH: Duration = Duration::from_secs(300);

/// Removes finished jobs older than the retention, their folders, and
/// blobs not touched for as long.
async fn prune(state: &web::Data<AppState>) {
    let days = state.env.settings.worker.retention_days;
    let keep = Duration::from_secs(days.saturating_mul(86_400));
    let cutoff = SystemTime::now().checked_sub(keep).unwrap_or(SystemTime::UNIX_EPOCH);
    let cutoff_ms = cutoff.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
    let store = state.env.store.clone();
    let paths = state.env.paths.clone();
    let result = web::block(move || -> Result<(usize, usize), rayvault::store::StoreError> {
        store.prune_nonces(rayvault::auth::unix_now())?;
        let removed = store.prune(cutoff_ms)?;
        for id in &removed {
            let _ = std::fs::remove_dir_all(paths.job_dir(id));
        }
        let mut blobs = 0;
        if let Ok(entries) = std::fs::read_dir(paths.blobs_dir()) {
            // Spare files (made ahead for inline inputs) are not blobs.
            for e in entries.flatten().filter(|e| !crate::spares::is_spare(&e.file_name())) {
                let old = e.metadata().and_then(|m| m.modified()).map(|t| t < cutoff).unwrap_or(false);
                if old && std::fs::remove_file(e.path()).is_ok() {
                    blobs += 1;
                }
            }
        }
        Ok((removed.len(), blobs))
    })
    .await;
    match result {
        Ok(Ok((0, 0))) => {}
        Ok(Ok((jobs, blobs))) => tracing::info!(jobs, blobs, retention_days = days, "pruned old jobs and blobs"),
        Ok(Err(e)) => tracing::error!(error = %e, "pruning failed"),
        Err(e) => tracing::error!(error = %e, "pruning task failed"),
    }
}

/// The host part of `/caps` while the first probe is still running: what
/// the standard library knows, other normalised keys null, and
/// `probe_pending` so a caller knows to ask again.
pub fn pending_host_caps() -> serde_json::Map<String, serde_json::Value> {
    use serde_json::{json, Value};
    let mut m = serde_json::Map::new();
    m.insert("os".into(), json!(std::env::consts::OS));
    for key in ["cpu", "ram_gb", "gpu_model", "vram_gb", "python_version", "ffmpeg_version"] {
        m.insert(key.into(), Value::Null);
    }
    m.insert("davinci_available".into(), json!(false));
    m.insert("probe_pending".into(), json!(true));
    m
}
