//! A full disk shows up as `DISK_FULL`, naming the folder, whether it is
//! seen before a step starts its tools (the free-space estimate) or while
//! ffmpeg writes. The output folder lives on a small tmpfs mounted by the
//! test (we run as root); where mounting is not permitted the tests say so
//! and return.

mod common;

use rayvault::config::Settings;
use rayvault::error::{ErrorCode, StepError};
use rayvault::joblog::JobLog;
use rayvault::steps::{run_step, StepContext, StepName, StepOutput};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A tmpfs of a given size, unmounted when dropped.
struct SmallDisk {
    mount_point: PathBuf,
    _parent: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (e.g. "4m"); `None` (with the reason
    /// printed) where this machine does not let the test mount one.
    fn mount(size: &str) -> Option<SmallDisk> {
        if !cfg!(target_os = "linux") {
            eprintln!("skipped: tmpfs mounts are a Linux test");
            return None;
        }
        let parent = common::tempdir();
        let mount_point = parent.path().join("disk");
        std::fs::create_dir(&mount_point).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&mount_point)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(SmallDisk { mount_point, _parent: parent }),
            Ok(o) => {
                eprintln!("skipped: mounting a tmpfs is not permitted here: {}", String::from_utf8_lossy(&o.stderr).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount_point).status();
    }
}

/// Runs a step with its output folder on `disk` and its log elsewhere.
async fn run_on(disk: &SmallDisk, log_dir: &Path, step: StepName, settings: Settings, payload: Value) -> Result<StepOutput, StepError> {
    let ctx = StepContext {
        job_id: "disk-full-test".into(),
        out_dir: disk.mount_point.join("out"),
        log: JobLog::open(&log_dir.join("worker.log")).unwrap(),
        cancel: CancellationToken::new(),
        settings: Arc::new(settings),
    };
    run_step(step, &payload, &ctx).await
}

fn settings() -> Settings {
    Settings::load_from(None, &[]).unwrap()
}

fn assert_disk_full(result: Result<StepOutput, StepError>, disk: &SmallDisk) -> StepError {
    let err = result.expect_err("the step must fail on a full disk");
    assert_eq!(err.code, ErrorCode::DiskFull, "{err}");
    assert!(err.message.contains(&disk.mount_point.display().to_string()), "the folder is named: {err}");
    assert!(err.message.contains("free space"), "the message says what to do: {err}");
    err
}

/// Three seconds of random noise at 10 fps, 320x240, whose PNG frames
/// barely compress (about 185 KB each).
fn noise_video(dir: &Path) -> PathBuf {
    let out = dir.join("noise.mp4");
    common::run_ok(common::ffmpeg().args([
        "-f", "lavfi", "-i", "nullsrc=s=320x240:r=10:d=3,geq=lum=random(1)*255:cb=random(2)*255:cr=random(3)*255",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
    ]).arg(&out));
    out
}

#[tokio::test]
async fn tts_refuses_to_start_on_a_disk_too_small_for_the_speech() {
    let Some(disk) = SmallDisk::mount("2m") else { return };
    let logs = common::tempdir();
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    // About 3 MB of speech for a 2 MiB disk.
    let text = "This sentence is long enough to take a few seconds to say. ".repeat(20);
    let err = assert_disk_full(run_on(&disk, logs.path(), StepName::TtsRenderChunks, s, json!({"text": text})).await, &disk);
    assert!(err.message.contains("chunk(s) of speech need about"), "{err}");
    // Nothing was rendered: no chunk and no work folder is left.
    let left: Vec<_> = std::fs::read_dir(disk.mount_point.join("out")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn frame_sampling_refuses_to_start_when_the_frames_cannot_fit() {
    let Some(disk) = SmallDisk::mount("4m") else { return };
    let dir = common::tempdir();
    let media = noise_video(dir.path());
    let payload = json!({"media_path": media, "count": 200, "format": "png"});
    let err = assert_disk_full(run_on(&disk, dir.path(), StepName::FrameSampling, settings(), payload).await, &disk);
    assert!(err.message.contains("200 frame(s) need about"), "{err}");
}

#[tokio::test]
async fn a_disk_filling_up_under_ffmpeg_is_disk_full_not_ffmpeg_failed() {
    let Some(disk) = SmallDisk::mount("4m") else { return };
    let dir = common::tempdir();
    let media = noise_video(dir.path());
    // 30 frames are estimated at 2.3 MB (plus the 1 MiB reserve), which a
    // 4 MiB disk has, but as PNG this noise takes about 5.6 MB.
    let payload = json!({"media_path": media, "count": 30, "format": "png"});
    for seek_cost in [1000.0, 0.0] {
        let mut s = settings();
        s.frames.seek_cost_s = seek_cost;
        let err = assert_disk_full(run_on(&disk, dir.path(), StepName::FrameSampling, s, payload.clone()).await, &disk);
        assert!(err.message.contains("No space left on device"), "ffmpeg's own words are kept: {err}");
        // The scratch folder is gone (its removal may be handed to the
        // blocking pool), so the disk is free again for the next round.
        common::wait_until("the scratch folder is removed", std::time::Duration::from_secs(10), || {
            std::fs::read_dir(disk.mount_point.join("out")).map(|d| d.count() == 0).unwrap_or(false)
        });
    }
}

#[tokio::test]
async fn espeak_filling_the_disk_is_disk_full_not_a_truncated_chunk() {
    let Some(disk) = SmallDisk::mount("5m") else { return };
    let logs = common::tempdir();
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    // Without normalisation, whose rewrite would fail on its own, only the
    // engine's output shows the full disk.
    s.tts.normalize_lufs = rayvault::config::NormalizeLufs::Off;
    // 1180 characters are estimated at 3.4 MB (plus the 1 MiB reserve),
    // which a 5 MiB disk has; spoken at 80 words a minute they take about
    // 6 MB. espeak-ng exits 0 after its writes fail, leaving short files.
    let text = "This sentence is long enough to take a few seconds to say. ".repeat(20);
    let result = run_on(&disk, logs.path(), StepName::TtsRenderChunks, s, json!({"text": text, "rate": 80})).await;
    assert_disk_full(result, &disk);
}
