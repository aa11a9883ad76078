//! The controller daemon's embedded transactional store (`redb`), at
//! `$RAYVAULT_STATE_DIR/cluster/controller.redb`.
//!
//! It keeps every job the daemon accepted: its spec, whether it is queued,
//! running or finished, the worker and remote job id once it has one, and
//! its receipt at the end. Each change is one committed transaction, so a
//! daemon killed with `kill -9` restarts knowing exactly which jobs were in
//! flight and on which worker, and re-attaches to them instead of running
//! them again.

use crate::process::{ChildGroup, ChildRegistry, Reaped};
use crate::receipt::{JobSpec, Receipt};
use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_jobs");
/// `<run_id>/<job_id>/<group id>` -> JSON [`ChildGroup`]: the process groups
/// of the tools that local steps (the LocalRunner) run, while they run.
const CHILDREN: TableDefinition<&str, &[u8]> = TableDefinition::new("controller_children");

/// A store failure, with the file it concerns.
#[derive(Debug, thiserror::Error)]
#[error("controller store: {0}")]
pub struct StoreError(pub String);

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError(e.into().to_string())
    }
}

/// A job already handed to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteRef {
    pub node_id: String,
    pub remote_job_id: String,
    /// The placement that chose the node, so that the receipt of a job
    /// re-attached after a restart still explains it.
    #[serde(default)]
    pub placement: Vec<crate::receipt::NodeExplanation>,
}

/// Where a job is in the daemon's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Queued,
    Running,
    Finished,
}

/// One job as the daemon remembers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredJob {
    pub spec: JobSpec,
    pub phase: Phase,
    /// Unix milliseconds of the first submission.
    pub submitted_at_ms: u64,
    pub remote: Option<RemoteRef>,
    pub receipt: Option<Receipt>,
}

/// The daemon's store.
#[derive(Debug)]
pub struct ControllerStore {
    db: Database,
    path: PathBuf,
}

impl ControllerStore {
    /// `$state_dir/cluster/controller.redb`.
    pub fn default_path(cluster_dir: &Path) -> PathBuf {
        cluster_dir.join("controller.redb")
    }

    /// Opens (creating) the store. Blocking: call from `spawn_blocking` or
    /// before the runtime starts.
    pub fn open(path: &Path) -> Result<ControllerStore, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError(format!("creating {}: {e}", parent.display())))?;
        }
        let db = Database::create(path).map_err(|e| {
            StoreError(format!("cannot open {}: {e}; is another daemon running on this state dir?", path.display()))
        })?;
        let tx = db.begin_write()?;
        tx.open_table(JOBS)?;
        tx.open_table(CHILDREN)?;
        tx.commit()?;
        Ok(ControllerStore { db, path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Inserts or replaces a job record in one transaction.
    pub fn put(&self, job: &StoredJob) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError(e.to_string()))?;
        let tx = self.db.begin_write()?;
        tx.open_table(JOBS)?.insert(job.spec.key().as_str(), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Reads one job by `run_id/job_id`.
    pub fn get(&self, key: &str) -> Result<Option<StoredJob>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let Some(v) = table.get(key)? else { return Ok(None) };
        decode(v.value()).map(Some)
    }

    /// Applies `f` to a job in one write transaction; false if absent.
    pub fn update(&self, key: &str, f: impl FnOnce(&mut StoredJob)) -> Result<bool, StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(JOBS)?;
            let current = match table.get(key)? {
                Some(v) => decode(v.value())?,
                None => return Ok(false),
            };
            let mut job = current;
            f(&mut job);
            let bytes = serde_json::to_vec(&job).map_err(|e| StoreError(e.to_string()))?;
            table.insert(key, bytes.as_slice())?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Every job, in key order.
    pub fn all(&self) -> Result<Vec<StoredJob>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(JOBS)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (_, v) = item?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    /// The jobs a restarted daemon must pick up again.
    pub fn unfinished(&self) -> Result<Vec<StoredJob>, StoreError> {
        Ok(self.all()?.into_iter().filter(|j| j.phase != Phase::Finished).collect())
    }
}

