"""The daemon's own sources: picamera2 (lores Y plane for detection, main stream for crops,
timeouts and reopen), V4L2, video files (pace, loop), source specs and auto-pick.

There is no Pi camera here, so ``picamera2`` is a THIN FAKE module injected into
``sys.modules``: it implements only the calls the source makes (configure/start/
``captured_request(wait=...)``/``make_array``/stop/close) and hands out real pixels — the
astronaut photo as the RGB888 main stream and its real YUV420 (I420) conversion as lores.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import RecordingSink, make_config, start, stop, wait_until

from feredge.edge.daemon.cameras import make_opener
from feredge.edge.daemon.config import CameraConfig, ConfigError
from feredge.edge.daemon.run import Daemon
from feredge.edge.detect import FaceDetector
from feredge.edge.errors import EdgeError
from feredge.edge.sources.reconnect import VideoFileSource
from feredge.edge.sources.spec import parse_spec

MAIN = (640, 480)


def fake_picamera2_module(main_bgr: np.ndarray, *, cameras: int = 1, fail_after: int | None = None):
    """The fake ``picamera2`` module; ``fail_after``: the first camera instance times out after
    that many frames (a wedged sensor), later instances work."""
    mod = types.ModuleType("picamera2")
    mod.instances = []  # type: ignore[attr-defined]

    class Request:
        def __init__(self, cam):
            self.cam = cam

        def make_array(self, name):
            if name == "main":
                return cv2.resize(main_bgr, self.cam.config["main"]["size"], interpolation=cv2.INTER_AREA)
            w, h = self.cam.config["lores"]["size"]
            small = cv2.resize(main_bgr, (w, h), interpolation=cv2.INTER_AREA)
            return cv2.cvtColor(small, cv2.COLOR_BGR2YUV_I420)  # (h * 3/2, w), Y plane first

    class Picamera2:
        @staticmethod
        def global_camera_info():
            return [{"Num": i, "Id": f"/base/imx708@{i}", "Model": "imx708"} for i in range(cameras)]

        def __init__(self, camera_num=0):
            self.num, self.config, self.started, self.closed, self.frames = camera_num, None, False, False, 0
            self.index = len(mod.instances)
            mod.instances.append(self)

        def create_video_configuration(self, main, lores, controls, buffer_count):
            assert main["format"] == "RGB888" and lores["format"] == "YUV420"
            return {"main": main, "lores": lores, "controls": controls}

        def configure(self, config):
            self.config = config

        def start(self):
            self.started = True

        @contextlib.contextmanager
        def captured_request(self, wait=None, flush=None):
            assert isinstance(wait, float) and wait > 0  # a timeout, never an endless wait
            if fail_after is not None and self.index == 0 and self.frames >= fail_after:
                time.sleep(min(wait, 0.05))
                raise TimeoutError("camera frontend timeout")
            self.frames += 1
            time.sleep(0.005)
            yield Request(self)

        def stop(self):
            self.started = False

        def close(self):
            self.closed = True

    mod.Picamera2 = Picamera2  # type: ignore[attr-defined]
    return mod


@pytest.fixture
def photo(astronaut_bgr):
    return astronaut_bgr


def test_picamera2_lores_detection_main_crops(monkeypatch, edge_model, photo):
    mod = fake_picamera2_module(photo)
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    rec = RecordingSink()
    cfg = make_config(edge_model, camera={"source": "picamera2", "width": MAIN[0], "height": MAIN[1]})
    d = Daemon(cfg, extra_sinks=[rec])
    t = start(d)
    try:
        assert wait_until(lambda: sum(1 for r in rec.frames if r["faces"]) >= 3, 120)
    finally:
        assert stop(d, t) == 0
    cam = mod.instances[0]
    assert cam.config["lores"]["size"] == (320, 240) and cam.config["main"]["size"] == MAIN
    assert cam.closed  # released on shutdown
    # The boxes were found on the 320x240 Y plane and scaled to main-stream pixels: they must
    # match what detection on the full-size frame finds.
    box = next(r for r in rec.frames if r["faces"])["faces"][0]["box"]
    full = FaceDetector().detect(cv2.resize(photo, MAIN, interpolation=cv2.INTER_AREA))
    assert full, "the astronaut's face must be found on the main frame"
    fx, fy, fw, fh = full[0]
    assert abs(box[0] - fx) < 0.25 * fw and abs(box[1] - fy) < 0.25 * fh and 0.7 < box[2] / fw < 1.4


def test_picamera2_timeout_reopens_camera(monkeypatch, edge_model, photo):
    mod = fake_picamera2_module(photo, fail_after=5)
    monkeypatch.setitem(sys.modules, "picamera2", mod)
    rec = RecordingSink()
    cfg = make_config(edge_model, camera={"source": "picamera2:0", "read_timeout": 0.5})
    d = Daemon(cfg, extra_sinks=[rec])
    t = start(d)
    try:
        assert wait_until(lambda: len(mod.instances) >= 2 and mod.instances[1].frames > 5, 120)
        assert [s[1] for s in rec.states][:3] == [True, False, True]
        assert "TimeoutError" in rec.states[1][2]
        assert mod.instances[0].closed  # the wedged camera was released before reopening
        assert d.metrics.value("feredge_camera_reconnects_total", camera="cam0") >= 1
    finally:
        assert stop(d, t) == 0


def test_picamera2_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a non-Pi machine
    opener, _, _ = make_opener(CameraConfig(source="picamera2"))
    with pytest.raises(EdgeError, match="apt install python3-picamera2"):
        opener()


def test_auto_picks_picamera2_when_present_else_v4l2(monkeypatch, photo):
    import feredge.edge.sources.v4l2 as v4l2

    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2_module(photo, cameras=1))
    opener, finite, live = make_opener(CameraConfig(source="auto"))
    src = opener()
    try:
        assert src.name == "picamera2:0" and live and not finite
    finally:
        src.close()
    monkeypatch.setitem(sys.modules, "picamera2", fake_picamera2_module(photo, cameras=0))
    monkeypatch.setattr(v4l2, "list_devices", lambda: [])
    with pytest.raises(EdgeError, match="no camera found"):
        opener()
    monkeypatch.setattr(v4l2, "list_devices", lambda: ["/dev/video97"])
    with pytest.raises(EdgeError, match="cannot open V4L2 camera 97"):  # real cv2.CAP_V4L2 open
        opener()


def test_source_specs():
    assert parse_spec("auto").kind == "auto"
    assert (parse_spec("picamera2:1").kind, parse_spec("picamera2:1").device) == ("picamera2", 1)
    for s, dev in (("/dev/video0", 0), ("v4l2:2", 2), ("0", 0), ("/dev/v4l/by-id/usb-cam", "/dev/v4l/by-id/usb-cam"),
                   ("v4l2:/dev/v4l/by-path/x", "/dev/v4l/by-path/x")):
        assert (parse_spec(s).kind, parse_spec(s).device) == ("v4l2", dev) and parse_spec(s).is_camera
    assert parse_spec("rtsp://cam/stream").kind == parse_spec("http://cam/mjpg").kind == "url"
    assert parse_spec("clip.mp4").kind == "path" and not parse_spec("clip.mp4").is_camera
    with pytest.raises(ConfigError, match="is not a file"):
        make_opener(CameraConfig(source="nope.mp4"))
    with pytest.raises(ConfigError, match="picamera2 index"):
        make_opener(CameraConfig(source="picamera2:x"))
    with pytest.raises(ConfigError, match=r"camera cam0: source 'v4l2:abc': use v4l2:N"):
        make_opener(CameraConfig(source="v4l2:abc"))
    with pytest.raises(ConfigError, match=r"ftp:// is not a stream OpenCV can read"):
        make_opener(CameraConfig(source="ftp://user:pw@host/x.mp4"))


def test_v4l2_missing_device_is_a_clear_error():
    opener, finite, live = make_opener(CameraConfig(source="/dev/video99"))
    assert live and not finite
    with pytest.raises(EdgeError, match="cannot open V4L2 camera 99"):
        opener()


def test_video_file_loop_and_pace(woman_video: Path):
    src = VideoFileSource(woman_video, pace="fast", loop=True)
    n_file = src._src.frame_count
    idx = []
    for f in src:
        idx.append(f.index)
        if len(idx) == n_file + 10:
            break
    src.close()
    assert idx == list(range(n_file + 10))  # indices keep counting across the loop

    src = VideoFileSource(woman_video, pace="realtime")
    t0 = time.monotonic()
    frames = []
    for f in src:
        frames.append(f)
        if len(frames) == 16:
            break
    elapsed = time.monotonic() - t0
    src.close()
    video_time = frames[-1].pts - frames[0].pts
    assert elapsed >= 0.9 * video_time  # never faster than the video's own clock
