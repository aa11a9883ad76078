"""Scenario 9: how concurrent jobs spread over the workers.

Eight `rayvault-worker`s on loopback, each running at most 2
TTS_RENDER_CHUNKS jobs at once, and one daemon. 16 jobs that take about
1.5 s each (the TTS `command` engine runs a script that sleeps 1.5 s and
copies a short WAV) are submitted at the same moment through the daemon's
API, from 16 threads, and the harness waits for their receipts. The figures
come from the receipts' `executed_on`: how many workers got work (of 8), and
the most and the fewest jobs one worker got. Target: all 8 workers, none
with more than 3. Repeated `repeats` times with the same processes.

No peer: this is about our Scheduler's placement only.
"""

import os
import shutil
import threading
import time
import wave

import ours
from lib import OUT_DIR, log, summary, wait_until
from report import Row
from rvclient import SignedClient

SCEN = "9 spread"
WORKERS = 8
JOBS = 16
STEP_S = 1.5


def engine(folder):
    """The TTS `command` engine's environment: sleep, then copy a WAV."""
    wav = os.path.join(folder, "tone.wav")
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(22050)
        w.writeframes(b"\x00\x10" * 4410)
    script = os.path.join(folder, "tts.sh")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nsleep {STEP_S}\ncp '{wav}' \"$2\"\n")
    return {
        "RAYVAULT_TTS__ENGINE": "command",
        "RAYVAULT_TTS__COMMAND_TEMPLATE": f"sh {script} {{text_file}} {{out_wav}}",
        "RAYVAULT_STEPS__TTS_RENDER_CHUNKS__CONCURRENCY": "2",
    }


def all_up(dc):
    status, body = dc.call("GET", "/v1/status")
    nodes = (body or {}).get("nodes", {}).get("nodes", [])
    return status == 200 and len(nodes) == WORKERS and all(n.get("status") == "up" for n in nodes)


def one_job(port, run_id, i, out):
    """Submits job `i` and long-polls until its receipt is there."""
    dc = SignedClient(port, ours.SECRET, "controller", timeout_s=60)
    try:
        spec = {"run_id": run_id, "job_id": f"j{i}", "step_name": "TTS_RENDER_CHUNKS",
                "payload": {"text": f"Job {i} of {run_id}."}, "fallback": "never"}
        status, body = dc.call("POST", "/v1/jobs", body=spec)
        if status != 202:
            out[i] = f"refused ({status}): {body}"
            return
        seen = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            status, view = dc.call("GET", f"/v1/jobs/{run_id}/j{i}", f"wait_s=20&progress_from={seen}", timeout_s=40)
            if status != 200:
                out[i] = f"status {status}: {view}"
                return
            seen = view.get("progress_next", seen)
            if view.get("receipt"):
                out[i] = view["receipt"]
                return
        out[i] = "no receipt within 120 s"
    finally:
        dc.close()


def burst(port, run_id):
    """One burst of JOBS jobs; answers the jobs per worker."""
    out = [None] * JOBS
    threads = [threading.Thread(target=one_job, args=(port, run_id, i, out)) for i in range(JOBS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_node = {}
    for r in out:
        if not isinstance(r, dict):
            raise RuntimeError(f"a job of {run_id} failed: {r}")
        if r.get("status") != "succeeded":
            raise RuntimeError(f"a job of {run_id} ended {r.get('status')}: {r.get('error')}")
        node = r.get("executed_on")
        per_node[node] = per_node.get(node, 0) + 1
    return per_node


def measure(cfg):
    folder = ours.fresh_state("spread-")
    workers, daemon = [], None
    try:
        env = engine(folder)
        for i in range(WORKERS):
            workers.append(ours.Worker(f"spread-w{i}", extra_env=env))
        daemon = ours.Daemon([(w.id, w.port) for w in workers])
        dc = SignedClient(daemon.port, ours.SECRET, "controller")
        wait_until("the daemon to see every worker up", 60, lambda: all_up(dc), interval_s=0.1)
        dc.close()
        got, most, fewest, runs = [], [], [], []
        for n in range(cfg["repeats"]):
            per_node = burst(daemon.port, f"spread-{n}-{time.time_ns()}")
            counts = [per_node.get(w.id, 0) for w in workers]
            log(f"scenario 9: burst {n}: jobs per worker {counts}")
            got.append(sum(1 for c in counts if c > 0))
            most.append(max(counts))
            fewest.append(min(counts))
            runs.append(counts)
    finally:
        if daemon:
            daemon.stop()
        for w in workers:
            w.stop()
        shutil.rmtree(folder, ignore_errors=True)
    # Each row is the worst burst (the table judges the target on it); the
    # details keep every burst.
    what = f"{JOBS} concurrent {STEP_S} s jobs, {WORKERS} workers x 2 slots, worst of {len(runs)} bursts"
    rows = [
        Row(SCEN, f"workers that got work (of {WORKERS}), {what}", "workers", "higher",
            ours=summary([min(got)]), target=(">=", float(WORKERS))),
        Row(SCEN, f"most jobs on one worker, {what}", "jobs", "lower", ours=summary([max(most)]), target=("<=", 3.0)),
        Row(SCEN, f"fewest jobs on one worker, {what}", "jobs", "higher", ours=summary([min(fewest)])),
    ]
    return rows, {"jobs_per_worker": runs, "out_dir": os.path.relpath(OUT_DIR)}
