"""Scenario 5: text to speech of N chunks.

Ours: one TTS_RENDER_CHUNKS job with every chunk (espeak-ng on Linux,
chunks rendered in parallel as `[tts] parallel_chunks` allows).

Baseline: a sequential loop, one `espeak-ng -v en-us -s 160 -w OUT -f TXT`
per chunk, what a user would script.

The speed-up compares the same work: ours with loudness normalisation off
(`[tts] normalize_lufs = "off"`), since the loop does not normalise. The
default, which measures and normalises every chunk to the QC's loudness
target (two passes over the audio, true peak oversampled), is timed too,
as its own row.
"""

import os
import shutil
import tempfile
import time

import media
import ours
from lib import OUT_DIR, NotMeasured, log, run, summary
from report import Row

SCEN = "5 TTS"


def espeak_loop(texts, out):
    t0 = time.perf_counter()
    for i, text in enumerate(texts):
        txt = os.path.join(out, f"chunk_{i:03d}.txt")
        with open(txt, "w") as f:
            f.write(text)
        run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", os.path.join(out, f"chunk_{i:03d}.wav"), "-f", txt],
            timeout_s=120)
    return time.perf_counter() - t0


def measure(cfg):
    texts = media.tts_texts(cfg["tts_chunks"])
    base_t, ours_t, norm_t = [], [], []
    why = norm_why = None
    scratch = tempfile.mkdtemp(prefix="tts-", dir=OUT_DIR)
    try:
        espeak_loop(texts[:2], scratch)
        try:
            ours.tts(texts[:2], normalize=False)
        except NotMeasured as e:
            why = str(e)
        except Exception as e:
            why = f"failed: {e}"
        for r in range(cfg["repeats"]):
            out = tempfile.mkdtemp(dir=scratch)
            base_t.append(espeak_loop(texts, out))
            shutil.rmtree(out, ignore_errors=True)
            if why is None:
                try:
                    ours_t.append(ours.tts(texts, normalize=False))
                except Exception as e:
                    why = f"failed: {e}"
            if why is None and norm_why is None:
                try:
                    norm_t.append(ours.tts(texts))
                except Exception as e:
                    norm_why = f"failed: {e}"
            log(f"scenario 5: repeat {r + 1}: espeak-ng loop {base_t[-1]:.2f} s"
                + (f", ours {ours_t[-1]:.2f} s" if len(ours_t) > r else "")
                + (f", ours with loudness normalisation {norm_t[-1]:.2f} s" if len(norm_t) > r else ""))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    speedups = [b / o for b, o in zip(base_t, ours_t)]
    rows = [
        Row(SCEN, f"{len(texts)} chunks, normalisation off: wall time", "s", "lower", ours=summary(ours_t) if ours_t else None,
            ours_note=why, baseline="sequential espeak-ng loop", base=summary(base_t)),
        Row(SCEN, "speed-up over the loop", "x", "higher", ours=summary(speedups) if speedups else None,
            ours_note=why, target=(">=", 1.8)),
        Row(SCEN, f"{len(texts)} chunks with loudness normalisation (the default): wall time", "s", "lower",
            ours=summary(norm_t) if norm_t else None, ours_note=why or norm_why,
            baseline="sequential espeak-ng loop (no normalisation)", base=summary(base_t)),
    ]
    if not base_t:
        raise NotMeasured("the espeak-ng loop did not run")
    return rows, {"cores": os.cpu_count()}
