"""The peers a studio would otherwise run, started on loopback only by the
harness and stopped by PID: Debian's nginx (static files and the HTTP floor),
Debian's redis-server and a Celery 5 worker (from the virtual environment
that scripts/bench.sh creates).
"""

import os
import shutil
import tempfile

from lib import OUT_DIR, Proc, free_port, log, port_open, wait_until

NGINX_CONF = """\
# Written by bench/peers.py; loopback only, no logs on the hot path.
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location = /ping {{ return 200 "ok"; }}
    }}
}}
"""


class Nginx:
    """Debian's nginx serving `root` on a free loopback port."""

    def __init__(self, root):
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(exe):
            raise RuntimeError("nginx is not installed; scripts/bench.sh installs it with apt-get")
        self.port = free_port()
        self.prefix = tempfile.mkdtemp(prefix="nginx-", dir=OUT_DIR)
        conf = os.path.join(self.prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(prefix=self.prefix, port=self.port, root=os.path.abspath(root)))
        self.proc = Proc("nginx", [exe, "-p", self.prefix, "-c", conf])
        wait_until("nginx to listen", 10, lambda: port_open(self.port))
        self.url = f"http://127.0.0.1:{self.port}"
        log(f"nginx pid {self.proc.pid} on {self.url}")

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


class Redis:
    """Debian's redis-server on a free loopback port: without persistence
    (Celery's usual setup), or with `durable` an append-only file fsynced on
    every write, the durability our stores give."""

    def __init__(self, durable=False):
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(exe):
            raise RuntimeError("redis-server is not installed; scripts/bench.sh installs it with apt-get")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="redis-", dir=OUT_DIR)
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
        self.proc = Proc("redis", [
            exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            *persistence, "--dir", self.dir, "--protected-mode", "yes",
        ])
        wait_until("redis to listen", 10, lambda: port_open(self.port))
        self.url = f"redis://127.0.0.1:{self.port}/0"
        log(f"redis pid {self.proc.pid} on {self.url}")

    def stop(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def venv_python():
    py = os.path.join(OUT_DIR, "venv", "bin", "python")
    if not os.path.exists(py):
        raise RuntimeError("the Celery virtual environment is missing; run scripts/bench.sh, which creates it")
    return py


class CeleryWorker:
    """A Celery 5 worker (prefork, one process per core) on the Redis broker."""

    def __init__(self, redis, concurrency):
        here = os.path.dirname(os.path.abspath(__file__))
        env = {"BENCH_REDIS_URL": redis.url, "PYTHONPATH": here}
        self.proc = Proc("celery-worker", [
            venv_python(), "-m", "celery", "-A", "celery_tasks", "worker",
            "--loglevel", "WARNING", "--pool", "prefork", "--concurrency", str(concurrency),
            "--without-gossip", "--without-mingle", "--without-heartbeat", "--prefetch-multiplier", "16",
        ], env=env, cwd=here)
        log(f"celery worker pid {self.proc.pid} (prefork x{concurrency})")

    def stop(self):
        self.proc.stop(grace_s=10)
