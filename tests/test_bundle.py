"""``feredge bundle`` and the bundle's install.sh refusals, on this (x86_64) machine.

The bundle's wheels are really resolved from PyPI for aarch64 (pip's cache under .cache/pip keeps
reruns fast). What needs an arm64 Python (the install itself, classify) is in test_qemu_arm64.py.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import CACHE, need

from feredge.edge.cli.main import main
from feredge.export.bundle.build import TARGETS, build_bundle

ROOT = Path(__file__).resolve().parents[1]
EXEC = "/opt/feredge/venv/bin/feredge"
PIP_CACHE = CACHE / "pip"


def _wheel_tags(name: str) -> tuple[str, str, str]:
    python, abi, plat = name[:-4].split("-")[-3:]
    return python, abi, plat


@pytest.fixture(scope="module")
def bookworm_bundle(tmp_path_factory, edge_tiny_model) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "rpi-bookworm-arm64"
    build_bundle("rpi-bookworm-arm64", out, model=edge_tiny_model, pip_cache=PIP_CACHE)
    return out


def _linked_copy(src: Path, dst: Path) -> Path:
    """A copy made of hard links (the wheelhouse is ~70 MB); edit files by replacing them."""
    shutil.copytree(src, dst, copy_function=os.link)
    return dst


def _install(bundle: Path, root: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(bundle / "install.sh")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEREDGE_ROOT": str(root), "FEREDGE_NO_SYSTEMD": "1", **env})


# ---- what the bundle holds -------------------------------------------------------------------------

def test_bookworm_bundle_pins_numpy1_and_opencv_4_11(bookworm_bundle):
    meta = json.loads((bookworm_bundle / "bundle.json").read_text())
    assert meta["target"] == "rpi-bookworm-arm64" and meta["python"] == "3.11"
    pins = meta["pins"]
    assert int(pins["numpy"].split(".")[0]) == 1  # the apt picamera2 stack is built on numpy 1.x
    assert pins["opencv-python-headless"] == "4.11.0.86"
    assert "ai-edge-litert" in pins and "paho-mqtt" in pins and "prometheus-client" in pins and "feredge" in pins
    for whl in (bookworm_bundle / "wheelhouse").glob("*.whl"):
        _python, abi, plat = _wheel_tags(whl.name)
        assert plat == "any" or all(
            re.fullmatch(r"manylinux(2014|_2_(1[7-9]|2\d|3[0-6]))_aarch64", p) for p in plat.split(".")), whl.name
        assert abi in ("none", "abi3", "cp311"), whl.name


def test_lock_pins_every_wheel_with_its_hash(bookworm_bundle):
    lock = (bookworm_bundle / "requirements.lock").read_text().splitlines()
    entries = {}
    for line in lock:
        if line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-z0-9\-]+)(\[edge\])?==(\S+) --hash=sha256:([0-9a-f]{64})", line)
        assert m, line
        entries[m.group(1)] = (m.group(3), m.group(4))
    wheels = list((bookworm_bundle / "wheelhouse").glob("*.whl"))
    assert len(entries) == len(wheels) - 1  # all but pip (the installer itself)
    from feredge.edge.fsutil import sha256_file

    for whl in wheels:
        name = whl.name.split("-")[0].lower().replace("_", "-")
        if name != "pip":
            assert entries[name] == (whl.name.split("-")[1], sha256_file(whl)), whl.name
    # the feredge wheel is this checkout, with its package data
    fwheel = next((bookworm_bundle / "wheelhouse").glob("feredge-*.whl"))
    names = zipfile.ZipFile(fwheel).namelist()
    for name in ("feredge/edge/cli/main.py", "feredge/export/bundle/build.py", "feredge/edge/daemon/web/app.js",
                 "feredge/templates/bundle/install.sh", "feredge/templates/systemd/feredge.service"):
        assert name in names, name
    assert not [n for n in names if n.startswith(("edge/", "export/"))], "generic top-level packages in the wheel"


def test_checksums_cover_every_file(bookworm_bundle):
    listed = {}
    for line in (bookworm_bundle / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split("  ", 1)
        listed[rel] = digest
    files = {p.relative_to(bookworm_bundle).as_posix() for p in bookworm_bundle.rglob("*") if p.is_file()}
    assert set(listed) == files - {"SHA256SUMS"}
    for rel in ("install.sh", "uninstall.sh", "systemd/feredge.service", "systemd/feredge.sysusers.conf",
                "udev/99-feredge-coral.rules", "cloud-init/user-data", "set-hostname.sh", "config/config.toml",
                "model/tiny.int8.tflite", "model/tiny.json", "requirements.lock", "bundle.json"):
        assert rel in listed, rel
    assert os.access(bookworm_bundle / "install.sh", os.X_OK)
    r = subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "SHA256SUMS"], cwd=bookworm_bundle,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_bundled_config_uses_a_real_camera_and_the_bundled_model(bookworm_bundle):
    from feredge.edge.daemon.config import load

    cfg = load(bookworm_bundle / "config" / "config.toml")
    assert [c.source for c in cfg.camera] == ["auto"]
    assert str(cfg.model.path) == "/opt/feredge/model"


def test_bundled_unit_passes_systemd_analyze_verify(bookworm_bundle, tmp_path):
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze is not installed (apt install systemd)")
    # verify refuses an ExecStart that does not exist here: point a copy at a stub (as test_systemd.py).
    stub = tmp_path / "feredge"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = (bookworm_bundle / "systemd" / "feredge.service").read_text()
    assert EXEC in text
    unit = tmp_path / "feredge.service"
    unit.write_text(text.replace(EXEC, str(stub)))
    r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "feredge.service" not in r.stderr, r.stderr


def test_trixie_bundle_takes_current_wheels_for_python_313(tmp_path, edge_tiny_model):
    res = build_bundle("rpi-trixie-arm64", tmp_path / "trixie", model=edge_tiny_model, pip_cache=PIP_CACHE)
    assert int(res.pins["numpy"].split(".")[0]) >= 2
    assert res.pins["opencv-python-headless"] != "4.11.0.86"
    abis = {_wheel_tags(w.name)[1] for w in (tmp_path / "trixie" / "wheelhouse").glob("*.whl")}
    assert "cp313" in abis and "cp311" not in abis
    assert "manylinux_2_41_aarch64" in TARGETS["rpi-trixie-arm64"].platforms


# ---- bad input to `feredge bundle` -------------------------------------------------------------------

def _cli(capsys, *args) -> tuple[int, str]:
    rc = main(["bundle", *args])
    return rc, capsys.readouterr().err


def test_unknown_target_lists_the_known_ones(tmp_path, capsys, edge_tiny_model):
    rc, err = _cli(capsys, "--target", "rpi-buster-armhf", "--model", str(edge_tiny_model),
                   "--out", str(tmp_path / "b"))
    assert rc == 2
    assert "unknown target 'rpi-buster-armhf'; choose one of: rpi-bookworm-arm64, rpi-trixie-arm64" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_missing_model_path(tmp_path, capsys):
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--model", str(tmp_path / "nope"),
                   "--out", str(tmp_path / "b"))
    assert rc == 2 and f"model not found: {tmp_path / 'nope'}" in err and not (tmp_path / "b").exists()


def test_no_default_model_says_pass_model(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "edge"
    (empty / "data" / "default").mkdir(parents=True)
    import feredge.edge.model

    monkeypatch.setattr(feredge.edge.model.resources, "files", lambda pkg: empty)
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--out", str(tmp_path / "b"))
    assert rc == 2 and "no default model" in err and "pass --model" in err


def test_missing_wheel_is_named_and_nothing_is_left(tmp_path, capsys, edge_tiny_model):
    # docopt is published as an sdist only: --only-binary=:all: cannot find it for any platform.
    out = tmp_path / "b"
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--model", str(edge_tiny_model),
                   "--extra", "docopt==0.6.2", "--out", str(out))
    assert rc == 2, err
    assert "no wheel of docopt==0.6.2 for rpi-bookworm-arm64 (CPython 3.11, aarch64" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no bundle, no staging folder


def test_numpy2_on_bookworm_is_refused_naming_the_pin(tmp_path, capsys, edge_tiny_model):
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--model", str(edge_tiny_model),
                   "--extra", "numpy>=2", "--out", str(tmp_path / "b"))
    assert rc == 2, err
    assert "no wheel of numpy for rpi-bookworm-arm64" in err and "numpy<2" in err and "numpy>=2" in err
    assert len(err.strip().splitlines()) == 1 and list(tmp_path.iterdir()) == []


def test_out_that_is_not_a_bundle_is_not_replaced(tmp_path, capsys, edge_tiny_model):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "cat.jpg").write_bytes(b"x")
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--model", str(edge_tiny_model), "--out", str(out))
    assert rc == 2 and "is not a feredge bundle" in err
    assert [p.name for p in out.iterdir()] == ["cat.jpg"]


def test_bad_config_fails_the_build(tmp_path, capsys, edge_tiny_model):
    cfg = tmp_path / "config.toml"
    cfg.write_text("[model]\nbackend = 'auto'\nfrobnicate = 1\n")
    rc, err = _cli(capsys, "--target", "rpi-bookworm-arm64", "--model", str(edge_tiny_model),
                   "--config", str(cfg), "--out", str(tmp_path / "b"))
    assert rc == 2 and "frobnicate" in err and not (tmp_path / "b").exists()


# ---- install.sh refuses before it changes anything --------------------------------------------------

def test_install_refuses_an_edited_file(bookworm_bundle, tmp_path):
    b = _linked_copy(bookworm_bundle, tmp_path / "bundle")
    cfg = b / "config" / "config.toml"
    text = cfg.read_text()
    cfg.unlink()  # a new inode: the original bundle stays intact
    cfg.write_text(text.replace('source = "auto"', 'source = "rtsp://evil/"'))
    root = tmp_path / "root"
    root.mkdir()
    r = _install(b, root)
    assert r.returncode == 2
    assert "checksum mismatch, nothing was changed" in r.stderr and "config/config.toml: FAILED" in r.stderr
    assert list(root.iterdir()) == []


def test_install_refuses_an_unlisted_file(bookworm_bundle, tmp_path):
    b = _linked_copy(bookworm_bundle, tmp_path / "bundle")
    (b / "wheelhouse" / "numpy-9.9-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(b"PK")
    root = tmp_path / "root"
    root.mkdir()
    r = _install(b, root)
    assert r.returncode == 2 and "not listed in SHA256SUMS" in r.stderr and "numpy-9.9" in r.stderr
    assert list(root.iterdir()) == []


def test_install_refuses_the_wrong_python(bookworm_bundle, tmp_path):
    """This machine's Python is x86_64: the aarch64 bundle must say so, not half-install."""
    root = tmp_path / "root"
    root.mkdir()
    r = _install(bookworm_bundle, root, FEREDGE_PYTHON=sys.executable)
    assert r.returncode == 2
    here = f"Python {sys.version_info[0]}.{sys.version_info[1]} on {platform.machine()}"
    assert f"this bundle is for rpi-bookworm-arm64 (Python 3.11, aarch64) but {sys.executable} is {here}" in r.stderr
    assert list(root.iterdir()) == []


