"""``feredge run``: the always-on daemon — cameras in, expressions out to logs, MQTT and Prometheus.

Reads ``/etc/feredge/config.toml`` (or ``--config``); ``--check`` validates the configuration,
the model and the sources, then exits. Under systemd (``Type=notify``) it reports READY once
the model is loaded and the cameras deliver frames, pings the watchdog only while every
camera loop keeps making progress, and shows fps / inference time / camera state in
``systemctl status``. See docs/daemon.md.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feredge import __version__
from feredge.edge.daemon import config as cfgmod
from feredge.edge.daemon.cameras import check_source, make_opener
from feredge.edge.daemon.config import CameraConfig, Config, ConfigError
from feredge.edge.daemon.identity import node_id
from feredge.edge.daemon.metrics import DaemonMetrics
from feredge.edge.daemon.notify import Notifier
from feredge.edge.daemon.sinks import Sink, create_sinks
from feredge.edge.daemon.timeline import Timeline
from feredge.edge.errors import EdgeError, interrupted, one_line
from feredge.edge.sources import Frame
from feredge.edge.sources.reconnect import CameraFeed, Opener, ReconnectPolicy, SourcePlan
from feredge.edge.sources.spec import redact
from feredge.edge.track import Tracker

log = logging.getLogger(__name__)

MIN_SIDE = 16  # smaller frames are corrupt, not cameras


@dataclass
class CameraState:
    cfg: CameraConfig
    feed: CameraFeed
    tracker: Tracker
    pipeline: Any
    thread: threading.Thread | None = None
    crashed: str | None = None  # why its loop died, when it did not simply end
    frames: int = 0
    corrupt: int = 0
    errors: int = 0
    faces_now: int = 0
    fps: float = 0.0
    infer_ms: float = 0.0  # EMA of per-face inference time
    detect_ms: float = 0.0
    last_frame: float | None = None
    frame_size: tuple[int, int] | None = None  # (width, height) of the latest frame
    _fps_frames: int = 0
    _fps_time: float = field(default_factory=time.monotonic)


def valid_image(img: Any) -> bool:
    """A frame the pipeline can use: uint8, grey or 3-channel, not degenerate."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.size == 0:
        return False
    if img.ndim == 2:
        h, w = img.shape
    elif img.ndim == 3 and img.shape[2] in (3, 4):
        h, w = img.shape[:2]
    else:
        return False
    return h >= MIN_SIDE and w >= MIN_SIDE


def model_info(clf: Any) -> dict[str, Any]:
    """What the status page shows about the model: from its contract and its file, read once.

    ``provenance.evaluation`` (the model card's test figures) is passed on as the contract has
    it: a model exported without a card simply has none."""
    c = clf.contract
    spec = c.input
    info: dict[str, Any] = {
        "device": clf.device,
        "labels": list(c.labels),
        "input": {"height": spec.height, "width": spec.width, "channels": spec.channels, "color": spec.color},
        "file": clf.path.name,
    }
    with contextlib.suppress(OSError):
        info["bytes"] = clf.path.stat().st_size
    evaluation = c.provenance.get("evaluation")
    if isinstance(evaluation, dict) and evaluation:
        info["evaluation"] = evaluation
    return info


