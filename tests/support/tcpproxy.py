"""A local TCP proxy whose connections a test can cut mid-stream, to simulate a network failure.

``TcpProxy(upstream_host, upstream_port)`` listens on 127.0.0.1:<free port> and
forwards every accepted connection to the upstream. ``sever()`` resets every open
connection (RST, so the client sees a connection reset, not a clean close) and
makes new connections fail the same way until ``restore()``.
``sever_after(n)`` arms an automatic cut once ``n`` more bytes have gone from
clients to the upstream, so a test can cut an upload in the middle of its data.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType

from tests.support.azurite import free_port

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.close()


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.host = host
        self.port = free_port()
        self._lock = threading.Lock()
        self._down = False
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._budget: int | None = None  # bytes client->upstream left before an automatic sever
        self.bytes_up = 0
        self.bytes_down = 0
        self.cuts = 0
        self._listener = socket.create_server((host, self.port), reuse_port=False)
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="tcpproxy-accept", daemon=True)
        self._thread.start()

    # -- control

    def sever(self) -> None:
        """Reset every open connection; refuse (reset) new ones until restore()."""
        with self._lock:
            self._down = True
            self._budget = None
            pairs = list(self._pairs)
            self._pairs.clear()
            self.cuts += 1
        for a, b in pairs:
            _reset(a)
            _reset(b)

    def restore(self) -> None:
        with self._lock:
            self._down = False
            self._budget = None

    def sever_after(self, nbytes: int) -> None:
        """Sever automatically once ``nbytes`` more bytes have been forwarded from clients upstream."""
        with self._lock:
            self._budget = nbytes

    @property
    def is_down(self) -> bool:
        return self._down

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self._listener.close()
        self.sever()
        self._thread.join(5)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._down:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), name="tcpproxy-pump", daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        sel = selectors.DefaultSelector()
        graceful = False
        try:
            sel.register(client, selectors.EVENT_READ, upstream)
            sel.register(upstream, selectors.EVENT_READ, client)
            while True:
                for key, _ in sel.select(timeout=1.0):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(256 * 1024)
                    if not data:
                        graceful = True
                        return
                    if src is client and not self._account_up(len(data)):
                        self.sever()
                        return
                    dst.sendall(data)
                    if src is upstream:
                        self.bytes_down += len(data)
                with self._lock:
                    if pair not in self._pairs:
                        return
        except (OSError, ValueError):
            return
        finally:
            sel.close()
            with self._lock:
                self._pairs.discard(pair)
            for sock in (client, upstream):
                if graceful:
                    with contextlib.suppress(OSError):
                        sock.close()
                else:
                    _reset(sock)

    def _account_up(self, n: int) -> bool:
        """Count ``n`` bytes going upstream; False if the sever budget is exhausted."""
        with self._lock:
            self.bytes_up += n
            if self._budget is None:
                return True
            self._budget -= n
            return self._budget > 0
