"""The last few minutes, per camera, in memory: per-minute event and expression counts and fps.

The status page draws "what happened lately" from this; Prometheus has the long history, but
a maker checking a freshly flashed Pi has no Prometheus yet. A fixed number of one-minute
buckets per camera (a ring: the oldest minute drops out), a handful of integers each, so it
costs nothing on a Pi however long the daemon runs. Nothing about a face is kept but the
label its event carried. Camera threads write, HTTP threads read: one lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

EVENTS = ("appeared", "changed", "left")


@dataclass
class Minute:
    """One camera's minute: events by kind, expressions that faces took on, fps samples."""

    start: int  # epoch seconds, a multiple of the bucket width
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENTS, 0))
    expressions: dict[str, int] = field(default_factory=dict)
    fps_sum: float = 0.0
    fps_n: int = 0
    fps_min: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "t": self.start,
            "events": dict(self.events),
            "expressions": dict(self.expressions),
            "fps": round(self.fps_sum / self.fps_n, 2) if self.fps_n else None,
            "fps_min": None if self.fps_min is None else round(self.fps_min, 2),
        }


class Timeline:
    """A ring of ``minutes`` one-minute buckets per camera (``width`` seconds each).

    ``expressions`` counts the label a face *took on*: its ``appeared`` and ``changed`` events,
    so a minute reads "2 became happy, 1 appeared neutral"; ``left`` is counted as an event only.
    """

    def __init__(self, minutes: int = 10, *, width: int = 60, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self.width = width
        self.clock = clock
        self._cams: dict[str, deque[Minute]] = {}
        self._lock = threading.Lock()

    def _bucket(self, camera: str, now: float) -> Minute:
        """The current bucket of ``camera``, opening it (and dropping the oldest) when needed."""
        start = int(now // self.width * self.width)
        ring = self._cams.setdefault(camera, deque(maxlen=self.minutes))
        if not ring or ring[-1].start < start:
            ring.append(Minute(start))
        return ring[-1]

    def add_events(self, events: Iterable[dict[str, Any]]) -> None:
        now = self.clock()
        with self._lock:
            for ev in events:
                kind = ev.get("event")
                if kind not in EVENTS:
                    continue
                b = self._bucket(str(ev.get("camera", "?")), now)
                b.events[kind] += 1
                if kind != "left":
                    label = str(ev.get("label", "?"))
                    b.expressions[label] = b.expressions.get(label, 0) + 1

    def add_fps(self, camera: str, fps: float) -> None:
        """One fps sample (the daemon measures once a second); the bucket keeps mean and minimum."""
        with self._lock:
            b = self._bucket(camera, self.clock())
            b.fps_sum += fps
            b.fps_n += 1
            b.fps_min = fps if b.fps_min is None else min(b.fps_min, fps)

    def snapshot(self) -> dict[str, Any]:
        """``{"width", "minutes", "now", "cameras": {name: [minute, ...]}}``, oldest minute first;
        minutes without a sample are absent (the page draws them empty)."""
        now = self.clock()
        oldest = int(now // self.width * self.width) - (self.minutes - 1) * self.width
        with self._lock:
            cams = {name: [m.to_dict() for m in ring if m.start >= oldest] for name, ring in self._cams.items()}
        return {"width": self.width, "minutes": self.minutes, "now": round(now, 3), "cameras": cams}


__all__ = ["EVENTS", "Minute", "Timeline"]
