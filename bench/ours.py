"""The RayVault side of the scenarios: starting `rayvault-worker` and the
`rayvault-orchestrator` daemon on loopback with a fresh state folder, a
random shared secret and defaults otherwise (what a user gets), and running
our binaries and drivers the way a user would.

Every process is started through lib.Proc (stopped by PID); every state
folder lives under target/bench/ and is removed afterwards.
"""

import atexit
import json
import os
import secrets
import statistics
import shutil
import subprocess
import tempfile
import time

import media
from lib import (OUT_DIR, NotMeasured, Proc, binary, free_port, http_ok, log, percentile, port_open, rss_kib,
                 summary, wait_until)

# One random secret per run, given to our processes through the environment
# (never on a command line), as the security model prescribes.
SECRET = secrets.token_hex(32)


def need(name, what):
    exe = binary(name)
    if not exe:
        raise NotMeasured(f"{name} was not built ({what}); run scripts/bench.sh, which builds it")
    return exe


def base_env(state_dir):
    return {
        "RAYVAULT_CLUSTER_SECRET": SECRET,
        "RAYVAULT_STATE_DIR": state_dir,
        "RUST_LOG": os.environ.get("BENCH_RUST_LOG", "warn"),
        "NO_COLOR": "1",
    }


# State folders of stopped workers and daemons, removed when the run ends
# rather than right after each repeat. Removing thousands of files just
# before the next repeat slows that repeat's own file creations: ext4
# without a journal (this VM's root filesystem) skips inodes deleted in the
# last ~30 s when it allocates a new one, reading each candidate's inode
# table block (`recently_deleted` in fs/ext4/ialloc.c), which showed as a
# third of the daemon's CPU in a profile and made every repeat slower than
# the one before. The peers create no files, so they are unaffected.
_TO_REMOVE = []


def _remove_state_folders():
    for d in _TO_REMOVE:
        shutil.rmtree(d, ignore_errors=True)
    _TO_REMOVE.clear()


atexit.register(_remove_state_folders)


def remove_later(folder):
    """Removes `folder` when the benchmark run ends (see _TO_REMOVE)."""
    _TO_REMOVE.append(folder)


def fresh_state(prefix):
    """A new state folder under target/bench (on the disk a user's state
    would be on). BENCH_STATE_ROOT moves it elsewhere, e.g. to tmpfs, to
    separate the filesystem's cost from ours in an experiment."""
    root = os.environ.get("BENCH_STATE_ROOT") or OUT_DIR
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=root)


