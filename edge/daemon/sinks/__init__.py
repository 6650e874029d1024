"""Where the daemon's results go: one small module per sink (JSON lines, MQTT, HTTP).

Every sink gets the same calls from the daemon; a sink that does not care about one of them
inherits the no-op. Calls come from several camera threads, so sinks guard their own state.
A sink must never block the camera loop for long: slow outputs (a broker) queue, bounded.
"""

from __future__ import annotations

import importlib
from typing import Any


class Sink:
    name = "sink"

    def start(self) -> None:
        """Open files, sockets, threads."""

    def frame(self, camera: str, record: dict[str, Any]) -> None:
        """One processed frame: ``{"camera", "frame", "ts", "faces": [{"track_id", "box", "label", ...}]}``."""

    def events(self, events: list[dict[str, Any]]) -> None:
        """Track events: ``{"event": "appeared"|"changed"|"left", "camera", "track_id", "label", ...}``."""

    def camera_state(self, camera: str, online: bool, reason: str = "") -> None:
        """A camera came up or went offline."""

    def stats(self, stats: dict[str, Any]) -> None:
        """Periodic statistics (the same document as ``/api/stats``)."""

    def close(self) -> None:
        """Flush and release; called once on shutdown."""


# The result sinks by config section, registered by key like the backends: each module has
# ``create(config, daemon) -> Sink`` and is imported only when its section is enabled.
SINKS: dict[str, str] = {
    "jsonl": "feredge.edge.daemon.sinks.jsonl",
    "mqtt": "feredge.edge.daemon.sinks.mqtt",
    "http": "feredge.edge.daemon.sinks.http",
}


def create_sinks(config: Any, daemon: Any) -> list[Sink]:
    """The sinks whose ``[section] enabled`` is true, in :data:`SINKS` order."""
    return [importlib.import_module(module).create(config, daemon)
            for key, module in SINKS.items() if getattr(config, key).enabled]


__all__ = ["SINKS", "Sink", "create_sinks"]
