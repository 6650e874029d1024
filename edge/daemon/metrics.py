"""The daemon's Prometheus metrics, with ``prometheus_client``.

Why the library and not the ~150 hand-written lines this module held before: the exposition
format has corners (escaping, ``+Inf`` buckets, histogram sums) that the ecosystem's standard
client gets right and keeps right, it is pure Python and small (one wheel in the Pi bundle), and
it brings the process collector for free (``process_resident_memory_bytes``,
``process_cpu_seconds_total``, ``process_open_fds``), which is what one watches on a Pi for
months. The documented names are unchanged but one: the gauge ``feredge_faces`` is now
``feredge_faces_current`` (see below). The ``_created`` series are switched off (they double the
samples and no dashboard here uses them).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

prometheus_client.disable_created_metrics()

# The text format generate_latest writes (Prometheus 2 and 3 both read it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Inference time of one face (seconds): int8 on a Pi 4/5 is 1-20 ms, Coral ~1 ms.
INFERENCE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
DETECT_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class DaemonMetrics:
    """The metrics the daemon exports (names documented in docs/daemon.md), in a registry of
    their own so that several daemons in one process (tests) do not collide."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=r)
        self.up = Gauge("feredge_up", "1 while the daemon runs", registry=r)
        self.inference = Histogram("feredge_inference_seconds", "Time to classify one face", ["backend"],
                                   buckets=INFERENCE_BUCKETS, registry=r)
        self.detect = Histogram("feredge_detect_seconds", "Time to detect faces in one frame", ["camera"],
                                buckets=DETECT_BUCKETS, registry=r)
        self.fps = Gauge("feredge_camera_fps", "Frames processed per second", ["camera"], registry=r)
        self.online = Gauge("feredge_camera_up", "1 when the camera delivers frames", ["camera"], registry=r)
        self.frames = Counter("feredge_frames_total", "Frames processed", ["camera"], registry=r)
        self.corrupt = Counter("feredge_frames_corrupt_total", "Frames skipped as unreadable", ["camera"], registry=r)
        self.reconnects = Counter("feredge_camera_reconnects_total", "Camera reopen attempts", ["camera"], registry=r)
        self.faces = Counter("feredge_faces_total", "Faces classified, by smoothed expression",
                             ["camera", "expression"], registry=r)
        self.events = Counter("feredge_events_total", "Track events", ["camera", "event"], registry=r)
        # Not "feredge_faces": that is the family name of the counter feredge_faces_total, and
        # OpenMetrics (and prometheus_client) refuse a gauge of the same name.
        self.faces_now = Gauge("feredge_faces_current", "Faces in the latest frame", ["camera"], registry=r)
        self.mqtt_connected = Gauge("feredge_mqtt_connected", "1 while connected to the MQTT broker", registry=r)
        self.mqtt_dropped = Counter("feredge_mqtt_dropped_total", "MQTT messages dropped from a full queue",
                                    registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, sample: str, **labels: str) -> float | None:
        """One sample's current value (``feredge_frames_total``, ``camera="cam0"``), for status lines and tests."""
        return self.registry.get_sample_value(sample, labels)
