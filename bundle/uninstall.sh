#!/bin/bash
# Remove feredge installed by install.sh: sudo bash /opt/feredge/uninstall.sh [--purge]
# Keeps /etc/feredge (your config), /var/lib/feredge, /var/log/feredge and the feredge user
# unless --purge is given. Same FEREDGE_ROOT / FEREDGE_NO_SYSTEMD variables as install.sh.
set -euo pipefail
ROOT="${FEREDGE_ROOT:-}"
ROOT="${ROOT%/}"
PURGE=0
[ "${1:-}" = "--purge" ] && PURGE=1
if [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  echo "feredge uninstall: error: run as root: sudo bash $0 ${1:-}" >&2
  exit 2
fi
if [ -z "${FEREDGE_NO_SYSTEMD:-}" ]; then
  systemctl disable --now feredge.service 2>/dev/null || true
fi
rm -f "$ROOT/etc/systemd/system/feredge.service" "$ROOT/etc/udev/rules.d/99-feredge-coral.rules"
rm -rf "$ROOT/opt/feredge"
if [ "$PURGE" = 1 ]; then
  rm -rf "$ROOT/etc/feredge" "$ROOT/var/lib/feredge" "$ROOT/var/log/feredge"
  rm -f "$ROOT/etc/sysusers.d/feredge.conf"
  if [ -z "$ROOT" ] && getent passwd feredge >/dev/null; then userdel feredge || true; fi
fi
if [ -z "${FEREDGE_NO_SYSTEMD:-}" ]; then
  systemctl daemon-reload || true
  udevadm control --reload-rules 2>/dev/null || true
fi
echo "feredge uninstall: removed$([ "$PURGE" = 1 ] && echo " (config, state, logs and user too)" || echo "; kept /etc/feredge, /var/lib/feredge and the feredge user (--purge removes them)")"
