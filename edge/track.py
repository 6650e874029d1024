"""Per-face tracking: stable ids, smoothed expressions, and appear/change/leave events.

A per-frame classifier flickers between neighbouring expressions; a dashboard or a Home
Assistant automation wants "this face became happy" once, not fifteen times a second. So
detections are linked across frames by box overlap (IoU, greedy — a shelf camera sees a
handful of faces, Hungarian matching buys nothing), each track's probabilities are
smoothed exponentially with a time constant in seconds (a per-frame weight would smooth a
30 fps camera six times less than a 5 fps one), and its label only changes when the new
expression leads the old one by a margin (hysteresis) for a hold time. Events are emitted
from the smoothed state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feredge.edge.detect import Box, iou
from feredge.edge.model import UNCERTAIN
from feredge.edge.rules import at_least, positive, ruled


@dataclass
class TrackingConfig:
    iou: float = ruled(0.3, lambda v: 0.0 < v < 1.0, "between 0 and 1")
    # Time constant (seconds) of the exponential smoothing of a face's probabilities. In seconds,
    # not frames, so a 30 fps USB camera and a 5 fps Pi camera smooth alike; 0 = no smoothing.
    smoothing: float = ruled(0.5, at_least(0), ">= 0 seconds")
    # A face must be seen this many frames before it "appears" (suppresses false detections).
    min_hits: int = ruled(2, at_least(1), ">= 1")
    # A track "leaves" after this many seconds without a matching detection.
    leave_after: float = ruled(1.5, positive, "> 0 seconds")
    # A label change needs the new label to lead the old one by this much (hysteresis) ...
    change_margin: float = ruled(0.1, lambda v: 0.0 <= v < 1.0, "in [0, 1)")
    # ... without a break for this many seconds (0 = at once).
    change_hold: float = ruled(0.3, at_least(0), ">= 0 seconds")


@dataclass
class Track:
    id: int
    box: Box
    probs: np.ndarray
    label: str
    first_seen: float
    last_seen: float
    hits: int = 1
    confirmed: bool = False
    pending: str | None = None  # a label that leads by the margin, waiting out change_hold
    pending_since: float = 0.0

    @property
    def score(self) -> float:
        return float(self.probs.max())


@dataclass
class TrackedFace:
    """One face in one frame, as the sinks publish it."""

    track_id: int
    box: Box
    label: str
    score: float
    scores: dict[str, float]
    raw_label: str | None = None  # the unsmoothed label of this frame (None: box kept, not re-detected)

    def to_dict(self) -> dict[str, Any]:
        return {
            "track_id": self.track_id,
            "box": [int(v) for v in self.box],
            "label": self.label,
            "score": round(self.score, 4),
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
        }


@dataclass
class TrackUpdate:
    faces: list[TrackedFace] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


class Tracker:
    """IoU tracker for one camera. Not thread-safe: one per camera loop."""

    def __init__(self, labels: Sequence[str], config: TrackingConfig | None = None, *,
                 min_score: float = 0.0, camera: str = "cam0", id_start: int = 1) -> None:
        self.labels = list(labels)
        self.cfg = config or TrackingConfig()
        self.min_score = min_score
        self.camera = camera
        self.tracks: list[Track] = []
        self._ids = itertools.count(id_start)

    # ------------------------------------------------------------------------------------
    def update(self, detections: Sequence[tuple[Sequence[int], np.ndarray]], ts: float) -> TrackUpdate:
        """Feed one frame's detections ``[(box, probabilities), ...]`` taken at time ``ts``."""
        out = TrackUpdate()
        matched_tracks: set[int] = set()
        assignment: dict[int, Track] = {}
        pairs = sorted(
            ((iou(t.box, d[0]), ti, di) for ti, t in enumerate(self.tracks) for di, d in enumerate(detections)),
            reverse=True,
        )
        for overlap, ti, di in pairs:
            if overlap < self.cfg.iou:
                break
            if ti in matched_tracks or di in assignment:
                continue
            matched_tracks.add(ti)
            assignment[di] = self.tracks[ti]

        for di, (box, probs) in enumerate(detections):
            p = np.asarray(probs, dtype=np.float32).reshape(-1)
            box_t = tuple(int(v) for v in box)
            track = assignment.get(di)
            if track is None:
                track = Track(next(self._ids), box_t, p.copy(), self._label_of(p), ts, ts)
                self.tracks.append(track)
            else:
                a = self._weight(ts - track.last_seen)
                track.probs = a * p + (1.0 - a) * track.probs
                track.box = box_t
                track.last_seen = ts
                track.hits += 1
                self._maybe_change(track, ts, out.events)
            if not track.confirmed and track.hits >= self.cfg.min_hits:
                track.confirmed = True
                out.events.append(self._event("appeared", track, ts))
            if track.confirmed:
                out.faces.append(self._face(track, raw=self._label_of(p)))

        # Tracks not seen this frame: keep them for leave_after seconds, then they leave.
        kept = []
        seen = {id(t) for t in assignment.values()} | {id(t) for t in self.tracks if t.last_seen == ts}
        for t in self.tracks:
            if id(t) in seen:
                kept.append(t)
            elif ts - t.last_seen >= self.cfg.leave_after:
                if t.confirmed:
                    out.events.append(self._event("left", t, ts))
            else:
                kept.append(t)
        self.tracks = kept
        return out

    def hold(self, ts: float) -> TrackUpdate:
        """A frame without detection (``detect_every`` > 1): report current tracks, expire old ones."""
        out = TrackUpdate()
        kept = []
        for t in self.tracks:
            if ts - t.last_seen >= self.cfg.leave_after:
                if t.confirmed:
                    out.events.append(self._event("left", t, ts))
                continue
            kept.append(t)
            if t.confirmed:
                out.faces.append(self._face(t, raw=None))
        self.tracks = kept
        return out

    def clear(self, ts: float) -> list[dict[str, Any]]:
        """Every track leaves (camera went offline, daemon stopping)."""
        events = [self._event("left", t, ts) for t in self.tracks if t.confirmed]
        self.tracks = []
        return events

    # ------------------------------------------------------------------------------------
    def _label_of(self, p: np.ndarray) -> str:
        i = int(np.argmax(p))
        if float(p[i]) < self.min_score:
            return UNCERTAIN
        return self.labels[i] if i < len(self.labels) else str(i)

    def _weight(self, dt: float) -> float:
        """Weight of a new frame's probabilities after ``dt`` seconds: 1 - exp(-dt/tau)."""
        tau = self.cfg.smoothing
        if tau <= 0:
            return 1.0
        return 1.0 - math.exp(-max(dt, 1e-3) / tau)

    def _maybe_change(self, t: Track, ts: float, events: list[dict[str, Any]]) -> None:
        best = self._label_of(t.probs)
        leads = best != t.label
        if leads and t.label != UNCERTAIN and best != UNCERTAIN:
            old_p = float(t.probs[self.labels.index(t.label)])
            leads = float(t.probs.max()) - old_p >= self.cfg.change_margin
        if not leads:
            t.pending = None
            return
        if t.pending != best:
            t.pending, t.pending_since = best, ts
        if ts - t.pending_since < self.cfg.change_hold:
            return
        t.pending = None
        previous, t.label = t.label, best
        if t.confirmed:
            ev = self._event("changed", t, ts)
            ev["previous"] = previous
            events.append(ev)

    def _face(self, t: Track, raw: str | None) -> TrackedFace:
        scores = {lab: float(t.probs[i]) for i, lab in enumerate(self.labels) if i < t.probs.size}
        return TrackedFace(t.id, t.box, t.label, t.score, scores, raw)

    def _event(self, kind: str, t: Track, ts: float) -> dict[str, Any]:
        return {
            "event": kind,
            "camera": self.camera,
            "track_id": t.id,
            "label": t.label,
            "score": round(t.score, 4),
            "ts": round(ts, 3),
            "duration": round(max(0.0, (t.last_seen if kind == "left" else ts) - t.first_seen), 3),
        }
