//! The daemon's web dashboard: its one-time login, sessions and CSRF over
//! raw HTTP, and the page itself driven in Debian's headless Chromium
//! through WebDriver (chromedriver): nodes and jobs, a receipt with its
//! sampled frames and its audio, a remote job's live log, cancel and drain.
//!
//! The browser test needs `chromium` and `chromium-driver`
//! (scripts/install_deps.sh installs them); without them it says so and
//! passes. `RAYVAULT_WRITE_SCREENSHOT=1` makes it write docs/dashboard.png.

mod controller_support;

use controller_support::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

// ---- a small blocking HTTP/1.1 client ----

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection to 127.0.0.1:`port`.
fn http(port: u16, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect to port {port}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    conn.write_all(body).unwrap();
    // Read until the body announced is complete (a server may keep the
    // connection open despite `Connection: close`), or until EOF.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let body = &raw[split + 4..];
            let length = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = head.contains("transfer-encoding: chunked");
            if length.is_some_and(|n| body.len() >= n) || (chunked && body.ends_with(b"0\r\n\r\n")) {
                break;
            }
        }
        match conn.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer to {method} {target} on port {port}: {e}"),
        }
    }
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers: Vec<(String, String)> = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.iter().any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else { return out };
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, d)| acc | (u32::from(*d) << (18 - 6 * i)));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

// ---- WebDriver ----

/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A headless Chromium driven through chromedriver.
struct Browser {
    port: u16,
    session: String,
    _driver: Proc,
    _profile: tempfile::TempDir,
}

/// Where chromedriver is, when Chromium and chromedriver are installed.
fn chromedriver() -> Option<PathBuf> {
    if !Path::new("/usr/bin/chromium").exists() {
        return None;
    }
    std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("chromedriver")).find(|p| p.is_file()))
}

