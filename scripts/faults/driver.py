#!/usr/bin/env python3
"""The fault suite: breaks workers, the controller daemon, the network and
the disk while jobs run, then checks from the step's own ledger that every
job ended exactly once and that the receipts agree with what ran.

    python3 scripts/faults/driver.py [--rounds N] [--only NAME ...]

Prints one table row per scenario (see docs/reliability.md). Exits 1 when a
scenario FAILs, 0 otherwise (a SKIP says why it could not run here).
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback

# No __pycache__ folder in the source tree.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from world import World, fill, log, parse_utc, signed_get, wait_until, http_get, ROOT  # noqa: E402

LEASE_S = 4.0
MARGIN_S = 1.0
INF = float("inf")


class Tally:
    def __init__(self, name):
        self.name = name
        self.rounds = 0
        self.jobs = 0
        self.lost = 0
        self.concurrent = 0
        self.reruns = 0
        self.contradictions = 0
        self.failover = []
        self.failures = []
        self.notes = []
        self.skip = None

    def fail(self, why):
        self.failures.append(why)
        log(f"{self.name}: FAIL: {why}")

    def note(self, what):
        if what not in self.notes:
            self.notes.append(what)
        log(f"{self.name}: {what}")

    def verdict(self):
        if self.skip:
            return "SKIP"
        return "FAIL" if self.failures else "PASS"


def stop_of(c):
    return c["end"] if c["end"] is not None else (c["death"] if c["death"] is not None else INF)


def attempts_on(receipt, node):
    return [a for a in (receipt or {}).get("attempts", []) if a.get("executed_on") == node]


def check_jobs(w, t, jobs, before=None):
    """Counts lost jobs, concurrent and sequential double runs, and receipts
    that contradict the ledger, for `jobs` = [(run, job, text)]. Copies
    started at or after `before` (a later resubmission) are left out."""
    for run, job, text in jobs:
        t.jobs += 1
        copies = [c for c in w.ledger.starts(text) if before is None or c["start"] < before]
        copies.sort(key=lambda c: c["start"])
        overlap = [(a, b) for i, a in enumerate(copies) for b in copies[i + 1:] if b["start"] < stop_of(a) and a["start"] < stop_of(b)]
        if overlap:
            t.concurrent += 1
            a, b = overlap[0]
            t.fail(f"{job}: two copies ran at once: {a['node']} pid {a['pid']} [{a['start']:.2f}-{stop_of(a):.2f}] and {b['node']} pid {b['pid']} [{b['start']:.2f}-{stop_of(b):.2f}]")
        elif len(copies) > 1:
            t.reruns += 1
            finished = [c for c in copies if c["end"] is not None]
            if len(finished) > 1:
                t.fail(f"{job}: ran to its END twice, one after the other ({', '.join(c['node'] for c in finished)}): the first copy was not stopped")
            else:
                t.note(f"sequential re-run after a proven stop ({', '.join(c['node'] for c in copies)})")
        r = w.receipt(run, job)
        if r is None:
            t.lost += 1
            t.fail(f"{job}: lost (no receipt)")
            continue
        status, where = r.get("status"), r.get("executed_on")
        if status == "succeeded":
            if not r.get("cached") and not any(c["end"] is not None and c["node"] == where for c in copies):
                t.contradictions += 1
                t.fail(f"{job}: receipt says executed_on {where}, but the ledger has no END there ({[(c['node'], c['end'] is not None) for c in copies]})")
        elif status in ("failed", "cancelled") and (r.get("error") or {}).get("code"):
            t.note(f"explicit failure receipt: {r['error']['code']}")
        else:
            t.lost += 1
            t.fail(f"{job}: receipt status {status} without an error")
        for c in copies:
            # The receipt says the step ran there (succeeded, or failed
            # there, or succeeded there with its artifacts not yet copied).
            if c["node"] == where:
                continue
            gave_up = [a for a in attempts_on(r, c["node"]) if a.get("outcome") == "abandoned"]
            if not gave_up:
                if c["end"] is not None or c["node"] != where:
                    t.contradictions += 1
                    t.fail(f"{job}: a copy ran on {c['node']} (pid {c['pid']}) and the receipt has no abandoned attempt there")
                continue
            a = gave_up[-1]
            ended = parse_utc(a["ended_at"])
            if c["start"] > ended + 0.05:
                t.fail(f"{job}: a copy started on {c['node']} {c['start'] - ended:.2f} s after the controller gave it up")
            if c["end"] is not None and c["end"] > ended and a.get("fate") != "finished_ignored":
                # `unknown` (the worker did not answer) claims nothing; any
                # other fate says the copy did not finish, which is false.
                if a.get("fate") == "unknown":
                    t.note(f"a copy on {c['node']} finished after the controller gave up; the receipt says its fate is unknown (its worker did not answer)")
                else:
                    t.contradictions += 1
                    t.fail(f"{job}: the copy on {c['node']} finished after the controller gave up, but the attempt's fate is {a.get('fate')!r}")


def wait_exit(proc, timeout_s):
    try:
        proc.p.wait(timeout=timeout_s)
        return True
    except subprocess.TimeoutExpired:
        return False


def failover_after(w, t, text, moment, node_not):
    """Seconds from `moment` to the first copy of `text` started elsewhere."""
    later = [c["start"] for c in w.ledger.starts(text) if c["node"] != node_not and c["start"] > moment]
    if later:
        t.failover.append(min(later) - moment)


# ---------------------------------------------------------------- scenarios

def s_kill9(t, r):
    """A worker killed with SIGKILL mid-job: the job moves to the second
    worker or runs locally, once the lease has surely expired."""
    w = World("kill9", step_s=6, local_step_s=2)
    try:
        w1, w2 = w.worker("w1"), w.worker("w2")
        w.write_nodes([w1, w2])
        jobs = [("kill9", f"r{r}j{i}", f"kill9-r{r}-j{i}") for i in range(2)]
        subs = [w.submit(run, job, text) for run, job, text in jobs]
        first = wait_until("a copy starts on a worker", 60, lambda: next((c for c in w.ledger.copies() if c["node"] in ("w1", "w2")), None))
        victim = w1 if first["node"] == "w1" else w2
        time.sleep(0.3)
        killed_at = time.time()
        victim.kill9()
        for s in subs:
            if not wait_exit(s, 90):
                t.fail(f"{s.name} did not end within 90 s")
        time.sleep(0.5)
        check_jobs(w, t, jobs)
        failover_after(w, t, first["text"], killed_at, victim.wid)
        if w.ledger.copies() and any(c["node"] == victim.wid and c["end"] is not None and c["end"] > killed_at for c in w.ledger.copies()):
            t.note(f"the step process of the killed worker kept running (no parent-death signal): {victim.wid}")
    finally:
        w.close()


VARIANTS = [("fail", 1.0), ("rerun", 6.5), ("rerun", 1.0), ("fail", 6.5)]


def s_queued_restart(t, r):
    """A worker killed with one job running and two queued, restarted after
    `delay` (before or after the controller gave the jobs up): no job may
    start there after the controller gave up on it."""
    mode, delay = VARIANTS[r % len(VARIANTS)]
    w = World("queued", step_s=3, local_step_s=3)
    try:
        env = {"RAYVAULT_STEPS__TTS_RENDER_CHUNKS__CONCURRENCY": "1", "RAYVAULT_WORKER__ON_INTERRUPTED": mode}
        w1 = w.worker("w1", env=env)
        w.write_nodes([w1])
        jobs = [("queued", f"r{r}j{i}", f"queued-r{r}-j{i}") for i in range(3)]
        subs = []
        for run, job, text in jobs:
            subs.append(w.submit(run, job, text))
            time.sleep(0.2)
        first = wait_until("a copy starts on w1", 60, lambda: next((c for c in w.ledger.copies() if c["node"] == "w1"), None))
        time.sleep(0.5)
        killed_at = time.time()
        w1.kill9()
        time.sleep(delay)
        w1b = w.worker("w1", port=w1.port, state=w1.state, env=env)
        for s in subs:
            if not wait_exit(s, 90):
                t.fail(f"{s.name} did not end within 90 s")
        # Anything the restarted worker still holds is settled within a lease.
        time.sleep(LEASE_S + MARGIN_S)
        check_jobs(w, t, jobs)
        failover_after(w, t, first["text"], killed_at, "w1")
        if w1b.p.poll() is not None:
            t.fail("the restarted worker exited")
        t.note(f"round {r + 1}: on_interrupted = {mode}, worker restarted {delay:g} s after the kill")
    finally:
        w.close()


def s_daemon_kill(t, r):
    """The controller daemon killed with SIGKILL while 50 jobs are queued,
    then restarted: every job ends exactly once."""
    n = int(os.environ.get("FAULTS_DAEMON_JOBS", "50"))
    w = World("daemon", step_s=0.5, local_step_s=0.5)
    try:
        w1 = w.worker("w1")
        w.write_nodes([w1])
        d = w.daemon()
        jobs = [("daemon", f"r{r}j{i:02}", f"daemon-r{r}-j{i:02}") for i in range(n)]
        for run, job, text in jobs:
            s = w.submit(run, job, text, extra=["--no-wait"])
            if not wait_exit(s, 30) or s.p.returncode != 0:
                t.fail(f"submit --no-wait {job} failed: {s.log()[-500:]}")
        wait_until("a few jobs end", 60, lambda: sum(1 for c in w.ledger.copies() if c["end"]) >= 4)
        d.kill9()
        killed_at = time.time()
        time.sleep(0.5)
        w.daemon()
        try:
            wait_until("every receipt", 240, lambda: all(w.receipt(run, job) for run, job, _ in jobs), interval_s=0.5)
        except TimeoutError as e:
            t.fail(str(e))
        time.sleep(LEASE_S + MARGIN_S)
        check_jobs(w, t, jobs)
        if any(c["start"] > killed_at and c["node"] == "w1" for c in w.ledger.copies()):
            t.note("the worker went on with its queue while the daemon was down (no failover applies)")
    finally:
        w.close()


def s_partition(t, r):
    """The worker in its own network namespace, the link cut mid-job: the
    controller runs the job locally only after the lease expired, and only
    after the worker's copy stopped; after the link returns, the abandoned
    copy is `abandoned`/LEASE_EXPIRED and never served as cached."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        t.skip = "needs root and ip(8) for network namespaces"
        return
    w = World("partition", step_s=8, local_step_s=2)
    try:
        tag = f"{os.getpid() % 10000}{r}"
        ns, host_if, inner_if, addr = w.netns(tag, 200 + r)
        w1 = w.worker("w1", host=addr, netns=ns)
        w.write_nodes([w1])
        run, job, text = "partition", f"r{r}", f"partition-r{r}"
        # Odd rounds use short long-polls and probes (2 s each, as the tests
        # do) and cut at once, so a long-poll is in flight at the cut.
        short = r % 2 == 1
        poll_env = {"RAYVAULT_CONTROLLER__WAIT_POLL_S": "2", "RAYVAULT_CONTROLLER__PROBE_TIMEOUT_S": "2"} if short else {}
        t.note(f"round {r + 1}: {'wait_poll_s = probe_timeout_s = 2, cut at the start' if short else 'defaults, cut 1 s into the step'}")
        sub = w.submit(run, job, text, env=poll_env)
        remote = wait_until("the copy starts on w1", 60, lambda: next(iter(w.ledger.starts(text, "w1")), None))
        if not short:
            time.sleep(1.0)
        cut_at = time.time()
        # The worker's side goes down: the host side loses its carrier and
        # drops packets silently (a true partition, not a refusal).
        w.sh("ip", "netns", "exec", ns, "ip", "link", "set", inner_if, "down")
        if not wait_exit(sub, 90):
            t.fail("submit did not end within 90 s")
        check_jobs(w, t, [(run, job, text)])
        rec = w.receipt(run, job) or {}
        local = w.ledger.starts(text, "local")
        rc = next((c for c in w.ledger.copies() if c["pid"] == remote["pid"]), remote)
        if not local:
            t.fail(f"no local copy ran (receipt: {rec.get('status')} on {rec.get('executed_on')})")
        else:
            ls = local[0]["start"]
            t.failover.append(ls - cut_at)
            if ls - cut_at < LEASE_S - 1.0:
                t.fail(f"the local copy started {ls - cut_at:.2f} s after the cut, before the lease ({LEASE_S:g} s less the 1 s renewal period) could expire")
            if rc["end"] is not None:
                t.fail("the worker's copy ran to its END after the cut")
            elif rc["death"] is None:
                t.fail("the worker's copy was still alive when the local copy started")
            elif rc["death"] > ls:
                t.fail(f"the worker's copy died {rc['death'] - ls:.2f} s after the local copy started")
            else:
                t.note(f"worker copy stopped {rc['death'] - cut_at:.2f} s after the cut, local copy {ls - rc['death']:.2f} s later")
        # The link returns: the remote job says what happened to it.
        w.sh("ip", "netns", "exec", ns, "ip", "link", "set", inner_if, "up")
        wait_until("w1 answers again", 30, lambda: _health(addr, w1.port))
        rid = rec.get("attempts", [{}])[0].get("remote_job_id")
        if rid:
            st, body = signed_get(addr, w1.port, "w1", f"/jobs/{rid}")
            state, code = (body or {}).get("state"), ((body or {}).get("error") or {}).get("code")
            if (state, code) != ("abandoned", "LEASE_EXPIRED"):
                t.fail(f"remote job {rid} is {state}/{code} (HTTP {st}), expected abandoned/LEASE_EXPIRED")
        else:
            t.fail(f"the receipt names no remote job: {rec.get('attempts')}")
        resub_at = time.time()
        again = w.submit(run, job + "-again", text)
        if not wait_exit(again, 90):
            t.fail("the resubmission did not end within 90 s")
        r2 = w.receipt(run, job + "-again") or {}
        if r2.get("cached") and r2.get("remote_job_id") == rid:
            t.fail("the abandoned copy was served as cached")
        elif r2.get("status") != "succeeded":
            t.fail(f"the resubmission ended {r2.get('status')}: {r2.get('error')}")
        elif not any(c["end"] and c["start"] >= resub_at for c in w.ledger.starts(text)):
            t.fail("the resubmission succeeded without running the step")
    finally:
        w.close()


