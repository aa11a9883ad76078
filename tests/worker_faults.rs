//! The real worker when its process or its disk fails: a step's processes
//! die with a worker killed with SIGKILL, a worker started after a crash
//! kills the process groups its predecessor recorded, and a full disk gives
//! DISK_FULL and a `degraded` health until space returns, with no restart.

#![cfg(unix)]

mod common;
mod worker_harness;

use rayvault::process::ChildGroup;
use rayvault::store::{Store, WorkerPaths};
use serde_json::json;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};
use worker_harness::{Opts, Worker};

/// True while `pid` exists and is not a zombie (a dead child whose parent
/// has not collected it yet is no longer running).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    (unsafe { libc::kill(pid as i32, 0) } == 0)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Waits (up to `timeout`) for every pid to be dead; returns how long it took.
fn wait_all_dead(pids: &[u32], timeout: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        let left: Vec<_> = pids.iter().filter(|&&p| alive(p)).collect();
        assert!(start.elapsed() < timeout, "{what}: still alive after {timeout:?}: {left:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

/// Kills the pids it holds when dropped, so that a failing test leaves no
/// process behind.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                // SAFETY: a process this test saw its own step start.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

/// Reads a pid a script wrote (atomically, by rename) to `path`.
fn read_pid(path: &Path, timeout: Duration) -> u32 {
    common::wait_until(&format!("{} to be written", path.display()), timeout, || path.exists());
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[test]
fn a_step_s_processes_die_within_2_s_of_kill_9_of_the_worker() {
    let dir = common::tempdir();
    let pids = dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    // The step's tool (OPENCLAW_TASK's command): reads its task, records its
    // own pid, starts a grandchild in its process group and records that
    // too, then waits for it. The executor writes the task only after it has
    // recorded the tool's group in the store, so once the pid files exist the
    // record is committed and the kill below cannot race it.
    let script = dir.path().join("slow_tool.sh");
    std::fs::write(
        &script,
        format!(
            "cat > /dev/null\n\
             echo $$ > {p}/child.tmp && mv {p}/child.tmp {p}/child.pid\n\
             sleep 300 &\n\
             echo $! > {p}/grandchild.tmp && mv {p}/grandchild.tmp {p}/grandchild.pid\n\
             wait\n",
            p = pids.display()
        ),
    )
    .unwrap();
    let mut w = Worker::start(Opts { env: vec![("RAYVAULT_OPENCLAW__COMMAND".into(), format!("sh {}", script.display()))], ..Opts::default() });
    let r = w.signed("POST", "/jobs", &submit_body_openclaw("A task that takes a long time."));
    assert_eq!(r.status, 201, "{}", r.text());
    let child = read_pid(&pids.join("child.pid"), Duration::from_secs(20));
    let grandchild = read_pid(&pids.join("grandchild.pid"), Duration::from_secs(20));
    let _cleanup = KillOnDrop(vec![child, grandchild]);
    assert!(alive(child) && alive(grandchild), "the step's processes run");

    w.kill9();
    let took = wait_all_dead(&[child, grandchild], Duration::from_secs(2), "the step's processes after kill -9 of the worker");
    eprintln!("the step's child and grandchild were gone {took:?} after the worker died");
    // The executor had recorded the tool's group for the next start. The
    // killed worker's lock on its database can outlive it for a moment (see
    // below): wait for it as a restarted worker does.
    let store = Store::open_waiting(&WorkerPaths::new(&w.state_dir.join("worker")).db_path(), Duration::from_secs(5)).unwrap();
    let recorded = store.children().unwrap();
    assert!(recorded.iter().any(|(_, g)| g.id == child), "{recorded:?}");
}

#[test]
fn a_worker_started_after_a_crash_kills_the_groups_its_predecessor_recorded() {
    let dir = common::tempdir();
    // What a dead worker leaves: a tool's process group still running (its
    // leader and a grandchild), recorded in the store for a running job.
    let marker = dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {m}.tmp; mv {m}.tmp {m}; wait", m = marker.display());
    let mut leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
    let grandchild = read_pid(&marker, Duration::from_secs(10));
    let _cleanup = KillOnDrop(vec![leader.id(), grandchild]);
    let paths = WorkerPaths::new(&dir.path().join("worker"));
    paths.create().unwrap();
    let job_id = format!("j{}", "ab".repeat(16));
    {
        let store = Store::open(&paths.db_path()).unwrap();
        store.record_child(&job_id, &ChildGroup::of(leader.id())).unwrap();
    }
    // A pid that is not alive: its record is only cleared.
    let mut ended = std::process::Command::new("true").spawn().unwrap();
    let ended_group = ChildGroup::of(ended.id());
    ended.wait().unwrap();
    Store::open(&paths.db_path()).unwrap().record_child(&job_id, &ChildGroup { started: Some(1), ..ended_group }).unwrap();

    let mut w = Worker::start(Opts { state_dir: Some(dir.path().to_path_buf()), ..Opts::default() });
    wait_all_dead(&[leader.id(), grandchild], Duration::from_secs(5), "the recorded group after the worker's start");
    assert!(leader.wait().unwrap().code().is_none(), "the leader was killed by a signal");
    assert!(w.stderr().contains("killed child process groups left running by the previous worker process"), "{}", w.stderr());

    w.kill9();
    // The killed worker's helper processes (the process-group guardian)
    // outlive it by a few milliseconds and share its open database file, so
    // its lock can too: wait for it as a restarted worker does.
    let store = Store::open_waiting(&paths.db_path(), Duration::from_secs(5)).unwrap();
    assert!(store.children().unwrap().is_empty(), "every record is cleared");
}

/// A tmpfs the test mounts, unmounted (lazily) on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = common::tempdir();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("SKIPPED: cannot mount a tmpfs here: {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Writes `path` until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xa5_u8; 64 * 1024];
    while let Ok(()) = f.write_all(&block) {}
    let _ = f.sync_all();
}

fn health(w: &Worker) -> serde_json::Value {
    let r = w.request("GET", "/health", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn a_full_disk_gives_disk_full_and_degraded_health_until_space_returns() {
    let Some(fs) = Tmpfs::mount("24m") else { return };
    let state = fs.0.path().to_path_buf();
    let min_free = 4 * 1024 * 1024;
    let mut w = Worker::start(Opts {
        state_dir: Some(state.clone()),
        env: vec![
            ("RAYVAULT_WORKER__MIN_FREE_BYTES".into(), min_free.to_string()),
            ("RAYVAULT_OPENCLAW__COMMAND".into(), "cat".into()),
        ],
        ..Opts::default()
    });
    let h = health(&w);
    assert_eq!(h["status"], "ok", "{h}");
    assert!(h["free_bytes"].as_u64().unwrap() > min_free, "{h}");
    assert!(h.get("degraded_reason").is_none(), "{h}");
    let first = w.signed("POST", "/jobs", &submit_body_openclaw("before the disk filled up"));
    assert_eq!(first.status, 201, "{}", first.text());

    let filler = state.join("filler");
    fill(&filler);
    let h = health(&w);
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["free_bytes"].as_u64().unwrap() < min_free, "{h}");
    assert!(h["degraded_reason"].as_str().unwrap().contains("min_free_bytes"), "{h}");

    let blob = vec![7u8; 512 * 1024];
    let digest = rayvault::protocol::sha256_hex(&blob);
    let put = w.signed("PUT", &format!("/blobs/{digest}"), &blob);
    assert_eq!((put.status, put.code()), (507, "DISK_FULL".to_string()), "{}", put.text());
    // The spare files the worker made ahead for inline inputs
    // (`.spare.<id>`, empty) are not the upload's.
    let leftovers: Vec<_> = std::fs::read_dir(state.join("worker/blobs")).unwrap().flatten().map(|e| e.file_name()).filter(|n| !n.to_string_lossy().starts_with(".spare.")).collect();
    assert!(leftovers.is_empty(), "the failed upload left {leftovers:?}");

    // Submissions until the store's own write meets the full disk (the
    // first may still fit in pages the database already has).
    let mut refused = None;
    for i in 0..50 {
        let r = w.signed("POST", "/jobs", &submit_body_openclaw(&format!("while full {i} {}", "x".repeat(64 * 1024))));
        if r.status != 201 {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("a submission on a full disk was refused");
    assert_eq!((refused.status, refused.code()), (507, "DISK_FULL".to_string()), "{}", refused.text());
    let h = health(&w);
    assert_eq!(h["status"], "degraded", "{h}");

    std::fs::remove_file(&filler).unwrap();
    let after = w.signed("POST", "/jobs", &submit_body_openclaw("after space returned"));
    assert_eq!(after.status, 201, "the worker recovered without a restart: {}", after.text());
    let h = health(&w);
    assert_eq!(h["status"], "ok", "{h}");
    assert!(h.get("degraded_reason").is_none(), "{h}");
    let job_id = after.json()["job"]["job_id"].as_str().unwrap().to_string();
    let r = w.signed("GET", &format!("/jobs/{job_id}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    w.kill9();
}

fn submit_body_openclaw(task: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"step_name": "OPENCLAW_TASK", "payload": {"task": task}})).unwrap()
}
