//! The platforms a service can be defined for and the two programs that
//! run as services, with the names each service manager knows them by.

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

    pub(super) fn stem(self) -> &'static str {
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