def _hostname_shims(tmp_path: Path, current: str, hostnamectl_works: bool) -> dict[str, str]:
    """``hostname`` and ``hostnamectl`` stand-ins that record calls: renaming this machine for real
    is not a test's business (make verify-boot runs the script on an emulated Pi for real)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "hostname").write_text(f'#!/bin/sh\n[ $# = 0 ] && echo {current} || echo "hostname $*" >> {calls}\n')
    (bin_dir / "hostnamectl").write_text(
        f'#!/bin/sh\necho "hostnamectl $*" >> {calls}\n' + ("" if hostnamectl_works else "exit 1\n"))
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FEREDGE_PYTHON": sys.executable,
            "PYTHONPATH": str(ROOT), "FEREDGE_ROOT": str(tmp_path)}


@pytest.mark.parametrize("hostnamectl_works", [True, False], ids=["hostnamectl", "no-dbus"])
def test_set_hostname_renames_a_default_pi_after_its_node_id(tmp_path, hostnamectl_works):
    from feredge.edge.daemon.identity import default_node_id

    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("raspberrypi\n")
    (tmp_path / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    env = _hostname_shims(tmp_path, "raspberrypi", hostnamectl_works)
    r = subprocess.run(["bash", str(ROOT / "bundle/set-hostname.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    new = default_node_id()
    assert r.stdout.strip() == f"feredge hostname: raspberrypi -> {new}"
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == f"hostnamectl set-hostname {new}"
    if hostnamectl_works:
        assert calls == [calls[0]]
    else:  # the fallback writes the static name and sets the running one
        assert calls[1:] == [f"hostname {new}"]
        assert (tmp_path / "etc/hostname").read_text() == new + "\n"
    assert (tmp_path / "etc/hosts").read_text() == f"127.0.0.1\tlocalhost\n127.0.1.1\t{new}\n"


def test_set_hostname_keeps_a_chosen_name(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("127.0.1.1\tkitchen\n")
    env = _hostname_shims(tmp_path, "kitchen", True)
    r = subprocess.run(["bash", str(ROOT / "bundle/set-hostname.sh")], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "feredge hostname: keeping kitchen"
    assert not (tmp_path / "calls").exists()
    assert (tmp_path / "etc/hosts").read_text() == "127.0.1.1\tkitchen\n"
