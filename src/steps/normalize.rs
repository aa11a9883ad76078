//! Loudness normalisation of a rendered chunk (TTS_RENDER_CHUNKS), in pure
//! Rust with the same meters AUDIO_POSTCHECK uses: integrated loudness from
//! the `ebur128` crate, true peak from [`super::true_peak`].
//!
//! A chunk is measured, brought to the target loudness by a constant gain
//! and, where that gain would push the true peak over the ceiling, passed
//! through a look-ahead limiter: the gain needed at each frame is spread
//! backwards over the look-ahead window (a sliding minimum) and smoothed
//! with a moving average of the same length, so the gain is already down
//! when a peak arrives and never steps; it recovers over the release time.
//! The limiter works on sample peaks, so the result is measured again (as
//! the 16-bit file will hold it) and the two settings corrected: the limiter
//! threshold is lowered by any true-peak excess, and the gain raised by any
//! loudness the limiting took away. A few rounds settle both.
//!
//! The file is rewritten as 16-bit PCM WAV under a temporary name and
//! renamed over the original, so no half-written chunk is ever seen.

use super::audio_io::{AudioReader, StreamFormat};
use super::true_peak::TruePeakScanner;
use crate::artifacts;
use crate::error::{ErrorCode, StepError};
use ebur128::{EbuR128, Mode};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// Decibels kept between the limiter's ceiling and the QC's
/// `max_true_peak_dbtp`, so that the QC passes with room to spare.
pub const TRUE_PEAK_MARGIN_DB: f64 = 0.3;

/// How close to the target the integrated loudness must land, LU. Far
/// inside the QC's default tolerance of 2 LU.
const LOUDNESS_PRECISION_LU: f64 = 0.1;

/// Look-ahead (and attack) of the limiter, seconds.
const LOOK_AHEAD_S: f64 = 0.005;

/// Release time constant of the limiter, seconds.
const RELEASE_S: f64 = 0.08;

/// Rounds of measure-and-correct before the result is taken as it is.
const MAX_ROUNDS: usize = 8;

/// Largest gain applied, dB: beyond it the chunk is noise, not quiet speech.
const MAX_GAIN_DB: f64 = 40.0;

/// What normalising one chunk did, for the step's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Normalized {
    /// Integrated loudness as rendered, LUFS (`None` when unmeasurable:
    /// silence, or shorter than one 400 ms block).
    pub before_lufs: Option<f64>,
    /// Integrated loudness as written, LUFS.
    pub after_lufs: Option<f64>,
    pub true_peak_before_dbtp: Option<f64>,
    pub true_peak_after_dbtp: Option<f64>,
    /// The constant gain applied, dB (0 when the chunk was left alone).
    pub gain_db: f64,
    /// Whether the limiter had to hold peaks down.
    pub limited: bool,
}

/// The loudness to reach and the true peak not to exceed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    pub lufs: f64,
    pub ceiling_dbtp: f64,
}

