"""Face detection with OpenCV's Haar frontal-face cascade.

Why Haar and not a neural detector: it needs no extra model file or runtime, runs in a few
milliseconds per frame on one Pi core when fed a downscaled grey image, and its misses are
well understood (profiles, strong tilt). Detection runs at ``detect_width`` pixels wide; boxes
are scaled back to full-frame pixels so crops for the classifier keep the full resolution.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.errors import EdgeError
from feredge.edge.rules import at_least, broken, ruled

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

Box = tuple[int, int, int, int]  # x, y, w, h in full-frame pixels


@dataclass
class DetectorConfig:
    """The Haar detector's settings, for ``feredge classify`` and the daemon alike.

    ``min_face`` is in full-frame pixels; ``detect_width`` = 0 detects at full resolution."""

    cascade: str | None = None  # file path or a cascade file name; None = frontal-face default
    detect_width: int = ruled(320, at_least(0), ">= 0 (0 = full size)")
    min_face: int = ruled(40, at_least(1), ">= 1")
    scale_factor: float = ruled(1.1, lambda v: v > 1.0, "> 1")
    min_neighbors: int = ruled(5, at_least(0), ">= 0")
    equalize: bool = False  # histogram equalisation helps in dim or flat light, costs ~0.2 ms
    # Between full-frame searches, known faces are re-found near their last box (much cheaper);
    # a full search runs every this many frames, and whenever a known face is lost.
    redetect_every: int = ruled(10, at_least(1), ">= 1")


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes: 0 apart, 1 identical."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


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
        for name, value, must in broken(c):  # the rules on DetectorConfig's fields
            raise EdgeError(f"detector settings out of range: {name} = {value}: must be {must}")
        self.cascade_path = find_cascade(c.cascade)
        try:
            self._cascade = cv2.CascadeClassifier(str(self.cascade_path))
        except (cv2.error, SystemError):  # OpenCV raises on some malformed XML instead of staying empty
            self._cascade = None
        if self._cascade is None or self._cascade.empty():
            raise EdgeError(f"{self.cascade_path} is not a usable OpenCV cascade file")

    def detect(self, frame: np.ndarray, still: bool = False) -> list[Box]:
        """Face boxes (x, y, w, h) in ``frame`` pixels, largest first."""
        if frame.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            frame = cv2.cvtColor(frame, code)
        return self.detect_gray(frame, still)

    def _scale(self, width: int, still: bool = False) -> float:
        """Detection scale for a frame ``width`` wide. For a still photo the scale is raised until
        ``min_face`` is at least the cascade's 24-px window (a 2,400-px group photo at 320 px
        would hide every face under 180 px); video keeps ``detect_width``, for speed."""
        c = self.config
        scale = c.detect_width / width if c.detect_width and width > c.detect_width else 1.0
        if still:
            scale = min(1.0, max(scale, _CASCADE_WINDOW / c.min_face))
        return scale

    def smallest_face(self, width: int) -> int:
        """The smallest face (full-frame pixels) found in a ``width``-px video frame."""
        return max(self.config.min_face, round(_CASCADE_WINDOW / self._scale(width)))

    def _run(self, small: np.ndarray, min_px: int, max_px: int = 0) -> np.ndarray:
        c = self.config
        if c.equalize:
            small = cv2.equalizeHist(small)
        found = self._cascade.detectMultiScale(
            small, scaleFactor=c.scale_factor, minNeighbors=c.min_neighbors,
            minSize=(min_px, min_px), maxSize=(max_px, max_px) if max_px else (0, 0),
        )
        return np.asarray(found, dtype=np.float64).reshape(-1, 4)

    def detect_gray(self, gray: np.ndarray, still: bool = False) -> list[Box]:
        """Like :meth:`detect` for a 2-D grey/luma image (e.g. the Y plane of a camera's YUV frame);
        ``still``: a photo, searched at the scale its smallest face needs (see :meth:`_scale`)."""
        h, w = gray.shape[:2]
        scale = self._scale(w, still)
        small = gray
        if scale != 1.0:
            small = cv2.resize(gray, (round(w * scale), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        min_px = max(_CASCADE_WINDOW, round(self.config.min_face * scale))
        return _to_boxes(self._run(small, min_px), 0, 0, scale, w, h)

    def detect_near(
        self, gray: np.ndarray, previous: list[Box], grow: float = 0.5, size_range: tuple[float, float] = (0.7, 1.4)
    ) -> list[Box] | None:
        """Re-find faces only around ``previous`` boxes (the last frame's), at sizes close to theirs.

        Why: in video consecutive frames barely differ, and scanning a small region at a few
        scales costs a few percent of a full-frame search. Returns None as soon as one previous
        face is not re-found there (it moved fast or left) so the caller runs a full search;
        faces that newly appear are only found by the caller's periodic full search.
        """
        h, w = gray.shape[:2]
        scale = self._scale(w)
        out: list[Box] = []
        for x, y, bw, bh in previous:
            gx, gy = round(bw * grow), round(bh * grow)
            x0, y0 = max(0, x - gx), max(0, y - gy)
            x1, y1 = min(w, x + bw + gx), min(h, y + bh + gy)
            roi = gray[y0:y1, x0:x1]
            if scale != 1.0:
                roi = cv2.resize(roi, (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))),
                                 interpolation=cv2.INTER_AREA)
            size = min(bw, bh) * scale
            min_px = max(_CASCADE_WINDOW, round(self.config.min_face * scale), int(size * size_range[0]))
            max_px = max(min_px + 1, round(max(bw, bh) * scale * size_range[1]))
            if min(roi.shape[:2]) < min_px:
                return None
            found = _to_boxes(self._run(roi, min_px, max_px), x0, y0, scale, w, h)
            if not found:
                return None
            cx, cy = x + bw / 2, y + bh / 2  # the one closest to where the face was
            best = min(found, key=lambda b: (b[0] + b[2] / 2 - cx) ** 2 + (b[1] + b[3] / 2 - cy) ** 2)
            if all(iou(best, o) < 0.5 for o in out):
                out.append(best)
        out.sort(key=lambda b: b[2] * b[3], reverse=True)
        return out


def _to_boxes(found: np.ndarray, ox: int, oy: int, scale: float, w: int, h: int) -> list[Box]:
    """Detection-scale boxes -> full-frame pixel boxes (offset by the region's origin), largest first."""
    inv = 1.0 / scale
    boxes = []
    for fx, fy, fw, fh in found:
        x0, y0 = ox + round(fx * inv), oy + round(fy * inv)
        boxes.append((int(x0), int(y0), int(min(round(fw * inv), w - x0)), int(min(round(fh * inv), h - y0))))
    boxes.sort(key=lambda b: b[2] * b[3], reverse=True)
    return boxes
