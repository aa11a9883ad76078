"""Scenario 4: frame sampling from a generated 720p H.264 clip.

Ours: one FRAME_SAMPLING job with `count` (the step picks its strategy).

Baselines, both run by hand the way a user would, at the same timestamps as
ours (the middle of each of N equal shares) and the same JPEG quality:
- the seek loop: one `ffmpeg -ss T -i clip -frames:v 1` per timestamp;
- the single pass: one `ffmpeg -i clip -vf fps=N/DURATION` run.

The target compares ours with the better of the two.
"""

import os
import shutil
import subprocess
import tempfile
import time

import media
import ours
from lib import OUT_DIR, NotMeasured, log, run, summary
from report import Row

SCEN = "4 frames"
QUALITY = "3"  # [frames] jpeg_quality in config/default.toml


def duration(path):
    cp = run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path])
    return float(cp.stdout.strip())


def ffmpeg(args):
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
                   stdin=subprocess.DEVNULL, check=True, timeout=1800, capture_output=True)


def seek_loop(clip, n, dur, out):
    t0 = time.perf_counter()
    for i in range(n):
        ts = (i + 0.5) * dur / n
        ffmpeg(["-ss", f"{ts:.3f}", "-i", clip, "-frames:v", "1", "-q:v", QUALITY,
                os.path.join(out, f"seek_{i + 1:04d}.jpg")])
    return time.perf_counter() - t0


def fps_pass(clip, n, dur, out):
    t0 = time.perf_counter()
    ffmpeg(["-i", clip, "-vf", f"fps={n}/{dur:.3f}", "-frames:v", str(n), "-q:v", QUALITY,
            os.path.join(out, "pass_%04d.jpg")])
    return time.perf_counter() - t0


def count_jpgs(folder, prefix):
    return sum(1 for f in os.listdir(folder) if f.startswith(prefix) and f.endswith(".jpg"))


def measure(cfg):
    clip = media.video(cfg["clip_s"])
    dur = duration(clip)
    rows, details = [], {"clip_s": dur}
    why = None
    scratch = tempfile.mkdtemp(prefix="frames-", dir=OUT_DIR)
    try:
        # Warm-up: the clip into the page cache, ffmpeg's libraries, our path.
        fps_pass(clip, 2, dur, scratch)
        try:
            ours.frames(clip, 2)
        except NotMeasured as e:
            why = str(e)
        except Exception as e:
            why = f"failed: {e}"
        for n in cfg["frame_counts"]:
            seek_t, pass_t, ours_t, strategies = [], [], [], set()
            # Fewer repeats than elsewhere: the 200-frame seek loop alone
            # takes most of a minute.
            for r in range(cfg["frames_repeats"]):
                out = tempfile.mkdtemp(dir=scratch)
                seek_t.append(seek_loop(clip, n, dur, out))
                pass_t.append(fps_pass(clip, n, dur, out))
                got = (count_jpgs(out, "seek_"), count_jpgs(out, "pass_"))
                if got != (n, n):
                    raise RuntimeError(f"the baselines wrote {got} frames, expected {n} each")
                if why is None:
                    try:
                        t, strategy = ours.frames(clip, n)
                        ours_t.append(t)
                        strategies.add(strategy)
                    except Exception as e:
                        why = f"failed: {e}"
                shutil.rmtree(out, ignore_errors=True)
                log(f"scenario 4: {n} frames, repeat {r + 1}: seek loop {seek_t[-1]:.2f} s, "
                    f"fps pass {pass_t[-1]:.2f} s" + (f", ours {ours_t[-1]:.2f} s" if len(ours_t) > r else ""))
            metric = f"{n} frames from {dur:.0f} s 720p"
            o = summary(ours_t) if ours_t else None
            rows.append(Row(SCEN, metric, "s", "lower", ours=o, ours_note=why,
                            baseline="per-timestamp seek loop", base=summary(seek_t)))
            rows.append(Row(SCEN, metric, "s", "lower", ours=o, ours_note=why,
                            baseline="single fps= pass", base=summary(pass_t)))
            best = [min(a, b) for a, b in zip(seek_t, pass_t)]
            vs_best = [x / b for x, b in zip(ours_t, best)]
            rows.append(Row(SCEN, f"{n} frames: ours / better baseline", "x", "lower",
                            ours=summary(vs_best) if vs_best else None, ours_note=why, target=("<=", 1.1)))
            details[f"strategy_{n}"] = sorted(strategies)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows, details
