"""Scenario 10: the newcomer's cost, what it takes to get RayVault running.

- Release binary sizes: `rayvault-worker` and `rayvault-orchestrator` as
  `scripts/bench.sh` built them (Cargo.toml's release profile ships them
  without debug info), and the Windows worker `rayvault-worker.exe`,
  cross-built in release mode with mingw-w64 the way scripts/cross_check.sh
  builds its debug one (into the same target/cross folder, so later runs
  reuse its compiled dependencies). The full run builds the .exe; --quick
  measures it only if an earlier build left one.
- Clean clone to the first demo receipt (full run only: it needs a cold
  build): `git clone` of this repository's HEAD into a temporary folder,
  `cargo build --bins` there with a fresh, empty CARGO_TARGET_DIR (the build
  scripts/demo.sh starts with), then scripts/demo.sh itself until the first
  job receipt exists. The build and the demo are reported apart. Crates come
  from the local Cargo cache and the demo's tools are already installed
  (scripts/bench.sh installed them), so neither downloads are timed.
"""

import glob
import os
import shutil
import subprocess
import tempfile
import time

from lib import OUT_DIR, RELEASE, ROOT, NotMeasured, Proc, log, summary
from report import Row

SCEN = "10 newcomer"
MB = 1e6
WINDOWS = "x86_64-pc-windows-gnu"
# Longest the full run waits for each cold build before giving up on it.
BUILD_TIMEOUT_S = 3600
DEMO_TIMEOUT_S = 900


def size_row(metric, path, why=None):
    if path and os.path.isfile(path):
        ours, note = summary([os.path.getsize(path) / MB]), None
    else:
        ours, note = None, why or f"{os.path.relpath(path, ROOT) if path else 'the binary'} is missing"
    return Row(SCEN, metric, "MB", "lower", ours=ours, ours_note=note, target=("<=", 15.0))


def wait_proc(p, timeout_s, what):
    """Waits for a process of ours to end; stops it (by its PID) on a timeout."""
    try:
        return p.popen.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        p.stop()
        raise RuntimeError(f"{what} took more than {timeout_s} s; stopped") from None


def windows_exe(cfg):
    """(path, None) of the release .exe, or (None, why it is not measured)."""
    cross = os.path.join(ROOT, "target", "cross")
    exe = os.path.join(cross, WINDOWS, "release", "rayvault-worker.exe")
    if not cfg.get("cold_build"):
        if os.path.isfile(exe):
            return exe, None
        return None, "--quick does not cross-build; the full run does"
    installed = subprocess.run(["rustup", "target", "list", "--installed"], capture_output=True, text=True)
    if WINDOWS not in installed.stdout.split():
        return None, f"the Rust target {WINDOWS} is not installed (rustup target add {WINDOWS})"
    if not shutil.which("x86_64-w64-mingw32-gcc"):
        return None, "x86_64-w64-mingw32-gcc is missing (Debian's gcc-mingw-w64-x86-64, scripts/install_deps.sh)"
    log("scenario 10: cross-building the release rayvault-worker.exe (the first time takes many minutes)")
    p = Proc("cross-release", ["cargo", "build", "--release", "--locked", "--target", WINDOWS, "--bin", "rayvault-worker"],
             env={"CARGO_TARGET_DIR": cross}, cwd=ROOT)
    if wait_proc(p, BUILD_TIMEOUT_S, "the Windows cross-build") != 0:
        return None, f"the Windows cross-build failed; see {os.path.relpath(p.log_path, ROOT)}"
    return exe, None


def newcomer(workdir):
    """Seconds for (clone + cold build, demo to its first receipt)."""
    repo = os.path.join(workdir, "repo")
    target = os.path.join(workdir, "target")
    t0 = time.perf_counter()
    cp = subprocess.run(["git", "clone", "--quiet", ROOT, repo], capture_output=True, text=True, timeout=600,
                        stdin=subprocess.DEVNULL)
    if cp.returncode != 0:
        raise RuntimeError(f"git clone failed: {cp.stderr[-500:]}")
    env = {"CARGO_TARGET_DIR": target}
    log("scenario 10: cold build of a clean clone (cargo build --bins, fresh target folder)")
    build = Proc("newcomer-build", ["cargo", "build", "--locked", "--bins"], env=env, cwd=repo)
    if wait_proc(build, BUILD_TIMEOUT_S, "the cold build") != 0:
        raise RuntimeError(f"the cold build failed; see {os.path.relpath(build.log_path, ROOT)}")
    built = time.perf_counter()
    log(f"scenario 10: built in {built - t0:.0f} s; running scripts/demo.sh")
    receipts = os.path.join(repo, "target", "demo", "state", "cluster", "receipts")
    demo = Proc("newcomer-demo", ["bash", "scripts/demo.sh"], env={**env, "SKIP_INSTALL": "1"}, cwd=repo)
    try:
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        while not glob.glob(os.path.join(receipts, "*", "*", "job_receipt.json")):
            if not demo.alive():
                raise RuntimeError(f"scripts/demo.sh ended (exit {demo.popen.returncode}) before any receipt; "
                                   f"see {os.path.relpath(demo.log_path, ROOT)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no demo receipt after {DEMO_TIMEOUT_S} s")
            time.sleep(0.05)
        first = time.perf_counter()
        # The rest of the demo runs to its end, so that a demo that breaks
        # later is not reported as a success.
        rc = wait_proc(demo, DEMO_TIMEOUT_S, "scripts/demo.sh")
        if rc != 0:
            raise RuntimeError(f"scripts/demo.sh exited {rc}; see {os.path.relpath(demo.log_path, ROOT)}")
    finally:
        demo.stop()
    return built - t0, first - built


def measure(cfg):
    rows = [
        size_row("release binary size, rayvault-worker (Linux)", os.path.join(RELEASE, "rayvault-worker")),
        size_row("release binary size, rayvault-orchestrator (Linux)", os.path.join(RELEASE, "rayvault-orchestrator")),
    ]
    try:
        exe, why = windows_exe(cfg)
    except Exception as e:
        exe, why = None, f"failed: {e}"
    rows.append(size_row("release binary size, rayvault-worker.exe (Windows)", exe, why))
    details = {}
    build_s = demo_s = None
    if not cfg.get("cold_build"):
        why = "full run only: it needs a cold build"
    else:
        why = None
        workdir = tempfile.mkdtemp(prefix="newcomer-", dir=os.path.join(OUT_DIR))
        try:
            build_s, demo_s = newcomer(workdir)
            details = {"build_s": build_s, "demo_s": demo_s}
            log(f"scenario 10: clone + build {build_s:.0f} s, demo to the first receipt {demo_s:.1f} s")
        except Exception as e:
            why = f"failed: {e}"
            log(f"scenario 10: newcomer {why}")
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    total = build_s + demo_s if build_s is not None else None
    for metric, value in [("clean clone -> first demo receipt, total", total),
                          ("  of which git clone + cold cargo build --bins", build_s),
                          ("  of which scripts/demo.sh -> first receipt", demo_s)]:
        rows.append(Row(SCEN, metric, "s", "lower", ours=summary([value]) if value is not None else None,
                        ours_note=why))
    return rows, details
