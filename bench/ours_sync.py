"""Scenario 2, our side: a worker holding finished jobs whose artifacts are
large WAVs, and `rayvault-orchestrator sync-artifacts` pulling them again.

The artifacts come from real TTS_RENDER_CHUNKS jobs on the worker, with the
TTS engine "command" configured to a script that copies a prepared WAV into
place (a long voice-over render, without waiting hours for espeak-ng). The
job is submitted with `rayvault-orchestrator submit`, which places it on the
worker (nodes.json lists it) and syncs its artifact once; each measurement
then deletes the verified copy and times `sync-artifacts`, which downloads,
checks the SHA-256 and moves it into the receipt folder. The controller's
peak RSS is the process's ru_maxrss from wait4.
"""

import json
import os
import shutil
import subprocess
import time

from lib import free_port
from ours import Worker, base_env, fresh_state, need

FAKE_TTS = """#!/bin/sh
# Written by bench/ours_sync.py: the TTS "command" engine for scenario 2.
# $1 is the chunk's text file, $2 the WAV to write; the text names the size.
case "$(cat "$1")" in
  *small*) exec cp -- "{small}" "$2" ;;
  *) exec cp -- "{big}" "$2" ;;
esac
"""


class SyncRig:
    def __init__(self, big_wav, small_wav):
        self.orch = need("rayvault-orchestrator", "the controller binary")
        self.dir = fresh_state("sync-")
        script = os.path.join(self.dir, "fake_tts.sh")
        with open(script, "w") as f:
            f.write(FAKE_TTS.format(small=small_wav, big=big_wav))
        os.chmod(script, 0o755)
        self.worker = Worker(extra_env={
            "RAYVAULT_TTS__ENGINE": "command",
            "RAYVAULT_TTS__COMMAND_TEMPLATE": f"{script} {{text_file}} {{out_wav}}",
            "RAYVAULT_TTS__CHUNK_TIMEOUT_S": "600",
        })
        self.state = os.path.join(self.dir, "controller")
        os.makedirs(os.path.join(self.state, "cluster"))
        with open(os.path.join(self.state, "cluster", "nodes.json"), "w") as f:
            json.dump({"nodes": [{"node_id": self.worker.id, "host": "127.0.0.1", "port": self.worker.port,
                                  "enabled": True}]}, f)
        self.env = {**os.environ, **base_env(self.state), "RAYVAULT_CONTROLLER__API_PORT": str(free_port())}
        self.jobs = {}
        for which in ("big", "small"):
            self.jobs[which] = self._make_job(which)

    def _make_job(self, which):
        job_id = f"artifact-{which}"
        payload = {"chunks": [{"id": 1, "text": f"the {which} artifact"}]}
        cp = subprocess.run([self.orch, "submit", "--run-id", "sync", "--job-id", job_id, "--step-name",
                             "TTS_RENDER_CHUNKS", "--payload-json", json.dumps(payload), "--no-fallback", "--json"],
                            capture_output=True, text=True, timeout=1800, env=self.env, cwd=self.state,
                            stdin=subprocess.DEVNULL)
        if cp.returncode != 0:
            raise RuntimeError(f"submitting the {which} artifact job failed: {(cp.stderr or cp.stdout)[-600:]}")
        receipt = json.loads(cp.stdout)
        if receipt.get("executed_on") != self.worker.id or not receipt.get("artifacts"):
            raise RuntimeError(f"the {which} artifact job ran on {receipt.get('executed_on')} "
                               f"with {len(receipt.get('artifacts') or [])} artifact(s)")
        wavs = [a for a in receipt["artifacts"] if a["name"].endswith(".wav")]
        return {"job_id": job_id, "artifact": wavs[0]}

    def sync(self, which):
        """Deletes the verified copy and pulls it again; returns (seconds,
        peak RSS KiB, bytes)."""
        job = self.jobs[which]
        art = job["artifact"]
        try:
            os.remove(art["path"])
        except FileNotFoundError:
            pass
        t0 = time.perf_counter()
        p = subprocess.Popen([self.orch, "sync-artifacts", "--run-id", "sync", "--job-id", job["job_id"],
                              "--node-id", self.worker.id], env=self.env, cwd=self.state,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # wait4 gives the child's own peak RSS (ru_maxrss, KiB on Linux).
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            p.returncode = 0
        elapsed = time.perf_counter() - t0
        out, err = p.stdout.read(), p.stderr.read()
        p.stdout.close()
        p.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"sync-artifacts failed: {(err or out).decode(errors='replace')[-600:]}")
        if not os.path.exists(art["path"]) or os.path.getsize(art["path"]) != art["size"]:
            raise RuntimeError("sync-artifacts did not put the artifact back")
        return elapsed, usage.ru_maxrss, art["size"]

    def stop(self):
        self.worker.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
