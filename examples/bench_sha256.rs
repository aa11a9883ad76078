//! Benchmark driver for the floor row of scenario 2 (see docs/benchmarks.md):
//! the single-core SHA-256 ceiling, with the same `sha2` crate (and so the
//! same SHA-NI code path, detected at run time) that verifies a download.
//!
//! A verified download cannot be faster than one core hashes its bytes, so
//! this rate is the ceiling scenario 2 is compared with. The buffer is in
//! memory (filled once, hashed once per repeat), so nothing but the hash is
//! timed. Run by bench/run.py; prints JSON on stdout.
//!
//! ```text
//! bench_sha256 MIB REPEATS -> {"ceiling_mb_per_s": R, "mb_per_s": [..], "cpu_mb_per_s": [..],
//!                              "per_cpu": {..}, "cached_cpu_mb_per_s": R, "huge_pages": true|false,
//!                              "sha_ni": true|false}
//! ```
//!
//! The ceiling is the fastest one core hashes at all: on Linux the passes
//! run on each CPU the process may use in turn (`sched_setaffinity`), as
//! the virtual CPUs of a VM need not hash equally fast (one was 30 % slower
//! than the other on the test machine for minutes), and two kinds of pass
//! run on each:
//! - a stream: the whole buffer, memory of the kind the download hashes
//!   (on Linux an anonymous mapping advised `MADV_HUGEPAGE`, as
//!   `client::download`'s buffers are; with the 4 KiB pages a `Vec` gets
//!   where transparent huge pages are `madvise` only, a VM's nested page
//!   walks cost the hash about a fifth: 1,430-1,550 against 1,850-1,880
//!   MB/s on the test machine);
//! - one cached block: the buffer's first MiB hashed again and again from
//!   the core's own cache, what the SHA instructions do with no memory in
//!   the way (about 2,030 MB/s there, against 1,880 for the stream).
//!
//! The download's hasher reads blocks the network thread has just written,
//! still in the shared cache: timed inside a sync on the test machine it
//! hashed at up to 1,990 MB/s of its CPU time, faster than the stream. So
//! the stream is no ceiling, and `ceiling_mb_per_s` is the faster of the
//! two kinds (in practice the cached block).
//!
//! `mb_per_s` divides the stream passes by the wall-clock time, like every
//! rate of scenario 2; `cpu_mb_per_s` by the thread's CPU time, which other
//! load on the machine does not lower (on a quiet machine the two agree);
//! `per_cpu` is each CPU's fastest stream pass, `cached_cpu_mb_per_s` the
//! fastest cached pass on any.

use rayvault::memory::HugePages;
use sha2::{Digest, Sha256};
use std::process::ExitCode;
use std::time::Instant;

/// Bytes handed to the hasher per `update` call: the download's block size.
const BLOCK: usize = 2 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mib), Some(repeats)) = (
        args.get(1).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0),
        args.get(2).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0),
    ) else {
        eprintln!("usage: bench_sha256 MIB REPEATS");
        return ExitCode::from(2);
    };
    // Memory of the kind the download hashes (huge pages on Linux).
    let mut mem = HugePages::new(mib << 20);
    let huge_pages = mem.advised();
    let buf: &mut [u8] = &mut mem;
    // Not zeros: nothing in SHA-256 is faster on them, but the buffer must
    // be really mapped, not the shared zero page.
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2_654_435_761) >> 13) as u8;
    }
    let mut rates = Vec::new();
    let mut cpu_rates = Vec::new();
    let mut per_cpu = Vec::new();
    let mut cached = 0f64;
    let mut digest = String::new();
    for cpu in cpus() {
        let pinned = cpu.is_some_and(pin);
        let mut best = 0f64;
        for _ in 0..repeats {
            let (wall, cpu_rate, hex) = hash_rate(buf, 1);
            digest = hex;
            rates.push(wall);
            if let Some(r) = cpu_rate {
                cpu_rates.push(r);
                best = best.max(r);
            }
        }
        // The first MiB, in this core's cache after the first time, hashed
        // 128 times per pass.
        let hot = &buf[..(1 << 20).min(buf.len())];
        for _ in 0..repeats {
            let (wall, cpu_rate, _) = hash_rate(hot, 128);
            cached = cached.max(cpu_rate.unwrap_or(wall));
        }
        if let (Some(c), true) = (cpu, pinned) {
            per_cpu.push(format!("\"{c}\": {best:.1}"));
        }
    }
    let sha_ni = has_sha_ni();
    let ceiling = cpu_rates.iter().chain(rates.iter()).fold(cached, |a, &b| a.max(b));
    let list = |xs: &[f64]| xs.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ");
    println!(
        "{{\"ceiling_mb_per_s\": {ceiling:.1}, \"mb_per_s\": [{}], \"cpu_mb_per_s\": [{}], \"per_cpu\": {{{}}}, \"cached_cpu_mb_per_s\": {cached:.1}, \
         \"huge_pages\": {huge_pages}, \"sha_ni\": {sha_ni}, \"bytes\": {}, \"digest\": \"{digest}\"}}",
        list(&rates),
        list(&cpu_rates),
        per_cpu.join(", "),
        buf.len()
    );
    ExitCode::SUCCESS
}

/// Hashes `bytes` `times` times over in [`BLOCK`] updates; returns the
/// wall-clock and the thread-CPU rate in MB/s and the last digest.
fn hash_rate(bytes: &[u8], times: usize) -> (f64, Option<f64>, String) {
    let cpu0 = thread_cpu_s();
    let t0 = Instant::now();
    let mut digest = String::new();
    for _ in 0..times {
        let mut h = Sha256::new();
        for block in bytes.chunks(BLOCK) {
            h.update(block);
        }
        digest = hex::encode(h.finalize());
    }
    let s = t0.elapsed().as_secs_f64();
    let mb = (bytes.len() * times) as f64 / 1e6;
    let cpu = match (cpu0, thread_cpu_s()) {
        (Some(a), Some(b)) => Some(mb / (b - a).max(1e-9)),
        _ => None,
    };
    (mb / s, cpu, digest)
}

/// The CPUs this process may run on (Linux), each to be measured on its
/// own; elsewhere one unpinned round (`None`).
#[cfg(target_os = "linux")]
fn cpus() -> Vec<Option<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![None];
        }
        set
    };
    // SAFETY: CPU_ISSET reads the set filled above.
    let list: Vec<Option<usize>> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).map(Some).collect();
    if list.is_empty() {
        vec![None]
    } else {
        list
    }
}

#[cfg(not(target_os = "linux"))]
fn cpus() -> Vec<Option<usize>> {
    vec![None]
}

/// Pins the calling thread to `cpu`; false when the kernel refuses.
#[cfg(target_os = "linux")]
fn pin(cpu: usize) -> bool {
    // SAFETY: cpu_set_t is plain data, set up with the libc macros.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_cpu: usize) -> bool {
    false
}

/// CPU time of the calling thread, in seconds.
#[cfg(unix)]
fn thread_cpu_s() -> Option<f64> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec, which `ts` is.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

#[cfg(not(unix))]
fn thread_cpu_s() -> Option<f64> {
    None
}

/// Whether the CPU has the SHA extensions `sha2` selects at run time.
#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn has_sha_ni() -> bool {
    std::is_x86_feature_detected!("sha") && std::is_x86_feature_detected!("sse4.1")
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn has_sha_ni() -> bool {
    false
}
