//! The Windows worker, cross-built with mingw-w64, running under Wine and
//! driven over loopback HTTP by the signed client: health, caps reporting
//! `"os": "windows"`, an AUDIO_POSTCHECK job on an uploaded WAV, artifact
//! downloads with matching SHA-256, and a 401 for a bad signature. First,
//! the service step: `rayvault-worker.exe service print --platform windows`
//! prints a Task Scheduler XML that parses and names the .exe; `service
//! install` writes a DPAPI-protected environment file and registers the
//! task with Wine's schtasks; the worker started as the task starts it
//! (`--env-file`, `--log-file`) decrypts the secret, answers signed
//! requests and logs to its file; `service uninstall` removes the files.
//!
//! Run it with `scripts/wine_smoke.sh`, which builds the .exe, stages the
//! test-only ProcessPrng shim beside it and prepares a private WINEPREFIX.
//! It only builds with `--features wine-smoke`, and then it never skips:
//! a missing .exe or Wine is a failure that says what to do.

mod common;

use rayvault::artifacts::sha256_file;
use rayvault::auth::Keyring;
use rayvault::client::{ClientError, WorkerClient};
use rayvault::protocol::{JobState, SubmitJob, BLOB_REF_PREFIX};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Wine's first start in a prefix can take 10-30 s; later ones about 2 s.
const HEALTH_DEADLINE: Duration = Duration::from_secs(120);
/// The worker fills `/caps` from a background probe shortly after start.
const CAPS_DEADLINE: Duration = Duration::from_secs(60);
const JOB_DEADLINE: Duration = Duration::from_secs(180);

const WORKER_ID: &str = "wine-worker";

/// The .exe named by `RAYVAULT_WINE_EXE`; a failure, not a skip, if absent.
fn worker_exe() -> PathBuf {
    let exe = std::env::var_os("RAYVAULT_WINE_EXE").map(PathBuf::from).unwrap_or_else(|| {
        panic!("RAYVAULT_WINE_EXE is not set; run scripts/wine_smoke.sh, which builds the .exe and sets it")
    });
    assert!(exe.is_file(), "RAYVAULT_WINE_EXE={} does not exist; run scripts/wine_smoke.sh", exe.display());
    exe
}

/// `$WINE`, else Debian's 64-bit loader, else `wine` on PATH.
fn wine_loader() -> PathBuf {
    if let Some(w) = std::env::var_os("WINE").filter(|w| !w.is_empty()) {
        return PathBuf::from(w);
    }
    let debian = Path::new("/usr/lib/wine/wine64");
    if debian.is_file() {
        return debian.to_path_buf();
    }
    on_path("wine").unwrap_or_else(|| panic!("wine is not installed; install Debian's wine (apt-get install wine)"))
}

fn wineserver() -> PathBuf {
    on_path("wineserver")
        .or_else(|| Some(PathBuf::from("/usr/lib/wine/wineserver")).filter(|p| p.is_file()))
        .unwrap_or_else(|| panic!("wineserver not found; install Debian's wine"))
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// The private prefix: `$WINEPREFIX` if the script set one, else one under
/// target/ so the developer's own ~/.wine is never touched.
fn wine_prefix() -> PathBuf {
    std::env::var_os("WINEPREFIX")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wine-smoke/prefix"))
}

/// A Unix path as the Windows process sees it through Wine's `Z:` drive.
fn windows_path(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// The worker process under Wine; dropping it kills the process and every
/// Wine process of the private prefix.
struct WineWorker {
    child: Child,
    port: u16,
    secret: String,
    prefix: PathBuf,
    stderr_path: PathBuf,
}

impl WineWorker {
    fn start(state: &Path) -> WineWorker {
        let exe = worker_exe();
        let prefix = wine_prefix();
        let port = common::free_port();
        let secret = format!("wine-smoke-{}", rayvault::auth::fresh_nonce());
        let stderr_path = state.join("worker-stderr.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let child = Command::new(wine_loader())
            .arg(&exe)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| state.as_os_str().to_os_string()))
            .env("WINEPREFIX", &prefix)
            .env("WINEDEBUG", "-all")
            .env("RUST_LOG", "info")
            .env("RAYVAULT_STATE_DIR", windows_path(state))
            .env("RAYVAULT_WORKER_ID", WORKER_ID)
            .env("RAYVAULT_CLUSTER_SECRET", &secret)
            // A stand-in OpenClaw that every Wine prefix has: find.exe copies
            // the stdin lines containing "smoke" to stdout and exits 1 when
            // there are none.
            .env("RAYVAULT_OPENCLAW__COMMAND", r"C:\windows\system32\find.exe smoke")
            .current_dir(state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("starting wine");
        WineWorker { child, port, secret, prefix, stderr_path }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits for `/health` to answer 200, failing early if Wine exits.
    fn wait_healthy(&mut self) -> Duration {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the worker under wine exited with {status} before answering /health:\n{}", self.stderr());
            }
            if health_status(self.port) == Some(200) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < HEALTH_DEADLINE,
                "no /health answer within {HEALTH_DEADLINE:?}:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn client(&self, secret: &str) -> WorkerClient {
        let ring = Keyring::from_secrets(secret, None).unwrap();
        WorkerClient::new(&format!("http://127.0.0.1:{}", self.port), WORKER_ID, Arc::new(ring))
    }
}

impl Drop for WineWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The loader's exit does not end wineserver or helper processes.
        let _ = Command::new(wineserver()).arg("-k").env("WINEPREFIX", &self.prefix).status();
    }
}

