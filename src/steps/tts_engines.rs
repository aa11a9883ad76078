//! The text-to-speech engines TTS_RENDER_CHUNKS can drive, and the exact
//! command each one runs for a chunk.
//!
//! Architecture Invariant: chunk text never appears on a command line. It
//! reaches every engine through a file (espeak-ng, say, SAPI, "command") or
//! stdin (piper). Command lines end up in the job log and in process
//! listings; narration text may be unpublished material.

use crate::config::{Settings, TtsEngineChoice};
use crate::error::{ErrorCode, StepError};
use crate::process::Tool;
use std::path::Path;
use std::time::Duration;

/// Rate (words per minute) below and above which a request is refused:
/// espeak-ng's own limits, and sensible for every engine.
pub const RATE_RANGE: std::ops::RangeInclusive<u32> = 80..=450;

/// Sample rate the engines that let us choose are asked to render at.
pub const RENDER_RATE: u32 = 22_050;

/// A text-to-speech engine, resolved from the payload and the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// `espeak-ng` (Linux default).
    EspeakNg,
    /// Windows SAPI through PowerShell 5.1's System.Speech (Windows default).
    Sapi,
    /// macOS `say` (macOS default).
    Say,
    /// Piper with the configured voice model.
    Piper { model: String },
    /// The configured command template, split into words.
    Command { words: Vec<String> },
}

impl Engine {
    /// The engine's name as payloads and results spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::EspeakNg => "espeak-ng",
            Engine::Sapi => "sapi",
            Engine::Say => "say",
            Engine::Piper { .. } => "piper",
            Engine::Command { .. } => "command",
        }
    }

    /// Picks the engine: the payload's `engine`, else `tts.engine`, else
    /// the platform default.
    pub fn resolve(requested: Option<&str>, settings: &Settings) -> Result<Engine, StepError> {
        let name = match requested.map(str::trim) {
            Some(r) if !r.is_empty() => r,
            _ => match settings.tts.engine {
                TtsEngineChoice::PlatformDefault => platform_default(),
                configured => configured.as_str(),
            },
        };
        match name {
            "espeak-ng" | "espeak" => Ok(Engine::EspeakNg),
            "sapi" => Ok(Engine::Sapi),
            "say" => Ok(Engine::Say),
            "piper" => {
                let model = settings.tts.piper_model.trim();
                if model.is_empty() {
                    return Err(StepError::new(
                        ErrorCode::TtsUnavailable,
                        "engine \"piper\" needs a voice model: set tts.piper_model to a downloaded .onnx voice (RAYVAULT_TTS__PIPER_MODEL)",
                    ));
                }
                Ok(Engine::Piper { model: model.to_string() })
            }
            "command" => {
                let template = settings.tts.command_template.trim();
                if template.is_empty() {
                    return Err(StepError::new(
                        ErrorCode::TtsUnavailable,
                        "engine \"command\" needs tts.command_template, e.g. \"mytts --in {text_file} --out {out_wav}\"",
                    ));
                }
                let words = super::openclaw::split_command(template)
                    .map_err(|e| StepError::new(ErrorCode::TtsUnavailable, format!("tts.command_template: {e}")))?;
                if !words.iter().any(|w| w.contains("{out_wav}")) || !words.iter().any(|w| w.contains("{text_file}")) {
                    return Err(StepError::new(
                        ErrorCode::TtsUnavailable,
                        "tts.command_template must contain {text_file} and {out_wav}; the text is passed through the file",
                    ));
                }
                Ok(Engine::Command { words })
            }
            other => Err(StepError::invalid(format!(
                "unknown TTS engine {other:?}; use espeak-ng, sapi, say, piper or command (or omit it for the platform default)"
            ))),
        }
    }
}

/// The engine used when neither the payload nor the config names one.
pub fn platform_default() -> &'static str {
    if cfg!(target_os = "windows") {
        "sapi"
    } else if cfg!(target_os = "macos") {
        "say"
    } else {
        "espeak-ng"
    }
}

/// One chunk's rendering job, as handed to [`build_tool`].
#[derive(Debug, Clone)]
pub struct RenderSpec<'a> {
    /// UTF-8 file holding the chunk's text.
    pub text_file: &'a Path,
    /// Where the engine must write its WAV (a temporary name).
    pub out_wav: &'a Path,
    /// Work folder for engine scripts.
    pub work_dir: &'a Path,
    /// Voice name; empty for the engine's default.
    pub voice: &'a str,
    /// Words per minute; `None` for the engine's default.
    pub rate: Option<u32>,
    pub timeout: Duration,
}

