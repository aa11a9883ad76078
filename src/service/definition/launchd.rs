//! The macOS LaunchAgent plist, the only definition that holds the
//! secret itself (in `EnvironmentVariables`).

use super::xml_escape;
use crate::service::{is_secret, ServiceSpec};
use std::fmt::Write as _;

impl ServiceSpec {
    /// The plist; `redact` hides secret values.
    pub(super) fn launchd_plist(&self, redact: bool) -> String {
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
}
