"""sd_notify without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

The protocol is a newline-separated ``KEY=VALUE`` datagram on a Unix socket; a leading ``@``
names a socket in the abstract namespace. Pulling in libsystemd (or the ``systemd`` Python
binding, which needs it to build) for that is not worth a dependency on a Pi. Outside systemd
(no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon runs the same in a shell.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET") or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings systemd expects (half of ``WatchdogSec=``), or None when off.

        ``WATCHDOG_PID`` names the process meant; a child that inherited the variables
        must not ping on its parent's behalf.
        """
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid.isdigit() and int(pid) != os.getpid()):
            return None
        try:
            value = int(usec)
        except ValueError:
            return None
        return value / 1e6 / 2 if value > 0 else None

    def notify(self, **fields: object) -> bool:
        """Send ``KEY=VALUE`` lines; returns False (and logs once) when the send fails."""
        if not self.address:
            return False
        payload = "\n".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8", "replace")
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, addr)
                return True
            except OSError as e:
                if not self._warned:
                    log.warning("cannot notify systemd at %s: %s", self.address, e)
                    self._warned = True
                return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text.replace("\n", " "))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **({"STATUS": status} if status else {}))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
