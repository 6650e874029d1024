"""A small HTTP server on a thread: the status page ``/``, ``/api``, ``/healthz``, ``/metrics``,
``/api/stats``, ``/api/timeline``, the live feed ``/api/events`` and, only when switched on,
``/snapshot/<camera>.jpg`` and ``/mjpeg/<camera>``.

The server (:mod:`feredge.edge.daemon.sinks.httpserver`) is the standard library's request handler on a
selector that reads headers without a thread and a fixed pool of workers: idle or slow clients
cannot exhaust the unit's task limit. It listens on 127.0.0.1 by default, answers only requests
whose ``Host`` names it (DNS rebinding); the configuration refuses any
other address without a token (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``). Only
``/healthz`` and the status page's static files (``edge/daemon/web/``: no data in them) answer without
the token: health reveals nothing but up/down, and health checkers rarely send headers. Clients
should send the token in the header: a URL ends up in logs and browser histories (the daemon's
own request log redacts it); the status page does, from its memory only. Frames are private:
without ``snapshots``/``mjpeg`` none is kept.

The live feed is Server-Sent Events: each client's own handler thread writes the stats
document a few times a second, never a camera thread; the number of clients is bounded, and
``close()`` ends every stream at once (their sockets are shut down) so the daemon still stops
in well under a second.
"""

from __future__ import annotations

import hmac
import logging
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from importlib import resources
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from feredge.edge import jsonsafe
from feredge.edge.daemon.config import HttpConfig
from feredge.edge.daemon.metrics import CONTENT_TYPE, DaemonMetrics
from feredge.edge.daemon.sinks import Sink
from feredge.edge.daemon.sinks.httpserver import HEADER_TIMEOUT, BoundedHTTPServer, host_allowed, prefixed_reader
from feredge.edge.errors import EdgeError
from feredge.edge.sources.spec import redact_text

log = logging.getLogger(__name__)

# The status page: URL path -> (file in edge/daemon/web/, content type). A fixed list, no file system walk.
WEB_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
# The page runs only its own script and talks only to this server; blob: for frames fetched with the token.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
                               "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
EVENTS_INTERVAL = 0.3  # seconds between stats documents to one live client (~3 a second)
TIMELINE_INTERVAL = 5.0  # the timeline changes once a minute at most; sent on connect and every 5 s
MAX_LIVE_CLIENTS = 8  # live streams (events + MJPEG) at once: each holds a worker thread and a socket
SEND_TIMEOUT = 10.0  # a live client that stops reading for this long is dropped
STATS_MAX_AGE = 0.2  # live clients share one stats document this fresh


