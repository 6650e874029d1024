"""Still images: one file or a folder (recursive, sorted so runs are reproducible)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.sources import IMAGE_EXTENSIONS, Frame

log = logging.getLogger(__name__)


def read_image(path: Path) -> tuple[np.ndarray | None, list[str]]:
    """Decode an image file; the warnings say what libjpeg only mutters on stderr.

    A JPEG cut short (an interrupted copy or upload) still decodes, its missing rows grey, and
    faces in the lost part vanish without a word; its end-of-image marker is gone, which is
    what is checked here (``cv2.imread``: ``imdecode`` refuses such a file outright)."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    warnings = []
    if img is not None and _truncated_jpeg(Path(path)):
        warnings.append("truncated JPEG (no end-of-image marker): its lower part is missing")
    return img, warnings


def _truncated_jpeg(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            if f.read(3) != b"\xff\xd8\xff":
                return False
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read()
    except OSError:
        return False
    return not tail.rstrip(b"\x00").endswith(b"\xff\xd9")


class ImageSource:
    """Frames from image files. Each frame's ``source`` is its own file path, so JSON lines say
    which photo a face came from. An unreadable file in a folder is skipped with a warning; a
    single unreadable file is an error."""

    kind = "images"
    fps = None

    def __init__(self, paths: Sequence[Path], name: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.name = name
        self.skipped = 0

    @classmethod
    def from_folder(cls, folder: Path) -> ImageSource:
        paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise EdgeError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder}")
        return cls(paths, name=str(folder))

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        for p in self.paths:
            img, warnings = read_image(p)
            if img is None:
                if len(self.paths) == 1:
                    raise EdgeError(f"cannot read image {p} (not an image OpenCV can decode)")
                log.warning("skipping unreadable image %s", p)
                self.skipped += 1
                continue
            for w in warnings:
                log.warning("%s: %s", p, w)
            yield Frame(image=img, index=index, ts=time.time(), source=str(p), warnings=warnings)
            index += 1

    def close(self) -> None:
        pass