/// The status code of a plain `GET /health`, or `None` if nothing answers.
fn health_status(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

#[test]
fn windows_worker_under_wine() {
    let total = Instant::now();
    let dir = common::tempdir();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let wav = common::make_sine_wav(dir.path(), "tone.wav", 2.0, 48_000, 1, -20.0);

    service_print(&state);
    let service_state = dir.path().join("service-state");
    std::fs::create_dir_all(&service_state).unwrap();
    service_install_and_start(&service_state);

    let mut worker = WineWorker::start(&state);
    let to_health = worker.wait_healthy();
    eprintln!("wine smoke: /health answered {to_health:?} after start");

    let downloads = dir.path().join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    let phases = actix_rt::System::new().block_on(drive(&worker, &wav, &downloads));
    drop(worker);
    eprintln!("wine smoke: {phases}; total {:?}", total.elapsed());
}

/// `service print --platform windows` run by the real .exe: the Task
/// Scheduler XML parses (Python's xml.etree, from UTF-16 as `schtasks`
/// reads it), runs this .exe in the user's session with `--env-file` and
/// `--log-file` under `%LOCALAPPDATA%`, and never shows the secret.
fn service_print(state: &Path) {
    let started = Instant::now();
    let secret = format!("wine-print-{}", rayvault::auth::fresh_nonce());
    let out = Command::new(wine_loader())
        .arg(worker_exe())
        .args(["service", "print", "--platform", "windows", "--port", "8787", "--state-dir"])
        .arg(windows_path(state))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| state.as_os_str().to_os_string()))
        .env("WINEPREFIX", wine_prefix())
        .env("WINEDEBUG", "-all")
        .env("RAYVAULT_CLUSTER_SECRET", &secret)
        .current_dir(state)
        .stdin(Stdio::null())
        .output()
        .expect("starting wine");
    let (xml, notes) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "service print under wine: {:?}\n{notes}", out.status);
    assert!(!xml.contains(&secret) && !notes.contains(&secret), "print showed the secret:\n{xml}\n{notes}");
    let script = r#"
import sys, json, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.read().encode("utf-16"))
ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
f = lambda p: root.findtext(p, namespaces=ns)
print(json.dumps([f("t:Actions/t:Exec/t:Command"), f("t:Actions/t:Exec/t:Arguments"),
                  f("t:Actions/t:Exec/t:WorkingDirectory"), f("t:Principals/t:Principal/t:LogonType")]))
"#;
    let mut python = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 parses the task XML");
    python.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let parsed = python.wait_with_output().unwrap();
    assert!(parsed.status.success(), "the task XML does not parse:\n{xml}");
    let fields: Vec<String> = serde_json::from_slice(&parsed.stdout).unwrap();
    assert!(fields[0].to_ascii_lowercase().ends_with(r"\rayvault-worker.exe"), "{fields:?}");
    assert!(fields[0].contains(':'), "a Windows path to the .exe: {fields:?}");
    let args = &fields[1];
    assert!(args.contains(r"\RayVault\logs\rayvault-worker.log") && args.contains("--env-file"), "{args}");
    assert!(args.ends_with("--port 8787"), "{args}");
    assert_eq!(fields[2], windows_path(state));
    assert_eq!(fields[3], "InteractiveToken");
    eprintln!("wine smoke: service print --platform windows took {:?}: {}", started.elapsed(), fields[0]);
}

