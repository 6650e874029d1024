"""Frame sources: one small plug-in module per kind of input.

Every source is an iterable of :class:`Frame` with a ``close()``; ``open_source(spec)`` picks
the plug-in from the spec (an image, a folder of images, a video file, a camera index or a
stream URL). The daemon adds its own sources (picamera2, reconnecting cameras) with the same
shape, so the pipeline never cares where a frame came from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from feredge.edge.errors import EdgeError
from feredge.edge.sources.spec import IMAGE_EXTENSIONS, is_image_path, parse_spec

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".h264"})


@dataclass
class Frame:
    """One picture. ``image`` is HxWx3 BGR uint8 (what OpenCV decodes); ``index`` counts from 0
    per source; ``ts`` is wall-clock Unix seconds when the frame was obtained; ``pts`` is the
    presentation time in seconds inside a video file (None for images and cameras)."""

    image: np.ndarray
    index: int
    ts: float
    source: str
    pts: float | None = None
    # What the decoder let through but the user should know (e.g. a truncated JPEG).
    warnings: list[str] = field(default_factory=list)


@runtime_checkable
class FrameSource(Protocol):
    """An iterable of frames that owns a device or file handle until ``close()``.

    ``kind`` is "images", "video" or "camera"; ``fps`` is the nominal rate (None if unknown),
    used to write annotated videos at the input's speed.
    """

    name: str
    kind: str
    fps: float | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def input_kind(spec: str | int | os.PathLike[str]) -> str:
    """``camera`` | ``images`` | ``video``: what :func:`open_source` makes of a spec, without opening it."""
    if not isinstance(spec, os.PathLike) and parse_spec(spec).is_camera:
        return "camera"
    p = Path(spec)
    return "images" if p.is_dir() or is_image_path(p) else "video"


def open_source(spec: str | int | os.PathLike[str]) -> FrameSource:
    """Open a frame source from a command-line style spec; missing input is an :class:`EdgeError`."""
    kind = input_kind(spec)
    if kind == "camera":
        from feredge.edge.sources.camera import CameraSource

        return CameraSource(parse_spec(spec))
    p = Path(spec)
    if not p.exists():
        raise EdgeError(f"input not found: {p}")
    if not (p.is_file() or p.is_dir()):
        # A FIFO blocks in open() forever, and OpenCV then retries with another backend
        raise EdgeError(f"input {p} is not a regular file or a folder (a pipe, socket or device); "
                        "cameras are given as /dev/videoN or a URL")
    if kind == "images":
        from feredge.edge.sources.images import ImageSource

        return ImageSource.from_folder(p) if p.is_dir() else ImageSource([p], name=str(p))
    from feredge.edge.sources.video import VideoSource

    return VideoSource(p)


__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Frame", "FrameSource", "input_kind", "is_image_path", "open_source",
           "parse_spec"]
