//! [`ServiceSpec`]: everything a service definition says, built from what
//! the binary asks for and the user's folders, and the environment it
//! starts with as `print` shows it.

use super::env_file::check_env_value;
use super::{err, Platform, Program, ServiceError, UserDirs};
use crate::process::SECRET_ENV_PREFIX;
use std::fmt::Write as _;
use std::path::PathBuf;

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
}

/// The current exe, absolute.
pub fn current_exe() -> Result<PathBuf, ServiceError> {
    std::env::current_exe().map_err(|e| err(format!("cannot find this program's own path: {e}")))
}
