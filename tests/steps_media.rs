//! FFMPEG_PROBE and FRAME_SAMPLING against real media made by ffmpeg's lavfi
//! sources, run through `run_step` exactly as the worker runs them.

mod common;

use rayvault::artifacts::sha256_file;
use rayvault::config::Settings;
use rayvault::error::ErrorCode;
use rayvault::joblog::JobLog;
use rayvault::steps::{run_step, StepContext, StepName, StepOutput};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn settings() -> Settings {
    Settings::load_from(None, &[]).expect("default settings")
}

fn context(dir: &Path, settings: Settings) -> StepContext {
    StepContext {
        job_id: "media-test".into(),
        out_dir: dir.join("out"),
        log: JobLog::open(&dir.join("worker.log")).expect("job log"),
        cancel: CancellationToken::new(),
        settings: Arc::new(settings),
    }
}

async fn run(step: StepName, dir: &Path, payload: Value) -> Result<StepOutput, rayvault::error::StepError> {
    run_step(step, &payload, &context(dir, settings())).await
}

async fn probe(dir: &Path, media: &Path) -> Value {
    let out = run(StepName::FfmpegProbe, dir, json!({"media_path": media})).await.expect("probe succeeds");
    out.result
}

fn stream<'a>(result: &'a Value, kind: &str) -> &'a Value {
    result["streams"].as_array().unwrap().iter().find(|s| s["codec_type"] == kind).expect(kind)
}

fn close(v: &Value, expected: f64, tolerance: f64) -> bool {
    v.as_f64().is_some_and(|x| (x - expected).abs() <= tolerance)
}

/// Width and height of an image as ffprobe (not our header parser) sees it;
/// also proves the image decodes.
fn ffprobe_size(image: &Path) -> (u64, u64) {
    let out = common::run_ok(Command::new("ffprobe").args(["-v", "error", "-show_entries", "stream=width,height", "-of", "json"]).arg(image));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["streams"][0]["width"].as_u64().unwrap(), v["streams"][0]["height"].as_u64().unwrap())
}

/// The files in the output folder, sorted (the log lives outside it). A
/// step creates the folder only when it writes its first artifact, so a
/// missing folder holds nothing.
fn listing(out_dir: &Path) -> Vec<String> {
    let entries = match std::fs::read_dir(out_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", out_dir.display()),
    };
    let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[tokio::test]
async fn probe_mp4_gives_numbers_and_keeps_the_raw_json() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "clip.mp4", 2.0, 320, 240, 25);
    let out = run(StepName::FfmpegProbe, dir.path(), json!({"media_path": media})).await.unwrap();
    let r = &out.result;
    assert!(close(&r["duration_s"], 2.0, 0.1), "{r}");
    assert!(r["format_name"].as_str().unwrap().contains("mp4"), "{r}");
    assert_eq!(r["size_bytes"].as_u64(), Some(std::fs::metadata(&media).unwrap().len()));
    assert!(r["bit_rate"].is_u64(), "{r}");

    let v = stream(r, "video");
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(320), Some(240)));
    assert_eq!(v["codec_name"], "h264");
    assert!(close(&v["fps"], 25.0, 1e-9), "{v}");
    assert_eq!(v["vfr"], false);
    assert!(close(&v["duration_s"], 2.0, 0.1), "{v}");
    assert!(v["index"].is_u64() && v["nb_frames"].is_u64(), "{v}");

    let a = stream(r, "audio");
    assert_eq!(a["sample_rate"].as_u64(), Some(48000));
    assert_eq!(a["channels"].as_u64(), Some(1));
    assert!(a["fps"].is_null() && a["vfr"].is_null(), "{a}");

    // The raw output is kept, listed with its true digest, and is the
    // source of the summary (ffprobe itself prints these numbers as strings).
    assert_eq!(out.artifacts.len(), 1);
    let entry = &out.artifacts[0];
    assert_eq!(entry.name, "ffprobe.json");
    let raw_path = dir.path().join("out").join("ffprobe.json");
    assert_eq!(sha256_file(&raw_path).unwrap(), (entry.sha256.clone(), entry.size));
    let raw: Value = serde_json::from_slice(&std::fs::read(&raw_path).unwrap()).unwrap();
    assert!(raw["format"]["duration"].is_string(), "{raw}");
    assert_eq!(listing(&dir.path().join("out")), vec!["ffprobe.json"]);
}

