"""First boot, for real: an emulated arm64 Debian Trixie with systemd as PID 1 and cloud-init.

    make verify-boot        # = python scripts/verify_boot.py

What it builds (cached under .cache/boot/, rebuilt when this file's recipe changes):

1. ``host/``: a Debian Trixie amd64 root holding qemu 10 (``qemu-system-aarch64`` runs through
   that root's own loader and libraries, so the host keeps its older qemu) and the static
   ``qemu-aarch64`` used to build the guest.
2. ``guest/``: a Debian Trixie arm64 root — linux-image-arm64 with its initramfs, systemd,
   cloud-init, python3, python3-venv — made by ``mmdebstrap --variant=apt``. Its maintainer
   scripts are arm64 programs: for the build only, a binfmt_misc handler for arm64 is registered
   (flag F, the static qemu of step 1), and unregistered afterwards whatever happens.
3. Per run: ``root.img`` (ext4, ``mke2fs -d``) and ``boot.img``, a FAT "boot partition" labelled
   ``bootfs`` laid out as on a Raspberry Pi OS card: ``feredge/`` (the bundle, built now for the
   Trixie target with a config whose camera is a video file on that partition), ``user-data``
   (the bundle's, plus the checks below) and a NoCloud ``meta-data``.

Then it boots the image twice with ``qemu-system-aarch64 -M virt -cpu max`` (TCG), headless, no
network device, the serial console captured to ``.cache/boot/run/serial-<n>.log``. On the first
boot cloud-init runs the bundle's installer; a check unit (``feredge-verify.service``, installed by
the user-data) then tests the service under the real systemd and writes its results to the boot
partition, which this script reads back with mtools after the guest powers itself off. The last
line printed summarises the boot.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "boot"
DEBIAN = "http://deb.debian.org/debian"
SUITE = "trixie"
TARGET = "rpi-trixie-arm64"
# dbus: hostnamectl (the bundle's set-hostname.sh) talks to systemd-hostnamed over it, as on Raspberry Pi OS.
GUEST_PACKAGES = ["linux-image-arm64", "initramfs-tools", "systemd-sysv", "udev", "kmod", "dbus", "cloud-init",
                  "python3", "python3-venv", "dosfstools", "e2fsprogs", "procps"]
HOST_PACKAGES = ["qemu-system-arm", "qemu-user-static"]
BINFMT = "feredge-aarch64"
AARCH64_MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"


class BootError(Exception):
    """One line for the user; the logs under .cache/boot/run/ say more."""


def log(msg: str) -> None:
    print(f"verify-boot: {msg}", flush=True)


def run(cmd: list[str], *, timeout: float = 3600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise BootError(f"{Path(cmd[0]).name} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-600:]}")
    return r


def _recipe(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _cached(dest: Path, recipe: str) -> bool:
    return (dest / ".feredge-recipe").is_file() and (dest / ".feredge-recipe").read_text() == recipe


def _mmdebstrap(dest: Path, recipe: str, args: list[str]) -> float:
    """A root made once per recipe; 0.0 when it was cached, else the seconds it took."""
    if _cached(dest, recipe):
        return 0.0
    t = time.monotonic()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(dest, ignore_errors=True)
    run(["mmdebstrap", "--skip=check/empty", *args, SUITE, str(tmp), DEBIAN], timeout=3600)
    (tmp / ".feredge-recipe").write_text(recipe)
    os.replace(tmp, dest)
    return time.monotonic() - t


# ---- 1. the host tools ------------------------------------------------------------------------------

def host_root() -> tuple[Path, float]:
    dest = CACHE / "host"
    took = _mmdebstrap(dest, _recipe(HOST_PACKAGES), ["--variant=apt", "--architectures=amd64",
                                                      f"--include={','.join(HOST_PACKAGES)}"])
    return dest, took


def qemu_system(host: Path) -> list[str]:
    """qemu-system-aarch64 of the Trixie root, through that root's loader and libraries."""
    libs = ":".join(str(host / d) for d in ("usr/lib/x86_64-linux-gnu", "lib/x86_64-linux-gnu"))
    return [str(host / "usr/lib64/ld-linux-x86-64.so.2"), "--library-path", libs,
            str(host / "usr/bin/qemu-system-aarch64"), "-L", str(host / "usr/share/qemu")]


# ---- 2. the guest root --------------------------------------------------------------------------------

@contextlib.contextmanager
def arm64_binfmt(host: Path) -> Iterator[None]:
    """An arm64 binfmt_misc handler for the duration of the guest build, then removed again.

    binfmt_misc is machine-wide: the handler is registered under its own name, only when no arm64
    handler exists, and unregistered in ``finally``; a binfmt_misc this function mounted is unmounted."""
    fs = Path("/proc/sys/fs/binfmt_misc")
    mounted = False
    if not (fs / "register").exists():
        run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(fs)])
        mounted = True
    mine = fs / BINFMT
    existing = [p for p in fs.iterdir() if p.name not in ("register", "status") and "aarch64" in p.name]
    try:
        if not existing:
            qemu = CACHE / "qemu-aarch64-static"
            shutil.copy2(host / "usr/bin/qemu-aarch64-static", qemu)
            (fs / "register").write_text(f":{BINFMT}:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{qemu}:F")
        yield
    finally:
        if mine.exists():
            mine.write_text("-1")
        if mounted:
            subprocess.run(["umount", str(fs)], capture_output=True)


