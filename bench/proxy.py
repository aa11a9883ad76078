"""A userspace TCP proxy on loopback that can go silent: once `blackhole()`
is called it keeps every connection open, accepts new ones, and forwards
nothing in either direction (bytes are read and dropped), like a worker
whose network vanished without closing anything. `tc netem` is not
available here, hence a proxy in the harness.
"""

import select
import socket
import threading

from lib import free_port


class SilentProxy:
    def __init__(self, target_port):
        self.target_port = target_port
        self.port = free_port()
        self.silent = threading.Event()
        self.stopping = threading.Event()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(128)
        self.listener.settimeout(0.2)
        self.socks = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name="silent-proxy", daemon=True)
        self.thread.start()

    def blackhole(self):
        self.silent.set()

    def _track(self, s):
        with self.lock:
            self.socks.append(s)

    def _accept(self):
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self._track(client)
            upstream = None
            if not self.silent.is_set():
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                    self._track(upstream)
                except OSError:
                    client.close()
                    continue
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()

    def _pump(self, client, upstream):
        peers = {client: upstream, upstream: client} if upstream else {client: None}
        while not self.stopping.is_set():
            try:
                ready, _, _ = select.select(list(peers), [], [], 0.2)
            except (OSError, ValueError):
                return
            for s in ready:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    if self.silent.is_set():
                        # Silence means no FIN is passed on either: the other
                        # side keeps waiting.
                        peers.pop(s, None)
                        if not peers:
                            return
                        continue
                    for p in (client, upstream):
                        if p:
                            try:
                                p.close()
                            except OSError:
                                pass
                    return
                if self.silent.is_set():
                    continue  # dropped
                dst = peers.get(s)
                if dst is not None:
                    try:
                        dst.sendall(data)
                    except OSError:
                        return

    def stop(self):
        self.stopping.set()
        try:
            self.listener.close()
        except OSError:
            pass
        self.thread.join(timeout=2)
        with self.lock:
            for s in self.socks:
                try:
                    s.close()
                except OSError:
                    pass
