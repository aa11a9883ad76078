//! Is an interactive desktop session active for this process?
//!
//! `OPENCLAW_TASK` drives a desktop application, so it may only run when a
//! user is logged in at the machine and the worker runs inside that user's
//! session. A worker started as a Windows service lives in session 0, which
//! has no desktop a user can see (the problem GitHub's runner users hit in
//! actions/runner #563), so "a user is logged in somewhere" is not enough:
//! the process itself must be in the active console session.
//!
//! The rules per platform:
//! - Windows: `ProcessIdToSessionId(GetCurrentProcessId())` equals
//!   `WTSGetActiveConsoleSessionId()` and is not session 0.
//! - macOS: the owner of `/dev/console` is a user other than root (root owns
//!   it at the login window).
//! - Linux and other Unix: `DISPLAY` or `WAYLAND_DISPLAY` is set, or
//!   `XDG_SESSION_TYPE` is `x11` or `wayland`.
//!
//! Detection is injectable through [`SessionProbe`] so that tests decide the
//! answer without mutating the process environment, which other tests in
//! the same binary read concurrently.

use std::collections::BTreeMap;

/// The outcome of a session check, with a human explanation either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStatus {
    pub active: bool,
    /// What was found ("DISPLAY=:0", "console owned by uid 501", ...) or
    /// why no session counts as active.
    pub detail: String,
}

impl SessionStatus {
    fn active(detail: impl Into<String>) -> Self {
        SessionStatus { active: true, detail: detail.into() }
    }

    fn absent(detail: impl Into<String>) -> Self {
        SessionStatus { active: false, detail: detail.into() }
    }
}

/// How to decide whether a desktop session is active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionProbe {
    /// The real host, with the platform rule from the module docs.
    Host,
    /// The Linux rule evaluated against the given variables instead of the
    /// process environment (for tests and for diagnosing a config).
    Env(BTreeMap<String, String>),
}

impl SessionProbe {
    /// A probe that evaluates the Linux rule on the given variables.
    pub fn from_env<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Self {
        SessionProbe::Env(vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Runs the check. Cheap (no child process), so it is fine to call per
    /// job and from async code.
    pub fn detect(&self) -> SessionStatus {
        match self {
            SessionProbe::Host => detect_host(),
            SessionProbe::Env(vars) => session_from_env(|k| vars.get(k).cloned()),
        }
    }
}

/// The Linux/Unix desktop rule over an environment lookup.
pub fn session_from_env(get: impl Fn(&str) -> Option<String>) -> SessionStatus {
    let set = |k: &str| get(k).filter(|v| !v.trim().is_empty());
    if let Some(d) = set("WAYLAND_DISPLAY") {
        return SessionStatus::active(format!("WAYLAND_DISPLAY={d}"));
    }
    if let Some(d) = set("DISPLAY") {
        return SessionStatus::active(format!("DISPLAY={d}"));
    }
    match set("XDG_SESSION_TYPE").map(|t| t.to_ascii_lowercase()) {
        Some(t) if t == "x11" || t == "wayland" => SessionStatus::active(format!("XDG_SESSION_TYPE={t}")),
        Some(t) => SessionStatus::absent(format!(
            "XDG_SESSION_TYPE={t} is not a graphical session and neither DISPLAY nor WAYLAND_DISPLAY is set"
        )),
        None => SessionStatus::absent("neither DISPLAY, WAYLAND_DISPLAY nor a graphical XDG_SESSION_TYPE is set"),
    }
}

/// The macOS rule: the console belongs to a logged-in user, not root.
/// `owner_uid` is the uid owning `/dev/console`, `None` if it is unreadable.
pub fn session_from_console_owner(owner_uid: Option<u32>) -> SessionStatus {
    match owner_uid {
        Some(0) => SessionStatus::absent("/dev/console is owned by root: nobody is logged in at the console"),
        Some(uid) => SessionStatus::active(format!("/dev/console is owned by uid {uid}")),
        None => SessionStatus::absent("/dev/console could not be inspected"),
    }
}

/// The Windows rule over the two session ids (`u32::MAX` is what
/// `WTSGetActiveConsoleSessionId` returns when no session is attached).
pub fn session_from_ids(process_session: Option<u32>, console_session: u32) -> SessionStatus {
    match process_session {
        None => SessionStatus::absent("the session of this process could not be determined"),
        Some(0) => SessionStatus::absent(
            "the worker runs in session 0 (as a service), which has no interactive desktop",
        ),
        Some(_) if console_session == u32::MAX => {
            SessionStatus::absent("no session is attached to the physical console")
        }
        Some(own) if own == console_session => {
            SessionStatus::active(format!("the worker runs in the active console session {own}"))
        }
        Some(own) => SessionStatus::absent(format!(
            "the worker runs in session {own} but the active console session is {console_session}"
        )),
    }
}

#[cfg(windows)]
fn detect_host() -> SessionStatus {
    use windows_sys::Win32::System::RemoteDesktop::{ProcessIdToSessionId, WTSGetActiveConsoleSessionId};
    use windows_sys::Win32::System::Threading::GetCurrentProcessId;
    // SAFETY: plain queries; the out pointer is a valid local.
    let (own, console) = unsafe {
        let mut own = 0u32;
        let ok = ProcessIdToSessionId(GetCurrentProcessId(), &mut own);
        ((ok != 0).then_some(own), WTSGetActiveConsoleSessionId())
    };
    session_from_ids(own, console)
}

#[cfg(target_os = "macos")]
fn detect_host() -> SessionStatus {
    use std::os::unix::fs::MetadataExt;
    session_from_console_owner(std::fs::metadata("/dev/console").ok().map(|m| m.uid()))
}

#[cfg(not(any(windows, target_os = "macos")))]
fn detect_host() -> SessionStatus {
    session_from_env(|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_env(vars: &[(&str, &str)], expected: bool) {
        let status = SessionProbe::from_env(vars.iter().copied()).detect();
        assert_eq!(status.active, expected, "{vars:?}: {}", status.detail);
    }

    #[test]
    fn linux_rule() {
        check_env(&[], false);
        check_env(&[("DISPLAY", ":0")], true);
        check_env(&[("DISPLAY", "  ")], false);
        check_env(&[("WAYLAND_DISPLAY", "wayland-0")], true);
        check_env(&[("XDG_SESSION_TYPE", "x11")], true);
        check_env(&[("XDG_SESSION_TYPE", "Wayland")], true);
        check_env(&[("XDG_SESSION_TYPE", "tty")], false);
        check_env(&[("HOME", "/root")], false);
    }

    #[test]
    fn macos_rule() {
        assert!(!session_from_console_owner(Some(0)).active);
        assert!(session_from_console_owner(Some(501)).active);
        assert!(!session_from_console_owner(None).active);
    }

    #[test]
    fn windows_rule() {
        assert!(session_from_ids(Some(1), 1).active);
        assert!(!session_from_ids(Some(0), 0).active, "session 0 is never interactive");
        assert!(!session_from_ids(Some(0), 1).active);
        assert!(!session_from_ids(Some(2), 1).active, "an RDP session is not the console");
        assert!(!session_from_ids(Some(1), u32::MAX).active);
        assert!(!session_from_ids(None, 1).active);
    }
}
