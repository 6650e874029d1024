"""Raspberry Pi camera through picamera2 (libcamera), for the daemon.

Two streams from one capture: the ``lores`` stream in YUV420, whose Y plane *is* a grey
image — detection runs on it with no colour conversion and no resize — and the ``main``
stream in ``RGB888`` (BGR byte order, what OpenCV expects) for full-resolution face crops.
``captured_request(wait=timeout)`` bounds every wait, so a wedged camera raises instead of
hanging the loop, and the request is always released back to libcamera.

``picamera2`` is imported only when this source is opened: it exists only on Raspberry Pi OS
(``apt install python3-picamera2``; a venv needs ``--system-site-packages`` to see it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from feredge.edge.errors import EdgeError, one_line
from feredge.edge.sources import Frame

log = logging.getLogger(__name__)


@dataclass
class DualFrame(Frame):
    """A frame with a separate, smaller grey image for detection (the lores Y plane)."""

    detect_gray: np.ndarray | None = None


def camera_present() -> bool:
    """True when picamera2 imports and libcamera lists a camera (used by ``source = "auto"``)."""
    try:
        from picamera2 import Picamera2
    except Exception:  # ImportError, or libcamera failing to load
        return False
    try:
        return bool(Picamera2.global_camera_info())
    except Exception:
        return False


class Picamera2Source:
    kind = "camera"

    def __init__(self, index: int = 0, *, width: int = 1280, height: int = 720, fps: float = 15.0,
                 lores_width: int = 320, timeout: float = 5.0) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise EdgeError("source picamera2 needs the picamera2 module: on Raspberry Pi OS run "
                            "`sudo apt install python3-picamera2` and create the venv with "
                            "--system-site-packages") from None
        self.name = f"picamera2:{index}"
        self.fps: float | None = fps
        self.timeout = timeout
        # lores must keep the main aspect ratio and even dimensions (YUV420 subsampling).
        lw = min(lores_width, width) // 2 * 2
        lh = max(2, round(height * lw / width) // 2 * 2)
        self.main_size, self.lores_size = (width, height), (lw, lh)
        try:
            cam = Picamera2(index)
        except (RuntimeError, IndexError) as e:
            raise EdgeError(f"cannot open Pi camera {index}: {one_line(e, with_type=False)}") from None
        try:
            config = cam.create_video_configuration(
                main={"size": self.main_size, "format": "RGB888"},
                lores={"size": self.lores_size, "format": "YUV420"},
                controls={"FrameRate": float(fps)},
                buffer_count=4,
            )
            cam.configure(config)
            cam.start()
        except Exception as e:
            cam.close()
            raise EdgeError(f"cannot start Pi camera {index}: {one_line(e, with_type=False)}") from None
        self._cam = cam

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        lw, lh = self.lores_size
        while True:
            # Raises TimeoutError when no frame comes within the timeout: the reconnect
            # wrapper marks the camera offline and reopens it.
            with self._cam.captured_request(wait=self.timeout) as req:
                main = req.make_array("main")
                lores = req.make_array("lores")
                # YUV420 arrives as (h * 3/2, stride): the first h rows are Y, the rest is
                # chroma; copy so the buffer can go back to libcamera.
                y = np.ascontiguousarray(lores[:lh, :lw])
                image = np.ascontiguousarray(main[:, :, :3])
            yield DualFrame(image=image, index=index, ts=time.time(), source=self.name, detect_gray=y)
            index += 1

    def close(self) -> None:
        try:
            self._cam.stop()
        except Exception as e:  # closing a camera that already failed
            log.debug("picamera2 stop: %s", e)
        try:
            self._cam.close()
        except Exception as e:
            log.debug("picamera2 close: %s", e)