class Worker:
    """`rayvault-worker` on 127.0.0.1 with its own state folder."""

    def __init__(self, worker_id="bench-worker", extra_env=None, state_dir=None):
        exe = need("rayvault-worker", "the worker binary")
        self.id = worker_id
        self.port = free_port()
        self.state_dir = state_dir or fresh_state("worker-")
        self.own_state = state_dir is None
        env = base_env(self.state_dir)
        env.update({"RAYVAULT_WORKER_ID": worker_id, "RAYVAULT_WORKER_HOST": "127.0.0.1",
                    "RAYVAULT_WORKER_PORT": str(self.port)})
        env.update(extra_env or {})
        self.proc = Proc(f"worker-{worker_id}", [exe], env=env, cwd=self.state_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_until("rayvault-worker /health", 30, lambda: http_ok(self.url + "/health"))
        except RuntimeError:
            raise RuntimeError(f"rayvault-worker did not start: {self.proc.tail()}")

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def stop(self):
        self.proc.stop()
        if self.own_state:
            remove_later(self.state_dir)


def write_payloads(path, payloads):
    with open(path, "w") as f:
        for p in payloads:
            f.write(json.dumps(p) + "\n")


def step_times(step, payloads, n):
    """The executor's own run time of `step`, in-process (seconds)."""
    exe = need("bench_dispatch", "examples/bench_dispatch.rs")
    fd, path = tempfile.mkstemp(prefix="payloads-", suffix=".jsonl", dir=OUT_DIR)
    os.close(fd)
    try:
        write_payloads(path, payloads)
        cp = subprocess.run([exe, "step", step, path, str(n)], capture_output=True, text=True, timeout=600,
                            env={**os.environ, **base_env(OUT_DIR)}, cwd=OUT_DIR)
        if cp.returncode != 0:
            raise RuntimeError(cp.stderr.strip()[-500:])
        return json.loads(cp.stdout)["step_s"]
    finally:
        os.remove(path)


def submit_local(step, payload, timeout_s=1800, extra_env=None):
    """Runs one job with `rayvault-orchestrator submit` and no workers
    configured (local execution, zero configuration), as a user would.
    Returns (wall seconds, receipt dict). Exit code 3 (the job succeeded
    and its check's verdict is "failed", as the synthetic speech of
    scenario 3 gets from the default loudness target) counts as run: the
    scenarios time the step, not the verdict."""
    exe = need("rayvault-orchestrator", "the controller binary")
    state = fresh_state("submit-")
    try:
        env = {**os.environ, **base_env(state)}
        # A free port for the daemon API: `submit` then finds no daemon and
        # runs the job in its own process, as on a machine without one.
        env["RAYVAULT_CONTROLLER__API_PORT"] = str(free_port())
        env.update(extra_env or {})
        run_id, job_id = "bench", f"{step.lower()}-{time.time_ns()}"
        t0 = time.perf_counter()
        cp = subprocess.run([exe, "submit", "--run-id", run_id, "--job-id", job_id, "--step-name", step,
                             "--payload-json", json.dumps(payload), "--json"],
                            capture_output=True, text=True, timeout=timeout_s, env=env, cwd=state,
                            stdin=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        if cp.returncode not in (0, 3):
            raise RuntimeError(f"submit exited {cp.returncode}: {(cp.stderr or cp.stdout).strip()[-600:]}")
        receipt = find_receipt(state, run_id, job_id, cp.stdout)
        if receipt.get("status") != "succeeded":
            raise RuntimeError(f"the job ended {receipt.get('status')}: {receipt.get('error')}")
        return elapsed, receipt
    finally:
        shutil.rmtree(state, ignore_errors=True)


def find_receipt(state, run_id, job_id, stdout):
    path = os.path.join(state, "cluster", "receipts", run_id, job_id, "job_receipt.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    try:
        return json.loads(stdout)
    except ValueError:
        raise RuntimeError(f"no receipt at {path} and stdout is not JSON")


def receipt_result(receipt):
    """The step's result object inside a receipt."""
    for key in ("result", "step_result"):
        if isinstance(receipt.get(key), dict):
            return receipt[key]
    raise RuntimeError(f"the receipt has no result (keys: {sorted(receipt)})")


def postcheck(files, others=None):
    """Scenario 3: one AUDIO_POSTCHECK job over `files`; returns (seconds,
    {path: integrated LUFS}); fills `others` with {path: the file's report}."""
    t, receipt = submit_local("AUDIO_POSTCHECK", {"audio_paths": files})
    res = receipt_result(receipt)
    if others is not None:
        others.update({f["path"]: f for f in res["files"]})
    return t, {f["path"]: f.get("integrated_lufs") for f in res["files"]}


def frames(clip, n):
    """Scenario 4: one FRAME_SAMPLING job; returns (seconds, strategy)."""
    t, receipt = submit_local("FRAME_SAMPLING", {"media_path": clip, "count": n})
    res = receipt_result(receipt)
    got = res.get("frames")
    if isinstance(got, list) and len(got) != n:
        raise RuntimeError(f"FRAME_SAMPLING wrote {len(got)} frames, expected {n}")
    return t, res.get("strategy", "?")


def tts(texts, normalize=True):
    """Scenario 5: one TTS_RENDER_CHUNKS job; returns seconds. Without
    `normalize`, the chunks are kept as espeak-ng wrote them
    (`[tts] normalize_lufs = "off"`), the same work as the plain loop."""
    chunks = [{"id": i + 1, "text": t} for i, t in enumerate(texts)]
    env = None if normalize else {"RAYVAULT_TTS__NORMALIZE_LUFS": "off"}
    t, receipt = submit_local("TTS_RENDER_CHUNKS", {"chunks": chunks}, extra_env=env)
    res = receipt_result(receipt)
    if len(res.get("chunks", [])) != len(texts):
        raise RuntimeError(f"TTS_RENDER_CHUNKS rendered {len(res.get('chunks', []))} of {len(texts)} chunks")
    return t


class Daemon:
    """`rayvault-orchestrator daemon` with its API on a free loopback port
    and `nodes.json` listing the given workers."""

    def __init__(self, workers, state_dir=None, extra_env=None):
        exe = need("rayvault-orchestrator", "the controller binary")
        self.port = free_port()
        self.state_dir = state_dir or fresh_state("daemon-")
        self.own_state = state_dir is None
        cluster = os.path.join(self.state_dir, "cluster")
        os.makedirs(cluster, exist_ok=True)
        nodes = [{"node_id": w_id, "host": "127.0.0.1", "port": port, "enabled": True} for w_id, port in workers]
        with open(os.path.join(cluster, "nodes.json"), "w") as f:
            json.dump({"nodes": nodes}, f)
        env = base_env(self.state_dir)
        env["RAYVAULT_CONTROLLER__API_PORT"] = str(self.port)
        env.update(extra_env or {})
        self.proc = Proc("daemon", [exe, "daemon"], env=env, cwd=self.state_dir)
        self.url = f"http://127.0.0.1:{self.port}"
        try:
            wait_until("the daemon API", 30, lambda: port_open(self.port) or not self.proc.alive())
        except RuntimeError:
            raise RuntimeError(f"the daemon did not start: {self.proc.tail()}")
        if not self.proc.alive():
            raise RuntimeError(f"the daemon exited: {self.proc.tail()}")

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def stop(self):
        self.proc.stop()
        if self.own_state:
            remove_later(self.state_dir)


def run_driver(args, timeout_s=1800):
    exe = need("bench_dispatch", "examples/bench_dispatch.rs")
    env = {**os.environ, **base_env(OUT_DIR)}
    cp = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout_s, env=env, cwd=OUT_DIR)
    if cp.returncode != 0:
        raise RuntimeError(cp.stderr.strip()[-800:])
    return json.loads(cp.stdout)


def payload_file(payloads):
    fd, path = tempfile.mkstemp(prefix="payloads-", suffix=".jsonl", dir=OUT_DIR)
    os.close(fd)
    write_payloads(path, payloads)
    return path


def _dispatch_repeat(step, payloads, n_seq, n_rate, via_daemon):
    """One repeat on a fresh worker (and daemon): the same files are new
    jobs again and the stores start empty. The last 20 payloads are for
    warming up; the measured jobs use the first n_seq + n_rate."""
    worker = Worker()
    daemon = None
    measured, warm = payload_file(payloads[: n_seq + n_rate]), payload_file(payloads[-20:])
    try:
        if via_daemon:
            daemon = Daemon([(worker.id, worker.port)])
            # The daemon driver warms up with the file's last payload.
            with open(measured, "a") as f:
                f.write(json.dumps(payloads[-1]) + "\n")
            return run_driver(["daemon", daemon.url, f"bench-{time.time_ns()}", step, measured,
                               str(n_seq), str(n_rate), "16"])
        run_driver(["worker", worker.url, worker.id, step, warm, "20", "0", "1"])
        return run_driver(["worker", worker.url, worker.id, step, measured, str(n_seq), str(n_rate), "16"])
    finally:
        os.remove(measured)
        os.remove(warm)
        if daemon:
            daemon.stop()
        worker.stop()


def dispatch(cfg, via_daemon):
    """Scenario 1, ours: per-job overhead (end-to-end minus the step's own
    run time, measured in-process on the same files) sequentially, and
    jobs/s at concurrency 16; through the daemon or the worker API."""
    n_seq, n_rate = cfg["seq_n"], cfg["thr_n"]
    wavs = media.short_wavs(n_seq + n_rate + 20)
    payloads = [{"audio_paths": [w]} for w in wavs]
    step = "AUDIO_POSTCHECK"
    p50s, p99s, rates, rec_p50s, where, owns = [], [], [], [], {}, []
    for r in range(cfg["repeats"]):
        # The step's own time is measured right before each repeat, so that
        # a change in the machine's load shifts both alike.
        own_med = statistics.median(step_times(step, payloads[:50], 200))
        owns.append(own_med * 1000)
        out = _dispatch_repeat(step, payloads, n_seq, n_rate, via_daemon)
        over = [(t - own_med) * 1000 for t in out["seq_e2e_s"]]
        p50s.append(percentile(over, 50))
        p99s.append(percentile(over, 99))
        rates.append(out["rate_per_s"])
        rec = [t * 1000 - ms for t, ms in zip(out["seq_e2e_s"], out["seq_step_ms"])]
        rec_p50s.append(percentile(rec, 50) if rec else None)
        for k, v in out.get("executed_on", {}).items():
            where[k] = where.get(k, 0) + v
        log(f"scenario 1: ours ({'daemon' if via_daemon else 'worker API'}) repeat {r + 1}: overhead p50 "
            f"{p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms, {rates[-1]:.0f} jobs/s (step itself {own_med * 1000:.2f} ms)")
    return {
        "p50": summary(p50s), "p99": summary(p99s), "rate": summary(rates),
        "extra": {"path": "daemon API -> worker" if via_daemon else "worker API (POST /jobs + long-poll)",
                  "step_own_median_ms": owns, "executed_on": where,
                  "overhead_p50_from_recorded_run_ms": rec_p50s},
    }