#[tokio::test]
async fn probe_matroska_and_webm_take_stream_durations_from_tags() {
    let dir = common::tempdir();
    let mp4 = common::make_video(dir.path(), "clip.mp4", 2.0, 160, 120, 30);
    let mkv = dir.path().join("clip.mkv");
    common::run_ok(common::ffmpeg().arg("-i").arg(&mp4).args(["-c", "copy"]).arg(&mkv));
    let webm = dir.path().join("clip.webm");
    common::run_ok(
        common::ffmpeg()
            .args(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30:duration=1.5"])
            .args(["-f", "lavfi", "-i", "sine=sample_rate=48000:duration=1.5"])
            .args(["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus"])
            .arg(&webm),
    );
    for (media, expected, codec) in [(&mkv, 2.0, "h264"), (&webm, 1.5, "vp8")] {
        let sub = dir.path().join(media.extension().unwrap());
        std::fs::create_dir_all(&sub).unwrap();
        let r = probe(&sub, media).await;
        let raw: Value = serde_json::from_slice(&std::fs::read(sub.join("out/ffprobe.json")).unwrap()).unwrap();
        // The pitfall is really present: the stream carries no duration.
        assert!(raw["streams"][0].get("duration").is_none(), "{raw}");
        assert!(raw["streams"][0]["tags"]["DURATION"].is_string(), "{raw}");
        let v = stream(&r, "video");
        assert_eq!(v["codec_name"], codec);
        assert!(close(&v["duration_s"], expected, 0.1), "{media:?}: {v}");
        assert!(close(&v["fps"], 30.0, 1e-9), "{v}");
        assert!(close(&stream(&r, "audio")["duration_s"], expected, 0.1), "{r}");
        assert!(r["format_name"].as_str().unwrap().contains("matroska"), "{r}");
    }
}

#[tokio::test]
async fn probe_flags_variable_frame_rate() {
    let dir = common::tempdir();
    let media = dir.path().join("vfr.mp4");
    // 50 frames at 25 fps, then 50 frames at 5 fps.
    common::run_ok(
        common::ffmpeg()
            .args(["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=4"])
            .args(["-vf", "setpts='if(lt(N,50),N/25/TB,(2+(N-50)/5)/TB)'", "-fps_mode", "vfr"])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"])
            .arg(&media),
    );
    let r = probe(dir.path(), &media).await;
    let v = stream(&r, "video");
    assert_eq!(v["vfr"], true, "{v}");
    // The average over 100 frames in ~12 s, not the nominal 25.
    assert!(close(&v["fps"], 100.0 / 11.84, 0.3), "{v}");
}

#[tokio::test]
async fn probe_audio_only_has_no_frame_rate() {
    let dir = common::tempdir();
    let media = common::make_sine_wav(dir.path(), "tone.wav", 1.0, 44100, 2, -12.0);
    let r = probe(dir.path(), &media).await;
    assert_eq!(r["streams"].as_array().unwrap().len(), 1);
    let a = stream(&r, "audio");
    assert!(a["fps"].is_null() && a["vfr"].is_null() && a["width"].is_null(), "{a}");
    assert_eq!((a["sample_rate"].as_u64(), a["channels"].as_u64()), (Some(44100), Some(2)));
    assert!(close(&r["duration_s"], 1.0, 0.01), "{r}");
}

#[tokio::test]
async fn probe_errors_carry_stable_codes() {
    let dir = common::tempdir();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello, this is not a video\n").unwrap();
    let missing = dir.path().join("missing.mp4");
    let check = |payload: Value, expected: ErrorCode| {
        let dir = dir.path().to_path_buf();
        async move {
            let err = run(StepName::FfmpegProbe, &dir, payload.clone()).await.unwrap_err();
            assert_eq!(err.code, expected, "{payload}: {err}");
        }
    };
    check(json!({"media_path": missing}), ErrorCode::InputNotFound).await;
    check(json!({"media_path": dir.path()}), ErrorCode::InputNotFound).await;
    check(json!({"media_path": text}), ErrorCode::InputInvalid).await;
    check(json!({"media_path": ""}), ErrorCode::InputInvalid).await;
    check(json!({"media_path": text, "extra": 1}), ErrorCode::InputInvalid).await;
    check(json!({"path": text}), ErrorCode::InputInvalid).await;
    check(json!({"media_path": 42}), ErrorCode::InputInvalid).await;

    let media = common::make_sine_wav(dir.path(), "tone.wav", 0.5, 48000, 1, -12.0);
    let mut s = settings();
    s.tools.ffprobe = "/nonexistent/ffprobe-missing".into();
    let err = run_step(StepName::FfmpegProbe, &json!({"media_path": media}), &context(dir.path(), s))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FfmpegUnavailable, "{err}");
    assert!(err.message.contains("[tools]"), "{err}");
}

