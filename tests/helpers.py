"""Helpers shared by the test modules (one place: tests import from here, not from each other).

``need`` skips a test whose prerequisite is missing, except under ``CI=true`` where it fails.
The daemon helpers run a real :class:`feredge.edge.daemon.run.Daemon` in-process; ``ScriptedSource`` is the
thin stand-in for a camera driver (none exists here) and ``RecordingSink`` a sink that records.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from feredge.edge.daemon import config as C
from feredge.edge.daemon.run import Daemon
from feredge.edge.daemon.sinks import Sink
from feredge.edge.sources import Frame

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEREDGE_SHARED", ROOT.parent / "shared"))
CACHE = Path(os.environ.get("FEREDGE_CACHE", ROOT / ".cache"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing — except in CI, where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def wait_until(cond, timeout: float = 60.0, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(interval)
    return bool(cond())


class NotifyListener:
    """A datagram socket standing in for systemd's ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str | None = None) -> list[float]:
        return [t for t, m in list(self.messages) if key in m and (value is None or m[key] == value)]

    def close(self) -> None:
        self._stop.set()
        self._t.join(timeout=2)
        self.sock.close()


class ScriptedSource:
    """Thin stand-in for a camera driver (none exists here): plays a script of real images,
    ``"fail"`` (the driver raises), ``"stall"`` (a read that never returns)."""

    kind = "camera"
    fps = None

    def __init__(self, script: list[Any], name: str = "scripted", repeat_last: bool = False) -> None:
        self.script, self.name, self.repeat_last = script, name, repeat_last
        self.closed = False
        self.release = threading.Event()

    def __iter__(self):
        i = 0
        items = list(self.script)
        while items:
            item = items.pop(0)
            if isinstance(item, str) and item == "fail":
                raise RuntimeError("VIDIOC_DQBUF: No such device")
            if isinstance(item, str) and item == "stall":
                self.release.wait()
                return
            yield Frame(image=item, index=i, ts=time.time(), source=self.name)
            i += 1
            if not items and self.repeat_last:
                items.append(item)
                time.sleep(0.01)

    def close(self) -> None:
        self.closed = True
        self.release.set()


class RecordingSink(Sink):
    name = "recording"

    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.events_: list[dict] = []
        self.states: list[tuple[str, bool, str]] = []
        self.block = threading.Event()
        self.block_after: int | None = None
        self.blocked_at: float | None = None

    def frame(self, camera, record):
        self.frames.append(record)
        if self.block_after is not None and len(self.frames) >= self.block_after and not self.block.is_set():
            # Stands in for an output that blocks (a full pipe, a hung NFS write): the frame
            # loop stalls inside the sink.
            self.blocked_at = time.monotonic()
            self.block.wait()

    def events(self, events):
        self.events_.extend(events)

    def camera_state(self, camera, online, reason=""):
        self.states.append((camera, online, reason))


def make_config(model: Path, **sections: dict[str, Any]) -> C.Config:
    cfg = C.Config()
    cfg.model.path = str(model)
    cfg.jsonl.enabled = False
    cfg.http.enabled = False
    cfg.daemon.startup_timeout = 30.0
    cfg.daemon.stats_interval = 3600.0
    cfg.camera[0].read_timeout = 1.0
    cfg.camera[0].reconnect_min = 0.05
    cfg.camera[0].reconnect_max = 0.2
    for section, values in sections.items():
        target = cfg.camera[0] if section == "camera" else getattr(cfg, section)
        for k, v in values.items():
            setattr(target, k, v)
    return cfg.validate()


def start(daemon: Daemon) -> threading.Thread:
    daemon.setup()
    result: dict[str, Any] = {}

    def target() -> None:
        result["rc"] = daemon.run(install_signals=False)

    t = threading.Thread(target=target, daemon=True)
    t.result = result  # type: ignore[attr-defined]
    t.start()
    return t


def stop(daemon: Daemon, t: threading.Thread) -> int:
    daemon.request_stop()
    t.join(timeout=30)
    assert not t.is_alive(), "daemon did not stop"
    return t.result["rc"]  # type: ignore[attr-defined]


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("Content-Type", "")


class MjpegCamera:
    """A real MJPEG-over-HTTP camera on loopback (multipart JPEG, ~25 fps), as IP cameras serve
    it; OpenCV reads ``http://127.0.0.1:PORT/x.mjpg``. With ``credentials=(user, password)`` it
    wants Basic auth. ``close()`` is the camera going away: the stream ends, connections are refused."""

    def __init__(self, image: Any, credentials: tuple[str, str] | None = None) -> None:
        import cv2

        jpg = cv2.imencode(".jpg", image)[1].tobytes()
        expected = None if credentials is None else "Basic " + base64.b64encode(":".join(credentials).encode()).decode()
        cam = self
        self.authorized = 0
        self.refused = 0
        self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                if expected is not None and self.headers.get("Authorization") != expected:
                    cam.refused += 1
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="cam"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                cam.authorized += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    while not cam.stop.is_set():
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                         + str(len(jpg)).encode() + b"\r\n\r\n" + jpg + b"\r\n")
                        time.sleep(0.04)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "x.mjpg") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


# Debian's chromium, driven by Playwright for Python (never `playwright install`: it downloads browsers).
CHROMIUM = os.environ.get("FEREDGE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium as a Playwright ``Browser``; ``need()``: skips without chromium or
    playwright, fails under CI. Playwright gives each launch a fresh ``--user-data-dir`` (removed
    afterwards) and each ``browser.new_context()`` its own empty storage."""
    need(Path(CHROMIUM).is_file(), f"chromium not found at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "playwright for Python is not installed (pip install -e '.[dev]')")
        raise
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


# ---- MQTT: a private mosquitto and a subscriber -------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A private mosquitto: its own config, loopback only, no persistence."""

    def __init__(self, tmp: Path, port: int) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        need(exe is not None, "mosquitto is not installed (apt install mosquitto)")
        self.exe, self.port = exe, port
        self.conf = tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.log = tmp / "mosquitto.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=open(self.log, "ab"),
                                     stderr=subprocess.STDOUT)

        def listening() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                return False

        assert wait_until(listening, 30), self.log.read_text()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.proc = None


class Subscriber:
    """A real MQTT client collecting everything under the given topics (reconnects by itself)."""

    def __init__(self, port: int, topics=("feredge/#", "homeassistant/#")) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{os.getpid()}-{time.monotonic_ns()}")
        c.reconnect_delay_set(1, 2)

        def on_connect(client, userdata, flags, rc, props):
            for t in topics:
                client.subscribe(t, qos=1)

        def on_message(client, userdata, msg):
            with self._lock:
                self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

        c.on_connect, c.on_message = on_connect, on_message
        c.connect_async("127.0.0.1", port, keepalive=10)
        c.loop_start()
        self.client = c

    def on(self, topic: str) -> list[str]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def retained(self, topic: str) -> list[str]:
        with self._lock:
            return [p for t, p, r in self.messages if t == topic and r]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
