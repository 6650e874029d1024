"""Where the daemon's results go: one small module per sink (JSON lines, MQTT, HTTP).

Every sink gets the same calls from the daemon; a sink that does not care about one of them
inherits the no-op. Calls come from several camera threads, so sinks guard their own state.
A sink must never block the camera loop for long: slow outputs (a broker) queue, bounded.
"""

from __future__ import annotations

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


__all__ = ["Sink"]
