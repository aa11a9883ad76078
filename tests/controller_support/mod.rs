//! Helpers for the controller's integration tests: a scrubbed environment
//! per test, real worker processes, the legacy v0.5 double, a daemon, and
//! running `rayvault-orchestrator` subcommands.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

#[path = "../common/mod.rs"]
pub mod common;

pub const SECRET: &str = "test-cluster-secret-0123456789";

/// A child process killed (and reaped) when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    /// Kills the process with SIGKILL, like a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One test's world: a state dir, a controller API port, environment.
pub struct World {
    pub dir: tempfile::TempDir,
    pub api_port: u16,
    /// Extra environment for the controller (e.g. the secret).
    pub env: Vec<(String, String)>,
}

/// A command with every RAYVAULT_* variable removed, run in `cwd` so that
/// no `config/local.toml` of the developer leaks in.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars() {
        if k.starts_with("RAYVAULT_") || k == "RUST_LOG" {
            c.env_remove(k);
        }
    }
    c.current_dir(cwd);
    c
}

impl World {
    pub fn new() -> World {
        World { dir: common::tempdir(), api_port: common::free_port(), env: vec![("RAYVAULT_CLUSTER_SECRET".into(), SECRET.into())] }
    }

    /// A world without any secret (zero configuration).
    pub fn bare() -> World {
        World { env: Vec::new(), ..World::new() }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn cluster(&self) -> PathBuf {
        self.state().join("cluster")
    }

    pub fn receipt_dir(&self, run: &str, job: &str) -> PathBuf {
        self.cluster().join("receipts").join(run).join(job)
    }

    pub fn set_env(&mut self, k: &str, v: &str) {
        self.env.retain(|(n, _)| n != k);
        self.env.push((k.into(), v.into()));
    }

    /// `rayvault-orchestrator` with this world's environment.
    pub fn orch(&self) -> Command {
        let mut c = clean_command(env!("CARGO_BIN_EXE_rayvault-orchestrator"), self.dir.path());
        c.env("RAYVAULT_STATE_DIR", self.state())
            .env("RAYVAULT_CONTROLLER__API_PORT", self.api_port.to_string())
            .env("RAYVAULT_CONTROLLER__PROBE_TIMEOUT_S", "2")
            .env("RAYVAULT_CONTROLLER__WAIT_POLL_S", "2")
            .env("RAYVAULT_CONTROLLER__RETRY_BACKOFF_MS", "100");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Writes nodes.json: (node_id, port, enabled).
    pub fn write_nodes(&self, nodes: &[(&str, u16, bool)]) {
        let list: Vec<Value> = nodes.iter().map(|(id, port, en)| json!({"node_id": id, "host": "127.0.0.1", "port": port, "enabled": en})).collect();
        std::fs::create_dir_all(self.cluster()).unwrap();
        let text = serde_json::to_string_pretty(&json!({ "nodes": list })).unwrap();
        // Written atomically so a running daemon never reads half a file.
        let tmp = self.cluster().join(".nodes.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(tmp, self.cluster().join("nodes.json")).unwrap();
    }

    /// Runs `submit --json` and returns (exit code, receipt JSON or Null, stderr).
    pub fn submit(&self, run: &str, job: &str, step: &str, payload: Value, extra: &[&str]) -> (i32, Value, String) {
        let out = self
            .orch()
            .args(["submit", "--run-id", run, "--job-id", job, "--step-name", step, "--payload-json", &payload.to_string(), "--json"])
            .args(extra)
            .output()
            .unwrap();
        parse_output(&out)
    }

    /// Starts the controller daemon and waits until its API listens.
    pub fn daemon(&self) -> Proc {
        let child = self.orch().arg("daemon").stdout(Stdio::null()).stderr(Stdio::from(log_file(self.dir.path(), "daemon"))).spawn().unwrap();
        let p = Proc { child, name: "daemon".into() };
        let port = self.api_port;
        common::wait_until("the daemon API listens", Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok());
        p
    }

    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap()
}

/// Splits a command's output into exit code, stdout JSON and stderr.
pub fn parse_output(out: &Output) -> (i32, Value, String) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A plain `GET /health` on loopback, true on a 200.
pub fn health_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// Starts a real `rayvault-worker` with its own state dir.
pub fn worker(world: &World, id: &str, secrets: &[(&str, &str)]) -> (Proc, u16) {
    let port = common::free_port();
    let state = world.dir.path().join(format!("worker-{id}"));
    let mut c = clean_command(env!("CARGO_BIN_EXE_rayvault-worker"), world.dir.path());
    c.env("RAYVAULT_WORKER_ID", id).env("RAYVAULT_WORKER_PORT", port.to_string()).env("RAYVAULT_STATE_DIR", &state);
    let default = [("RAYVAULT_CLUSTER_SECRET", SECRET)];
    for (k, v) in if secrets.is_empty() { &default[..] } else { secrets } {
        c.env(k, v);
    }
    let child = c.stdout(Stdio::null()).stderr(Stdio::from(log_file(world.dir.path(), id))).spawn().unwrap();
    let p = Proc { child, name: id.into() };
    common::wait_until(&format!("worker {id} answers /health"), Duration::from_secs(30), || health_ok(port));
    (p, port)
}

/// Starts the legacy v0.5 double (tests/legacy_worker_v05.py).
pub fn legacy(world: &World, id: &str, extra: &[&str]) -> (Proc, u16) {
    let port = common::free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/legacy_worker_v05.py");
    let mut c = clean_command("python3", world.dir.path());
    let root = world.dir.path().join(format!("legacy-{id}"));
    c.arg(script).args(["--port", &port.to_string(), "--worker-id", id]).arg("--root").arg(root).args(extra).env("RAYVAULT_CLUSTER_SECRET", SECRET);
    let child = c.stdout(Stdio::null()).stderr(Stdio::from(log_file(world.dir.path(), id))).spawn().unwrap();
    let p = Proc { child, name: id.into() };
    common::wait_until(&format!("legacy double {id} answers /health"), Duration::from_secs(20), || health_ok(port));
    (p, port)
}

/// A small test video in the world's folder.
pub fn video(world: &World) -> PathBuf {
    common::make_video(world.dir.path(), "clip.mp4", 1.0, 160, 120, 10)
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The reason the receipt's placement gives for one node.
pub fn reason_for(receipt: &Value, node: &str) -> String {
    receipt["placement"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["node_id"] == node))
        .map(|e| e["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_else(|| panic!("no placement entry for {node} in {receipt}"))
}

/// A `submit` running in the background, its stderr collected as it comes.
pub struct Running {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// What the command printed on stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the end; returns an Output with the whole stderr.
    pub fn finish(mut self) -> Output {
        let mut stdout = Vec::new();
        if let Some(mut s) = self.child.stdout.take() {
            s.read_to_end(&mut stdout).unwrap();
        }
        let status = self.child.wait().unwrap();
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        Output { status, stdout, stderr: self.stderr().into_bytes() }
    }
}

/// Starts `submit --json` without waiting for it.
pub fn spawn_submit(w: &World, run: &str, job: &str, step: &str, payload: Value, extra: &[&str]) -> Running {
    let mut child = w
        .orch()
        .args(["submit", "--run-id", run, "--job-id", job, "--step-name", step, "--payload-json", &payload.to_string(), "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (buf, pipe) = (stderr.clone(), child.stderr.take().unwrap());
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut b = buf.lock().unwrap();
            b.push_str(&line);
            b.push('\n');
        }
    });
    Running { child, stderr, reader: Some(reader) }
}
