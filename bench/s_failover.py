"""Scenario 7: failover of a job whose worker dies or goes silent mid-job.

A daemon with one worker runs a FRAME_SAMPLING job (a few seconds of real
work). Once the worker reports the job running, the harness either
- kill -9's the worker process ("refused": its port closes), or
- makes the userspace proxy between daemon and worker drop all traffic
  without closing anything ("silent").
The figure is the time from that moment to the start of the local attempt
(from the receipt's attempts), i.e. how long the controller took to notice
and start again locally. The receipt itself comes later: after the local
run the controller asks the given-up worker what became of its copy, which
a silent worker makes wait for the probe timeout.

The lease is included: the real binaries run, so the controller starts the
local copy only once the worker's lease on the job has surely expired,
`lease_s + lease_margin_ms` after the last renewal it sent (docs/protocol.md,
"4a. Leases"; docs/reliability.md). With the defaults (4 s + 1 s, renewed
every second) both figures are therefore about 4 to 5 s, and that wait is
what keeps a silent worker's copy from overlapping the local one. The
targets are the lease wait plus half a second (refused) or plus the
watchdog's one-second period (silent).

No peer is measured: Celery with the Redis broker re-delivers an acks_late
task of a killed worker only after the broker's visibility timeout (one
hour by default), and loses it without acks_late; docs/benchmarks.md says so.
"""

import os
import signal
import time
import tomllib

import media
import ours
from lib import ROOT, NotMeasured, descendants, log, summary, wait_until
from proxy import SilentProxy
from report import Row
from rvclient import SignedClient, parse_utc

SCEN = "7 failover"
# How long the harness waits for a job to recover before calling it lost.
GIVE_UP_S = 150
# A recovery slower than this is measured once, not repeated.
SLOW_S = 30


def controller_defaults():
    with open(os.path.join(ROOT, "config", "default.toml"), "rb") as f:
        return tomllib.load(f)["controller"]


def probe_timeout_s():
    return controller_defaults()["probe_timeout_s"]


def lease_wait_s():
    """The fence: how long after its last renewal the controller waits before
    running a job elsewhere (`lease_s + lease_margin_ms`)."""
    c = controller_defaults()
    return c["lease_s"] + c["lease_margin_ms"] / 1000.0


def node_up(dc):
    status, body = dc.call("GET", "/v1/status")
    nodes = (body or {}).get("nodes", {}).get("nodes", [])
    return status == 200 and nodes and nodes[0].get("status") == "up"


def trial(mode, clip, frames, n):
    worker = ours.Worker()
    proxy = SilentProxy(worker.port) if mode == "silent" else None
    daemon = None
    leftovers = []
    try:
        daemon = ours.Daemon([(worker.id, proxy.port if proxy else worker.port)])
        dc = SignedClient(daemon.port, ours.SECRET, "controller")
        wc = SignedClient(worker.port, ours.SECRET, worker.id)
        wait_until("the daemon to see the worker up", 30, lambda: node_up(dc), interval_s=0.1)
        job = f"{mode}-{n}-{time.time_ns()}"
        spec = {"run_id": "failover", "job_id": job, "step_name": "FRAME_SAMPLING",
                "payload": {"media_path": clip, "count": frames}}
        status, _ = dc.call("POST", "/v1/jobs", body=spec)
        if status != 202:
            raise RuntimeError(f"the daemon refused the job ({status})")
        path = f"/v1/jobs/failover/{job}"
        remote = {}

        def on_worker():
            _, view = dc.call("GET", path, "wait_s=0&progress_from=0")
            if view and view.get("remote"):
                remote["id"] = view["remote"]["remote_job_id"]
                _, wv = wc.call("GET", f"/jobs/{remote['id']}")
                return wv and wv.get("state") == "running"
            return False

        wait_until("the job to run on the worker", 30, on_worker, interval_s=0.02)
        time.sleep(0.3)  # well inside the job, which takes seconds
        leftovers = descendants(worker.proc.pid)
        t_fail = time.time()
        if mode == "refused":
            os.kill(worker.proc.pid, signal.SIGKILL)
        else:
            proxy.blackhole()
        receipt = None
        deadline = time.monotonic() + GIVE_UP_S
        seen = 0
        while receipt is None and time.monotonic() < deadline:
            # Ask only for progress not seen yet: the daemon answers a
            # long-poll at once when there is news, so progress_from=0 would
            # spin (and fill the daemon's nonce cache).
            status, view = dc.call("GET", path, f"wait_s=20&progress_from={seen}", timeout_s=40)
            if status != 200:
                raise RuntimeError(f"the daemon answered {status}: {view}")
            seen = view.get("progress_next", seen)
            receipt = view.get("receipt")
        if receipt is None:
            raise RuntimeError(f"the job did not complete within {GIVE_UP_S} s of the failure")
        if receipt.get("status") != "succeeded" or receipt.get("executed_on") != "local":
            raise RuntimeError(f"expected a local success, got {receipt.get('status')} on {receipt.get('executed_on')}: "
                               f"{receipt.get('error')}")
        local = [a for a in receipt.get("attempts", []) if a.get("executed_on") == "local"][-1]
        local_run = parse_utc(local["ended_at"]) - parse_utc(local["started_at"])
        # The local attempt's start, not the receipt's end: after the local
        # run the controller asks the given-up worker what became of its copy
        # (the attempt's `fate`), bounded by the probe timeout, and a silent
        # worker makes the receipt wait that long.
        took = parse_utc(local["started_at"]) - t_fail
        settle = parse_utc(receipt["timings"]["finished_at"]) - parse_utc(local["ended_at"])
        log(f"scenario 7: {mode} #{n}: noticed and restarted locally after {took:.2f} s "
            f"(local run {local_run:.2f} s, receipt {settle:.2f} s after it; {receipt.get('fallback_reason')})")
        return took, receipt.get("fallback_reason")
    finally:
        if daemon:
            daemon.stop()
        if proxy:
            proxy.stop()
        worker.stop()
        # A kill -9 leaves the worker's tools (ffmpeg) running: stop each by PID.
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def measure(cfg):
    clip = media.video(cfg["clip_s"])
    frames = 200
    # Both modes wait out the lease, counted from the last renewing request
    # the controller sent. A refused worker is given up at once (half a
    # second covers the quick retry and starting); for a silent one that
    # request is the watchdog's status call that then times out, sent up to
    # a second (its period) after the failure.
    rows, details = [], {"probe_timeout_s": probe_timeout_s(), "lease_wait_s": lease_wait_s()}
    for mode, target, label in (("refused", lease_wait_s() + 0.5, "kill -9 (connection refused)"),
                                ("silent", lease_wait_s() + 1.0, "silent (proxy drops traffic)")):
        times, why = [], None
        try:
            for n in range(cfg["failover_repeats"]):
                took, reason = trial(mode, clip, frames, n)
                times.append(took)
                details[f"{mode}_reason"] = reason
                if took > SLOW_S:
                    break
        except NotMeasured as e:
            why = str(e)
        except Exception as e:
            why = f"failed: {e}"
            log(f"scenario 7: {mode}: {why}")
        rows.append(Row(SCEN, f"{label}: failure -> local restart, lease wait included", "s", "lower",
                        ours=summary(times) if times else None, ours_note=why, target=("<=", target)))
    return rows, details
