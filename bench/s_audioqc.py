"""Scenario 3: audio QC of spoken chunks.

Ours: one AUDIO_POSTCHECK job over every chunk, run the way a user runs it
(bench/ours.py says how: the orchestrator's `submit` with local execution).

Baseline: what a user would script without us, a loop that runs ffmpeg's
`ebur128` (integrated loudness, loudness range, true peak) and
`silencedetect` on each file, one ffmpeg process per file.

The loudness both sides report must agree within 0.1 LU on every file;
ffmpeg prints it with one decimal, so a difference up to 0.05 is rounding.
"""

import os
import re
import subprocess
import time

import media
import ours
from lib import NotMeasured, log, summary
from report import Row

SCEN = "3 audio QC"
# ffmpeg's loudness range and true peak per file, from the last loop.
EXTRA = {}
I_RE = re.compile(r"^\s*I:\s+(-?[\d.]+|-inf) LUFS", re.M)
LRA_RE = re.compile(r"^\s*LRA:\s+(-?[\d.]+) LU", re.M)
PEAK_RE = re.compile(r"^\s*Peak:\s+(-?[\d.]+|-inf) dBFS", re.M)


def ffmpeg_check(path, silence_db):
    """One ffmpeg run with both filters; returns the integrated loudness."""
    cp = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostats", "-nostdin", "-i", path, "-af",
         f"ebur128=peak=true:framelog=verbose,silencedetect=n={silence_db}dB:d=0.5", "-f", "null", "-"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
    )
    if cp.returncode != 0:
        raise RuntimeError(f"ffmpeg failed on {path}: {cp.stderr[-500:]}")
    m = I_RE.findall(cp.stderr)
    if not m:
        raise RuntimeError(f"no ebur128 summary for {path}")
    # Loudness range and true peak, for the record (the target is on I).
    lra, peak = LRA_RE.findall(cp.stderr), PEAK_RE.findall(cp.stderr)
    EXTRA[path] = {"lra_lu": float(lra[-1]) if lra else None, "true_peak_db": float(peak[-1]) if peak else None}
    return float(m[-1])


def ffmpeg_loop(files, silence_db):
    t0 = time.perf_counter()
    lufs = {f: ffmpeg_check(f, silence_db) for f in files}
    return time.perf_counter() - t0, lufs


def max_lufs_diff(ours_lufs, ff_lufs):
    diffs = [abs(ours_lufs[f] - ff_lufs[f]) for f in ff_lufs if ours_lufs.get(f) is not None]
    if len(diffs) != len(ff_lufs):
        raise RuntimeError(f"ours reported loudness for {len(diffs)} of {len(ff_lufs)} files")
    return max(diffs)


def measure(cfg):
    files = media.speech_chunks(cfg["qc_files"], cfg["qc_seconds"])
    silence_db = -50
    base_t, ours_t, diffs = [], [], []
    why = None
    ff_lufs = {}
    # One warm-up of each side: page cache, ffmpeg's libraries, our binary.
    ffmpeg_loop(files[:5], silence_db)
    try:
        ours.postcheck(files[:5])
    except NotMeasured as e:
        why = str(e)
    except Exception as e:
        why = f"failed: {e}"
    for r in range(cfg["repeats"]):
        t, ff_lufs = ffmpeg_loop(files, silence_db)
        base_t.append(t)
        if why is None:
            try:
                reports = {}
                t, our_lufs = ours.postcheck(files, reports)
                ours_t.append(t)
                diffs.append(max_lufs_diff(our_lufs, ff_lufs))
            except Exception as e:
                why = f"failed: {e}"
        log(f"scenario 3: repeat {r + 1}: ffmpeg loop {base_t[-1]:.2f} s"
            + (f", ours {ours_t[-1]:.2f} s" if len(ours_t) > r else ""))
    seconds_of_audio = sum(os.path.getsize(f) - 44 for f in files) / (22050 * 2)
    rows = [
        Row(SCEN, f"{len(files)} chunks (~{cfg['qc_seconds']:.0f} s each): wall time", "s", "lower",
            ours=summary(ours_t) if ours_t else None, ours_note=why,
            baseline="ffmpeg ebur128+silencedetect loop", base=summary(base_t)),
    ]
    speedups = [b / o for b, o in zip(base_t, ours_t)]
    rows.append(Row(SCEN, "speed-up over the ffmpeg loop", "x", "higher",
                    ours=summary(speedups) if speedups else None, ours_note=why, target=(">=", 5.0)))
    rows.append(Row(SCEN, "max |loudness difference| vs ffmpeg", "LU", "lower",
                    ours=summary(diffs) if diffs else None, ours_note=why, target=("<=", 0.1)))
    if not base_t:
        raise NotMeasured("the ffmpeg loop did not run")
    details = {"audio_seconds": round(seconds_of_audio, 1)}
    if ours_t:
        lra = [abs(reports[f]["lra_lu"] - EXTRA[f]["lra_lu"]) for f in files
               if reports.get(f, {}).get("lra_lu") is not None and EXTRA.get(f, {}).get("lra_lu") is not None]
        tp = [abs(reports[f]["true_peak_dbtp"] - EXTRA[f]["true_peak_db"]) for f in files
              if reports.get(f, {}).get("true_peak_dbtp") is not None and EXTRA.get(f, {}).get("true_peak_db") is not None]
        details["max_lra_difference_lu"] = max(lra) if lra else None
        details["max_true_peak_difference_db"] = max(tp) if tp else None
    return rows, details
