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
//!
//! Its parts: `platform` (the platforms and the two programs), `dirs`
//! (where a user's files go), `spec` (the [`ServiceSpec`] built from
//! them), `definition` (its text for systemd, launchd and Windows) and
//! `env_file` (writing and reading environment files); [`manage`] drives
//! the service managers and `windows` (Windows only) the `--headless`
//! service.

mod definition;
mod dirs;
mod env_file;
pub mod manage;
mod platform;
mod spec;
#[cfg(windows)]
pub mod windows;

pub use definition::{windows_quote, xml_escape};
pub use dirs::UserDirs;
pub use env_file::{env_file_bytes, parse_env_text, read_env_file, write_private, DPAPI_MAGIC};
pub use platform::{Platform, Program};
pub use spec::{current_exe, is_secret, ServiceSpec, SpecInput};

/// What a service needs that is wrong or missing, said so that the user
/// knows what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ServiceError(pub String);

fn err(msg: impl Into<String>) -> ServiceError {
    ServiceError(msg.into())
}
