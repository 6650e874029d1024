"""Draw boxes and labels on frames, and write annotated images or videos atomically."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.errors import EdgeError
from feredge.edge.fsutil import atomic_path

log = logging.getLogger(__name__)

# BGR colours per common expression label; anything else is white.
COLORS = {
    "angry": (40, 40, 230), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 250),
    "sad": (200, 120, 40), "surprise": (230, 200, 40), "neutral": (200, 200, 200), "uncertain": (128, 128, 128),
}


def draw(image: np.ndarray, faces) -> np.ndarray:
    """A copy of ``image`` (grey or BGR) with each face's box and "label score" drawn."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    font_scale = max(0.4, min(out.shape[:2]) / 800)
    for f in faces:
        x, y, w, h = f.box
        p = f.prediction
        color = COLORS.get(p.label, (255, 255, 255))
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thick)
        text = f"{p.label} {p.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thick)
        ty = y - 4 if y - th - base - 4 > 0 else y + h + th + 4
        cv2.rectangle(out, (x, ty - th - base), (x + tw, ty + base), color, cv2.FILLED)
        cv2.putText(out, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), thick, cv2.LINE_AA)
    return out


def write_image(path: Path, image: np.ndarray) -> None:
    path = Path(path)
    try:
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:
            if not cv2.imwrite(str(tmp), image):
                raise EdgeError(f"cannot write annotated image {path} (unsupported extension?)")
    except OSError as e:
        raise EdgeError(f"cannot write annotated image {path}: {e.strerror or e}") from None


class VideoWriter:
    """mp4v video written to a temporary file and renamed into place on ``close(ok=True)``."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path = Path(path)
        self.fps = fps or 30.0
        self._ctx = None
        self._writer: cv2.VideoWriter | None = None
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        if self._writer is None:
            self._ctx = atomic_path(self.path, suffix=self.path.suffix or ".mp4")
            try:
                tmp = self._ctx.__enter__()
            except OSError as e:
                self._ctx = None
                raise EdgeError(f"cannot write video {self.path}: {e.strerror or e}") from None
            h, w = image.shape[:2]
            self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                self._ctx.__exit__(None, None, None)
                self._writer = None
                raise EdgeError(f"cannot write video {self.path} (OpenCV has no mp4v encoder for it)")
        self._writer.write(image)
        self.frames += 1

    def close(self, ok: bool = True) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        ctx, self._ctx = self._ctx, None
        if ok:
            ctx.__exit__(None, None, None)
        else:  # failure: the temporary file is removed, nothing appears at self.path
            with contextlib.suppress(RuntimeError):
                ctx.__exit__(EdgeError, EdgeError("aborted"), None)