/// A path `C:\...` of the private prefix as a Unix path.
fn prefix_path(windows: &str) -> PathBuf {
    let rest = windows.strip_prefix(r"C:\").unwrap_or_else(|| panic!("not a C: path: {windows}"));
    wine_prefix().join("drive_c").join(rest.replace('\\', "/"))
}

/// The Windows service path for real under Wine: `service install` (the
/// DPAPI file and `schtasks /Create /XML`), the worker started with the
/// task's `--env-file`/`--log-file` flags, and `service uninstall`.
fn service_install_and_start(state: &Path) {
    let started = Instant::now();
    let secret = format!("wine-install-{}", rayvault::auth::fresh_nonce());
    let port = common::free_port();
    let service = |verb: &str| {
        let out = Command::new(wine_loader())
            .arg(worker_exe())
            .args(["service", verb, "--port", &port.to_string(), "--state-dir"])
            .arg(windows_path(state))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| state.as_os_str().to_os_string()))
            .env("WINEPREFIX", wine_prefix())
            .env("WINEDEBUG", "-all")
            .env("RAYVAULT_CLUSTER_SECRET", &secret)
            .env("RAYVAULT_WORKER_ID", WORKER_ID)
            .current_dir(state)
            .stdin(Stdio::null())
            .output()
            .expect("starting wine");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "service {verb} under wine: {:?}\n{text}", out.status);
        assert!(!text.contains(&secret), "service {verb} printed the secret:\n{text}");
        text
    };
    let said = service("install");
    assert!(said.contains(r"registered the scheduled task RayVault\Worker"), "{said}");
    let wrote = |suffix: &str| {
        said.lines()
            .filter_map(|l| l.strip_prefix("wrote "))
            .map(|l| l.split(" (").next().unwrap_or(l).to_string())
            .find(|p| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("install did not report writing *{suffix}:\n{said}"))
    };
    let env_file = wrote("worker.env");
    let bytes = std::fs::read(prefix_path(&env_file)).unwrap();
    assert!(bytes.starts_with(rayvault::service::DPAPI_MAGIC), "the environment file is DPAPI-protected");
    assert!(!String::from_utf8_lossy(&bytes).contains(&secret), "the secret is not in the clear");
    let xml = std::fs::read(prefix_path(&wrote("worker-task.xml"))).unwrap();
    assert_eq!(&xml[..2], &[0xFF, 0xFE], "the task XML is UTF-16 with a byte order mark, as schtasks reads it");

    // The task's command line, started by hand (Wine's scheduler does not
    // run tasks): the secret comes from the DPAPI file only.
    let log_file = format!(r"{}\logs\rayvault-worker.log", env_file.rsplit_once('\\').unwrap().0);
    let stderr_path = state.join("service-worker-stderr.log");
    let mut child = Command::new(wine_loader())
        .arg(worker_exe())
        .args(["--env-file", &env_file, "--log-file", &log_file, "--detach-console", "--port", &port.to_string()])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_else(|| state.as_os_str().to_os_string()))
        .env("WINEPREFIX", wine_prefix())
        .env("WINEDEBUG", "-all")
        .current_dir(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("starting wine");
    let up = Instant::now();
    while health_status(port) != Some(200) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the worker started from the task's flags exited with {status}: {}", std::fs::read_to_string(&stderr_path).unwrap_or_default());
        }
        assert!(up.elapsed() < HEALTH_DEADLINE, "no /health from the worker started from the task's flags");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ring = Keyring::from_secrets(&secret, None).unwrap();
    let client = WorkerClient::new(&format!("http://127.0.0.1:{port}"), WORKER_ID, Arc::new(ring));
    actix_rt::System::new().block_on(async { client.caps().await.expect("a request signed with the installed secret") });
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new(wineserver()).arg("-k").env("WINEPREFIX", wine_prefix()).status();
    let logged = std::fs::read_to_string(prefix_path(&log_file)).unwrap_or_default();
    assert!(logged.contains("environment file loaded") && logged.contains("rayvault-worker listening"), "{logged}");
    assert!(!logged.contains(&secret));

    let said = service("uninstall");
    assert!(!prefix_path(&env_file).exists(), "uninstall removes the environment file: {said}");
    eprintln!("wine smoke: service install, start from the task's flags, uninstall took {:?}", started.elapsed());
}

