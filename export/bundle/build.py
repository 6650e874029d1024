"""Build an offline install bundle for a 64-bit Raspberry Pi: wheels, model, config, service, installer.

The Pi never talks to PyPI: every wheel it needs is resolved here for its exact Python and
architecture, pinned with hashes, and checked by install.sh against SHA256SUMS before anything
on the Pi changes. Copy the folder to the SD card's boot partition (see docs/flash-a-pi.md).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path

import feredge
from feredge import __version__
from feredge.edge.errors import EdgeError, FeredgeError, one_line
from feredge.edge.fsutil import publish, sha256_file, staging_dir
from feredge.export.errors import ExportError

log = logging.getLogger(__name__)

# A source checkout holds pyproject.toml two levels above src/feredge/; a wheel install does not.
CHECKOUT = Path(feredge.__file__).resolve().parents[2]
BUNDLE_FORMAT = 1


def template(rel: str) -> Path:
    """``bundle/…`` or ``systemd/…``: a checkout's top-level folders, shipped in the wheel as the package
    data of ``feredge.templates.*``, so one lookup serves a wheel install and a checkout alike."""
    folder, _, name = rel.partition("/")
    return Path(str(resources.files(f"feredge.templates.{folder}") / name))


@dataclass(frozen=True)
class Target:
    """One Raspberry Pi OS release: its Python and glibc decide which wheels can run there."""

    name: str
    debian: str
    python: str  # "3.11"
    glibc: tuple[int, int]  # newest manylinux tag the OS's glibc satisfies
    # Pins forced by the OS's apt packages that share the venv (--system-site-packages).
    constraints: tuple[str, ...] = ()

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def platforms(self) -> list[str]:
        """Every manylinux tag the target's glibc accepts, spelled out: pip matches --platform
        literally, so manylinux_2_28 wheels are missed unless 2_28 itself is listed."""
        major, newest = self.glibc
        tags = ["manylinux2014_aarch64"]
        tags += [f"manylinux_{major}_{minor}_aarch64" for minor in range(17, newest + 1)]
        return tags


TARGETS: dict[str, Target] = {
    # Bookworm's apt python3-picamera2 (and simplejpeg, libcamera bindings) are built against
    # numpy 1.x; numpy 2 in the venv would shadow it and break `import picamera2`.
    # opencv-python-headless 4.12+ requires numpy 2, so 4.11.0.86 is the last one that fits.
    "rpi-bookworm-arm64": Target("rpi-bookworm-arm64", "bookworm", "3.11", (2, 36),
                                 ("numpy<2", "opencv-python-headless==4.11.0.86")),
    # Trixie's apt numpy is 2.x: current wheels fit.
    "rpi-trixie-arm64": Target("rpi-trixie-arm64", "trixie", "3.13", (2, 41)),
}

# Files the bundle carries besides wheels and model: (template path, path in the bundle, mode).
SERVICE_FILES = [
    ("systemd/feredge.service", "systemd/feredge.service", 0o644),
    ("systemd/feredge.sysusers.conf", "systemd/feredge.sysusers.conf", 0o644),
    ("bundle/99-feredge-coral.rules", "udev/99-feredge-coral.rules", 0o644),
    ("bundle/install.sh", "install.sh", 0o755),
    ("bundle/uninstall.sh", "uninstall.sh", 0o755),
    ("bundle/set-hostname.sh", "set-hostname.sh", 0o755),
    ("bundle/user-data", "cloud-init/user-data", 0o644),
]

# Where the installed bundle keeps its model (the bundled config points here).
DEVICE_MODEL_DIR = "/opt/feredge/model"


# ---- inputs ----------------------------------------------------------------------------------

def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ExportError(f"unknown target {name!r}; choose one of: {', '.join(TARGETS)}") from None


def default_model_dir() -> Path:
    from feredge.edge.model import default_model_path

    try:
        return default_model_path()
    except EdgeError as e:
        raise ExportError(one_line(e)) from None


def model_files(model: str | os.PathLike[str] | None) -> tuple[list[Path], str]:
    """The artifact, its contract sidecar and an Edge TPU variant if there is one; and the model name.

    The contract is checked (sha256 of the artifact) here, on the workstation, so a broken
    model fails now and not on first boot.
    """
    from feredge.edge.contract import resolve

    src = Path(model) if model is not None else default_model_dir()
    if not src.exists():
        raise ExportError(f"model not found: {src} (pass --model DIR, a `feredge export` output folder)")
    try:
        artifact, contract = resolve(src)
    except FeredgeError as e:
        raise ExportError(f"model {src}: {one_line(e)}") from None
    files = [artifact]
    stem = artifact.name.removesuffix(".tflite").removesuffix(".int8")
    sidecar = artifact.with_name(stem + ".json")
    if sidecar.is_file():
        files.append(sidecar)
    files += sorted(p for p in artifact.parent.glob(f"{stem}*edgetpu*.tflite") if p != artifact)
    return files, contract.name


def bundled_config(config: str | os.PathLike[str] | None) -> str:
    """The device config: the user's file, or the example with a real camera and the bundled model.

    Either way it is parsed with the daemon's own loader, so a typo fails the build instead of
    the service on first boot.
    """
    from feredge.edge.daemon.config import load

    if config is not None:
        p = Path(config)
        if not p.is_file():
            raise ExportError(f"config file not found: {p}")
        text = p.read_text(encoding="utf-8")
    else:
        text = template("systemd/config.example.toml").read_text(encoding="utf-8")
        edits = [
            (r'(?m)^#?path = "/opt/feredge/models/fer"', f'path = "{DEVICE_MODEL_DIR}"'),
            (r'(?m)^source = "[^"]*".*$', 'source = "auto"        # a Pi camera if libcamera sees one, '
                                          'else the first /dev/video*'),
            (r"(?m)^loop = true.*$", "loop = false"),
        ]
        for pattern, repl in edits:
            text, n = re.subn(pattern, repl, text, count=1)
            if n != 1:
                raise ExportError(f"systemd/config.example.toml changed: cannot find {pattern!r} to adapt it")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "config.toml"
        probe.write_text(text, encoding="utf-8")
        try:
            load(probe)
        except FeredgeError as e:
            raise ExportError(f"config {config or 'example'}: {one_line(e)}") from None
    return text


# ---- wheels -----------------------------------------------------------------------------------

PIP_TIMEOUT = 60  # seconds pip waits on one connection (its --timeout)
PIP_WALL = 1800  # seconds one pip call may take in all: a stalled index must not hang the build


def _pip(args: list[str], what: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input",
           "--timeout", str(PIP_TIMEOUT)]
    log.debug("running %s", " ".join(cmd))
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_WALL)
    except subprocess.TimeoutExpired:
        raise ExportError(f"pip {what} took more than {PIP_WALL} s (a stalled package index?); nothing was "
                          "written") from None
    if r.returncode != 0:
        log.debug("pip %s failed:\n%s", what, r.stderr)
    return r


def build_feredge_wheel(dest: Path) -> Path:
    """The bundle ships exactly the code that builds it: a checkout's ``pip wheel . --no-deps``, or the
    installed wheel itself, re-packed from its RECORD."""
    if not (CHECKOUT / "pyproject.toml").is_file():
        return repack_installed_wheel(dest)
    # setuptools packs all of its scratch folder build/lib, modules deleted from the source since the
    # last build included (a stale top-level `edge/` would shadow nothing here but ship to the Pi).
    shutil.rmtree(CHECKOUT / "build", ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="feredge-wheel-") as tmp:
        # Build isolation fetches a current setuptools (the project's license field needs >= 77).
        args = ["wheel", str(CHECKOUT), "--no-deps", "-q", "-w", tmp]
        r = _pip(args, "wheel")
        wheels = list(Path(tmp).glob("feredge-*.whl"))
        if r.returncode != 0 or len(wheels) != 1:
            _check_network(r, "build the feredge wheel (build isolation fetches setuptools)")
            raise ExportError(f"could not build the feredge wheel: {_last_error(r.stderr)}")
        out = dest / wheels[0].name
        shutil.move(wheels[0], out)
    return out


# What pip adds to a dist-info on install; none of it belongs in a wheel.
_INSTALL_ONLY = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}


def repack_installed_wheel(dest: Path) -> Path:
    """The installed feredge as a wheel again: its files as RECORD lists them (no scripts, no caches),
    its dist-info, and a fresh RECORD, so pip on the Pi installs the very code installed here."""
    import base64
    import zipfile

    dist = metadata.distribution("feredge")
    tag = next((line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
                if line.startswith("Tag:")), "py3-none-any")
    info = f"feredge-{dist.version}.dist-info"
    rows = []
    out = dest / f"feredge-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in dist.files or []:
            name = f.as_posix()
            if name.startswith("..") or "__pycache__" in f.parts or (f.parts[0] == info and f.name in _INSTALL_ONLY):
                continue
            data = Path(str(f.locate())).read_bytes()
            zf.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append(f"{name},sha256={digest},{len(data)}")
        rows.append(f"{info}/RECORD,,")
        zf.writestr(f"{info}/RECORD", "\n".join(rows) + "\n")
    return out


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")] or [
        line for line in lines if re.search(r"(?i)error\b", line) and not line.startswith(("hint:", "note:"))]
    return (errors or lines or ["(no output)"])[-1]


NETWORK_RE = re.compile(r"NewConnectionError|Temporary failure in name resolution|Network is unreachable|"
                        r"Failed to establish a new connection|ProxyError|ConnectTimeout")
MISSING_RE = re.compile(r"No matching distribution found for ([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?[^\s]*)")

UNAVAILABLE_RE = re.compile(r"no matching distributions available for your environment:\s*\n((?:[ \t]+\S+[ \t]*\n)+)")
CONFLICT_RE = re.compile(r"The conflict is caused by:\s*\n((?:[ \t]+\S.*\n)+)")


def _check_network(r: subprocess.CompletedProcess, what: str) -> None:
    if NETWORK_RE.search(r.stderr):
        raise ExportError(f"cannot reach the package index to {what} (feredge bundle needs PyPI; "
                          f"the Pi does not): {_last_error(r.stderr)}")


def download_wheels(target: Target, feredge_wheel: Path, dest: Path, extra: list[str] | None = None,
                    pip_cache: Path | None = None) -> None:
    """Resolve feredge[edge] (+ extras) for the target and save every wheel into ``dest``."""
    args = ["download", "-d", str(dest), "--only-binary=:all:",
            "--python-version", target.python, "--implementation", "cp",
            "--abi", target.abi, "--abi", "abi3", "--abi", "none"]
    for tag in target.platforms:
        args += ["--platform", tag]
    if pip_cache is not None:
        args += ["--cache-dir", str(pip_cache)]
    with tempfile.TemporaryDirectory() as tmp:
        if target.constraints:
            cfile = Path(tmp) / "constraints.txt"
            cfile.write_text("\n".join(target.constraints) + "\n")
            args += ["-c", str(cfile)]
        # pip itself: install.sh runs it from its wheel, so the Pi needs neither ensurepip nor PyPI.
        r = _pip([*args, f"{feredge_wheel}[edge]", "pip", *(extra or [])], "download")
    if r.returncode == 0:
        return
    _check_network(r, f"resolve wheels for {target.name}")
    where = (f"for {target.name} (CPython {target.python}, aarch64, "
             f"manylinux up to {target.glibc[0]}_{target.glibc[1]})")
    m = MISSING_RE.search(r.stderr)
    if m:
        raise ExportError(f"no wheel of {m.group(1)} {where}; pip said: {_last_error(r.stderr)}")
    text = r.stdout + "\n" + r.stderr  # pip explains conflicts on stdout
    m = CONFLICT_RE.search(text)
    causes = "; ".join(line.strip() for line in m.group(1).splitlines() if line.strip()) if m else ""
    m = UNAVAILABLE_RE.search(text)  # a missing wheel behind a pin surfaces as a conflict
    if m:
        names = ", ".join(m.group(1).split())
        raise ExportError(f"no wheel of {names} {where} that satisfies: {causes or ', '.join(target.constraints)}")
    if causes:
        raise ExportError(f"conflicting requirements {where}: {causes}")
    raise ExportError(f"pip download for {target.name} failed: {_last_error(r.stderr)}")


WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def write_lock(wheelhouse: Path, target: Target, dest: Path) -> dict[str, str]:
    """``requirements.lock``: one ``name==version --hash=sha256:…`` per wheel, for ``--require-hashes``."""
    pins: dict[str, str] = {}
    lines = [f"# feredge {__version__} for {target.name} (CPython {target.python}, aarch64).",
             "# Generated by `feredge bundle`; install.sh installs exactly these with --require-hashes."]
    for whl in sorted(wheelhouse.glob("*.whl")):
        m = WHEEL_RE.match(whl.name)
        if not m:
            raise ExportError(f"unexpected wheel file name {whl.name}")
        name = m.group("name").lower().replace("_", "-")
        if name == "pip":
            continue  # the installer, not part of the environment
        pins[name] = m.group("version")
        req = "feredge[edge]" if name == "feredge" else name
        lines.append(f"{req}=={m.group('version')} --hash=sha256:{sha256_file(whl)}")
    dest.write_text("\n".join(lines) + "\n")
    return pins


# ---- the bundle --------------------------------------------------------------------------------

def write_checksums(stage: Path) -> None:
    files = sorted(p for p in stage.rglob("*") if p.is_file() and p.name != "SHA256SUMS")
    text = "".join(f"{sha256_file(p)}  {p.relative_to(stage).as_posix()}\n" for p in files)
    (stage / "SHA256SUMS").write_text(text)


@contextlib.contextmanager
def _staged_bundle(out: Path) -> Iterator[Path]:
    """A folder to build the bundle in, which replaces ``out`` only when everything was written
    (fsutil's staging folder and publish, as every other output)."""
    if out.exists() and not (out / "bundle.json").is_file() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"{out} exists and is not a feredge bundle; choose another --out")
    with staging_dir(out.parent) as scratch:
        stage = scratch / out.name
        stage.mkdir()
        yield stage
        publish(scratch, out.parent)


