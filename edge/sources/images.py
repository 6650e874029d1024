"""Still images: one file or a folder (recursive, sorted so runs are reproducible)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2

from edge.errors import EdgeError
from edge.sources import IMAGE_EXTENSIONS, Frame

log = logging.getLogger(__name__)


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
            img = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if img is None:
                if len(self.paths) == 1:
                    raise EdgeError(f"cannot read image {p} (not an image OpenCV can decode)")
                log.warning("skipping unreadable image %s", p)
                self.skipped += 1
                continue
            yield Frame(image=img, index=index, ts=time.time(), source=str(p))
            index += 1

    def close(self) -> None:
        pass
