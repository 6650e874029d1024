"""Haar face detection on real pictures and footage; frame sources."""

from __future__ import annotations

import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.edge.detect import DetectorConfig, FaceDetector, find_cascade, iou
from feredge.edge.errors import EdgeError
from feredge.edge.preprocess import crop_face
from feredge.edge.sources import Frame, FrameSource, open_source


def test_astronaut_face_found_in_full_frame_pixels(astronaut_bgr):
    det = FaceDetector()
    boxes = det.detect(astronaut_bgr)
    assert len(boxes) == 1
    x, y, w, h = boxes[0]
    # Eileen Collins' face: upper middle of the 512x512 portrait.
    assert 140 < x + w / 2 < 300 and 60 < y + h / 2 < 200 and 60 < w < 160
    # Detecting at full size finds the same face: the downscaled boxes were scaled back.
    full = FaceDetector(DetectorConfig(detect_width=0)).detect(astronaut_bgr)
    assert len(full) == 1 and iou(full[0], boxes[0]) > 0.6
    # A luma plane (what the daemon gets from a camera) gives the same answer as BGR.
    assert det.detect_gray(cv2.cvtColor(astronaut_bgr, cv2.COLOR_BGR2GRAY)) == boxes


def test_upscaled_frame_boxes_scale_with_it(astronaut_bgr):
    big = cv2.resize(astronaut_bgr, (1024, 1024), interpolation=cv2.INTER_LINEAR)
    (b,) = FaceDetector().detect(astronaut_bgr)
    (bb,) = FaceDetector().detect(big)
    assert iou(tuple(v * 2 for v in b), bb) > 0.6


def test_min_face_and_no_face():
    det = FaceDetector(DetectorConfig(min_face=40))
    assert det.detect(np.full((240, 320, 3), 127, np.uint8)) == []


def test_crop_uses_margin_and_stays_inside(astronaut_bgr):
    (box,) = FaceDetector().detect(astronaut_bgr)
    crop = crop_face(astronaut_bgr, box, 0.1)
    assert crop.shape[0] == pytest.approx(box[3] * 1.2, abs=2)
    edge = crop_face(astronaut_bgr, (0, 0, 100, 100), 0.5)
    assert edge.shape[:2] == (150, 150)


def test_cascade_lookup_and_errors(tmp_path: Path):
    assert find_cascade().name == "haarcascade_frontalface_default.xml"
    assert find_cascade("haarcascade_eye.xml").is_file()
    with pytest.raises(EdgeError, match="cascade file not found"):
        FaceDetector(DetectorConfig(cascade=str(tmp_path / "none.xml")))
    with pytest.raises(EdgeError, match=r"Haar cascade nope\.xml not found"):
        find_cascade("nope.xml")
    bad = tmp_path / "bad.xml"
    bad.write_text("<opencv_storage></opencv_storage>")
    with pytest.raises(EdgeError, match="not a usable OpenCV cascade"):
        FaceDetector(DetectorConfig(cascade=str(bad)))
    with pytest.raises(EdgeError, match="out of range"):
        FaceDetector(DetectorConfig(scale_factor=1.0))


def test_video_source_and_face_in_most_frames(woman_video: Path):
    src = open_source(str(woman_video))
    assert isinstance(src, FrameSource) and src.kind == "video"
    assert src.fps == pytest.approx(29.97, abs=0.1) and src.frame_count == 464
    det = FaceDetector()
    frames = []
    one = 0
    for f in src:
        assert isinstance(f, Frame) and f.image.shape == (336, 596, 3) and f.image.dtype == np.uint8
        frames.append((f.index, f.pts))
        if f.index % 8 == 0:  # every 8th frame keeps the test fast
            one += len(det.detect(f.image)) == 1
    src.close()
    assert len(frames) == 464
    assert [i for i, _ in frames] == list(range(464))
    pts = [p for _, p in frames]
    assert pts[0] == 0.0 and all(b > a for a, b in itertools.pairwise(pts))
    assert pts[-1] == pytest.approx(463 / 29.97, abs=0.05)
    assert one >= 0.9 * 58


def test_image_sources(tmp_path: Path, astronaut_bgr):
    (tmp_path / "sub").mkdir()
    cv2.imwrite(str(tmp_path / "b.png"), astronaut_bgr)
    cv2.imwrite(str(tmp_path / "sub" / "a.jpg"), astronaut_bgr)
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("x")
    src = open_source(tmp_path)
    frames = list(src)
    assert [Path(f.source).name for f in frames] == ["b.png", "a.jpg"]
    assert [f.index for f in frames] == [0, 1] and src.skipped == 1
    assert all(f.pts is None for f in frames)
    with pytest.raises(EdgeError, match="cannot read image"):
        list(open_source(tmp_path / "broken.jpg"))
    with pytest.raises(EdgeError, match="input not found"):
        open_source(tmp_path / "missing.png")
    with pytest.raises(EdgeError, match=r"cannot open .*notes\.txt as an image or video"):
        open_source(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeError, match="no images"):
        open_source(empty)


def test_missing_camera_fails_clearly():
    with pytest.raises(EdgeError, match="cannot open camera '97'"):
        open_source("97")
