"""The device's identity in a fleet: ``node_id``, the name under which it appears on a broker.

Why not the hostname: every Pi flashed from one bundle is called the same until someone renames
it, and two devices with one MQTT client id knock each other off the broker. Why not the raw
machine id: machine-id(5) says it is confidential and must not leave the machine. So the
default is what ``systemd-id128 machine-id --app-specific=APP`` prints — an HMAC-SHA256 of the
application id keyed with the machine id, shaped as a v4 UUID — cut to 12 hex digits: stable
across restarts and reinstalls, different on every device, and useless for finding the machine
id. Order: ``$FEREDGE_NODE_ID`` (containers, tests) > ``mqtt.node_id`` > that default.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import socket
from pathlib import Path

from feredge.edge.errors import EdgeError

# feredge's application id for machine-id(5) derivation (a random 128-bit value, fixed forever).
APP_ID = "2b7c7d41e8a24a33a1b8f2c9d6e5f401"
MACHINE_ID = Path("/etc/machine-id")
ENV = "FEREDGE_NODE_ID"
_VALID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a node id may be (it is a topic level and an MQTT client id): the one rule, for
# $FEREDGE_NODE_ID here and for mqtt.node_id in the config.
NODE_ID_RULE = "1-64 letters, digits, _ or -"


def valid_node_id(value: str) -> bool:
    return _VALID.fullmatch(value) is not None


def app_specific_id(machine_id: str, app_id: str = APP_ID) -> str:
    """systemd's ``sd_id128_get_machine_app_specific()``: HMAC-SHA256(key=machine id, msg=app id),
    first 16 bytes, with the v4 UUID version and variant bits set; 32 hex digits."""
    h = bytearray(hmac.new(bytes.fromhex(machine_id), bytes.fromhex(app_id), hashlib.sha256).digest()[:16])
    h[6] = (h[6] & 0x0F) | 0x40
    h[8] = (h[8] & 0x3F) | 0x80
    return h.hex()


def default_node_id(machine_id_file: Path = MACHINE_ID) -> str:
    """``feredge-<12 hex>`` from the machine id; the hostname only where there is no machine id."""
    try:
        mid = machine_id_file.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{32}", mid):
            return f"feredge-{app_specific_id(mid)[:12]}"
    except OSError:
        pass
    return "feredge-" + (re.sub(r"[^A-Za-z0-9_-]+", "-", socket.gethostname()).strip("-") or "device")


def node_id(configured: str | None = None) -> str:
    """The node id in force: ``$FEREDGE_NODE_ID`` > ``mqtt.node_id`` > :func:`default_node_id`."""
    for where, value in ((f"${ENV}", os.environ.get(ENV)), ("mqtt.node_id", configured)):
        if value is not None and value.strip():
            if not valid_node_id(value.strip()):
                raise EdgeError(f"{where} = {value!r}: a node id is {NODE_ID_RULE}")
            return value.strip()
    return default_node_id()
