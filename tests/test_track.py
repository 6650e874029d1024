"""IoU tracker: stable ids, EMA smoothing without flicker, appear/change/leave events."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from feredge.edge.daemon.config import TrackingConfig
from feredge.edge.track import Tracker, iou

LABELS = ["angry", "happy", "neutral"]


def probs(**kv: float) -> np.ndarray:
    p = np.array([kv.get(lab, 0.0) for lab in LABELS], np.float32)
    rest = 1.0 - p.sum()
    return p + rest / len(LABELS) if rest > 0 else p


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_appear_after_min_hits_then_leave():
    t = Tracker(LABELS, TrackingConfig(min_hits=2, leave_after=1.0), camera="c")
    u = t.update([((10, 10, 50, 50), probs(happy=0.9))], ts=0.0)
    assert u.faces == [] and u.events == []  # one frame is not enough to appear
    u = t.update([((12, 10, 50, 50), probs(happy=0.9))], ts=0.1)
    assert [e["event"] for e in u.events] == ["appeared"]
    ev = u.events[0]
    assert ev["camera"] == "c" and ev["label"] == "happy" and ev["track_id"] == u.faces[0].track_id
    assert u.faces[0].box == (12, 10, 50, 50)
    # not seen for less than leave_after: still reported (kept), no event
    u = t.update([], ts=0.5)
    assert u.events == []
    u = t.update([], ts=1.2)
    assert [e["event"] for e in u.events] == ["left"]
    assert u.events[0]["duration"] == pytest.approx(0.1)
    assert t.tracks == []


def test_ids_stable_across_moving_boxes_and_two_faces():
    t = Tracker(LABELS, TrackingConfig(min_hits=1))
    ids = set()
    for i in range(10):
        a = ((10 + 3 * i, 10, 40, 40), probs(happy=0.8))
        b = ((200 - 3 * i, 50, 40, 40), probs(angry=0.8))
        u = t.update([b, a] if i % 2 else [a, b], ts=i * 0.1)
        by_label = {f.label: f.track_id for f in u.faces}
        ids.add((by_label["happy"], by_label["angry"]))
    assert len(ids) == 1  # the same two ids the whole time
    (h, a), = ids
    assert h != a


def test_smoothing_does_not_flicker():
    """Raw predictions alternate between happy and neutral every frame with a slight happy
    bias: the raw label flickers, the smoothed label stays happy and no change event fires
    (smoothing alone, no hold time)."""
    rng = np.random.default_rng(0)
    t = Tracker(LABELS, TrackingConfig(min_hits=1, smoothing=0.2, change_margin=0.1, change_hold=0.0))
    raw_labels, smooth_labels, events = [], [], []
    for i in range(60):
        if i % 2:
            p = probs(happy=0.35, neutral=0.55)
        else:
            p = probs(happy=0.75, neutral=0.15)
        p = p + rng.normal(0, 0.01, 3).astype(np.float32)
        u = t.update([((100, 100, 80, 80), p)], ts=i / 15)
        raw_labels.append(LABELS[int(np.argmax(p))])
        smooth_labels.append(u.faces[0].label)
        events += [e["event"] for e in u.events]
    raw_changes = sum(a != b for a, b in itertools.pairwise(raw_labels))
    smooth_changes = sum(a != b for a, b in itertools.pairwise(smooth_labels))
    assert raw_changes > 50
    assert smooth_changes == 0 and set(smooth_labels) == {"happy"}
    assert events == ["appeared"]


def _smoothed_after(fps: float, seconds: float, cfg: TrackingConfig) -> np.ndarray:
    t = Tracker(LABELS, cfg)
    n = round(seconds * fps)
    for i in range(n + 1):
        p = probs(happy=0.9) if i == 0 else probs(angry=0.9)
        t.update([((0, 0, 60, 60), p)], ts=i / fps)
    return t.tracks[0].probs


def test_smoothing_is_in_seconds_not_frames():
    """A 30 fps camera and a 5 fps one reach the same smoothed state after the same time."""
    cfg = TrackingConfig(min_hits=1, smoothing=0.5)
    fast, slow = _smoothed_after(30, 0.6, cfg), _smoothed_after(5, 0.6, cfg)
    assert fast == pytest.approx(slow, abs=1e-5)
    lo, hi = float(probs(happy=0.9)[0]), float(probs(angry=0.9)[0])
    assert float(fast[0]) == pytest.approx(lo + (hi - lo) * (1 - np.exp(-0.6 / 0.5)), abs=1e-4)  # angry rose
    raw = _smoothed_after(30, 0.6, TrackingConfig(min_hits=1, smoothing=0.0))
    assert raw == pytest.approx(probs(angry=0.9))


def test_change_needs_the_lead_held_for_change_hold():
    """A new expression that leads for less than change_hold seconds changes nothing; one that
    keeps the lead changes the label once, change_hold after it took the lead."""
    cfg = TrackingConfig(min_hits=1, smoothing=0.0, change_margin=0.1, change_hold=0.5)
    t = Tracker(LABELS, cfg)
    evs = []
    fps = 10
    for i in range(40):
        ts = i / fps
        if i < 10 or 14 <= i < 20:
            p = probs(happy=0.9)
        else:
            p = probs(angry=0.9)  # 10..13: 0.4 s blip; from 20 on: for good
        evs += [(ts, e) for e in t.update([((0, 0, 60, 60), p)], ts=ts).events]
    changes = [(ts, e) for ts, e in evs if e["event"] == "changed"]
    assert len(changes) == 1
    ts, e = changes[0]
    assert e["label"] == "angry" and e["previous"] == "happy"
    assert ts == pytest.approx(2.0 + 0.5)


def test_real_change_fires_one_event_with_previous_label():
    t = Tracker(LABELS, TrackingConfig(min_hits=1))
    evs = []
    for i in range(30):
        p = probs(happy=0.9) if i < 10 else probs(angry=0.9)
        evs += t.update([((0, 0, 60, 60), p)], ts=float(i)).events
    changes = [e for e in evs if e["event"] == "changed"]
    assert len(changes) == 1
    assert changes[0]["previous"] == "happy" and changes[0]["label"] == "angry"


def test_min_score_gives_uncertain():
    t = Tracker(LABELS, TrackingConfig(min_hits=1), min_score=0.6)
    u = t.update([((0, 0, 60, 60), np.array([0.4, 0.35, 0.25], np.float32))], ts=0.0)
    assert u.faces[0].label == "uncertain"
    assert u.faces[0].scores == pytest.approx({"angry": 0.4, "happy": 0.35, "neutral": 0.25})


def test_hold_keeps_tracks_between_detections_and_clear_reports_leaves():
    t = Tracker(LABELS, TrackingConfig(min_hits=1, leave_after=1.0))
    t.update([((0, 0, 60, 60), probs(happy=0.9))], ts=0.0)
    u = t.hold(0.5)
    assert [f.label for f in u.faces] == ["happy"] and u.events == []
    assert [e["event"] for e in t.clear(0.6)] == ["left"]
    assert t.hold(0.7).faces == []


def test_non_overlapping_detection_starts_a_new_track():
    t = Tracker(LABELS, TrackingConfig(min_hits=1, iou=0.3))
    first = t.update([((0, 0, 50, 50), probs(happy=0.9))], ts=0.0).faces[0].track_id
    second = t.update([((300, 300, 50, 50), probs(happy=0.9))], ts=0.1).faces
    assert [f.track_id for f in second] == [first + 1]
    assert len(t.tracks) == 2  # the first is kept until leave_after