impl Browser {
    fn start(driver: &Path, log_dir: &Path) -> Browser {
        let port = common::free_port();
        let log = std::fs::File::create(log_dir.join("chromedriver.log")).unwrap();
        let child = std::process::Command::new(driver).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let driver = Proc { child, name: "chromedriver".into() };
        common::wait_until("chromedriver is ready", Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok() && http(port, "GET", "/status", &[], b"").json()["value"]["ready"] == true
        });
        let profile = common::tempdir();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,800",
            "--autoplay-policy=no-user-gesture-required",
        ];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:loggingPrefs": {"browser": "ALL"}, "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let resp = http(port, "POST", "/session", &[("Content-Type", "application/json")], caps.to_string().as_bytes());
        let v = resp.json();
        let session = v["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("chromedriver refused a session: {}", resp.text())).to_string();
        let browser = Browser { port, session, _driver: driver, _profile: profile };
        // --window-size counts the window's frame too: make the page itself
        // 1280x800, the size of the screenshot in the docs.
        let rect = browser.cmd("GET", "/window/rect", None);
        let inner = browser.script("return [window.innerWidth, window.innerHeight]", json!([]));
        let (dw, dh) = (1280 - inner[0].as_i64().unwrap(), 800 - inner[1].as_i64().unwrap());
        let (w, h) = (rect["width"].as_i64().unwrap() + dw, rect["height"].as_i64().unwrap() + dh);
        browser.cmd("POST", "/window/rect", Some(json!({"width": w, "height": h})));
        browser
    }

    /// One WebDriver command; its `value`, or Err with the WebDriver error.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let target = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let resp = http(self.port, method, &target, &[("Content-Type", "application/json")], body.as_bytes());
        let v = resp.json();
        if resp.status == 200 {
            Ok(v["value"].clone())
        } else {
            Err(format!("{} {}: {}", v["value"]["error"], v["value"]["message"], resp.status))
        }
    }

    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body).unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    fn url(&self) -> String {
        self.cmd("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    fn find(&self, css: &str) -> Option<String> {
        let v = self.try_cmd("POST", "/element", Some(json!({"using": "css selector", "value": css}))).ok()?;
        v[ELEMENT].as_str().map(str::to_string)
    }

    fn text(&self, element: &str) -> Result<String, String> {
        self.try_cmd("GET", &format!("/element/{element}/text"), None).map(|v| v.as_str().unwrap_or_default().to_string())
    }

    /// The rendered text of the first element matching `css`, if any.
    fn text_of(&self, css: &str) -> Option<String> {
        self.find(css).and_then(|e| self.text(&e).ok())
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Clicks the element matching `css`, finding it again if the page
    /// redrew it in between.
    fn click(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.find(css);
            let clicked = found.as_ref().map(|e| self.try_cmd("POST", &format!("/element/{e}/click"), Some(json!({}))));
            match clicked {
                Some(Ok(_)) => return,
                other => assert!(Instant::now() < deadline, "cannot click {css}: {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the text of `css` satisfies `ok`; returns it.
    fn wait_text(&self, css: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let mut last = None;
        let deadline = Instant::now() + timeout;
        loop {
            last = self.text_of(css).or(last);
            if last.as_deref().is_some_and(&ok) {
                return last.unwrap();
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting on the text of {css}; last seen: {last:?}\npage: {}", self.page_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn page_text(&self) -> String {
        self.text_of("body").unwrap_or_default()
    }

    fn screenshot(&self) -> Vec<u8> {
        base64_decode(self.cmd("GET", "/screenshot", None).as_str().unwrap())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.try_cmd("DELETE", "", None);
    }
}

// ---- the world ----

/// A speech engine for the `command` TTS engine: renders a short tone, or,
/// for a text that contains "slowly", writes a log line every 100 ms for a
/// minute first.
fn engine_script(dir: &Path) -> PathBuf {
    let path = dir.join("engine.py");
    std::fs::write(
        &path,
        "import math, sys, time, wave\n\
         text = open(sys.argv[1], encoding='utf-8').read()\n\
         if 'slowly' in text:\n\
         \x20   for i in range(600):\n\
         \x20       print('speaking slowly, line %d' % i, file=sys.stderr, flush=True)\n\
         \x20       time.sleep(0.1)\n\
         w = wave.open(sys.argv[2], 'wb'); w.setnchannels(1); w.setsampwidth(2); w.setframerate(22050)\n\
         w.writeframes(b''.join(int(8000 * math.sin(i * 0.125)).to_bytes(2, 'little', signed=True) for i in range(22050)))\n\
         w.close()\n",
    )
    .unwrap();
    path
}

/// Asks the daemon for a login link with `dashboard --no-open`.
fn login_url(w: &World) -> String {
    let out = w.orch().args(["dashboard", "--no-open"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("works once"), "{}", String::from_utf8_lossy(&out.stderr));
    let prefix = format!("http://127.0.0.1:{}/login?t=", w.api_port);
    assert!(stdout.starts_with(&prefix) && stdout.len() == prefix.len() + 64, "{stdout}");
    stdout
}

/// Logs in over raw HTTP: (session cookie value, CSRF token from the page).
fn login(w: &World) -> (String, String) {
    let url = login_url(w);
    let target = url.strip_prefix(&format!("http://127.0.0.1:{}", w.api_port)).unwrap();
    let resp = http(w.api_port, "GET", target, &[], b"");
    assert_eq!(resp.status, 303, "{}", resp.text());
    let cookie = resp.header("set-cookie").unwrap().to_string();
    let session = cookie.strip_prefix("rayvault_session=").and_then(|c| c.split(';').next()).unwrap().to_string();
    let page = http(w.api_port, "GET", "/", &[("Cookie", &format!("rayvault_session={session}"))], b"");
    assert_eq!(page.status, 200);
    let text = page.text();
    let csrf = text.split("name=\"csrf-token\" content=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_string();
    (session, csrf)
}

fn receipt(w: &World, run: &str, job: &str) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(w.receipt_dir(run, job).join("job_receipt.json")).ok()?).ok()
}

#[test]
fn the_login_link_works_once_and_every_dashboard_route_needs_its_session() {
    let w = World::new();
    let _daemon = w.daemon();
    let port = w.api_port;

    // Without a session: the page says how to log in; data and files are refused.
    let page = http(port, "GET", "/", &[], b"");
    assert_eq!(page.status, 401);
    assert!(page.text().contains("rayvault-orchestrator dashboard"), "{}", page.text());
    assert_eq!(page.header("content-security-policy").map(|c| c.starts_with("default-src 'self'")), Some(true), "{:?}", page.headers);
    assert!(page.header("content-security-policy").unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("x-frame-options"), Some("DENY"));
    for target in ["/api/state", "/api/jobs/r/j", "/api/jobs/r/j/log?offset=0", "/files/r/j/job_receipt.json"] {
        let resp = http(port, "GET", target, &[], b"");
        assert_eq!((resp.status, resp.json()["code"].clone()), (401, json!("SESSION_REQUIRED")), "{target}");
    }
    for target in ["/api/jobs/r/j/cancel", "/api/nodes/w1/drain", "/logout"] {
        assert_eq!(http(port, "POST", target, &[], b"").status, 401, "{target}");
    }

    // The signed API stays signed, and a dashboard session does not open it.
    let (session, csrf) = login(&w);
    let cookie = format!("rayvault_session={session}");
    for (method, target) in [("GET", "/v1/health"), ("GET", "/v1/status"), ("POST", "/v1/jobs"), ("GET", "/v1/jobs/r/j"), ("POST", "/v1/jobs/r/j/cancel"), ("POST", "/v1/dashboard/login")] {
        for headers in [&[][..], &[("Cookie", cookie.as_str()), ("X-CSRF-Token", csrf.as_str())][..]] {
            let resp = http(port, method, target, headers, b"");
            assert_eq!((resp.status, resp.json()["code"].clone()), (401, json!("AUTH_INVALID")), "{method} {target} {headers:?}");
        }
    }

    // A login link works once.
    let url = login_url(&w);
    let target = url.strip_prefix(&format!("http://127.0.0.1:{port}")).unwrap();
    let first = http(port, "GET", target, &[], b"");
    assert_eq!(first.status, 303);
    assert_eq!(first.header("location"), Some("/"));
    let set_cookie = first.header("set-cookie").unwrap();
    for attribute in ["; Path=/", "; HttpOnly", "; SameSite=Strict"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let value = set_cookie.strip_prefix("rayvault_session=").unwrap().split(';').next().unwrap();
    assert!(value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()), "{set_cookie}");
    let again = http(port, "GET", target, &[], b"");
    assert_eq!(again.status, 401, "a second use of the link is refused");
    assert!(again.header("set-cookie").is_none());
    assert!(again.text().contains("used already or has expired"), "{}", again.text());
    assert_eq!(http(port, "GET", "/login?t=", &[], b"").status, 401);

    // With the session: data; state changes need the CSRF token too.
    let state = http(port, "GET", "/api/state", &[("Cookie", &cookie)], b"");
    assert_eq!(state.status, 200, "{}", state.text());
    assert!(state.json()["jobs"].is_array());
    let with = |token: &str| http(port, "POST", "/api/jobs/r/j/cancel", &[("Cookie", &cookie), ("X-CSRF-Token", token)], b"");
    assert_eq!(http(port, "POST", "/api/jobs/r/j/cancel", &[("Cookie", &cookie)], b"").status, 403, "no CSRF token");
    assert_eq!(with(&"0".repeat(64)).json()["code"], "CSRF_INVALID");
    assert_eq!(with(&csrf[..63]).status, 403);
    let right = with(&csrf);
    assert_eq!((right.status, right.json()["code"].clone()), (409, json!("JOB_CONFLICT")), "the CSRF check passed: {}", right.text());
    // Another site's name resolving to 127.0.0.1 (DNS rebinding) is refused.
    let rebound = http(port, "GET", "/api/state", &[("Cookie", &cookie), ("Host", "evil.example")], b"");
    assert_eq!(rebound.status, 421);
    // Files: plain names only.
    for target in ["/files/r/j/..%2F..%2Fnodes.json", "/files/r/..%2Fj/x", "/files/r/j/.hidden", "/files/%2E%2E/j/x"] {
        let resp = http(port, "GET", target, &[("Cookie", &cookie)], b"");
        assert!(matches!(resp.status, 400 | 404), "{target}: {}", resp.status);
    }

    // Logging out ends the session.
    assert_eq!(http(port, "POST", "/logout", &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)], b"").status, 200);
    assert_eq!(http(port, "GET", "/api/state", &[("Cookie", &cookie)], b"").status, 401);
}

/// `dashboard` needs the daemon and the secret; it opens its link with
/// xdg-open in a graphical session (here a stand-in that records what it was
/// given), without the cluster secret in its environment; without a display
/// it only prints the link.
#[cfg(target_os = "linux")]
#[test]
fn the_dashboard_command_opens_its_link_with_xdg_open_and_no_secret() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    // Without a daemon, or without the secret, it says what to do.
    let out = w.orch().args(["dashboard", "--no-open"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("start it with `rayvault-orchestrator daemon`"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = World::bare().orch().args(["dashboard", "--no-open"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("set RAYVAULT_CLUSTER_SECRET"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stdout.is_empty());
    let _daemon = w.daemon();
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let record = w.dir.path().join("xdg-open.txt");
    let script = bin.join("xdg-open");
    std::fs::write(&script, format!("#!/bin/sh\n{{ echo \"$1\"; env; }} > {}.tmp && mv {0}.tmp {0}\n", record.display())).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());

    let out = w.orch().arg("dashboard").env("PATH", &path).env_remove("DISPLAY").env_remove("WAYLAND_DISPLAY").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!record.exists(), "no display: no browser is opened");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("Opened"), "{}", String::from_utf8_lossy(&out.stderr));

    let out = w.orch().arg("dashboard").env("PATH", &path).env("DISPLAY", ":99").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Opened it in your browser"), "{}", String::from_utf8_lossy(&out.stderr));
    let recorded = std::fs::read_to_string(&record).unwrap();
    let url = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(recorded.lines().next(), Some(url.as_str()));
    assert!(recorded.contains("DISPLAY=:99"), "{recorded}");
    assert!(!recorded.contains("RAYVAULT_CLUSTER_SECRET") && !recorded.contains(SECRET), "the secret stays out of the browser's environment: {recorded}");
}

#[test]
fn the_dashboard_in_headless_chromium() {
    let Some(driver) = chromedriver() else {
        eprintln!("skipped: the dashboard's browser test needs /usr/bin/chromium and chromedriver (apt-get install chromium chromium-driver, see scripts/install_deps.sh)");
        return;
    };
    let started = Instant::now();
    let w = World::new();
    let engine = engine_script(w.dir.path());
    let template = format!("python3 {} {{text_file}} {{out_wav}}", engine.display());
    let (_w1, p1) = worker(&w, "w1", &[("RAYVAULT_CLUSTER_SECRET", SECRET), ("RAYVAULT_TTS__ENGINE", "command"), ("RAYVAULT_TTS__COMMAND_TEMPLATE", &template)]);
    w.write_nodes(&[("w1", p1, true)]);
    let _daemon = w.daemon();
    let port = w.api_port;
    let clip = video(&w);

    let (code, r, err) = w.submit("dash", "frames", "FRAME_SAMPLING", json!({"media_path": clip, "count": 3}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    let (code, r, err) = w.submit("dash", "speech", "TTS_RENDER_CHUNKS", json!({"text": "Hello there."}), &[]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    let (code, _, err) = w.submit("dash", "slow", "TTS_RENDER_CHUNKS", json!({"text": "Said slowly."}), &["--no-wait"]);
    assert_eq!(code, 0, "{err}");

    let browser = Browser::start(&driver, w.dir.path());
    let base = format!("http://127.0.0.1:{port}");

    // Not logged in: the page says how.
    browser.goto(&format!("{base}/"));
    assert!(browser.page_text().contains("rayvault-orchestrator dashboard"), "{}", browser.page_text());

    // The login link opens a session and leaves the address bar.
    let url = login_url(&w);
    browser.goto(&url);
    assert_eq!(browser.url(), format!("{base}/"), "redirected to the page, without the token");
    browser.wait_text("#daemon", Duration::from_secs(10), |t| t.starts_with("daemon pid"));
    let cookies = browser.cmd("GET", "/cookie", None);
    let session = cookies.as_array().unwrap().iter().find(|c| c["name"] == "rayvault_session").unwrap_or_else(|| panic!("no session cookie: {cookies}"));
    assert_eq!(session["httpOnly"], true, "{session}");
    assert_eq!(session["sameSite"], "Strict", "{session}");
    assert_eq!(browser.script("return document.cookie", json!([])), "", "the page's script cannot read the session");

    // The same link a second time: refused, in the browser too.
    browser.goto(&url);
    assert!(browser.page_text().contains("used already or has expired"), "{}", browser.page_text());
    browser.goto(&format!("{base}/"));

    // Nodes with their status, caps and load; jobs with their states.
    browser.wait_text("tr[data-node='w1'] td.status", Duration::from_secs(15), |t| t.starts_with("up"));
    let w1_row = browser.wait_text("tr[data-node='w1']", Duration::from_secs(5), |t| t.contains("linux"));
    assert!(w1_row.contains("FRAME_SAMPLING") && w1_row.contains("TTS_RENDER_CHUNKS"), "{w1_row}");
    browser.wait_text("tr[data-node='w1'] td.load", Duration::from_secs(20), |t| t == "1");
    browser.wait_text("tr[data-job='dash/frames'] td.state-cell", Duration::from_secs(5), |t| t.starts_with("succeeded"));
    browser.wait_text("tr[data-job='dash/speech'] td.state-cell", Duration::from_secs(5), |t| t.starts_with("succeeded"));
    browser.wait_text("tr[data-job='dash/slow'] td.state-cell", Duration::from_secs(5), |t| t.starts_with("running"));
    assert!(browser.text_of("tr[data-job='dash/frames']").unwrap().contains("w1"));

    // The frames job's receipt: where it ran and why, attempts, and its
    // frames as pictures the browser decoded.
    browser.click("tr[data-job='dash/frames'] a");
    browser.wait_text("#job-title", Duration::from_secs(5), |t| t == "dash/frames");
    browser.wait_text("#job-facts", Duration::from_secs(5), |t| t.contains("executed on") && t.contains("w1"));
    browser.wait_text("#placement tbody", Duration::from_secs(5), |t| t.contains("w1") && t.contains("yes"));
    browser.wait_text("#attempts tbody", Duration::from_secs(5), |t| t.contains("w1") && t.contains("succeeded"));
    browser.wait_text("#timings", Duration::from_secs(5), |t| t.contains("total"));
    let frames_loaded = "const imgs = [...document.querySelectorAll('#artifacts img')];\
                         return imgs.length === 3 && imgs.every((i) => i.complete && i.naturalWidth > 0) ? imgs.map((i) => i.naturalWidth) : null;";
    let deadline = Instant::now() + Duration::from_secs(15);
    let widths = loop {
        let v = browser.script(frames_loaded, json!([]));
        if !v.is_null() {
            break v;
        }
        assert!(Instant::now() < deadline, "the frames did not load: {}", browser.script("return document.getElementById('artifacts').innerHTML", json!([])));
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(widths, json!([160, 160, 160]), "the sampled frames are 160 pixels wide, as the clip");
    if std::env::var("RAYVAULT_WRITE_SCREENSHOT").as_deref() == Ok("1") {
        let png = browser.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/dashboard.png"), png).unwrap();
    }

    // The speech job's audio plays in the page.
    browser.click("tr[data-job='dash/speech'] a");
    browser.wait_text("#job-title", Duration::from_secs(5), |t| t == "dash/speech");
    let audio_ready = "const a = document.querySelector('#artifacts audio'); return a && a.readyState >= 1 ? a.duration : null;";
    let deadline = Instant::now() + Duration::from_secs(15);
    while browser.script(audio_ready, json!([])).as_f64().is_none_or(|d| d <= 0.0) {
        assert!(Instant::now() < deadline, "the audio did not load: {}", browser.script("return document.getElementById('artifacts').innerHTML", json!([])));
        std::thread::sleep(Duration::from_millis(100));
    }

    // The slow job's log, live from its worker through the daemon; then
    // cancel it from the page.
    browser.click("tr[data-job='dash/slow'] a");
    browser.wait_text("#job-title", Duration::from_secs(5), |t| t == "dash/slow");
    browser.wait_text("#log", Duration::from_secs(20), |t| t.contains("speaking slowly, line 2"));
    browser.wait_text("#log-source", Duration::from_secs(5), |t| t.contains("live, from w1"));
    browser.wait_text("#placement tbody", Duration::from_secs(5), |t| t.contains("w1"));
    browser.click("#cancel");
    browser.wait_text("#job-state", Duration::from_secs(20), |t| t == "cancelled");
    let r = receipt(&w, "dash", "slow").expect("the cancelled job's receipt");
    assert_eq!(r["status"], "cancelled", "{r}");
    assert_eq!(r["executed_on"], "w1", "{r}");
    browser.wait_text("#attempts tbody", Duration::from_secs(5), |t| t.contains("cancelled"));
    browser.wait_text("tr[data-node='w1'] td.load", Duration::from_secs(5), |t| t == "0");

    // Drain w1 from the page: nodes.json says so, and the daemon, which
    // re-reads it, shows w1 drained (none of its jobs is left there); the
    // button goes away.
    browser.click("button.drain[data-node='w1']");
    browser.wait_text("#message", Duration::from_secs(10), |t| t.contains("w1 is draining"));
    let nodes: Value = serde_json::from_slice(&std::fs::read(w.cluster().join("nodes.json")).unwrap()).unwrap();
    assert_eq!(nodes["nodes"][0]["drain"], true, "{nodes}");
    browser.wait_text("tr[data-node='w1'] td.status", Duration::from_secs(15), |t| t.starts_with("drained"));
    assert!(browser.find("button.drain[data-node='w1']").is_none(), "no drain button on a drained node");

    // A request without the page's CSRF token is refused even with the
    // browser's session cookie.
    let cookie = format!("rayvault_session={}", session["value"].as_str().unwrap());
    let resp = http(port, "POST", "/api/nodes/w1/drain", &[("Cookie", &cookie)], b"");
    assert_eq!(resp.status, 403, "{}", resp.text());

    // The files as served: the bytes of the receipt folder, their type,
    // whole or a byte range (players seek with ranges).
    let frame = std::fs::read(w.receipt_dir("dash", "frames").join("frame_0001.jpg")).unwrap();
    let whole = http(port, "GET", "/files/dash/frames/frame_0001.jpg", &[("Cookie", &cookie)], b"");
    assert_eq!((whole.status, whole.header("content-type"), whole.header("content-disposition")), (200, Some("image/jpeg"), Some("inline")));
    assert_eq!(whole.body, frame);
    let part = http(port, "GET", "/files/dash/frames/frame_0001.jpg", &[("Cookie", &cookie), ("Range", "bytes=10-19")], b"");
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some(format!("bytes 10-19/{}", frame.len()).as_str()));
    assert_eq!(part.body, frame[10..20]);
    let beyond = http(port, "GET", "/files/dash/frames/frame_0001.jpg", &[("Cookie", &cookie), ("Range", &format!("bytes={}-", frame.len()))], b"");
    assert_eq!(beyond.status, 416);
    let receipt_file = http(port, "GET", "/files/dash/frames/job_receipt.json", &[("Cookie", &cookie)], b"");
    assert_eq!(receipt_file.header("content-disposition"), Some("attachment; filename=\"job_receipt.json\""));
    assert_eq!(receipt_file.json()["status"], "succeeded");
    let missing = http(port, "GET", "/files/dash/frames/frame_0009.jpg", &[("Cookie", &cookie)], b"");
    assert_eq!((missing.status, missing.json()["code"].clone()), (404, json!("FILE_NOT_FOUND")));
    // The page ran without a script error, a failed request or a breach of
    // its own Content-Security-Policy: the only errors in the console are
    // the two expected 401s (the page before logging in, the used link).
    let console = browser.cmd("POST", "/se/log", Some(json!({"type": "browser"})));
    let expected = |m: &str| m.contains("status of 401") && (m.starts_with(&format!("{base}/ ")) || m.starts_with(&format!("{base}/login?t=")));
    for entry in console.as_array().unwrap() {
        let message = entry["message"].as_str().unwrap_or_default();
        assert!(entry["level"] != "SEVERE" || expected(message), "{entry}");
        assert!(!message.contains("Content Security Policy"), "{entry}");
    }
    eprintln!("the browser test took {:?}; the console held {} messages", started.elapsed(), console.as_array().unwrap().len());
}
