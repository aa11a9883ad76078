//! ArtifactSync: copies a remote job's artifacts and `worker.log` into the
//! receipt folder.
//!
//! Each artifact is downloaded into `<name>.part` beside its final name,
//! resumed from where it stopped when the worker supports Range requests
//! (the current contract does, v0.5 does not), checked against the
//! manifest's size and SHA-256, and only then renamed into place. A file
//! under a final name is therefore always whole and verified; a digest
//! mismatch discards the partial file and the next attempt starts over.

use super::crash_guard::catch;
pub use super::messages::{SyncArtifacts, SyncError};
use super::messages::Stop;
use crate::artifacts::{is_safe_name, ArtifactEntry};
use crate::auth::Keyring;
use crate::backoff::Backoff;
use crate::client::{part_path, CallErrorKind, NodeClient};
use crate::receipt::ReceiptArtifact;
use actix::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The ArtifactSync actor.
pub struct ArtifactSync {
    keyring: Option<Arc<Keyring>>,
    /// Per-request timeout for the download connection (not the transfer).
    timeout: Duration,
    /// Attempts per artifact and the pauses between them (a retry resumes
    /// the partial download).
    backoff: Backoff,
}

impl ArtifactSync {
    pub fn new(keyring: Option<Arc<Keyring>>, timeout: Duration, backoff: Backoff) -> Self {
        ArtifactSync { keyring, timeout, backoff }
    }
}

impl Actor for ArtifactSync {
    type Context = Context<Self>;
}

/// A restarted ArtifactSync has nothing to reset: each sync runs in a task
/// of its own (a `ResponseFuture`) and goes on; `.part` files make any
/// interrupted download resumable.
impl actix::Supervised for ArtifactSync {
    fn restarting(&mut self, _: &mut Context<Self>) {
        tracing::warn!("ArtifactSync restarted");
    }
}

/// Stops the ArtifactSync, which is then restarted (see [`Stop`]).
impl Handler<Stop> for ArtifactSync {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Syncs every artifact, then the log; answers with the verified copies.
impl Handler<SyncArtifacts> for ArtifactSync {
    type Result = ResponseFuture<Result<Vec<ReceiptArtifact>, SyncError>>;

    fn handle(&mut self, msg: SyncArtifacts, _: &mut Context<Self>) -> Self::Result {
        let keyring = self.keyring.clone();
        let (timeout, backoff) = (self.timeout, self.backoff);
        let sync = async move {
            let keyring = keyring.ok_or_else(|| SyncError::other("no cluster secret is set, so the worker cannot be asked for artifacts"))?;
            let client = NodeClient::new(&msg.node, keyring, timeout);
            let manifest = match msg.artifacts {
                Some(m) => m,
                None => client.manifest(&msg.remote_job_id).await.map_err(|e| SyncError::other(e.to_string()))?,
            };
            // The folder is made here only for artifacts; the log's write
            // makes it when it is missing (a short job's end then costs no
            // trip to a blocking thread of its own).
            if !manifest.is_empty() {
                tokio::fs::create_dir_all(&msg.dest)
                    .await
                    .map_err(|e| SyncError { disk_full: crate::error::is_disk_full(&e), message: format!("creating {}: {e}", msg.dest.display()) })?;
            }
            let mut out = Vec::with_capacity(manifest.len());
            for entry in &manifest {
                let path = sync_one(&client, &msg.remote_job_id, entry, &msg.dest, backoff).await?;
                out.push(ReceiptArtifact {
                    name: entry.name.clone(),
                    size: entry.size,
                    sha256: entry.sha256.clone(),
                    path: crate::artifacts::absolute(path),
                });
            }
            // The log is best effort: a job whose log cannot be fetched still
            // has a valid, verified result.
            if let Err(e) = client.fetch_log(&msg.remote_job_id, msg.log, &msg.dest.join(crate::receipt::LOG_FILE)).await {
                tracing::warn!(job = %msg.remote_job_id, "could not fetch worker.log: {e}");
            }
            Ok(out)
        };
        // Parsing a worker's manifest and answers is where a bug would bite;
        // caught, it is a failed sync rather than a closed mailbox.
        Box::pin(async move { catch("ArtifactSync", "syncing artifacts", sync).await.map_err(|p| SyncError::other(p.to_string()))? })
    }
}

/// Downloads one artifact with resume and verification; returns its final
/// path. The verification is the client's (one SHA-256 pass while the bytes
/// arrive), so nothing is hashed again after a download.
async fn sync_one(
    client: &NodeClient,
    job_id: &str,
    entry: &ArtifactEntry,
    dest: &Path,
    backoff: Backoff,
) -> Result<PathBuf, SyncError> {
    if !is_safe_name(&entry.name) || entry.name == crate::receipt::LOG_FILE || entry.name == crate::receipt::RECEIPT_FILE {
        return Err(SyncError::other(format!("the worker listed an artifact named {:?}, which is not a safe file name; refusing it", entry.name)));
    }
    let final_path = dest.join(&entry.name);
    if verified(&final_path, entry).await {
        return Ok(final_path);
    }
    let partial = part_path(&final_path);
    let attempts = backoff.max_attempts();
    let mut last = String::new();
    for attempt in 1..=attempts {
        let have = tokio::fs::metadata(&partial).await.map(|m| m.len()).unwrap_or(0);
        if have > 0 && have < entry.size && !client.compat().is_legacy() {
            tracing::info!("resuming {} from byte {have} of {}", entry.name, entry.size);
        }
        match client.download(job_id, entry, &final_path).await {
            Ok(()) => {
                crate::metrics::controller().artifact_bytes_synced(entry.size);
                return Ok(final_path);
            }
            Err(e) => {
                last = format!("downloading {} failed (attempt {attempt}/{attempts}): {e}", entry.name);
                tracing::warn!("{last}");
                // Retrying cannot make room on a full disk.
                if e.kind == CallErrorKind::DiskFull {
                    return Err(SyncError { disk_full: true, message: last });
                }
            }
        }
        if attempt < attempts {
            tokio::time::sleep(backoff.delay(attempt)).await;
        }
    }
    Err(SyncError::other(last))
}

/// True when `path` already exists with the entry's size and SHA-256 (a
/// copy from an earlier sync, which needs no download). The size is checked
/// first so that a missing or different file costs no hashing; the hash runs
/// off the actor thread. A file downloaded now is not checked again here:
/// the client verified it while receiving it, before its rename.
async fn verified(path: &Path, entry: &ArtifactEntry) -> bool {
    match tokio::fs::metadata(path).await {
        Ok(m) if m.is_file() && m.len() == entry.size => {}
        _ => return false,
    }
    let p = path.to_path_buf();
    match tokio::task::spawn_blocking(move || crate::artifacts::sha256_file(&p)).await {
        Ok(Ok((sha, size))) => size == entry.size && sha == entry.sha256,
        _ => false,
    }
}
