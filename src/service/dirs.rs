//! The installing user's folders and account, and where each platform puts
//! a service's definition, environment file and logs within them.

use super::{err, Platform, Program, ServiceError};
use std::path::Path;

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
}