def _health(host, port):
    try:
        st, body = http_get(host, port, "/health", timeout_s=1)
        return st == 200 and body
    except OSError:
        return None


def s_disk_full(t, r):
    """(a) The worker's state on a full tmpfs: the job is not lost, the
    worker says it is degraded, and serves again once space is freed,
    without a restart. (b) The controller's receipt folder on a full tmpfs:
    the receipt is kept and written once space returns, no 0-byte .part."""
    if os.geteuid() != 0:
        t.skip = "needs root for tmpfs mounts"
        return
    w = World("disk", step_s=1, local_step_s=1)
    try:
        # (a) the worker's disk.
        wstate = os.path.join(w.dir, "w1-state")
        w.tmpfs(wstate, "16m")
        # The whole disk is 16 MiB: "short of space" means under 1 MiB here.
        w1 = w.worker("w1", state=wstate, env={"RAYVAULT_WORKER__MIN_FREE_BYTES": "1048576"})
        w.write_nodes([w1])
        fill(wstate)
        time.sleep(1.5)
        _, health = http_get(w1.host, w1.port, "/health")
        if (health or {}).get("status") != "degraded":
            t.fail(f"worker /health on a full disk says {(health or {}).get('status')!r}, not 'degraded'")
        jobs = [("disk", f"r{r}full", f"disk-r{r}-full")]
        s = w.submit(*jobs[0])
        if not wait_exit(s, 90):
            t.fail("submit on a full worker did not end within 90 s")
        rec = w.receipt("disk", f"r{r}full") or {}
        t.note(f"full worker: {rec.get('status')} on {rec.get('executed_on')}; {rec.get('fallback_reason') or (rec.get('error') or {}).get('code')}")
        if rec.get("status") == "succeeded" and rec.get("executed_on") == "local" and "disk" not in (rec.get("fallback_reason") or "").lower():
            t.fail(f"fell back without naming the full disk: {rec.get('fallback_reason')!r}")
        os.unlink(os.path.join(wstate, "filler"))
        try:
            wait_until("w1 healthy again", 20, lambda: (_health(w1.host, w1.port) or {}).get("status") != "degraded")
        except TimeoutError as e:
            t.fail(str(e))
        job2 = ("disk", f"r{r}freed", f"disk-r{r}-freed")
        jobs.append(job2)
        s = w.submit(*job2)
        if not wait_exit(s, 90):
            t.fail("submit after freeing space did not end within 90 s")
        rec2 = w.receipt("disk", f"r{r}freed") or {}
        if rec2.get("executed_on") != "w1" or rec2.get("status") != "succeeded":
            t.fail(f"after space was freed the job ran {rec2.get('status')} on {rec2.get('executed_on')}, not on w1 ({rec2.get('fallback_reason') or rec2.get('error')})")
        if w1.p.poll() is not None:
            t.fail("the worker exited on a full disk")
        check_jobs(w, t, jobs)

        # (b) the controller's receipt folder.
        # A healthy worker runs the job; only the controller's disk is full.
        w2 = w.worker("w2")
        w.write_nodes([w2])
        receipts = os.path.join(w.ctl_state, "cluster", "receipts")
        w.tmpfs(receipts, "1m")
        fill(receipts)
        w.daemon()
        job3 = ("diskctl", f"r{r}", f"diskctl-r{r}")
        s = w.submit(*job3, extra=["--no-wait"])
        if not wait_exit(s, 30) or s.p.returncode != 0:
            t.fail(f"submit --no-wait failed: {s.log()[-300:]}")
        try:
            wait_until("the step ends", 30, lambda: any(c["end"] for c in w.ledger.starts(job3[2])))
        except TimeoutError:
            t.fail("the step never ran while the receipt folder was full")
        time.sleep(2)
        empty = [os.path.join(d, f) for d, _, fs in os.walk(receipts) for f in fs if f.endswith(".part") and os.path.getsize(os.path.join(d, f)) == 0]
        os.unlink(os.path.join(receipts, "filler"))
        try:
            wait_until("the receipt once space returned", 30, lambda: w.receipt(job3[0], job3[1]), interval_s=0.2)
        except TimeoutError as e:
            t.fail(f"{e} (the receipt was not kept for later)")
        leftover = [os.path.join(d, f) for d, _, fs in os.walk(receipts) for f in fs if f.endswith(".part")]
        if empty:
            t.fail(f"0-byte .part files on the full disk: {[os.path.relpath(p, w.ctl_state) for p in empty]}")
        if leftover:
            t.fail(f".part files left after space returned: {[os.path.relpath(p, w.ctl_state) for p in leftover]}")
        check_jobs(w, t, [job3])
    finally:
        w.close()


