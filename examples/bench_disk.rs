//! Benchmark driver for the disk floor of scenario 2 (see docs/benchmarks.md):
//! how fast this disk takes the bytes of a verified download, written the way
//! the download's writer writes them (`client::part_file`): 2 MiB blocks of
//! incompressible bytes in memory advised into huge pages, sent with
//! `O_DIRECT` four blocks per `pwritev` (the writer's batch when blocks queue
//! up), then one `fdatasync`. No network and no hash: a download that writes
//! its file cannot beat this.
//!
//! `dd if=/dev/zero oflag=direct bs=2M`, the row's earlier driver, wrote
//! zeros from 4 KiB pages: a 2 MiB write from 4 KiB pages is 512 segments,
//! split into several requests by a disk that takes 254 per request, and a
//! VM's disk may take zeros faster than real data. Run by bench/s_sync.py;
//! prints JSON on stdout.
//!
//! ```text
//! bench_disk PATH MIB -> {"mb_per_s": R, "o_direct": true|false}
//! ```
//!
//! The file at PATH is created (truncated) and removed afterwards. Where the
//! file system refuses `O_DIRECT` (or off Linux) the blocks go through the
//! page cache and `o_direct` is false.

use rayvault::memory::HugePages;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

/// The download's block size and its writer's batch.
const BLOCK: usize = 2 << 20;
const BATCH: usize = 4;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(path), Some(mib)) = (args.get(1), args.get(2).and_then(|s| s.parse::<usize>().ok()).filter(|&n| n >= 2)) else {
        eprintln!("usage: bench_disk PATH MIB");
        return ExitCode::from(2);
    };
    let blocks = mib / 2;
    let bufs: Vec<HugePages> = (0..BATCH).map(|i| block(i as u64)).collect();
    let t0 = Instant::now();
    let result = write_all(path, blocks, &bufs);
    let secs = t0.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(path);
    match result {
        Ok(direct) => {
            println!("{{\"mb_per_s\": {:.1}, \"o_direct\": {direct}}}", (blocks * BLOCK) as f64 / 1e6 / secs);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench_disk: writing {path}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Writes `blocks` blocks to a new file at `path` and syncs it; says
/// whether the writes went with `O_DIRECT`.
fn write_all(path: &str, blocks: usize, bufs: &[HugePages]) -> std::io::Result<bool> {
    let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
    let mut direct = direct_handle(path);
    let mut done = 0;
    while done < blocks {
        let n = (blocks - done).min(BATCH);
        let batch: Vec<&[u8]> = bufs[..n].iter().map(|b| &b[..]).collect();
        if let Some(d) = &direct {
            match write_direct(d, &batch, (done * BLOCK) as u64) {
                Ok(()) => {
                    done += n;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => direct = None,
                Err(e) => return Err(e),
            }
        }
        for b in &batch {
            file.write_all(b)?;
        }
        done += n;
    }
    file.sync_data()?;
    Ok(direct.is_some())
}

/// One block of incompressible bytes (a xorshift stream seeded by `seed`)
/// in huge pages, as the download's buffers are.
fn block(seed: u64) -> HugePages {
    let mut buf = HugePages::new(BLOCK);
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (seed + 1);
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    buf
}

#[cfg(target_os = "linux")]
fn direct_handle(path: &str) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok()
}

#[cfg(not(target_os = "linux"))]
fn direct_handle(_path: &str) -> Option<File> {
    None
}

/// One `pwritev` of the batch at `offset`, finished with more calls if the
/// kernel took only part of it.
#[cfg(target_os = "linux")]
fn write_direct(file: &File, batch: &[&[u8]], offset: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let iov: Vec<libc::iovec> = batch.iter().map(|b| libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() }).collect();
    let total: usize = batch.iter().map(|b| b.len()).sum();
    let off = libc::off_t::try_from(offset).map_err(|_| std::io::Error::other("offset too large"))?;
    // SAFETY: the iovecs point into blocks that live for the whole program.
    let n = unsafe { libc::pwritev(file.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int, off) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A short write: the rest block by block (aligned: whole blocks only
    // are ever short-written here in practice; anything else is an error).
    let mut at = n as usize;
    while at < total {
        let (i, within) = (at / BLOCK, at % BLOCK);
        let k = file.write_at(&batch[i][within..], offset + at as u64)?;
        if k == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "the file took no more bytes"));
        }
        at += k;
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_direct(_file: &File, _batch: &[&[u8]], _offset: u64) -> std::io::Result<()> {
    Err(std::io::Error::from_raw_os_error(libc::EINVAL))
}
