//! The systemd user unit, with `ExecStart=` words quoted and specifiers
//! escaped the way systemd reads them back.

use crate::service::ServiceSpec;
use std::fmt::Write as _;

impl ServiceSpec {
    /// The `[Unit]`, `[Service]` and `[Install]` sections of the user unit.
    pub(super) fn systemd_unit(&self) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(systemd_quote("/a b/%h$x"), r#""/a b/%%h$$x""#);
        assert_eq!(systemd_quote("--port"), "--port");
    }
}
