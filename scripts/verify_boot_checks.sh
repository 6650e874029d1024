#!/bin/bash
# verify-boot: run inside the emulated Pi by feredge-verify.service on every boot (scripts/verify_boot.py).
# Each check appends one line; the results go to the boot partition, then the guest powers off.
set -u
STATE=/var/lib/feredge-verify
OUT=/boot/firmware/feredge-results
mkdir -p "$STATE" "$OUT"
BOOT=$(( $(cat "$STATE/boots" 2>/dev/null || echo 0) + 1 ))
echo "$BOOT" > "$STATE/boots"
LINES="$STATE/checks-$BOOT.txt"
: > "$LINES"
check() { # name ok(0|1) detail
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$LINES"
  echo "feredge-verify: boot $BOOT: $1: $([ "$2" = 1 ] && echo ok || echo FAIL): $3" > /dev/console
}
active_within() { # seconds
  local i
  for i in $(seq "$1"); do systemctl is-active --quiet feredge && return 0; sleep 1; done
  return 1
}
main_pid() { systemctl show -p MainPID --value feredge; }
restarts() { systemctl show -p NRestarts --value feredge; }
metric() { python3 - "$1" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:8800/metrics", timeout=10).read().decode()
print(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith(sys.argv[1] + "{")))
PY
}

if active_within 600; then
  ready_us=$(systemctl show -p ActiveEnterTimestampMonotonic --value feredge)
  check "service active after READY=1" 1 "active $((ready_us / 1000000)) s after the kernel started"
  echo "$((ready_us / 1000000))" > "$STATE/ready-$BOOT"
else
  check "service active after READY=1" 0 "$(systemctl is-active feredge): $(journalctl -u feredge -n 3 -o cat | tr '\n' ' ')"
fi

if [ "$BOOT" = 1 ]; then
  log=/var/log/feredge-install.log
  if grep -q "feredge install: done" "$log" 2>/dev/null; then
    check "cloud-init ran the installer" 1 "$(grep -c . "$log") lines in $log"
    stat -c %Y "$log" > "$STATE/install-mtime"
  else
    check "cloud-init ran the installer" 0 "$(tail -n 3 "$log" 2>/dev/null | tr '\n' ' ')"
  fi
  if getent passwd feredge >/dev/null && getent group feredge >/dev/null; then
    check "feredge user and group (systemd-sysusers)" 1 "$(id feredge)"
  else
    check "feredge user and group (systemd-sysusers)" 0 "missing"
  fi
  node=$(/opt/feredge/venv/bin/python -c 'from feredge.edge.daemon.identity import default_node_id; print(default_node_id())')
  echo "$node" > "$STATE/node-id"
  if [ "$(hostname)" = "$node" ] && [ "$(cat /etc/hostname)" = "$node" ] && grep -q "^127.0.1.1[[:space:]]$node\$" /etc/hosts; then
    check "the default hostname renamed to the node id (set-hostname.sh)" 1 "raspberrypi -> $node (hostname, /etc/hostname, /etc/hosts)"
  else
    check "the default hostname renamed to the node id (set-hostname.sh)" 0 \
      "hostname $(hostname), /etc/hostname $(cat /etc/hostname), node id $node; $(journalctl -u cloud-final -o cat | grep 'feredge hostname' | tail -n 1)"
  fi
  score=$(systemd-analyze security --no-pager feredge.service 2>/dev/null | sed -n 's/.*Overall exposure level for feredge.service: \([0-9.]*\).*/\1/p')
  check "systemd-analyze security <= 2.0" "$(python3 -c "print(int(0 < float('${score:-99}') <= 2.0))")" \
    "exposure ${score:-unknown} ($(systemctl --version | head -n 1))"
  health=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8800/healthz', timeout=10).read().decode())" 2>&1)
  case "$health" in *'"status"'*) check "/healthz on 127.0.0.1" 1 "$health";; *) check "/healthz on 127.0.0.1" 0 "$health";; esac
  sleep 20
  faces=$(metric feredge_faces_total 2>/dev/null || echo 0)
  check "classifies faces from the video" "$(python3 -c "print(int(float('$faces') > 0))")" "feredge_faces_total $faces"
  n=$(journalctl -u feredge -o cat | grep -c .)
  check "the journal holds the daemon's lines" "$([ "$n" -gt 3 ] && echo 1 || echo 0)" "$n lines"
  # the watchdog restarts a hung daemon
  pid=$(main_pid); before=$(restarts)
  kill -STOP "$pid"
  ok=0
  for _ in $(seq 180); do
    sleep 1
    now=$(main_pid)
    if [ "$now" != "$pid" ] && [ "$now" != 0 ] && systemctl is-active --quiet feredge; then ok=1; break; fi
  done
  check "the watchdog restarts a hung daemon (SIGSTOP)" "$ok" "pid $pid -> $(main_pid), NRestarts $before -> $(restarts)"
  # systemctl stop is clean within TimeoutStopSec
  t0=$(date +%s.%N); systemctl stop feredge; t1=$(date +%s.%N)
  secs=$(python3 -c "print(round($t1 - $t0, 1))")
  result=$(systemctl show -p Result --value feredge)
  check "systemctl stop is clean within TimeoutStopSec (15 s)" "$(python3 -c "print(int($secs < 15 and '$result' == 'success'))")" "$secs s, result $result"
  # a config error does not restart-loop
  cp /etc/feredge/config.toml "$STATE/config.toml"
  printf '[camera\nbroken = \n' > /etc/feredge/config.toml
  systemctl reset-failed feredge 2>/dev/null; systemctl start feredge; sleep 20
  state=$(systemctl is-active feredge); r=$(restarts)
  check "a config error does not restart-loop" "$([ "$state" = failed ] && [ "$r" = 0 ] && echo 1 || echo 0)" \
    "state $state, NRestarts $r, status $(systemctl show -p ExecMainStatus --value feredge)"
  cp "$STATE/config.toml" /etc/feredge/config.toml
  systemctl reset-failed feredge; systemctl start feredge
else
  if [ "$(stat -c %Y /var/log/feredge-install.log 2>/dev/null)" = "$(cat "$STATE/install-mtime" 2>/dev/null)" ]; then
    check "second boot: the installer did not run again" 1 "install log unchanged"
  else
    check "second boot: the installer did not run again" 0 "install log changed"
  fi
  if [ "$(hostname)" = "$(cat "$STATE/node-id" 2>/dev/null)" ]; then
    check "second boot: cloud-init kept the new hostname" 1 "$(hostname)"
  else
    check "second boot: cloud-init kept the new hostname" 0 "$(hostname), node id $(cat "$STATE/node-id" 2>/dev/null)"
  fi
fi

python3 - "$LINES" "$BOOT" "$OUT/boot-$BOOT.json" "$(cat "$STATE/ready-$BOOT" 2>/dev/null)" <<'PY'
import json, sys
lines, boot, out, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
checks = []
for line in open(lines):
    name, ok, detail = line.rstrip("\n").split("\t", 2)
    checks.append({"boot": boot, "name": name, "ok": ok == "1", "detail": detail})
json.dump({"boot": boot, "seconds_to_ready": int(ready) if ready else None, "checks": checks}, open(out, "w"))
PY
sync
systemctl poweroff --no-block
