//! Finding jobs by their label, for `GET /jobs?run_id=..&job_id=..`: the
//! controller labels every job `run_id/job_id`, and asks for it by that
//! label when it has lost its own record of the worker's job id.
//!
//! There is no label index: a search reads every job record. Records are
//! pruned after `retention_days`, so the table stays small enough for the
//! rare search this serves (a receipt to rebuild), and no write path has to
//! keep a second table in step.

use super::{codec, JobRecord, Store, StoreError, JOBS};
use redb::ReadableTable;

impl Store {
    /// The jobs whose label is exactly `label`, newest first (by creation
    /// time, then submission order), at most `limit` of them; the flag is
    /// true when more matched.
    pub fn find_by_label(&self, label: &str, limit: usize) -> Result<(Vec<JobRecord>, bool), StoreError> {
        let mut found = self.run(|db| {
            let tx = db.begin_read()?;
            let jobs = tx.open_table(JOBS)?;
            let mut found = Vec::new();
            for entry in jobs.iter()? {
                let (_, value) = entry?;
                let rec: JobRecord = serde_json::from_slice(value.value()).map_err(codec)?;
                if rec.label.as_deref() == Some(label) {
                    found.push(rec);
                }
            }
            Ok(found)
        })?;
        found.sort_by_key(|r| std::cmp::Reverse((r.created_at_ms, r.seq)));
        let more = found.len() > limit;
        found.truncate(limit);
        Ok((found, more))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::{NewJob, Store, Submission};
    use serde_json::json;

    #[test]
    fn finds_by_exact_label_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("w.redb")).unwrap();
        let submit = |n: u32, label: &str, at: u64| {
            let new = NewJob { step_name: "FFMPEG_PROBE".into(), inputs_hash: format!("{n:064}"), payload: json!({"n": n}), lease_s: None, label: Some(label.into()) };
            match store.submit(new, at, 100).unwrap() {
                Submission::Created(rec) => rec.job_id,
                other => panic!("{other:?}"),
            }
        };
        let old = submit(1, "run/job", 1_000);
        let newer = submit(2, "run/job", 2_000);
        submit(3, "run/job-2", 3_000);
        submit(4, "run/jo", 4_000);
        let (found, more) = store.find_by_label("run/job", 10).unwrap();
        assert_eq!(found.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>(), vec![newer.clone(), old]);
        assert!(!more);
        let (found, more) = store.find_by_label("run/job", 1).unwrap();
        assert_eq!((found.len(), found[0].job_id.clone(), more), (1, newer, true));
        assert!(store.find_by_label("nothing/here", 10).unwrap().0.is_empty());
    }
}
