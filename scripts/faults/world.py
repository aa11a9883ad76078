"""The fault suite's world: real `rayvault-worker` and `rayvault-orchestrator`
processes on loopback (or in network namespaces this suite creates), a step
that writes its own ledger, and cleanup of everything it created.

The step is the `command` TTS engine running `step.sh`: it appends
`START <text> <node> <pid> <epoch-seconds>` to the ledger, sleeps
FAULT_STEP_S, copies a prepared WAV to the engine's output and appends
`END ...`. Each process's FAULT_NODE names where it runs (a worker id, or
`local` for the controller), so the ledger says where and when every copy of
every job ran, independently of the controller's receipts and logs.
"""

import hashlib
import hmac
import http.client
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import wave

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SECRET = "faults-cluster-secret-0123456789abcdef"
STEP = "TTS_RENDER_CHUNKS"
SCHEME = "RAYVAULT-HMAC-SHA256"

STEP_SH = r"""#!/bin/sh
# A ledger-writing TTS engine: $1 is the text file, $2 the WAV to write.
text=$(cat "$1")
node=${FAULT_NODE:-unknown}
printf 'START %s %s %s %s\n' "$text" "$node" "$$" "$(date +%s.%N)" >> "$FAULT_LEDGER"
sleep "${FAULT_STEP_S:-2}"
cp "$FAULT_WAV" "$2"
printf 'END %s %s %s %s\n' "$text" "$node" "$$" "$(date +%s.%N)" >> "$FAULT_LEDGER"
"""


