use super::*;
use std::time::Duration;

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

#[test]
fn writes_that_arrive_together_share_one_commit_and_are_durable_when_answered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let s = ControllerStore::open(&path).unwrap();
    let before = s.commits();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let answers = rt.block_on(futures_util::future::join_all((0..64).map(|i| s.insert_unless_in_flight(job(&format!("j{i}"))))));
    assert!(answers.iter().all(|a| matches!(a, Ok(true))), "{answers:?}");
    let commits = s.commits() - before;
    assert!(commits < 32, "64 writes queued together took {commits} commits");
    // A second submission of a job in flight is refused in the same way.
    assert!(!rt.block_on(s.insert_unless_in_flight(job("j0"))).unwrap());
    let changed = rt.block_on(s.update_async("r/j1", |j| j.phase = Phase::Finished)).unwrap();
    assert_eq!(changed.map(|j| j.phase), Some(Phase::Finished));
    drop(s);
    let s = ControllerStore::open(&path).unwrap();
    assert_eq!(s.all().unwrap().len(), 64);
    assert_eq!(s.unfinished().unwrap().len(), 63);
}

#[test]
fn a_jobs_end_shares_the_next_acceptances_commit_or_commits_by_itself_within_soon() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let s = ControllerStore::open(&path).unwrap();
    s.put(&job("a")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let done = |s: &ControllerStore, key: &str| {
        let (send, receive) = std::sync::mpsc::channel();
        s.update_then(key, |j| j.phase = Phase::Finished, move |r| send.send(r.map(|j| j.map(|j| j.phase))).unwrap());
        receive
    };
    // The end, then an acceptance right after it: one commit for both.
    // (Tried up to three times: a machine so loaded that the second
    // write comes more than SOON after the first commits them apart.)
    let mut shared = Vec::new();
    for i in 0..3 {
        let before = s.commits();
        let ended = done(&s, "r/a");
        assert!(rt.block_on(s.insert_unless_in_flight(job(&format!("b{i}")))).unwrap());
        assert_eq!(ended.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(), Some(Phase::Finished));
        shared.push(s.commits() - before);
        if shared.last() == Some(&1) {
            break;
        }
    }
    assert_eq!(shared.last(), Some(&1), "the end and the acceptance never shared a commit: {shared:?}");
    // An end with nothing after it still commits, within SOON.
    let before = s.commits();
    let waited = std::time::Instant::now();
    let ended = done(&s, "r/b0");
    assert_eq!(ended.recv_timeout(Duration::from_secs(10)).unwrap().unwrap(), Some(Phase::Finished));
    assert!(waited.elapsed() < SOON + Duration::from_secs(5));
    assert_eq!(s.commits() - before, 1);
    drop(s);
    let s = ControllerStore::open(&path).unwrap();
    let left: Vec<String> = s.unfinished().unwrap().iter().map(|j| j.spec.key()).collect();
    assert!(!left.contains(&"r/a".to_string()) && !left.contains(&"r/b0".to_string()), "both ends are durable: {left:?}");
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