class Daemon:
    """The daemon as an object, so tests can run it in-process with their own sources."""

    def __init__(self, config: Config, *, openers: dict[str, tuple[Opener, bool, bool]] | None = None,
                 notifier: Notifier | None = None, extra_sinks: list[Sink] | None = None) -> None:
        self.cfg = config
        self.notifier = notifier or Notifier()
        self.metrics = DaemonMetrics()
        self.stop_event = threading.Event()
        self.offline_restart = config.daemon.offline_restart
        self._openers = openers or {}
        self._extra_sinks = list(extra_sinks or [])
        self.sinks: list[Sink] = []
        self.cameras: dict[str, CameraState] = {}
        self.http: Any = None
        self.mqtt: Any = None
        self.ready = False
        self.started = time.monotonic()
        self.node_id = node_id(config.mqtt.node_id)  # this device in a fleet (edge/daemon/identity.py)
        self.watchdog_pings = 0
        self.backend = "?"
        self.model_name = "?"
        self.model_info: dict[str, Any] = {}
        self.timeline = Timeline()  # the last minutes, for the status page
        self._sink_errors: dict[str, int] = {}

    # ---- set-up --------------------------------------------------------------------------
    def _make_pipeline(self) -> Any:
        from feredge.edge.detect import FaceDetector
        from feredge.edge.model import Classifier
        from feredge.edge.pipeline import Pipeline

        m = self.cfg.model
        clf = Classifier(m.path, backend=m.backend, device=m.device, num_threads=m.num_threads)
        det = FaceDetector(self.cfg.detector)
        return Pipeline(clf, det)

    def setup(self) -> None:
        """Load the model (one interpreter per camera: they are not thread-safe), open sinks.

        Model errors surface here, before any thread or socket exists, as one-line errors."""
        for cam in self.cfg.camera:
            pipe = self._make_pipeline()
            clf = pipe.classifier
            self.backend, self.model_name = clf.backend_name, clf.contract.name
            self.model_info = model_info(clf)
            plan = SourcePlan(*(self._openers.get(cam.name) or make_opener(cam)))
            feed = CameraFeed(
                cam.name, plan, stop=self.stop_event,
                policy=ReconnectPolicy(cam.reconnect_min, cam.reconnect_max, cam.read_timeout),
                on_state=lambda online, reason, n=cam.name: self._camera_state(n, online, reason),
                on_reconnect=lambda n=cam.name: self.metrics.reconnects.labels(camera=n).inc(),
            )
            tracker = Tracker(clf.labels, self.cfg.tracking, min_score=self.cfg.model.min_score, camera=cam.name)
            self.cameras[cam.name] = CameraState(cam, feed, tracker, pipe)
            # Every per-camera series exists from the start, so dashboards see 0, not "no data".
            self.metrics.online.labels(camera=cam.name).set(0)
            self.metrics.fps.labels(camera=cam.name).set(0)
            for counter in (self.metrics.frames, self.metrics.corrupt, self.metrics.reconnects):
                counter.labels(camera=cam.name)
        log.info("model %s (%s, %s) for %d camera(s)", self.model_name, self.backend,
                 next(iter(self.cameras.values())).pipeline.classifier.device, len(self.cameras))
        self._open_sinks()

    def _open_sinks(self) -> None:
        self.sinks = [*create_sinks(self.cfg, self), *self._extra_sinks]
        by_name = {s.name: s for s in self.sinks}
        self.mqtt, self.http = by_name.get("mqtt"), by_name.get("http")
        started: list[Sink] = []
        try:
            for s in self.sinks:
                s.start()
                started.append(s)
        except BaseException:
            for s in reversed(started):
                with contextlib.suppress(Exception):
                    s.close()
            raise

    # ---- camera loops --------------------------------------------------------------------
    def _camera_state(self, name: str, online: bool, reason: str) -> None:
        self.metrics.online.labels(camera=name).set(1 if online else 0)
        self._fanout("camera_state", name, online, reason)
        cam = self.cameras.get(name)
        if not online and cam is not None and cam.tracker.tracks:
            # Faces cannot be seen on a dead camera: they leave now, not when it returns.
            self._publish_events(cam, cam.tracker.clear(time.time()))

    def _fanout(self, method: str, *args: Any) -> None:
        for s in self.sinks:
            try:
                getattr(s, method)(*args)
            except Exception as e:  # one broken sink must not stop the others or the camera
                n = self._sink_errors.get(s.name, 0) + 1
                self._sink_errors[s.name] = n
                if n == 1 or n % 1000 == 0:
                    log.error("sink %s.%s failed (%d so far): %s", s.name, method, n, e)

    def _publish_events(self, cam: CameraState, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        for ev in events:
            self.metrics.events.labels(camera=cam.cfg.name, event=ev["event"]).inc()
        self.timeline.add_events(events)
        self._fanout("events", events)

    def _camera_loop(self, cam: CameraState) -> None:
        name = cam.cfg.name
        frames = cam.feed.frames()
        try:
            for frame in frames:
                if self.stop_event.is_set():
                    break
                if not valid_image(frame.image):
                    cam.corrupt += 1
                    self.metrics.corrupt.labels(camera=name).inc()
                    continue
                try:
                    record = self._process(cam, frame)
                except Exception as e:  # a frame OpenCV cannot digest is skipped, not fatal
                    cam.corrupt += 1
                    self.metrics.corrupt.labels(camera=name).inc()
                    log.debug("camera %s: frame %d skipped: %s", name, frame.index, e)
                    continue
                self._fanout("frame", name, record)
                if self.http is not None and self.http.keeps_frames:
                    self.http.set_frame(name, frame.image)
        except Exception as e:
            cam.crashed = one_line(e)
            # A bug, or a thread that could not start: logged with its traceback; run() then exits 1.
            log.exception("camera %s loop crashed", name)
        finally:
            frames.close()
            if not cam.feed.close(timeout=1.0):
                log.warning("camera %s: a driver call is still blocked; leaving it behind", name)
            self._publish_events(cam, cam.tracker.clear(time.time()))

    def _process(self, cam: CameraState, frame: Frame) -> dict[str, Any]:
        import cv2

        name = cam.cfg.name
        pipe = cam.pipeline
        image = frame.image
        if image.ndim == 3 and image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        ts = frame.ts
        if cam.frames % cam.cfg.detect_every == 0:
            t0 = time.perf_counter()
            det_gray = getattr(frame, "detect_gray", None)
            gray = image if image.ndim == 2 else None
            if det_gray is not None and valid_image(det_gray):
                plane = det_gray  # picamera2: detect on the small Y plane, crop from the main stream
            else:
                if gray is None:
                    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
                plane = gray
            if cam.frames == 0:
                smallest = pipe.detector.smallest_face(plane.shape[1]) * image.shape[1] / plane.shape[1]
                log.info("camera %s: %dx%d frames; faces smaller than %d px are not detected (detector.min_face "
                         "= %d, detect_width = %d)", name, image.shape[1], image.shape[0], round(smallest),
                         pipe.detector.config.min_face, pipe.detector.config.detect_width)
            boxes = pipe.detect(plane, chained=True)
            if plane is not gray:
                sy, sx = image.shape[0] / plane.shape[0], image.shape[1] / plane.shape[1]
                boxes = [(round(x * sx), round(y * sy), round(w * sx), round(h * sy)) for x, y, w, h in boxes]
            t1 = time.perf_counter()
            faces = pipe.classify_boxes(image, boxes, gray)
            t2 = time.perf_counter()
            self.metrics.detect.labels(camera=name).observe(t1 - t0)
            cam.detect_ms = 0.9 * cam.detect_ms + 0.1 * (t1 - t0) * 1e3 if cam.frames else (t1 - t0) * 1e3
            if faces:
                per_face = (t2 - t1) / len(faces)
                for _ in faces:
                    self.metrics.inference.labels(backend=self.backend).observe(per_face)
                cam.infer_ms = 0.9 * cam.infer_ms + 0.1 * per_face * 1e3 if cam.infer_ms else per_face * 1e3
            labels = pipe.classifier.labels
            dets = [(f.box, np.array([f.prediction.scores[lab] for lab in labels], np.float32)) for f in faces]
            upd = cam.tracker.update(dets, ts)
        else:
            upd = cam.tracker.hold(ts)
        cam.frames += 1
        cam._fps_frames += 1
        cam.last_frame = time.monotonic()
        cam.frame_size = (int(image.shape[1]), int(image.shape[0]))
        cam.faces_now = len(upd.faces)
        self.metrics.frames.labels(camera=name).inc()
        self.metrics.faces_now.labels(camera=name).set(len(upd.faces))
        for f in upd.faces:
            self.metrics.faces.labels(camera=name, expression=f.label).inc()
        self._publish_events(cam, upd.events)
        record: dict[str, Any] = {"camera": name, "source": frame.source, "frame": frame.index, "ts": round(ts, 3)}
        if frame.pts is not None:
            record["pts"] = frame.pts
        record["faces"] = [f.to_dict() for f in upd.faces]
        return record

    # ---- health, stats, status -----------------------------------------------------------
    def camera_healthy(self, cam: CameraState, now: float | None = None) -> bool:
        """The loop made progress recently and frames flow (or the camera is only briefly away)."""
        now = time.monotonic() if now is None else now
        if cam.feed.ended:
            return True
        if now - cam.feed.heartbeat > self.cfg.daemon.stall_timeout:
            return False
        if cam.thread is not None and not cam.thread.is_alive():
            return False
        off = cam.feed.offline_since
        return off is None or not self.offline_restart or now - off < self.offline_restart

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        cams = {n: {"online": c.feed.online, "reason": c.feed.reason, "healthy": self.camera_healthy(c, now)}
                for n, c in self.cameras.items()}
        ok = all(c["online"] and c["healthy"] for c in cams.values())
        return ok, {"cameras": cams}

    def stats(self) -> dict[str, Any]:
        """The ``/api/stats`` document (also MQTT ``B/stats`` and the status page's live feed).

        Keys are only ever added: dashboards and scripts read the old ones."""
        now = time.monotonic()
        out: dict[str, Any] = {
            "version": __version__,
            "node_id": self.node_id,
            "ts": round(time.time(), 3),
            "uptime": round(now - self.started, 1),
            "model": {"name": self.model_name, "backend": self.backend, **self.model_info},
            "cameras": {n: self._camera_stats(c, now) for n, c in self.cameras.items()},
        }
        if self.mqtt is not None:
            out["mqtt"] = {"connected": self.mqtt.connected, "queued": self.mqtt.queue_length(),
                           "dropped": self.mqtt.dropped, "published": self.mqtt.published}
        if self.http is not None:
            out["http"] = {"snapshots": self.cfg.http.snapshots, "mjpeg": self.cfg.http.mjpeg}
        return out

    def _camera_stats(self, c: CameraState, now: float) -> dict[str, Any]:
        """One camera: state, rates, and its confirmed tracks with box and smoothed probabilities."""
        labels = c.tracker.labels
        tracks = []
        for t in list(c.tracker.tracks):  # a copy: the camera thread appends to it and replaces it
            if not t.confirmed:
                continue
            probs = t.probs  # one array for score and scores (the camera thread replaces it each frame)
            tracks.append({"track_id": t.id, "label": t.label, "score": round(float(probs.max()), 3),
                           "box": [int(v) for v in t.box],
                           "scores": {lab: round(float(probs[i]), 3) for i, lab in enumerate(labels)
                                      if i < probs.size}})
        size = c.frame_size
        return {
            "online": c.feed.online,
            "reason": c.feed.reason,
            "healthy": self.camera_healthy(c, now),
            "fps": round(c.fps, 2),
            "frames": c.frames,
            "corrupt": c.corrupt,
            "reconnects": c.feed.reconnects,
            "faces": c.faces_now,
            "tracks": tracks,
            "frame_size": None if size is None else {"width": size[0], "height": size[1]},
            "last_frame_age": None if c.last_frame is None else round(now - c.last_frame, 2),
            "inference_ms": round(c.infer_ms, 3),
            "detect_ms": round(c.detect_ms, 3),
            "full_searches": c.pipeline.full_searches,
        }

    def status_line(self) -> str:
        parts = []
        for n, c in self.cameras.items():
            state = "online" if c.feed.online else f"offline ({c.feed.reason})"
            parts.append(f"{n} {state} {c.fps:.1f} fps {c.faces_now} face(s)")
        infer = [c.infer_ms for c in self.cameras.values() if c.infer_ms]
        parts.append(f"infer {sum(infer) / len(infer):.2f} ms ({self.backend})" if infer else f"({self.backend})")
        if self.mqtt is not None:
            parts.append("mqtt " + ("connected" if self.mqtt.connected else "disconnected"))
        return "; ".join(parts)

    def _update_fps(self, now: float) -> None:
        for n, c in self.cameras.items():
            dt = now - c._fps_time
            if dt >= 1.0:
                c.fps = c._fps_frames / dt if c.feed.online else 0.0
                c._fps_frames, c._fps_time = 0, now
                self.metrics.fps.labels(camera=n).set(c.fps)
                self.timeline.add_fps(n, c.fps)

    # ---- main loop -----------------------------------------------------------------------
    def request_stop(self, *_: Any) -> None:
        self.stop_event.set()

    def run(self, *, install_signals: bool = True, max_seconds: float | None = None) -> int:
        """Start everything, supervise until stopped (or every finite source ended); 0, or 1 when a
        camera loop crashed (systemd's Restart=on-failure then restarts the service)."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.request_stop)
            signal.signal(signal.SIGINT, self.request_stop)
            with contextlib.suppress(AttributeError, ValueError):
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            if interrupted():  # a Ctrl-C during start-up that some library swallowed
                self.request_stop()
        if not self.cameras:
            self.setup()
        self.metrics.up.set(1)
        for cam in self.cameras.values():
            cam.thread = threading.Thread(target=self._camera_loop, args=(cam,), name=f"cam-{cam.cfg.name}",
                                          daemon=True)
            try:
                cam.thread.start()
            except RuntimeError as e:  # "can't start new thread": at the unit's TasksMax
                self.shutdown()
                raise EdgeError(f"camera {cam.cfg.name}: cannot start its thread ({one_line(e, with_type=False)}); "
                                "too many threads (TasksMax?)") from None
        d = self.cfg.daemon
        wd = self.notifier.watchdog_interval()
        if wd:
            wd = min(wd, 5.0)
        last_ping = last_status = 0.0
        last_stats = time.monotonic()
        status = 0
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        try:
            while not self.stop_event.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                self._update_fps(now)
                if not self.ready and (all(c.feed.online or c.feed.ended for c in self.cameras.values())
                                       or now - self.started >= d.startup_timeout):
                    self.ready = True
                    self.notifier.ready(self.status_line())
                    log.info("ready: %s", self.status_line())
                    last_status = now
                healthy = all(self.camera_healthy(c, now) for c in self.cameras.values())
                if wd and self.ready and healthy and now - last_ping >= wd:
                    if self.notifier.watchdog():
                        self.watchdog_pings += 1
                    last_ping = now
                if self.ready and now - last_status >= d.status_interval:
                    self.notifier.status(self.status_line())
                    last_status = now
                if now - last_stats >= d.stats_interval:
                    self._fanout("stats", self.stats())
                    last_stats = now
                if all(c.feed.ended or (c.thread is not None and not c.thread.is_alive())
                       for c in self.cameras.values()):
                    crashed = {n: c.crashed for n, c in self.cameras.items() if c.crashed}
                    if crashed:
                        # A failure, not an end: exit non-zero so Restart=on-failure restarts the service.
                        log.error("camera loop crashed (%s); exiting with status 1",
                                  "; ".join(f"{n}: {why}" for n, why in crashed.items()))
                        status = 1
                    else:
                        log.info("all sources ended")
                    break
                self.stop_event.wait(0.1)
        finally:
            self.shutdown()
        return status

    def shutdown(self) -> None:
        t0 = time.monotonic()
        self.notifier.stopping("stopping")
        self.stop_event.set()
        for cam in self.cameras.values():
            if cam.thread is not None:
                cam.thread.join(timeout=max(0.1, 3.0 - (time.monotonic() - t0)))
                if cam.thread.is_alive():
                    log.warning("camera %s did not stop in time", cam.cfg.name)
        self.metrics.up.set(0)
        for s in reversed(self.sinks):
            try:
                s.close()
            except Exception as e:
                log.error("closing sink %s failed: %s", s.name, e)
        self.notifier.close()
        log.info("stopped in %.2f s", time.monotonic() - t0)


# ---- CLI -----------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH",
                   help=f"TOML config (default: {cfgmod.DEFAULT_PATH} when it exists, else built-in defaults)")
    p.add_argument("--check", action="store_true", help="validate the config, model and sources, then exit")
    p.add_argument("--model", metavar="PATH", help="override model.path")
    p.add_argument("--source", metavar="SPEC",
                   help="override the first camera's source (auto, picamera2, /dev/video0, file, URL)")
    p.add_argument("--pace", choices=("realtime", "fast"), help="override camera.pace for video files")
    p.add_argument("--loop", action="store_true", help="loop video files")
    p.add_argument("--jsonl", metavar="PATH", help="JSON lines to this file ('-' = stdout)")
    p.add_argument("--mqtt-host", metavar="HOST", help="enable MQTT to this broker")
    p.add_argument("--mqtt-port", type=int, metavar="PORT")
    p.add_argument("--http-port", type=int, metavar="PORT", help="HTTP port (0 = any free port)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any setting, e.g. --set tracking.smoothing=1.0 (repeatable)")


def _parse_value(text: str) -> Any:
    try:
        return cfgmod.tomllib.loads(f"v = {text}")["v"]
    except cfgmod.tomllib.TOMLDecodeError:
        return text


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if args.model:
        o["model.path"] = args.model
    if args.source:
        o["camera.0.source"] = args.source
    if args.pace:
        o["camera.pace"] = args.pace
    if args.loop:
        o["camera.loop"] = True
    if args.jsonl:
        o["jsonl.enabled"] = True
        o["jsonl.path"] = args.jsonl
    if args.mqtt_host:
        o["mqtt.enabled"] = True
        o["mqtt.host"] = args.mqtt_host
    if args.mqtt_port is not None:
        o["mqtt.port"] = args.mqtt_port
    if args.http_port is not None:
        o["http.port"] = args.http_port
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: use SECTION.KEY=VALUE")
        o[key.strip()] = _parse_value(value.strip())
    return o


def load_config(args: argparse.Namespace) -> Config:
    path = args.config
    if path is None and cfgmod.DEFAULT_PATH.is_file():
        path = str(cfgmod.DEFAULT_PATH)
    return cfgmod.load(path, overrides_from_args(args))


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    for cam in cfg.camera:
        check_source(cam)
    if args.check:
        # Load the model and the cascade too: a config that names a tampered model is not OK.
        d = Daemon(cfg)
        pipe = d._make_pipeline()
        cams = ", ".join(f"{c.name}={redact(c.source)}" for c in cfg.camera)
        sinks = [n for n, on in (("jsonl", cfg.jsonl.enabled), ("mqtt", cfg.mqtt.enabled),
                                 ("http", cfg.http.enabled)) if on]
        print(f"config OK: {cfg.source_path or 'built-in defaults'}; model {pipe.classifier.contract.name} "
              f"({pipe.classifier.backend_name}); cameras {cams}; sinks {', '.join(sinks) or 'none'}")
        return 0
    daemon = Daemon(cfg)
    daemon.setup()
    log.info("feredge %s running (config %s)", __version__, cfg.source_path or "built-in defaults")
    return daemon.run()


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - convenience
    from feredge.edge.cli.main import main as cli_main

    return cli_main(["run", *(argv if argv is not None else sys.argv[1:])])


__all__ = ["Daemon", "add_arguments", "run", "valid_image"]
