//! A network partition mid-job, with the real binaries: the worker runs in
//! its own network namespace on a 100.64.x.x address, reached by the
//! controller through a veth pair, and the link is cut while the step runs.
//! The lease rule (docs/protocol.md, "4a. Leases") must hold: the worker
//! stops its copy when the lease expires, the controller runs the job
//! locally only after that, the two copies never overlap, and once the link
//! is back the worker reports the copy `abandoned` with `LEASE_EXPIRED`.
//!
//! Needs root and ip(8) (CI runs as root); skips with the reason otherwise.

mod controller_support;

use controller_support::*;
use serde_json::json;
use std::time::Duration;

/// The controller's lease on remote jobs (`[controller] lease_s`, default).
const LEASE_S: f64 = 4.0;
/// How often the controller renews a lease (the watchdog's period).
const RENEW_EVERY_S: f64 = 1.0;

/// A namespace joined to ours by a veth pair, removed when dropped.
struct Netns {
    name: String,
    host_if: String,
    inner_if: String,
}

impl Netns {
    /// `rvt<pid>` with 100.66.<n>.1/30 on our side and .2 inside.
    fn create() -> Result<(Netns, String), String> {
        let tag = std::process::id() % 100_000;
        // Inside its own namespace the worker's end is named `tailscale0`,
        // as on a real tailnet host: the worker's bind guard accepts a
        // 100.64.0.0/10 address only on Tailscale's interface.
        let n = Netns { name: format!("rvt{tag}"), host_if: format!("rvth{tag}"), inner_if: "tailscale0".into() };
        let peer = format!("rvtw{tag}");
        let octet = tag % 250;
        let (host_ip, inner_ip) = (format!("100.66.{octet}.1/30"), format!("100.66.{octet}.2"));
        sys(&["ip", "netns", "add", &n.name])?;
        sys(&["ip", "link", "add", &n.host_if, "type", "veth", "peer", "name", &peer])?;
        sys(&["ip", "link", "set", &peer, "netns", &n.name])?;
        n.exec(&["ip", "link", "set", &peer, "name", &n.inner_if])?;
        sys(&["ip", "addr", "add", &host_ip, "dev", &n.host_if])?;
        sys(&["ip", "link", "set", &n.host_if, "up"])?;
        n.exec(&["ip", "addr", "add", &format!("{inner_ip}/30"), "dev", &n.inner_if])?;
        n.exec(&["ip", "link", "set", &n.inner_if, "up"])?;
        n.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok((n, inner_ip))
    }

    fn exec(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sys(&all)
    }

    /// Cuts the worker's side of the link: ours loses its carrier and drops
    /// every packet without refusing anything, as a real partition does.
    fn cut(&self) {
        self.exec(&["ip", "link", "set", &self.inner_if, "down"]).unwrap();
    }

    fn restore(&self) {
        self.exec(&["ip", "link", "set", &self.inner_if, "up"]).unwrap();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = sys(&["ip", "link", "del", &self.host_if]);
        let _ = sys(&["ip", "netns", "del", &self.name]);
    }
}

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_NET_ADMIN".into());
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        return Some("ip(8) is not installed (iproute2)".into());
    }
    None
}

