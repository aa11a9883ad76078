"""Shared machinery for the benchmark harness: processes it starts (and
always stops, by PID), free loopback ports, waiting on a condition with a
deadline, timing, statistics and memory readings.

Nothing here knows about a particular scenario.
"""

import atexit
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "target", "bench")
# scripts/bench.sh measures release builds; BENCH_PROFILE=debug lets the
# harness itself be tried without a release build.
RELEASE = os.path.join(ROOT, "target", os.environ.get("BENCH_PROFILE", "release"))

# Every process the harness starts, so that it can stop each one by its PID
# on any exit path (normal end, exception, Ctrl-C, SIGTERM).
_STARTED = []


def log(msg):
    """Progress on stderr, so that stdout carries only the final table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Proc:
    """A child process started in its own session, stopped by its PID."""

    def __init__(self, name, argv, env=None, cwd=None, log_path=None):
        self.name = name
        self.log_path = log_path or os.path.join(OUT_DIR, "logs", f"{name}.log")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._log = open(self.log_path, "ab")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        # A new session gives the child its own process group, whose id is
        # its PID: stopping it by that id reaches its own children (Celery's
        # pool, nginx's worker) and nothing else.
        self.popen = subprocess.Popen(
            argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.pid = self.popen.pid
        _STARTED.append(self)

    def alive(self):
        return self.popen.poll() is None

    def kill9(self):
        """SIGKILL to the child's own process group (its PID)."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self, grace_s=5.0):
        """SIGTERM, wait up to `grace_s`, then SIGKILL; always reaps."""
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill9()
                self.popen.wait(timeout=grace_s)
        else:
            # The leader may be gone while its group lives on (a daemon that
            # forked); a group signal to a dead group fails harmlessly.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._log.close()
        if self in _STARTED:
            _STARTED.remove(self)

    def tail(self, n=20):
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""


def stop_all():
    for p in list(reversed(_STARTED)):
        try:
            p.stop(grace_s=3.0)
        except Exception as e:  # keep stopping the others
            log(f"stopping {p.name} (pid {p.pid}) failed: {e}")


def _on_signal(signum, _frame):
    stop_all()
    sys.exit(128 + signum)


atexit.register(stop_all)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def free_port():
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, timeout_s, cond, interval_s=0.02):
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if cond():
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s} s waiting for: {what}")
        time.sleep(interval_s)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def http_ok(url):
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return 200 <= r.status < 300
    except Exception:
        return False


def run(argv, timeout_s=600, env=None, check=True, capture=True):
    """Runs a short-lived command with a timeout; returns CompletedProcess."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    cp = subprocess.run(argv, env=full_env, stdin=subprocess.DEVNULL, timeout=timeout_s,
                        capture_output=capture, text=True)
    if check and cp.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {cp.returncode}: {(cp.stderr or '')[-2000:]}")
    return cp


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def percentile(xs, q):
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def summary(xs):
    """Median and spread (min, max) of repeated figures."""
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs), "all": xs}


def rss_kib(pid):
    """Resident set size of one process, from /proc (KiB), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def threads(pid):
    """Thread count of one process, or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def hwm_kib(pid):
    """Peak resident set size (VmHWM) of one process (KiB), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def descendants(pid):
    """PIDs of every descendant of a process (children first found first)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as f:
                kids = [int(c) for c in f.read().split()]
        except OSError:
            kids = []
        out.extend(kids)
        todo.extend(kids)
    return out


def tree_rss_kib(pid):
    """RSS of a process and all its descendants (KiB)."""
    return sum(rss_kib(p) or 0 for p in [pid, *descendants(pid)])


def write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def binary(name):
    """Path of a release binary or example built by scripts/bench.sh."""
    for p in (os.path.join(RELEASE, name), os.path.join(RELEASE, "examples", name)):
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    return None


class NotMeasured(Exception):
    """A scenario (or one side of it) cannot be measured; the message says why."""
