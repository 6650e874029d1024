#!/bin/bash
# feredge offline installer for Raspberry Pi OS (64-bit). Run as root from the bundle folder:
#     sudo bash install.sh
# Idempotent: a second run changes nothing; a newer bundle upgrades in place and keeps
# /etc/feredge/config.toml. Needs no network: everything comes from this folder, whose files are
# checked against SHA256SUMS before anything on the system changes.
#
# Environment (for tests and image builders; the defaults are what a Pi wants):
#   FEREDGE_ROOT=DIR       install below DIR instead of / (no root needed)
#   FEREDGE_NO_SYSTEMD=1   skip systemd-sysusers, udevadm and systemctl (no systemd as PID 1)
#   FEREDGE_PYTHON=PATH    the system Python the venv is made from (default /usr/bin/python3)
#   FEREDGE_EXEC="CMD ..." prefix for running that Python (e.g. qemu-aarch64 under emulation)
set -euo pipefail
umask 022

BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="${FEREDGE_ROOT:-}"
ROOT="${ROOT%/}"
PY="${FEREDGE_PYTHON:-/usr/bin/python3}"
read -r -a EXEC <<<"${FEREDGE_EXEC:-}"
OPT="$ROOT/opt/feredge"
VENV="$OPT/venv"
ETC="$ROOT/etc/feredge"
CHANGED=0

say() { echo "feredge install: $*"; }
die() { echo "feredge install: error: $*" >&2; exit 2; }

# ---- 1. the bundle is intact (before touching anything) -------------------------------------
[ -f "$BUNDLE/SHA256SUMS" ] || die "no SHA256SUMS in $BUNDLE: not a complete feredge bundle"
cd "$BUNDLE"
if ! bad="$(sha256sum --check --strict --quiet SHA256SUMS 2>&1)"; then
  die "checksum mismatch, nothing was changed: $(echo "$bad" | head -n 3 | tr '\n' ' ')(copy the bundle again)"
fi
# (dot files are ignored: macOS leaves ._* and .DS_Store on FAT cards; pip skips them: their names match no package)
extra="$(find . -type f ! -name SHA256SUMS ! -name '.*' -printf '%P\n' | sort \
         | comm -23 - <(awk '{print $2}' SHA256SUMS | sort) | head -n 3 | tr '\n' ' ')"
[ -z "$extra" ] || die "files not listed in SHA256SUMS, nothing was changed: $extra"

want_py="$(sed -n 's/^ *"python": "\(.*\)",$/\1/p' bundle.json)"
target="$(sed -n 's/^ *"target": "\(.*\)",$/\1/p' bundle.json)"

# ---- 2. this system can run it ----------------------------------------------------------------
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root: sudo bash $BUNDLE/install.sh"
fi
have="$("${EXEC[@]}" "$PY" -c 'import platform, sys; print("%d.%d %s" % (sys.version_info[:2] + (platform.machine(),)))' 2>/dev/null)" \
  || die "cannot run $PY (install python3 and python3-venv: apt install python3-venv)"
if [ "$have" != "$want_py aarch64" ]; then
  die "this bundle is for $target (Python $want_py, aarch64) but $PY is Python ${have/ / on }; build one with feredge bundle --target rpi-bookworm-arm64 (Python 3.11) or rpi-trixie-arm64 (Python 3.13)"
fi

# put SRC at DST (mode MODE) only when the content differs; sets CHANGED=1 when it wrote
put() {
  local src="$1" dst="$2" mode="$3"
  if [ -f "$dst" ] && cmp -s "$src" "$dst"; then
    [ "$(stat -c %a "$dst")" = "$mode" ] || chmod "$mode" "$dst"
    return 0
  fi
  mkdir -p "$(dirname "$dst")"
  install -m "$mode" "$src" "$dst.feredge-new"
  mv -f "$dst.feredge-new" "$dst"
  CHANGED=1
  say "installed ${dst#"$ROOT"}"
}

# ---- 3. user and groups ------------------------------------------------------------------------
put systemd/feredge.sysusers.conf "$ROOT/etc/sysusers.d/feredge.conf" 644
if [ -z "${FEREDGE_NO_SYSTEMD:-}" ]; then
  systemd-sysusers ${ROOT:+--root="$ROOT"} "$ROOT/etc/sysusers.d/feredge.conf"