GUEST_FSTAB = """# feredge verify-boot: the emulated card
/dev/vda  /               ext4  defaults,noatime  0 1
LABEL=BOOTFS  /boot/firmware  vfat  defaults,umask=022  0 2
"""
# Raspberry Pi OS reads cloud-init's NoCloud seed (user-data, meta-data) from its boot partition.
GUEST_CLOUD_CFG = """datasource_list: [NoCloud, None]
datasource:
  NoCloud:
    fs_label: bootfs
"""


# The initramfs only has to find an ext4 root on virtio: MODULES=list with these two (and what they
# depend on) instead of Debian's MODULES=most. Under qemu-user that image is built twice (the kernel's
# postinst, then initramfs-tools' trigger): ~140 s each with every module (36.7 MB), ~43 s with these (10.6 MB).
GUEST_INITRAMFS_CONF = "MODULES=list\n"
GUEST_INITRAMFS_HOOK = """#!/bin/sh
[ "$1" = prereqs ] && exit 0
. /usr/share/initramfs-tools/hook-functions
manual_add_modules virtio_blk ext4
"""


def guest_root(host: Path) -> tuple[Path, float]:
    dest = CACHE / "guest"
    recipe = _recipe(GUEST_PACKAGES, GUEST_FSTAB, GUEST_CLOUD_CFG, GUEST_INITRAMFS_CONF, GUEST_INITRAMFS_HOOK)
    if _cached(dest, recipe):
        return dest, 0.0
    initramfs = "\"$1/etc/initramfs-tools\""
    hooks = [
        # before the kernel package is configured (it builds the initramfs)
        f"--essential-hook=mkdir -p {initramfs}/conf.d {initramfs}/hooks",
        f"--essential-hook=printf '%s' '{GUEST_INITRAMFS_CONF}' > {initramfs}/conf.d/feredge-verify.conf",
        f"--essential-hook=printf '%s' '{GUEST_INITRAMFS_HOOK}' > {initramfs}/hooks/feredge-verify",
        f"--essential-hook=chmod 755 {initramfs}/hooks/feredge-verify",
        f"--customize-hook=printf '%s' '{GUEST_FSTAB}' > \"$1/etc/fstab\"",
        "--customize-hook=mkdir -p \"$1/boot/firmware\" \"$1/etc/cloud/cloud.cfg.d\"",
        f"--customize-hook=printf '%s' '{GUEST_CLOUD_CFG}' > \"$1/etc/cloud/cloud.cfg.d/99-feredge-nocloud.cfg\"",
        "--customize-hook=echo feredge-verify > \"$1/etc/hostname\"",
        "--customize-hook=rm -f \"$1/etc/machine-id\" && touch \"$1/etc/machine-id\"",  # first boot makes one
    ]
    with arm64_binfmt(host):
        took = _mmdebstrap(dest, recipe, ["--variant=apt", "--architectures=arm64",
                                          f"--include={','.join(GUEST_PACKAGES)}", *hooks])
    return dest, took


