"""A client for rayvault-worker written from docs/protocol.md alone.

It imports nothing from the project: keys, the string to sign, the
Authorization header and inputs_hash follow the document's words, so a run
against the real worker proves the document is enough to write a client.
tests/worker_doc_client.rs starts the worker and runs this script with:

  WORKER_URL    http://127.0.0.1:<port>
  WORKER_SECRET the shared secret (environment only, never argv)
  VIDEO_PATH    a small video file to stage as a blob

It prints one "ok <check>" line per check and exits non-zero on the first
failure.
"""

import hashlib
import hmac
import http.client
import json
import os
import random
import struct
import sys
import time
import urllib.parse

URL = urllib.parse.urlparse(os.environ["WORKER_URL"])
SECRET = os.environ["WORKER_SECRET"].encode("utf-8")
VIDEO = os.environ["VIDEO_PATH"]

# Section 1.1: the request key and the key id.
REQUEST_KEY = hmac.new(SECRET, b"rayvault-request-v1", hashlib.sha256).digest()
KID = hashlib.sha256(hmac.new(SECRET, b"rayvault-kid-v1", hashlib.sha256).digest()).hexdigest()[:16]


def check(cond, what):
    if not cond:
        print("FAILED " + what, flush=True)
        sys.exit(1)
    print("ok " + what, flush=True)


def authorization(method, path, query, body_sha256, worker_id, ts=None, nonce=None):
    """Section 1.2: eight lines joined with LF, signed with the request key."""
    ts = str(int(time.time()) if ts is None else ts)
    nonce = nonce or os.urandom(16).hex()
    sts = "\n".join(["RAYVAULT-HMAC-SHA256", method, path, query, ts, nonce, worker_id, body_sha256])
    sig = hmac.new(REQUEST_KEY, sts.encode("utf-8"), hashlib.sha256).hexdigest()
    return "RAYVAULT-HMAC-SHA256 kid=%s, ts=%s, nonce=%s, sig=%s" % (KID, ts, nonce, sig)


def send(method, target, body=b"", headers=None, auth=None):
    """Sends `target` (path plus optional ?query) exactly as signed."""
    conn = http.client.HTTPConnection(URL.hostname, URL.port, timeout=90)
    conn.putrequest(method, target, skip_accept_encoding=True)
    for k, v in (headers or {}).items():
        conn.putheader(k, v)
    if auth:
        conn.putheader("Authorization", auth)
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    if body:
        conn.send(body)
    res = conn.getresponse()
    data = res.read()
    conn.close()
    return res.status, {k.lower(): v for k, v in res.getheaders()}, data


def signed(method, target, body=b"", headers=None, body_sha256=None, **kw):
    path, _, query = target.partition("?")
    digest = body_sha256 or hashlib.sha256(body).hexdigest()
    return send(method, target, body, headers, authorization(method, path, query, digest, WORKER_ID, **kw))


def jcs_string(s):
    """Section 3, POST /jobs (JCS strings): only `"`, `\\` and controls escaped."""
    short = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for c in s:
        if c in short:
            out.append(short[c])
        elif ord(c) < 0x20:
            out.append("\\u%04x" % ord(c))
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def jcs_number(x):
    """Section 3, POST /jobs (JCS numbers): the double, as ECMAScript writes it."""
    f = float(x)  # an int beyond 2^53 becomes the nearest double, as the document says
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    if f == 0:
        return "0"
    sign = "-" if f < 0 else ""
    mantissa, _, exp = repr(abs(f)).partition("e")  # shortest round-trip digits
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    power = (int(exp) if exp else 0) - len(frac)  # value = int(digits) * 10**power
    stripped = digits.rstrip("0")
    power += len(digits) - len(stripped)
    digits, k = stripped, len(stripped)
    n = k + power  # 10**(n-1) <= value < 10**n
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        text = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + text


