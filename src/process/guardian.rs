//! The guardian: one `/bin/sh` per process that kills every live child
//! process group when that process dies. A parent-death signal reaches only
//! the direct child, so on every Unix this is what kills the rest of a group.

use std::io::Write;
use std::os::unix::process::CommandExt as _;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

/// The guardian reads `+ <pgid>` and `- <pgid>` lines on its stdin, a pipe
/// whose only writer is this process (the write end is close-on-exec, so no
/// child inherits it). When this process dies, however it dies, the kernel
/// closes the pipe; the guardian's `read` then ends and it sends SIGKILL to
/// every group still listed.
const SCRIPT: &str = r#"groups=' '
while read -r op id; do
  case "$op" in
    +) groups="$groups$id " ;;
    -) case "$groups" in *" $id "*) groups="${groups%%" $id "*} ${groups#*" $id "}" ;; esac ;;
  esac
done
for g in $groups; do kill -9 "-$g" 2>/dev/null; done
"#;

/// The write end of the guardian's stdin; the guardian is started on first
/// use. It runs in a process group of its own, so a Ctrl-C in the terminal
/// does not stop it before the worker, and with an empty environment.
fn pipe() -> &'static Mutex<Option<ChildStdin>> {
    static PIPE: OnceLock<Mutex<Option<ChildStdin>>> = OnceLock::new();
    PIPE.get_or_init(|| {
        let started = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn();
        Mutex::new(match started {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                // Nobody waits for it: it ends only after this process.
                drop(child);
                stdin
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the child guardian (/bin/sh); children may outlive a killed worker until its next start");
                None
            }
        })
    })
}

fn send(line: &str) {
    let mut guard = match pipe().lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(stdin) = guard.as_mut() {
        if let Err(e) = stdin.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "the child guardian is gone; children may outlive a killed worker until its next start");
            *guard = None;
        }
    }
}

/// Adds a process group to the guardian's list.
pub(super) fn watch(pgid: i32) {
    send(&format!("+ {pgid}\n"));
}

/// Removes a process group from the list (it is dead).
pub(super) fn unwatch(pgid: i32) {
    send(&format!("- {pgid}\n"));
}
