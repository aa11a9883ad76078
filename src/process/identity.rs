//! Who a process is: start times and, on Linux, group membership and the
//! boot id. A recorded child group is told apart from a later process that
//! got the same pid by these, when it is recorded and again when it is reaped.

#[cfg(target_os = "linux")]
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after its last ')' start with field 3 (the state).
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// The process's start time: clock ticks after boot (field 22).
#[cfg(target_os = "linux")]
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // A zombie is dead already; it only waits for its parent.
    if fields.first().is_some_and(|s| s == "Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

#[cfg(target_os = "linux")]
pub(super) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

/// Live members of the process group `pgid`, with their start times.
#[cfg(target_os = "linux")]
pub(super) fn group_members(pgid: i32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let f = stat_fields(pid)?;
            // Field 5 is the process group, field 22 the start time.
            let alive = f.first().is_some_and(|s| s != "Z");
            (alive && f.get(2)?.parse::<i32>().ok()? == pgid).then_some((pid, f.get(19)?.parse().ok()?))
        })
        .collect()
}

#[cfg(not(target_os = "linux"))]
pub(super) fn start_time(pid: u32) -> Option<u64> {
    let mut sys = sysinfo::System::new();
    let pid = sysinfo::Pid::from_u32(pid);
    sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[pid]), true);
    sys.process(pid).map(|p| p.start_time())
}

#[cfg(not(target_os = "linux"))]
pub(super) fn boot_id() -> Option<String> {
    None
}
