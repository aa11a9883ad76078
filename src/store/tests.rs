//! Unit tests of the job store: idempotent submission, the in-flight limit
//! and cancellation, restart recovery, the commit queue's batches, child
//! records, and recovery from a full disk. They are in a file of their own
//! so that the store's code reads without them.

use super::*;
use serde_json::json;

fn new_job(hash: &str) -> NewJob {
    NewJob { step_name: "FFMPEG_PROBE".into(), inputs_hash: hash.into(), payload: json!({"a": 1}), label: None, lease_s: None }
}

fn created(s: Submission) -> JobRecord {
    match s {
        Submission::Created(r) => r,
        other => panic!("expected Created, got {other:?}"),
    }
}

#[test]
fn idempotency_follows_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
    assert!(is_job_id(&a.job_id));
    assert!(matches!(store.submit(new_job("h1"), 2, 10).unwrap(), Submission::Existing(r) if r.job_id == a.job_id));
    store.mark_running(&a.job_id, 3).unwrap().unwrap();
    store.finish(&a.job_id, Err(StepError::new(ErrorCode::FfmpegFailed, "x")), 4).unwrap();
    // A failed job runs anew on resubmission.
    let b = created(store.submit(new_job("h1"), 5, 10).unwrap());
    assert_ne!(a.job_id, b.job_id);
    store.mark_running(&b.job_id, 6).unwrap().unwrap();
    let done = store.finish(&b.job_id, Ok((json!({"ok": true}), vec![])), 7).unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded);
    assert!(matches!(store.submit(new_job("h1"), 8, 10).unwrap(), Submission::Existing(r) if r.job_id == b.job_id));
    assert_eq!(store.in_flight().unwrap(), 0);
}

#[test]
fn in_flight_limit_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let a = created(store.submit(new_job("h1"), 1, 1).unwrap());
    assert_eq!(store.submit(new_job("h2"), 1, 1).unwrap(), Submission::Full);
    assert!(matches!(store.cancel(&a.job_id, 2).unwrap(), Cancellation::Cancelled(_)));
    assert!(store.mark_running(&a.job_id, 3).unwrap().is_none(), "a cancelled job never starts");
    assert!(matches!(store.cancel(&a.job_id, 2).unwrap(), Cancellation::Finished(_)));
    assert_eq!(store.cancel("jnope", 2).unwrap(), Cancellation::NotFound);
    created(store.submit(new_job("h2"), 4, 1).unwrap());
}

#[test]
fn recovery_and_prune_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    let (a, b) = {
        let store = Store::open(&path).unwrap();
        let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
        let b = created(store.submit(new_job("h2"), 2, 10).unwrap());
        store.mark_running(&a.job_id, 3).unwrap().unwrap();
        (a, b)
    };
    let store = Store::open(&path).unwrap();
    let rec = store.recover(InterruptedPolicy::Fail, 10).unwrap();
    assert_eq!(rec.interrupted, vec![a.job_id.clone()]);
    assert_eq!(rec.queued.iter().map(|r| r.job_id.clone()).collect::<Vec<_>>(), vec![b.job_id.clone()]);
    let a2 = store.get(&a.job_id).unwrap().unwrap();
    assert_eq!((a2.state, a2.error.unwrap().code.as_str()), (JobState::Failed, "INTERRUPTED"));
    assert_eq!(store.prune(11).unwrap(), vec![a.job_id.clone()]);
    assert!(store.get(&a.job_id).unwrap().is_none());
    assert!(store.get(&b.job_id).unwrap().is_some());
}

#[test]
fn rerun_policy_requeues_running_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let a = created(store.submit(new_job("h1"), 1, 10).unwrap());
    store.mark_running(&a.job_id, 2).unwrap().unwrap();
    let q = store.recover(InterruptedPolicy::Rerun, 3).unwrap();
    assert_eq!((q.queued.len(), q.interrupted.len()), (1, 0));
    let again = store.mark_running(&a.job_id, 4).unwrap().unwrap();
    assert_eq!(again.attempt, 2);
}

#[test]
fn concurrent_duplicates_make_one_job() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let s = store.clone();
            std::thread::spawn(move || s.submit(new_job("same"), 1, 100).unwrap())
        })
        .collect();
    let outcomes: Vec<Submission> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let created = outcomes.iter().filter(|o| matches!(o, Submission::Created(_))).count();
    assert_eq!(created, 1);
    assert_eq!(store.in_flight().unwrap(), 1);
}

/// Writes queued while the writer waits for the database share one
/// transaction: the writer is held up by a write transaction of the
/// test's own, 16 submissions queue behind it, and once it is released
/// they are committed in at most two transactions (the first write may
/// have been taken alone), and all of them are on disk after a re-open.
#[test]
fn writes_that_arrive_together_share_one_commit() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.redb");
    let store = Store::open(&path).unwrap();
    let db = store.inner.slot.read().unwrap().1.clone().unwrap();
    let blocker = db.begin_write().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let ids = rt.block_on(async {
        let all = (0..16).map(|i| {
            let s = store.clone();
            async move { s.submit_async(new_job(&format!("h{i}")), None, None, 1, 100).await }
        });
        let mut all = Box::pin(futures_util::future::join_all(all));
        // One poll queues every write; none can be answered yet.
        assert!((&mut all).now_or_never().is_none());
        drop(blocker);
        all.await.into_iter().map(|o| created(o.unwrap()).job_id).collect::<Vec<_>>()
    });
    drop(db);
    let (batches, writes) = store.commit_stats();
    assert_eq!(writes, 16);
    assert!(batches <= 2, "16 queued writes took {batches} transactions");
    drop(store);
    let store = Store::open(&path).unwrap();
    for id in &ids {
        assert!(store.get(id).unwrap().is_some(), "{id} is on disk");
    }
    assert_eq!(store.in_flight().unwrap(), 16);
}

