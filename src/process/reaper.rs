//! The record of a running child's process group ([`ChildGroup`]), and the
//! killing at start-up of the groups a dead predecessor recorded ([`reap`]),
//! each checked first against pid reuse, per platform.

use super::identity;
use serde::{Deserialize, Serialize};

/// A started child's process group, as recorded for [`reap`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildGroup {
    /// Unix: the process group id, which is the direct child's pid. Windows:
    /// the direct child's pid (its Job Object holds the rest).
    pub id: u32,
    /// When the direct child started, to tell it from a later process that
    /// got the same pid: on Linux the `starttime` field of
    /// `/proc/<pid>/stat` (clock ticks after boot), elsewhere seconds since
    /// the Unix epoch as the OS reports them.
    pub started: Option<u64>,
    /// Linux: `/proc/sys/kernel/random/boot_id`, so that a record from before
    /// a reboot never matches a process of this boot.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl ChildGroup {
    /// Describes the group of the live child `pid`.
    pub fn of(pid: u32) -> ChildGroup {
        ChildGroup { id: pid, started: identity::start_time(pid), boot_id: identity::boot_id() }
    }
}

/// What [`reap`] did with one recorded group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// It was alive and was killed.
    Killed,
    /// Nothing of it was left.
    Gone,
    /// Its id now belongs to another process (another start time or boot),
    /// which was left alone.
    Reused,
}

/// Kills the process groups that a previous, now dead, process recorded
/// (call it at start-up, before any new child is started). Each group is
/// checked against pid reuse first:
/// - Linux: if a process with the group's id lives, it is killed only if its
///   start time and the boot id match the record. If none lives but the
///   group still has members (the leader died of its parent-death signal,
///   its children did not), the group is killed when every member started
///   after the recorded leader: the kernel never hands out a pid whose number
///   is still a live group's id, so such a group is the recorded one unless
///   the number was freed, reused and the new leader exited since.
/// - Other Unix: the leader must be alive with a matching start time; a group
///   whose leader is gone is killed if it still exists (there is no cheap way
///   to list a group's members there, and the guardian process normally
///   killed it already).
/// - Windows: the Job Object killed the tree when the worker died; a leader
///   still alive with a matching start time is terminated all the same.
pub fn reap(groups: &[ChildGroup]) -> Vec<Reaped> {
    groups.iter().map(reap_one).collect()
}

#[cfg(target_os = "linux")]
fn reap_one(g: &ChildGroup) -> Reaped {
    let pgid = g.id as i32;
    if g.boot_id.is_some() && g.boot_id != identity::boot_id() {
        return Reaped::Reused;
    }
    match identity::start_time(g.id) {
        Some(now) if Some(now) != g.started => return Reaped::Reused,
        Some(_) => {}
        None => {
            let members = identity::group_members(pgid);
            if members.is_empty() {
                return Reaped::Gone;
            }
            // Without the leader's start time there is nothing to compare
            // the members with: leave them.
            let Some(recorded) = g.started else { return Reaped::Reused };
            if members.iter().any(|&(_, started)| started < recorded) {
                return Reaped::Reused;
            }
        }
    }
    // SAFETY: killpg only sends a signal to the group checked above.
    let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
    if rc == 0 {
        Reaped::Killed
    } else {
        Reaped::Gone
    }
}

#[cfg(all(unix, not(target_os = "linux")))]
fn reap_one(g: &ChildGroup) -> Reaped {
    let pgid = g.id as i32;
    match identity::start_time(g.id) {
        Some(now) if Some(now) != g.started => return Reaped::Reused,
        _ => {}
    }
    // SAFETY: signal 0 only checks that the group exists; SIGKILL goes to a
    // group that exists and whose leader, if alive, matched the record.
    unsafe {
        if libc::killpg(pgid, 0) != 0 {
            return Reaped::Gone;
        }
        libc::killpg(pgid, libc::SIGKILL);
    }
    Reaped::Killed
}

#[cfg(not(unix))]
fn reap_one(g: &ChildGroup) -> Reaped {
    let mut sys = sysinfo::System::new();
    let pid = sysinfo::Pid::from_u32(g.id);
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    match sys.process(pid) {
        None => Reaped::Gone,
        Some(p) if Some(p.start_time()) != g.started => Reaped::Reused,
        Some(p) => {
            if p.kill() {
                Reaped::Killed
            } else {
                Reaped::Gone
            }
        }
    }
}
