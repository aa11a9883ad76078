//! Running the worker and the controller daemon as services: what each
//! platform's service manager is given, and where the secret goes.
//!
//! | platform | definition | restarts | secret |
//! |---|---|---|---|
//! | Windows | a per-user Scheduled Task started at logon, in the user's desktop session (Task Scheduler XML) | `RestartOnFailure`, plus a repetition of the logon trigger every minute that starts it again if it is not running | an environment file protected with DPAPI for the user, read with `--env-file` |
//! | Windows `--headless` | a Windows service (session 0, no desktop) | service failure actions | an environment file only SYSTEM and Administrators can read |
//! | macOS | a LaunchAgent plist in `~/Library/LaunchAgents` | `KeepAlive` | the plist's `EnvironmentVariables`; file mode 0600 |
//! | Linux | a systemd user unit | `Restart=on-failure` | an `EnvironmentFile=` of mode 0600 |
//!
//! This module renders the definitions and reads and writes environment
//! files; it knows nothing of actors. The binaries' `service` subcommands
//! call it and run the service managers' commands through
//! [`crate::process`], so the secret is never on a command line and never
//! in a child's environment.

pub mod manage;
#[cfg(windows)]
pub mod windows;

use crate::process::SECRET_ENV_PREFIX;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// First line of an environment file protected with Windows DPAPI.
pub const DPAPI_MAGIC: &[u8] = b"RAYVAULT-DPAPI-1\n";

/// What a service needs that is wrong or missing, said so that the user
/// knows what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

fn err(msg: impl Into<String>) -> ServiceError {
    ServiceError(msg.into())
}

/// A service manager's platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Windows,
    Macos,
    Linux,
}

impl Platform {
    /// The platform this binary was built for (Linux for any other Unix).
    pub fn current() -> Platform {
        if cfg!(windows) {
            Platform::Windows
        } else if cfg!(target_os = "macos") {
            Platform::Macos
        } else {
            Platform::Linux
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Platform::Windows => "windows",
            Platform::Macos => "macos",
            Platform::Linux => "linux",
        }
    }

    /// `windows`, `macos` or `linux`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        match s.to_ascii_lowercase().as_str() {
            "windows" => Ok(Platform::Windows),
            "macos" => Ok(Platform::Macos),
            "linux" => Ok(Platform::Linux),
            other => Err(format!("unknown platform {other:?}; use windows, macos or linux")),
        }
    }

    fn separator(self) -> char {
        if self == Platform::Windows {
            '\\'
        } else {
            '/'
        }
    }

    /// `base` joined with `parts` using this platform's separator (the
    /// definitions for another platform can be printed here).
    pub fn join(self, base: &str, parts: &[&str]) -> String {
        let sep = self.separator();
        let mut out = base.trim_end_matches(sep).to_string();
        for p in parts {
            out.push(sep);
            out.push_str(p);
        }
        out
    }
}

/// Which binary a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Program {
    Worker,
    Orchestrator,
}

impl Program {
    /// The binary's name, without `.exe`.
    pub fn binary(self) -> &'static str {
        match self {
            Program::Worker => "rayvault-worker",
            Program::Orchestrator => "rayvault-orchestrator",
        }
    }

    fn stem(self) -> &'static str {
        match self {
            Program::Worker => "worker",
            Program::Orchestrator => "orchestrator",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Program::Worker => "RayVault worker (HMAC-authenticated job API)",
            Program::Orchestrator => "RayVault controller daemon (rayvault-orchestrator daemon)",
        }
    }

    /// The launchd label, e.g. `com.rayvault.worker`.
    pub fn launchd_label(self) -> String {
        format!("com.rayvault.{}", self.stem())
    }

    /// The systemd unit name, e.g. `rayvault-worker.service`.
    pub fn systemd_unit(self) -> String {
        format!("{}.service", self.binary())
    }

    /// The Scheduled Task's path, e.g. `RayVault\Worker`.
    pub fn task_name(self) -> &'static str {
        match self {
            Program::Worker => r"RayVault\Worker",
            Program::Orchestrator => r"RayVault\Orchestrator",
        }
    }

    /// The Windows service name used by `--headless`.
    pub fn windows_service_name(self) -> &'static str {
        match self {
            Program::Worker => "RayVaultWorker",
            Program::Orchestrator => "RayVaultOrchestrator",
        }
    }

    /// The log file's name, e.g. `rayvault-worker.log`.
    pub fn log_name(self) -> String {
        format!("{}.log", self.binary())
    }
}