/// Builds the command that renders one chunk. For SAPI this also writes
/// the PowerShell script (which names the files, never the text).
pub fn build_tool(engine: &Engine, spec: &RenderSpec<'_>, settings: &Settings) -> Result<Tool, StepError> {
    let tools = &settings.tools;
    let tool = match engine {
        Engine::EspeakNg => {
            let mut t = Tool::new(&tools.espeak, "espeak-ng");
            if !spec.voice.is_empty() {
                t = t.args(["-v", spec.voice]);
            }
            if let Some(rate) = spec.rate {
                t = t.arg("-s").arg(rate.to_string());
            }
            t.arg("-w").arg(spec.out_wav).arg("-f").arg(spec.text_file)
        }
        Engine::Say => {
            let mut t = Tool::new(&tools.say, "say");
            if !spec.voice.is_empty() {
                t = t.args(["-v", spec.voice]);
            }
            if let Some(rate) = spec.rate {
                t = t.arg("-r").arg(rate.to_string());
            }
            // Without --data-format, say cannot write WAV.
            t.arg("-f")
                .arg(spec.text_file)
                .arg("-o")
                .arg(spec.out_wav)
                .arg(format!("--data-format=LEI16@{RENDER_RATE}"))
        }
        Engine::Sapi => {
            let script = spec.work_dir.join(format!(
                "{}.ps1",
                spec.out_wav.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
            ));
            // Windows PowerShell 5.1 reads a script without a byte-order
            // mark in the ANSI code page, which would garble non-ASCII paths
            // (a user folder named "José"); the BOM makes it read UTF-8.
            let mut bytes = b"\xEF\xBB\xBF".to_vec();
            bytes.extend_from_slice(sapi_script(spec).as_bytes());
            std::fs::write(&script, bytes).map_err(|e| StepError::io("writing the SAPI PowerShell script", e))?;
            Tool::new(&tools.powershell, "sapi")
                .args(["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-File"])
                .arg(&script)
        }
        Engine::Piper { model } => {
            let text = std::fs::read(spec.text_file).map_err(|e| StepError::io("reading the chunk text", e))?;
            let mut t = Tool::new(&tools.piper, "piper").arg("-m").arg(model).arg("-f").arg(spec.out_wav);
            if let Some(rate) = spec.rate {
                // Piper speaks at roughly 160 words per minute at scale 1.
                t = t.arg("--length_scale").arg(format!("{:.3}", 160.0 / rate as f64));
            }
            t.stdin(text)
        }
        Engine::Command { words } => {
            let rate = spec.rate.map(|r| r.to_string()).unwrap_or_default();
            let text_file = spec.text_file.to_string_lossy();
            let out_wav = spec.out_wav.to_string_lossy();
            // The template was split into words first, so a substituted
            // value can never become extra arguments; no shell is involved.
            let argv: Vec<String> = words
                .iter()
                .map(|w| {
                    w.replace("{text_file}", &text_file)
                        .replace("{out_wav}", &out_wav)
                        .replace("{voice}", spec.voice)
                        .replace("{rate}", &rate)
                })
                .collect();
            Tool::new(&argv[0], "tts-command").args(&argv[1..])
        }
    };
    Ok(tool.timeout(spec.timeout).codes(ErrorCode::TtsUnavailable, ErrorCode::TtsFailed))
}

/// Quotes a string as a PowerShell single-quoted literal.
fn ps_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SAPI's rate runs from -10 to 10, where +10 is about three times the
/// normal pace (about 170 words per minute at 0).
fn sapi_rate(wpm: u32) -> i32 {
    let steps = 10.0 * (wpm as f64 / 170.0).ln() / 3f64.ln();
    (steps.round() as i32).clamp(-10, 10)
}

