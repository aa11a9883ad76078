"""Inputs the scenarios need, generated here (nothing is downloaded) and
cached under target/bench/media so that repeated runs skip the slow parts:
short distinct WAVs, spoken chunks from espeak-ng, a 720p H.264 clip, the
text of TTS chunks and a large WAV artifact.
"""

import array
import hashlib
import math
import os
import random
import wave

from lib import OUT_DIR, log, run

MEDIA = os.path.join(OUT_DIR, "media")

# Words for generated sentences: plain English that espeak-ng speaks at an
# even pace, so a sentence count sets the duration.
WORDS = (
    "the studio renders every scene twice before the final cut goes out and the editor checks "
    "each voice track for loudness silence and clipping while the camera frames are sampled "
    "for thumbnails review and colour notes the narrator reads a short paragraph about product "
    "features prices and reviews then pauses briefly before the next chunk begins on time"
).split()


def sentence(rng, n_words):
    words = [rng.choice(WORDS) for _ in range(n_words)]
    return " ".join(words).capitalize() + "."


def spoken_text(seed, seconds):
    """Text that espeak-ng at 160 words per minute speaks for about `seconds`."""
    rng = random.Random(seed)
    target_words = int(seconds * 160 / 60)
    out, count = [], 0
    while count < target_words:
        n = min(rng.randint(7, 14), target_words - count) or 1
        out.append(sentence(rng, n))
        count += n
    return " ".join(out)


def short_wavs(count, seconds=0.5, rate=22050):
    """`count` distinct mono WAVs of `seconds`: a tone whose pitch and phase
    differ per file, at a level near a voice-over's, so that every job has
    its own inputs hash."""
    folder = os.path.join(MEDIA, f"short-{seconds}s")
    os.makedirs(folder, exist_ok=True)
    paths = []
    n = int(seconds * rate)
    amp = 0.2
    for i in range(count):
        p = os.path.join(folder, f"tone-{i:05d}.wav")
        paths.append(p)
        if os.path.exists(p):
            continue
        freq = 300.0 + (i % 1000) * 0.7 + (i // 1000) * 0.13
        phase = (i * 0.618) % (2 * math.pi)
        samples = array.array("h", (int(32767 * amp * math.sin(2 * math.pi * freq * t / rate + phase))
                                    for t in range(n)))
        tmp = p + ".tmp"
        with wave.open(tmp, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(samples.tobytes())
        os.replace(tmp, p)
    return paths


def speech_chunks(count, seconds=10.0):
    """`count` spoken WAVs of about `seconds` each, rendered by espeak-ng."""
    folder = os.path.join(MEDIA, f"speech-{int(seconds)}s")
    os.makedirs(folder, exist_ok=True)
    paths = []
    made = 0
    for i in range(count):
        p = os.path.join(folder, f"chunk-{i:04d}.wav")
        paths.append(p)
        if os.path.exists(p):
            continue
        txt = p[:-4] + ".txt"
        with open(txt, "w") as f:
            f.write(spoken_text(1000 + i, seconds))
        run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", p + ".tmp.wav", "-f", txt], timeout_s=120)
        os.replace(p + ".tmp.wav", p)
        made += 1
    if made:
        log(f"rendered {made} spoken chunk(s) with espeak-ng")
    return paths


def tts_texts(count, max_chars=240):
    """`count` chunk texts for TTS, each just under `max_chars` (the
    `[tts] max_chars` a chunker fills chunks up to), cut at a sentence end."""
    texts = []
    for i in range(count):
        sentences = spoken_text(5000 + i, 60).split(". ")
        text = ""
        for s in sentences:
            candidate = (text + " " + s.rstrip(".") + ".").strip()
            if len(candidate) > max_chars:
                break
            text = candidate
        texts.append(text)
    return texts


def video(seconds, width=1280, height=720, fps=30):
    """A generated H.264 clip (testsrc2 + a tone), GOP of 2 s like camera or
    screen-recording output."""
    p = os.path.join(MEDIA, f"clip-{width}x{height}-{int(seconds)}s.mp4")
    if os.path.exists(p):
        return p
    os.makedirs(MEDIA, exist_ok=True)
    log(f"encoding a {seconds:.0f} s {height}p H.264 clip (once; cached)")
    run([
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-g", str(fps * 2),
        "-c:a", "aac", "-shortest", p + ".tmp.mp4",
    ], timeout_s=1800)
    os.replace(p + ".tmp.mp4", p)
    return p


def big_wav(path, mib):
    """A WAV of exactly `mib` MiB (48 kHz stereo 16-bit noise) and its
    SHA-256: a long voice-over render, as a TTS job's artifact would be.
    Written in 4 MiB blocks from a hash chain (fast, deterministic,
    incompressible)."""
    if os.path.exists(path) and os.path.getsize(path) == mib << 20 and os.path.exists(path + ".sha256"):
        with open(path + ".sha256") as f:
            return f.read().strip()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    log(f"writing a {mib} MiB WAV artifact")
    block = bytearray()
    seed = hashlib.sha512(b"rayvault-bench").digest()
    while len(block) < 4 << 20:
        seed = hashlib.sha512(seed).digest()
        block += seed
    block = bytes(block[: 4 << 20])
    total = mib << 20
    data_len = total - 44
    header = (b"RIFF" + (total - 8).to_bytes(4, "little") + b"WAVE"
              + b"fmt " + (16).to_bytes(4, "little") + (1).to_bytes(2, "little") + (2).to_bytes(2, "little")
              + (48000).to_bytes(4, "little") + (48000 * 4).to_bytes(4, "little") + (4).to_bytes(2, "little")
              + (16).to_bytes(2, "little") + b"data" + data_len.to_bytes(4, "little"))
    h = hashlib.sha256()
    with open(path + ".tmp", "wb") as f:
        for i in range(mib // 4):
            # Vary each block so that no two blocks are alike.
            chunk = i.to_bytes(8, "little") + block[8:]
            if i == 0:
                chunk = header + chunk[len(header):]
            f.write(chunk)
            h.update(chunk)
    os.replace(path + ".tmp", path)
    digest = h.hexdigest()
    with open(path + ".sha256", "w") as f:
        f.write(digest)
    return digest