def kernel_files(guest: Path) -> tuple[Path, Path]:
    kernels = sorted((guest / "boot").glob("vmlinuz-*"))
    initrds = sorted((guest / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise BootError(f"no kernel/initramfs in {guest}/boot (linux-image-arm64 not configured?)")
    return kernels[-1], initrds[-1]


# ---- 3. the card --------------------------------------------------------------------------------------

TEST_CONFIG = """# verify-boot: the daemon classifies the test video from the boot partition (no camera in the guest)
[model]
path = "/opt/feredge/model"
[[camera]]
name = "video"
source = "/boot/firmware/feredge-media/woman2.mp4"
loop = true
pace = "realtime"
fps = 10.0
[http]
enabled = true
bind = "127.0.0.1"
port = 8800
[jsonl]
enabled = true
path = "-"
"""


def write_card(run_dir: Path, guest: Path, video: Path) -> tuple[Path, Path]:
    """root.img and boot.img for one run."""
    from feredge.export.bundle.build import build_bundle

    for f in run_dir.glob("*.img"):
        f.unlink()
    bundle = run_dir / "bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    cfg = run_dir / "config.toml"
    cfg.write_text(TEST_CONFIG)
    build_bundle(TARGET, bundle, config=cfg, pip_cache=ROOT / ".cache" / "pip")
    extra = (ROOT / "scripts" / "verify_boot_user_data.yml").read_text()
    user_data = (bundle / "cloud-init" / "user-data").read_text().rstrip("\n") + "\n" + extra
    root_img, boot_img = run_dir / "root.img", run_dir / "boot.img"
    size_mb = int(sum(f.stat().st_size for f in guest.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20)
    run(["mke2fs", "-q", "-t", "ext4", "-L", "rootfs", "-d", str(guest), str(root_img), f"{size_mb + 1536}M"])
    run(["mkfs.fat", "-C", "-n", "BOOTFS", str(boot_img), str(512 * 1024)])
    (run_dir / "user-data").write_text(user_data)
    (run_dir / "meta-data").write_text("instance-id: feredge-verify-boot-1\nlocal-hostname: raspberrypi\n")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    for src, dst in ((bundle, "::feredge"), (run_dir / "user-data", "::user-data"),
                     (run_dir / "meta-data", "::meta-data"), (ROOT / "scripts" / "verify_boot_checks.sh",
                                                              "::feredge-verify.sh")):
        run(["mcopy", "-s", "-i", str(boot_img), str(src), dst], env=env)
    run(["mmd", "-i", str(boot_img), "::feredge-media"], env=env)
    run(["mcopy", "-i", str(boot_img), str(video), "::feredge-media/woman2.mp4"], env=env)
    return root_img, boot_img


def read_back(boot_img: Path, name: str) -> str | None:
    r = subprocess.run(["mtype", "-i", str(boot_img), f"::{name}"], capture_output=True, text=True,
                       env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    return r.stdout if r.returncode == 0 else None


# ---- boot -------------------------------------------------------------------------------------------

def boot(host: Path, kernel: Path, initrd: Path, root_img: Path, boot_img: Path, serial: Path,
         timeout: float) -> float:
    cmd = [*qemu_system(host), "-M", "virt", "-cpu", "max", "-smp", "2", "-m", "2048", "-nographic",
           "-no-reboot", "-nic", "none", "-kernel", str(kernel), "-initrd", str(initrd),
           "-append", "root=/dev/vda rw console=ttyAMA0 systemd.show_status=1",
           "-drive", f"file={root_img},if=virtio,format=raw", "-drive", f"file={boot_img},if=virtio,format=raw",
           "-serial", f"file:{serial}", "-monitor", "none"]
    t = time.monotonic()
    try:
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=timeout, check=True)
    except subprocess.TimeoutExpired:
        raise BootError(f"the guest did not power off within {timeout:.0f} s (serial log: {serial})") from None
    except subprocess.CalledProcessError as e:
        raise BootError(f"qemu failed: {e.stderr.decode(errors='replace').strip()[-400:]}") from None
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", default=str(ROOT.parent / "shared" / "media" / "woman2.mp4"))
    ap.add_argument("--boot-timeout", type=float, default=1500)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("verify-boot: error: needs root (mmdebstrap, binfmt_misc, mke2fs -d keeping owners)", file=sys.stderr)
        return 2
    # every host tool, with its Debian package: mmdebstrap's foreign-architecture check itself needs
    # /usr/bin/qemu-aarch64-static and arch-test (the guest's own qemu comes from the Trixie root)
    needed = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "mkfs.fat": "dosfstools", "mcopy": "mtools",
              "qemu-aarch64-static": "qemu-user-static", "arch-test": "arch-test"}
    missing = sorted({pkg for tool, pkg in needed.items() if shutil.which(tool) is None})
    if missing:
        print(f"verify-boot: error: missing host tools; apt-get install {' '.join(missing)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    CACHE.mkdir(parents=True, exist_ok=True)
    run_dir = CACHE / "run"
    run_dir.mkdir(exist_ok=True)
    times: dict[str, float] = {}
    try:
        log("host tools (Trixie amd64 root with qemu 10)")
        host, times["host_root"] = host_root()
        log("guest root (Trixie arm64: kernel, systemd, cloud-init, python3)")
        guest, times["guest_root"] = guest_root(host)
        kernel, initrd = kernel_files(guest)
        log("card images (root ext4, FAT boot partition with the bundle)")
        t = time.monotonic()
        root_img, boot_img = write_card(run_dir, guest, Path(args.video))
        times["card"] = time.monotonic() - t
        results = []
        for n in (1, 2):
            log(f"boot {n} (qemu-system-aarch64 -M virt -cpu max, TCG, no network)")
            times[f"boot_{n}"] = boot(host, kernel, initrd, root_img, boot_img, run_dir / f"serial-{n}.log",
                                      args.boot_timeout)
            text = read_back(boot_img, f"feredge-results/boot-{n}.json")
            if text is None:
                raise BootError(f"boot {n} wrote no results (serial log: {run_dir / f'serial-{n}.log'})")
            results.append(json.loads(text))
    except BootError as e:
        print(f"verify-boot: error: {e}", file=sys.stderr)
        return 1
    checks = [c for r in results for c in r["checks"]]
    failed = [c for c in checks if not c["ok"]]
    for c in checks:
        print(f"  boot {c['boot']}: {'ok ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}")
    print("  times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    ready = results[0].get("seconds_to_ready")
    print(f"verify-boot: {TARGET} on qemu-system-aarch64 (TCG): {len(checks) - len(failed)}/{len(checks)} checks "
          f"passed; READY {ready} s after boot; boots {times['boot_1']:.0f} s + {times['boot_2']:.0f} s")
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
