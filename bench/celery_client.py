"""Measures Celery + Redis from a client's side (run with the virtual
environment's Python): sequential `noop.delay().get()` latency (one list per repeat) and the
throughput of submitting N tasks and collecting every result. Prints JSON.

    python celery_client.py SEQUENTIAL_N THROUGHPUT_N REPEATS
"""

import json
import sys
import time

from celery_tasks import noop


def main():
    seq_n, thr_n, repeats = (int(a) for a in sys.argv[1:4])
    # The first call waits until the worker is up and warm.
    deadline = time.monotonic() + 60
    while True:
        try:
            noop.delay().get(timeout=5)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
    for _ in range(200):
        noop.delay().get(timeout=30)
    lat = []
    for _ in range(repeats):
        one = []
        for _ in range(seq_n):
            t0 = time.perf_counter()
            noop.delay().get(timeout=30)
            one.append(time.perf_counter() - t0)
        lat.append(one)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        results = [noop.delay() for _ in range(thr_n)]
        for r in results:
            r.get(timeout=120)
        rates.append(thr_n / (time.perf_counter() - t0))
    json.dump({"latency_s": lat, "throughput_per_s": rates}, sys.stdout)


if __name__ == "__main__":
    main()