/// Everything done over HTTP; returns the timings for the report.
async fn drive(worker: &WineWorker, wav: &Path, downloads: &Path) -> String {
    let client = worker.client(&worker.secret);

    let health = client.health().await.expect("health");
    assert_eq!(health.status, "ok");
    assert_eq!(health.worker_id, WORKER_ID);

    let caps_started = Instant::now();
    let caps = loop {
        let caps = client.caps().await.expect("signed /caps");
        if caps.host.contains_key("os") {
            break caps;
        }
        assert!(caps_started.elapsed() < CAPS_DEADLINE, "/caps never reported host keys: {caps:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let caps_time = caps_started.elapsed();
    eprintln!("wine smoke: /caps host keys {}", Value::Object(caps.host.clone()));
    assert_eq!(caps.host.get("os"), Some(&json!("windows")), "{caps:?}");
    for key in ["os", "cpu", "ram_gb", "gpu_model", "vram_gb", "python_version", "ffmpeg_version", "davinci_available"] {
        assert!(caps.host.contains_key(key), "documented caps key {key} missing from /caps: {caps:?}");
    }
    assert!(caps.steps.iter().any(|s| s == "AUDIO_POSTCHECK"), "{caps:?}");

    let job_started = Instant::now();
    let blob = client.upload_file(wav).await.expect("PUT /blobs");
    assert_eq!(blob.sha256, sha256_file(wav).unwrap().0);
    let payload = json!({"audio_paths": [format!("{BLOB_REF_PREFIX}{}", blob.sha256)], "report_artifact": true});
    let submit = SubmitJob { step_name: "AUDIO_POSTCHECK".into(), payload, inputs_hash: None, label: None, lease_s: None };
    let submitted = client.submit(&submit).await.expect("POST /jobs");
    let job_id = submitted.job.job_id.clone();
    let view = client.wait(&job_id, JOB_DEADLINE, 20).await.expect("waiting on the job");
    if view.state != JobState::Succeeded {
        let log = client.full_log(&job_id).await.unwrap_or_default();
        panic!("AUDIO_POSTCHECK ended {:?}: {view:?}\njob log:\n{log}\nworker stderr:\n{}", view.state, worker.stderr());
    }
    let job_time = job_started.elapsed();

    let manifest = client.artifacts(&job_id).await.expect("GET artifacts");
    assert!(!manifest.artifacts.is_empty(), "{manifest:?}");
    for entry in &manifest.artifacts {
        let dest = downloads.join(&entry.name);
        client.download_artifact(&job_id, entry, &dest).await.expect("download");
        let (sha, size) = sha256_file(&dest).unwrap();
        assert_eq!((sha.as_str(), size), (entry.sha256.as_str(), entry.size), "{}", entry.name);
    }
    let report: Value = serde_json::from_slice(&std::fs::read(downloads.join("postcheck_report.json")).expect(
        "postcheck_report.json among the artifacts",
    ))
    .unwrap();
    let file = &report["files"][0];
    assert_eq!(file["sample_rate"], json!(48_000), "{report}");
    let duration = file["duration_s"].as_f64().unwrap_or(0.0);
    assert!((duration - 2.0).abs() < 0.05, "measured under Windows: {report}");

    match worker.client("not-the-secret").caps().await {
        Err(ClientError::Api { status: 401, .. }) => {}
        other => panic!("a request signed with the wrong secret must get 401, got {other:?}"),
    }

    let openclaw = openclaw_jobs(&client, downloads).await;
    format!("caps ready after {caps_time:?}, upload + AUDIO_POSTCHECK + wait took {job_time:?}, {openclaw}")
}

/// Submits a job and long-polls it to the end.
async fn run_job(client: &WorkerClient, step: &str, payload: Value) -> rayvault::protocol::JobView {
    let submit = SubmitJob { step_name: step.into(), payload, inputs_hash: None, label: None, lease_s: None };
    let submitted = client.submit(&submit).await.expect("POST /jobs");
    let view = client.wait(&submitted.job.job_id, JOB_DEADLINE, 20).await.expect("waiting on the job");
    assert!(view.state.is_terminal(), "{view:?}");
    view
}

/// OPENCLAW_TASK through the Windows code paths: the session check (Wine
/// runs the worker in its console session), the task on stdin of a real
/// Windows program, its exit code, and the output artifact.
async fn openclaw_jobs(client: &WorkerClient, downloads: &Path) -> String {
    let started = Instant::now();
    let failed = run_job(client, "OPENCLAW_TASK", json!({"task": "no match here", "timeout_s": 60})).await;
    assert_eq!(failed.state, JobState::Failed, "{failed:?}");
    let error = failed.error.as_ref().expect("a failed job has an error");
    assert_eq!(error.code, "OPENCLAW_FAILED", "{error:?}");
    assert!(error.message.contains("exit code: 1"), "{error:?}");
    let task = "wine smoke task for OpenClaw";
    let ok = run_job(client, "OPENCLAW_TASK", json!({"task": task, "timeout_s": 60})).await;
    if ok.state != JobState::Succeeded {
        let log = client.full_log(&ok.job_id).await.unwrap_or_default();
        panic!("OPENCLAW_TASK ended {:?}: {ok:?}\njob log:\n{log}", ok.state);
    }
    let manifest = client.artifacts(&ok.job_id).await.expect("GET artifacts");
    let entry = manifest.artifacts.iter().find(|a| a.name == "openclaw_output.txt").expect("openclaw_output.txt");
    let dest = downloads.join("openclaw_output.txt");
    client.download_artifact(&ok.job_id, entry, &dest).await.expect("download");
    let text = std::fs::read_to_string(&dest).unwrap();
    assert!(text.contains(task), "the task reached find.exe on stdin: {text}");

    format!("two OPENCLAW_TASK jobs took {:?}", started.elapsed())
}
