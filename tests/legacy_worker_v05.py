#!/usr/bin/env python3
"""A legacy RayVault worker double that follows the v0.5 contract in
docs/protocol.md ("Legacy v0.5 contract"). Standard library only.

It exists so the controller's compatibility mode is tested against the
documented contract rather than against itself: health without auth, an
X-Auth-Token header carrying either a v0.5 HMAC token or the plain secret,
lower-case step names in /caps, submit/poll/cancel, artifacts and the log.
Only ffprobe_analyze does real work (ffprobe on the given media_path); any
other listed step fails with STEP_UNAVAILABLE.

Usage: legacy_worker_v05.py --port N [--worker-id ID] [--os windows]
       [--ram-gb 16] [--steps ffprobe_analyze,...] [--plain-only]
       [--job-delay SECONDS] [--root DIR]
The secret comes from RAYVAULT_CLUSTER_SECRET (or _CURRENT).
"""

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SKEW_S = 300
LOCK = threading.Lock()
JOBS = {}        # job_id -> dict
BY_KEY = {}      # (job_type, inputs_hash) -> job_id


def secret():
    for var in ("RAYVAULT_CLUSTER_SECRET", "RAYVAULT_CLUSTER_SECRET_CURRENT"):
        v = os.environ.get(var)
        if v:
            return v
    sys.exit("legacy double: set RAYVAULT_CLUSTER_SECRET")


def hmac_hex(key, msg):
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def check_token(token, method, path, opts):
    """Returns None when accepted, else (message, server_time or None)."""
    sec = secret()
    if token.startswith("v05:"):
        if opts.plain_only:
            return ("auth_token invalid", None)
        try:
            _, ts_s, sig = token.split(":", 2)
            ts = int(ts_s)
        except ValueError:
            return ("auth_token invalid", None)
        request_key = hmac.new(sec.encode(), b"rayvault-request-v1", hashlib.sha256).digest()
        expected = hmac_hex(request_key, f"{ts}\n{method}\n{path}".encode())
        if not hmac.compare_digest(expected, sig):
            return ("auth_token invalid", None)
        now = int(time.time())
        if abs(now - ts) > SKEW_S:
            return ("timestamp outside allowed skew", now)
        return None
    if hmac.compare_digest(token.encode(), sec.encode()):
        return None
    return ("auth_token invalid", None)


