//! One pass over an audio file measuring everything AUDIO_POSTCHECK judges:
//! integrated loudness and loudness range (the `ebur128` crate), true peak
//! ([`super::true_peak`]), sample peak, clipped samples and silence spans
//! ([`super::silence`]).
//!
//! Long uncompressed files are cut into segments measured on parallel
//! threads, each with its own reader, following the recipe documented on
//! `EbuR128::loudness_global_multiple`: each later segment starts reading
//! early, feeds 100 ms through `seed_frames` to settle the K-weighting
//! filters and the next 300 ms as ordinary audio, so that its first 400 ms
//! gating block is exactly the one a single pass would have produced next.
//! Boundaries are placed so that the 3 s short-term blocks (one per second)
//! also fall on the single-pass grid, and the two short-term blocks that
//! straddle each boundary come from a small loudness-range-only meter fed
//! the 4 s around it. Integrated loudness and loudness range therefore equal
//! a single pass (a unit test checks both to 1e-6), and peaks, clipping and
//! silence runs concatenate exactly.
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
    /// Short-term blocks straddling this segment's start (later segments).
    patch: Option<EbuR128>,
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
    analyze_with(path, silence_threshold_dbfs, cancel, cores())
}

/// The cores a measurement may spread over, asked once: on Linux each ask
/// reads the cgroup's CPU quota files, a dozen system calls that cost a
/// short file's whole measurement.
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// [`analyze_file`] with an explicit number of threads to spread over.
fn analyze_with(
    path: &Path,
    silence_threshold_dbfs: f64,
    cancel: &CancellationToken,
    cores: usize,
) -> Result<Measurements, StepError> {
    let mut reader = AudioReader::open(path)?;
    let fmt = reader.format();
    let plan = plan_segments(&reader, path, fmt, cores);
    let results: Vec<SegmentResult> = if plan.len() == 1 {
        vec![measure_segment(&mut reader, plan[0], fmt, silence_threshold_dbfs, cancel)?]
    } else {
        // One segment failing stops the others early instead of letting the
        // scope wait for work whose result is thrown away.
        let siblings = cancel.child_token();
        let outcome = std::thread::scope(|scope| {
            let mut handles = Vec::new();
            for &seg in &plan[1..] {
                let siblings = &siblings;
                let handle = std::thread::Builder::new()
                    .name("postcheck-segment".into())
                    .spawn_scoped(scope, move || {
                        let mut own = AudioReader::open(path)?;
                        measure_segment(&mut own, seg, fmt, silence_threshold_dbfs, siblings)
                    })
                    .map_err(|e| StepError::new(ErrorCode::Internal, format!("cannot start a postcheck thread: {e}")));
                match handle {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        siblings.cancel();
                        return Err(e);
                    }
                }
            }
            let first = measure_segment(&mut reader, plan[0], fmt, silence_threshold_dbfs, &siblings);
            if first.is_err() {
                siblings.cancel();
            }
            let mut out = vec![first];
            for h in handles {
                let r = h.join().unwrap_or_else(|_| {
                    Err(StepError::new(ErrorCode::Internal, "a postcheck thread panicked; please report it"))
                });
                if r.is_err() {
                    siblings.cancel();
                }
                out.push(r);
            }
            Ok(out)
        })?;
        // Report the root cause, not the cancellations it triggered.
        let mut results = Vec::with_capacity(outcome.len());
        let mut first_error: Option<StepError> = None;
        for r in outcome {
            match r {
                Ok(m) => results.push(m),
                Err(e) => {
                    let replace = match &first_error {
                        None => true,
                        Some(f) => f.code == ErrorCode::Cancelled && e.code != ErrorCode::Cancelled,
                    };
                    if replace {
                        first_error = Some(e);
                    }
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        results
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
        let meters = results.iter().flat_map(|r| std::iter::once(&r.meter).chain(r.patch.as_ref()));
        EbuR128::loudness_range_multiple(meters).ok().and_then(super::finite)
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
///
/// A boundary `b` must sit on the grids of every measurement that is
/// merged: on a silence window (so windows are the same as in one pass),
/// and 300 ms past a whole second (`b = 3 * s100 (mod 10 * s100)`), so that
/// a segment starting to count at `b - 300 ms` lays its 400 ms gating
/// blocks and 3 s short-term blocks exactly where a single pass would.
fn plan_segments(reader: &AudioReader, path: &Path, fmt: StreamFormat, cores: usize) -> Vec<Segment> {
    let whole = vec![Segment { start: 0, end: None }];
    let (Some(total), Some(frame_bytes)) = (reader.declared_frames, reader.pcm_frame_bytes()) else {
        return whole;
    };
    let file_len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if !reader.is_seekable_pcm() || total.saturating_mul(frame_bytes) > file_len {
        return whole;
    }
    let rate = fmt.sample_rate as u64;
    let n = cores.min(MAX_SEGMENTS).min((total / (MIN_SEGMENT_S * rate)) as usize);
    if n <= 1 {
        return whole;
    }
    let s100 = frames_per_100ms(fmt.sample_rate);
    let window = SilenceScanner::new(fmt.sample_rate, fmt.channels, -50.0, WINDOW_S).window_frames() as u64;
    let second = 10 * s100;
    let margin = 5 * rate;
    let mut bounds = Vec::with_capacity(n - 1);
    let mut previous = 0;
    for k in 1..n as u64 {
        let target = total * k / n as u64;
        // Candidates are 3 * s100 + m * second; take the nearest one that
        // is also on the silence grid, searching at most a few minutes.
        let m0 = target.saturating_sub(3 * s100) / second;
        let found = (0..=300u64)
            .flat_map(|d| [m0 + d, m0.saturating_sub(d)])
            .map(|m| 3 * s100 + m * second)
            .find(|b| b % window == 0);
        match found {
            Some(b) if b >= previous + margin && b + margin <= total => {
                bounds.push(b);
                previous = b;
            }
            _ => return whole,
        }
    }
    let mut segs = Vec::with_capacity(n);
    let mut start = 0;
    for b in bounds {
        segs.push(Segment { start, end: Some(b) });
        start = b;
    }
    segs.push(Segment { start, end: None });
    segs
}

fn new_meter(fmt: StreamFormat, mode: Mode) -> Result<EbuR128, StepError> {
    EbuR128::new(fmt.channels as u32, fmt.sample_rate, mode).map_err(|e| {
        StepError::new(
            ErrorCode::AudioDecodeFailed,
            format!(
                "{} channel(s) at {} Hz cannot be measured ({e}); up to 64 channels at 16 Hz or more are supported",
                fmt.channels, fmt.sample_rate
            ),
        )
    })
}

/// Frame ranges `[from, to)` in which a later segment feeds its meters.
struct Feeds {
    /// The main meter's filter warm-up (`seed_frames`).
    main_seed: (u64, u64),
    /// Audio the main meter counts from before the segment proper.
    main_lead: (u64, u64),
    /// The short-term patch meter's warm-up and counted audio.
    patch_seed: (u64, u64),
    patch_add: (u64, u64),
}

impl Feeds {
    /// The ranges for a segment starting at `start > 0`. The short-term
    /// blocks ending 0.7 s and 1.7 s after the boundary straddle it, so
    /// neither neighbour produces them: a small `Mode::LRA` meter fed the
    /// 4 s around the boundary does, and only they count in the range.
    fn for_boundary(start: u64, s100: u64) -> Feeds {
        Feeds {
            main_seed: (start - 4 * s100, start - 3 * s100),
            main_lead: (start - 3 * s100, start),
            patch_seed: (start - 24 * s100, start - 23 * s100),
            patch_add: (start - 23 * s100, start + 17 * s100),
        }
    }
}

/// The part of `block` (interleaved, first frame at `pos`) inside `range`.
fn slice_of(block: &[f32], ch: usize, pos: u64, range: (u64, u64)) -> &[f32] {
    let frames = (block.len() / ch) as u64;
    let from = range.0.clamp(pos, pos + frames) - pos;
    let to = range.1.clamp(pos, pos + frames) - pos;
    &block[from as usize * ch..to as usize * ch]
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
    let mut meter = new_meter(fmt, Mode::I | Mode::LRA)?;
    let mut true_peak = TruePeakScanner::new(fmt.sample_rate, ch);
    let mut silence = SilenceScanner::new(fmt.sample_rate, ch, silence_threshold_dbfs, WINDOW_S);
    let (mut sample_peak, mut clipped, mut frames) = (0f32, 0u64, 0u64);

    let s100 = frames_per_100ms(fmt.sample_rate);
    let feeds = (seg.start > 0).then(|| Feeds::for_boundary(seg.start, s100));
    let mut patch = match feeds {
        Some(_) => Some(new_meter(fmt, Mode::LRA)?),
        None => None,
    };
    let mut pos = match &feeds {
        Some(f) => {
            reader.seek_to_frame(f.patch_seed.0)?;
            f.patch_seed.0
        }
        None => 0,
    };
    let mut primed = feeds.is_none();
    let mut lead: Vec<f32> = Vec::new();
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
        let all = &block[..n as usize * ch];
        // Errors from the crate only arise for a block that is not a whole
        // number of frames, which the reader rules out.
        if let (Some(f), Some(p)) = (&feeds, patch.as_mut()) {
            let _ = p.seed_frames_f32(slice_of(all, ch, pos, f.patch_seed));
            let _ = p.add_frames_f32(slice_of(all, ch, pos, f.patch_add));
            let _ = meter.seed_frames_f32(slice_of(all, ch, pos, f.main_seed));
            let lead_part = slice_of(all, ch, pos, f.main_lead);
            let _ = meter.add_frames_f32(lead_part);
            lead.extend_from_slice(lead_part);
        }
        if !primed && pos + n >= seg.start {
            true_peak.prime(&lead);
            primed = true;
        }
        let b = slice_of(all, ch, pos, (seg.start, u64::MAX));
        pos += n;
        if b.is_empty() {
            continue;
        }
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
        patch,
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

    /// A 16-bit stereo WAV at 16 kHz: bursts of noise at changing levels,
    /// silences, and a stretch driven into clipping.
    fn write_test_wav(path: &Path, secs: usize) {
        let rate = 16_000usize;
        let mut seed = 7u64;
        let mut data = Vec::with_capacity(secs * rate * 4);
        for n in 0..secs * rate {
            let t = n / rate;
            let level = match t % 7 {
                0 => 0.0,
                1 => 0.05,
                2 | 3 => 0.3,
                4 => 1.4,
                5 => 0.01,
                _ => 0.6,
            };
            for _ in 0..2 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let r = ((seed >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0;
                let v = (r * level * 32768.0).round().clamp(-32768.0, 32767.0) as i16;
                data.extend_from_slice(&v.to_le_bytes());
            }
        }
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        for v in [16u32, 1 | (2 << 16), rate as u32, (rate * 4) as u32, 4 | (16 << 16)] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(b"data");
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(&data);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn segments_agree_with_a_single_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.wav");
        write_test_wav(&path, 67);
        let cancel = CancellationToken::new();
        let single = analyze_with(&path, -50.0, &cancel, 1).unwrap();
        assert_eq!(single.segments, 1);
        assert!(single.clipped_samples > 0 && single.silence.longest_internal_s > 0.9);
        for cores in [2, 3] {
            let split = analyze_with(&path, -50.0, &cancel, cores).unwrap();
            assert_eq!(split.segments, cores);
            let (a, b) = (single.integrated_lufs.unwrap(), split.integrated_lufs.unwrap());
            assert!((a - b).abs() < 1e-9, "integrated {a} vs {b}");
            let (a, b) = (single.lra_lu.unwrap(), split.lra_lu.unwrap());
            assert!((a - b).abs() < 1e-6, "range {a} vs {b}");
            assert_eq!(single.true_peak_dbtp, split.true_peak_dbtp);
            assert_eq!(single.sample_peak_dbfs, split.sample_peak_dbfs);
            assert_eq!(single.clipped_samples, split.clipped_samples);
            assert_eq!(single.silence, split.silence);
            assert_eq!(single.frames, split.frames);
        }
    }

    #[test]
    fn cancellation_stops_the_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.wav");
        write_test_wav(&path, 3);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(analyze_file(&path, -50.0, &cancel).unwrap_err().code, ErrorCode::Cancelled);
    }

}
