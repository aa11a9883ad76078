//! `service print` of both binaries, for every platform, run as the real
//! binaries in a scrubbed environment: the Task Scheduler XML and the
//! plists parse (Python's xml.etree and plistlib) and name the right
//! binary, arguments and working directory; the systemd unit passes
//! `systemd-analyze verify` where that tool exists; the secret appears
//! nowhere in the output.

mod common;

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SECRET: &str = "print-test-secret-5f2c9a";
const WORKER: &str = env!("CARGO_BIN_EXE_rayvault-worker");
const ORCH: &str = env!("CARGO_BIN_EXE_rayvault-orchestrator");

/// A user's world in a temp dir: HOME, XDG folders, a config file and a
/// state folder, and nothing inherited but PATH.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World { dir: common::tempdir() };
        std::fs::write(w.config(), "[worker]\nid = \"print-test\"\n").unwrap();
        w
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn config(&self) -> PathBuf {
        self.path("local.toml")
    }

    fn state(&self) -> String {
        self.path("state dir").display().to_string()
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/cfg"))
            .env("XDG_STATE_HOME", self.path("home/xstate"))
            .env("USERNAME", "ray")
            .env("USERDOMAIN", "BOX")
            .env("RAYVAULT_CLUSTER_SECRET", SECRET)
            .env("RAYVAULT_WORKER_ID", "print-test")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `print` for `platform`; fails unless it exits 0 without the secret.
    fn print(&self, program: &str, platform: &str, extra: &[&str]) -> (String, String) {
        let config = self.config().display().to_string();
        let state = self.state();
        let mut args = vec!["--config", &config, "service", "print", "--platform", platform, "--state-dir", &state];
        if program == WORKER {
            // The worker's --config belongs to its `service print` options.
            args = vec!["service", "print", "--platform", platform, "--state-dir", &state, "--config", &config];
        }
        args.extend(extra);
        let out = self.run(program, &args);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(out.status.success(), "{program} {args:?}: {:?}\n{stderr}", out.status);
        assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET), "print showed the secret:\n{stdout}\n{stderr}");
        assert!(stderr.contains("RAYVAULT_CLUSTER_SECRET=<hidden>"), "{stderr}");
        (stdout, stderr)
    }
}

/// Runs a Python snippet on `input` (its stdin) and returns its JSON output.
fn python(script: &str, input: &str) -> Value {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed to parse the XML and plist output");
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3 failed: {}\ninput:\n{input}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The fields of a Task Scheduler XML, read back from UTF-16 bytes as
/// `schtasks /Create /XML` reads the file `install` writes.
const TASK_FIELDS: &str = r#"
import sys, json, xml.etree.ElementTree as ET
root = ET.fromstring(sys.stdin.read().encode("utf-16"))
ns = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}
f = lambda p: root.findtext(p, namespaces=ns)
print(json.dumps({
    "command": f("t:Actions/t:Exec/t:Command"),
    "arguments": f("t:Actions/t:Exec/t:Arguments"),
    "working_dir": f("t:Actions/t:Exec/t:WorkingDirectory"),
    "logon_user": f("t:Triggers/t:LogonTrigger/t:UserId"),
    "logon_type": f("t:Principals/t:Principal/t:LogonType"),
    "restart_interval": f("t:Settings/t:RestartOnFailure/t:Interval"),
    "time_limit": f("t:Settings/t:ExecutionTimeLimit"),
    "instances": f("t:Settings/t:MultipleInstancesPolicy"),
    "uri": f("t:RegistrationInfo/t:URI"),
}))
"#;

const PLIST_FIELDS: &str = r#"
import sys, json, plistlib
print(json.dumps(plistlib.loads(sys.stdin.read().encode("utf-8"))))
"#;