/// The folders and name of the user a service is installed for. Read from
/// the environment by [`UserDirs::from_env`]; tests build it by hand.
#[derive(Debug, Clone, Default)]
pub struct UserDirs {
    pub home: Option<String>,
    pub xdg_config_home: Option<String>,
    pub xdg_state_home: Option<String>,
    pub local_appdata: Option<String>,
    /// `%ProgramData%` (Windows), for the `--headless` service's files.
    pub program_data: Option<String>,
    /// `USERNAME` (Windows) or `USER`.
    pub user: Option<String>,
    /// `USERDOMAIN` (Windows).
    pub domain: Option<String>,
}

impl UserDirs {
    pub fn from_env() -> UserDirs {
        let get = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        // The XDG specification says relative values are to be ignored.
        let absolute = |v: Option<String>| v.filter(|p| Path::new(p).is_absolute());
        UserDirs {
            home: get("HOME").or_else(|| get("USERPROFILE")),
            xdg_config_home: absolute(get("XDG_CONFIG_HOME")),
            xdg_state_home: absolute(get("XDG_STATE_HOME")),
            local_appdata: get("LOCALAPPDATA"),
            program_data: get("ProgramData"),
            user: get("USERNAME").or_else(|| get("USER")),
            domain: get("USERDOMAIN"),
        }
    }

    fn home(&self) -> Result<&str, ServiceError> {
        self.home.as_deref().ok_or_else(|| err("HOME is not set, so the user's folders are unknown; set HOME"))
    }

    /// `%LOCALAPPDATA%`; printed literally when it is not set (a Windows
    /// definition printed on another platform).
    fn local_appdata(&self) -> &str {
        self.local_appdata.as_deref().unwrap_or("%LOCALAPPDATA%")
    }

    fn xdg_config(&self) -> Result<String, ServiceError> {
        match &self.xdg_config_home {
            Some(c) => Ok(c.clone()),
            None => Ok(Platform::Linux.join(self.home()?, &[".config"])),
        }
    }

    /// The platform's usual folder for a user's logs: `%LOCALAPPDATA%\RayVault\logs`,
    /// `~/Library/Logs/RayVault`, `$XDG_STATE_HOME/rayvault` (default
    /// `~/.local/state/rayvault`).
    pub fn log_dir(&self, platform: Platform) -> Result<String, ServiceError> {
        Ok(match platform {
            Platform::Windows => platform.join(self.local_appdata(), &["RayVault", "logs"]),
            Platform::Macos => platform.join(self.home()?, &["Library", "Logs", "RayVault"]),
            Platform::Linux => match &self.xdg_state_home {
                Some(s) => platform.join(s, &["rayvault"]),
                None => platform.join(self.home()?, &[".local", "state", "rayvault"]),
            },
        })
    }

    /// Where `program` logs by default on `platform`.
    pub fn log_file(&self, platform: Platform, program: Program) -> Result<String, ServiceError> {
        Ok(platform.join(&self.log_dir(platform)?, &[&program.log_name()]))
    }

    /// Where the service definition is written.
    pub fn definition_path(&self, platform: Platform, program: Program) -> Result<String, ServiceError> {
        Ok(match platform {
            Platform::Windows => {
                platform.join(self.local_appdata(), &["RayVault", &format!("{}-task.xml", program.stem())])
            }
            Platform::Macos => platform.join(
                self.home()?,
                &["Library", "LaunchAgents", &format!("{}.plist", program.launchd_label())],
            ),
            Platform::Linux => platform.join(&self.xdg_config()?, &["systemd", "user", &program.systemd_unit()]),
        })
    }

    /// Where the environment file holding the secret is written (none on
    /// macOS, where the plist holds it).
    pub fn env_file(&self, platform: Platform, program: Program) -> Result<Option<String>, ServiceError> {
        let name = format!("{}.env", program.stem());
        Ok(match platform {
            Platform::Windows => Some(platform.join(self.local_appdata(), &["RayVault", &name])),
            Platform::Macos => None,
            Platform::Linux => Some(platform.join(&self.xdg_config()?, &["rayvault", &name])),
        })
    }