/// Checks a FRAME_SAMPLING result against the files it wrote and returns the
/// frames' (timestamp, width, height, sha256).
fn check_frames(dir: &Path, out: &StepOutput, ext: &str) -> Vec<(f64, u64, u64, String)> {
    let out_dir = dir.join("out");
    let frames = out.result["frames"].as_array().unwrap();
    assert_eq!(out.result["frame_count"].as_u64(), Some(frames.len() as u64));
    assert_eq!(out.artifacts.len(), frames.len());
    let expected_names: Vec<String> = (1..=frames.len()).map(|k| format!("frame_{k:04}.{ext}")).collect();
    // Nothing but the frames: no scratch folder, no half-written file.
    assert_eq!(listing(&out_dir), expected_names);
    frames
        .iter()
        .zip(&out.artifacts)
        .zip(&expected_names)
        .map(|((f, entry), name)| {
            assert_eq!(f["name"], name.as_str());
            assert_eq!(&entry.name, name);
            let path: PathBuf = out_dir.join(name);
            assert_eq!(sha256_file(&path).unwrap(), (entry.sha256.clone(), entry.size));
            let (w, h) = ffprobe_size(&path);
            assert_eq!((f["width"].as_u64(), f["height"].as_u64()), (Some(w), Some(h)), "{f}");
            (f["timestamp_s"].as_f64().unwrap(), w, h, entry.sha256.clone())
        })
        .collect()
}

fn strictly_increasing(ts: &[f64]) -> bool {
    ts.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test]
async fn frames_by_count_seek_on_a_long_video() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "long.mp4", 60.0, 160, 120, 10);
    let out = run(StepName::FrameSampling, dir.path(), json!({"media_path": media, "count": 5})).await.unwrap();
    assert_eq!(out.result["strategy"], "seek", "{}", out.result);
    assert!(out.result["reason"].as_str().unwrap().contains("seeking is cheaper"));
    let frames = check_frames(dir.path(), &out, "jpg");
    assert_eq!(frames.len(), 5);
    let ts: Vec<f64> = frames.iter().map(|f| f.0).collect();
    assert!(strictly_increasing(&ts) && close(&json!(ts[0]), 6.0, 0.1) && close(&json!(ts[4]), 54.0, 0.1), "{ts:?}");
    assert!(frames.iter().all(|f| (f.1, f.2) == (160, 120)));
    let mut shas: Vec<&String> = frames.iter().map(|f| &f.3).collect();
    shas.sort();
    shas.dedup();
    assert_eq!(shas.len(), 5, "five different pictures");
}

#[tokio::test]
async fn frames_by_count_use_one_pass_when_many_are_wanted() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "short.mp4", 4.0, 160, 120, 25);
    let out = run(StepName::FrameSampling, dir.path(), json!({"media_path": media, "count": 50})).await.unwrap();
    assert_eq!(out.result["strategy"], "single_pass", "{}", out.result);
    let frames = check_frames(dir.path(), &out, "jpg");
    assert_eq!(frames.len(), 50);
    let ts: Vec<f64> = frames.iter().map(|f| f.0).collect();
    assert!(strictly_increasing(&ts), "{ts:?}");
    // 50 targets 0.08 s apart on a 25 fps video land on 50 distinct frames.
    let mut shas: Vec<&String> = frames.iter().map(|f| &f.3).collect();
    shas.sort();
    shas.dedup();
    assert_eq!(shas.len(), 50);
}

