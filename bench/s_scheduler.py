"""Scenario 8: placement decisions per second with 1,000 probed nodes and
mixed requirements.

Ours: examples/bench_scheduler.rs calls the pure `place` function (the
target) and the Scheduler's whole `decide` (with receipt explanations).

Baseline: the same placement written plainly in Python, the language of the
v0.5 controller this project replaces, over the same fleet (the generator is
reproduced bit for bit, and the mean count of eligible nodes is compared as
a check that both sides do the same work). No scheduler peer is installed
here; Nomad's published C1M figure (about 3,750 placements/s, whole
containers on 5,000 hosts) is quoted in docs/benchmarks.md, not measured.
"""

import json
import time

from lib import NotMeasured, binary, run, summary
from report import Row

SCEN = "8 scheduler"
MASK = (1 << 64) - 1
STEPS = ["TTS_RENDER_CHUNKS", "AUDIO_POSTCHECK", "FFMPEG_PROBE", "FRAME_SAMPLING", "OPENCLAW_TASK"]


class Rng:
    """The xorshift generator of examples/bench_scheduler.rs."""

    def __init__(self, seed):
        self.s = seed

    def next(self):
        s = self.s
        s ^= (s << 13) & MASK
        s ^= s >> 7
        s ^= (s << 17) & MASK
        self.s = s
        return s

    def below(self, n):
        return self.next() % n


def fleet(n):
    rng = Rng(0x9E3779B97F4A7C15)
    nodes = []
    for i in range(n):
        r = rng.below(100)
        health = "down" if r <= 4 else "disabled" if r <= 7 else "unprobed" if r <= 9 else "up"
        os_ = ["windows", "windows", "linux", "macos"][rng.below(4)]
        steps = {s for s in STEPS if rng.below(10) < 8}
        has_gpu = rng.below(3) != 0
        ram = [8.0, 16.0, 32.0, 64.0, 128.0][rng.below(5)]
        vram = [4.0, 8.0, 12.0, 24.0][rng.below(4)] if has_gpu else 0.0
        rng.below(10)  # legacy or current contract; not used by placement
        caps = None if health == "unprobed" else {
            "os": os_, "ram_gb": ram, "vram_gb": vram, "has_gpu": has_gpu, "steps": steps}
        nodes.append({"node_id": f"worker-{i:04d}", "health": health, "caps": caps, "busy": rng.below(8)})
    return nodes


REQS = [
    ({"os_in": ["windows"], "min_ram_gb": 8.0}, "FFMPEG_PROBE"),
    ({}, "AUDIO_POSTCHECK"),
    ({"os_in": ["windows", "linux"], "min_ram_gb": 32.0}, "FRAME_SAMPLING"),
    ({"min_vram_gb": 8.0, "gpu_required": True}, "TTS_RENDER_CHUNKS"),
    ({"os_in": ["macos"]}, "OPENCLAW_TASK"),
    ({"min_ram_gb": 64.0}, "AUDIO_POSTCHECK"),
]


def place(req, step, nodes):
    """Eligible node ids, least busy first: what a plain Python controller does."""
    ok = []
    for n in nodes:
        c = n["caps"]
        if n["health"] != "up" or c is None:
            continue
        if "os_in" in req and c["os"] not in req["os_in"]:
            continue
        if c["ram_gb"] < req.get("min_ram_gb", 0.0) or c["vram_gb"] < req.get("min_vram_gb", 0.0):
            continue
        if req.get("gpu_required") and not c["has_gpu"]:
            continue
        if step not in c["steps"]:
            continue
        ok.append(n)
    ok.sort(key=lambda n: n["busy"])
    return [n["node_id"] for n in ok]


def python_rate(n_nodes, decisions):
    nodes = fleet(n_nodes)
    eligible = sum(len(place(r, s, nodes)) for r, s in REQS) / len(REQS)
    t0 = time.perf_counter()
    for i in range(decisions):
        r, s = REQS[i % len(REQS)]
        place(r, s, nodes)
    return decisions / (time.perf_counter() - t0), eligible


def measure(cfg):
    exe = binary("bench_scheduler")
    n = cfg["sched_nodes"]
    py_n = max(200, cfg["sched_decisions"] // 100)
    place_r, decide_r, py_r = [], [], []
    details = {}
    for _ in range(cfg["repeats"]):
        rate, eligible = python_rate(n, py_n)
        py_r.append(rate)
        details["python_eligible_mean"] = eligible
        if exe:
            out = json.loads(run([exe, str(n), str(cfg["sched_decisions"])]).stdout)
            place_r.append(out["place_per_s"])
            decide_r.append(out["decide_per_s"])
            details["rust_eligible_mean"] = out["eligible_mean"]
    why = None if exe else "examples/bench_scheduler was not built"
    if exe and abs(details["rust_eligible_mean"] - details["python_eligible_mean"]) > 1e-9:
        why = (f"the Rust and Python placements disagree (eligible mean {details['rust_eligible_mean']} "
               f"vs {details['python_eligible_mean']}): fix the generator before comparing")
        place_r, decide_r = [], []
    base = summary(py_r)
    rows = [
        Row(SCEN, f"place() decisions/s, {n} nodes", "1/s", "higher", ours=summary(place_r) if place_r else None,
            ours_note=why, baseline="same placement in plain Python", base=base, target=(">=", 100000.0)),
        Row(SCEN, f"decide() with explanations/s, {n} nodes", "1/s", "higher",
            ours=summary(decide_r) if decide_r else None, ours_note=why,
            baseline="same placement in plain Python", base=base),
    ]
    if not exe and not py_r:
        raise NotMeasured(why)
    return rows, details
