//! Helpers shared by the integration tests: temp dirs, free loopback ports,
//! waiting on a condition with a deadline, and media generated with ffmpeg
//! and espeak-ng. Each test binary includes this with `mod common;` and uses
//! what it needs.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A fresh temporary directory, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("rayvault-test-").tempdir().expect("tempdir")
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `cond` until it returns true or `timeout` passes; panics with `what`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs a command and panics with its stderr if it fails.
pub fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// ffmpeg with quiet logging and no stdin.
pub fn ffmpeg() -> Command {
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y"]);
    c
}

/// A test video from lavfi: `secs` long, `w`x`h` at `fps`, H.264 + AAC, mp4.
pub fn make_video(dir: &Path, name: &str, secs: f64, w: u32, h: u32, fps: u32) -> PathBuf {
    let out = dir.join(name);
    run_ok(ffmpeg().args([
        "-f", "lavfi", "-i", &format!("testsrc2=size={w}x{h}:rate={fps}:duration={secs}"),
        "-f", "lavfi", "-i", &format!("sine=frequency=440:sample_rate=48000:duration={secs}"),
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", &format!("{}", fps * 2),
        "-c:a", "aac", "-shortest",
    ]).arg(&out));
    out
}

/// A sine WAV: `secs` long at `rate` Hz with `channels`, amplitude in dBFS.
pub fn make_sine_wav(dir: &Path, name: &str, secs: f64, rate: u32, channels: u32, dbfs: f64) -> PathBuf {
    let out = dir.join(name);
    let amp = 10f64.powf(dbfs / 20.0);
    let expr = format!("{amp}*sin(2*PI*1000*t)");
    let exprs = vec![expr; channels as usize].join("|");
    run_ok(ffmpeg().args([
        "-f", "lavfi", "-i", &format!("aevalsrc={exprs}:s={rate}:d={secs}"),
        "-c:a", "pcm_s16le",
    ]).arg(&out));
    out
}

/// Speech rendered by espeak-ng into a WAV (22050 Hz mono).
pub fn make_speech_wav(dir: &Path, name: &str, text: &str) -> PathBuf {
    let out = dir.join(name);
    let txt = dir.join(format!("{name}.txt"));
    std::fs::write(&txt, text).unwrap();
    run_ok(Command::new("espeak-ng").arg("-w").arg(&out).arg("-f").arg(&txt));
    out
}
