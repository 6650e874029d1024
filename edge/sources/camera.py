"""A camera by index (``0`` = /dev/video0), device path or a stream URL (rtsp://, http://), via OpenCV.

This is the simple source for ``feredge classify``: it stops when the camera stops. The daemon
has its own reconnecting and picamera2 sources for unattended use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import cv2

from feredge.edge.errors import EdgeError
from feredge.edge.sources import Frame
from feredge.edge.sources.spec import SourceSpec, parse_spec, with_password

log = logging.getLogger(__name__)


class CameraSource:
    kind = "camera"

    def __init__(self, spec: SourceSpec | str | int, width: int | None = None, height: int | None = None,
                 password: str | None = None) -> None:
        """``password`` goes into the URL only for opening it; ``name`` and errors never show it."""
        spec = spec if isinstance(spec, SourceSpec) else parse_spec(spec)
        if spec.kind == "url":
            target: int | str = with_password(spec.raw, password) if password else spec.raw
            self.name = spec.display
        elif spec.kind == "v4l2" and spec.device is not None:
            target = spec.device
            self.name = f"camera:{target}" if isinstance(target, int) else str(target)
        else:  # auto / picamera2 need the daemon's openers (feredge.edge.daemon.cameras)
            raise EdgeError(f"{spec.display!r} is a `feredge run` source; here use a camera number, /dev/video* "
                            "or a stream URL")
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            hint = "check `feredge doctor` for cameras seen" if spec.kind == "v4l2" else "check the URL"
            raise EdgeError(f"cannot open camera {spec.display!r}; {hint}")
        if width:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(fps) if fps and 0 < fps < 240 else None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, img = self._cap.read()
            if not ok:
                log.warning("%s stopped delivering frames after %d", self.name, index)
                break
            yield Frame(image=img, index=index, ts=time.time(), source=self.name)
            index += 1

    def close(self) -> None:
        self._cap.release()