def panic_hook():
    """The env var of the executors' test-only panic hook, if main has it."""
    import re
    with open(os.path.join(ROOT, "actors", "executor.rs")) as f:
        text = f.read()
    if "debug_assertions" not in text:
        return None
    m = re.search(r"\b(RAYVAULT_[A-Z0-9_]*PANIC[A-Z0-9_]*)", text)
    return m.group(1) if m else None


def s_panic(t, r):
    """A step that panics inside the worker's executor: the job gets an
    explicit failure (or runs elsewhere), the worker stays up and serves
    the next job."""
    var = panic_hook()
    if not var:
        t.skip = "no test-only panic hook in actors/executor.rs (RAYVAULT_*PANIC* under cfg(debug_assertions)) in this tree"
        return
    w = World("panic", step_s=0.5, local_step_s=0.5)
    try:
        w1 = w.worker("w1", env={var: "TTS_RENDER_CHUNKS"})
        w.write_nodes([w1])
        # The hook (debug builds only) panics in a job of the named step
        # whose payload contains the marker; see actors/executor.rs.
        jobs = [("panic", f"r{r}j0", f"panic-r{r}-j0 rayvault-test-panic:step")]
        s = w.submit(*jobs[0], extra=["--fallback", "never"])
        if not wait_exit(s, 60):
            t.fail("submit of a panicking step did not end within 60 s")
        rec = w.receipt(*jobs[0][:2]) or {}
        t.note(f"panicking step: {rec.get('status')} {(rec.get('error') or {}).get('code')} on {rec.get('executed_on')}")
        if rec.get("status") == "succeeded" and rec.get("executed_on") == "w1":
            t.fail(f"the step did not panic on w1 with {var}=TTS_RENDER_CHUNKS: read the hook's documentation in actors/executor.rs and adjust s_panic")
        elif rec and rec.get("status") != "succeeded" and not (rec.get("error") or {}).get("code"):
            t.fail(f"the panicking job's receipt has no error code: {rec}")
        elif (rec.get("error") or {}).get("code") != "INTERNAL":
            t.fail(f"the panicking job failed with {(rec.get('error') or {}).get('code')}, not INTERNAL")
        if w1.p.poll() is not None:
            t.fail("the worker died with the panicking step")
        elif not _health(w1.host, w1.port):
            t.fail("the worker stopped answering /health after the panic")
        # The executor keeps serving: the next job of the same step runs there.
        after = ("panic", f"r{r}j1", f"panic-r{r}-j1")
        s = w.submit(*after, extra=["--fallback", "never"])
        if not wait_exit(s, 60):
            t.fail("the job after the panic did not end within 60 s")
        rec = w.receipt(*after[:2]) or {}
        if rec.get("status") != "succeeded" or rec.get("executed_on") != "w1":
            t.fail(f"the job after the panic: {rec.get('status')} on {rec.get('executed_on')}, not succeeded on w1")
        jobs.append(after)
        check_jobs(w, t, jobs)
    finally:
        w.close()


