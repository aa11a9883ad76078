//! AUDIO_POSTCHECK through `run_step`, as the worker runs it. The EBU R128
//! compliance signals (EBU Tech 3341 and 3342) are generated here, written
//! as WAV by a small writer below, and measured by the step; TTS_RENDER_CHUNKS
//! is tested in `steps_audio_tts.rs`.

mod common;
mod steps_audio_support;

use rayvault::artifacts::sha256_file;
use rayvault::error::ErrorCode;
use serde_json::{json, Value};
use std::path::Path;
use steps_audio_support::{num, postcheck};

// ---------------------------------------------------------------------------
// Signals and a WAV writer.

/// Sample encodings the writer supports.
#[derive(Clone, Copy)]
enum Enc {
    Pcm16,
    Pcm24,
    Float32,
}

/// Writes interleaved samples as a canonical WAV file.
fn write_wav(path: &Path, rate: u32, channels: u16, enc: Enc, samples: &[f32]) {
    let (format_tag, bytes): (u16, u16) = match enc {
        Enc::Pcm16 => (1, 2),
        Enc::Pcm24 => (1, 3),
        Enc::Float32 => (3, 4),
    };
    let data_len = samples.len() as u32 * bytes as u32;
    let mut b = Vec::with_capacity(44 + data_len as usize);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&format_tag.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * channels as u32 * bytes as u32).to_le_bytes());
    b.extend_from_slice(&(channels * bytes).to_le_bytes());
    b.extend_from_slice(&(bytes * 8).to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    match enc {
        Enc::Pcm16 => {
            for &x in samples {
                let v = (x as f64 * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        Enc::Pcm24 => {
            for &x in samples {
                let v = (x as f64 * 8_388_608.0).round().clamp(-8_388_608.0, 8_388_607.0) as i32;
                b.extend_from_slice(&v.to_le_bytes()[..3]);
            }
        }
        Enc::Float32 => {
            for &x in samples {
                b.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    std::fs::write(path, b).expect("write wav");
}

/// A signal's consecutive parts: (seconds, dBFS or `None` for silence).
type Parts = Vec<(f64, Option<f64>)>;

/// Stereo 48 kHz 1 kHz sine in consecutive parts of (seconds, dBFS per
/// channel); `None` is digital silence. One period is exactly 48 samples,
/// so a table replaces a sine per sample.
fn tone_parts(parts: &[(f64, Option<f64>)]) -> Vec<f32> {
    let period: Vec<f64> = (0..48).map(|n| (2.0 * std::f64::consts::PI * n as f64 / 48.0).sin()).collect();
    let total: usize = parts.iter().map(|(s, _)| (s * 48_000.0).round() as usize).sum();
    let mut out = Vec::with_capacity(total * 2);
    let mut n = 0usize;
    for &(secs, level) in parts {
        let amp = level.map_or(0.0, |db| 10f64.powf(db / 20.0));
        for _ in 0..(secs * 48_000.0).round() as usize {
            let x = (amp * period[n % 48]) as f32;
            out.push(x);
            out.push(x);
            n += 1;
        }
    }
    out
}

/// Stereo 48 kHz sine at fs/4 with the given amplitude and phase (EBU
/// 3341 true-peak cases).
fn quarter_rate_sine(amplitude: f64, phase_deg: f64, secs: f64) -> Vec<f32> {
    let phase = phase_deg.to_radians();
    let frames = (secs * 48_000.0) as usize;
    let mut out = Vec::with_capacity(frames * 2);
    for n in 0..frames {
        let x = (amplitude * (std::f64::consts::FRAC_PI_2 * n as f64 + phase).sin()) as f32;
        out.push(x);
        out.push(x);
    }
    out
}

/// Mono samples at `rate`: parts of (seconds, amplitude) of a 441 Hz sine,
/// amplitude 0 being digital silence.
fn mono_parts(rate: u32, parts: &[(f64, f64)]) -> Vec<f32> {
    let mut out = Vec::new();
    let mut n = 0u64;
    for &(secs, amp) in parts {
        for _ in 0..(secs * rate as f64).round() as usize {
            out.push((amp * (2.0 * std::f64::consts::PI * 441.0 * n as f64 / rate as f64).sin()) as f32);
            n += 1;
        }
    }
    out
}

fn file_entry<'a>(result: &'a Value, path: &Path) -> &'a Value {
    result["files"]
        .as_array()
        .expect("files")
        .iter()
        .find(|f| f["path"] == path.to_string_lossy().as_ref())
        .unwrap_or_else(|| panic!("no entry for {}", path.display()))
}

fn codes(entry: &Value) -> Vec<String> {
    entry["problems"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap().to_string()).collect()
}

// ---------------------------------------------------------------------------
// AUDIO_POSTCHECK

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebu_3341_loudness_and_true_peak_cases() {
    let dir = common::tempdir();
    let loudness_cases: Vec<(&str, Parts)> = vec![
        ("3341-1", vec![(20.0, Some(-23.0))]),
        ("3341-2", vec![(20.0, Some(-33.0))]),
        ("3341-3", vec![(10.0, Some(-36.0)), (60.0, Some(-23.0)), (10.0, Some(-36.0))]),
        (
            "3341-4",
            vec![(10.0, Some(-72.0)), (10.0, Some(-36.0)), (60.0, Some(-23.0)), (10.0, Some(-36.0)), (10.0, Some(-72.0))],
        ),
        ("3341-5", vec![(20.0, Some(-26.0)), (20.1, Some(-20.0)), (20.0, Some(-26.0))]),
    ];
    let expected_i = [-23.0, -33.0, -23.0, -23.0, -23.0];
    let mut paths = Vec::new();
    for (name, parts) in &loudness_cases {
        let p = dir.path().join(format!("{name}.wav"));
        write_wav(&p, 48_000, 2, Enc::Pcm24, &tone_parts(parts));
        paths.push(p);
    }
    // True peak: fs/4 sines; the last goes above full scale, so float.
    let tp_cases = [("3341-15", 0.5, 0.0), ("3341-16", 0.5, 45.0), ("3341-17", 0.5, 60.0), ("3341-18", 0.5, 67.5), ("3341-19", 1.41, 45.0)];
    let expected_tp = [-6.0, -6.0, -6.0, -6.0, 3.0];
    for (name, amp, phase) in tp_cases {
        let p = dir.path().join(format!("{name}.wav"));
        write_wav(&p, 48_000, 2, Enc::Float32, &quarter_rate_sine(amp, phase, 2.0));
        paths.push(p);
    }
    let out = postcheck(dir.path(), json!({"audio_paths": paths})).await.expect("postcheck runs");
    for (p, want) in paths[..5].iter().zip(expected_i) {
        let f = file_entry(&out.result, p);
        let i = num(f, "integrated_lufs");
        assert!((i - want).abs() <= 0.1, "{}: I = {i}, want {want} ± 0.1", p.display());
        assert_eq!(f["sample_rate"], 48_000);
        assert_eq!(f["channels"], 2);
    }
    for (p, want) in paths[5..].iter().zip(expected_tp) {
        let f = file_entry(&out.result, p);
        let tp = num(f, "true_peak_dbtp");
        assert!(tp <= want + 0.2 && tp >= want - 0.4, "{}: TP = {tp}, want {want} +0.2/-0.4", p.display());
    }
    // The 45 degree cases hide their peak between samples.
    let f16 = file_entry(&out.result, &paths[6]);
    assert!(num(f16, "sample_peak_dbfs") < -8.5, "{f16}");
    // 3341-1 at -23 LUFS fails the default -16 ± 2 target, with a reason.
    assert!(codes(file_entry(&out.result, &paths[0])).contains(&"LOUDNESS_OUT_OF_RANGE".to_string()));
    assert_eq!(out.result["passed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ebu_3342_loudness_range_cases() {
    let dir = common::tempdir();
    let cases: Vec<(&str, Parts, f64)> = vec![
        ("3342-1", vec![(20.0, Some(-20.0)), (20.0, Some(-30.0))], 10.0),
        ("3342-2", vec![(20.0, Some(-20.0)), (20.0, Some(-15.0))], 5.0),
        ("3342-3", vec![(20.0, Some(-40.0)), (20.0, Some(-20.0))], 20.0),
        (
            "3342-4",
            vec![(20.0, Some(-50.0)), (20.0, Some(-35.0)), (20.0, Some(-20.0)), (20.0, Some(-35.0)), (20.0, Some(-50.0))],
            15.0,
        ),
    ];
    let mut paths = Vec::new();
    for (name, parts, _) in &cases {
        let p = dir.path().join(format!("{name}.wav"));
        write_wav(&p, 48_000, 2, Enc::Pcm24, &tone_parts(parts));
        paths.push(p);
    }
    let out = postcheck(dir.path(), json!({"audio_paths": paths})).await.expect("postcheck runs");
    assert!(out.artifacts.is_empty() && !dir.path().join("out").exists(), "no report artifact unless asked: {:?}", out.artifacts);
    for (p, (name, _, want)) in paths.iter().zip(&cases) {
        let lra = num(file_entry(&out.result, p), "lra_lu");
        assert!((lra - want).abs() <= 1.0, "{name}: LRA = {lra}, want {want} ± 1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_and_short_clips_give_null_loudness_and_a_code() {
    let dir = common::tempdir();
    let silent = dir.path().join("silent.wav");
    write_wav(&silent, 48_000, 2, Enc::Pcm16, &vec![0.0; 96_000 * 2]);
    let short = dir.path().join("short.wav");
    write_wav(&short, 22_050, 1, Enc::Pcm16, &mono_parts(22_050, &[(0.2, 0.3)]));
    let out = postcheck(dir.path(), json!({"audio_paths": [silent, short], "report_artifact": true})).await.expect("postcheck runs");

    let s = file_entry(&out.result, &silent);
    assert!(s["integrated_lufs"].is_null() && s["true_peak_dbtp"].is_null() && s["sample_peak_dbfs"].is_null(), "{s}");
    assert!(s["lra_lu"].is_null());
    assert_eq!(codes(s), vec!["SILENT"]);
    assert!((num(s, "duration_s") - 2.0).abs() < 1e-6);

    let c = file_entry(&out.result, &short);
    assert!(c["integrated_lufs"].is_null(), "{c}");
    assert!(num(c, "true_peak_dbtp") > -12.0, "a 200 ms clip still has a peak: {c}");
    let cc = codes(c);
    assert!(cc.contains(&"TOO_SHORT_FOR_LOUDNESS".to_string()) && cc.contains(&"TOO_SHORT".to_string()), "{cc:?}");
    assert_eq!(c["passed"], false);

    // The report artifact is the same, valid JSON (no NaN or Infinity),
    // and the manifest digest matches the file.
    let report_path = dir.path().join("out").join("postcheck_report.json");
    let text = std::fs::read_to_string(&report_path).expect("report written");
    let parsed: Value = serde_json::from_str(&text).expect("report is valid JSON");
    assert_eq!(parsed, out.result);
    assert!(!text.contains("NaN") && !text.contains("inf"));
    let entry = &out.artifacts[0];
    assert_eq!(entry.name, "postcheck_report.json");
    assert_eq!(entry.sha256, sha256_file(&report_path).unwrap().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipped_samples_are_counted() {
    let dir = common::tempdir();
    // A sine driven to 1.5 x full scale, hard-clipped by the 16-bit writer.
    let raw = mono_parts(44_100, &[(1.0, 1.5)]);
    let expected = raw.iter().filter(|x| x.abs() >= 1.0).count() as u64;
    assert!(expected > 1000);
    let clipped = dir.path().join("clipped.wav");
    write_wav(&clipped, 44_100, 1, Enc::Pcm16, &raw);
    let clean = dir.path().join("clean.wav");
    write_wav(&clean, 44_100, 1, Enc::Pcm16, &mono_parts(44_100, &[(1.0, 0.5)]));
    let out = postcheck(dir.path(), json!({"audio_paths": [clipped, clean]})).await.expect("postcheck runs");
    let f = file_entry(&out.result, &clipped);
    let counted = f["clipped_samples"].as_u64().unwrap();
    // Samples within a rounding step of full scale also count as clipped.
    assert!(counted >= expected && counted <= expected + 50, "counted {counted}, expected about {expected}");
    assert!(codes(f).contains(&"CLIPPING".to_string()));
    let g = file_entry(&out.result, &clean);
    assert_eq!(g["clipped_samples"], 0);
    assert!(!codes(g).contains(&"CLIPPING".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_spans_are_measured_within_20_ms() {
    let dir = common::tempdir();
    let p = dir.path().join("gaps.wav");
    let sig = mono_parts(22_050, &[(0.7, 0.0), (1.0, 0.3), (1.3, 0.0), (1.0, 0.3), (0.4, 0.0), (0.5, 0.3), (0.9, 0.0)]);
    write_wav(&p, 22_050, 1, Enc::Pcm16, &sig);
    let out = postcheck(dir.path(), json!({"audio_paths": [p]})).await.expect("postcheck runs");
    let f = file_entry(&out.result, &p);
    for (key, want) in [("leading_silence_s", 0.7), ("longest_silence_s", 1.3), ("trailing_silence_s", 0.9)] {
        let got = num(f, key);
        assert!((got - want).abs() <= 0.02, "{key}: {got}, want {want}");
    }
    assert!((num(f, "duration_s") - 5.8).abs() < 1e-3);
    // None of the spans exceeds the defaults (1.0 / 1.5 / 2.0 s).
    let c = codes(f);
    assert!(!c.iter().any(|c| c.contains("SILENCE")), "{c:?}");

    // Tighter limits flag all three.
    let out = postcheck(
        dir.path(),
        json!({"audio_paths": [p], "thresholds": {"max_leading_silence_s": 0.5, "max_trailing_silence_s": 0.5, "max_internal_silence_s": 1.0}}),
    )
    .await
    .expect("postcheck runs");
    let c = codes(file_entry(&out.result, &p));
    for code in ["LEADING_SILENCE_TOO_LONG", "TRAILING_SILENCE_TOO_LONG", "INTERNAL_SILENCE_TOO_LONG"] {
        assert!(c.contains(&code.to_string()), "{code} missing from {c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threshold_override_changes_the_verdict() {
    let dir = common::tempdir();
    let p = dir.path().join("broadcast.wav");
    write_wav(&p, 48_000, 2, Enc::Pcm24, &tone_parts(&[(5.0, Some(-23.0))]));
    let default = postcheck(dir.path(), json!({"audio_paths": [p]})).await.expect("postcheck runs");
    assert_eq!(default.result["passed"], false);
    assert_eq!(codes(file_entry(&default.result, &p)), vec!["LOUDNESS_OUT_OF_RANGE"]);

    let broadcast = postcheck(
        dir.path(),
        json!({"audio_paths": [p], "thresholds": {"target_lufs": -23.0, "lufs_tolerance": 0.5, "expected_sample_rate": 48000}}),
    )
    .await
    .expect("postcheck runs");
    assert_eq!(broadcast.result["passed"], true, "{}", broadcast.result);
    assert_eq!(broadcast.result["thresholds"]["target_lufs"], -23.0);
    assert_eq!(broadcast.result["thresholds"]["max_true_peak_dbtp"], -1.0, "defaults fill the rest");
    assert!(broadcast.result["thresholds"].get("parallel_files").is_none());

    let wrong_rate =
        postcheck(dir.path(), json!({"audio_paths": [p], "thresholds": {"target_lufs": -23.0, "expected_sample_rate": 44100}}))
            .await
            .expect("postcheck runs");
    assert_eq!(codes(file_entry(&wrong_rate.result, &p)), vec!["SAMPLE_RATE_MISMATCH"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_streamed_files_decode_natively() {
    let dir = common::tempdir();
    let source = "sine=frequency=1000:sample_rate=48000:duration=3";
    let mut paths = Vec::new();
    for (name, extra) in [("t.flac", vec![]), ("t.mp3", vec![]), ("t.ogg", vec!["-c:a", "libvorbis"])] {
        let p = dir.path().join(name);
        common::run_ok(common::ffmpeg().args(["-f", "lavfi", "-i", source]).args(extra).arg(&p));
        paths.push(p);
    }
    // A WAV written to a pipe: its header cannot give the length (0xFFFFFFFF).
    let piped = dir.path().join("piped.wav");
    let out = common::run_ok(common::ffmpeg().args(["-f", "lavfi", "-i", source, "-f", "wav", "-"]));
    assert_eq!(&out.stdout[4..8], &[0xff; 4], "ffmpeg left the RIFF size open");
    std::fs::write(&piped, &out.stdout).unwrap();
    paths.push(piped.clone());
    let result = postcheck(dir.path(), json!({"audio_paths": paths})).await.expect("postcheck runs").result;
    let reference = num(file_entry(&result, &piped), "integrated_lufs");
    assert!((reference - -21.07).abs() < 0.05, "{reference}");
    assert!((num(file_entry(&result, &piped), "duration_s") - 3.0).abs() < 1e-9);
    for p in &paths {
        let f = file_entry(&result, p);
        let i = num(f, "integrated_lufs");
        // Lossy codecs shift the level slightly (MP3 by about 0.45 LU here).
        assert!((i - reference).abs() < 0.6, "{}: {i} vs {reference}", p.display());
        assert!((num(f, "duration_s") - 3.0).abs() < 0.05, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_postcheck_requests_fail_with_stable_codes() {
    let dir = common::tempdir();
    let good = dir.path().join("good.wav");
    write_wav(&good, 22_050, 1, Enc::Pcm16, &mono_parts(22_050, &[(1.0, 0.3)]));
    let garbage = dir.path().join("garbage.wav");
    std::fs::write(&garbage, b"RIFF....WAVEthis is not really a wave file at all".repeat(50)).unwrap();

    let cases: Vec<(Value, ErrorCode, &str)> = vec![
        (json!({"audio_paths": [good], "thresholds": {"target_lufz": -23}}), ErrorCode::InputInvalid, "target_lufz"),
        (json!({"audio_paths": []}), ErrorCode::InputInvalid, "audio_paths"),
        (json!({"audio_path": good}), ErrorCode::InputInvalid, "audio_path"),
        (json!({"audio_paths": [good, dir.path().join("nope.wav")]}), ErrorCode::InputNotFound, "nope.wav"),
        (json!({"audio_paths": [good, garbage]}), ErrorCode::AudioDecodeFailed, "garbage.wav"),
    ];
    for (payload, code, needle) in cases {
        let err = postcheck(dir.path(), payload.clone()).await.expect_err("must fail");
        assert_eq!(err.code, code, "{payload}: {err}");
        assert!(err.message.contains(needle), "{payload}: message {:?} should mention {needle}", err.message);
    }
}
