//! Silence detection: an RMS-per-window scanner.
//!
//! The signal is cut into fixed windows (10 ms by default). A window is
//! silent when its RMS over all channels is below the threshold. From the
//! sequence of silent and non-silent windows come the leading silence (up to
//! the first non-silent window), the trailing silence (after the last one)
//! and the longest internal silence (a silent run with sound on both sides).
//! Measurements are therefore exact to one window.

/// Default window length, in seconds.
pub const WINDOW_S: f64 = 0.010;

/// What the scanner found, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SilenceSpans {
    pub leading_s: f64,
    pub trailing_s: f64,
    pub longest_internal_s: f64,
    /// No window reached the threshold: the whole file is silent.
    pub all_silent: bool,
}

/// Streaming scanner over interleaved `f32` samples.
#[derive(Debug, Clone)]
pub struct SilenceScanner {
    channels: usize,
    window_frames: usize,
    /// Mean-square level below which a window is silent (the threshold in
    /// dBFS, squared, so no logarithm is taken per window).
    threshold_ms: f64,
    /// Sum of squares and frame count of the window being filled.
    acc: f64,
    acc_frames: usize,
    /// Frames in windows already closed.
    frames_done: u64,
    first_loud: Option<u64>,
    last_loud_end: u64,
    silent_run_start: Option<u64>,
    longest_internal: u64,
}

impl SilenceScanner {
    /// A scanner with `window_s` windows and a threshold in dBFS (RMS of a
    /// full-scale square wave = 0 dBFS).
    pub fn new(sample_rate: u32, channels: usize, threshold_dbfs: f64, window_s: f64) -> Self {
        let window_frames = ((sample_rate as f64 * window_s).round() as usize).max(1);
        SilenceScanner {
            channels: channels.max(1),
            window_frames,
            threshold_ms: 10f64.powf(threshold_dbfs / 10.0),
            acc: 0.0,
            acc_frames: 0,
            frames_done: 0,
            first_loud: None,
            last_loud_end: 0,
            silent_run_start: None,
            longest_internal: 0,
        }
    }

    /// Feeds interleaved samples (a whole number of frames).
    pub fn push(&mut self, block: &[f32]) {
        let mut rest = block;
        while !rest.is_empty() {
            let want = (self.window_frames - self.acc_frames) * self.channels;
            let (now, later) = rest.split_at(want.min(rest.len()));
            self.acc += sum_squares(now);
            self.acc_frames += now.len() / self.channels;
            if self.acc_frames == self.window_frames {
                self.close_window();
            }
            rest = later;
        }
    }

    fn close_window(&mut self) {
        let len = self.acc_frames as u64;
        let mean_square = self.acc / (self.acc_frames * self.channels) as f64;
        let start = self.frames_done;
        if mean_square >= self.threshold_ms {
            if let (Some(run), Some(_)) = (self.silent_run_start, self.first_loud) {
                self.longest_internal = self.longest_internal.max(start - run);
            }
            self.silent_run_start = None;
            self.first_loud.get_or_insert(start);
            self.last_loud_end = start + len;
        } else if self.silent_run_start.is_none() {
            self.silent_run_start = Some(start);
        }
        self.frames_done += len;
        self.acc = 0.0;
        self.acc_frames = 0;
    }

    /// Closes the last, possibly partial, window and returns the runs found.
    pub fn finish(mut self) -> SilenceRuns {
        if self.acc_frames > 0 {
            self.close_window();
        }
        SilenceRuns {
            frames: self.frames_done,
            first_loud: self.first_loud,
            last_loud_end: self.last_loud_end,
            longest_internal: self.longest_internal,
        }
    }

    /// Frames per window: segments of one file must start on a multiple of
    /// this for their runs to merge exactly.
    pub fn window_frames(&self) -> usize {
        self.window_frames
    }
}

/// The silent runs of a stretch of audio, in frames, in a form that
/// concatenates: the runs of a whole file are the merge of its segments'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SilenceRuns {
    pub frames: u64,
    /// Start of the first non-silent window, if any.
    pub first_loud: Option<u64>,
    /// End of the last non-silent window.
    pub last_loud_end: u64,
    /// Longest silent run with sound on both sides.
    pub longest_internal: u64,
}

