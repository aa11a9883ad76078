//! Tests of running tools and of reaping: the scrubbed environment, the whole
//! tree killed on timeout or cancellation, the parent-death signal, the
//! records of running children and the pid-reuse checks. They start real
//! processes and signal their groups, so they run on Unix only.

use super::*;

fn log() -> (tempfile::TempDir, JobLog) {
    let dir = tempfile::tempdir().unwrap();
    let log = JobLog::open(&dir.path().join("worker.log")).unwrap();
    (dir, log)
}

#[tokio::test]
async fn secrets_are_scrubbed_from_child_env() {
    std::env::set_var("RAYVAULT_CLUSTER_SECRET_TEST_SCRUB", "hunter2");
    let (_d, log) = log();
    let out = run_tool(&Tool::new("env", "env").capture_stdout(), &log, &CancellationToken::new())
        .await
        .unwrap();
    let env = String::from_utf8_lossy(&out.stdout);
    assert!(env.contains("PATH="));
    assert!(!env.contains("hunter2"));
}

#[tokio::test]
async fn timeout_kills_the_whole_tree() {
    let (dir, log) = log();
    let marker = dir.path().join("grandchild.pid");
    // The shell starts a grandchild sleeper and records its pid.
    let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
    let tool = Tool::new("sh", "sh").args(["-c", &script]).timeout(Duration::from_millis(500));
    let err = run_tool(&tool, &log, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout);
    let pid: i32 = std::fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
    // Wait (with a deadline) until the grandchild is gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        // SAFETY: signal 0 only checks for existence.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ");
        if !alive {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "grandchild {pid} survived the timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    (unsafe { libc::kill(pid as i32, 0) } == 0)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

fn wait_dead(pid: u32, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while alive(pid) {
        assert!(std::time::Instant::now() < deadline, "{what} {pid} is still alive");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `sh` in a process group of its own, with a grandchild sleeper;
/// returns the shell and the grandchild's pid.
fn group_with_grandchild(dir: &std::path::Path) -> (std::process::Child, u32) {
    use std::os::unix::process::CommandExt as _;
    let marker = dir.join("gc.pid");
    let script = format!("sleep 300 & echo $! > {m}.tmp; mv {m}.tmp {m}; wait", m = marker.display());
    let leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let gc = loop {
        if let Ok(s) = std::fs::read_to_string(&marker) {
            break s.trim().parse::<u32>().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "the grandchild never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    (leader, gc)
}

#[test]
fn reap_kills_a_recorded_group_and_its_grandchildren() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, gc) = group_with_grandchild(dir.path());
    let group = ChildGroup::of(leader.id());
    assert!(group.started.is_some() && group.boot_id.is_some(), "{group:?}");
    assert_eq!(reap(std::slice::from_ref(&group)), vec![Reaped::Killed]);
    leader.wait().unwrap();
    wait_dead(gc, "the grandchild");
    assert_eq!(reap(&[group]), vec![Reaped::Gone]);
}

#[test]
fn reap_kills_a_group_whose_leader_died_first() {
    // What a parent-death signal leaves: the direct child killed, its
    // own children still running in the group.
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, gc) = group_with_grandchild(dir.path());
    let group = ChildGroup::of(leader.id());
    leader.kill().unwrap();
    leader.wait().unwrap();
    assert!(alive(gc));
    assert_eq!(reap(&[group]), vec![Reaped::Killed]);
    wait_dead(gc, "the orphaned grandchild");
}

#[test]
fn reap_leaves_a_reused_pid_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (mut leader, gc) = group_with_grandchild(dir.path());
    // The record of an older process that had the same pid.
    let mut group = ChildGroup::of(leader.id());
    group.started = group.started.map(|t| t.saturating_sub(1));
    assert_eq!(reap(std::slice::from_ref(&group)), vec![Reaped::Reused]);
    // And of a previous boot.
    let mut other_boot = ChildGroup::of(leader.id());
    other_boot.boot_id = Some("another-boot".into());
    assert_eq!(reap(&[other_boot]), vec![Reaped::Reused]);
    assert!(alive(leader.id()) && alive(gc), "nothing was killed");
    // SAFETY: our own child's group.
    unsafe {
        libc::killpg(leader.id() as i32, libc::SIGKILL);
    }
    leader.wait().unwrap();
}

/// The tool itself reads its parent-death signal (PR_GET_PDEATHSIG): it
/// must be SIGKILL, whichever thread asked for the spawn.
#[cfg(target_os = "linux")]
#[test]
fn children_get_sigkill_as_parent_death_signal() {
    let (_d, log) = log();
    let script = "import ctypes; s = ctypes.c_int(); ctypes.CDLL(None).prctl(2, ctypes.byref(s)); print(s.value)";
    let tool = Tool::new("python3", "python3").args(["-c", script]).capture_stdout();
    // Asked from a short-lived thread with a runtime of its own: the
    // fork still happens on the spawner thread.
    let out = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run_tool(&tool, &log, &CancellationToken::new())).unwrap()
    })
    .join()
    .unwrap();
    assert!(out.success(), "{}", out.stderr_tail);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), libc::SIGKILL.to_string());
}

/// Every tool is recorded while it runs and forgotten when it ends.
#[tokio::test]
async fn children_are_recorded_while_they_run() {
    #[derive(Default)]
    struct Seen(std::sync::Mutex<Vec<String>>);
    impl ChildRegistry for Seen {
        fn record(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("+{owner}/{}", group.id));
            Ok(())
        }
        fn forget(&self, owner: &str, group: &ChildGroup) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("-{owner}/{}", group.id));
            Ok(())
        }
    }
    let seen = Arc::new(Seen::default());
    let (_d, log) = log();
    let log = log.tracking_children(ChildTracker::new("j1", seen.clone()));
    let out = run_tool(&Tool::new("sh", "sh").args(["-c", "echo $$"]).capture_stdout(), &log, &CancellationToken::new())
        .await
        .unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(*seen.0.lock().unwrap(), vec![format!("+j1/{pid}"), format!("-j1/{pid}")]);
}

#[tokio::test]
async fn missing_program_reports_the_unavailable_code() {
    let (_d, log) = log();
    let tool = Tool::new("definitely-not-a-real-tool-xyz", "x")
        .codes(ErrorCode::FfmpegUnavailable, ErrorCode::FfmpegFailed);
    let err = run_tool(&tool, &log, &CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::FfmpegUnavailable);
}

#[tokio::test]
async fn cancel_stops_the_tool() {
    let (_d, log) = log();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let err = run_tool(&Tool::new("sleep", "sleep").arg("30"), &log, &cancel).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
}
