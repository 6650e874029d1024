"""The HTTP sink's server: idle connections cost a socket, not a thread; requests have deadlines.

Why not ``ThreadingHTTPServer``: it starts one thread per accepted connection, with no cap and no
timeout. Two hundred idle or slowloris connections (``GET / HTTP/1.1``, then nothing) held ~400
threads open indefinitely, and under the unit's ``TasksMax=64`` the camera could no longer start
its reader thread: anyone who could reach the port stopped the service. Here, as in nginx:

- one selector thread accepts connections and reads their request line and headers without
  blocking; a connection waiting for its headers holds a socket only. At most ``MAX_PENDING``
  such sockets are open, and each must deliver its headers within ``HEADER_TIMEOUT`` seconds in
  all, or it is closed (a trickle of one byte a second does not keep it open);
- a complete request goes to a fixed pool of ``workers`` threads, which answer it and close the
  connection (no keep-alive: an idle client never holds a worker). When every worker is busy the
  request is answered ``503`` at once by the selector, never queued;
- the ``Host`` header must name this server (:func:`host_allowed`, against DNS rebinding).
"""

from __future__ import annotations

import io
import ipaddress
import logging
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 5.0  # seconds for a request line and its headers, in all
MAX_PENDING = 256  # connections still sending their headers (sockets, not threads)
MAX_HEADER_BYTES = 16384


def _reply(code: str, body: str) -> bytes:
    data = body.encode()
    return (f"HTTP/1.1 {code}\r\nContent-Type: application/json\r\nRetry-After: 5\r\nConnection: close\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


BUSY = _reply("503 Service Unavailable", '{"error": "busy: too many requests at once"}\n')
TOO_LARGE = _reply("431 Request Header Fields Too Large", '{"error": "request headers too large"}\n')


class _Prefixed(io.RawIOBase):
    """A socket's reader that first returns the bytes the selector already read."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix, self._sock = prefix, sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._prefix:
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        return self._sock.recv_into(b)


class _Pending:
    __slots__ = ("addr", "buf", "deadline", "sock")

    def __init__(self, sock: socket.socket, addr: Any) -> None:
        self.sock, self.addr, self.buf = sock, addr, b""
        self.deadline = time.monotonic() + HEADER_TIMEOUT


class BoundedHTTPServer:
    """Serves ``handler`` (a ``BaseHTTPRequestHandler`` class) on ``address`` with ``workers``
    threads; :meth:`serve_forever` runs the selector loop until :meth:`shutdown`."""

    def __init__(self, address: tuple[str, int], handler: Any, workers: int) -> None:
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind(address)
            self.socket.listen(128)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self.handler, self.workers = handler, workers
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="http-worker")
        self._busy = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._pending: dict[socket.socket, _Pending] = {}
        self.refused = 0
        self.timed_out = 0
        # head bytes -> a whole response the selector sends itself, or None: answers that need no
        # worker (/healthz, a live stream over its cap) stay instant when every worker is busy
        self.fast: Any = None

    # ---- the selector loop -------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.25) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.socket, selectors.EVENT_READ)
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=poll_interval):
                    if key.fileobj is self.socket:
                        self._accept(sel)
                    else:
                        self._read(sel, self._pending.get(key.fileobj))  # type: ignore[arg-type]
                self._expire(sel)
        finally:
            for p in list(self._pending.values()):
                self._drop(sel, p)
            sel.close()
            self._done.set()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        for _ in range(64):  # drain the backlog, a bounded amount per wake-up
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors: leave the rest in the backlog
                return
            if len(self._pending) >= MAX_PENDING:
                self.refused += 1
                sock.close()
                continue
            sock.setblocking(False)
            p = _Pending(sock, addr)
            self._pending[sock] = p
            sel.register(sock, selectors.EVENT_READ)

    def _read(self, sel: selectors.BaseSelector, p: _Pending | None) -> None:
        if p is None:
            return
        try:
            chunk = p.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(sel, p)
            return
        p.buf += chunk
        if b"\r\n\r\n" in p.buf or b"\n\n" in p.buf:
            reply = self.fast(p.buf) if self.fast is not None else None
            if reply is not None:
                self._answer(sel, p, reply)
            else:
                self._dispatch(sel, p)
        elif len(p.buf) > MAX_HEADER_BYTES:
            self._answer(sel, p, TOO_LARGE)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for p in [p for p in self._pending.values() if p.deadline <= now]:
            self.timed_out += 1
            self._drop(sel, p)

    def _drop(self, sel: selectors.BaseSelector, p: _Pending) -> None:
        self._pending.pop(p.sock, None)
        try:
            sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _answer(self, sel: selectors.BaseSelector, p: _Pending, data: bytes) -> None:
        try:
            p.sock.send(data)  # small; a full send buffer only loses the courtesy reply
        except OSError:
            pass
        self._drop(sel, p)

    def _dispatch(self, sel: selectors.BaseSelector, p: _Pending) -> None:
        with self._lock:
            free = self._busy < self.workers
            if free:
                self._busy += 1
        if not free:
            self.refused += 1
            self._answer(sel, p, BUSY)
            return
        self._pending.pop(p.sock, None)
        sel.unregister(p.sock)
        p.sock.setblocking(True)
        try:
            self._pool.submit(self._work, p)
        except RuntimeError:  # shutting down, or no thread could be started
            with self._lock:
                self._busy -= 1
            p.sock.close()

    # ---- workers -----------------------------------------------------------------------------
    def _work(self, p: _Pending) -> None:
        try:
            p.sock.settimeout(HEADER_TIMEOUT)
            self.handler(p.sock, p.addr, self, prefix=p.buf)
        except Exception:
            log.exception("HTTP handler failed")
        finally:
            try:
                p.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            p.sock.close()
            with self._lock:
                self._busy -= 1

    def busy_workers(self) -> int:
        with self._lock:
            return self._busy

    def pending_connections(self) -> int:
        return len(self._pending)

    def shutdown(self) -> None:
        self._stop.set()
        self._done.wait(timeout=5)

    def server_close(self) -> None:
        self.socket.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def prefixed_reader(prefix: bytes, sock: socket.socket) -> io.BufferedReader:
    """The handler's ``rfile``: the buffered headers, then the socket."""
    return io.BufferedReader(_Prefixed(prefix, sock))


def loopback(bind: str) -> bool:
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return bind == "localhost"


def host_allowed(host_header: str | None, bind: str, allowed: list[str]) -> bool:
    """Whether a request's ``Host`` names this server.

    Bound to loopback: only loopback names and addresses (and the configured names). Bound
    elsewhere: IP literals (rebinding needs a domain name), ``localhost``, this machine's own
    names, and the configured names. A missing Host (HTTP/1.0 tools) is allowed: a browser
    always sends one.
    """
    if host_header is None:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    names = {a.lower() for a in allowed}
    if host in names or host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if loopback(bind):
        return ip is not None and ip.is_loopback
    if ip is not None:
        return True
    own = socket.gethostname().lower()
    return host in (own, f"{own}.local", own.split(".")[0])
