//! `service install | uninstall | status | print`, shared by both binaries:
//! writes the files of a [`ServiceSpec`] and drives the platform's service
//! manager (`systemctl --user`, `launchctl`, `schtasks`) through
//! [`crate::process`], whose children never see a `RAYVAULT_CLUSTER_SECRET*`
//! variable. No command line ever holds a secret: the managers are given
//! file paths only.

use super::{env_file_bytes, write_private, Platform, ServiceError, ServiceSpec};
use crate::joblog::JobLog;
use crate::process::{run_tool, Tool};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exit code of `status` when the service is not installed.
pub const NOT_INSTALLED: u8 = 3;

/// What a service manager command printed.
#[derive(Debug)]
pub struct CmdOut {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl CmdOut {
    /// stdout and stderr, trimmed, for messages.
    pub fn text(&self) -> String {
        let both = format!("{}\n{}", self.stdout.trim(), self.stderr.trim());
        both.trim().to_string()
    }
}

/// Runs `program args` to the end (one minute at most) through
/// [`crate::process`]; `Err` when it could not be started.
pub fn run_cmd(program: &str, args: &[&str]) -> Result<CmdOut, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to run {program}: {e}"))?;
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    let log = JobLog::open(Path::new(null)).map_err(|e| format!("cannot open {null}: {e}"))?;
    let tool = Tool::new(program, program).args(args.iter().copied()).timeout(Duration::from_secs(60)).capture_stdout();
    let out = rt.block_on(run_tool(&tool, &log, &tokio_util::sync::CancellationToken::new())).map_err(|e| e.message)?;
    Ok(CmdOut {
        success: out.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: out.stderr_tail,
    })
}

/// Runs a command that must succeed.
fn must(program: &str, args: &[&str]) -> Result<CmdOut, ServiceError> {
    let shown = format!("{program} {}", args.join(" "));
    match run_cmd(program, args) {
        Ok(out) if out.success => Ok(out),
        Ok(out) => Err(ServiceError(format!("`{shown}` failed: {}", out.text()))),
        Err(e) => Err(ServiceError(format!("`{shown}` could not run: {e}"))),
    }
}

/// `install` and `uninstall` act on this machine only.
fn require_this_platform(spec: &ServiceSpec, verb: &str) -> Result<(), ServiceError> {
    if spec.platform != Platform::current() {
        return Err(ServiceError(format!(
            "`service {verb} --platform {}` must run on {} itself; here use `service print --platform {}` to review the definition",
            spec.platform.name(),
            spec.platform.name(),
            spec.platform.name()
        )));
    }
    Ok(())
}

/// Prints the definition on `out` (exactly what `install` writes, secrets
/// hidden) and where everything goes on `notes`.
pub fn print(spec: &ServiceSpec, out: &mut dyn Write, notes: &mut dyn Write) -> std::io::Result<()> {
    out.write_all(spec.definition(true).as_bytes())?;
    writeln!(notes, "# {} service for {}", spec.program.binary(), spec.platform.name())?;
    if spec.headless {
        writeln!(notes, "# installed as the Windows service {}", spec.program.windows_service_name())?;
    } else {
        writeln!(notes, "# definition file: {}", spec.definition_path)?;
    }
    match &spec.env_file {
        Some(f) => writeln!(notes, "# environment file: {f} ({})", env_file_protection(spec))?,
        None => writeln!(notes, "# environment: in the plist above, which is written with mode 0600")?,
    }
    if spec.env.is_empty() {
        writeln!(notes, "# no RAYVAULT_* variable is set here, so the service would start without a secret")?;
    } else {
        writeln!(notes, "# environment handed to the service (secrets hidden):")?;
        notes.write_all(spec.env_summary().as_bytes())?;
    }
    writeln!(notes, "# log file: {} (rotated at 10 MiB, 5 files kept)", spec.log_file)?;
    Ok(())
}

fn env_file_protection(spec: &ServiceSpec) -> &'static str {
    match (spec.platform, spec.headless) {
        (Platform::Windows, false) => "encrypted with DPAPI for this Windows user",
        (Platform::Windows, true) => "readable by SYSTEM and Administrators only",
        _ => "mode 0600, readable by this user only",
    }
}