def log(msg):
    print(f"[faults {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, timeout_s, cond, interval_s=0.05):
    deadline = time.time() + timeout_s
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def parse_utc(stamp):
    """Seconds since the epoch from an RFC 3339 UTC stamp."""
    from datetime import datetime, timezone
    s = stamp.rstrip("Z")
    main, frac = (s.split(".", 1) + ["0"])[:2]
    dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + float("0." + frac)


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return ") Z " not in stat


def binaries():
    """The debug binaries (the panic hook exists only there), built if missing."""
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    d = os.path.join(target, "debug")
    w, o = os.path.join(d, "rayvault-worker"), os.path.join(d, "rayvault-orchestrator")
    if not (os.path.exists(w) and os.path.exists(o)) or os.environ.get("FAULTS_BUILD") == "1":
        log("building the binaries (cargo build --bins)")
        subprocess.run(["cargo", "build", "--bins"], cwd=ROOT, check=True)
    return w, o


def http_get(host, port, path, headers=None, timeout_s=3):
    """(status, JSON or None); raises OSError when nothing answers."""
    c = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        try:
            return r.status, json.loads(data) if data else None
        except ValueError:
            return r.status, None
    finally:
        c.close()


def signed_get(host, port, worker_id, path, query=""):
    """A GET signed as src/auth.rs does (see bench/rvclient.py)."""
    request_key = hmac.new(SECRET.encode(), b"rayvault-request-v1", hashlib.sha256).digest()
    kid = hashlib.sha256(hmac.new(SECRET.encode(), b"rayvault-kid-v1", hashlib.sha256).digest()).hexdigest()[:16]
    ts, nonce = str(int(time.time())), secrets.token_hex(16)
    sts = "\n".join([SCHEME, "GET", path, query, ts, nonce, worker_id, hashlib.sha256(b"").hexdigest()])
    sig = hmac.new(request_key, sts.encode(), hashlib.sha256).hexdigest()
    auth = f"{SCHEME} kid={kid}, ts={ts}, nonce={nonce}, sig={sig}"
    return http_get(host, port, f"{path}?{query}" if query else path, {"Authorization": auth})


class Ledger:
    """Reads the step's ledger and watches every started copy's process, so
    that a copy stopped without an END line has an observed time of death."""

    def __init__(self, path):
        self.path = path
        self.deaths = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def entries(self):
        try:
            with open(self.path) as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        out = []
        for line in lines:
            parts = line.split()
            if len(parts) == 5 and parts[0] in ("START", "END"):
                out.append((parts[0], parts[1], parts[2], int(parts[3]), float(parts[4])))
        return out

    def _watch(self):
        while not self.stop.is_set():
            ends = {(e[2], e[3]) for e in self.entries() if e[0] == "END"}
            for kind, _, node, pid, _ in self.entries():
                if kind == "START" and (node, pid) not in ends and pid not in self.deaths and not alive(pid):
                    with self.lock:
                        self.deaths[pid] = time.time()
            self.stop.wait(0.02)

    def copies(self):
        """Every copy: text, node, pid, start, end (END line), death (observed)."""
        ents = self.entries()
        ends = {(e[1], e[2], e[3]): e[4] for e in ents if e[0] == "END"}
        with self.lock:
            deaths = dict(self.deaths)
        return [
            {"text": t, "node": n, "pid": p, "start": s, "end": ends.get((t, n, p)), "death": deaths.get(p)}
            for k, t, n, p, s in ents if k == "START"
        ]

    def starts(self, text=None, node=None):
        return [c for c in self.copies() if (text is None or c["text"] == text) and (node is None or c["node"] == node)]

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        # Step processes orphaned by a killed worker or daemon are ours too.
        for c in self.copies():
            if c["end"] is None and alive(c["pid"]):
                try:
                    os.kill(c["pid"], signal.SIGKILL)
                except OSError:
                    pass


class Proc:
    def __init__(self, popen, name, log_path):
        self.p, self.name, self.log_path = popen, name, log_path

    @property
    def pid(self):
        return self.p.pid

    def kill9(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        self.p.wait()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


class World:
    """One round's world: a temp folder, the step, the controller's state,
    the processes and kernel objects to remove at the end."""

    def __init__(self, name, step_s=2.0, local_step_s=None):
        self.bins = binaries()
        self.dir = tempfile.mkdtemp(prefix=f"rv-faults-{name}-")
        self.step_s = step_s
        self.local_step_s = step_s if local_step_s is None else local_step_s
        self.procs = []
        self.cleanups = []
        self.ledger_path = os.path.join(self.dir, "ledger")
        open(self.ledger_path, "w").close()
        self.step_sh = os.path.join(self.dir, "step.sh")
        with open(self.step_sh, "w") as f:
            f.write(STEP_SH)
        self.wav = os.path.join(self.dir, "tone.wav")
        with wave.open(self.wav, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(22050)
            w.writeframes(b"".join(int(8000 * math.sin(i * 0.125)).to_bytes(2, "little", signed=True) for i in range(4410)))
        self.ctl_state = os.path.join(self.dir, "ctl")
        os.makedirs(os.path.join(self.ctl_state, "cluster"))
        self.api_port = free_port()
        self.ledger = Ledger(self.ledger_path)
        self.json_flag = submit_has_json_flag(self.bins[1])

    # ---- environment -----------------------------------------------------
    def base_env(self, node, step_s):
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": self.dir,
            "RUST_LOG": "info",
            "RAYVAULT_CLUSTER_SECRET": SECRET,
            "RAYVAULT_TTS__ENGINE": "command",
            "RAYVAULT_TTS__COMMAND_TEMPLATE": f"sh {self.step_sh} {{text_file}} {{out_wav}}",
            "FAULT_NODE": node,
            "FAULT_LEDGER": self.ledger_path,
            "FAULT_WAV": self.wav,
            "FAULT_STEP_S": str(step_s),
        }

    def ctl_env(self, extra=None):
        env = self.base_env("local", self.local_step_s)
        env.update({
            "RAYVAULT_STATE_DIR": self.ctl_state,
            "RAYVAULT_CONTROLLER__API_PORT": str(self.api_port),
            "RAYVAULT_CONTROLLER__RETRY_BACKOFF_MS": "100",
        })
        env.update(extra or {})
        return env

    # ---- processes -------------------------------------------------------
    def spawn(self, name, argv, env):
        log_path = os.path.join(self.dir, f"{name}.log")
        with open(log_path, "ab") as lf:
            p = subprocess.Popen(argv, env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        proc = Proc(p, name, log_path)
        self.procs.append(proc)
        return proc

    def worker(self, wid, host="127.0.0.1", port=None, netns=None, state=None, env=None):
        """Starts a worker and waits for its /health; returns (proc, port)."""
        port = port or free_port()
        state = state or os.path.join(self.dir, f"w-{wid}")
        os.makedirs(state, exist_ok=True)
        e = self.base_env(wid, self.step_s)
        e.update({"RAYVAULT_WORKER_ID": wid, "RAYVAULT_WORKER_PORT": str(port), "RAYVAULT_WORKER_HOST": host, "RAYVAULT_STATE_DIR": state})
        e.update(env or {})
        argv = [self.bins[0], "--host", host, "--port", str(port)]
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        proc = self.spawn(wid, argv, e)
        proc.port, proc.host, proc.state, proc.wid = port, host, state, wid

        def healthy():
            if proc.p.poll() is not None:
                raise RuntimeError(f"worker {wid} exited: {proc.log()[-2000:]}")
            try:
                return http_get(host, port, "/health", timeout_s=1)[0] == 200
            except OSError:
                return False
        wait_until(f"worker {wid} /health", 30, healthy)
        return proc

    def write_nodes(self, workers):
        nodes = [{"node_id": w.wid, "host": w.host, "port": w.port, "enabled": True} for w in workers]
        path = os.path.join(self.ctl_state, "cluster", "nodes.json")
        with open(path + ".tmp", "w") as f:
            json.dump({"nodes": nodes}, f)
        os.replace(path + ".tmp", path)

    def daemon(self, extra_env=None):
        d = self.spawn("daemon", [self.bins[1], "daemon"], self.ctl_env(extra_env))

        def listening():
            if d.p.poll() is not None:
                raise RuntimeError(f"daemon exited: {d.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.api_port), timeout=1):
                    return True
            except OSError:
                return False
        wait_until("the daemon API", 30, listening)
        return d

    def submit(self, run, job, text, extra=(), env=None):
        """Starts `submit` (in-process, or through a running daemon)."""
        payload = json.dumps({"chunks": [{"id": 1, "text": text}]})
        argv = [self.bins[1], "submit", "--run-id", run, "--job-id", job, "--step-name", STEP, "--payload-json", payload]
        if self.json_flag:
            argv.append("--json")
        return self.spawn(f"submit-{run}-{job}", argv + list(extra), self.ctl_env(env))

    def receipt(self, run, job):
        path = os.path.join(self.ctl_state, "cluster", "receipts", run, job, "job_receipt.json")
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    # ---- kernel objects ----------------------------------------------------
    def sh(self, *argv, check=True):
        r = subprocess.run(list(argv), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
        return r

    def netns(self, tag, subnet):
        """A namespace `rvf<tag>` joined to this one by a veth pair:
        100.64.<subnet>.1 here, 100.64.<subnet>.2 inside. Returns
        (namespace, host veth, inner veth, inner address)."""
        ns, host_if, inner_if = f"rvf{tag}", f"rvfh{tag}", f"rvfw{tag}"
        self.sh("ip", "netns", "add", ns)
        self.cleanups.append(lambda: self.sh("ip", "netns", "del", ns, check=False))
        self.sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", inner_if)
        self.cleanups.append(lambda: self.sh("ip", "link", "del", host_if, check=False))
        self.sh("ip", "link", "set", inner_if, "netns", ns)
        self.sh("ip", "addr", "add", f"100.64.{subnet}.1/24", "dev", host_if)
        self.sh("ip", "link", "set", host_if, "up")
        self.sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"100.64.{subnet}.2/24", "dev", inner_if)
        self.sh("ip", "netns", "exec", ns, "ip", "link", "set", inner_if, "up")
        self.sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        return ns, host_if, inner_if, f"100.64.{subnet}.2"

    def tmpfs(self, path, size):
        os.makedirs(path, exist_ok=True)
        self.sh("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path)
        self.cleanups.append(lambda: self.sh("umount", "-l", path, check=False))

    def close(self):
        for p in reversed(self.procs):
            try:
                p.kill9()
            except OSError:
                pass
        self.ledger.close()
        for c in reversed(self.cleanups):
            try:
                c()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log(f"cleanup: {e}")
        self.cleanups.clear()
        if os.environ.get("FAULTS_KEEP") == "1":
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def fill(path):
    """Fills the file system holding `path` to the last byte (in `filler`)."""
    fd = os.open(os.path.join(path, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


_JSON_FLAG = {}


def submit_has_json_flag(orch):
    """`submit --json` exists once the CLI change is merged; before that
    `submit` always prints the receipt and the flag must not be passed."""
    if orch not in _JSON_FLAG:
        r = subprocess.run([orch, "submit", "--help"], capture_output=True, text=True)
        _JSON_FLAG[orch] = "--json" in r.stdout
    return _JSON_FLAG[orch]
