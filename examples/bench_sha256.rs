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
//! bench_sha256 MIB REPEATS -> {"mb_per_s": [..], "cpu_mb_per_s": [..], "sha_ni": true|false}
//! ```
//!
//! `mb_per_s` divides by the wall-clock time, like every rate of scenario 2;
//! `cpu_mb_per_s` by the thread's CPU time, which other load on the machine
//! does not lower (on a quiet machine the two agree).

use sha2::{Digest, Sha256};
use std::process::ExitCode;
use std::time::Instant;

/// Bytes handed to the hasher per `update` call: the download's block size.
const BLOCK: usize = 1 << 20;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mib), Some(repeats)) = (
        args.get(1).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0),
        args.get(2).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n > 0),
    ) else {
        eprintln!("usage: bench_sha256 MIB REPEATS");
        return ExitCode::from(2);
    };
    // Not zeros: nothing in SHA-256 is faster on them, but the buffer must
    // be really mapped, not the shared zero page.
    let buf: Vec<u8> = (0..mib * (1 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut rates = Vec::with_capacity(repeats);
    let mut cpu_rates = Vec::with_capacity(repeats);
    let mut digest = String::new();
    for _ in 0..repeats {
        let cpu0 = thread_cpu_s();
        let t0 = Instant::now();
        let mut h = Sha256::new();
        for block in buf.chunks(BLOCK) {
            h.update(block);
        }
        digest = hex::encode(h.finalize());
        let s = t0.elapsed().as_secs_f64();
        rates.push(buf.len() as f64 / 1e6 / s);
        if let (Some(a), Some(b)) = (cpu0, thread_cpu_s()) {
            cpu_rates.push(buf.len() as f64 / 1e6 / (b - a).max(1e-9));
        }
    }
    let sha_ni = has_sha_ni();
    let list = |xs: &[f64]| xs.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", ");
    println!(
        "{{\"mb_per_s\": [{}], \"cpu_mb_per_s\": [{}], \"sha_ni\": {sha_ni}, \"bytes\": {}, \"digest\": \"{digest}\"}}",
        list(&rates),
        list(&cpu_rates),
        buf.len()
    );
    ExitCode::SUCCESS
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