/// Writes the files and registers the service with the platform's manager,
/// then starts it. Progress goes to `out`.
pub fn install(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    require_this_platform(spec, "install")?;
    let io = |what: &str, path: &str, e: std::io::Error| ServiceError(format!("cannot write {what} {path}: {e}"));
    std::fs::create_dir_all(&spec.working_dir).map_err(|e| io("the folder", &spec.working_dir, e))?;
    if let Some(dir) = Path::new(&spec.log_file).parent() {
        std::fs::create_dir_all(dir).map_err(|e| io("the log folder", &dir.display().to_string(), e))?;
    }
    if let Some(f) = &spec.env_file {
        let bytes = env_file_bytes(&spec.env_file_text(), spec.headless)?;
        write_env_file(spec, Path::new(f), &bytes).map_err(|e| io("the environment file", f, e))?;
        let _ = writeln!(out, "wrote {f} ({})", env_file_protection(spec));
    }
    if !spec.headless {
        let text = spec.definition(false);
        let bytes = if spec.platform == Platform::Windows { utf16_with_bom(&text) } else { text.into_bytes() };
        write_private(Path::new(&spec.definition_path), &bytes)
            .map_err(|e| io("the service definition", &spec.definition_path, e))?;
        let _ = writeln!(out, "wrote {}", spec.definition_path);
    }
    match spec.platform {
        Platform::Linux => systemd_install(spec, out),
        Platform::Macos => launchd_install(spec, out),
        Platform::Windows => windows_install(spec, out),
    }?;
    let _ = writeln!(out, "logs: {}", spec.log_file);
    Ok(())
}

/// Writes the environment file. The `--headless` service's file gets its
/// access list (SYSTEM and Administrators) while still empty, so the secret
/// is never in a file others can read, even for a moment.
fn write_env_file(spec: &ServiceSpec, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !spec.headless {
        return write_private(path, bytes);
    }
    #[cfg(windows)]
    {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, b"")?;
        super::windows::restrict_to_system_and_admins(path)?;
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }
    #[cfg(not(windows))]
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "--headless is for Windows only"))
}

