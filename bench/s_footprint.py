"""Scenario 6: memory footprint, idle and after many jobs.

Ours: `rayvault-worker` and the `rayvault-orchestrator` daemon (nodes.json
listing the worker), RSS from /proc once the daemon has probed the worker
and the figures have settled; then N small AUDIO_POSTCHECK jobs through the
daemon at concurrency 16, and RSS again. Growth that stays after the jobs
would be a leak (or an unbounded cache).

Peer: a Celery 5 worker (prefork, one process per core; its RSS includes
the pool's processes) and redis-server as its broker, idle and after N
no-op tasks.
"""

import os
import subprocess
import time

import media
import ours
from lib import NotMeasured, log, rss_kib, summary, threads, tree_rss_kib, wait_until
from peers import CeleryWorker, Redis, venv_python
from report import Row
from rvclient import SignedClient
from s_failover import node_up

SCEN = "6 footprint"
# Seconds of quiet before the last reading (tokio retires idle blocking
# threads after 10 s).
IDLE_AGAIN_S = 12


def settled(read, timeout_s=10.0):
    """RSS once two readings 0.5 s apart agree within 64 KiB (or at the
    timeout): allocator arenas and lazy initialisation settle in that time."""
    deadline = time.monotonic() + timeout_s
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if abs(now - last) <= 64:
            return now
        last = now
    return last


def mib(kib):
    return kib / 1024.0


def ours_side(n_jobs):
    worker = ours.Worker()
    daemon = None
    try:
        daemon = ours.Daemon([(worker.id, worker.port)])
        dc = SignedClient(daemon.port, ours.SECRET, "controller")
        wait_until("the daemon to see the worker up", 30, lambda: node_up(dc), interval_s=0.1)
        dc.close()
        idle = (settled(lambda: rss_kib(worker.proc.pid)), settled(lambda: rss_kib(daemon.proc.pid)))
        thread_counts = {"idle": (threads(worker.proc.pid), threads(daemon.proc.pid))}
        wavs = media.short_wavs(n_jobs + 2)
        half = n_jobs // 2
        # Two halves with a reading between them: growth that stops after
        # the first half is warm-up (caches, allocator pools); growth that
        # goes on in the second half is what a leak looks like.
        readings = []
        for part, files in enumerate((wavs[:half] + wavs[-1:], wavs[half:n_jobs] + wavs[-2:-1])):
            pf = ours.payload_file([{"audio_paths": [w]} for w in files])
            try:
                ours.run_driver(["daemon", daemon.url, f"footprint-{part}-{time.time_ns()}", "AUDIO_POSTCHECK", pf,
                                 "0", str(len(files) - 1), "16"])
            finally:
                os.remove(pf)
            readings.append((settled(lambda: rss_kib(worker.proc.pid)), settled(lambda: rss_kib(daemon.proc.pid))))
            thread_counts[f"after part {part + 1}"] = (threads(worker.proc.pid), threads(daemon.proc.pid))
        # Runtimes retire idle blocking threads after about 10 s; a reading
        # after that shows what stays.
        time.sleep(IDLE_AGAIN_S)
        thread_counts[f"{IDLE_AGAIN_S} s later"] = (threads(worker.proc.pid), threads(daemon.proc.pid))
        thread_counts[f"RSS KiB {IDLE_AGAIN_S} s later"] = (rss_kib(worker.proc.pid), rss_kib(daemon.proc.pid))
        return idle, readings[1], readings[0], thread_counts
    finally:
        if daemon:
            daemon.stop()
        worker.stop()