    /// `DOMAIN\user` for a Scheduled Task's trigger and principal.
    pub fn windows_account(&self) -> String {
        let user = self.user.as_deref().unwrap_or("%USERNAME%");
        match &self.domain {
            Some(d) => format!(r"{d}\{user}"),
            None => user.to_string(),
        }
    }
}

/// Whether an environment variable holds a secret (never printed).
pub fn is_secret(name: &str) -> bool {
    name.starts_with(SECRET_ENV_PREFIX)
}

/// Everything a service definition says.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub platform: Platform,
    pub program: Program,
    /// `--headless` on Windows: a Windows service rather than a logon task.
    pub headless: bool,
    /// The binary's absolute path.
    pub exe: String,
    /// The arguments, `--log-file` (and `--env-file` on Windows) first.
    pub args: Vec<String>,
    pub working_dir: String,
    pub log_file: String,
    /// launchd's `StandardOutPath`/`StandardErrorPath`: what the process
    /// prints outside tracing (a refusal to start, a panic).
    pub stdio_log: String,
    pub definition_path: String,
    pub env_file: Option<String>,
    /// The `RAYVAULT_*` variables handed to the service, secrets included.
    pub env: Vec<(String, String)>,
    /// `DOMAIN\user` (Windows).
    pub account: String,
}

/// What the binary passes to [`ServiceSpec::new`].
#[derive(Debug, Clone)]
pub struct SpecInput {
    pub platform: Platform,
    pub program: Program,
    pub headless: bool,
    pub exe: String,
    /// Arguments after `--log-file`/`--env-file` (e.g. `--port 8787`, or
    /// `daemon` for the controller).
    pub args: Vec<String>,
    pub working_dir: String,
    /// `None`: the platform's log folder.
    pub log_file: Option<String>,
    pub env: Vec<(String, String)>,
}

impl ServiceSpec {
    pub fn new(input: SpecInput, dirs: &UserDirs) -> Result<ServiceSpec, ServiceError> {
        let SpecInput { platform, program, headless, exe, args, working_dir, log_file, env } = input;
        if headless && platform != Platform::Windows {
            return Err(err("--headless only applies to --platform windows"));
        }
        let mut env_file = dirs.env_file(platform, program)?;
        let mut default_log = dirs.log_file(platform, program)?;
        if headless {
            // A service runs as LocalSystem, which cannot read the user's
            // DPAPI-protected file; its files live in the machine's
            // ProgramData, the environment file readable only by SYSTEM and
            // Administrators.
            let base = dirs.program_data.as_deref().unwrap_or("%ProgramData%");
            env_file = Some(platform.join(base, &["RayVault", &format!("{}.env", program.stem())]));
            default_log = platform.join(base, &["RayVault", "logs", &program.log_name()]);
        }
        let log_file = log_file.unwrap_or(default_log);
        let mut all_args = vec!["--log-file".to_string(), log_file.clone()];
        if platform == Platform::Windows {
            if let Some(f) = &env_file {
                all_args.extend(["--env-file".to_string(), f.clone()]);
            }
        }
        if headless {
            all_args.push("--windows-service".to_string());
        } else if platform == Platform::Windows {
            // Task Scheduler gives a console program a console window on
            // the user's desktop; the worker closes it at start.
            all_args.push("--detach-console".to_string());
        }
        all_args.extend(args);
        for (k, v) in &env {
            check_env_value(k, v)?;
        }
        Ok(ServiceSpec {
            stdio_log: platform.join(&dirs.log_dir(platform)?, &[&format!("{}.stdio.log", program.binary())]),
            definition_path: dirs.definition_path(platform, program)?,
            platform,
            program,
            headless,
            exe,
            args: all_args,
            working_dir,
            log_file,
            env_file,
            env,
            account: dirs.windows_account(),
        })
    }

    /// The definition text: the unit, plist or Task XML, or a description
    /// of the Windows service. `redact` replaces secret values (for
    /// `print`); the plist is the only definition that holds any.
    pub fn definition(&self, redact: bool) -> String {
        match (self.platform, self.headless) {
            (Platform::Linux, _) => self.systemd_unit(),
            (Platform::Macos, _) => self.launchd_plist(redact),
            (Platform::Windows, false) => self.task_xml(),
            (Platform::Windows, true) => self.windows_service_summary(),
        }
    }

