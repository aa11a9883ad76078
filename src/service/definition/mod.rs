//! The service definition's text for each service manager: a systemd user
//! unit, a launchd plist, a Task Scheduler XML or a description of the
//! Windows service, and the XML escaping that the plist and the Task XML
//! share.

mod launchd;
mod systemd;
mod windows;

pub use windows::windows_quote;

use super::{Platform, ServiceSpec};

impl ServiceSpec {
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
}

/// Text for an XML element or attribute.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(xml_escape("a<b & 'c'"), "a&lt;b &amp; &apos;c&apos;");
    }
}