def celery_side(n_jobs):
    venv_python()
    redis = Redis()
    worker = None
    try:
        cores = os.cpu_count() or 2
        worker = CeleryWorker(redis, concurrency=cores)
        # Ready when the main process has its pool of `cores` children.
        wait_until("the Celery pool", 60, lambda: len(open(
            f"/proc/{worker.proc.pid}/task/{worker.proc.pid}/children").read().split()) >= cores, interval_s=0.1)
        idle = (settled(lambda: tree_rss_kib(worker.proc.pid)), settled(lambda: rss_kib(redis.proc.pid)))
        here = os.path.dirname(os.path.abspath(__file__))
        cp = subprocess.run([venv_python(), os.path.join(here, "celery_client.py"), "0", str(n_jobs), "1"],
                            env={**os.environ, "BENCH_REDIS_URL": redis.url, "PYTHONPATH": here},
                            capture_output=True, text=True, timeout=1800)
        if cp.returncode != 0:
            raise RuntimeError(f"celery client failed: {cp.stderr[-400:]}")
        after = (settled(lambda: tree_rss_kib(worker.proc.pid)), settled(lambda: rss_kib(redis.proc.pid)))
        return idle, after
    finally:
        if worker:
            worker.stop()
        redis.stop()


def measure(cfg):
    n = cfg["footprint_jobs"]
    details = {"jobs": n}
    o = c = None
    why = cwhy = None
    try:
        o = ours_side(n)
        details["ours_half_way_kib"] = o[2]
        details["ours_threads_worker_daemon"] = o[3]
        log(f"scenario 6: ours idle worker {mib(o[0][0]):.1f} MiB, daemon {mib(o[0][1]):.1f} MiB; after {n} jobs "
            f"{mib(o[1][0]):.1f} / {mib(o[1][1]):.1f} MiB")
    except NotMeasured as e:
        why = str(e)
    except Exception as e:
        why = f"failed: {e}"
        log(f"scenario 6: ours {why}")
    try:
        c = celery_side(n)
        log(f"scenario 6: Celery idle worker {mib(c[0][0]):.1f} MiB, redis {mib(c[0][1]):.1f} MiB; after {n} tasks "
            f"{mib(c[1][0]):.1f} / {mib(c[1][1]):.1f} MiB")
    except Exception as e:
        cwhy = f"failed: {e}"
        log(f"scenario 6: Celery {cwhy}")

    def fig(side, i, j):
        return summary([mib(side[i][j])]) if side else None

    def growth(side, j):
        return summary([mib(side[1][j] - side[0][j])]) if side else None

    rows = [
        Row(SCEN, "worker RSS, idle", "MiB", "lower", ours=fig(o, 0, 0), ours_note=why,
            baseline="Celery worker + pool, idle", base=fig(c, 0, 0), base_note=cwhy, target=("<=", 20.0)),
        Row(SCEN, "daemon RSS, idle", "MiB", "lower", ours=fig(o, 0, 1), ours_note=why,
            baseline="redis-server (broker), idle", base=fig(c, 0, 1), base_note=cwhy, target=("<=", 20.0)),
        Row(SCEN, f"worker RSS growth after {n} jobs", "MiB", "lower", ours=growth(o, 0), ours_note=why,
            baseline="Celery worker + pool", base=growth(c, 0), base_note=cwhy, target=("<=", 5.0)),
        Row(SCEN, f"daemon RSS growth after {n} jobs", "MiB", "lower", ours=growth(o, 1), ours_note=why,
            baseline="redis-server", base=growth(c, 1), base_note=cwhy, target=("<=", 5.0)),
    ]
    for j, who in ((0, "worker"), (1, "daemon")):
        rows.append(Row(SCEN, f"{who} RSS growth in the second {n - n // 2} jobs (leak check)", "MiB", "lower",
                        ours=summary([mib(o[1][j] - o[2][j])]) if o else None, ours_note=why))
    total_o = summary([mib(o[0][0] + o[0][1])]) if o else None
    total_c = summary([mib(c[0][0] + c[0][1])]) if c else None
    rows.append(Row(SCEN, "whole system RSS, idle", "MiB", "lower", ours=total_o, ours_note=why,
                    baseline="Celery worker + pool + redis", base=total_c, base_note=cwhy))
    details.update({"ours_idle_after_kib": o[:2] if o else None, "celery_idle_after_kib": c})
    if o:
        details["ours_second_half_growth_mib"] = [mib(o[1][0] - o[2][0]), mib(o[1][1] - o[2][1])]
    return rows, details
