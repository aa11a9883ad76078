//! The bind guard checks the interface, not only the address range: inside
//! a network namespace this test creates, a veth named `tailscale0` holding
//! a 100.64 address is accepted (and served on), while a veth with another
//! name holding a 100.64 address (what carrier-grade NAT looks like) is
//! refused with a message naming that interface. The real worker binary
//! runs inside the namespace through `ip netns exec`.
//!
//! Needs root and iproute2; where either is missing the test says so and
//! does nothing else.

mod common;
mod worker_harness;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use worker_harness::{base_command, Opts};

/// A network namespace, deleted (with everything in it) when dropped, even
/// when the test fails.
struct Netns(String);

impl Netns {
    /// Creates a fresh namespace, or says why namespaces are unavailable.
    fn create() -> Result<Netns, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("the `ip` command (iproute2) is not installed".into());
        }
        let name = format!("rvbind-{}", &rayvault::auth::fresh_nonce()[..12]);
        let out = Command::new("ip").args(["netns", "add", &name]).output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!("`ip netns add` failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        Ok(ns)
    }

    /// Runs `ip -n <ns> <args>` and insists it succeeds.
    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip").arg("-n").arg(&self.0).args(args).output().unwrap();
        assert!(out.status.success(), "ip -n {} {args:?}: {}", self.0, String::from_utf8_lossy(&out.stderr));
    }

    /// A veth pair inside the namespace, `name` holding `addrs`, both ends up.
    fn veth(&self, name: &str, peer: &str, addrs: &[&str]) {
        self.ip(&["link", "add", name, "type", "veth", "peer", "name", peer]);
        for a in addrs {
            if a.contains(':') {
                self.ip(&["addr", "add", a, "dev", name, "nodad"]);
            } else {
                self.ip(&["addr", "add", a, "dev", name]);
            }
        }
        self.ip(&["link", "set", name, "up"]);
        self.ip(&["link", "set", peer, "up"]);
    }

    /// The worker binary, started inside the namespace with the harness's
    /// scrubbed environment and `args`.
    fn worker(&self, state: &std::path::Path, port: u16, args: &[&str]) -> Command {
        let inner = base_command(state, port, &Opts::default());
        let mut outer = Command::new("ip");
        outer.args(["netns", "exec", &self.0]).arg(inner.get_program()).args(inner.get_args()).args(args);
        outer.env_clear();
        for (k, v) in inner.get_envs() {
            if let Some(v) = v {
                outer.env(k, v);
            }
        }
        outer.current_dir(state).stdin(Stdio::null()).stdout(Stdio::null());
        outer
    }

    /// Runs a command inside the namespace.
    fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A worker process killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a worker inside `ns` on `host` and waits until it listens, or
/// returns its stderr if it exits first.
fn start(ns: &Netns, dir: &std::path::Path, host: &str, port: u16, extra: &[&str]) -> Result<(Running, String), String> {
    let stderr_path = dir.join(format!("worker-{}-{port}.log", host.replace(':', "_")));
    let child = ns.worker(dir, port, &[&["--host", host][..], extra].concat()).stderr(std::fs::File::create(&stderr_path).unwrap()).spawn().unwrap();
    let mut worker = Running(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        if log.contains("rayvault-worker listening") {
            return Ok((worker, log));
        }
        if let Ok(Some(status)) = worker.0.try_wait() {
            return Err(format!("exit {:?}: {log}", status.code()));
        }
        assert!(Instant::now() < deadline, "{host}: the worker neither started nor exited: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn only_the_tailscale_interface_may_hold_a_tailnet_bind_address() {
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("SKIPPED only_the_tailscale_interface_may_hold_a_tailnet_bind_address: network namespaces unavailable ({why})");
            return;
        }
    };
    ns.veth("tailscale0", "ts-peer", &["100.64.7.2/32", "fd7a:115c:a1e0::7/128"]);
    ns.veth("cgnat0", "cgnat-peer", &["100.64.8.2/32", "fd7a:115c:a1e0::8/128"]);
    let dir = common::tempdir();

    // On a plain interface: refused before binding, naming the interface.
    for host in ["100.64.8.2", "fd7a:115c:a1e0::8"] {
        let err = match start(&ns, dir.path(), host, common::free_port(), &[]) {
            Ok((_, log)) => panic!("{host} on cgnat0 was accepted: {log}"),
            Err(err) => err,
        };
        assert!(err.starts_with("exit Some(2)"), "{host}: {err}");
        assert!(err.contains(&format!("refusing to bind {host}")) && err.contains("held by interface cgnat0"), "{host}: {err}");
        assert!(err.contains("--allow-any-bind"), "{err}");
    }

    // On tailscale0: accepted, and it serves there.
    for host in ["100.64.7.2", "fd7a:115c:a1e0::7"] {
        let port = common::free_port();
        let (worker, _) = start(&ns, dir.path(), host, port, &[]).unwrap_or_else(|e| panic!("{host} on tailscale0 was refused: {e}"));
        let url = if host.contains(':') { format!("http://[{host}]:{port}/health") } else { format!("http://{host}:{port}/health") };
        let out = ns.exec(&["curl", "-sS", "--max-time", "10", &url]);
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && body.contains("\"status\":\"ok\""), "{host}: {body} {}", String::from_utf8_lossy(&out.stderr));
        drop(worker);
    }

    // The escape hatch still works on the plain interface, loudly.
    let (_worker, log) = start(&ns, dir.path(), "100.64.8.2", common::free_port(), &["--allow-any-bind"]).expect("--allow-any-bind overrides");
    assert!(log.contains("SECURITY WARNING") && log.contains("held by interface cgnat0"), "{log}");
}