#[test]
fn a_partitioned_worker_stops_its_copy_before_the_controller_runs_the_job_locally() {
    if let Some(why) = unsupported() {
        eprintln!("SKIPPED a_partitioned_worker_stops_its_copy_before_the_controller_runs_the_job_locally: {why}");
        return;
    }
    let (ns, addr) = match Netns::create() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("SKIPPED a_partitioned_worker_stops_its_copy_before_the_controller_runs_the_job_locally: cannot create a network namespace here: {e}");
            return;
        }
    };
    let mut w = World::new();
    let step = ledger_step_env(&w);
    for (k, v) in &step {
        w.set_env(k, v);
    }
    w.set_env("FAULT_NODE", "local");
    w.set_env("FAULT_STEP_S", "1");
    let mut wenv = step.clone();
    // Long enough that only the lease can end the remote copy in time.
    wenv.push(("FAULT_STEP_S".into(), "25".into()));
    let state = w.dir.path().join("worker-w1");
    let (_worker, port) = worker_at(&w, "w1", &addr, Some(&ns.name), &state, &wenv);
    let nodes = json!({ "nodes": [{ "node_id": "w1", "host": addr, "port": port, "enabled": true }] });
    std::fs::create_dir_all(w.cluster()).unwrap();
    std::fs::write(w.cluster().join("nodes.json"), nodes.to_string()).unwrap();

    let payload = json!({ "chunks": [{ "id": 1, "text": "partitioned" }] });
    let running = spawn_submit(&w, "part", "j", "TTS_RENDER_CHUNKS", payload.clone(), &[]);
    let mut remote = None;
    common::wait_until("the step starts on w1", Duration::from_secs(30), || {
        remote = ledger(&w).into_iter().find(|l| l.kind == "START" && l.node == "w1");
        remote.is_some()
    });
    let remote = remote.unwrap();
    let cut_at = epoch_s();
    ns.cut();
    // Watch the remote copy's process while the controller waits out the lease.
    let pid = remote.pid;
    let watcher = std::thread::spawn(move || {
        let deadline = epoch_s() + 30.0;
        while pid_alive(pid) && epoch_s() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        (!pid_alive(pid)).then(epoch_s)
    });
    let out = running.finish();
    let (code, _, err) = parse_output(&out);
    let died_at = watcher.join().unwrap().expect("the remote copy's process was never stopped");
    assert_eq!(code, 0, "{err}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(w.receipt_dir("part", "j").join("job_receipt.json")).unwrap()).unwrap();
    assert_eq!(r["status"], "succeeded", "{r}");
    assert_eq!(r["executed_on"], "local", "{r}");

    let lines = ledger(&w);
    let local = lines.iter().find(|l| l.kind == "START" && l.node == "local").unwrap_or_else(|| panic!("no local copy: {lines:?}"));
    assert!(lines.iter().any(|l| l.kind == "END" && l.node == "local"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.kind == "END" && l.node == "w1"), "the remote copy ran to its end: {lines:?}");
    // The worker stops its copy only when its lease expired, lease_s after
    // the last renewal it received; so a local copy that starts after that
    // stop starts at least lease_s after the last renewal, and the two
    // copies never overlap.
    assert!(
        died_at <= local.at,
        "two copies at once: the remote copy was still running {:.2} s into the local one (cut at 0, remote copy stopped at {:.2} s, local copy started at {:.2} s)",
        died_at - local.at,
        died_at - cut_at,
        local.at - cut_at
    );
    let wlog = std::fs::read_to_string(w.dir.path().join("w1.log")).unwrap_or_default();
    assert!(wlog.contains("lease expired: stopping the running job"), "the lease stopped the copy: {wlog}");
    // The last renewal was sent at most one renewal period before the cut.
    let attempts = r["attempts"].as_array().unwrap();
    let gave_up = attempts.iter().find(|a| a["executed_on"] == "w1").unwrap_or_else(|| panic!("no attempt on w1: {r}"));
    assert_eq!(gave_up["outcome"], "abandoned", "{r}");
    let local_attempt = attempts.iter().find(|a| a["executed_on"] == "local").unwrap();
    for (what, at) in [("the give-up", stamp_s(gave_up["ended_at"].as_str().unwrap())), ("the local attempt", stamp_s(local_attempt["started_at"].as_str().unwrap())), ("the local step", local.at)] {
        assert!(at - cut_at >= LEASE_S - RENEW_EVERY_S, "{what} came {:.2} s after the cut, before the lease could expire: {r}", at - cut_at);
    }
    // The worker's last renewal came at most about one renewal period
    // (stretched by the status call's round trip) before the cut.
    assert!(died_at - cut_at >= LEASE_S - 2.0 * RENEW_EVERY_S, "the worker stopped its copy only {:.2} s after the cut", died_at - cut_at);
    let fate = gave_up["fate"].as_str().unwrap_or("");
    assert!(["unknown", "stopped_by_lease"].contains(&fate), "the link was down when the job ended: {r}");

    // The link returns: the worker says what became of its copy.
    ns.restore();
    common::wait_until("w1 answers again", Duration::from_secs(20), || health_at(&addr, port).is_some());
    let rid = gave_up["remote_job_id"].as_str().unwrap();
    // The worker's executor records the end after the kill, through its
    // store's commit queue: wait for a final state rather than race it.
    let mut answer = None;
    common::wait_until("w1 has recorded the end of its copy", Duration::from_secs(20), || {
        answer = signed_get_at(&addr, port, "w1", &format!("/jobs/{rid}")).ok();
        answer.as_ref().is_some_and(|(status, job)| *status != 200 || !["queued", "running"].contains(&job["state"].as_str().unwrap_or("")))
    });
    let (status, job) = answer.unwrap();
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "abandoned", "{job}");
    assert_eq!(job["error"]["code"], "LEASE_EXPIRED", "{job}");
}