@dataclass
class BundleResult:
    out_dir: Path
    target: Target
    model: str
    pins: dict[str, str]
    bytes: int

    def summary(self) -> str:
        return (f"bundle for {self.target.name} in {self.out_dir} ({self.bytes / 1e6:.0f} MB): "
                f"model {self.model}, {len(self.pins)} wheels (numpy {self.pins.get('numpy')}, "
                f"opencv-python-headless {self.pins.get('opencv-python-headless')}, "
                f"ai-edge-litert {self.pins.get('ai-edge-litert')}). "
                f"Next: docs/flash-a-pi.md")


def build_bundle(target: str | Target, out_dir: str | os.PathLike[str], *, model: str | os.PathLike[str] | None = None,
                 config: str | os.PathLike[str] | None = None, extra: list[str] | None = None,
                 pip_cache: str | os.PathLike[str] | None = None) -> BundleResult:
    """Build the bundle in a staging folder and rename it onto ``out_dir`` (nothing partial on failure).

    Cheap checks (target, model, config) run before the slow wheel resolution.
    """
    t = target if isinstance(target, Target) else get_target(target)
    out = Path(out_dir)
    files, model_name = model_files(model)
    config_text = bundled_config(config)
    for src, _, _ in SERVICE_FILES:
        if not template(src).is_file():
            raise ExportError(f"missing template {template(src)}")
    with _staged_bundle(out) as stage:
        wheelhouse = stage / "wheelhouse"
        wheelhouse.mkdir()
        fwheel = build_feredge_wheel(wheelhouse)
        download_wheels(t, fwheel, wheelhouse, extra, Path(pip_cache) if pip_cache else None)
        pins = write_lock(wheelhouse, t, stage / "requirements.lock")
        (stage / "model").mkdir()
        for f in files:
            shutil.copyfile(f, stage / "model" / f.name)
        (stage / "config").mkdir()
        (stage / "config" / "config.toml").write_text(config_text, encoding="utf-8")
        for src, rel, mode in SERVICE_FILES:
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template(src), dst)
            dst.chmod(mode)
        meta = {
            "format": BUNDLE_FORMAT,
            "feredge": __version__,
            "target": t.name,
            "debian": t.debian,
            "python": t.python,
            "machine": "aarch64",
            "platforms": t.platforms,
            "constraints": list(t.constraints),
            "model": model_name,
            "pins": pins,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (stage / "bundle.json").write_text(json.dumps(meta, indent=2) + "\n")
        write_checksums(stage)
        size = sum(p.stat().st_size for p in stage.rglob("*") if p.is_file())
        stage.chmod(0o755)  # mkdtemp made it 0700
    return BundleResult(out, t, model_name, pins, size)


def tree_hash(root: str | os.PathLike[str]) -> str:
    """Hash of every path, type, mode and content under ``root`` (not times): equal hashes mean
    a second install changed nothing."""
    h = hashlib.sha256()
    root = Path(root)
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        st = p.lstat()
        h.update(f"{rel}\0{st.st_mode:o}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(sha256_file(p).encode())
    return h.hexdigest()


# ---- CLI ----------------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, metavar="TARGET",
                   help=f"Raspberry Pi OS release: {' | '.join(TARGETS)}")
    p.add_argument("--model", metavar="DIR",
                   help="a `feredge export` output folder or .tflite (default: the shipped default model)")
    p.add_argument("--config", metavar="FILE",
                   help="daemon config for the Pi (default: systemd/config.example.toml with source = \"auto\")")
    p.add_argument("--extra", action="append", default=[], metavar="REQ",
                   help="another package to put in the wheelhouse (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="the bundle folder to create (replaced if it is one)")


def run(args: argparse.Namespace) -> int:
    target = get_target(args.target)  # before anything slow
    result = build_bundle(target, args.out, model=args.model, config=args.config, extra=args.extra)
    print(result.summary())
    return 0


__all__ = ["TARGETS", "BundleResult", "Target", "add_arguments", "build_bundle", "run", "tree_hash"]
