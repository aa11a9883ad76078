//! One pass over an audio file measuring everything AUDIO_POSTCHECK judges:
//! integrated loudness and loudness range (the `ebur128` crate), true peak
//! ([`super::true_peak`]), sample peak, clipped samples and silence spans
//! ([`super::silence`]).
//!
//! Long uncompressed files are cut into segments measured on parallel
//! threads, each with its own reader, following the recipe documented on
//! `EbuR128::loudness_global_multiple`: segment boundaries fall on 100 ms
//! (and silence-window) multiples, each later segment starts reading 400 ms
//! early, feeds the first 100 ms through `seed_frames` to settle the
//! K-weighting filters and the next 300 ms as ordinary audio, so that its
//! first 400 ms gating block is exactly the one a single pass would have
//! produced next. Integrated loudness is therefore identical to a single
//! pass. The loudness range is computed over the union of the segments'
//! 3 s short-term blocks; their 1 s grid restarts in each segment, which
//! moves the result by a few hundredths of an LU at most. Peaks, clipping
//! and silence runs concatenate exactly.
//!
//! Each thread reads blocks of about a second, so nothing allocates per
//! sample and the filters run over long contiguous slices.

use super::audio_io::{AudioReader, StreamFormat};
use super::silence::{SilenceRuns, SilenceScanner, SilenceSpans, WINDOW_S};
use super::true_peak::{max_abs, TruePeakScanner};
use crate::error::{ErrorCode, StepError};
use ebur128::{EbuR128, Mode};
use std::path::Path;
use tokio_util::sync::CancellationToken;

/// A sample at or beyond this magnitude counts as clipped: within one LSB
/// of 16-bit full scale (32767/32768), or past full scale in float files.
pub const CLIP_LEVEL: f32 = 32767.0 / 32768.0;

/// Frames decoded per block handed to the analysers.
const BLOCK_FRAMES: usize = 48_000;

/// Files are only split into segments at least this long: below that the
/// thread start-up and the 400 ms overlap are not worth it.
const MIN_SEGMENT_S: u64 = 20;

/// Upper bound on segments per file, whatever the core count.
const MAX_SEGMENTS: usize = 8;

/// Everything measured on one file. Levels are `None` where they do not
/// exist (a silent file has no loudness and no peak in dB).
#[derive(Debug, Clone, PartialEq)]
pub struct Measurements {
    pub sample_rate: u32,
    pub channels: usize,
    pub frames: u64,
    pub integrated_lufs: Option<f64>,
    pub lra_lu: Option<f64>,
    pub true_peak_dbtp: Option<f64>,
    pub sample_peak_dbfs: Option<f64>,
    pub clipped_samples: u64,
    pub silence: SilenceSpans,
    /// Corrupt packets the decoder skipped.
    pub skipped_packets: u64,
    /// How many parallel segments the file was measured in.
    pub segments: usize,
}

impl Measurements {
    pub fn duration_s(&self) -> f64 {
        self.frames as f64 / self.sample_rate.max(1) as f64
    }
}

/// A stretch of the file, in frames; `end: None` reads to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    start: u64,
    end: Option<u64>,
}

/// What one segment contributes.
struct SegmentResult {
    meter: EbuR128,
    true_peak: f64,
    sample_peak: f32,
    clipped: u64,
    silence: SilenceRuns,
    frames: u64,
    skipped_packets: u64,
}

/// Decodes and measures `path`. Blocking: call it from `spawn_blocking`.
/// Checks `cancel` once per block.
pub fn analyze_file(
    path: &Path,
    silence_threshold_dbfs: f64,
    cancel: &CancellationToken,
) -> Result<Measurements, StepError> {
    let mut reader = AudioReader::open(path)?;
    let fmt = reader.format();
    let plan = plan_segments(&reader, path, fmt);
    let results: Vec<SegmentResult> = if plan.len() == 1 {
        vec![measure_segment(&mut reader, plan[0], fmt, silence_threshold_dbfs, cancel)?]
    } else {
        std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for &seg in &plan[1..] {
                let handle = std::thread::Builder::new()
                    .name("postcheck-segment".into())
                    .spawn_scoped(scope, move || {
                        let mut own = AudioReader::open(path)?;
                        measure_segment(&mut own, seg, fmt, silence_threshold_dbfs, cancel)
                    })
                    .map_err(|e| StepError::new(ErrorCode::Internal, format!("cannot start a postcheck thread: {e}")))?;
                handles.push(handle);
            }
            let mut out = vec![measure_segment(&mut reader, plan[0], fmt, silence_threshold_dbfs, cancel)?];
            for h in handles {
                let r = h
                    .join()
                    .map_err(|_| StepError::new(ErrorCode::Internal, "a postcheck thread panicked; please report it"))?;
                out.push(r?);
            }
            Ok::<_, StepError>(out)
        })?
    };
    Ok(combine(fmt, &results))
}