/// Normalises the WAV at `path` in place. Blocking: call it from
/// `spawn_blocking`. A chunk whose loudness cannot be measured is left as
/// it is (and reported with `None` levels).
pub fn normalize_wav(path: &Path, target: Target, cancel: &CancellationToken) -> Result<Normalized, StepError> {
    let (fmt, samples) = read_all(path)?;
    let before = measure(&samples, fmt)?;
    let Some(before_lufs) = before.lufs else {
        return Ok(Normalized {
            before_lufs: None,
            after_lufs: None,
            true_peak_before_dbtp: before.true_peak_dbtp(),
            true_peak_after_dbtp: before.true_peak_dbtp(),
            gain_db: 0.0,
            limited: false,
        });
    };
    let ceiling = db_to_lin(target.ceiling_dbtp);
    let mut gain_db = (target.lufs - before_lufs).min(MAX_GAIN_DB);
    let mut threshold = ceiling;
    // (samples, their level, gain, limited, distance from the target)
    let mut best: Option<(Vec<i16>, Level, f64, bool, f64)> = None;
    for _ in 0..MAX_ROUNDS {
        if cancel.is_cancelled() {
            return Err(StepError::new(ErrorCode::Cancelled, "normalising was cancelled"));
        }
        let gain = db_to_lin(gain_db) as f32;
        let mut out: Vec<f32> = samples.iter().map(|s| s * gain).collect();
        let limited = before.true_peak * (gain as f64) > threshold;
        if limited {
            limit(&mut out, fmt, threshold as f32);
        }
        let pcm = to_pcm16(&out);
        let level = measure(&pcm_to_f32(&pcm), fmt)?;
        let peak_ok = level.true_peak <= ceiling;
        let loudness_error = level.lufs.map_or(0.0, |l| target.lufs - l);
        let done = peak_ok && loudness_error.abs() <= LOUDNESS_PRECISION_LU;
        // Keep the closest safe result so far, in case the rounds run out.
        if peak_ok && best.as_ref().map_or(true, |b| loudness_error.abs() < b.4) {
            best = Some((pcm, level, gain_db, limited, loudness_error.abs()));
        }
        if done {
            break;
        }
        if !peak_ok {
            // Lower the threshold by the excess, plus a hair for rounding.
            threshold *= ceiling / level.true_peak * 0.999;
        }
        gain_db = (gain_db + loudness_error).min(MAX_GAIN_DB);
    }
    let (pcm, level, gain_db, limited, _) = best.ok_or_else(|| {
        StepError::new(
            ErrorCode::Internal,
            format!("normalising {} could not hold the true peak below {:.1} dBTP", path.display(), target.ceiling_dbtp),
        )
    })?;
    let folder = path.parent().unwrap_or(path);
    write_wav16(path, fmt, &pcm)
        .map_err(|e| StepError::io_in(format!("rewriting {} at its new loudness", path.display()), folder, e))?;
    Ok(Normalized {
        before_lufs: Some(round2(before_lufs)),
        after_lufs: level.lufs.map(round2),
        true_peak_before_dbtp: before.true_peak_dbtp().map(round2),
        true_peak_after_dbtp: level.true_peak_dbtp().map(round2),
        gain_db: round2(gain_db),
        limited,
    })
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn db_to_lin(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

/// Decodes the whole file (a chunk is seconds to minutes of speech).
fn read_all(path: &Path) -> Result<(StreamFormat, Vec<f32>), StepError> {
    let mut reader = AudioReader::open(path)?;
    let fmt = reader.format();
    let mut all = Vec::new();
    let mut block = Vec::new();
    while reader.read_block(&mut block, 1 << 16)? {
        all.extend_from_slice(&block);
    }
    Ok((fmt, all))
}

/// Integrated loudness and true peak (linear) of interleaved samples.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Level {
    lufs: Option<f64>,
    true_peak: f64,
}

impl Level {
    fn true_peak_dbtp(&self) -> Option<f64> {
        super::finite(20.0 * self.true_peak.log10())
    }
}

fn measure(samples: &[f32], fmt: StreamFormat) -> Result<Level, StepError> {
    let meter_error = |e| StepError::new(ErrorCode::Internal, format!("the loudness meter failed: {e}"));
    let mut meter = EbuR128::new(fmt.channels as u32, fmt.sample_rate, Mode::I).map_err(meter_error)?;
    meter.add_frames_f32(samples).map_err(meter_error)?;
    let lufs = meter.loudness_global().ok().and_then(super::finite);
    let mut tp = TruePeakScanner::new(fmt.sample_rate, fmt.channels);
    tp.push(samples);
    Ok(Level { lufs, true_peak: tp.peak() })
}

/// Holds every sample's magnitude at or below `threshold` with a smooth
/// gain (channels linked, so the stereo image does not move).
fn limit(x: &mut [f32], fmt: StreamFormat, threshold: f32) {
    let ch = fmt.channels.max(1);
    let frames = x.len() / ch;
    let look = ((fmt.sample_rate as f64 * LOOK_AHEAD_S).round() as usize).max(1);
    let needed: Vec<f32> = x
        .chunks_exact(ch)
        .map(|f| {
            let p = f.iter().fold(0f32, |m, s| m.max(s.abs()));
            if p > threshold {
                threshold / p
            } else {
                1.0
            }
        })
        .collect();
    // ahead[n] = min(needed[n .. n + look]): every frame of the window that
    // ends at a peak already asks for the peak's gain.
    let ahead = sliding_min_ahead(&needed, look);
    // The average of the `look` values ending at n is at most needed[n],
    // because each of them covers frame n.
    let release = 1.0 - (-1.0 / (RELEASE_S * fmt.sample_rate as f64)).exp();
    let mut sum = 0f64;
    let mut gain = 1f64;
    for n in 0..frames {
        sum += ahead[n] as f64;
        let count = if n >= look {
            sum -= ahead[n - look] as f64;
            look
        } else {
            n + 1
        };
        let smooth = sum / count as f64;
        // Falls at once to the smoothed gain, rises no faster than release.
        gain = smooth.min(gain + (1.0 - gain) * release);
        for s in &mut x[n * ch..(n + 1) * ch] {
            *s *= gain as f32;
        }
    }
}

/// For each index, the minimum of `v[n .. n + window]` (monotonic deque).
fn sliding_min_ahead(v: &[f32], window: usize) -> Vec<f32> {
    let mut out = vec![1.0; v.len()];
    let mut deque: VecDeque<usize> = VecDeque::new();
    for i in (0..v.len()).rev() {
        while deque.back().is_some_and(|&j| v[j] >= v[i]) {
            deque.pop_back();
        }
        deque.push_back(i);
        while deque.front().is_some_and(|&j| j >= i + window) {
            deque.pop_front();
        }
        out[i] = v[deque[0]];
    }
    out
}

fn to_pcm16(x: &[f32]) -> Vec<i16> {
    x.iter().map(|s| (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16).collect()
}

fn pcm_to_f32(x: &[i16]) -> Vec<f32> {
    x.iter().map(|&s| s as f32 * (1.0 / 32_768.0)).collect()
}

/// Writes 16-bit PCM WAV, atomically (temporary file, then rename).
fn write_wav16(path: &Path, fmt: StreamFormat, pcm: &[i16]) -> std::io::Result<()> {
    let channels = fmt.channels as u16;
    let data_len = (pcm.len() * 2) as u32;
    let mut b = Vec::with_capacity(44 + pcm.len() * 2);
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data_len).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&channels.to_le_bytes());
    b.extend_from_slice(&fmt.sample_rate.to_le_bytes());
    b.extend_from_slice(&(fmt.sample_rate * channels as u32 * 2).to_le_bytes());
    b.extend_from_slice(&(channels * 2).to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&data_len.to_le_bytes());
    for s in pcm {
        b.extend_from_slice(&s.to_le_bytes());
    }
    artifacts::write_atomic(path, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 22_050;

    /// Speech-like test signal: bursts of a 300 Hz tone at -26 dBFS with
    /// short 0 dBFS clicks, separated by pauses.
    fn bursts(secs: f64) -> Vec<f32> {
        let n = (secs * RATE as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / RATE as f64;
                let on = (t * 2.0).fract() < 0.7;
                let tone = if on { 0.05 * (2.0 * std::f64::consts::PI * 300.0 * t).sin() } else { 0.0 };
                let click = if on && i % 4410 < 3 { 0.95 } else { 0.0 };
                (tone + click) as f32
            })
            .collect()
    }

    fn write_f32_wav(path: &Path, samples: &[f32]) {
        write_wav16(path, StreamFormat { sample_rate: RATE, channels: 1 }, &to_pcm16(samples)).unwrap();
    }

    #[test]
    fn the_gain_reaches_the_target_and_the_limiter_holds_the_ceiling() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.wav");
        write_f32_wav(&p, &bursts(6.0));
        let target = Target { lufs: -16.0, ceiling_dbtp: -1.3 };
        let n = normalize_wav(&p, target, &CancellationToken::new()).unwrap();
        assert!(n.before_lufs.unwrap() < -20.0, "{n:?}");
        assert!(n.limited, "clicks at 0 dBFS plus gain need the limiter: {n:?}");
        // Measured again from the rewritten file, independently.
        let (fmt, samples) = read_all(&p).unwrap();
        assert_eq!(fmt, StreamFormat { sample_rate: RATE, channels: 1 });
        assert_eq!(samples.len(), (6.0 * RATE as f64) as usize);
        let level = measure(&samples, fmt).unwrap();
        assert!((level.lufs.unwrap() + 16.0).abs() <= LOUDNESS_PRECISION_LU + 0.01, "{level:?}");
        assert!(level.true_peak_dbtp().unwrap() <= -1.3, "{level:?}");
        assert_eq!(n.after_lufs, level.lufs.map(round2));
        // No stray temporary file is left beside the chunk.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_loud_chunk_is_turned_down_without_limiting() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loud.wav");
        let tone: Vec<f32> =
            (0..RATE * 3).map(|i| (0.5 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / RATE as f64).sin()) as f32).collect();
        write_f32_wav(&p, &tone);
        let n = normalize_wav(&p, Target { lufs: -23.0, ceiling_dbtp: -1.0 }, &CancellationToken::new()).unwrap();
        assert!(n.gain_db < 0.0 && !n.limited, "{n:?}");
        assert!((n.after_lufs.unwrap() + 23.0).abs() <= 0.11, "{n:?}");
    }

    #[test]
    fn silence_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wav");
        write_f32_wav(&p, &vec![0.0; RATE as usize]);
        let before = std::fs::read(&p).unwrap();
        let n = normalize_wav(&p, Target { lufs: -16.0, ceiling_dbtp: -1.0 }, &CancellationToken::new()).unwrap();
        assert_eq!((n.before_lufs, n.gain_db), (None, 0.0));
        assert_eq!(std::fs::read(&p).unwrap(), before);
    }

    #[test]
    fn the_smoothed_gain_never_exceeds_what_a_frame_needs() {
        let fmt = StreamFormat { sample_rate: RATE, channels: 2 };
        let mut x: Vec<f32> = (0..20_000).map(|i| if i % 997 == 0 { 1.5 } else { 0.3 }).collect();
        limit(&mut x, fmt, 0.8);
        assert!(x.iter().all(|s| s.abs() <= 0.8 + 1e-6));
        assert_eq!(sliding_min_ahead(&[1.0, 0.5, 1.0, 1.0, 0.2], 2), vec![0.5, 0.5, 1.0, 0.2, 0.2]);
    }
}
