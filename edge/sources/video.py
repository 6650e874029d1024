"""Video files, decoded by OpenCV (FFmpeg) as fast as possible — no pacing to real time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from feredge.edge.errors import EdgeError
from feredge.edge.sources import Frame


class VideoSource:
    """Frames of a video file; ``pts`` comes from the container (falls back to index / fps)."""

    kind = "video"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.name = str(path)
        self._cap = cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise EdgeError(f"cannot open {path} as an image or video (unknown format or unreadable file)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(fps) if fps and fps > 0 else None
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = n if n > 0 else None

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        cap = self._cap
        while True:
            ok, img = cap.read()
            if not ok:
                break
            pts = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if pts <= 0 and index > 0 and self.fps:
                pts = index / self.fps
            yield Frame(image=img, index=index, ts=time.time(), source=self.name, pts=round(pts, 6))
            index += 1

    def close(self) -> None:
        self._cap.release()
