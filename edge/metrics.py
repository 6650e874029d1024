"""A tiny Prometheus registry: counters, gauges and histograms in the text exposition format.

``prometheus_client`` would be one more dependency on the device for ~100 lines of
formatting; the daemon needs only labelled counters, gauges and one histogram, all updated
from a few threads, so a lock per registry is enough.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence

# Inference time of one face (seconds): int8 on a Pi 4/5 is 1-20 ms, Coral ~1 ms.
DEFAULT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v == int(v) and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


class _Metric:
    kind = "untyped"

    def __init__(self, registry: Registry, name: str, help_text: str, labelnames: Sequence[str]) -> None:
        self.name, self.help, self.labelnames = name, help_text, tuple(labelnames)
        self._lock = registry.lock
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def get(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        for key, v in sorted(self._values.items()):
            yield f"{self.name}{_labels(self.labelnames, key)} {_num(v)}"


class Counter(_Metric):
    kind = "counter"

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        with self._lock:
            k = self._key(labels)
            self._values[k] = self._values.get(k, 0.0) + amount


class Gauge(_Metric):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[self._key(labels)] = float(value)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, registry: Registry, name: str, help_text: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        super().__init__(registry, name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets))
        self._h: dict[tuple[str, ...], list[float]] = {}  # per bucket counts + [sum, count]

    def observe(self, value: float, **labels: str) -> None:
        with self._lock:
            k = self._key(labels)
            h = self._h.get(k)
            if h is None:
                h = self._h[k] = [0.0] * (len(self.buckets) + 2)
            for i, b in enumerate(self.buckets):
                if value <= b:
                    h[i] += 1
            h[-2] += value
            h[-1] += 1

    def count(self, **labels: str) -> int:
        with self._lock:
            h = self._h.get(self._key(labels))
            return int(h[-1]) if h else 0

    def samples(self) -> Iterable[str]:
        for key, h in sorted(self._h.items()):
            for b, c in zip(self.buckets, h, strict=False):
                le = 'le="' + _num(b) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, key, le)} {_num(c)}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labelnames, key, inf)} {_num(h[-1])}"
            yield f"{self.name}_sum{_labels(self.labelnames, key)} {_num(h[-2])}"
            yield f"{self.name}_count{_labels(self.labelnames, key)} {_num(h[-1])}"


class Registry:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._metrics: dict[str, _Metric] = {}

    def _add(self, m: _Metric) -> _Metric:
        if m.name in self._metrics:
            raise ValueError(f"metric {m.name} registered twice")
        self._metrics[m.name] = m
        return m

    def counter(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(self, name, help_text, labelnames))  # type: ignore[return-value]

    def gauge(self, name: str, help_text: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(self, name, help_text, labelnames))  # type: ignore[return-value]

    def histogram(self, name: str, help_text: str, labelnames: Sequence[str] = (),
                  buckets: Sequence[float] = DEFAULT_BUCKETS) -> Histogram:
        return self._add(Histogram(self, name, help_text, labelnames, buckets))  # type: ignore[return-value]

    def render(self) -> str:
        """The text exposition format, version 0.0.4."""
        lines: list[str] = []
        with self.lock:
            for m in self._metrics.values():
                lines.append(f"# HELP {m.name} {m.help}")
                lines.append(f"# TYPE {m.name} {m.kind}")
                lines.extend(m.samples())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class DaemonMetrics:
    """The metrics the daemon exports (names documented in docs/daemon.md)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.up = r.gauge("feredge_up", "1 while the daemon runs")
        self.inference = r.histogram(
            "feredge_inference_seconds", "Time to classify one face", ("backend",))
        self.detect = r.histogram(
            "feredge_detect_seconds", "Time to detect faces in one frame", ("camera",),
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0))
        self.fps = r.gauge("feredge_camera_fps", "Frames processed per second", ("camera",))
        self.online = r.gauge("feredge_camera_up", "1 when the camera delivers frames", ("camera",))
        self.frames = r.counter("feredge_frames_total", "Frames processed", ("camera",))
        self.corrupt = r.counter("feredge_frames_corrupt_total", "Frames skipped as unreadable", ("camera",))
        self.reconnects = r.counter("feredge_camera_reconnects_total", "Camera reopen attempts", ("camera",))
        self.faces = r.counter("feredge_faces_total", "Faces classified, by smoothed expression",
                               ("camera", "expression"))
        self.events = r.counter("feredge_events_total", "Track events", ("camera", "event"))
        self.faces_now = r.gauge("feredge_faces", "Faces in the latest frame", ("camera",))
        self.mqtt_connected = r.gauge("feredge_mqtt_connected", "1 while connected to the MQTT broker")
        self.mqtt_dropped = r.counter("feredge_mqtt_dropped_total", "MQTT messages dropped from a full queue")