/// Merges the segments' measurements, in file order.
fn combine(fmt: StreamFormat, results: &[SegmentResult]) -> Measurements {
    let frames: u64 = results.iter().map(|r| r.frames).sum();
    let duration_s = frames as f64 / fmt.sample_rate as f64;
    let integrated =
        EbuR128::loudness_global_multiple(results.iter().map(|r| &r.meter)).ok().and_then(super::finite);
    // The loudness range needs 3 s short-term blocks above the gates.
    let lra = if duration_s >= 3.0 && integrated.is_some() {
        EbuR128::loudness_range_multiple(results.iter().map(|r| &r.meter)).ok().and_then(super::finite)
    } else {
        None
    };
    let true_peak = results.iter().map(|r| r.true_peak).fold(0.0, f64::max);
    let sample_peak = results.iter().map(|r| r.sample_peak).fold(0.0, f32::max);
    let silence = results.iter().map(|r| r.silence).fold(SilenceRuns::default(), SilenceRuns::then);
    Measurements {
        sample_rate: fmt.sample_rate,
        channels: fmt.channels,
        frames,
        integrated_lufs: integrated,
        lra_lu: lra,
        true_peak_dbtp: super::finite(20.0 * true_peak.log10()),
        sample_peak_dbfs: super::finite(20.0 * (sample_peak as f64).log10()),
        clipped_samples: results.iter().map(|r| r.clipped).sum(),
        silence: silence.spans(fmt.sample_rate),
        skipped_packets: results.iter().map(|r| r.skipped_packets).sum(),
        segments: results.len(),
    }
}

/// Frames in the 100 ms step of the `ebur128` crate's gating blocks.
fn frames_per_100ms(rate: u32) -> u64 {
    (rate as u64 + 5) / 10
}

/// Splits a long seekable PCM file into up to one segment per core.
/// Anything else (compressed audio, an unknown length, a header that
/// promises more data than the file holds) is read in one piece.
fn plan_segments(reader: &AudioReader, path: &Path, fmt: StreamFormat) -> Vec<Segment> {
    let whole = vec![Segment { start: 0, end: None }];
    let (Some(total), Some(frame_bytes)) = (reader.declared_frames, reader.pcm_frame_bytes()) else {
        return whole;
    };
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if !reader.is_seekable_pcm() || total.saturating_mul(frame_bytes) > file_len {
        return whole;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_SEGMENTS);
    let by_length = (total / (MIN_SEGMENT_S * fmt.sample_rate as u64)) as usize;
    let n = cores.min(by_length);
    if n <= 1 {
        return whole;
    }
    let window = SilenceScanner::new(fmt.sample_rate, fmt.channels, -50.0, WINDOW_S).window_frames() as u64;
    let unit = lcm(frames_per_100ms(fmt.sample_rate), window);
    let mut bounds: Vec<u64> = (1..n as u64).map(|k| total * k / n as u64 / unit * unit).collect();
    bounds.dedup();
    let too_early = match bounds.first() {
        Some(&b) => b < 4 * frames_per_100ms(fmt.sample_rate),
        None => true,
    };
    if too_early {
        return whole;
    }
    let mut segs = Vec::with_capacity(bounds.len() + 1);
    let mut start = 0;
    for b in bounds {
        segs.push(Segment { start, end: Some(b) });
        start = b;
    }
    segs.push(Segment { start, end: None });
    segs
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    if a == 0 || b == 0 {
        a.max(b).max(1)
    } else {
        a / gcd(a, b) * b
    }
}