    /// The environment file's text (Linux and Windows); secrets included.
    pub fn env_file_text(&self) -> String {
        let mut s = format!(
            "# Written by `{} service install`: the variables the service starts with.\n\
             # Only its owner may read this file; see docs/operations.md.\n",
            self.program.binary()
        );
        for (k, v) in &self.env {
            let _ = writeln!(s, "{k}='{v}'");
        }
        s
    }

    /// Whether the environment holds a current secret (the previous one
    /// alone is not enough to start a worker).
    pub fn has_current_secret(&self) -> bool {
        self.env.iter().any(|(k, v)| is_secret(k) && !k.ends_with("_PREVIOUS") && !v.is_empty())
    }

    /// The environment as `print` shows it: secrets hidden.
    pub fn env_summary(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            let shown = if is_secret(k) { "<hidden>" } else { v.as_str() };
            let _ = writeln!(s, "  {k}={shown}");
        }
        s
    }

    fn systemd_unit(&self) -> String {
        let exec: Vec<String> = std::iter::once(&self.exe).chain(&self.args).map(|a| systemd_quote(a)).collect();
        let mut s = String::new();
        let _ = writeln!(s, "# Written by `{} service install`; see docs/operations.md.", self.program.binary());
        let _ = writeln!(s, "[Unit]\nDescription={}\n", self.program.description());
        let _ = writeln!(s, "[Service]\nType=simple");
        let _ = writeln!(s, "ExecStart={}", exec.join(" "));
        let _ = writeln!(s, "WorkingDirectory={}", systemd_escape_path(&self.working_dir));
        if let Some(f) = &self.env_file {
            let _ = writeln!(s, "EnvironmentFile={}", systemd_escape_path(f));
        }
        // SIGTERM to the main process only: the worker gives running jobs
        // their grace period and ends its own children; what is left after
        // TimeoutStopSec gets SIGKILL.
        let _ = writeln!(s, "KillMode=mixed\nTimeoutStopSec=60\nRestart=on-failure\nRestartSec=5\n");
        let _ = writeln!(s, "[Install]\nWantedBy=default.target");
        s
    }

    fn launchd_plist(&self, redact: bool) -> String {
        let mut s = String::from(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
             <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
             <plist version=\"1.0\">\n<dict>\n",
        );
        let key_string = |s: &mut String, k: &str, v: &str| {
            let _ = writeln!(s, "  <key>{}</key>\n  <string>{}</string>", xml_escape(k), xml_escape(v));
        };
        key_string(&mut s, "Label", &self.program.launchd_label());
        s.push_str("  <key>ProgramArguments</key>\n  <array>\n");
        for a in std::iter::once(&self.exe).chain(&self.args) {
            let _ = writeln!(s, "    <string>{}</string>", xml_escape(a));
        }
        s.push_str("  </array>\n");
        key_string(&mut s, "WorkingDirectory", &self.working_dir);
        if !self.env.is_empty() {
            s.push_str("  <key>EnvironmentVariables</key>\n  <dict>\n");
            for (k, v) in &self.env {
                let v = if redact && is_secret(k) { "<hidden>" } else { v.as_str() };
                let _ = writeln!(s, "    <key>{}</key>\n    <string>{}</string>", xml_escape(k), xml_escape(v));
            }
            s.push_str("  </dict>\n");
        }
        s.push_str("  <key>RunAtLoad</key>\n  <true/>\n  <key>KeepAlive</key>\n  <true/>\n");
        // launchd waits this long after SIGTERM before SIGKILL; the worker
        // gives running jobs 20 s by default.
        s.push_str("  <key>ExitTimeOut</key>\n  <integer>60</integer>\n");
        s.push_str("  <key>ThrottleInterval</key>\n  <integer>10</integer>\n");
        key_string(&mut s, "StandardOutPath", &self.stdio_log);
        key_string(&mut s, "StandardErrorPath", &self.stdio_log);
        s.push_str("</dict>\n</plist>\n");
        s
    }

    fn task_xml(&self) -> String {
        let account = xml_escape(&self.account);
        let args: Vec<String> = self.args.iter().map(|a| windows_quote(a)).collect();
        format!(
            r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>{description}. Written by `{binary} service install`; see docs/operations.md.</Description>
    <URI>\{task}</URI>
  </RegistrationInfo>
  <Triggers>
    <LogonTrigger>
      <Repetition>
        <Interval>PT1M</Interval>
        <StopAtDurationEnd>false</StopAtDurationEnd>
      </Repetition>
      <Enabled>true</Enabled>
      <UserId>{account}</UserId>
    </LogonTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>{account}</UserId>
      <LogonType>InteractiveToken</LogonType>
      <RunLevel>LeastPrivilege</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <AllowHardTerminate>true</AllowHardTerminate>
    <StartWhenAvailable>true</StartWhenAvailable>
    <RunOnlyIfNetworkAvailable>false</RunOnlyIfNetworkAvailable>
    <IdleSettings>
      <StopOnIdleEnd>false</StopOnIdleEnd>
      <RestartOnIdle>false</RestartOnIdle>
    </IdleSettings>
    <AllowStartOnDemand>true</AllowStartOnDemand>
    <Enabled>true</Enabled>
    <Hidden>false</Hidden>
    <RunOnlyIfIdle>false</RunOnlyIfIdle>
    <WakeToRun>false</WakeToRun>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <Priority>7</Priority>
    <RestartOnFailure>
      <Interval>PT1M</Interval>
      <Count>999</Count>
    </RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{exe}</Command>
      <Arguments>{args}</Arguments>
      <WorkingDirectory>{wd}</WorkingDirectory>
    </Exec>
  </Actions>
</Task>
"#,
            description = xml_escape(self.program.description()),
            binary = self.program.binary(),
            task = xml_escape(self.program.task_name()),
            exe = xml_escape(&self.exe),
            args = xml_escape(&args.join(" ")),
            wd = xml_escape(&self.working_dir),
        )
    }

    fn windows_service_summary(&self) -> String {
        let args: Vec<String> = self.args.iter().map(|a| windows_quote(a)).collect();
        format!(
            "Windows service {name} ({description})\n\
             \x20 binary:     {exe}\n\
             \x20 arguments:  {args}\n\
             \x20 start:      automatic, as LocalSystem, in session 0 (no desktop: OPENCLAW_TASK is unavailable)\n\
             \x20 on failure: restart after 5 s, 10 s, then every 60 s\n",
            name = self.program.windows_service_name(),
            description = self.program.description(),
            exe = self.exe,
            args = args.join(" "),
        )
    }
}

