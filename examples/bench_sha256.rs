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
//! bench_sha256 MIB REPEATS -> {"mb_per_s": [..], "sha_ni": true|false}
//! ```

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
    let mut digest = String::new();
    for _ in 0..repeats {
        let t0 = Instant::now();
        let mut h = Sha256::new();
        for block in buf.chunks(BLOCK) {
            h.update(block);
        }
        digest = hex::encode(h.finalize());
        let s = t0.elapsed().as_secs_f64();
        rates.push(buf.len() as f64 / 1e6 / s);
    }
    let sha_ni = has_sha_ni();
    println!(
        "{{\"mb_per_s\": [{}], \"sha_ni\": {sha_ni}, \"bytes\": {}, \"digest\": \"{digest}\"}}",
        rates.iter().map(|r| format!("{r:.1}")).collect::<Vec<_>>().join(", "),
        buf.len()
    );
    ExitCode::SUCCESS
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
