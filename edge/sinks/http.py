"""A small HTTP server on a thread: ``/healthz``, ``/metrics``, ``/api/stats`` and, only when
switched on, ``/snapshot/<camera>.jpg`` and ``/mjpeg/<camera>``.

The standard library's ``ThreadingHTTPServer`` is enough for a scraper and a browser, and
adds nothing to install. It listens on 127.0.0.1 by default; the configuration refuses any
other address without a token (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``). Only
``/healthz`` answers without the token: it reveals nothing but up/down, and health checkers
rarely send headers. Clients should send the token in the header: a URL ends up in logs and
browser histories (the daemon's own request log redacts it). Frames are private: without
``snapshots``/``mjpeg`` none is kept.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edge import jsonsafe
from edge.config import HttpConfig
from edge.errors import EdgeError
from edge.metrics import CONTENT_TYPE, DaemonMetrics
from edge.sinks import Sink
from edge.sources.spec import redact_text

log = logging.getLogger(__name__)


class HttpSink(Sink):
    name = "http"

    def __init__(self, config: HttpConfig, *, metrics: DaemonMetrics, stats: Callable[[], dict[str, Any]],
                 health: Callable[[], tuple[bool, dict[str, Any]]], token: str | None = None) -> None:
        self.cfg = config
        self.metrics = metrics
        self.stats_fn = stats
        self.health_fn = health
        self.token = token
        self.keeps_frames = config.snapshots or config.mjpeg
        self._frames: dict[str, tuple[int, np.ndarray]] = {}
        self._frames_cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = config.port

    def start(self) -> None:
        sink = self

        class Handler(_Handler):
            owner = sink

        try:
            server = ThreadingHTTPServer((self.cfg.bind, self.cfg.port), Handler)
        except OSError as e:
            raise EdgeError(f"cannot listen on http {self.cfg.bind}:{self.cfg.port}: {e.strerror or e}") from None
        server.daemon_threads = True
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)
        self._thread.start()
        log.info("HTTP: listening on http://%s:%d/ (/healthz /metrics /api/stats%s)", self.cfg.bind, self.port,
                 " /snapshot /mjpeg" if self.keeps_frames else "")

    def close(self) -> None:
        self._stopping.set()
        with self._frames_cond:
            self._frames_cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

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


class _Handler(BaseHTTPRequestHandler):
    owner: HttpSink
    server_version = "feredge"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        # The request line may carry ?token=…: logged redacted, never as sent.
        log.debug("HTTP %s %s", self.client_address[0], redact_text(format % args))

    def _send(self, code: int, body: bytes | str, ctype: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, jsonsafe.dumps(obj) + "\n")

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.owner.token
        if not token:
            return True
        given = ""
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
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
            if path == "/healthz":
                # Unauthenticated, so up/down only: camera names and reasons are in /api/stats.
                ok, _detail = o.health_fn()
                self._json(200 if ok else 503, {"status": "ok" if ok else "degraded"})
                return
            if not self._authorized(query):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Bearer realm="feredge"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if path == "/metrics":
                self._send(200, o.metrics.render(), CONTENT_TYPE)
            elif path == "/api/stats":
                self._json(200, o.stats_fn())
            elif path == "/":
                links = ["/healthz", "/metrics", "/api/stats"]
                self._json(200, {"feredge": links})
            elif path.startswith("/snapshot/") and o.cfg.snapshots:
                self._snapshot(path[len("/snapshot/"):].removesuffix(".jpg"))
            elif path.startswith("/mjpeg/") and o.cfg.mjpeg:
                self._mjpeg(path[len("/mjpeg/"):])
            else:
                self._json(404, {"error": f"no such endpoint {path}"})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _snapshot(self, camera: str) -> None:
        import cv2

        item = self.owner.latest(camera)
        if item is None:
            self._json(404, {"error": f"no frame from camera {camera!r}"})
            return
        _ok, jpg = cv2.imencode(".jpg", item[1], [cv2.IMWRITE_JPEG_QUALITY, 80])
        self._send(200, jpg.tobytes(), "image/jpeg")

    def _mjpeg(self, camera: str) -> None:
        import cv2

        o = self.owner
        if o.latest(camera) is None:
            self._json(404, {"error": f"no frame from camera {camera!r}"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        last = -1
        while not o._stopping.is_set():
            with o._frames_cond:
                seen = last
                o._frames_cond.wait_for(
                    lambda seen=seen: o._stopping.is_set() or o._frames.get(camera, (seen,))[0] != seen, timeout=5.0)
                item = o._frames.get(camera)
            if item is None or item[0] == last:
                continue
            last = item[0]
            _ok, jpg = cv2.imencode(".jpg", item[1], [cv2.IMWRITE_JPEG_QUALITY, 70])
            data = jpg.tobytes()
            self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: " +
                             str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
            time.sleep(0.05)  # at most ~20 fps to a browser


def create(config: Any, daemon: Any) -> HttpSink:
    return HttpSink(config.http, metrics=daemon.metrics, stats=daemon.stats, health=daemon.health,
                    token=config.http_token())