class HttpSink(Sink):
    name = "http"

    def __init__(self, config: HttpConfig, *, metrics: DaemonMetrics, stats: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, dict[str, Any]]], token: str | None = None,
                 timeline: Callable[[], dict[str, Any]] | None = None) -> None:
        self.cfg = config
        self.metrics = metrics
        self.stats_fn = stats
        self.health_fn = health
        self.timeline_fn = timeline or (lambda: {"cameras": {}})
        self.token = token
        self.keeps_frames = config.snapshots or config.mjpeg
        self._frames: dict[str, tuple[int, np.ndarray]] = {}
        self._frames_cond = threading.Condition()
        self._server: BoundedHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._live: set[socket.socket] = set()
        self._live_cond = threading.Condition()
        self._stats_cache: tuple[float, dict[str, Any]] | None = None
        self._stats_lock = threading.Lock()
        self.web = load_web()
        self.port = config.port
        self.allowed_hosts = [h.strip() for h in config.allowed_hosts.split(",") if h.strip()]
        # live streams leave at least 4 workers to the API, /healthz and /metrics
        self.max_live = max(1, min(MAX_LIVE_CLIENTS, config.workers - 4))

    def start(self) -> None:
        sink = self

        class Handler(_Handler):
            owner = sink

        try:
            server = BoundedHTTPServer((self.cfg.bind, self.cfg.port), Handler, self.cfg.workers)
        except OSError as e:
            raise EdgeError(f"cannot listen on http {self.cfg.bind}:{self.cfg.port}: {e.strerror or e}") from None
        self._server = server
        server.fast = self._fast_reply

        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("HTTP: status page on http://%s:%d/ (/api /healthz /metrics /api/stats /api/events%s)",
                 self.cfg.bind, self.port, " /snapshot /mjpeg" if self.keeps_frames else "")

    def close(self) -> None:
        """Stop serving; end every live stream now (a blocked write too) and wait briefly for them."""
        self._stopping.set()
        with self._frames_cond:
            self._frames_cond.notify_all()
        with self._live_cond:
            for sock in self._live:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # the client left already
            self._live_cond.wait_for(lambda: not self._live, timeout=0.5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- live clients ----------------------------------------------------------------------
    def enter_live(self, sock: socket.socket) -> bool:
        """Count a live stream in; False when :data:`MAX_LIVE_CLIENTS` are already streaming."""
        with self._live_cond:
            if len(self._live) >= self.max_live or self._stopping.is_set():
                return False
            self._live.add(sock)
            return True

    def leave_live(self, sock: socket.socket) -> None:
        with self._live_cond:
            self._live.discard(sock)
            self._live_cond.notify_all()

    def _fast_reply(self, head: bytes) -> bytes | None:
        """Answers the selector gives without a worker: ``/healthz`` (up/down only, no token) and
        the 503 for a live stream over its cap. Anything unusual goes to a worker as before."""
        try:
            line, *rest = head.decode("latin-1").split("\r\n")
            method, target, _version = line.split(" ")
        except ValueError:
            return None
        path = urlsplit(target).path.rstrip("/") or "/"
        live = path == "/api/events" or (self.cfg.mjpeg and path.startswith("/mjpeg/"))
        if method not in ("GET", "HEAD") or not (path == "/healthz" or live):
            return None
        hosts = [h.split(":", 1)[1].strip() for h in rest if h.lower().startswith("host:")]
        if len(hosts) > 1 or not host_allowed(hosts[0] if hosts else None, self.cfg.bind, self.allowed_hosts):
            return None  # the worker answers 403 (or 400) with its usual headers
        if path == "/healthz":
            ok, _detail = self.health_fn()
            return _response(200 if ok else 503, jsonsafe.dumps({"status": "ok" if ok else "degraded"}) + "\n",
                             method == "HEAD")
        if self.live_clients() >= self.max_live and self._token_ok(target, rest):
            return _response(503, jsonsafe.dumps({"error": f"too many live clients (at most {self.max_live})"}) + "\n",
                             method == "HEAD", {"Retry-After": "5"})
        return None

    def _token_ok(self, target: str, header_lines: list[str]) -> bool:
        """The token check of :meth:`_Handler._authorized`, on raw request lines (401 stays first)."""
        if not self.token:
            return True
        auth = next((h.split(":", 1)[1].strip() for h in header_lines if h.lower().startswith("authorization:")), "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else parse_qs(urlsplit(target).query).get(
            "token", [""])[0]
        return hmac.compare_digest(given.encode(), self.token.encode())

    def busy_workers(self) -> int:
        return self._server.busy_workers() if self._server is not None else 0

    def live_clients(self) -> int:
        with self._live_cond:
            return len(self._live)

    def shared_stats(self) -> dict[str, Any]:
        """The stats document, computed at most every :data:`STATS_MAX_AGE` s for all live clients."""
        with self._stats_lock:
            now = time.monotonic()
            if self._stats_cache is None or now - self._stats_cache[0] >= STATS_MAX_AGE:
                self._stats_cache = (now, self.stats_fn())
            return self._stats_cache[1]

    # ---- frames (only with snapshots or MJPEG) ---------------------------------------------
    def set_frame(self, camera: str, image: np.ndarray) -> None:
        """The daemon hands over the latest frame only when snapshots or MJPEG are enabled."""
        if not self.keeps_frames:
            return
        with self._frames_cond:
            seq = self._frames.get(camera, (0, image))[0] + 1
            self._frames[camera] = (seq, image.copy())
            self._frames_cond.notify_all()

    def latest(self, camera: str) -> tuple[int, np.ndarray] | None:
        with self._frames_cond:
            return self._frames.get(camera)

    def links(self) -> list[str]:
        out = ["/", "/api", "/healthz", "/metrics", "/api/stats", "/api/timeline", "/api/events"]
        if self.cfg.snapshots:
            out.append("/snapshot/<camera>.jpg")
        if self.cfg.mjpeg:
            out.append("/mjpeg/<camera>")
        return out


def _response(code: int, body: str, head_only: bool, headers: dict[str, str] | None = None) -> bytes:
    """A complete JSON response with the same headers a worker sends, closing the connection."""
    from http import HTTPStatus

    data = body.encode()
    lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", f"Server: {_Handler.server_version}",
             "Content-Type: application/json", f"Content-Length: {len(data)}", "Cache-Control: no-store",
             "Connection: close", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else data)


