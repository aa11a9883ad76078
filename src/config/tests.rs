//! Unit tests of [`Settings::load_from`]: the defaults, the environment and
//! local-file layers, unknown keys, bad values and the string choices.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

#[test]
fn defaults_load() {
    let s = Settings::load_from(None, &[]).unwrap();
    assert_eq!(s.worker.port, 8787);
    assert_eq!(s.step("FFMPEG_PROBE").concurrency, 4);
    assert_eq!(s.worker.skew_s, 300);
    assert_eq!((s.controller.http_workers, s.controller.max_blocking_threads), (1, 8));
}

#[test]
fn the_daemon_s_thread_caps_are_read() {
    let s = Settings::load_from(None, &env(&[("RAYVAULT_CONTROLLER__HTTP_WORKERS", "3"), ("RAYVAULT_CONTROLLER__MAX_BLOCKING_THREADS", "2")])).unwrap();
    assert_eq!((s.controller.http_workers, s.controller.max_blocking_threads), (3, 2));
}

#[test]
fn env_layers_override() {
    let s = Settings::load_from(
        None,
        &env(&[
            ("RAYVAULT_WORKER_PORT", "9999"),
            ("RAYVAULT_WORKER_ID", "win-1"),
            ("RAYVAULT_STATE_DIR", "/tmp/x"),
            ("RAYVAULT_STEPS__FFMPEG_PROBE__CONCURRENCY", "7"),
            ("RAYVAULT_POSTCHECK__TARGET_LUFS", "-23"),
            ("RAYVAULT_CLUSTER_SECRET", "must-not-matter"),
        ]),
    )
    .unwrap();
    assert_eq!(s.worker.port, 9999);
    assert_eq!(s.worker.id, "win-1");
    assert_eq!(s.state_dir, PathBuf::from("/tmp/x"));
    assert_eq!(s.step("FFMPEG_PROBE").concurrency, 7);
    assert_eq!(s.postcheck.target_lufs, -23.0);
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("local.toml");
    std::fs::write(&file, "[worker]\nprot = 8797\n").unwrap();
    let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("unknown key `worker.prot`") && err.contains("port"), "{err}");
    std::fs::write(&file, "stat_dir = \"x\"\n").unwrap();
    let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("`stat_dir`"), "{err}");
    std::fs::write(&file, "[steps.ffmpeg_prob]\nconcurrency = 2\n").unwrap();
    let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("steps.ffmpeg_prob") && err.contains("ffmpeg_probe"), "{err}");
    std::fs::write(&file, "[steps.ffmpeg_probe]\nconcurency = 2\n").unwrap();
    let err = Settings::load_from(Some(&file), &[]).unwrap_err().to_string();
    assert!(err.contains("steps.ffmpeg_probe.concurency"), "{err}");
    std::fs::write(&file, "[worker]\nport = 8797\n[steps.openclaw_task]\ntimeout_s = 5\n").unwrap();
    let s = Settings::load_from(Some(&file), &[]).unwrap();
    assert_eq!(s.worker.port, 8797);
    let err = Settings::load_from(None, &env(&[("RAYVAULT_WORKER__PROT", "8797")])).unwrap_err().to_string();
    assert!(err.contains("RAYVAULT_WORKER__PROT") && err.contains("worker.prot"), "{err}");
    let err = Settings::load_from(None, &env(&[("RAYVAULT_STEPS__NOPE__CONCURRENCY", "1")])).unwrap_err().to_string();
    assert!(err.contains("RAYVAULT_STEPS__NOPE__CONCURRENCY"), "{err}");
    // Variables that are not `SECTION__KEY` settings are not checked.
    let ok = env(&[("RAYVAULT_WORKER_ID", "w"), ("RAYVAULT_CLUSTER_SECRET__X", "s"), ("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1"), ("RAYVAULT_ORCHESTRATOR_BIN", "/x")]);
    assert!(Settings::load_from(None, &ok).is_ok());
}

#[test]
fn tts_normalisation_follows_the_postcheck_target_unless_set() {
    let load = |pairs: &[(&str, &str)]| Settings::load_from(None, &env(pairs));
    let s = load(&[]).unwrap();
    assert_eq!(s.tts.normalize_lufs, NormalizeLufs::Target);
    assert_eq!(s.tts.normalize_lufs.resolve(&s.postcheck), Some(-16.0));
    let s = load(&[("RAYVAULT_POSTCHECK__TARGET_LUFS", "-23")]).unwrap();
    assert_eq!(s.tts.normalize_lufs.resolve(&s.postcheck), Some(-23.0));
    for (value, expected) in [
        ("off", NormalizeLufs::Off),
        ("OFF", NormalizeLufs::Off),
        ("-18", NormalizeLufs::Lufs(-18.0)),
        ("-14.5", NormalizeLufs::Lufs(-14.5)),
        ("target", NormalizeLufs::Target),
    ] {
        let s = load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", value)]).unwrap();
        assert_eq!(s.tts.normalize_lufs, expected, "{value}");
    }
    assert_eq!(load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", "off")]).unwrap().tts.normalize_lufs.resolve(&s.postcheck), None);
    for bad in ["loud", "3", "-80"] {
        let err = load(&[("RAYVAULT_TTS__NORMALIZE_LUFS", bad)]).unwrap_err();
        assert!(err.to_string().contains("normalize_lufs"), "{bad}: {err}");
    }
}

#[test]
fn bad_values_are_reported() {
    let err = Settings::load_from(None, &env(&[("RAYVAULT_WORKER_PORT", "notaport")])).unwrap_err();
    assert!(err.to_string().contains("port"), "{err}");
}

#[test]
fn string_choices_are_enums_that_name_the_allowed_values() {
    let s = Settings::load_from(None, &[]).unwrap();
    assert_eq!((s.worker.on_interrupted, s.controller.auth_mode), (OnInterrupted::Fail, AuthMode::HmacStrict));
    let s = Settings::load_from(None, &env(&[("RAYVAULT_WORKER__ON_INTERRUPTED", "rerun"), ("RAYVAULT_CONTROLLER__FALLBACK", "never")])).unwrap();
    assert_eq!((s.worker.on_interrupted, s.controller.fallback), (OnInterrupted::Rerun, crate::receipt::FallbackMode::Never));
    let s = Settings::load_from(None, &env(&[("RAYVAULT_ALLOW_PLAIN_FALLBACK", "1"), ("RAYVAULT_TTS__ENGINE", "espeak")])).unwrap();
    assert_eq!((s.controller.auth_mode, s.tts.engine), (AuthMode::AllowPlain, TtsEngineChoice::EspeakNg));
    assert_eq!(Settings::load_from(None, &[]).unwrap().tts.engine, TtsEngineChoice::PlatformDefault);
    for (var, value, allowed) in [
        ("RAYVAULT_WORKER__ON_INTERRUPTED", "retry", ["fail", "rerun"].as_slice()),
        ("RAYVAULT_CONTROLLER__AUTH_MODE", "plain", ["hmac_strict", "allow_plain"].as_slice()),
        ("RAYVAULT_CONTROLLER__FALLBACK", "sometimes", ["unavailable", "always", "never"].as_slice()),
        ("RAYVAULT_TTS__ENGINE", "festival", ["espeak-ng", "sapi", "say", "piper", "command"].as_slice()),
    ] {
        let err = Settings::load_from(None, &env(&[(var, value)])).unwrap_err().to_string();
        assert!(err.contains(value) && allowed.iter().all(|a| err.contains(a)), "{var}={value}: {err}");
    }
}
