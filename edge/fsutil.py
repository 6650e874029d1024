"""Atomic file writing: a reader never sees a half-written file, a failure leaves nothing."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (/proc), since setting
    and restoring it races with files other threads create meanwhile."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)  # elsewhere: set and restore, restrictive in between
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    The temporary file lives in the same folder so the final ``os.replace`` is atomic. mkstemp
    makes it 0600; it gets the mode a plain ``open()`` would have given (0666 less the umask),
    so a model or report written for a service user stays readable by it.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


# A job killed before its ``finally`` (a native crash) leaves this behind: feredge.export.isolate removes it.
STAGING_PREFIX = ".feredge-staging-"


@contextlib.contextmanager
def staging_dir(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden scratch folder inside ``out_dir``; files are moved into ``out_dir`` by
    :func:`publish` and the folder is removed whatever happens, so a failed run leaves nothing."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # The PID in the name: a parent cleaning up after its killed child removes that child's folder
    # only, never a concurrent export's into the same folder.
    stage = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=out))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def publish(stage: Path, out_dir: str | os.PathLike[str]) -> list[Path]:
    """Move every file of ``stage`` into ``out_dir`` (each move an atomic rename).

    A folder that replaces one is swapped in by two renames (the old one aside, the new one in)
    and the old one deleted afterwards, so a reader finds the old folder or the new one whole,
    missing only for the instant between the renames, however large it is."""
    moved = []
    for src in sorted(p for p in stage.iterdir()):
        dst = Path(out_dir) / src.name
        old = None
        if dst.is_dir() and src.is_dir():
            old = dst.with_name(f"{STAGING_PREFIX}{os.getpid()}-old-{dst.name}")
            os.replace(dst, old)
        os.replace(src, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        moved.append(dst)
    return moved
