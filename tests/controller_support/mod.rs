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
    // A daemon writes its log file under the state home: the test's own.
    c.env("XDG_STATE_HOME", cwd.join(".state-home"));
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

/// The ledger step of the fault tests (scripts/faults/world.py has the same
/// one): the `command` TTS engine runs it; it appends `START <text> <node>
/// <pid> <epoch-seconds>` to `$FAULT_LEDGER`, sleeps `$FAULT_STEP_S`, copies
/// `$FAULT_WAV` to the engine's output and appends `END ...`. Returns the
/// environment (without FAULT_NODE and FAULT_STEP_S, which differ per
/// process) that makes a worker or controller use it.
pub fn ledger_step_env(world: &World) -> Vec<(String, String)> {
    let dir = world.dir.path();
    let script = dir.join("step.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ntext=$(cat \"$1\")\n\
         printf 'START %s %s %s %s\\n' \"$text\" \"$FAULT_NODE\" \"$$\" \"$(date +%s.%N)\" >> \"$FAULT_LEDGER\"\n\
         sleep \"$FAULT_STEP_S\"\ncp \"$FAULT_WAV\" \"$2\"\n\
         printf 'END %s %s %s %s\\n' \"$text\" \"$FAULT_NODE\" \"$$\" \"$(date +%s.%N)\" >> \"$FAULT_LEDGER\"\n",
    )
    .unwrap();
    let wav = common::make_sine_wav(dir, "tone.wav", 0.2, 22050, 1, -20.0);
    vec![
        ("RAYVAULT_TTS__ENGINE".into(), "command".into()),
        ("RAYVAULT_TTS__COMMAND_TEMPLATE".into(), format!("sh {} {{text_file}} {{out_wav}}", script.display())),
        ("FAULT_LEDGER".into(), dir.join("ledger").display().to_string()),
        ("FAULT_WAV".into(), wav.display().to_string()),
    ]
}

/// One line of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerLine {
    pub kind: String,
    pub text: String,
    pub node: String,
    pub pid: i32,
    /// Seconds since the epoch.
    pub at: f64,
}

pub fn ledger(world: &World) -> Vec<LedgerLine> {
    let text = std::fs::read_to_string(world.dir.path().join("ledger")).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.split_whitespace().collect();
            if p.len() != 5 {
                return None;
            }
            Some(LedgerLine { kind: p[0].into(), text: p[1].into(), node: p[2].into(), pid: p[3].parse().ok()?, at: p[4].parse().ok()? })
        })
        .collect()
}

/// True while a process exists and has not exited (a zombie has).
pub fn pid_alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// Seconds since the epoch, now.
pub fn epoch_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Seconds since the epoch of a receipt's RFC 3339 stamp.
/// Receipts write UTC with a `Z` (`2026-01-02T03:04:05.678Z`).
pub fn stamp_s(stamp: &str) -> f64 {
    let bad = || -> ! { panic!("not an RFC 3339 UTC stamp: {stamp:?}") };
    let num = |x: &str| -> i64 { x.parse().unwrap_or_else(|_| bad()) };
    let s = stamp.strip_suffix('Z').unwrap_or_else(|| bad());
    let (date, time) = s.split_once('T').unwrap_or_else(|| bad());
    let d: Vec<i64> = date.split('-').map(num).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(num).collect();
    if d.len() != 3 || t.len() != 3 {
        bad();
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719468;
    (days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + format!("0.{frac}").parse::<f64>().unwrap_or_else(|_| bad())
}

/// Starts a real `rayvault-worker` bound to `host` with extra environment,
/// inside the network namespace `netns` if given, its state in `state`.
pub fn worker_at(world: &World, id: &str, host: &str, netns: Option<&str>, state: &Path, env: &[(String, String)]) -> (Proc, u16) {
    let port = common::free_port();
    let mut c = match netns {
        Some(ns) => {
            let mut c = clean_command("ip", world.dir.path());
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_rayvault-worker")]);
            c
        }
        None => clean_command(env!("CARGO_BIN_EXE_rayvault-worker"), world.dir.path()),
    };
    c.args(["--host", host, "--port", &port.to_string()])
        .env("RAYVAULT_WORKER_ID", id)
        .env("RAYVAULT_STATE_DIR", state)
        .env("RAYVAULT_CLUSTER_SECRET", SECRET)
        .env("FAULT_NODE", id);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.stdout(Stdio::null()).stderr(Stdio::from(log_file(world.dir.path(), id))).spawn().unwrap();
    let p = Proc { child, name: id.into() };
    common::wait_until(&format!("worker {id} answers /health on {host}"), Duration::from_secs(30), || health_at(host, port).is_some());
    (p, port)
}

/// `GET /health` on any address: the JSON body of a 200, None otherwise.
pub fn health_at(host: &str, port: u16) -> Option<Value> {
    let (status, body) = http_get_at(host, port, "/health", None).ok()?;
    (status == 200).then_some(body)
}

/// A GET signed for worker `worker_id` with the test secret.
pub fn signed_get_at(host: &str, port: u16, worker_id: &str, path: &str) -> std::io::Result<(u16, Value)> {
    let ring = rayvault::auth::Keyring::from_secrets(SECRET, None).unwrap();
    let sha = rayvault::protocol::sha256_hex(b"");
    let auth = ring.authorization(&rayvault::auth::RequestTarget { method: "GET", path, query: "", worker_id, body_sha256: &sha });
    http_get_at(host, port, path, Some(&auth))
}

fn http_get_at(host: &str, port: u16, path: &str, auth: Option<&str>) -> std::io::Result<(u16, Value)> {
    let addr: std::net::SocketAddr = format!("{host}:{port}").parse().map_err(std::io::Error::other)?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").as_bytes())?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {buf:?}")))?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, serde_json::from_str(body.trim()).unwrap_or(Value::Null)))
}

/// Runs a command as root might (`ip`, `mount`); Err with its stderr.
pub fn sys(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Opens the store of a daemon just killed with SIGKILL. The dead daemon's
/// lock on the file can outlive it for a moment (the worker's store was seen
/// locked right after a kill -9 under load), so this tries again for up to
/// 5 s instead of failing on the first try.
pub fn open_after_kill(path: &Path) -> rayvault::controller_store::ControllerStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match rayvault::controller_store::ControllerStore::open(path) {
            Ok(store) => return store,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("the killed daemon's store is still locked, trying again: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open {} after the daemon died: {e}", path.display()),
        }
    }
}
