"""A camera by index (``0`` = /dev/video0) or a stream URL (rtsp://, http://), via OpenCV.

This is the simple source for ``feredge classify``: it stops when the camera stops. The daemon
has its own reconnecting and picamera2 sources for unattended use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import cv2

from edge.errors import EdgeError
from edge.sources import Frame

log = logging.getLogger(__name__)


class CameraSource:
    kind = "camera"

    def __init__(self, spec: str | int, width: int | None = None, height: int | None = None) -> None:
        s = str(spec)
        if s.startswith("/dev/video") and s[len("/dev/video"):].isdigit():
            s = s[len("/dev/video"):]
        self.name = f"camera:{s}" if s.isdigit() else s
        target: int | str = int(s) if s.isdigit() else s
        self._cap = cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            hint = "check `feredge doctor` for cameras seen" if isinstance(target, int) else "check the URL"
            raise EdgeError(f"cannot open camera {spec!r}; {hint}")
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
