"""The wheel as a packager gets it: built from this checkout, installed (not editable) into a fresh venv,
and every command run from there, outside the checkout.

The fresh venv borrows the third-party dependencies of the test's own venv through a ``.pth`` line
(installing TensorFlow again would take minutes); feredge itself comes only from the wheel, which the
first test proves. ``feredge bundle`` resolves the Pi's wheels from PyPI like test_bundle.py does, with
the same pip cache.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
from helpers import CACHE, ROOT, need

pytestmark = pytest.mark.slow
EXEC = "/opt/feredge/venv/bin/feredge"  # the unit's ExecStart on a Pi


def _venv(path: Path) -> Path:
    venv.create(path, with_pip=True)
    site = next((path / "lib").glob("python3*/site-packages"))
    (site / "_feredge_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built the way `feredge bundle` builds it from a checkout, after leaving a stale module in
    setuptools' scratch folder (which setuptools would pack: a module deleted since the last build)."""
    from feredge.export.bundle.build import build_feredge_wheel

    stale = ROOT / "build" / "lib" / "edge" / "stale.py"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("x = 1\n")
    return build_feredge_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheel: Path) -> Path:
    bin_dir = _venv(tmp_path_factory.mktemp("venv") / "v")
    r = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return bin_dir


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_CACHE_DIR": str(CACHE / "pip"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(bin_dir / "feredge"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=timeout)


def test_wheel_holds_one_import_root_and_its_package_data(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"feredge"}, tops  # no generic top-level `edge` or `export`
    for name in ("feredge/edge/daemon/web/index.html", "feredge/edge/data/default/",
                 "feredge/templates/bundle/install.sh", "feredge/templates/bundle/user-data",
                 "feredge/templates/systemd/feredge.service", "feredge/templates/systemd/feredge.sysusers.conf",
                 "feredge/templates/systemd/config.example.toml"):
        assert any(n.startswith(name) for n in names), name


def test_installed_wheel_is_what_runs(installed: Path, tmp_path: Path):
    probe = "import feredge.edge.cli.main as m; print(m.__file__)"
    r = subprocess.run([str(installed / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Path(r.stdout.strip()).is_relative_to(installed.parent), r.stdout
    assert _run(installed, "--version", cwd=tmp_path).stdout.strip().startswith("feredge ")
    r = subprocess.run([str(installed / "python"), "-m", "feredge", "--version"], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("feredge "), r.stderr
    # from inside a checkout too (`python -m` puts the working directory first on sys.path): nothing
    # there may shadow the installed package, as a top-level feredge/ folder once did
    r = subprocess.run([str(installed / "python"), "-m", "feredge", "--version"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("feredge "), r.stderr
    r = subprocess.run([str(installed / "python"), "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert Path(r.stdout.strip()).is_relative_to(installed.parent), r.stdout + r.stderr


def test_doctor_and_classify_from_the_wheel(installed: Path, tmp_path: Path, astronaut_bgr):
    import cv2

    r = _run(installed, "doctor", cwd=tmp_path)
    assert "model" in r.stdout and "Traceback" not in r.stderr, r.stdout + r.stderr
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), astronaut_bgr)
    r = _run(installed, "classify", "--json", str(img), cwd=tmp_path)  # the default model, from package data
    assert r.returncode == 0, r.stderr
    faces = [f for line in r.stdout.splitlines() for f in json.loads(line)["faces"]]
    assert len(faces) == 1 and faces[0]["label"], r.stdout


def test_export_from_the_wheel(installed: Path, tmp_path: Path):
    import cv2
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7, activation="softmax")])
    model.save(tmp_path / "m.keras")
    faces = tmp_path / "faces"
    faces.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(faces / f"{i}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    r = _run(installed, "export", str(tmp_path / "m.keras"), "--calibration", str(faces), "--samples", "20",
             "--selection-samples", "0", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "out" / "m.int8.tflite").is_file() and (tmp_path / "out" / "m.json").is_file()


def test_bundle_from_the_wheel(installed: Path, tmp_path: Path):
    out = tmp_path / "b"
    r = _run(installed, "bundle", "--target", "rpi-bookworm-arm64", "--out", str(out), cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    for rel in ("install.sh", "uninstall.sh", "set-hostname.sh", "cloud-init/user-data", "udev/99-feredge-coral.rules",
                "systemd/feredge.service", "systemd/feredge.sysusers.conf", "config/config.toml"):
        assert (out / rel).is_file(), rel
    # the unit verifies, its ExecStart pointed at the feredge this wheel installed
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze is not installed (apt install systemd)")
    unit = tmp_path / "feredge.service"
    unit.write_text((out / "systemd/feredge.service").read_text().replace(EXEC, str(installed / "feredge")))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "feredge.service" not in r.stderr, r.stderr
    # the bundle carries feredge itself: the installed wheel, re-packed, installable again
    fwheel = next((out / "wheelhouse").glob("feredge-*.whl"))
    names = zipfile.ZipFile(fwheel).namelist()
    assert "feredge/templates/bundle/install.sh" in names and "feredge/edge/cli/main.py" in names
    bin2 = _venv(tmp_path / "again")
    r = subprocess.run([str(bin2 / "python"), "-m", "pip", "install", "--no-deps", "-q", str(fwheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _run(bin2, "--version", cwd=tmp_path).returncode == 0
