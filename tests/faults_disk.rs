//! A worker whose disk fills up, with the real binaries: its state folder is
//! a small tmpfs, filled to the last byte while the worker runs. No job may
//! be lost: the controller runs it elsewhere (here: locally) and says why.
//! Once space is freed the worker serves again without a restart.
//!
//! Needs root for the tmpfs mount (CI runs as root); skips with the reason
//! otherwise.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The worker's self-healing store, `/health` "degraded" and DISK_FULL
/// answers are being added beside this test. Until they are in this tree
/// the test asserts what exists (no job lost, the worker process survives,
/// the fallback names the worker); set this to true once they are merged to
/// assert the rest: `/health` says "degraded" on a full disk, the fallback
/// reason names the full disk, and after space is freed the next job runs on
/// the worker again without a restart.
const DISK_FULL_HANDLING: bool = false;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| e.to_string())?;
        sys(&["mount", "-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])?;
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Writes `filler` until the file system has no byte left.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(self.0.join("filler")).unwrap();
        for size in [1 << 20, 1 << 12, 1] {
            let block = vec![0u8; size];
            while f.write_all(&block).is_ok() {}
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = sys(&["umount", "-l", self.0.to_str().unwrap()]);
    }
}

fn receipt(w: &World, run: &str, job: &str) -> Value {
    let path = w.receipt_dir(run, job).join("job_receipt.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("no receipt at {}: {e}", path.display()))).unwrap()
}

#[test]
fn a_worker_with_a_full_disk_loses_no_job_and_serves_again_once_space_is_freed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED a_worker_with_a_full_disk_loses_no_job_and_serves_again_once_space_is_freed: not root, cannot mount a tmpfs");
        return;
    }
    let mut w = World::new();
    let state = w.dir.path().join("worker-w1");
    let disk = match Tmpfs::mount(&state, "16m") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("SKIPPED a_worker_with_a_full_disk_loses_no_job_and_serves_again_once_space_is_freed: cannot mount a tmpfs here: {e}");
            return;
        }
    };
    let step = ledger_step_env(&w);
    for (k, v) in &step {
        w.set_env(k, v);
    }
    w.set_env("FAULT_NODE", "local");
    w.set_env("FAULT_STEP_S", "0.2");
    let mut wenv = step.clone();
    wenv.push(("FAULT_STEP_S".into(), "0.2".into()));
    let (mut worker, port) = worker_at(&w, "w1", "127.0.0.1", None, &state, &wenv);
    w.write_nodes(&[("w1", port, true)]);
    let payload = |text: &str| json!({ "chunks": [{ "id": 1, "text": text }] });

    disk.fill();
    if DISK_FULL_HANDLING {
        common::wait_until("/health says degraded", Duration::from_secs(10), || health_at("127.0.0.1", port).is_some_and(|h| h["status"] == "degraded"));
    }
    let (code, _, err) = w.submit("disk", "full", "TTS_RENDER_CHUNKS", payload("on-a-full-disk"), &[]);
    assert_eq!(code, 0, "{err}");
    let r = receipt(&w, "disk", "full");
    // Not lost: the job ran locally, and the receipt says why.
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["executed_on"], "local", "{r}");
    let reason = r["fallback_reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("w1"), "{r}");
    if DISK_FULL_HANDLING {
        assert!(reason.contains("DISK_FULL") || reason.contains("disk"), "the reason names the full disk: {reason}");
    }
    let lines = ledger(&w);
    assert_eq!(lines.iter().filter(|l| l.kind == "END").map(|l| l.node.as_str()).collect::<Vec<_>>(), ["local"], "{lines:?}");
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker died on a full disk: {}", std::fs::read_to_string(w.dir.path().join("w1.log")).unwrap_or_default());

    disk.free();
    if DISK_FULL_HANDLING {
        common::wait_until("/health says ok again", Duration::from_secs(10), || health_at("127.0.0.1", port).is_some_and(|h| h["status"] == "ok"));
        let (code, _, err) = w.submit("disk", "freed", "TTS_RENDER_CHUNKS", payload("after-space-returned"), &[]);
        assert_eq!(code, 0, "{err}");
        let r = receipt(&w, "disk", "freed");
        assert_eq!(r["status"], "succeeded", "{r}");
        assert_eq!(r["executed_on"], "w1", "the worker serves again without a restart: {r}");
    } else {
        // Without the self-healing store the worker answers again (no
        // crash, no hang) even if it cannot take jobs yet.
        assert!(health_at("127.0.0.1", port).is_some(), "the worker stopped answering /health");
    }
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker exited");
    worker.kill();
    drop(disk);
}
