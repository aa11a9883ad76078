//! Runs the real `rayvault-worker` binary for the worker integration tests:
//! a temp state folder, a free loopback port, a generated secret, a scrubbed
//! environment, stderr captured to a file; plus raw HTTP over a TcpStream
//! for requests no well-behaved client would send.
#![allow(dead_code)]

use rayvault::auth::{Keyring, RequestTarget};
use rayvault::client::WorkerClient;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common;

/// How to start a worker.
#[derive(Clone, Debug)]
pub struct Opts {
    pub secret: String,
    pub previous: Option<String>,
    pub worker_id: String,
    /// Extra environment variables (e.g. `RAYVAULT_WORKER__SKEW_S`).
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Reuse this state folder (restart tests); a fresh one otherwise.
    pub state_dir: Option<PathBuf>,
    pub port: Option<u16>,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            secret: format!("test-secret-{}", uuid_like()),
            previous: None,
            worker_id: "worker-test".into(),
            env: Vec::new(),
            args: Vec::new(),
            state_dir: None,
            port: None,
        }
    }
}

fn uuid_like() -> String {
    rayvault::auth::fresh_nonce()
}

/// A running worker process.
pub struct Worker {
    pub child: Child,
    pub port: u16,
    pub opts: Opts,
    pub state_dir: PathBuf,
    pub stderr_path: PathBuf,
    /// Keeps a fresh state folder alive for the worker's life.
    _temp: Option<tempfile::TempDir>,
}

/// The environment every worker starts with: nothing inherited but PATH,
/// so no developer setting leaks into a test.
pub fn base_command(state_dir: &Path, port: u16, opts: &Opts) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rayvault-worker"));
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RAYVAULT_STATE_DIR", state_dir)
        .env("RAYVAULT_WORKER_PORT", port.to_string())
        .env("RAYVAULT_WORKER_HOST", "127.0.0.1")
        .env("RAYVAULT_WORKER_ID", &opts.worker_id)
        .env("RUST_LOG", "info")
        // OPENCLAW_TASK needs a desktop session; the tests use it with a
        // plain command (`cat`, `sleep`) as a deterministic step.
        .env("DISPLAY", ":99")
        .env("RAYVAULT_OPENCLAW__COMMAND", "cat")
        .current_dir(state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if !opts.secret.is_empty() {
        cmd.env("RAYVAULT_CLUSTER_SECRET", &opts.secret);
    }
    if let Some(p) = &opts.previous {
        cmd.env("RAYVAULT_CLUSTER_SECRET_PREVIOUS", p);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd.args(&opts.args);
    cmd
}

impl Worker {
    /// Starts a worker and waits until `/health` answers. A free port can
    /// be taken by a parallel test between `free_port` and the bind; then
    /// it tries again on another one.
    pub fn start(opts: Opts) -> Worker {
        for _ in 0..2 {
            match Worker::try_start(opts.clone()) {
                Ok(w) => return w,
                Err(stderr) if opts.port.is_none() && stderr.contains("cannot listen on") => continue,
                Err(stderr) => panic!("worker exited early: {stderr}"),
            }
        }
        Worker::try_start(opts).unwrap_or_else(|stderr| panic!("worker exited early: {stderr}"))
    }

    /// Starts a worker; `Err` with its stderr if it exits before it is healthy.
    fn try_start(opts: Opts) -> Result<Worker, String> {
        let (temp, state_dir) = match &opts.state_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = common::tempdir();
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let port = opts.port.unwrap_or_else(common::free_port);
        let stderr_path = state_dir.join(format!("worker-stderr-{}.log", uuid_like()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = base_command(&state_dir, port, &opts).stderr(stderr).spawn().expect("spawn rayvault-worker");
        let mut w = Worker { child, port, opts, state_dir, stderr_path, _temp: temp };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = w.child.try_wait() {
                return Err(format!("{status}: {}", w.stderr()));
            }
            if let Ok(r) = w.try_raw(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "worker did not become healthy: {}", w.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn keyring(&self) -> Keyring {
        Keyring::from_secrets(&self.opts.secret, None).unwrap()
    }

    /// A signed client (must be used inside an actix system).
    pub fn client(&self) -> WorkerClient {
        WorkerClient::new(&self.base_url(), &self.opts.worker_id, Arc::new(self.keyring()))
    }

    /// Everything the worker wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// An `Authorization` value signed with `ring` for this worker.
    pub fn sign_with(&self, ring: &Keyring, method: &str, path: &str, query: &str, body: &[u8]) -> String {
        let sha = rayvault::protocol::sha256_hex(body);
        ring.authorization(&RequestTarget { method, path, query, worker_id: &self.opts.worker_id, body_sha256: &sha })
    }

    pub fn sign(&self, method: &str, path: &str, query: &str, body: &[u8]) -> String {
        self.sign_with(&self.keyring(), method, path, query, body)
    }

    /// Sends raw bytes and reads the answer (the request must say
    /// `Connection: close`).
    pub fn try_raw(&self, request: &[u8]) -> std::io::Result<RawHttp> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        // The server may answer and close early (e.g. refusing a large body)
        // while we are still writing; whatever it answered is in the read.
        let _ = s.write_all(request);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        parse_response(&buf).ok_or_else(|| std::io::Error::other(format!("unparseable answer: {:?}", String::from_utf8_lossy(&buf))))
    }

    pub fn raw(&self, request: &[u8]) -> RawHttp {
        self.try_raw(request).unwrap_or_else(|e| panic!("raw request failed: {e}"))
    }

    /// A request built from parts, with `Connection: close` and the body's
    /// Content-Length added.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, String)], body: &[u8]) -> RawHttp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw(&bytes)
    }

    /// A correctly signed request.
    pub fn signed(&self, method: &str, target: &str, body: &[u8]) -> RawHttp {
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let auth = self.sign(method, path, query, body);
        self.request(method, target, &[("Authorization", auth)], body)
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("wait after kill");
    }

    /// SIGTERM, then wait (up to `timeout`) for exit; returns the status.
    #[cfg(unix)]
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: sending a signal to our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "worker did not stop after SIGTERM: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident memory of the worker process in KiB (Linux).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP answer.
#[derive(Debug, Clone)]
pub struct RawHttp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawHttp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn parse_response(buf: &[u8]) -> Option<RawHttp> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body)?;
    }
    Some(RawHttp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..line_end]).ok()?.trim(), 16).ok()?;
        b = &b[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Polls an async condition until it holds or `timeout` passes.
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
