//! The registry of jobs run by an in-process `submit` (no daemon), so that
//! `cancel`, `wait` and `logs` in another terminal reach them.
//!
//! While it runs a job, an in-process `submit` keeps
//! `$state_dir/cluster/running/<run_id>/<job_id>.json`: its process id and,
//! once the job was handed to a worker, the node id and remote job id. The
//! file is removed when the job ends; a file whose process is gone (a
//! `kill -9`) is stale and ignored. `cancel` sends that process SIGINT, which
//! cancels the job the way Ctrl-C in its terminal does.

use rayvault::controller_store::RemoteRef;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the registry file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub pid: u32,
    /// The worker job, once there is one.
    pub remote: Option<RemoteRef>,
}

/// The registry file of one job.
pub fn path(cluster_dir: &Path, run_id: &str, job_id: &str) -> PathBuf {
    cluster_dir.join("running").join(run_id).join(format!("{job_id}.json"))
}

/// True when a process with this id exists.
pub fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // Signal 0 checks existence and permission without sending anything.
        // SAFETY: kill(2) with signal 0 has no side effect.
        let rc = unsafe { libc::kill(pid, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The live registration of a job, if an in-process `submit` runs it now.
pub fn find(cluster_dir: &Path, run_id: &str, job_id: &str) -> Option<Registration> {
    let bytes = std::fs::read(path(cluster_dir, run_id, job_id)).ok()?;
    let reg: Registration = serde_json::from_slice(&bytes).ok()?;
    (reg.pid != std::process::id() && alive(reg.pid)).then_some(reg)
}

/// Asks the `submit` process `pid` to cancel its job (SIGINT, as Ctrl-C).
pub fn interrupt(pid: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
        // SAFETY: sends SIGINT to one process id; no memory is involved.
        if unsafe { libc::kill(pid, libc::SIGINT) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        Err(std::io::Error::other("cancelling another submit process is only supported on Unix; press Ctrl-C in its terminal"))
    }
}

/// This process's registration of a job; the file is removed on drop.
pub struct Registered {
    file: PathBuf,
}

impl Registered {
    /// Registers this process as running the job. Fails when another live
    /// `submit` on this machine already runs it.
    pub fn claim(cluster_dir: &Path, run_id: &str, job_id: &str) -> anyhow::Result<Registered> {
        if let Some(other) = find(cluster_dir, run_id, job_id) {
            anyhow::bail!(
                "{run_id}/{job_id} is already being run by another submit on this machine (pid {}); wait for it with \
                 `rayvault-orchestrator wait --run-id {run_id} --job-id {job_id}` or cancel it with `rayvault-orchestrator cancel ...`",
                other.pid
            );
        }
        let file = path(cluster_dir, run_id, job_id);
        let me = Registered { file };
        me.write(&Registration { pid: std::process::id(), remote: None })?;
        Ok(me)
    }

    /// Records the job's registration (atomically).
    pub fn write(&self, reg: &Registration) -> anyhow::Result<()> {
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        rayvault::artifacts::write_atomic(&self.file, &serde_json::to_vec(reg)?)?;
        Ok(())
    }

    /// A private store file beside the registration, where the job runner
    /// records the worker job as soon as it exists.
    pub fn store_path(&self) -> PathBuf {
        self.file.with_extension(format!("{}.redb", std::process::id()))
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_file(self.store_path());
        if let Some(dir) = self.file.parent() {
            // Only succeeds once the run's folder is empty.
            let _ = std::fs::remove_dir(dir);
        }
    }
}