fi

# ---- 4. the venv and the wheels ------------------------------------------------------------------
mkdir -p "$OPT"
if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: the apt picamera2/libcamera stack stays visible. --without-pip: pip
  # runs from the bundled wheel, so neither ensurepip nor PyPI is needed.
  "${EXEC[@]}" "$PY" -m venv --system-site-packages --without-pip "$VENV"
  CHANGED=1
  say "created ${VENV#"$ROOT"}"
fi
stamp="$OPT/installed.sha256"
if ! { [ -f "$stamp" ] && sha256sum requirements.lock wheelhouse/feredge-*.whl | cmp -s - "$stamp"; }; then
  pipwhl="$(ls wheelhouse/pip-*.whl | head -n 1)"
  pip=("${EXEC[@]}" "$VENV/bin/python" "$BUNDLE/$pipwhl/pip" --disable-pip-version-check --no-input)
  say "installing wheels for $target (offline) ..."
  "${pip[@]}" install -q --no-index --find-links "$BUNDLE/wheelhouse" --require-hashes \
    --no-warn-script-location -r requirements.lock
  # Same version number, new build (a rebuilt bundle): replace feredge itself.
  "${pip[@]}" install -q --no-index --no-deps --force-reinstall --no-warn-script-location \
    "$BUNDLE"/wheelhouse/feredge-*.whl
  sha256sum requirements.lock wheelhouse/feredge-*.whl >"$stamp.new" && mv -f "$stamp.new" "$stamp"
  CHANGED=1
fi

# ---- 5. model, config, service files ---------------------------------------------------------------
for f in model/*; do put "$f" "$OPT/model/$(basename "$f")" 644; done
for f in "$OPT"/model/*; do  # a model file the new bundle no longer has
  [ -e "$f" ] || continue
  [ -f "model/$(basename "$f")" ] || { rm -f "$f"; CHANGED=1; }
done
put bundle.json "$OPT/bundle.json" 644
put uninstall.sh "$OPT/uninstall.sh" 755
mkdir -p "$ETC"
[ "$(stat -c %a "$ETC")" = 750 ] || chmod 750 "$ETC"
if [ -z "$ROOT" ] && getent group feredge >/dev/null; then chgrp feredge "$ETC"; fi  # the service reads it
if [ -f "$ETC/config.toml" ]; then
  if ! cmp -s config/config.toml "$ETC/config.toml"; then
    put config/config.toml "$ETC/config.toml.bundle" 644
    say "kept your ${ETC#"$ROOT"}/config.toml (the bundle's is ${ETC#"$ROOT"}/config.toml.bundle)"
  fi
else
  put config/config.toml "$ETC/config.toml" 640
  if [ -z "$ROOT" ] && getent group feredge >/dev/null; then chgrp feredge "$ETC/config.toml"; fi
fi
put systemd/feredge.service "$ROOT/etc/systemd/system/feredge.service" 644
put udev/99-feredge-coral.rules "$ROOT/etc/udev/rules.d/99-feredge-coral.rules" 644

# ---- 6. start ---------------------------------------------------------------------------------------
if [ -z "${FEREDGE_NO_SYSTEMD:-}" ]; then
  udevadm control --reload-rules 2>/dev/null && udevadm trigger --subsystem-match=usb 2>/dev/null || true
  systemctl daemon-reload
  systemctl enable feredge.service
  if [ "$CHANGED" = 1 ] && systemctl is-active --quiet feredge.service; then
    say "restarting feredge (upgraded)"
    systemctl restart feredge.service || true
  else
    systemctl start feredge.service || true
  fi
  systemctl --no-pager --lines=5 status feredge.service || true
fi

say "$([ "$CHANGED" = 1 ] && echo "done" || echo "already up to date, nothing changed")"
echo "---- feredge doctor ----"
PYTHONDONTWRITEBYTECODE=1 "${EXEC[@]}" "$VENV/bin/python" -m feredge doctor --model "$OPT/model" || true
