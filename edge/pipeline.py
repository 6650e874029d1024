"""Frame -> faces -> expressions: the one loop shared by ``feredge classify`` and the daemon.

The grey conversion is done once per frame and reused for detection and (for grey models)
for the crops, because on a Pi a colour conversion of a full frame costs more than
classifying a face.

Example::

    from edge.model import Classifier
    from edge.detect import FaceDetector
    from edge.pipeline import Pipeline
    from edge.sources import open_source

    pipe = Pipeline(Classifier("out/fer"), FaceDetector())
    src = open_source("clip.mp4")
    for result in pipe.run(src):
        print(result.to_dict())
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from edge.detect import Box, FaceDetector
from edge.model import Classifier, Prediction
from edge.preprocess import crop_face
from edge.sources import Frame


@dataclass
class Face:
    box: Box  # (x, y, w, h) in full-frame pixels
    prediction: Prediction

    def to_dict(self) -> dict[str, Any]:
        return {"box": [int(v) for v in self.box], **self.prediction.to_dict()}


@dataclass
class FrameResult:
    frame: Frame
    faces: list[Face] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` line: source, frame (0-based), ts, pts (video files only), faces."""
        d: dict[str, Any] = {"source": self.frame.source, "frame": self.frame.index, "ts": round(self.frame.ts, 3)}
        if self.frame.pts is not None:
            d["pts"] = self.frame.pts
        d["faces"] = [f.to_dict() for f in self.faces]
        return d


class Pipeline:
    """Detect faces in a frame and classify each one. ``max_faces`` keeps the largest N."""

    def __init__(self, classifier: Classifier, detector: FaceDetector | None = None, max_faces: int | None = None):
        self.classifier = classifier
        self.detector = detector or FaceDetector()
        self.max_faces = max_faces
        self._gray_model = classifier.contract.input.color == "gray"
        self._margin = classifier.contract.input.face_margin

    def faces(self, image: np.ndarray, gray: np.ndarray | None = None) -> list[Face]:
        """Faces in one image (BGR or grey). Pass ``gray`` when you already have it (a Y plane)."""
        if gray is None:
            gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        boxes = self.detector.detect_gray(gray)
        if self.max_faces is not None:
            boxes = boxes[: self.max_faces]
        return self.classify_boxes(image, boxes, gray)

    def classify_boxes(self, image: np.ndarray, boxes: Iterable[Box], gray: np.ndarray | None = None) -> list[Face]:
        """Classify given boxes (e.g. from a tracker) with crops from the full-resolution frame."""
        src = gray if (self._gray_model and gray is not None) else image
        clf = self.classifier
        return [Face(tuple(b), clf.classify(crop_face(src, b, self._margin))) for b in boxes]

    def process(self, frame: Frame) -> FrameResult:
        return FrameResult(frame, self.faces(frame.image))

    def run(self, source: Iterable[Frame], max_frames: int | None = None) -> Iterator[FrameResult]:
        for frame in source:
            if max_frames is not None and frame.index >= max_frames:
                break
            yield self.process(frame)