/// The PowerShell 5.1 script rendering one chunk with System.Speech. It
/// names the text file and the output; the text itself is read from the
/// file inside PowerShell.
fn sapi_script(spec: &RenderSpec<'_>) -> String {
    let mut s = String::from(
        "$ErrorActionPreference = 'Stop'\n\
         Add-Type -AssemblyName System.Speech\n\
         $synth = New-Object System.Speech.Synthesis.SpeechSynthesizer\n\
         try {\n",
    );
    if !spec.voice.is_empty() {
        s.push_str(&format!("  $synth.SelectVoice({})\n", ps_quote(spec.voice)));
    }
    if let Some(rate) = spec.rate {
        s.push_str(&format!("  $synth.Rate = {}\n", sapi_rate(rate)));
    }
    s.push_str(&format!(
        "  $format = New-Object System.Speech.AudioFormat.SpeechAudioFormatInfo({RENDER_RATE}, \
         [System.Speech.AudioFormat.AudioBitsPerSample]::Sixteen, [System.Speech.AudioFormat.AudioChannel]::Mono)\n\
         \x20 $synth.SetOutputToWaveFile({}, $format)\n\
         \x20 $text = [System.IO.File]::ReadAllText({}, [System.Text.Encoding]::UTF8)\n\
         \x20 $synth.Speak($text)\n\
         \x20 $synth.SetOutputToNull()\n\
         }} finally {{\n\
         \x20 $synth.Dispose()\n\
         }}\n",
        ps_quote(&spec.out_wav.to_string_lossy()),
        ps_quote(&spec.text_file.to_string_lossy()),
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn settings_with(engine: &str, piper_model: &str, template: &str) -> Settings {
        let mut s = Settings::load_from(None, &[]).unwrap();
        s.tts.engine = TtsEngineChoice::parse(engine).unwrap();
        s.tts.piper_model = piper_model.into();
        s.tts.command_template = template.into();
        s
    }

    fn spec<'a>(dir: &'a Path, text: &'a Path, out: &'a Path) -> RenderSpec<'a> {
        RenderSpec { text_file: text, out_wav: out, work_dir: dir, voice: "en-us", rate: Some(170), timeout: Duration::from_secs(5) }
    }

    #[test]
    fn engine_choice_and_configuration_errors() {
        let s = settings_with("", "", "");
        assert_eq!(Engine::resolve(None, &s).unwrap().name(), platform_default());
        assert_eq!(Engine::resolve(Some("espeak"), &s).unwrap(), Engine::EspeakNg);
        assert_eq!(Engine::resolve(None, &settings_with("say", "", "")).unwrap(), Engine::Say);
        assert_eq!(Engine::resolve(Some("nope"), &s).unwrap_err().code, ErrorCode::InputInvalid);
        let e = Engine::resolve(Some("piper"), &s).unwrap_err();
        assert!(e.code == ErrorCode::TtsUnavailable && e.message.contains("tts.piper_model"), "{e}");
        let e = Engine::resolve(Some("command"), &s).unwrap_err();
        assert!(e.code == ErrorCode::TtsUnavailable && e.message.contains("tts.command_template"), "{e}");
        let e = Engine::resolve(Some("command"), &settings_with("", "", "tts --out {out_wav}")).unwrap_err();
        assert!(e.message.contains("{text_file}"), "{e}");
    }

    #[test]
    fn text_is_never_on_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("chunk.txt");
        let out = dir.path().join("out.wav");
        std::fs::write(&text, "Secret narration text.").unwrap();
        let template = "/opt/tts --in {text_file} --out {out_wav} --voice {voice} --wpm {rate} 'a b'";
        let s = settings_with("", "/models/v.onnx", template);
        for engine in [
            Engine::EspeakNg,
            Engine::Say,
            Engine::Sapi,
            Engine::Piper { model: "/models/v.onnx".into() },
            Engine::resolve(Some("command"), &s).unwrap(),
        ] {
            let tool = build_tool(&engine, &spec(dir.path(), &text, &out), &s).unwrap();
            let argv: Vec<String> = tool.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            assert!(!argv.iter().any(|a| a.contains("Secret")), "{engine:?}: {argv:?}");
            assert_eq!(tool.unavailable_code, ErrorCode::TtsUnavailable);
            assert_eq!(tool.failed_code, ErrorCode::TtsFailed);
            match engine {
                Engine::Piper { .. } => assert_eq!(tool.stdin.as_deref(), Some(&b"Secret narration text."[..])),
                Engine::Command { .. } => {
                    let want: Vec<OsString> = ["--in", &text.to_string_lossy(), "--out", &out.to_string_lossy(), "--voice", "en-us", "--wpm", "170", "a b"]
                        .iter()
                        .map(OsString::from)
                        .collect();
                    assert_eq!(tool.args, want);
                }
                Engine::Sapi => {
                    let script = std::fs::read_to_string(dir.path().join("out.ps1")).unwrap();
                    assert!(script.starts_with('\u{feff}'), "UTF-8 byte-order mark");
                    assert!(script.contains("ReadAllText") && !script.contains("Secret"), "{script}");
                    assert!(script.contains("$synth.Rate = 0"));
                }
                _ => assert!(argv.contains(&text.to_string_lossy().into_owned())),
            }
        }
    }

    #[test]
    fn powershell_literals_are_quoted() {
        assert_eq!(ps_quote("C:\\it's here"), "'C:\\it''s here'");
        assert_eq!(sapi_rate(170), 0);
        assert_eq!(sapi_rate(450), 9);
        assert_eq!(sapi_rate(80), -7);
    }
}