/// Refuses a value the environment file could not carry unchanged.
fn check_env_value(name: &str, value: &str) -> Result<(), ServiceError> {
    if value.contains(['\'', '\n', '\r', '\0']) {
        return Err(err(format!(
            "{name} contains a quote, a line break or a NUL, which an environment file cannot hold; choose a value without them"
        )));
    }
    Ok(())
}

/// One `ExecStart=` word: quoted when it holds blanks or quotes, with `%`
/// (specifiers) and `$` (variable expansion) escaped.
fn systemd_quote(word: &str) -> String {
    let escaped = word.replace('\\', "\\\\").replace('%', "%%").replace('$', "$$").replace('"', "\\\"");
    if escaped.is_empty() || escaped.contains([' ', '\t', '"', '\'']) {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

/// A path for `WorkingDirectory=`/`EnvironmentFile=`: specifiers escaped.
fn systemd_escape_path(p: &str) -> String {
    p.replace('%', "%%")
}

/// Text for an XML element or attribute.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// One argument as `CommandLineToArgvW` reads it back.
pub fn windows_quote(arg: &str) -> String {
    if !arg.is_empty() && !arg.contains([' ', '\t', '"']) {
        return arg.to_string();
    }
    let mut out = String::from("\"");
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                out.push_str(&"\\".repeat(backslashes * 2 + 1));
                out.push('"');
                backslashes = 0;
            }
            _ => {
                out.push_str(&"\\".repeat(backslashes));
                out.push(c);
                backslashes = 0;
            }
        }
    }
    out.push_str(&"\\".repeat(backslashes * 2));
    out.push('"');
    out
}

/// The `RAYVAULT_*` variables of an environment file, in order. Blank
/// lines and `#` comments are skipped; values may be bare, or in single or
/// double quotes; other variables are ignored.
pub fn parse_env_text(text: &str) -> Result<Vec<(String, String)>, ServiceError> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(err(format!("line {} is not NAME=value", n + 1)));
        };
        let key = key.trim();
        if !key.starts_with("RAYVAULT_") {
            continue;
        }
        let value = value.trim();
        let value = ['\'', '"']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Reads an environment file written by `service install`: refuses one
