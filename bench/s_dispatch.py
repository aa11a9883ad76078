"""Scenario 1: dispatch overhead and throughput.

Ours: small AUDIO_POSTCHECK jobs (distinct 0.5 s WAVs) submitted through the
daemon's local API to one worker on loopback, auth and durable state on
(see bench/ours.py and examples/bench_dispatch.rs). Per-job overhead is the
end-to-end time minus the step's own run time as the receipt reports it.

Floor: one keep-alive HTTP request to nginx on loopback plus one fsync
(examples/bench_floor.rs, standard library only).

Peer: Celery 5 + Redis with a no-op task: `delay().get()` latency and the
throughput of N tasks submitted then collected (bench/celery_client.py);
once as usually deployed (Redis without persistence) and once with Redis's
append-only file fsynced on every write, the durability our stores give.
"""

import json
import os

import ours
from lib import OUT_DIR, NotMeasured, binary, log, percentile, run, summary, tree_rss_kib
from peers import CeleryWorker, Nginx, Redis, venv_python
from report import Row

SCEN = "1 dispatch"


def _ms(xs):
    return [x * 1000.0 for x in xs]


def floor(cfg):
    exe = binary("bench_floor")
    if not exe:
        raise NotMeasured("examples/bench_floor was not built")
    scratch = os.path.join(OUT_DIR, "scratch")
    os.makedirs(scratch, exist_ok=True)
    nginx = Nginx(scratch)
    try:
        p50s, p99s, rates = [], [], []
        for _ in range(cfg["repeats"]):
            out = json.loads(run([exe, "latency", str(nginx.port), str(cfg["seq_n"]),
                                  os.path.join(scratch, "floor.rec")]).stdout)
            lat = out["latency_s"]
            p50s.append(percentile(lat, 50) * 1000)
            p99s.append(percentile(lat, 99) * 1000)
            out = json.loads(run([exe, "rate", str(nginx.port), "16", str(cfg["thr_n"]), scratch]).stdout)
            rates.append(out["per_s"])
        return {"p50": summary(p50s), "p99": summary(p99s), "rate": summary(rates)}
    finally:
        nginx.stop()


def celery(cfg, durable=False):
    venv_python()
    redis = Redis(durable=durable)
    worker = None
    try:
        worker = CeleryWorker(redis, concurrency=os.cpu_count() or 2)
        here = os.path.dirname(os.path.abspath(__file__))
        cp = run([venv_python(), os.path.join(here, "celery_client.py"), str(cfg["seq_n"]),
                  str(cfg["celery_thr_n"]), str(cfg["repeats"])],
                 env={"BENCH_REDIS_URL": redis.url, "PYTHONPATH": here}, timeout_s=1800)
        out = json.loads(cp.stdout)
        p50s = [percentile(_ms(lat), 50) for lat in out["latency_s"]]
        p99s = [percentile(_ms(lat), 99) for lat in out["latency_s"]]
        # The peer's footprint after the run, for scenario 6's comparison:
        # the Celery worker with its pool, and Redis.
        return {"p50": summary(p50s), "p99": summary(p99s), "rate": summary(out["throughput_per_s"]),
                "worker_rss_kib": tree_rss_kib(worker.proc.pid), "redis_rss_kib": tree_rss_kib(redis.proc.pid)}
    finally:
        if worker:
            worker.stop()
        redis.stop()


def _merge(acc, r, counts=False):
    """Folds one repeat's result `r` into `acc`: summaries are re-made from
    their figures together, lists are joined, the job counts of
    `executed_on` added, and any other value is kept from the last
    repeat."""
    if acc is None:
        return r
    out = dict(acc)
    for k, v in r.items():
        a = acc.get(k)
        if isinstance(v, dict) and isinstance(a, dict) and "all" in v and "all" in a:
            out[k] = summary(a["all"] + v["all"])
        elif isinstance(v, dict) and isinstance(a, dict):
            out[k] = _merge(a, v, counts=k == "executed_on")
        elif isinstance(v, list) and isinstance(a, list):
            out[k] = a + v
        elif counts and isinstance(v, int) and isinstance(a, int):
            out[k] = a + v
        else:
            out[k] = v
    return out


def measure(cfg):
    rows = []
    details = {}
    results = {}
    sides = [("floor", floor), ("celery", celery), ("celery_durable", lambda c: celery(c, durable=True)),
             ("ours", lambda c: ours.dispatch(c, via_daemon=True)),
             ("worker_api", lambda c: ours.dispatch(c, via_daemon=False))]
    # The repeats are interleaved: each round measures every side once,
    # the order turned round every other round, so that a change in the
    # machine's speed during the run (this VM's moved Celery's own figure
    # by 2x between runs minutes apart) reaches every side alike instead of
    # whichever ran in that stretch.
    one = {**cfg, "repeats": 1}
    failed = set()
    for r in range(cfg["repeats"]):
        for name, fn in (sides if r % 2 == 0 else list(reversed(sides))):
            if name in failed:
                continue
            log(f"scenario 1: {name}, round {r + 1} of {cfg['repeats']}")
            try:
                results[name] = _merge(results.get(name), fn(one))
            except NotMeasured as e:
                failed.add(name)
                results[name] = None
                details[f"{name}_not_measured"] = str(e)
                log(f"scenario 1: {name} not measured: {e}")
            except Exception as e:
                failed.add(name)
                results[name] = None
                details[f"{name}_not_measured"] = f"failed: {e}"
                log(f"scenario 1: {name} failed: {e}")
    o, f, c, w = results.get("ours"), results.get("floor"), results.get("celery"), results.get("worker_api")
    cd = results.get("celery_durable")
    why = details.get("ours_not_measured")

    def get(r, k):
        return r[k] if r else None

    for metric, key, unit, better, target in (
        ("per-job overhead p50, sequential", "p50", "ms", "lower", ("<=", 1.0)),
        ("per-job overhead p99, sequential", "p99", "ms", "lower", None),
        ("throughput, concurrency 16", "rate", "jobs/s", "higher", (">=", 2500.0)),
    ):
        rows.append(Row(SCEN, metric, unit, better, ours=get(o, key), ours_note=why,
                        baseline="floor: nginx keep-alive GET + fsync", base=get(f, key),
                        base_note=details.get("floor_not_measured"), target=target))
        rows.append(Row(SCEN, metric, unit, better, ours=get(o, key), ours_note=why,
                        baseline="Celery 5 + Redis no-op", base=get(c, key),
                        base_note=details.get("celery_not_measured"), target=target))
        rows.append(Row(SCEN, metric, unit, better, ours=get(o, key), ours_note=why,
                        baseline="Celery + Redis, AOF fsync always", base=get(cd, key),
                        base_note=details.get("celery_durable_not_measured"), target=target))
        # The same jobs straight to the worker's API, without the daemon:
        # shows how the overhead splits between the two hops.
        rows.append(Row(SCEN, metric + " (worker API direct)", unit, better, ours=get(w, key),
                        ours_note=details.get("worker_api_not_measured"),
                        baseline="Celery 5 + Redis no-op", base=get(c, key),
                        base_note=details.get("celery_not_measured")))
    for name, r in (("ours", o), ("worker_api", w)):
        if r and r.get("extra"):
            details[name] = r["extra"]
    details["floor"] = f
    details["celery"] = c
    details["celery_durable"] = cd
    return rows, details
