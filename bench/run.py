"""Runs the benchmark scenarios, prints one table and writes JSON under
target/bench/. Started by scripts/bench.sh, which builds in release mode and
installs the peers first; see docs/benchmarks.md for how to read the table.

    python3 bench/run.py [--quick] [--only 1,3,...]
"""

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lib import NotMeasured, log, stop_all  # noqa: E402
from report import Row, machine, save, table  # noqa: E402

# Sizes of each scenario: the full run and the CI-sized one (--quick).
FULL = {
    "repeats": 5, "seq_n": 1000, "thr_n": 2000, "celery_thr_n": 10000,
    "artifact_mib": 1024, "artifact_small_mib": 128,
    "qc_files": 100, "qc_seconds": 10.0,
    "clip_s": 180.0, "frame_counts": [10, 200], "frames_repeats": 3,
    "tts_chunks": 20, "footprint_jobs": 2000, "failover_repeats": 5,
    "sched_nodes": 1000, "sched_decisions": 200000,
    "sha_mib": 256, "cold_build": True,
}
QUICK = {
    "repeats": 3, "seq_n": 200, "thr_n": 400, "celery_thr_n": 1000,
    "artifact_mib": 256, "artifact_small_mib": 64,
    "qc_files": 20, "qc_seconds": 10.0,
    "clip_s": 30.0, "frame_counts": [10, 50], "frames_repeats": 2,
    "tts_chunks": 6, "footprint_jobs": 300, "failover_repeats": 2,
    "sched_nodes": 1000, "sched_decisions": 20000,
    "sha_mib": 256, "cold_build": False,
}


def scenarios():
    import s_audioqc
    import s_dispatch
    import s_failover
    import s_footprint
    import s_frames
    import s_newcomer
    import s_scheduler
    import s_spread
    import s_sync
    import s_tts
    return [
        ("1", "dispatch", s_dispatch.measure),
        ("2", "artifact sync", s_sync.measure),
        ("3", "audio QC", s_audioqc.measure),
        ("4", "frames", s_frames.measure),
        ("5", "TTS", s_tts.measure),
        ("6", "footprint", s_footprint.measure),
        ("7", "failover", s_failover.measure),
        ("8", "scheduler", s_scheduler.measure),
        ("9", "spread", s_spread.measure),
        ("10", "newcomer", s_newcomer.measure),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="the CI-sized version (a few minutes)")
    ap.add_argument("--only", default="", help="comma-separated scenario numbers, e.g. 1,3")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    mode = "quick" if args.quick else "full"
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    # The caller's RayVault settings and secrets must not change what is
    # measured (or leak into it): our processes get only what bench/ours.py
    # gives them.
    for k in [k for k in os.environ if k.startswith("RAYVAULT_")]:
        del os.environ[k]
    started = time.time()
    load_before = os.getloadavg()
    # The tree as built (scripts/bench.sh builds just before this starts).
    rows, details = [], {"config": cfg, "load_before": load_before, "machine_at_start": machine()}
    try:
        for num, name, fn in scenarios():
            if only and num not in only:
                continue
            log(f"== scenario {num}: {name}")
            t0 = time.time()
            try:
                r, d = fn(cfg)
                rows.extend(r)
                details[name] = d
            except NotMeasured as e:
                rows.append(Row(f"{num} {name}", "all", "-", "lower", ours_note=str(e)))
                details[name] = {"not_measured": str(e)}
            except Exception as e:
                traceback.print_exc()
                rows.append(Row(f"{num} {name}", "all", "-", "lower", ours_note=f"harness error: {e}"))
                details[name] = {"error": repr(e)}
            details.setdefault(name, {})
            if isinstance(details[name], dict):
                details[name]["elapsed_s"] = round(time.time() - t0, 1)
    finally:
        stop_all()
    details["load_after"] = os.getloadavg()
    path = save(rows, mode, started, details)
    print(table(rows))
    print(f"\n{mode} run, {time.time() - started:.0f} s; load average before {load_before[0]:.2f}, "
          f"after {details['load_after'][0]:.2f}; JSON: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
