"""A small signed client (Python stdlib) for the daemon's loopback API and
the worker API, used by the failover and footprint scenarios to watch jobs.

It follows the HMAC scheme of src/auth.rs and src/protocol.rs: the request
key is HMAC(secret, "rayvault-request-v1"), the key id the hex of the first
8 bytes of SHA-256(HMAC(secret, "rayvault-kid-v1")), and the signature an
HMAC with the request key over eight lines: scheme, method, raw path, raw
query, ts, nonce, target id, SHA-256 of the body.
"""

import hashlib
import hmac
import http.client
import json
import secrets
import time

SCHEME = "RAYVAULT-HMAC-SHA256"


class SignedClient:
    """Keep-alive HTTP/1.1 client signing each request for `target_id`."""

    def __init__(self, port, secret, target_id, timeout_s=30):
        self.port = port
        self.target_id = target_id
        self.request_key = hmac.new(secret.encode(), b"rayvault-request-v1", hashlib.sha256).digest()
        kid_mac = hmac.new(secret.encode(), b"rayvault-kid-v1", hashlib.sha256).digest()
        self.kid = hashlib.sha256(kid_mac).hexdigest()[:16]
        self.timeout_s = timeout_s
        self.conn = None

    def authorization(self, method, path, query, body):
        ts = str(int(time.time()))
        nonce = secrets.token_hex(16)
        sts = "\n".join([SCHEME, method, path, query, ts, nonce, self.target_id,
                         hashlib.sha256(body).hexdigest()])
        sig = hmac.new(self.request_key, sts.encode(), hashlib.sha256).hexdigest()
        return f"{SCHEME} kid={self.kid}, ts={ts}, nonce={nonce}, sig={sig}"

    def call(self, method, path, query="", body=None, timeout_s=None):
        """Returns (status, decoded JSON or None)."""
        raw = json.dumps(body).encode() if body is not None else b""
        headers = {"Authorization": self.authorization(method, path, query, raw),
                   "Content-Type": "application/json"}
        url = f"{path}?{query}" if query else path
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s or self.timeout_s)
            try:
                self.conn.request(method, url, body=raw, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                try:
                    return resp.status, json.loads(data) if data else None
                except ValueError:
                    return resp.status, None
            except (ConnectionError, http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise
                # A fresh signature: the nonce of the failed try may have been seen.
                headers["Authorization"] = self.authorization(method, path, query, raw)
        return None, None

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def parse_utc(stamp):
    """Seconds since the epoch from an RFC 3339 UTC stamp with milliseconds."""
    from datetime import datetime, timezone
    s = stamp.rstrip("Z")
    if "." in s:
        main, frac = s.split(".", 1)
    else:
        main, frac = s, "0"
    dt = datetime.strptime(main, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return dt.timestamp() + float("0." + frac)