/// that other users can read (Unix) and decrypts a DPAPI-protected one
/// (Windows). Returns its `RAYVAULT_*` variables.
pub fn read_env_file(path: &Path) -> Result<Vec<(String, String)>, ServiceError> {
    let shown = path.display();
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read the environment file {shown}: {e}")))?;
        if meta.mode() & 0o077 != 0 {
            return Err(err(format!(
                "the environment file {shown} can be read by other users (mode {:o}); it holds the cluster secret: run `chmod 600 {shown}`",
                meta.mode() & 0o777
            )));
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(err(format!(
                "the environment file {shown} belongs to uid {}, not to this user (uid {me}); it must be this user's own file",
                meta.uid()
            )));
        }
    }
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read the environment file {shown}: {e}")))?;
    let text = match bytes.strip_prefix(DPAPI_MAGIC) {
        Some(blob) => dpapi::unprotect(blob).map_err(|e| err(format!("cannot decrypt the environment file {shown}: {e}")))?,
        None => String::from_utf8(bytes).map_err(|_| err(format!("the environment file {shown} is not UTF-8 text")))?,
    };
    parse_env_text(&text).map_err(|e| err(format!("the environment file {shown}: {e}")))
}

/// Writes `bytes` to `path` so that only the current user can read it:
/// mode 0600 on Unix, set when the file is created, so no other user ever
/// sees it readable. The file is replaced atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The environment file's bytes as written on this platform: plain text on
/// Unix (protected by its mode), DPAPI-protected for the current user on
/// Windows, unless `machine_readable` (the `--headless` service, which runs
/// as LocalSystem and relies on the file's ACL instead).
pub fn env_file_bytes(text: &str, machine_readable: bool) -> Result<Vec<u8>, ServiceError> {
    if cfg!(windows) && !machine_readable {
        let mut out = DPAPI_MAGIC.to_vec();
        out.extend(dpapi::protect(text.as_bytes()).map_err(|e| err(format!("DPAPI could not protect the secret: {e}")))?);
        return Ok(out);
    }
    Ok(text.as_bytes().to_vec())
}

/// The current exe, absolute.
pub fn current_exe() -> Result<PathBuf, ServiceError> {
    std::env::current_exe().map_err(|e| err(format!("cannot find this program's own path: {e}")))
}

#[cfg(windows)]
mod dpapi {
    //! Windows DPAPI (CryptProtectData) for the current user: only a
    //! process of the same user on the same machine can decrypt.
    use windows_sys::Win32::Foundation::LocalFree;
    use windows_sys::Win32::Security::Cryptography::{
        CryptProtectData, CryptUnprotectData, CRYPTPROTECT_UI_FORBIDDEN, CRYPT_INTEGER_BLOB,
    };