#[test]
fn windows_task_xml_names_the_worker_and_its_arguments() {
    let w = World::new();
    let (xml, notes) = w.print(WORKER, "windows", &["--host", "100.64.0.7", "--port", "8799"]);
    let t = python(TASK_FIELDS, &xml);
    assert_eq!(t["command"], WORKER, "{xml}");
    let args = t["arguments"].as_str().unwrap();
    assert!(args.contains("--host 100.64.0.7 --port 8799"), "{args}");
    assert!(args.contains(&format!("--config {}", w.config().display())), "{args}");
    assert!(args.contains(r#"--log-file %LOCALAPPDATA%\RayVault\logs\rayvault-worker.log"#), "{args}");
    assert!(args.contains(r#"--env-file %LOCALAPPDATA%\RayVault\worker.env"#), "{args}");
    assert!(args.contains("--detach-console"), "no console window on the desktop: {args}");
    assert_eq!(t["working_dir"], w.state());
    assert_eq!(t["logon_user"], r"BOX\ray");
    assert_eq!(t["logon_type"], "InteractiveToken", "the task must run in the user's desktop session");
    assert_eq!(t["restart_interval"], "PT1M");
    assert_eq!(t["time_limit"], "PT0S");
    assert_eq!(t["instances"], "IgnoreNew");
    assert_eq!(t["uri"], r"\RayVault\Worker");
    assert!(notes.contains("DPAPI"), "{notes}");
}

#[test]
fn headless_windows_service_is_described_and_only_for_windows() {
    let w = World::new();
    let (text, _) = w.print(WORKER, "windows", &["--headless"]);
    assert!(text.contains("RayVaultWorker") && text.contains("--windows-service"), "{text}");
    assert!(text.contains("session 0") && text.contains("OPENCLAW_TASK is unavailable"), "{text}");
    let state = w.state();
    let out = w.run(WORKER, &["service", "print", "--platform", "linux", "--headless", "--state-dir", &state]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--headless only applies to --platform windows"));
}

#[test]
fn launch_agent_plists_parse_and_hide_the_secret() {
    let w = World::new();
    let home = w.path("home");
    for (program, label, tail) in [(WORKER, "com.rayvault.worker", "--port"), (ORCH, "com.rayvault.orchestrator", "daemon")] {
        let extra: &[&str] = if program == WORKER { &["--port", "8799"] } else { &[] };
        let (plist, notes) = w.print(program, "macos", extra);
        let p = python(PLIST_FIELDS, &plist);
        assert_eq!(p["Label"], label);
        let argv: Vec<&str> = p["ProgramArguments"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(argv[0], program);
        let log = home.join(format!("Library/Logs/RayVault/{}.log", Path::new(program).file_name().unwrap().to_str().unwrap()));
        assert_eq!(&argv[1..3], &["--log-file", log.to_str().unwrap()], "{argv:?}");
        assert!(argv.contains(&tail), "{argv:?}");
        if program == ORCH {
            assert_eq!(argv.last(), Some(&"daemon"), "global flags come before the subcommand: {argv:?}");
        }
        assert_eq!(p["WorkingDirectory"], w.state());
        assert_eq!(p["RunAtLoad"], true);
        assert_eq!(p["KeepAlive"], true);
        assert_eq!(p["EnvironmentVariables"]["RAYVAULT_CLUSTER_SECRET"], "<hidden>");
        assert_eq!(p["EnvironmentVariables"]["RAYVAULT_STATE_DIR"], w.state());
        assert_eq!(p["EnvironmentVariables"]["RAYVAULT_WORKER_ID"], "print-test");
        assert!(p["StandardErrorPath"].as_str().unwrap().starts_with(home.join("Library/Logs/RayVault").to_str().unwrap()));
        assert!(notes.contains(&format!("Library/LaunchAgents/{label}.plist")), "{notes}");
    }
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let w = World::new();
    for (program, unit) in [(WORKER, "rayvault-worker.service"), (ORCH, "rayvault-orchestrator.service")] {
        let (text, notes) = w.print(program, "linux", &[]);
        let env_file = w.path(&format!("home/cfg/rayvault/{}.env", if program == WORKER { "worker" } else { "orchestrator" }));
        assert!(text.contains(&format!("EnvironmentFile={}\n", env_file.display())), "{text}");
        assert!(text.contains(&format!("WorkingDirectory={}\n", w.state())), "{text}");
        assert!(text.contains("Restart=on-failure\n"), "{text}");
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        assert!(exec.starts_with(&format!("{program} --log-file {}", w.path("home/xstate/rayvault").display())), "{exec}");
        assert!(notes.contains(&format!("home/cfg/systemd/user/{unit}")), "{notes}");
        let Some(analyze) = on_path("systemd-analyze") else {
            eprintln!("systemd-analyze is not installed here: the unit's syntax was not verified");
            continue;
        };
        let dir = w.path("units");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(unit);
        std::fs::write(&path, &text).unwrap();
        // System mode: `--user verify` needs a runtime dir and user manager
        // this test may not have; the unit is the same text either way.
        let out = Command::new(analyze).arg("verify").arg(&path).output().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && !said.contains(unit), "systemd-analyze verify {}:\n{said}\n{text}", path.display());
    }
}

#[test]
fn the_orchestrator_refuses_windows() {
    let w = World::new();
    let out = w.run(ORCH, &["service", "print", "--platform", "windows"]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("not supported") && said.contains("rayvault-worker service install"), "{said}");
}

#[test]
fn install_on_another_platform_is_refused() {
    let w = World::new();
    let other = if cfg!(target_os = "macos") { "linux" } else { "macos" };
    let state = w.state();
    let out = w.run(WORKER, &["service", "install", "--platform", other, "--state-dir", &state]);
    assert_eq!(out.status.code(), Some(2));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("service print --platform"), "{said}");
    assert!(!w.path("home/Library").exists() && !w.path("home/cfg").exists(), "nothing may be written");
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}