#[tokio::test]
async fn frames_by_interval_and_up_to_the_very_end() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "short.mp4", 4.0, 160, 120, 25);
    let out = run(StepName::FrameSampling, dir.path(), json!({"media_path": media, "interval_s": 1.0})).await.unwrap();
    let ts: Vec<f64> = check_frames(dir.path(), &out, "jpg").iter().map(|f| f.0).collect();
    assert_eq!(ts, vec![0.0, 1.0, 2.0, 3.0]);

    // A timestamp equal to the duration still yields a frame (the last one).
    let duration = probe(&dir.path().join("p"), &media).await["duration_s"].as_f64().unwrap();
    let sub = dir.path().join("end");
    let out = run(StepName::FrameSampling, &sub, json!({"media_path": media, "timestamps_s": [duration, 0]})).await.unwrap();
    let frames = check_frames(&sub, &out, "jpg");
    assert_eq!(frames.len(), 2);
    assert!(frames[0].0 > duration - 0.1 && frames[1].0 == 0.0, "{frames:?}");
}

/// Both strategies, with the cost model forced either way, must pick the
/// same pictures: the first frame at or after each target time. PNG is
/// lossless and deterministic, so the same frame gives the same bytes. The
/// interval case puts targets exactly on frame times (0.6 s and 1.2 s at
/// 25 fps).
#[tokio::test]
async fn seek_and_single_pass_agree_with_png_and_scaling() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "hd.mp4", 1.5, 1280, 720, 25);
    let cases = [
        (json!({"timestamps_s": [1.13, 0.21, 0.53]}), vec![1.13, 0.21, 0.53]),
        // Count targets sit mid-way in four equal shares of the duration
        // (filled in below, since the AAC track makes it a little over 1.5 s).
        (json!({"count": 4}), vec![]),
        (json!({"interval_s": 0.6}), vec![0.0, 0.6, 1.2]),
    ];
    for (case, (selector, expected_times)) in cases.into_iter().enumerate() {
        let mut payload = json!({"media_path": media, "format": "png", "max_width": 320});
        payload.as_object_mut().unwrap().extend(selector.as_object().unwrap().clone());
        let mut results = Vec::new();
        for (name, seek_cost) in [("seek", 0.0), ("single_pass", 1000.0)] {
            let mut s = settings();
            s.frames.seek_cost_s = seek_cost;
            let sub = dir.path().join(format!("{case}-{name}"));
            let out = run_step(StepName::FrameSampling, &payload, &context(&sub, s)).await.unwrap();
            assert_eq!(out.result["strategy"], name);
            let frames = check_frames(&sub, &out, "png");
            // Timestamps come back in the caller's order.
            let times: Vec<f64> = frames.iter().map(|f| f.0).collect();
            let duration = out.result["duration_s"].as_f64().unwrap();
            let expected_times = if expected_times.is_empty() {
                (0..4).map(|k| (k as f64 + 0.5) * duration / 4.0).collect()
            } else {
                expected_times.clone()
            };
            assert_eq!(times.len(), expected_times.len());
            assert!(times.iter().zip(&expected_times).all(|(a, b)| (a - b).abs() < 1e-9), "{times:?}");
            assert!(frames.iter().all(|f| (f.1, f.2) == (320, 180)), "{frames:?}");
            results.push(frames.into_iter().map(|f| f.3).collect::<Vec<_>>());
        }
        assert_eq!(results[0], results[1], "{payload}: seek and single pass took different frames");
    }
}

