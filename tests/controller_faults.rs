//! The controller daemon's local steps when the daemon dies: their
//! processes die with it, and a daemon started after a crash kills the
//! process groups its predecessor recorded.

#![cfg(unix)]

mod controller_support;

use controller_support::*;
use rayvault::controller_store::ControllerStore;
use rayvault::process::ChildGroup;
use serde_json::json;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    (unsafe { libc::kill(pid as i32, 0) } == 0)
        && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z ")
}

/// Kills the pids it holds when dropped, so that a failing test leaves no
/// process behind.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            if alive(pid) {
                // SAFETY: a process this test saw started for it.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
            }
        }
    }
}

fn read_pid(path: &Path, timeout: Duration) -> u32 {
    common::wait_until(&format!("{} to be written", path.display()), timeout, || path.exists());
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

fn wait_all_dead(pids: &[u32], timeout: Duration, what: &str) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(start.elapsed() < timeout, "{what}: still alive after {timeout:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
fn a_local_step_s_processes_die_within_2_s_of_kill_9_of_the_daemon() {
    let mut w = World::new();
    let pids = w.dir.path().join("pids");
    std::fs::create_dir(&pids).unwrap();
    // The local step's tool (OPENCLAW_TASK's command): reads its task,
    // records its own pid, starts a grandchild in its process group and
    // records that too, then waits for it. The runner writes the task only
    // after it has recorded the tool's group in the store, so once the pid
    // files exist the record is committed and the kill below cannot race it.
    let script = w.dir.path().join("slow_tool.sh");
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
    w.set_env("DISPLAY", ":0");
    w.set_env("RAYVAULT_OPENCLAW__COMMAND", &format!("sh {}", script.display()));
    w.write_nodes(&[]);
    let mut daemon = w.daemon();
    let (code, _, err) = w.submit("r", "tool", "OPENCLAW_TASK", json!({"task": "Done slowly, on the controller."}), &["--no-wait"]);
    assert_eq!(code, 0, "{err}");
    let child = read_pid(&pids.join("child.pid"), Duration::from_secs(30));
    let grandchild = read_pid(&pids.join("grandchild.pid"), Duration::from_secs(30));
    let _cleanup = KillOnDrop(vec![child, grandchild]);
    assert!(alive(child) && alive(grandchild), "the local step's processes run");

    daemon.kill();
    let took = wait_all_dead(&[child, grandchild], Duration::from_secs(2), "the local step's processes after kill -9 of the daemon");
    eprintln!("the local step's child and grandchild were gone {took:?} after the daemon died");
    // The LocalRunner had recorded the tool's group for the next start.
    let store = open_after_kill(&ControllerStore::default_path(&w.cluster()));
    let recorded = store.children().unwrap();
    assert!(recorded.iter().any(|(job, g)| job == "r/tool" && g.id == child), "{recorded:?}");
}

#[test]
fn a_daemon_started_after_a_crash_kills_the_groups_its_predecessor_recorded() {
    let w = World::new();
    let marker = w.dir.path().join("grandchild.pid");
    let script = format!("sleep 300 & echo $! > {m}.tmp; mv {m}.tmp {m}; wait", m = marker.display());
    let mut leader = std::process::Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
    let grandchild = read_pid(&marker, Duration::from_secs(10));
    let _cleanup = KillOnDrop(vec![leader.id(), grandchild]);
    let path = ControllerStore::default_path(&w.cluster());
    ControllerStore::open(&path).unwrap().record_child("r/local", &ChildGroup::of(leader.id())).unwrap();
    w.write_nodes(&[]);

    let mut daemon = w.daemon();
    wait_all_dead(&[leader.id(), grandchild], Duration::from_secs(5), "the recorded group after the daemon's start");
    assert!(leader.wait().unwrap().code().is_none(), "the leader was killed by a signal");
    common::wait_until("the daemon logs the kill", Duration::from_secs(5), || {
        w.daemon_log().contains("killed child process groups left running by the previous daemon")
    });
    daemon.kill();
    assert!(open_after_kill(&path).children().unwrap().is_empty(), "every record is cleared");
}