    fn call(input: &[u8], protect: bool) -> std::io::Result<Vec<u8>> {
        let data_in = CRYPT_INTEGER_BLOB { cbData: input.len() as u32, pbData: input.as_ptr() as *mut u8 };
        let mut data_out = CRYPT_INTEGER_BLOB { cbData: 0, pbData: std::ptr::null_mut() };
        let description: Vec<u16> = "RayVault cluster secret\0".encode_utf16().collect();
        // SAFETY: the blobs point to live buffers of the stated sizes; the
        // output is allocated by the API and freed with LocalFree below.
        let ok = unsafe {
            if protect {
                CryptProtectData(
                    &data_in,
                    description.as_ptr(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut data_out,
                )
            } else {
                CryptUnprotectData(
                    &data_in,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                    std::ptr::null(),
                    CRYPTPROTECT_UI_FORBIDDEN,
                    &mut data_out,
                )
            }
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: on success pbData points to cbData bytes owned by us.
        let out = unsafe { std::slice::from_raw_parts(data_out.pbData, data_out.cbData as usize).to_vec() };
        // SAFETY: allocated by the API with LocalAlloc.
        unsafe { LocalFree(data_out.pbData as _) };
        Ok(out)
    }

    pub fn protect(plain: &[u8]) -> std::io::Result<Vec<u8>> {
        call(plain, true)
    }

    pub fn unprotect(blob: &[u8]) -> Result<String, String> {
        let plain = call(blob, false).map_err(|e| format!("{e} (only the Windows user who installed the service can read it)"))?;
        String::from_utf8(plain).map_err(|_| "the decrypted file is not UTF-8 text".to_string())
    }
}

#[cfg(not(windows))]
mod dpapi {
    pub fn protect(_plain: &[u8]) -> std::io::Result<Vec<u8>> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "DPAPI exists on Windows only"))
    }

    pub fn unprotect(_blob: &[u8]) -> Result<String, String> {
        Err("it is protected with Windows DPAPI and can only be read on Windows by the user who wrote it".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> UserDirs {
        UserDirs {
            home: Some("/home/ray".into()),
            user: Some("ray".into()),
            domain: Some("BOX".into()),
            local_appdata: Some(r"C:\Users\ray\AppData\Local".into()),
            ..UserDirs::default()
        }
    }

    #[test]
    fn platform_paths() {
        let d = dirs();
        assert_eq!(d.log_dir(Platform::Linux).unwrap(), "/home/ray/.local/state/rayvault");
        assert_eq!(d.log_dir(Platform::Macos).unwrap(), "/home/ray/Library/Logs/RayVault");
        assert_eq!(d.log_dir(Platform::Windows).unwrap(), r"C:\Users\ray\AppData\Local\RayVault\logs");
        let xdg = UserDirs { xdg_state_home: Some("/s".into()), xdg_config_home: Some("/c".into()), ..dirs() };
        assert_eq!(xdg.log_file(Platform::Linux, Program::Worker).unwrap(), "/s/rayvault/rayvault-worker.log");
        assert_eq!(
            xdg.definition_path(Platform::Linux, Program::Orchestrator).unwrap(),
            "/c/systemd/user/rayvault-orchestrator.service"
        );
        assert_eq!(xdg.env_file(Platform::Linux, Program::Worker).unwrap().unwrap(), "/c/rayvault/worker.env");
        assert_eq!(
            d.definition_path(Platform::Macos, Program::Worker).unwrap(),
            "/home/ray/Library/LaunchAgents/com.rayvault.worker.plist"
        );
        assert_eq!(d.env_file(Platform::Macos, Program::Worker).unwrap(), None);
        assert_eq!(d.windows_account(), r"BOX\ray");
        assert!(UserDirs::default().log_dir(Platform::Linux).is_err());
    }

    #[test]
    fn env_files_round_trip() {
        let text = "# comment\n\nRAYVAULT_CLUSTER_SECRET='a b=c\"'\nexport RAYVAULT_WORKER_ID=\"w1\"\nPATH=/bin\nRAYVAULT_X=bare\n";
        let vars = parse_env_text(text).unwrap();
        assert_eq!(
            vars,
            vec![
                ("RAYVAULT_CLUSTER_SECRET".to_string(), "a b=c\"".to_string()),
                ("RAYVAULT_WORKER_ID".to_string(), "w1".to_string()),
                ("RAYVAULT_X".to_string(), "bare".to_string()),
            ]
        );
        assert!(parse_env_text("RAYVAULT_X").is_err());
        assert!(check_env_value("K", "it's").is_err());
        assert!(check_env_value("K", "two\nlines").is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(windows_quote(r"C:\a b\c.exe"), r#""C:\a b\c.exe""#);
        assert_eq!(windows_quote(r"C:\dir\"), r"C:\dir\");
        assert_eq!(windows_quote(r"C:\a b\"), r#""C:\a b\\""#);
        assert_eq!(windows_quote(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(windows_quote(""), r#""""#);
        assert_eq!(systemd_quote("/a b/%h$x"), r#""/a b/%%h$$x""#);
        assert_eq!(systemd_quote("--port"), "--port");
        assert_eq!(xml_escape("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_0600_and_others_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/w.env");
        write_private(&path, b"RAYVAULT_CLUSTER_SECRET='s3'\n").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(read_env_file(&path).unwrap(), vec![("RAYVAULT_CLUSTER_SECRET".into(), "s3".into())]);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_env_file(&path).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        let dpapi = dir.path().join("d.env");
        write_private(&dpapi, &[DPAPI_MAGIC, b"blob"].concat()).unwrap();
        assert!(read_env_file(&dpapi).unwrap_err().to_string().contains("DPAPI"));
    }
}
