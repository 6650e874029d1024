"""Face detection with OpenCV's Haar frontal-face cascade.

Why Haar and not a neural detector: it needs no extra model file or runtime, runs in a few
milliseconds per frame on one Pi core when fed a downscaled grey image, and its misses are
well understood (profiles, strong tilt). Detection runs at ``detect_width`` pixels wide; boxes
are scaled back to full-frame pixels so crops for the classifier keep the full resolution.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError

log = logging.getLogger(__name__)

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
# Where Debian/Raspberry Pi OS (libopencv-data) and source builds put the cascades.
SYSTEM_CASCADE_DIRS = (
    "/usr/share/opencv4/haarcascades",
    "/usr/share/opencv/haarcascades",
    "/usr/local/share/opencv4/haarcascades",
)
# The cascade's own training window: asking for smaller faces finds nothing more.
_CASCADE_WINDOW = 24

Box = tuple[int, int, int, int]


@dataclass
class DetectorConfig:
    """``min_face`` is in full-frame pixels; ``detect_width`` = 0 detects at full resolution."""

    cascade: str | None = None  # file path or a cascade file name; None = frontal-face default
    detect_width: int = 320
    min_face: int = 40
    scale_factor: float = 1.1
    min_neighbors: int = 5
    equalize: bool = False  # histogram equalisation helps in dim or flat light, costs ~0.2 ms


def cascade_search_dirs() -> list[Path]:
    dirs = []
    data = getattr(cv2, "data", None)
    if data is not None and getattr(data, "haarcascades", None):
        dirs.append(Path(data.haarcascades))
    dirs.extend(Path(d) for d in SYSTEM_CASCADE_DIRS)
    return dirs


def find_cascade(cascade: str | os.PathLike[str] | None = None) -> Path:
    """Path of the cascade file: an explicit path, or a file name looked up in OpenCV's dirs."""
    if cascade is not None and (Path(cascade).is_file() or os.sep in str(cascade)):
        p = Path(cascade)
        if not p.is_file():
            raise EdgeError(f"cascade file not found: {p}")
        return p
    name = str(cascade) if cascade else DEFAULT_CASCADE
    for d in cascade_search_dirs():
        if (d / name).is_file():
            return d / name
    raise EdgeError(
        f"Haar cascade {name} not found in {', '.join(str(d) for d in cascade_search_dirs())}; "
        "pip install opencv-python-headless or apt install opencv-data, or pass --cascade PATH"
    )


class FaceDetector:
    """Find frontal faces; ``detect(frame)`` for BGR/grey frames, ``detect_gray(y)`` for a luma plane."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config or DetectorConfig()
        c = self.config
        if c.detect_width < 0 or c.min_face < 1 or c.scale_factor <= 1.0 or c.min_neighbors < 0:
            raise EdgeError(
                "detector settings out of range: detect_width >= 0, min_face >= 1, scale_factor > 1, "
                "min_neighbors >= 0"
            )
        self.cascade_path = find_cascade(c.cascade)
        try:
            self._cascade = cv2.CascadeClassifier(str(self.cascade_path))
        except (cv2.error, SystemError):  # OpenCV raises on some malformed XML instead of staying empty
            self._cascade = None
        if self._cascade is None or self._cascade.empty():
            raise EdgeError(f"{self.cascade_path} is not a usable OpenCV cascade file")

    def detect(self, frame: np.ndarray) -> list[Box]:
        """Face boxes (x, y, w, h) in ``frame`` pixels, largest first."""
        if frame.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            frame = cv2.cvtColor(frame, code)
        return self.detect_gray(frame)

    def detect_gray(self, gray: np.ndarray) -> list[Box]:
        """Like :meth:`detect` for a 2-D grey/luma image (e.g. the Y plane of a camera's YUV frame)."""
        c = self.config
        h, w = gray.shape[:2]
        scale = 1.0
        small = gray
        if c.detect_width and w > c.detect_width:
            scale = c.detect_width / w
            small = cv2.resize(gray, (c.detect_width, max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        if c.equalize:
            small = cv2.equalizeHist(small)
        min_px = max(_CASCADE_WINDOW, round(c.min_face * scale))
        found = self._cascade.detectMultiScale(
            small, scaleFactor=c.scale_factor, minNeighbors=c.min_neighbors, minSize=(min_px, min_px)
        )
        if len(found) == 0:
            return []
        inv = 1.0 / scale
        boxes = []
        for x, y, bw, bh in found:
            x0, y0 = round(x * inv), round(y * inv)
            bw2, bh2 = min(round(bw * inv), w - x0), min(round(bh * inv), h - y0)
            boxes.append((int(x0), int(y0), int(bw2), int(bh2)))
        boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
        return boxes