impl SilenceRuns {
    /// The runs of `self` followed directly by `next`.
    pub fn then(self, next: SilenceRuns) -> SilenceRuns {
        let offset = self.frames;
        match (self.first_loud, next.first_loud) {
            (_, None) => SilenceRuns { frames: self.frames + next.frames, ..self },
            (None, Some(first)) => SilenceRuns {
                frames: offset + next.frames,
                first_loud: Some(offset + first),
                last_loud_end: offset + next.last_loud_end,
                longest_internal: next.longest_internal,
            },
            (Some(_), Some(first)) => {
                let gap = (offset - self.last_loud_end) + first;
                SilenceRuns {
                    frames: offset + next.frames,
                    first_loud: self.first_loud,
                    last_loud_end: offset + next.last_loud_end,
                    longest_internal: self.longest_internal.max(next.longest_internal).max(gap),
                }
            }
        }
    }

    /// The spans in seconds at `sample_rate`.
    pub fn spans(&self, sample_rate: u32) -> SilenceSpans {
        let rate = sample_rate.max(1) as f64;
        let total = self.frames as f64 / rate;
        match self.first_loud {
            None => SilenceSpans { leading_s: total, trailing_s: total, longest_internal_s: 0.0, all_silent: true },
            Some(first) => SilenceSpans {
                leading_s: first as f64 / rate,
                trailing_s: (self.frames - self.last_loud_end) as f64 / rate,
                longest_internal_s: self.longest_internal as f64 / rate,
                all_silent: false,
            },
        }
    }
}

/// Sum of squares with eight independent accumulators, which lets the
/// compiler vectorise the loop (a single running sum cannot be reordered).
fn sum_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v * v;
        }
    }
    let mut sum: f64 = lanes.iter().map(|&l| l as f64).sum();
    sum += tail.iter().map(|&v| (v * v) as f64).sum::<f64>();
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(parts: &[(f64, f32)], rate: u32) -> Vec<f32> {
        let mut out = Vec::new();
        for &(secs, amp) in parts {
            let frames = (secs * rate as f64) as usize;
            out.extend((0..frames * 2).map(|i| if i % 4 < 2 { amp } else { -amp }));
        }
        out
    }

    fn runs(sig: &[f32], rate: u32) -> SilenceRuns {
        let mut s = SilenceScanner::new(rate, 2, -50.0, WINDOW_S);
        // Uneven pushes exercise windows that straddle blocks.
        for b in sig.chunks(2 * 333) {
            s.push(b);
        }
        s.finish()
    }

    fn scan(parts: &[(f64, f32)], rate: u32) -> SilenceSpans {
        runs(&signal(parts, rate), rate).spans(rate)
    }

    #[test]
    fn segments_merge_exactly() {
        let parts = [(0.5, 0.0), (1.0, 0.5), (0.75, 0.0), (1.0, 0.5), (0.25, 0.001), (1.2, 0.0), (0.3, 0.2)];
        let sig = signal(&parts, 48_000);
        let whole = runs(&sig, 48_000);
        // Cut at every 0.25 s (a multiple of the window) into two or three pieces.
        for cut1 in (1..19).map(|k| k * 12_000 * 2) {
            for cut2 in [cut1, (cut1 + 28_800 * 2).min(sig.len())] {
                let merged = runs(&sig[..cut1], 48_000)
                    .then(runs(&sig[cut1..cut2], 48_000))
                    .then(runs(&sig[cut2..], 48_000));
                assert_eq!(merged, whole, "cuts at {cut1} {cut2}");
            }
        }
    }

    #[test]
    fn spans_are_measured_to_a_window() {
        let r = scan(&[(0.5, 0.0), (1.0, 0.5), (0.75, 0.0), (1.0, 0.5), (0.25, 0.001), (1.2, 0.0)], 48_000);
        assert!(!r.all_silent);
        assert!((r.leading_s - 0.5).abs() <= 0.011, "{r:?}");
        assert!((r.longest_internal_s - 0.75).abs() <= 0.011, "{r:?}");
        // 0.001 is -60 dBFS: below the threshold, so part of the tail.
        assert!((r.trailing_s - 1.45).abs() <= 0.011, "{r:?}");
    }

    #[test]
    fn pure_silence_is_all_silent() {
        let r = scan(&[(2.0, 0.0)], 16_000);
        assert!(r.all_silent);
        assert!((r.leading_s - 2.0).abs() < 1e-9);
        assert_eq!(r.longest_internal_s, 0.0);
    }

    #[test]
    fn no_silence_at_all() {
        let r = scan(&[(1.0, 0.3)], 44_100);
        assert_eq!((r.leading_s, r.trailing_s, r.longest_internal_s), (0.0, 0.0, 0.0));
    }
}