#[tokio::test]
async fn frame_sampling_errors_carry_stable_codes() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "short.mp4", 2.0, 160, 120, 25);
    let tone = common::make_sine_wav(dir.path(), "tone.wav", 1.0, 48000, 1, -12.0);
    for (payload, expected) in [
        (json!({"media_path": media, "timestamps_s": [0.5, 9.0]}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "count": 3, "interval_s": 1.0}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "count": 0}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "interval_s": 0}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "count": 2, "max_width": 8}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "count": 2, "format": "gif"}), ErrorCode::InputInvalid),
        (json!({"media_path": media, "interval_s": 0.0001}), ErrorCode::InputInvalid),
        (json!({"media_path": tone, "count": 2}), ErrorCode::InputInvalid),
        (json!({"media_path": dir.path().join("nope.mp4"), "count": 2}), ErrorCode::InputNotFound),
    ] {
        let err = run(StepName::FrameSampling, dir.path(), payload.clone()).await.unwrap_err();
        assert_eq!(err.code, expected, "{payload}: {err}");
    }

    // ffprobe works but ffmpeg is missing: nothing is left behind.
    let mut s = settings();
    s.tools.ffmpeg = "/nonexistent/ffmpeg-missing".into();
    let sub = dir.path().join("noffmpeg");
    let err = run_step(StepName::FrameSampling, &json!({"media_path": media, "count": 2}), &context(&sub, s))
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::FfmpegUnavailable, "{err}");
    common::wait_until("the scratch folder is removed", Duration::from_secs(5), || listing(&sub.join("out")).is_empty());
}

#[tokio::test]
async fn a_cancelled_job_stops_before_writing_frames() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "short.mp4", 1.0, 160, 120, 25);
    let ctx = context(dir.path(), settings());
    ctx.cancel.cancel();
    let err = run_step(StepName::FrameSampling, &json!({"media_path": media, "count": 3}), &ctx).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled, "{err}");
    assert!(listing(&dir.path().join("out")).is_empty());
}

/// The frames a FRAME_SAMPLING result lists, checked against the files in
/// the output folder, as (timestamp, sha256); cheaper than `check_frames`
/// (no ffprobe per frame) for results with hundreds of frames.
fn frame_digests(dir: &Path, out: &StepOutput, ext: &str) -> Vec<(f64, String)> {
    let out_dir = dir.join("out");
    let frames = out.result["frames"].as_array().unwrap();
    assert_eq!(out.artifacts.len(), frames.len());
    let expected_names: Vec<String> = (1..=frames.len()).map(|k| format!("frame_{k:04}.{ext}")).collect();
    assert_eq!(listing(&out_dir), expected_names);
    frames
        .iter()
        .zip(&out.artifacts)
        .map(|(f, entry)| {
            assert_eq!(f["name"], entry.name.as_str());
            assert_eq!(sha256_file(&out_dir.join(&entry.name)).unwrap(), (entry.sha256.clone(), entry.size));
            (f["timestamp_s"].as_f64().unwrap(), entry.sha256.clone())
        })
        .collect()
}

/// The documented maximum of 500 `timestamps_s` works with both strategies
/// (ffmpeg's expression parser used to refuse the single pass's select
/// filter from about a hundred times on), and both take the same pictures.
#[tokio::test]
async fn five_hundred_timestamps_work_with_both_strategies() {
    let dir = common::tempdir();
    let media = common::make_video(dir.path(), "short.mp4", 2.0, 160, 120, 25);
    // Ten targets inside each 40 ms frame interval of the first 48 frames,
    // none within 5 ms of a frame time, so that each target's frame (the
    // first at or after it) is beyond doubt.
    let times: Vec<f64> = (0..500).map(|k| (k % 48) as f64 * 0.04 + 0.005 + (k / 48) as f64 * 0.0025).collect();
    assert_eq!(times.len(), rayvault::steps::frames::MAX_TIMESTAMPS);
    let payload = json!({"media_path": media, "timestamps_s": times});
    let mut digests = Vec::new();
    for (name, seek_cost) in [("single_pass", 1000.0), ("seek", 0.0)] {
        let mut s = settings();
        s.frames.seek_cost_s = seek_cost;
        let sub = dir.path().join(name);
        let out = run_step(StepName::FrameSampling, &payload, &context(&sub, s))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.result["strategy"], name);
        let frames = frame_digests(&sub, &out, "jpg");
        assert_eq!(frames.len(), 500);
        assert!(frames.iter().zip(&times).all(|(f, t)| (f.0 - t).abs() < 1e-9), "timestamps in the caller's order");
        let mut distinct: Vec<&String> = frames.iter().map(|f| &f.1).collect();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 48, "{name}: one picture per frame interval");
        digests.push(frames.into_iter().map(|f| f.1).collect::<Vec<_>>());
    }
    assert_eq!(digests[0], digests[1], "seek and single pass took different frames");
}