/// One failing write of a batch fails alone: the others of the same
/// transaction are committed and answered.
#[test]
fn a_failing_write_does_not_fail_its_batch() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let db = store.inner.slot.read().unwrap().1.clone().unwrap();
    let blocker = db.begin_write().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let (good, bad) = rt.block_on(async {
        let good = store.submit_async(new_job("good"), None, None, 1, 100);
        let bad = store.write_async(Flush::Immediate, |_tx| -> Result<(), StoreError> {
            Err(StoreError::new(StoreErrorKind::Other, "this write fails"))
        });
        let mut both = Box::pin(async { tokio::join!(good, bad) });
        assert!((&mut both).now_or_never().is_none());
        drop(blocker);
        both.await
    });
    drop(db);
    let good = created(good.unwrap());
    assert_eq!(bad.unwrap_err().kind(), StoreErrorKind::Other);
    assert!(store.get(&good.job_id).unwrap().is_some());
}

#[test]
fn child_records_are_reaped_and_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let mut live = crate::process::test_support::sleeper_in_own_group();
    let group = crate::process::ChildGroup::of(live.id());
    store.record_child("ja", &group).unwrap();
    let ended = crate::process::ChildGroup { id: 999_999, started: Some(1), boot_id: None };
    store.record_child("jb", &ended).unwrap();
    store.record_child("jb", &crate::process::ChildGroup { id: 999_998, ..ended.clone() }).unwrap();
    store.forget_child("jb", &crate::process::ChildGroup { id: 999_998, ..ended.clone() }).unwrap();
    assert_eq!(store.children().unwrap().len(), 2);
    let report = store.reap_children().unwrap();
    assert_eq!(report.killed, vec![("ja".to_string(), live.id())]);
    assert_eq!(report.stale, 1);
    assert!(store.children().unwrap().is_empty());
    assert!(live.wait().unwrap().code().is_none(), "killed by a signal");
}

/// A full disk: the write fails with DISK_FULL and the store is in its
/// failed state; once space is back the next write succeeds on the same
/// handle, without a restart.
#[cfg(target_os = "linux")]
#[test]
fn the_store_recovers_once_space_returns() {
    let Some(fs) = crate::process::test_support::Tmpfs::mount("4m") else { return };
    let store = Store::open(&fs.path().join("w.redb")).unwrap();
    created(store.submit(new_job("before"), 1, 1000).unwrap());
    let filler = fs.fill();
    let big = json!({"blob": "x".repeat(256 * 1024)});
    let mut failure = None;
    for i in 0..64 {
        let job = NewJob { payload: big.clone(), ..new_job(&format!("full{i}")) };
        if let Err(e) = store.submit(job, 2, 1000) {
            failure = Some(e);
            break;
        }
    }
    let e = failure.expect("a write on a full disk failed");
    assert!(e.is_disk_full(), "{e:?}");
    assert_eq!(e.code(), ErrorCode::DiskFull);
    assert!(store.is_failed());
    // Still full: the next call fails the same way, and says why.
    if let Err(again) = store.submit(NewJob { payload: big.clone(), ..new_job("still") }, 3, 1000) {
        assert!(again.is_disk_full(), "{again:?}");
    }
    std::fs::remove_file(filler).unwrap();
    let after = created(store.submit(new_job("after"), 4, 1000).unwrap());
    assert!(!store.is_failed());
    assert_eq!(store.get(&after.job_id).unwrap().unwrap().job_id, after.job_id);
}

/// A job started ahead of its acceptance: its acceptance waits for the
/// job's end to share its commit, one transaction and one sync for both;
/// an end queued for a job the acceptance did not create changes nothing.
#[actix_rt::test]
async fn an_early_acceptance_shares_its_commit_with_the_jobs_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("w.redb")).unwrap();
    let (commits, writes) = store.commit_stats();
    let id = new_job_id();
    let far = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let accepting = store.submit_started_early(new_job("early"), id.clone(), None, 1, 10, far);
    // Queued when called: the end queued now comes after it.
    let ended = store.finish_async(&id, Ok((json!({"ok": true}), vec![])), Some("log".into()), 2);
    let (accepted, ended) = tokio::join!(accepting, ended);
    let rec = created(accepted.unwrap());
    assert_eq!((rec.job_id.as_str(), rec.state), (id.as_str(), JobState::Running));
    let done = ended.unwrap().expect("the end found the record its acceptance wrote");
    assert_eq!((done.state, done.log.as_deref()), (JobState::Succeeded, Some("log")));
    assert_eq!(store.commit_stats(), (commits + 1, writes + 2), "acceptance and end in one commit");
    assert_eq!(store.in_flight().unwrap(), 0);

    // A full store: the acceptance creates nothing, and the end queued
    // behind it records nothing either.
    created(store.submit(new_job("holder"), 3, 1).unwrap());
    let refused = new_job_id();
    let soon = std::time::Instant::now() + std::time::Duration::from_millis(5);
    let accepting = store.submit_started_early(new_job("refused"), refused.clone(), None, 4, 1, soon);
    let ended = store.finish_async(&refused, Ok((json!({}), vec![])), None, 5);
    let (accepted, ended) = tokio::join!(accepting, ended);
    assert_eq!(accepted.unwrap(), Submission::Full);
    assert_eq!(ended.unwrap(), None);
    assert!(store.get(&refused).unwrap().is_none());
    assert!(!store.knows_inputs("FFMPEG_PROBE", "refused").unwrap());
    assert!(store.knows_inputs("FFMPEG_PROBE", "early").unwrap());
}
