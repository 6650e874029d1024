"""Still images: one file or a folder (recursive, sorted so runs are reproducible)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.errors import EdgeError
from feredge.edge.sources import IMAGE_EXTENSIONS, Frame

log = logging.getLogger(__name__)


# Larger images are refused before decoding: a 1.2 MB PNG of 20000x20000 decodes to 1.2 GB of BGR,
# and face search on it took 8.9 GB. 64 M pixels holds any camera photo (a 50 MP phone: 8160x6120).
MAX_PIXELS = 64_000_000


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF, BMP or WebP header without decoding, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
            if head[:6] in (b"GIF87a", b"GIF89a"):
                return int.from_bytes(head[6:8], "little"), int.from_bytes(head[8:10], "little")
            if head[:2] == b"BM" and len(head) >= 26:
                return abs(int.from_bytes(head[18:22], "little", signed=True)), abs(
                    int.from_bytes(head[22:26], "little", signed=True))
            if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
                return _webp_size(head)
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
    except OSError:
        return None
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    kind = head[12:16]
    if kind == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if kind == b"VP8 ":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if kind == b"VP8L":
        b = int.from_bytes(head[21:25], "little")
        return 1 + (b & 0x3FFF), 1 + ((b >> 14) & 0x3FFF)
    return None


def _jpeg_size(f) -> tuple[int, int] | None:
    """Walk the JPEG markers to the first start-of-frame (its height and width)."""
    f.seek(2)
    for _ in range(10000):
        b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None
        length = int.from_bytes(seg, "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            d = f.read(5)
            return (int.from_bytes(d[3:5], "big"), int.from_bytes(d[1:3], "big")) if len(d) == 5 else None
        f.seek(length - 2, 1)
    return None


def check_size(path: Path) -> None:
    """Refuse an image whose header declares more than :data:`MAX_PIXELS`, before decoding it."""
    size = image_size(path)
    if size is not None and size[0] * size[1] > MAX_PIXELS:
        raise EdgeError(f"image {path} is {size[0]}x{size[1]} pixels, more than the {MAX_PIXELS // 1_000_000} M "
                        "pixels feredge decodes (a decompression bomb, or resize it first)")


def read_image(path: str | os.PathLike[str], *, keep_grey: bool = False,
               strict: bool = False) -> tuple[np.ndarray | None, list[str]]:
    """Decode an image file (the one reader: classify, the daemon and export calibration use it);
    the warnings say what libjpeg only mutters on stderr.

    A JPEG cut short (an interrupted copy or upload) still decodes, its missing rows grey, and
    faces in the lost part vanish without a word; its end-of-image marker is gone, which is
    what is checked here (``cv2.imread``: ``imdecode`` refuses such a file outright). Images
    over :data:`MAX_PIXELS` raise :class:`EdgeError` before decoding (OpenCV's own limit,
    ``OPENCV_IO_MAX_IMAGE_PIXELS``, is set to the same for formats without a header check).
    ``keep_grey``: a grey file stays 2-D instead of becoming BGR. ``strict``: anything doubtful
    (too many pixels, a truncated JPEG) is ``None`` instead of an error or a warning, never an
    exception, for a calibration set that would rather lose an image than fit ranges to half a
    grey one. An unreadable file is ``None`` either way."""
    path = Path(path)
    try:
        check_size(path)
    except EdgeError as e:
        if strict:
            return None, [str(e)]
        raise
    img = cv2.imread(str(path), cv2.IMREAD_ANYCOLOR if keep_grey else cv2.IMREAD_COLOR)
    warnings = []
    if img is not None and _truncated_jpeg(path):
        warnings.append("truncated JPEG (no end-of-image marker): its lower part is missing")
    return (None if strict and warnings else img), warnings


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
            try:
                img, warnings = read_image(p)
            except EdgeError as e:
                if len(self.paths) == 1:
                    raise
                log.warning("skipping %s", e)
                self.skipped += 1
                continue
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
