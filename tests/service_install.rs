//! `service install` / `uninstall` on Linux, for real: the files written
//! under a temp HOME/XDG_CONFIG_HOME, the environment file's mode, the
//! secret kept out of the unit, out of every spawned `systemctl`'s argv and
//! environment and out of `print`; then the worker started from that
//! environment file with `--log-file`, and the controller daemon's default
//! log file. Where a systemd user manager runs, one more test installs the
//! unit for real and checks the worker answers.
#![cfg(target_os = "linux")]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const SECRET: &str = "install-test-secret-0c7e41";
const PREVIOUS: &str = "install-test-previous-93ab";
const WORKER: &str = env!("CARGO_BIN_EXE_rayvault-worker");
const ORCH: &str = env!("CARGO_BIN_EXE_rayvault-orchestrator");

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World { dir: common::tempdir() };
        // `systemctl` as every spawned copy is seen: a wrapper that records
        // its argv and environment, then runs the real one.
        let bin = w.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let real = on_path("systemctl").map(|p| p.display().to_string()).unwrap_or_default();
        let script = format!(
            "#!/bin/sh\n{{ printf 'ARGV:'; printf ' %s' \"$@\"; printf '\\n'; env | sed 's/^/ENV: /'; }} >> '{}'\n\
             if [ -n '{real}' ]; then exec '{real}' \"$@\"; fi\necho 'systemctl is not installed' >&2\nexit 1\n",
            w.record().display()
        );
        std::fs::write(bin.join("systemctl"), script).unwrap();
        std::fs::set_permissions(bin.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn record(&self) -> PathBuf {
        self.path("systemctl-calls.txt")
    }

    /// A command in the temp user's world. XDG_RUNTIME_DIR and the session
    /// bus point at nothing, so the real systemctl reaches no user manager
    /// and nothing of the host's is touched.
    fn command(&self, program: &str) -> Command {
        let path = format!("{}:{}", self.path("bin").display(), std::env::var("PATH").unwrap_or_default());
        let mut c = Command::new(program);
        c.env_clear()
            .env("PATH", path)
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/cfg"))
            .env("XDG_STATE_HOME", self.path("home/xstate"))
            .env("XDG_RUNTIME_DIR", self.path("no-runtime"))
            .env("DBUS_SESSION_BUS_ADDRESS", format!("unix:path={}", self.path("no-bus").display()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }

    fn service(&self, program: &str, args: &[&str]) -> Output {
        let out = self
            .command(program)
            .args(args)
            .env("RAYVAULT_CLUSTER_SECRET", SECRET)
            .env("RAYVAULT_CLUSTER_SECRET_PREVIOUS", PREVIOUS)
            .env("RAYVAULT_WORKER_ID", "install-test")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!text.contains(SECRET) && !text.contains(PREVIOUS), "{program} {args:?} printed a secret:\n{text}");
        out
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// The status code of a plain `GET /health`, or None.
fn health(port: u16) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Kills the process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn install_writes_private_files_and_uninstall_removes_them() {
    let w = World::new();
    let state = w.path("state").display().to_string();
    let port = common::free_port().to_string();
    let args = ["service", "install", "--state-dir", &state, "--host", "127.0.0.1", "--port", &port];
    let out = w.service(WORKER, &args);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    if said.contains("not started:") {
        eprintln!("systemctl was skipped, as install reported: {}", said.lines().find(|l| l.contains("not started")).unwrap());
    }

    let unit = w.path("home/cfg/systemd/user/rayvault-worker.service");
    let env_file = w.path("home/cfg/rayvault/worker.env");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    assert_eq!(mode(&env_file), 0o600, "the environment file holds the secret");
    assert!(env_text.contains(&format!("RAYVAULT_CLUSTER_SECRET='{SECRET}'")), "{env_text}");
    assert!(env_text.contains(&format!("RAYVAULT_CLUSTER_SECRET_PREVIOUS='{PREVIOUS}'")), "{env_text}");
    assert!(env_text.contains(&format!("RAYVAULT_STATE_DIR='{state}'")), "{env_text}");
    assert!(!unit_text.contains(SECRET) && !unit_text.contains(PREVIOUS), "{unit_text}");
    assert!(unit_text.contains(&format!("EnvironmentFile={}", env_file.display())), "{unit_text}");
    assert!(Path::new(&state).is_dir(), "the working directory is created");

    // Every systemctl spawned: never the secret in argv or environment.
    let calls = std::fs::read_to_string(w.record()).unwrap_or_default();
    assert!(calls.contains("ARGV: --user is-system-running"), "install asks for a user manager first:\n{calls}");
    assert!(!calls.contains(SECRET) && !calls.contains(PREVIOUS), "a spawned systemctl saw the secret:\n{calls}");

    let print = w.service(WORKER, &["service", "print", "--state-dir", &state, "--host", "127.0.0.1", "--port", &port]);
    assert!(print.status.success());
    assert_eq!(String::from_utf8_lossy(&print.stdout), unit_text, "print shows exactly what install wrote");

    let status = w.service(WORKER, &["service", "status", "--state-dir", &state]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));

    let out = w.service(WORKER, &["service", "uninstall", "--state-dir", &state]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!unit.exists() && !env_file.exists(), "{}", text(&out));
    let status = w.service(WORKER, &["service", "status", "--state-dir", &state]);
    assert_eq!(status.status.code(), Some(3), "not installed: {}", text(&status));
}

#[test]
fn install_without_a_secret_is_refused() {
    let w = World::new();
    let state = w.path("state").display().to_string();
    let out = w.command(WORKER).args(["service", "install", "--state-dir", &state]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("SECRET_MISSING"), "{}", text(&out));
    assert!(!w.path("home/cfg").exists(), "nothing is written");
}

#[test]
fn the_worker_starts_from_the_environment_file_and_logs_to_its_file() {
    let w = World::new();
    let state = w.path("state").display().to_string();
    let out = w.service(WORKER, &["service", "install", "--state-dir", &state]);
    assert!(out.status.success(), "{}", text(&out));
    let env_file = w.path("home/cfg/rayvault/worker.env");
    let log = w.path("logs/worker.log");
    let port = common::free_port();

    // What the unit runs, started by hand: no secret in its environment.
    let start = |env_file: &Path| {
        w.command(WORKER)
            .arg("--env-file")
            .arg(env_file)
            .arg("--log-file")
            .arg(&log)
            .args(["--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let worker = Killed(start(&env_file));
    common::wait_until("the worker answers /health", Duration::from_secs(30), || health(port) == Some(200));
    common::wait_until("the log file says the worker listens", Duration::from_secs(10), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("rayvault-worker listening")
    });
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("environment file loaded"), "{logged}");
    assert!(!logged.contains(SECRET), "{logged}");
    drop(worker);

    // A copy that other users could read is refused.
    let open_copy = w.path("open.env");
    std::fs::copy(&env_file, &open_copy).unwrap();
    std::fs::set_permissions(&open_copy, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = start(&open_copy).wait_with_output().unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("chmod 600") && !said.contains(SECRET), "{said}");
}

#[test]
fn the_daemon_run_by_hand_logs_to_the_platform_folder() {
    let w = World::new();
    let port = common::free_port();
    let stderr_path = w.path("daemon-stderr.txt");
    let child = w
        .command(ORCH)
        .arg("daemon")
        .env("RAYVAULT_STATE_DIR", w.path("state"))
        .env("RAYVAULT_CONTROLLER__API_PORT", port.to_string())
        .env("RAYVAULT_CLUSTER_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let _daemon = Killed(child);
    let log = w.path("home/xstate/rayvault/rayvault-orchestrator.log");
    common::wait_until("the daemon logs that it listens", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("controller daemon listening")
    });
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(stderr.contains(&format!("logging to {}", log.display())), "{stderr}");
    assert!(stderr.contains("controller daemon listening"), "run by hand, stderr gets the log too: {stderr}");
}

/// Where a systemd user manager answers, installs the unit into the real
/// user's systemd, checks that the worker answers, and removes it again.
#[test]
fn real_user_unit_where_a_user_manager_runs() {
    let manager = Command::new("systemctl").args(["--user", "is-system-running"]).output();
    let state = manager.as_ref().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    if !matches!(state.as_str(), "running" | "degraded" | "starting") {
        eprintln!("skipped: no systemd user manager runs here (`systemctl --user is-system-running` said {state:?})");
        return;
    }
    let home = std::env::var("HOME").expect("HOME");
    let config = std::env::var("XDG_CONFIG_HOME").unwrap_or_else(|_| format!("{home}/.config"));
    if Path::new(&config).join("systemd/user/rayvault-worker.service").exists() {
        eprintln!("skipped: this user already has a rayvault-worker unit, which this test must not replace");
        return;
    }
    let dir = common::tempdir();
    let state_dir = dir.path().join("state").display().to_string();
    let port = common::free_port();
    let run = |args: &[&str]| {
        Command::new(WORKER).args(args).env("RAYVAULT_CLUSTER_SECRET", SECRET).output().unwrap()
    };
    let out = run(&["service", "install", "--state-dir", &state_dir, "--host", "127.0.0.1", "--port", &port.to_string()]);
    let cleanup = || run(&["service", "uninstall", "--state-dir", &state_dir]);
    if !out.status.success() {
        cleanup();
        panic!("install failed: {}", text(&out));
    }
    // Polled until a deadline (not common::wait_until, which would panic
    // before the unit is removed again).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let answered = loop {
        if health(port) == Some(200) {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let status = run(&["service", "status", "--state-dir", &state_dir]);
    let removed = cleanup();
    assert!(answered, "the installed worker never answered /health: {}", text(&status));
    assert!(removed.status.success(), "{}", text(&removed));
}
