//! The process groups of the tools that running jobs started, recorded
//! while they run, so that a worker started after a crash can kill what the
//! dead one left behind ([`Store::reap_children`]).

use super::{Flush, Store, StoreError, StoreErrorKind};
use crate::process::{ChildGroup, ChildRegistry, Reaped};
use redb::{ReadableTable, TableDefinition};

/// `<job_id>/<group id>` -> JSON [`ChildGroup`].
pub(super) const CHILDREN: TableDefinition<&str, &[u8]> = TableDefinition::new("children");

fn key(job_id: &str, group: &ChildGroup) -> String {
    format!("{job_id}/{}", group.id)
}

/// What [`Store::reap_children`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReapReport {
    /// Groups still alive, now killed: `(job id, group id)`.
    pub killed: Vec<(String, u32)>,
    /// Records of groups already gone, or whose id another process now has.
    pub stale: usize,
}

impl Store {
    /// Records a running child's group for `job_id`. The write is
    /// `Eventual`: it must survive a crash of the worker, not a power cut,
    /// which kills the children as well (on Linux redb syncs it all the
    /// same; the commit queue shares that sync with other writes).
    pub fn record_child(&self, job_id: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(group).map_err(|e| StoreError::new(StoreErrorKind::Other, e.to_string()))?;
        let k = key(job_id, group);
        self.write(Flush::Eventual, move |tx| {
            tx.open_table(CHILDREN)?.insert(k.as_str(), bytes.as_slice())?;
            Ok(())
        })
    }

    /// Removes the record of a group that ended.
    pub fn forget_child(&self, job_id: &str, group: &ChildGroup) -> Result<(), StoreError> {
        let k = key(job_id, group);
        self.write(Flush::Eventual, move |tx| {
            tx.open_table(CHILDREN)?.remove(k.as_str())?;
            Ok(())
        })
    }

    /// Every recorded group, with its job id.
    pub fn children(&self) -> Result<Vec<(String, ChildGroup)>, StoreError> {
        self.run(|db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(CHILDREN)?;
            let mut out = Vec::new();
            for item in t.iter()? {
                let (k, v) = item?;
                let job = k.value().split('/').next().unwrap_or_default().to_string();
                match serde_json::from_slice::<ChildGroup>(v.value()) {
                    Ok(g) => out.push((job, g)),
                    Err(e) => tracing::warn!(key = k.value(), error = %e, "ignoring an unreadable child record"),
                }
            }
            Ok(out)
        })
    }

    /// Start-up: kills the process groups that the jobs of a dead worker
    /// left running (see [`crate::process::reap`] for the pid-reuse checks)
    /// and clears every record. Call it before any job starts.
    pub fn reap_children(&self) -> Result<ReapReport, StoreError> {
        let recorded = self.children()?;
        let groups: Vec<ChildGroup> = recorded.iter().map(|(_, g)| g.clone()).collect();
        let mut report = ReapReport::default();
        for ((job, g), outcome) in recorded.iter().zip(crate::process::reap(&groups)) {
            match outcome {
                Reaped::Killed => report.killed.push((job.clone(), g.id)),
                Reaped::Gone | Reaped::Reused => report.stale += 1,
            }
        }
        self.run(|db| {
            let tx = db.begin_write()?;
            tx.open_table(CHILDREN)?.retain(|_, _| false)?;
            tx.commit()?;
            Ok(())
        })?;
        Ok(report)
    }
}

impl ChildRegistry for Store {
    fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.record_child(owner, group).map_err(|e| e.to_string())
    }

    fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
        self.forget_child(owner, group).map_err(|e| e.to_string())
    }
}