impl ControllerStore {
    /// Records a running child's group for the local job `owner`. `Eventual`
    /// commit: it survives a crash of the daemon, not a power cut (which
    /// kills the child as well).
    pub fn record_child(&self, owner: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(group).map_err(|e| StoreError(e.to_string()))?;
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        tx.open_table(CHILDREN)?.insert(format!("{owner}/{}", group.id).as_str(), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Removes the record of a group that ended.
    pub fn forget_child(&self, owner: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Eventual);
        tx.open_table(CHILDREN)?.remove(format!("{owner}/{}", group.id).as_str())?;
        tx.commit()?;
        Ok(())
    }

    /// Every recorded group, with the job it belongs to.
    pub fn children(&self) -> Result<Vec<(String, ChildGroup)>, StoreError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(CHILDREN)?;
        let mut out = Vec::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let owner = k.value().rsplit_once('/').map(|(o, _)| o.to_string()).unwrap_or_default();
            if let Ok(g) = serde_json::from_slice::<ChildGroup>(v.value()) {
                out.push((owner, g));
            }
        }
        Ok(out)
    }

    /// Daemon start-up: kills the process groups that local steps of a dead
    /// daemon left running (see [`crate::process::reap`] for the pid-reuse
    /// checks) and clears the records. Returns the `(job, group id)` pairs
    /// killed.
    pub fn reap_children(&self) -> Result<Vec<(String, u32)>, StoreError> {
        let recorded = self.children()?;
        let groups: Vec<ChildGroup> = recorded.iter().map(|(_, g)| g.clone()).collect();
        let killed = recorded
            .iter()
            .zip(crate::process::reap(&groups))
            .filter(|(_, r)| *r == Reaped::Killed)
            .map(|((owner, g), _)| (owner.clone(), g.id))
            .collect();
        let tx = self.db.begin_write()?;
        tx.open_table(CHILDREN)?.retain(|_, _| false)?;
        tx.commit()?;
        Ok(killed)
    }
}

impl ChildRegistry for ControllerStore {
    fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.record_child(owner, group).map_err(|e| e.to_string())
    }

    fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.forget_child(owner, group).map_err(|e| e.to_string())
    }
}

fn decode(bytes: &[u8]) -> Result<StoredJob, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError(format!("a stored job does not decode: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> StoredJob {
        StoredJob {
            spec: JobSpec {
                run_id: "r".into(),
                job_id: id.into(),
                step_name: "FFMPEG_PROBE".into(),
                payload: serde_json::json!({"media_path": "/x.mp4"}),
                requirements: Default::default(),
                no_fallback: false,
                fallback: None,
                timeout_s: None,
            },
            phase: Phase::Queued,
            submitted_at_ms: 1,
            remote: None,
            receipt: None,
        }
    }

    #[test]
    fn survives_reopen_and_tracks_unfinished() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        {
            let s = ControllerStore::open(&path).unwrap();
            s.put(&job("a")).unwrap();
            s.put(&job("b")).unwrap();
            assert!(s.update("r/a", |j| {
                j.phase = Phase::Running;
                j.remote = Some(RemoteRef { node_id: "w1".into(), remote_job_id: "x".into(), placement: Vec::new() });
            })
            .unwrap());
            assert!(s.update("r/b", |j| j.phase = Phase::Finished).unwrap());
            assert!(!s.update("r/zz", |_| {}).unwrap());
        }
        let s = ControllerStore::open(&path).unwrap();
        let left = s.unfinished().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].remote.as_ref().unwrap().remote_job_id, "x");
        assert_eq!(s.all().unwrap().len(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn recorded_children_are_killed_at_start_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.redb");
        let mut live = crate::process::test_support::sleeper_in_own_group();
        {
            let s = ControllerStore::open(&path).unwrap();
            s.record_child("r/a", &ChildGroup::of(live.id())).unwrap();
            let gone = ChildGroup { id: 999_999, started: Some(1), boot_id: None };
            s.record_child("r/b", &gone).unwrap();
            s.record_child("r/c", &ChildGroup { id: 999_998, ..gone.clone() }).unwrap();
            s.forget_child("r/c", &ChildGroup { id: 999_998, ..gone }).unwrap();
        }
        let s = ControllerStore::open(&path).unwrap();
        assert_eq!(s.children().unwrap().len(), 2);
        assert_eq!(s.reap_children().unwrap(), vec![("r/a".to_string(), live.id())]);
        assert!(s.children().unwrap().is_empty());
        assert!(live.wait().unwrap().code().is_none(), "killed by a signal");
    }
}
