"""USB cameras through V4L2 (``cv2.CAP_V4L2``), set up for a daemon.

Why these settings: MJPG lets a USB 2 webcam deliver 720p at full rate (raw YUYV would not
fit the bus); a one-buffer queue means each read returns the newest frame instead of one
that waited in the driver, so expressions are reported as they happen, not seconds late.
Reopening after a failure is the reconnect wrapper's job (:mod:`feredge.edge.sources.reconnect`).
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Iterator

import cv2

from feredge.edge.errors import EdgeError
from feredge.edge.sources import Frame

log = logging.getLogger(__name__)


def list_devices() -> list[str]:
    return sorted(glob.glob("/dev/video*"), key=lambda p: (len(p), p))


class V4l2Source:
    kind = "camera"

    def __init__(self, device: str | int, *, width: int = 1280, height: int = 720, fps: float = 15.0,
                 fourcc: str = "MJPG") -> None:
        self.name = f"v4l2:{device}"
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise EdgeError(f"cannot open V4L2 camera {device!r} (seen: {', '.join(list_devices()) or 'none'})")
        cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*fourcc))
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        got = cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(got) if got and 0 < got < 240 else fps
        log.info("%s: %dx%d @ %.1f fps", self.name, int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                 int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), self.fps or 0)
        self._cap = cap

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, img = self._cap.read()
            if not ok:
                # Unplugged or wedged: end the iteration; the wrapper reopens with backoff.
                raise EdgeError(f"{self.name} stopped delivering frames after {index}")
            yield Frame(image=img, index=index, ts=time.time(), source=self.name)
            index += 1

    def close(self) -> None:
        self._cap.release()