/// The manager's answer with every `RAYVAULT_CLUSTER_SECRET*` value
/// replaced: `launchctl print` lists a job's environment.
pub fn redact_secret_lines(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        match line.find(crate::process::SECRET_ENV_PREFIX) {
            Some(at) => {
                let name_end = line[at..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(line.len(), |n| at + n);
                out.push_str(&line[..name_end]);
                out.push_str(" => <hidden>");
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Stops the service, unregisters it and removes its definition and
/// environment file. The logs stay.
pub fn uninstall(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    require_this_platform(spec, "uninstall")?;
    match spec.platform {
        Platform::Linux => systemd_uninstall(spec, out),
        Platform::Macos => launchd_uninstall(spec, out),
        Platform::Windows => windows_uninstall(spec, out),
    }?;
    let mut files = vec![spec.definition_path.clone()];
    files.extend(spec.env_file.clone());
    for f in files {
        match std::fs::remove_file(&f) {
            Ok(()) => {
                let _ = writeln!(out, "removed {f}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ServiceError(format!("cannot remove {f}: {e}"))),
        }
    }
    let _ = writeln!(out, "the logs were kept: {}", spec.log_file);
    Ok(())
}

/// Prints whether the service is installed and what its manager says.
/// Returns 0 when installed, [`NOT_INSTALLED`] otherwise.
pub fn status(spec: &ServiceSpec, out: &mut dyn Write) -> Result<u8, ServiceError> {
    require_this_platform(spec, "status")?;
    let installed = match spec.platform {
        Platform::Windows => windows_status(spec, out),
        _ => {
            let exists = Path::new(&spec.definition_path).is_file();
            let _ = writeln!(out, "definition: {} ({})", spec.definition_path, if exists { "present" } else { "absent" });
            let answer = match spec.platform {
                Platform::Linux => user_manager()
                    .map(|()| run_cmd("systemctl", &["--user", "status", &spec.program.systemd_unit(), "--no-pager"])),
                _ => Ok(run_cmd("launchctl", &["print", &launchd_target(spec)])),
            };
            match answer {
                Ok(Ok(o)) => {
                    let _ = write!(out, "{}", redact_secret_lines(&o.text()));
                }
                Ok(Err(e)) => {
                    let _ = writeln!(out, "the service manager could not be asked: {e}");
                }
                Err(why) => {
                    let _ = writeln!(out, "{why}");
                }
            }
            exists
        }
    };
    let _ = writeln!(out, "log file: {}", spec.log_file);
    Ok(if installed { 0 } else { NOT_INSTALLED })
}

/// Ok when a systemd user manager answers for this user, else why not.
pub fn user_manager() -> Result<(), String> {
    match run_cmd("systemctl", &["--user", "is-system-running"]) {
        Err(e) => Err(format!("systemctl could not run ({e}), so no systemd user manager is available")),
        Ok(o) => {
            let state = o.stdout.trim();
            if state.is_empty() || state == "offline" || state == "unknown" {
                Err(format!(
                    "no systemd user manager runs for this user (`systemctl --user is-system-running` said {:?})",
                    o.text()
                ))
            } else {
                Ok(())
            }
        }
    }
}

fn systemd_install(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    let unit = spec.program.systemd_unit();
    if let Err(why) = user_manager() {
        let _ = writeln!(
            out,
            "not started: {why}. The unit is in place; in a login session run \
             `systemctl --user daemon-reload && systemctl --user enable --now {unit}` \
             (and `loginctl enable-linger $USER` to keep it running after logout)"
        );
        return Ok(());
    }
    must("systemctl", &["--user", "daemon-reload"])?;
    must("systemctl", &["--user", "enable", &unit])?;
    // `restart` also picks up a changed unit or binary on a reinstall.
    must("systemctl", &["--user", "restart", &unit])?;
    let _ = writeln!(out, "enabled and started {unit} (systemctl --user status {unit})");
    Ok(())
}

fn systemd_uninstall(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    let unit = spec.program.systemd_unit();
    match user_manager() {
        Ok(()) => {
            // Disabling a unit that was never enabled fails harmlessly.
            let _ = run_cmd("systemctl", &["--user", "disable", "--now", &unit]);
            let _ = writeln!(out, "stopped and disabled {unit}");
        }
        Err(why) => {
            let _ = writeln!(out, "{why}: nothing to stop");
        }
    }
    Ok(())
}

/// `gui/<uid>/<label>`.
fn launchd_target(spec: &ServiceSpec) -> String {
    format!("{}/{}", launchd_domain(), spec.program.launchd_label())
}

fn launchd_domain() -> String {
    #[cfg(unix)]
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    #[cfg(not(unix))]
    let uid = 0;
    format!("gui/{uid}")
}

fn launchd_install(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    // A loaded copy (an earlier install) is unloaded first so the new plist
    // takes effect; that fails harmlessly when none is loaded.
    let _ = run_cmd("launchctl", &["bootout", &launchd_target(spec)]);
    let plist = spec.definition_path.as_str();
    match run_cmd("launchctl", &["bootstrap", &launchd_domain(), plist]) {
        Ok(o) if o.success => {
            let _ = writeln!(out, "loaded {} with launchctl bootstrap {}", spec.program.launchd_label(), launchd_domain());
        }
        first => {
            let why = match first {
                Ok(o) => o.text(),
                Err(e) => e,
            };
            let _ = writeln!(out, "launchctl bootstrap failed ({why}); trying launchctl load -w");
            must("launchctl", &["load", "-w", plist])?;
            let _ = writeln!(out, "loaded {} with launchctl load -w", spec.program.launchd_label());
        }
    }
    Ok(())
}

fn launchd_uninstall(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    let booted = run_cmd("launchctl", &["bootout", &launchd_target(spec)]).is_ok_and(|o| o.success);
    if !booted && Path::new(&spec.definition_path).is_file() {
        let _ = run_cmd("launchctl", &["unload", "-w", &spec.definition_path]);
    }
    let _ = writeln!(out, "unloaded {}", spec.program.launchd_label());
    Ok(())
}

fn windows_install(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    if spec.headless {
        #[cfg(windows)]
        return super::windows::install_service(spec, out);
        #[cfg(not(windows))]
        return Err(ServiceError("a Windows service can only be installed on Windows".into()));
    }
    let task = spec.program.task_name();
    must("schtasks", &["/Create", "/XML", &spec.definition_path, "/TN", task, "/F"])?;
    let _ = writeln!(out, "registered the scheduled task {task} (starts at logon, in your desktop session)");
    // Started now too, so that the worker runs without logging off and on.
    match run_cmd("schtasks", &["/Run", "/TN", task]) {
        Ok(o) if o.success => {
            let _ = writeln!(out, "started {task}");
        }
        other => {
            let why = other.map(|o| o.text()).unwrap_or_else(|e| e);
            let _ = writeln!(out, "{task} is registered but did not start now ({why}); it starts at the next logon");
        }
    }
    Ok(())
}

fn windows_uninstall(spec: &ServiceSpec, out: &mut dyn Write) -> Result<(), ServiceError> {
    if spec.headless {
        #[cfg(windows)]
        return super::windows::uninstall_service(spec, out);
        #[cfg(not(windows))]
        return Err(ServiceError("a Windows service can only be removed on Windows".into()));
    }
    let task = spec.program.task_name();
    let _ = run_cmd("schtasks", &["/End", "/TN", task]);
    match run_cmd("schtasks", &["/Delete", "/TN", task, "/F"]) {
        Ok(o) if o.success => {
            let _ = writeln!(out, "removed the scheduled task {task}");
        }
        other => {
            let why = other.map(|o| o.text()).unwrap_or_else(|e| e);
            let _ = writeln!(out, "the scheduled task {task} was not removed ({why})");
        }
    }
    Ok(())
}

fn windows_status(spec: &ServiceSpec, out: &mut dyn Write) -> bool {
    if spec.headless {
        #[cfg(windows)]
        return super::windows::service_status(spec, out);
    }
    let task = spec.program.task_name();
    match run_cmd("schtasks", &["/Query", "/TN", task, "/V", "/FO", "LIST"]) {
        Ok(o) => {
            let _ = write!(out, "{}", redact_secret_lines(&o.text()));
            o.success
        }
        Err(e) => {
            let _ = writeln!(out, "schtasks could not run: {e}");
            false
        }
    }
}

/// Task Scheduler reads a `/XML` file as UTF-16 (the encoding its
/// declaration names).
fn utf16_with_bom(text: &str) -> Vec<u8> {
    let mut bytes = vec![0xFF, 0xFE];
    for unit in text.encode_utf16() {
        bytes.extend(unit.to_le_bytes());
    }
    bytes
}

/// The `RAYVAULT_*` variables of this process for a service, except
/// `RAYVAULT_CONFIG` (passed as `--config`), with `RAYVAULT_STATE_DIR` set
/// to `state_dir`. Sorted by name.
pub fn service_env(state_dir: &Path) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, v)| k.starts_with("RAYVAULT_") && k != "RAYVAULT_CONFIG" && k != "RAYVAULT_STATE_DIR" && !v.is_empty())
        .collect();
    vars.push(("RAYVAULT_STATE_DIR".into(), state_dir.display().to_string()));
    vars.sort();
    vars
}

/// The configuration file the binary would read if started here
/// (`flag`, else `RAYVAULT_CONFIG`, else `config/local.toml` if present),
/// absolute, because a service starts in another folder.
pub fn resolve_config(flag: Option<&Path>) -> Result<Option<PathBuf>, ServiceError> {
    let chosen = match flag {
        Some(p) => Some(p.to_path_buf()),
        None => match std::env::var_os("RAYVAULT_CONFIG").filter(|v| !v.is_empty()) {
            Some(p) => Some(PathBuf::from(p)),
            None => Some(PathBuf::from("config/local.toml")).filter(|p| p.is_file()),
        },
    };
    chosen.map(|p| absolute(&p)).transpose()
}

/// `p` made absolute against the current folder (without resolving links).
pub fn absolute(p: &Path) -> Result<PathBuf, ServiceError> {
    std::path::absolute(p).map_err(|e| ServiceError(format!("cannot make {} absolute: {e}", p.display())))
}

/// The four `service` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Install,
    Uninstall,
    Status,
    Print,
}

/// What a binary's `service` subcommand was given.
#[derive(Debug, Clone)]
pub struct Request {
    pub program: super::Program,
    pub platform: Option<Platform>,
    pub headless: bool,
    /// The binary the service runs; default: the running one.
    pub exe: Option<PathBuf>,
    /// Default: the `state_dir` setting, made absolute.
    pub state_dir: Option<PathBuf>,
    /// Default: what the binary would read if started here.
    pub config: Option<PathBuf>,
    /// Default: the platform's log folder.
    pub log_file: Option<PathBuf>,
    /// Arguments before `--config` (e.g. `--port 8787`).
    pub args: Vec<String>,
    /// Arguments after `--config` (e.g. the controller's `daemon`).
    pub trailing: Vec<String>,
}

/// Resolves a [`Request`] against this machine into a [`ServiceSpec`].
pub fn build_spec(req: Request) -> Result<ServiceSpec, ServiceError> {
    let platform = req.platform.unwrap_or_else(Platform::current);
    let config = resolve_config(req.config.as_deref())?;
    let state_dir = match req.state_dir {
        Some(d) => d,
        None => {
            crate::config::Settings::load(config.as_deref()).map_err(|e| ServiceError(e.to_string()))?.state_dir
        }
    };
    let state_dir = absolute(&state_dir)?;
    let exe = match req.exe {
        Some(e) => absolute(&e)?,
        None => super::current_exe()?,
    };
    let mut args = req.args;
    if let Some(c) = &config {
        args.extend(["--config".to_string(), c.display().to_string()]);
    }
    args.extend(req.trailing);
    let input = super::SpecInput {
        platform,
        program: req.program,
        headless: req.headless,
        exe: exe.display().to_string(),
        args,
        working_dir: state_dir.display().to_string(),
        log_file: req.log_file.map(|p| absolute(&p)).transpose()?.map(|p| p.display().to_string()),
        env: service_env(&state_dir),
    };
    ServiceSpec::new(input, &super::UserDirs::from_env())
}

/// Runs `action` for `req`, printing on stdout/stderr; returns the exit
/// code: 0 done, 1 `print` failed to write, 2 refused (the message says
/// why), [`NOT_INSTALLED`] from `status`.
pub fn run(action: Action, req: Request, secret_required: bool) -> u8 {
    let binary = req.program.binary();
    let refuse = |e: ServiceError| {
        eprintln!("{binary} service: {e}");
        2
    };
    let spec = match build_spec(req) {
        Ok(s) => s,
        Err(e) => return refuse(e),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match action {
        Action::Print => match print(&spec, &mut out, &mut std::io::stderr().lock()) {
            Ok(()) => 0,
            Err(_) => 1,
        },
        Action::Install => {
            if secret_required && !spec.has_current_secret() {
                return refuse(ServiceError(format!(
                    "SECRET_MISSING: set RAYVAULT_CLUSTER_SECRET (or RAYVAULT_CLUSTER_SECRET_CURRENT) in this shell \
                     before `{binary} service install`; it is written where only the service can read it, never on a command line"
                )));
            }
            match install(&spec, &mut out) {
                Ok(()) => 0,
                Err(e) => refuse(e),
            }
        }
        Action::Uninstall => match uninstall(&spec, &mut out) {
            Ok(()) => 0,
            Err(e) => refuse(e),
        },
        Action::Status => match status(&spec, &mut out) {
            Ok(code) => code,
            Err(e) => refuse(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_a_managers_answer_are_hidden() {
        let launchctl = "\tenvironment = {\n\t\tRAYVAULT_CLUSTER_SECRET => s3cr3t\n\t\tRAYVAULT_STATE_DIR => /x\n\t\tRAYVAULT_CLUSTER_SECRET_PREVIOUS => old\n";
        let shown = redact_secret_lines(launchctl);
        assert!(!shown.contains("s3cr3t") && !shown.contains("old"), "{shown}");
        assert!(shown.contains("\t\tRAYVAULT_CLUSTER_SECRET => <hidden>\n"), "{shown}");
        assert!(shown.contains("RAYVAULT_CLUSTER_SECRET_PREVIOUS => <hidden>"), "{shown}");
        assert!(shown.contains("RAYVAULT_STATE_DIR => /x"), "{shown}");
    }
}
