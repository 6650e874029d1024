"""Pipeline on real footage: full-frame searches vs re-finding known faces nearby."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.edge.detect import FaceDetector, iou
from feredge.edge.errors import EdgeError
from feredge.edge.model import Classifier
from feredge.edge.pipeline import Pipeline
from feredge.edge.sources import Frame, open_source


@pytest.fixture(scope="module")
def frames(woman_video: Path) -> list[Frame]:
    src = open_source(str(woman_video))
    out = []
    for f in src:
        out.append(f)
        if len(out) == 30:
            break
    src.close()
    return out


def test_detect_near_refinds_the_face_and_gives_up_elsewhere(frames):
    det = FaceDetector()
    g0, g1 = (cv2.cvtColor(f.image, cv2.COLOR_BGR2GRAY) for f in frames[:2])
    (b0,) = det.detect_gray(g0)
    near = det.detect_near(g1, [b0])
    (full1,) = det.detect_gray(g1)
    assert near is not None and len(near) == 1
    assert iou(near[0], full1) > 0.7
    assert det.detect_near(g1, [(0, 0, 60, 60)]) is None  # nothing there: caller must search fully
    assert det.detect_near(g1, [b0, (0, 0, 60, 60)]) is None


def test_pipeline_searches_fully_every_n_frames(edge_model: Path, frames):
    clf = Classifier(edge_model, device="cpu", num_threads=1)
    fast = Pipeline(clf, FaceDetector(), redetect_every=10)
    full = Pipeline(clf, FaceDetector(), redetect_every=1)
    res_fast = [fast.process(f) for f in frames]
    res_full = [full.process(f) for f in frames]
    assert full.full_searches == len(frames) and full.near_searches == 0
    assert fast.full_searches == 3 and fast.near_searches == len(frames) - 3  # frames 0, 10, 20
    assert all(len(r.faces) == 1 for r in res_fast)
    ious = [iou(a.faces[0].box, b.faces[0].box) for a, b in zip(res_fast, res_full, strict=True) if b.faces]
    assert len(ious) >= len(frames) - 2 and float(np.mean(ious)) > 0.75
    # A new source starts with a full search; still images are never chained.
    fast.process(Frame(frames[0].image, 0, 0.0, "other.mp4", 0.0))
    assert fast.full_searches == 4
    with pytest.raises(EdgeError, match="redetect_every"):
        Pipeline(clf, FaceDetector(), redetect_every=0)