fn new_meter(fmt: StreamFormat) -> Result<EbuR128, StepError> {
    EbuR128::new(fmt.channels as u32, fmt.sample_rate, Mode::I | Mode::LRA).map_err(|e| {
        StepError::new(
            ErrorCode::AudioDecodeFailed,
            format!(
                "{} channel(s) at {} Hz cannot be measured ({e}); up to 64 channels at 16 Hz or more are supported",
                fmt.channels, fmt.sample_rate
            ),
        )
    })
}

/// Measures one segment with `reader` (freshly opened, or positioned at
/// the start of the file for the first segment).
fn measure_segment(
    reader: &mut AudioReader,
    seg: Segment,
    fmt: StreamFormat,
    silence_threshold_dbfs: f64,
    cancel: &CancellationToken,
) -> Result<SegmentResult, StepError> {
    let ch = fmt.channels;
    let mut meter = new_meter(fmt)?;
    let mut true_peak = TruePeakScanner::new(fmt.sample_rate, ch);
    let mut silence = SilenceScanner::new(fmt.sample_rate, ch, silence_threshold_dbfs, WINDOW_S);
    let (mut sample_peak, mut clipped, mut frames) = (0f32, 0u64, 0u64);

    // A later segment starts 400 ms early: 100 ms to seed the filters, then
    // 300 ms that complete its first gating block (see the module docs).
    let s100 = frames_per_100ms(fmt.sample_rate);
    let lead_start = if seg.start > 0 { seg.start.saturating_sub(4 * s100) } else { 0 };
    let seed_end = if seg.start > 0 { lead_start + s100 } else { 0 };
    if seg.start > 0 {
        reader.seek_to_frame(lead_start)?;
    }
    let mut lead: Vec<f32> = Vec::new();
    let mut primed = seg.start == 0;
    let mut pos = lead_start;
    let mut block = Vec::with_capacity(BLOCK_FRAMES * ch + 8192);
    loop {
        if cancel.is_cancelled() {
            return Err(StepError::new(ErrorCode::Cancelled, "the job was cancelled during the audio check"));
        }
        if seg.end.is_some_and(|e| pos >= e) || !reader.read_block(&mut block, BLOCK_FRAMES)? {
            break;
        }
        let mut n = (block.len() / ch) as u64;
        if let Some(e) = seg.end {
            n = n.min(e - pos);
        }
        let mut b = &block[..n as usize * ch];
        if pos < seg.start {
            let lead_n = (seg.start - pos).min(n);
            let seed_n = seed_end.saturating_sub(pos).min(lead_n);
            let (this_lead, rest) = b.split_at(lead_n as usize * ch);
            let (seed, counted) = this_lead.split_at(seed_n as usize * ch);
            let _ = meter.seed_frames_f32(seed);
            let _ = meter.add_frames_f32(counted);
            lead.extend_from_slice(this_lead);
            b = rest;
        }
        if !primed && pos + n >= seg.start {
            true_peak.prime(&lead);
            primed = true;
        }
        pos += n;
        if b.is_empty() {
            continue;
        }
        // The channel count divides every block, which is all the crate checks.
        let _ = meter.add_frames_f32(b);
        true_peak.push(b);
        silence.push(b);
        let (peak, clips) = peak_and_clips(b);
        sample_peak = sample_peak.max(peak);
        clipped += clips;
        frames += (b.len() / ch) as u64;
    }
    Ok(SegmentResult {
        meter,
        true_peak: true_peak.peak(),
        sample_peak,
        clipped,
        silence: silence.finish(),
        frames,
        skipped_packets: reader.skipped_packets,
    })
}

/// Largest magnitude in `x` and how many samples reach [`CLIP_LEVEL`].
fn peak_and_clips(x: &[f32]) -> (f32, u64) {
    let mut clips = [0u32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (n, v) in clips.iter_mut().zip(c) {
            *n += (v.abs() >= CLIP_LEVEL) as u32;
        }
    }
    let n = clips.iter().map(|&c| c as u64).sum::<u64>() + tail.iter().filter(|v| v.abs() >= CLIP_LEVEL).count() as u64;
    (max_abs(x), n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcm_of_steps() {
        assert_eq!(lcm(4800, 480), 4800);
        assert_eq!(lcm(2205, 221), 487_305);
        assert_eq!(lcm(0, 7), 7);
    }
}