def canonical(value):
    """Section 3, POST /jobs: RFC 8785 (JCS). Keys sorted by UTF-16 code units."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return jcs_string(value)
    if isinstance(value, (int, float)):
        return jcs_number(value)
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
    return "{" + ",".join(jcs_string(k) + ":" + canonical(value[k]) for k in keys) + "}"


def inputs_hash(step_name, payload):
    doc = {"payload": payload, "step_name": step_name}
    return hashlib.sha256(canonical(doc).encode("utf-8")).hexdigest()


# GET /health: no authentication; tells the worker id that is signed.
status, _, body = send("GET", "/health")
health = json.loads(body)
check(status == 200 and health["contract"] == "rayvault-worker/1", "health names the contract")
WORKER_ID = health["worker_id"]

status, _, body = signed("GET", "/caps")
check(status == 200 and "FFMPEG_PROBE" in json.loads(body)["steps"], "signed GET /caps")

# The same header again is a replay.
auth = authorization("GET", "/caps", "", hashlib.sha256(b"").hexdigest(), WORKER_ID)
first = send("GET", "/caps", auth=auth)[0]
status, _, body = send("GET", "/caps", auth=auth)
check(first == 200 and status == 401 and json.loads(body)["code"] == "AUTH_INVALID", "a replayed nonce is refused")

# A timestamp 301 s off: AUTH_SKEW with the server's time.
status, _, body = signed("GET", "/caps", ts=int(time.time()) - 301)
err = json.loads(body)
check(status == 401 and err["code"] == "AUTH_SKEW" and abs(err["server_time"] - time.time()) < 60, "skew is reported with server_time")

# PUT /blobs/{sha256}: signed with the path's digest as the body hash.
with open(VIDEO, "rb") as f:
    video = f.read()
digest = hashlib.sha256(video).hexdigest()
status, _, body = signed("PUT", "/blobs/" + digest, video, body_sha256=digest)
check(status == 201 and json.loads(body) == {"sha256": digest, "size": len(video), "created": True}, "blob stored")
status, _, body = signed("PUT", "/blobs/" + digest, video, body_sha256=digest)
check(status == 200 and json.loads(body)["created"] is False, "blob stored once")

# POST /jobs with our own inputs_hash.
payload = {"media_path": "blob:sha256:" + digest}
job = {"step_name": "FFMPEG_PROBE", "payload": payload, "inputs_hash": inputs_hash("FFMPEG_PROBE", payload), "label": "doc-client"}
raw = json.dumps(job, indent=1).encode("utf-8")  # any formatting: the worker hashes the payload, not the text
status, _, body = signed("POST", "/jobs", raw, {"Content-Type": "application/json"})
sub = json.loads(body)
check(status == 201 and sub["cached"] is False and sub["job"]["inputs_hash"] == job["inputs_hash"], "job created, inputs_hash agrees")
job_id = sub["job"]["job_id"]
status, _, body = signed("POST", "/jobs", raw, {"Content-Type": "application/json"})
check(status == 200 and json.loads(body)["cached"] is True and json.loads(body)["job"]["job_id"] == job_id, "resubmission is cached")
bad = dict(job, inputs_hash="0" * 64)
status, _, body = signed("POST", "/jobs", json.dumps(bad).encode(), {"Content-Type": "application/json"})
check(status == 422 and json.loads(body)["code"] == "INPUTS_HASH_MISMATCH", "a wrong inputs_hash is 422")

# inputs_hash over non-ASCII text, `/`, quotes, control characters and nesting.
text = {"task": "caf\u00e9 / \u00fcber \U0001F600 \"quoted\" \\ back\tslash\n", "options": {"z": [1, 2.5, None, True], "a": {}}}
oc = {"step_name": "OPENCLAW_TASK", "payload": text, "inputs_hash": inputs_hash("OPENCLAW_TASK", text)}
status, _, body = signed("POST", "/jobs", json.dumps(oc).encode("utf-8"), {"Content-Type": "application/json"})
check(status == 201 and json.loads(body)["job"]["inputs_hash"] == oc["inputs_hash"], "inputs_hash of non-ASCII, escaped and nested JSON agrees")

# The document's test vectors, first offline, then against the worker: the
# payload text is sent as written (the worker parses and hashes it), with our
# own inputs_hash.
VECTORS = [
    ('{"task": "small", "x": 1e-7}',
     '{"payload":{"task":"small","x":1e-7},"step_name":"OPENCLAW_TASK"}',
     "ba816bbf42444f011530f78cab25f863215fc8c68b8395c6552f36eea6674416"),
    ('{"task": "large", "x": 1e21}',
     '{"payload":{"task":"large","x":1e+21},"step_name":"OPENCLAW_TASK"}',
     "4c5076ebb5156ceda596edcb45e81efcae3f03d94f0a8864e2118a956695621a"),
    ('{"task": "above 2^53", "x": 9007199254740993}',
     '{"payload":{"task":"above 2^53","x":9007199254740992},"step_name":"OPENCLAW_TASK"}',
     "67164dd2e025d1aa5bb4435202052000b7382308831d15646a05522c3aa2d997"),
    ('{"task": "mixed", "n": [100.0, -0.0, 0.1, 1e23, 5e-324, 18446744073709551616, -1.5E-10], "\\ue000": 1, "\\ud83d\\ude00": 2, "s": "tab\\t nul\\u0000 del\\u007f \\u00e9 /"}',
     '{"payload":{"n":[100,0,0.1,1e+23,5e-324,18446744073709552000,-1.5e-10],"s":"tab\\t nul\\u0000 del\x7f \u00e9 /","task":"mixed","\U0001F600":2,"\ue000":1},"step_name":"OPENCLAW_TASK"}',
     "a93564f1d5848ee20ddabe038211f9b08daa7f6a3a49b719b88f29789c060917"),
]
for text, expected_canonical, expected_hash in VECTORS:
    payload = json.loads(text)
    got = canonical({"payload": payload, "step_name": "OPENCLAW_TASK"})
    check(got == expected_canonical and inputs_hash("OPENCLAW_TASK", payload) == expected_hash, "test vector offline: %s" % text)
    body = ('{"step_name": "OPENCLAW_TASK", "inputs_hash": "%s", "payload": %s}' % (expected_hash, text)).encode("utf-8")
    status, _, answer = signed("POST", "/jobs", body, {"Content-Type": "application/json"})
    check(status in (200, 201) and json.loads(answer)["job"]["inputs_hash"] == expected_hash, "test vector accepted by the worker: %s (%d)" % (text, status))

# Random doubles over the whole range (every bit pattern but NaN and the
# infinities), written by Python's json as text the worker parses itself.
rng = random.Random(8785)
doubles = []
while len(doubles) < 2000:
    f = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
    if f == f and abs(f) != float("inf"):
        doubles.append(f)
payload = {"task": "random doubles", "values": doubles, "ints": [rng.getrandbits(80) for _ in range(50)]}
job = {"step_name": "OPENCLAW_TASK", "payload": payload, "inputs_hash": inputs_hash("OPENCLAW_TASK", payload)}
status, _, answer = signed("POST", "/jobs", json.dumps(job).encode("utf-8"), {"Content-Type": "application/json"})
check(status == 201 and json.loads(answer)["job"]["inputs_hash"] == job["inputs_hash"], "inputs_hash of 2000 random doubles and 50 large integers agrees")

# A key given twice, inside the payload or at the top level.
for body in [b'{"step_name": "OPENCLAW_TASK", "payload": {"task": "a", "task": "b"}}',
             b'{"step_name": "OPENCLAW_TASK", "payload": {"o": [{"k": 1, "k": 1}]}}',
             b'{"step_name": "OPENCLAW_TASK", "step_name": "OPENCLAW_TASK", "payload": {}}']:
    status, _, answer = signed("POST", "/jobs", body, {"Content-Type": "application/json"})
    check(status == 400 and json.loads(answer)["code"] == "DUPLICATE_KEY", "a duplicate key is refused: %s" % body)

# Long-poll until final.
deadline = time.time() + 60
while True:
    status, _, body = signed("GET", "/jobs/%s?wait_s=10" % job_id)
    view = json.loads(body)
    if view["state"] in ("succeeded", "failed", "cancelled") or time.time() > deadline:
        break
check(status == 200 and view["state"] == "succeeded", "job succeeded: %s" % view.get("error"))

# The log, by offset.
status, _, body = signed("GET", "/jobs/%s/log?offset=0" % job_id)
log = json.loads(body)
check(status == 200 and log["complete"] and job_id in log["data"], "log read")

# The manifest, then the artifact in two ranges, checked against its digest.
status, _, body = signed("GET", "/jobs/%s/artifacts" % job_id)
entry = next(a for a in json.loads(body)["artifacts"] if a["name"] == "ffprobe.json")
target = "/jobs/%s/artifacts/%s" % (job_id, entry["name"])
status, headers, head = signed("GET", target, headers={"Range": "bytes=0-9"})
check(status == 206 and headers["content-range"] == "bytes 0-9/%d" % entry["size"], "first range")
status, headers, tail = signed("GET", target, headers={"Range": "bytes=10-"})
check(status == 206 and hashlib.sha256(head + tail).hexdigest() == entry["sha256"] == headers["x-content-sha256"], "resumed download matches the manifest")
check(json.loads(head + tail)["format"]["duration"] is not None, "the artifact is the probe of our video")

# Unknown endpoint: 401 unsigned, 404 signed.
check(send("GET", "/nope")[0] == 401 and signed("GET", "/nope")[0] == 404, "authentication before routing")
print("all checks passed")
