#!/bin/bash
# Renames a Pi still called by the image's default name after its feredge node id; run once by the
# bundle's cloud-init user-data, after install.sh. Why: every card flashed from one image is
# "raspberrypi" until someone renames it, and a shelf of them on one network cannot be told apart.
# The node id (edge/daemon/identity.py, from /etc/machine-id) is also the Pi's MQTT client id and its Home
# Assistant device, so the three names agree. A hostname someone chose (Imager's) is kept.
#
#   FEREDGE_PYTHON=PATH   the Python that has feredge (default /opt/feredge/venv/bin/python)
#   FEREDGE_ROOT=DIR      /etc/hostname and /etc/hosts below DIR (tests)
set -euo pipefail

say() { echo "feredge hostname: $*"; }
ETC="${FEREDGE_ROOT:-}/etc"

old="$(hostname)"
case "$old" in
  raspberrypi|localhost) ;;
  *) say "keeping $old"; exit 0 ;;
esac
new="$("${FEREDGE_PYTHON:-/opt/feredge/venv/bin/python}" -c \
  'from feredge.edge.daemon.identity import default_node_id; print(default_node_id())')"

# hostnamectl goes through systemd-hostnamed over D-Bus (Raspberry Pi OS has both); without a bus
# (a minimal image, a container) the static and the running name are set directly.
if ! hostnamectl set-hostname "$new" 2>/dev/null; then
  echo "$new" > "$ETC/hostname"
  hostname "$new"
fi
# Neither way touches /etc/hosts, where Raspberry Pi OS maps 127.0.1.1 to the old name: without
# this, sudo warns "unable to resolve host" on every call.
if grep -q '^127\.0\.1\.1[[:space:]]' "$ETC/hosts"; then
  sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1\t$new/" "$ETC/hosts"
else
  printf '127.0.1.1\t%s\n' "$new" >> "$ETC/hosts"
fi
say "$old -> $new"