def load_web() -> dict[str, tuple[bytes, str]]:
    """The status page's files, read once from the package (they are a few kilobytes)."""
    root = resources.files("feredge.edge.daemon") / "web"
    return {path: (root.joinpath(name).read_bytes(), ctype) for path, (name, ctype) in WEB_FILES.items()}


def sse(event: str, data: Any) -> bytes:
    """One Server-Sent Events message; the JSON is on one line, so one ``data:`` field."""
    return f"event: {event}\ndata: {jsonsafe.dumps(data)}\n\n".encode()


class _Handler(BaseHTTPRequestHandler):
    owner: HttpSink
    server: BoundedHTTPServer
    server_version = "feredge"
    protocol_version = "HTTP/1.1"
    timeout = HEADER_TIMEOUT  # per read; the reaper bounds a whole request's headers too

    def __init__(self, request: Any, client_address: Any, server: Any, prefix: bytes = b"") -> None:
        self._prefix = prefix  # what the server's selector already read: the request line and headers
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile = prefixed_reader(self._prefix, self.connection)

    def handle(self) -> None:
        # One request per connection: an idle keep-alive client must not hold a worker thread.
        self.close_connection = True
        self.handle_one_request()

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry ?token=…, also spelt %74oken=…: decoded, then redacted.
        log.debug("HTTP %s %s", self.client_address[0], redact_text(unquote(format % args)))

    def _send(self, code: int, body: bytes | str, ctype: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(code, jsonsafe.dumps(obj) + "\n", headers=headers)

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.owner.token
        if not token:
            return True
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":  # the scheme is case-insensitive (RFC 9110)
            given = auth[7:].strip()
        elif "token" in query:
            given = query["token"][0]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path, query = url.path.rstrip("/") or "/", parse_qs(url.query)
        o = self.owner
        try:
            if not host_allowed(self.headers.get("Host"), o.cfg.bind, o.allowed_hosts):
                self.close_connection = True
                self._json(403, {"error": "the Host header does not name this server (DNS rebinding?); "
                                          "add the name to http.allowed_hosts"})
            elif path == "/healthz":
                # Unauthenticated, so up/down only: camera names and reasons are in /api/stats.
                ok, _detail = o.health_fn()
                self._json(200 if ok else 503, {"status": "ok" if ok else "degraded"})
            elif path in o.web:
                # The page is static and carries no data: it loads without the token, then asks for it.
                body, ctype = o.web[path]
                self._send(200, body, ctype, PAGE_HEADERS)
            elif not self._authorized(query):
                self._json(401, {"error": "unauthorized: send the token as 'Authorization: Bearer TOKEN'"},
                           {"WWW-Authenticate": 'Bearer realm="feredge"'})
            else:
                self._route(path, query)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        o = self.owner
        if path == "/metrics":
            self._send(200, o.metrics.render(), CONTENT_TYPE)
        elif path == "/api":
            self._json(200, {"feredge": o.links()})
        elif path == "/api/stats":
            self._json(200, o.stats_fn())
        elif path == "/api/timeline":
            self._json(200, o.timeline_fn())
        elif path == "/api/events":
            self._events()
        elif path.startswith("/snapshot/") and path.endswith(".jpg") and o.cfg.snapshots:
            annotate = query.get("annotate", ["0"])[0] not in ("0", "", "false")
            self._snapshot(path[len("/snapshot/"):].removesuffix(".jpg"), annotate)
        elif path.startswith("/mjpeg/") and o.cfg.mjpeg:
            self._mjpeg(path[len("/mjpeg/"):])
        else:
            self._json(404, {"error": f"no such endpoint {path}"})

    def _start_stream(self, ctype: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Accel-Buffering", "no")  # a reverse proxy must pass each message on at once
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self.connection.settimeout(SEND_TIMEOUT)

    def _live_stream(self, ctype: str, body: Callable[[], None]) -> None:
        """One live stream (events or MJPEG): counted against :data:`MAX_LIVE_CLIENTS` (503 past it),
        streamed by ``body`` until the client or the daemon goes, then counted out."""
        o = self.owner
        if not o.enter_live(self.connection):
            self.close_connection = True  # a refused stream gives its connection and thread back
            self._json(503, {"error": f"too many live clients (at most {o.max_live})"}, {"Retry-After": "5"})
            return
        try:
            self._start_stream(ctype)
            if self.command != "HEAD":
                body()
        except OSError:
            pass  # the client left, stopped reading, or the daemon is stopping
        finally:
            o.leave_live(self.connection)

    def _events(self) -> None:
        """The live feed: ``event: stats`` every :data:`EVENTS_INTERVAL` s, ``event: timeline`` on
        connect and every :data:`TIMELINE_INTERVAL` s, until the client or the daemon goes."""
        self._live_stream("text/event-stream; charset=utf-8", self._event_messages)

    def _event_messages(self) -> None:
        o = self.owner
        next_timeline = 0.0
        while not o._stopping.is_set():
            chunk = sse("stats", o.shared_stats())
            if time.monotonic() >= next_timeline:
                chunk += sse("timeline", o.timeline_fn())
                next_timeline = time.monotonic() + TIMELINE_INTERVAL
            self.wfile.write(chunk)
            o._stopping.wait(EVENTS_INTERVAL)

    def _snapshot(self, camera: str, annotate: bool) -> None:
        import cv2

        item = self.owner.latest(camera)
        if item is None:
            self._json(404, {"error": f"no frame from camera {camera!r}"})
            return
        image = item[1]
        if annotate:
            image = self._annotated(camera, image)
        _ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        self._send(200, jpg.tobytes(), "image/jpeg")

    def _annotated(self, camera: str, image: np.ndarray) -> np.ndarray:
        """A copy of the frame with the camera's current tracks drawn (smoothed label and score)."""
        from feredge.edge.annotate import draw

        cam = self.owner.stats_fn()["cameras"].get(camera, {})
        faces = [SimpleNamespace(box=t["box"], prediction=SimpleNamespace(label=t["label"], score=t["score"]))
                 for t in cam.get("tracks", []) if "box" in t]
        return draw(image, faces)

    def _mjpeg(self, camera: str) -> None:
        o = self.owner
        if o.latest(camera) is None:
            self._json(404, {"error": f"no frame from camera {camera!r}"})
            return
        self._live_stream("multipart/x-mixed-replace; boundary=frame", lambda: self._mjpeg_frames(camera))

    def _mjpeg_frames(self, camera: str) -> None:
        import cv2

        o = self.owner
        last = -1
        while not o._stopping.is_set():
            with o._frames_cond:
                seen = last
                o._frames_cond.wait_for(
                    lambda seen=seen: o._stopping.is_set() or o._frames.get(camera, (seen,))[0] != seen, timeout=5.0)
                item = o._frames.get(camera)
            if item is None or item[0] == last or o._stopping.is_set():
                continue
            last = item[0]
            _ok, jpg = cv2.imencode(".jpg", item[1], [cv2.IMWRITE_JPEG_QUALITY, 70])
            data = jpg.tobytes()
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " +
                             str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
            o._stopping.wait(0.05)  # at most ~20 fps to a browser


def create(config: Any, daemon: Any) -> HttpSink:
    timeline = getattr(daemon, "timeline", None)
    return HttpSink(config.http, metrics=daemon.metrics, stats=daemon.stats, health=daemon.health,
                    token=config.http_token(), timeline=timeline.snapshot if timeline is not None else None)
