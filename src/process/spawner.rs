//! The one thread that forks children on Linux.
//!
//! `PR_SET_PDEATHSIG` fires when the thread that forked the child exits,
//! not when its process does, so a child forked by a tokio blocking-pool
//! thread would be killed as soon as that thread retires after a few idle
//! seconds. This thread lives as long as the process and does nothing but
//! spawn, so it never exits before the process does.

use std::os::unix::process::CommandExt as _;
use std::sync::mpsc;
use std::sync::OnceLock;
use tokio::process::{Child, Command};

struct Request {
    cmd: Command,
    /// The caller's runtime: the child's pipes and exit watcher belong
    /// to it, so the spawn runs inside it.
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<Child>>,
}

fn queue() -> Option<&'static mpsc::Sender<Request>> {
    static QUEUE: OnceLock<Option<mpsc::Sender<Request>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            let started = std::thread::Builder::new().name("rayvault-spawner".into()).spawn(move || {
                for req in rx {
                    let _inside = req.runtime.enter();
                    let mut cmd = req.cmd;
                    // A caller that gave up drops the child, which kills
                    // it (kill_on_drop).
                    let _ = req.reply.send(cmd.spawn());
                }
            });
            match started {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the spawner thread; children will not get a parent-death signal");
                    None
                }
            }
        })
        .as_ref()
}

/// Spawns `cmd` on the spawner thread, with SIGKILL as its parent-death
/// signal.
pub(super) async fn spawn(mut cmd: Command) -> std::io::Result<Child> {
    let Some(queue) = queue() else { return cmd.spawn() };
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (prctl, getppid), allocating
    // nothing on its success path.
    unsafe {
        cmd.as_std_mut().pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between the fork and the prctl:
            // then the signal will never come, and the child must not run.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = tokio::sync::oneshot::channel();
    let req = Request { cmd, runtime: tokio::runtime::Handle::current(), reply };
    queue.send(req).map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer.await.map_err(|_| std::io::Error::other("the spawner thread dropped the request"))?
}
