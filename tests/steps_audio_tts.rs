//! TTS_RENDER_CHUNKS through `run_step`, as the worker runs it: TTS renders
//! with the real espeak-ng, and the rendered chunks are read back with
//! ffprobe and checked by AUDIO_POSTCHECK.

mod common;
mod steps_audio_support;

use rayvault::artifacts::sha256_file;
use rayvault::config::Settings;
use rayvault::error::{ErrorCode, StepError};
use rayvault::steps::{run_step, StepName, StepOutput};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use steps_audio_support::{context, num, postcheck, settings};

// ---------------------------------------------------------------------------
// TTS_RENDER_CHUNKS

async fn tts(dir: &Path, settings: Settings, payload: Value) -> Result<StepOutput, StepError> {
    run_step(StepName::TtsRenderChunks, &payload, &context(dir, settings)).await
}

/// Checks every chunk entry against its artifact: the file exists, its
/// digest matches the manifest, and it decodes as audio of the stated
/// length (read independently with ffprobe).
fn check_rendered(dir: &Path, out: &StepOutput, expected: usize) {
    let chunks = out.result["chunks"].as_array().expect("chunks");
    assert_eq!(chunks.len(), expected);
    assert_eq!(out.artifacts.len(), expected);
    let mut total = 0.0;
    for (i, (c, a)) in chunks.iter().zip(&out.artifacts).enumerate() {
        let name = format!("chunk_{:04}.wav", i + 1);
        assert_eq!(c["artifact"], name.as_str());
        assert_eq!(a.name, name);
        let path = dir.join("out").join(&name);
        let (sha, size) = sha256_file(&path).expect("artifact exists");
        assert_eq!((sha.as_str(), size), (a.sha256.as_str(), a.size));
        let d = num(c, "duration_s");
        assert!(d > 0.2, "{c}");
        assert_eq!(c["sample_rate"], 22_050);
        let probe = common::run_ok(std::process::Command::new("ffprobe").args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"]).arg(&path));
        let ff: f64 = String::from_utf8_lossy(&probe.stdout).trim().parse().expect("ffprobe duration");
        assert!((ff - d).abs() < 0.01, "{name}: ffprobe {ff} vs ours {d}");
        total += d;
    }
    assert!((num(&out.result, "total_duration_s") - total).abs() < 0.01);
    // Nothing but the chunks is left in the output folder.
    let mut names: Vec<String> = std::fs::read_dir(dir.join("out")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, (1..=expected).map(|i| format!("chunk_{i:04}.wav")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_renders_chunks_in_parallel() {
    let dir = common::tempdir();
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    s.tts.parallel_chunks = 3;
    let payload = json!({
        "chunks": [
            {"id": "intro", "text": "Welcome to the channel. Today we look at three cameras."},
            {"id": "body", "text": "The first one is small, light and cheap."},
            {"id": 3, "text": "Thanks for watching."},
        ],
        "voice": "en-us",
        "rate": 170,
    });
    let out = tts(dir.path(), s, payload).await.expect("espeak renders");
    assert_eq!(out.result["engine"], "espeak-ng");
    assert_eq!(out.result["voice"], "en-us");
    assert_eq!(out.result["rate"], 170);
    let ids: Vec<&Value> = out.result["chunks"].as_array().unwrap().iter().map(|c| &c["id"]).collect();
    assert_eq!(ids, [&json!("intro"), &json!("body"), &json!(3)]);
    assert_eq!(out.result["chunks"][2]["text_chars"], 20);
    check_rendered(dir.path(), &out, 3);
    // The longest text gives the longest audio.
    let d: Vec<f64> = (0..3).map(|i| num(&out.result["chunks"][i], "duration_s")).collect();
    assert!(d[0] > d[1] && d[1] > d[2], "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_form_is_split_at_sentences_and_rendered() {
    let dir = common::tempdir();
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    let text = "Cameras changed a lot this year. Sensors got bigger, lenses got sharper, and prices, \
                surprisingly, went down. Here is what that means for you.\n\nFirst, the budget pick.";
    let out = tts(dir.path(), s, json!({"text": text, "max_chars": 60})).await.expect("renders");
    let chunks = out.result["chunks"].as_array().unwrap();
    let texts: Vec<&str> = chunks.iter().map(|c| c["text"].as_str().unwrap()).collect();
    for t in &texts {
        assert!(t.chars().count() <= 60, "{t:?}");
    }
    assert_eq!(texts.join(" ").split_whitespace().collect::<Vec<_>>(), text.split_whitespace().collect::<Vec<_>>());
    assert_eq!(texts[0], "Cameras changed a lot this year.");
    let ids: Vec<u64> = chunks.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, (1..=chunks.len() as u64).collect::<Vec<_>>());
    check_rendered(dir.path(), &out, chunks.len());
}

/// Writes the fake engine used by the "command" tests: it logs its argv,
/// keeps a copy of the text file it was given, waits until `expect` renders
/// have started (so it can prove they overlap), then renders with espeak-ng.
fn fake_engine(dir: &Path, expect: usize) -> PathBuf {
    let script = dir.join("fake_tts.sh");
    let body = format!(
        r#"#!/bin/sh
# usage: fake_tts.sh TEXT_FILE OUT_WAV VOICE RATE
spy="{spy}"
mkdir -p "$spy"
printf '%s\n' "$*" >> "$spy/argv.log"
n=$(basename "$2" .wav)
cp "$1" "$spy/$n.txt"
touch "$spy/started-$n"
# Wait (with a deadline) until {expect} renders are running at once.
i=0
while [ "$(ls "$spy" | grep -c '^started-')" -lt {expect} ]; do
  i=$((i+1)); [ $i -gt 400 ] && {{ echo "renders did not overlap" >&2; exit 3; }}
  sleep 0.025
done
exec espeak-ng -w "$2" -f "$1"
"#,
        spy = dir.join("spy").display(),
    );
    std::fs::write(&script, body).unwrap();
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_engine_gets_text_by_file_not_argv() {
    let dir = common::tempdir();
    let script = fake_engine(dir.path(), 3);
    let mut s = settings();
    s.tts.command_template = format!("sh '{}' {{text_file}} {{out_wav}} {{voice}} {{rate}}", script.display());
    s.tts.parallel_chunks = 3;
    let texts = ["Zebra quartz vanished overnight.", "Marmalade xylophone tonight.", "Quixotic walrus jumps."];
    let chunks: Vec<Value> = texts.iter().enumerate().map(|(i, t)| json!({"id": i, "text": t})).collect();
    let out = tts(dir.path(), s, json!({"chunks": chunks, "engine": "command", "voice": "en-gb", "rate": 150}))
        .await
        .expect("command engine renders");
    assert_eq!(out.result["engine"], "command");
    check_rendered(dir.path(), &out, 3);
    let spy = dir.path().join("spy");
    // The script saw each chunk's text through the file...
    for (i, t) in texts.iter().enumerate() {
        let seen = std::fs::read_to_string(spy.join(format!("chunk_{:04}.txt", i + 1))).unwrap();
        assert_eq!(seen, *t);
    }
    // ...never on its command line, which did carry voice and rate.
    let argv = std::fs::read_to_string(spy.join("argv.log")).unwrap();
    assert_eq!(argv.lines().count(), 3);
    for line in argv.lines() {
        assert!(line.ends_with(" en-gb 150"), "{line}");
        for t in texts {
            for word in t.split_whitespace() {
                assert!(!line.contains(word.trim_end_matches('.')), "{word} leaked into argv: {line}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_failures_have_stable_codes() {
    let dir = common::tempdir();
    let chunk = json!({"chunks": [{"id": 1, "text": "Hello there."}]});

    // A missing engine binary.
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    s.tools.espeak = dir.path().join("no-such-espeak").to_string_lossy().into_owned();
    let err = tts(dir.path(), s, chunk.clone()).await.expect_err("missing binary");
    assert_eq!(err.code, ErrorCode::TtsUnavailable, "{err}");

    // An engine that fails, and one that "succeeds" without writing audio.
    for (body, needle) in [("echo synthesis exploded >&2; exit 2", "synthesis exploded"), ("echo not audio > \"$2\"", "usable WAV")] {
        let script = dir.path().join("bad.sh");
        std::fs::write(&script, body).unwrap();
        let mut s = settings();
        s.tts.engine = rayvault::config::TtsEngineChoice::Command;
        s.tts.command_template = format!("sh {} {{text_file}} {{out_wav}}", script.display());
        let err = tts(dir.path(), s, chunk.clone()).await.expect_err("engine failure");
        assert_eq!(err.code, ErrorCode::TtsFailed, "{err}");
        assert!(err.message.contains(needle), "{err}");
    }
    // Nothing half-written is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Engines that need configuration say what to set.
    let err = tts(dir.path(), settings(), json!({"chunks": [{"id": 1, "text": "Hi."}], "engine": "piper"})).await.unwrap_err();
    assert!(err.code == ErrorCode::TtsUnavailable && err.message.contains("tts.piper_model"), "{err}");
    let err = tts(dir.path(), settings(), json!({"chunks": [{"id": 1, "text": "Hi."}], "engine": "command"})).await.unwrap_err();
    assert!(err.code == ErrorCode::TtsUnavailable && err.message.contains("tts.command_template"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tts_payloads_are_input_invalid() {
    let dir = common::tempdir();
    let one = json!([{"id": 1, "text": "Hi."}]);
    let cases = [
        (json!({}), "nothing to render"),
        (json!({"chunks": []}), "empty"),
        (json!({"chunks": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}), "more than once"),
        (json!({"chunks": [{"id": "a", "text": ""}]}), "empty text"),
        (json!({"chunks": one, "text": "Hi."}), "not both"),
        (json!({"text": "Hi.", "max_chars": 3}), "max_chars"),
        (json!({"chunks": one, "rate": 20}), "rate"),
        (json!({"chunks": one, "rate": -5}), "rate"),
        (json!({"chunks": one, "engine": "festival"}), "festival"),
        (json!({"chunks": one, "voice": "--help"}), "voice"),
        (json!({"chunks": one, "speed": 2}), "speed"),
        (json!({"chunks": [{"id": 1, "text": "x".repeat(6000)}]}), "over the limit"),
    ];
    for (payload, needle) in cases {
        let err = tts(dir.path(), settings(), payload.clone()).await.expect_err("must be rejected");
        assert_eq!(err.code, ErrorCode::InputInvalid, "{payload}: {err}");
        assert!(err.message.contains(needle), "{payload}: {:?} should mention {needle}", err.message);
    }
}

/// The demo's own script rendered with espeak-ng (about -20 LUFS as the
/// engine writes it) and checked by AUDIO_POSTCHECK with the default
/// thresholds: after normalisation every chunk passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn espeak_chunks_are_normalised_to_pass_the_default_postcheck() {
    let dir = common::tempdir();
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    let script = "Welcome to RayVault. This demo renders speech on a worker. Then it checks the audio, probes a clip, and samples frames.";
    let out = tts(dir.path(), s, json!({"text": script, "max_chars": 60})).await.expect("espeak renders");
    check_rendered(dir.path(), &out, out.artifacts.len());
    assert!(out.artifacts.len() >= 2);
    assert_eq!(out.result["normalize"], json!({"target_lufs": -16.0, "ceiling_dbtp": -1.3}));
    for c in out.result["chunks"].as_array().unwrap() {
        let l = &c["loudness"];
        assert!(num(l, "before_lufs") < -17.0, "espeak-ng renders quieter than the target: {c}");
        assert!((num(l, "after_lufs") + 16.0).abs() <= 0.2, "{c}");
        assert!(num(l, "true_peak_after_dbtp") <= -1.3, "{c}");
    }
    let paths: Vec<String> =
        out.artifacts.iter().map(|a| dir.path().join("out").join(&a.name).to_string_lossy().into_owned()).collect();
    let qc = postcheck(&dir.path().join("qc"), json!({"audio_paths": paths})).await.expect("postcheck runs");
    assert_eq!(qc.result["passed"], true, "{:#}", qc.result);

    // With normalisation off the chunks stay as the engine wrote them.
    let off = dir.path().join("off");
    let mut s = settings();
    s.tts.engine = rayvault::config::TtsEngineChoice::EspeakNg;
    s.tts.normalize_lufs = rayvault::config::NormalizeLufs::Off;
    let out = tts(&off, s, json!({"text": script, "max_chars": 60})).await.expect("espeak renders");
    assert_eq!(out.result["normalize"], Value::Null);
    assert!(out.result["chunks"].as_array().unwrap().iter().all(|c| c["loudness"].is_null()));
    // ... and those fail the same QC (which is why normalisation exists).
    let paths: Vec<String> =
        out.artifacts.iter().map(|a| off.join("out").join(&a.name).to_string_lossy().into_owned()).collect();
    let qc = postcheck(&off.join("qc"), json!({"audio_paths": paths})).await.expect("postcheck runs");
    assert_eq!(qc.result["passed"], false, "{:#}", qc.result);
}