SCENARIOS = [
    ("kill9", "worker kill -9 mid-job", s_kill9),
    ("queued", "worker killed with queued jobs, restarted", s_queued_restart),
    ("daemon", "daemon kill -9, 50 queued jobs", s_daemon_kill),
    ("partition", "partition (veth down) mid-job", s_partition),
    ("disk", "full disk (worker state, receipts)", s_disk_full),
    ("panic", "step panics in the executor", s_panic),
]


def fmt_failover(xs):
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f} / {max(xs):.2f} s"


def table(tallies):
    head = ["scenario", "rounds", "jobs", "lost", "run twice", "re-runs", "contradicting receipts", "failover median / max", "verdict"]
    rows = [[t.title, str(t.rounds), str(t.jobs), str(t.lost), str(t.concurrent), str(t.reruns), str(t.contradictions), fmt_failover(t.failover), t.verdict()] for t in tallies]
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(c.ljust(n) for c, n in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(head), "|" + "|".join("-" * (n + 2) for n in widths) + "|"] + [line(r) for r in rows]
    out.append("")
    for t in tallies:
        for why in ([t.skip] if t.skip else []) + sorted(set(t.failures)) + t.notes:
            out.append(f"- {t.title}: {why}")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("ROUNDS", "3")))
    ap.add_argument("--only", action="append", choices=[s[0] for s in SCENARIOS])
    args = ap.parse_args()
    # A Ctrl-C or SIGTERM unwinds through every round's cleanup.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tallies = []
    for key, title, fn in SCENARIOS:
        if args.only and key not in args.only:
            continue
        t = Tally(key)
        t.title = title
        tallies.append(t)
        for r in range(args.rounds):
            log(f"{key}: round {r + 1}/{args.rounds}")
            t.rounds += 1
            try:
                fn(t, r)
            except Exception as e:  # noqa: BLE001 - a broken round is a FAIL with its reason
                t.fail(f"round {r + 1} broke: {e}")
                traceback.print_exc()
            if t.skip:
                t.rounds = 0
                break
    print()
    print(table(tallies))
    return 1 if any(t.verdict() == "FAIL" for t in tallies) else 0


if __name__ == "__main__":
    sys.exit(main())