def run_job(job, opts, workdir):
    time.sleep(opts.job_delay)
    with LOCK:
        if job["status"] == "cancelled":
            return
        job["status"] = "running"
    log = os.path.join(workdir, "worker.log")
    with open(log, "a") as f:
        f.write(f"legacy v0.5 worker {opts.worker_id}: running {job['job_type']}\n")
    if job["job_type"] != "ffprobe_analyze":
        finish(job, "failed", None, {"code": "STEP_UNAVAILABLE", "message": f"{job['job_type']} is not implemented by this double"})
        return
    media = job["payload"].get("media_path", "")
    proc = subprocess.run(["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", media],
                          capture_output=True, timeout=120)
    with open(log, "a") as f:
        f.write(proc.stderr.decode(errors="replace"))
    if proc.returncode != 0:
        finish(job, "failed", None, {"code": "FFMPEG_FAILED", "message": f"ffprobe failed on {media}"})
        return
    data = proc.stdout
    art = os.path.join(workdir, "ffprobe.json")
    tmp = art + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, art)
    parsed = json.loads(data)
    result = {"format_name": parsed.get("format", {}).get("format_name"),
              "duration_s": float(parsed.get("format", {}).get("duration", 0) or 0),
              "media_path": media, "legacy": True}
    entry = {"name": "ffprobe.json", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(log, "a") as f:
        f.write("done\n")
    finish(job, "succeeded", result, None, [entry])


def finish(job, status, result, error, artifacts=()):
    with LOCK:
        if job["status"] == "cancelled":
            return
        job.update(status=status, result=result, error=error, artifacts=list(artifacts))


def make_handler(opts, root):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def send_json(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def read_body(self):
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def authed(self):
            token = self.headers.get("X-Auth-Token", "")
            refused = check_token(token, self.command, self.path, opts)
            if refused is None:
                return True
            msg, server_time = refused
            body = {"error": msg}
            if server_time is not None:
                body["server_time"] = server_time
            self.send_json(401, body)
            return False

        def do_GET(self):
            if self.path == "/health":
                return self.send_json(200, {"ok": True, "worker_id": opts.worker_id, "version": "0.5.3"})
            if not self.authed():
                return
            parts = self.path.strip("/").split("/")
            if parts == ["caps"]:
                return self.send_json(200, {
                    "worker_id": opts.worker_id, "version": "0.5.3", "os": opts.os, "cpu": 4,
                    "ram_gb": opts.ram_gb, "gpu_model": None, "vram_gb": 0, "python_version": "3.11.9",
                    "ffmpeg_version": None, "davinci_available": False,
                    "capabilities": [s for s in opts.steps.split(",") if s]})
            if len(parts) >= 2 and parts[0] == "jobs":
                with LOCK:
                    job = JOBS.get(parts[1])
                    view = dict(job) if job else None
                if view is None:
                    return self.send_json(404, {"error": "job not found"})
                workdir = os.path.join(root, parts[1])
                if len(parts) == 2:
                    view.pop("payload", None)
                    return self.send_json(200, view)
                if parts[2:] == ["log"]:
                    try:
                        data = open(os.path.join(workdir, "worker.log"), "rb").read()
                    except OSError:
                        data = b""
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
                if len(parts) == 4 and parts[2] == "artifacts":
                    names = [a["name"] for a in view.get("artifacts", [])]
                    if parts[3] not in names:
                        return self.send_json(404, {"error": "artifact not found"})
                    data = open(os.path.join(workdir, parts[3]), "rb").read()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return self.wfile.write(data)
            return self.send_json(404, {"error": "not found"})

        def do_POST(self):
            body = self.read_body()
            if not self.authed():
                return
            parts = self.path.strip("/").split("/")
            if parts == ["jobs"]:
                try:
                    req = json.loads(body)
                    job_type, payload, ih = req["job_type"], req["payload"], req.get("inputs_hash", "")
                except (ValueError, KeyError, TypeError):
                    return self.send_json(400, {"error": "body must be {job_type, payload, inputs_hash}"})
                if job_type not in opts.steps.split(","):
                    return self.send_json(400, {"error": f"unknown job_type {job_type}"})
                with LOCK:
                    existing = BY_KEY.get((job_type, ih))
                    if existing:
                        view = dict(JOBS[existing], cached=True)
                        view.pop("payload", None)
                        return self.send_json(200, view)
                    job_id = "legacy-" + uuid.uuid4().hex[:12]
                    job = {"job_id": job_id, "job_type": job_type, "status": "queued", "payload": payload,
                           "cached": False, "result": None, "error": None, "artifacts": []}
                    JOBS[job_id] = job
                    BY_KEY[(job_type, ih)] = job_id
                workdir = os.path.join(root, job_id)
                os.makedirs(workdir, exist_ok=True)
                threading.Thread(target=run_job, args=(job, opts, workdir), daemon=True).start()
                view = dict(job)
                view.pop("payload", None)
                return self.send_json(201, view)
            if len(parts) == 3 and parts[0] == "jobs" and parts[2] == "cancel":
                with LOCK:
                    job = JOBS.get(parts[1])
                    if job is None:
                        return self.send_json(404, {"error": "job not found"})
                    if job["status"] in ("queued", "running"):
                        job["status"] = "cancelled"
                        job["error"] = {"code": "CANCELLED", "message": "cancelled by the controller"}
                        with open(os.path.join(root, parts[1], "worker.log"), "a") as f:
                            f.write("job cancelled by the controller\n")
                    return self.send_json(200, {"job_id": parts[1], "status": job["status"]})
            return self.send_json(404, {"error": "not found"})

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--worker-id", default="legacy-worker")
    p.add_argument("--os", default="windows")
    p.add_argument("--ram-gb", type=float, default=16)
    p.add_argument("--steps", default="ffprobe_analyze,audio_postcheck,tts_render_chunks")
    p.add_argument("--plain-only", action="store_true")
    p.add_argument("--job-delay", type=float, default=0.0)
    p.add_argument("--root", default="", help="where jobs are kept (default: a new temporary folder)")
    opts = p.parse_args()
    secret()
    root = opts.root or tempfile.mkdtemp(prefix="legacy-v05-")
    os.makedirs(root, exist_ok=True)
    server = ThreadingHTTPServer((opts.host, opts.port), make_handler(opts, root))
    print(f"legacy v0.5 double {opts.worker_id} on {opts.host}:{opts.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
