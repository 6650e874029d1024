"""Frame -> faces -> expressions: the one loop shared by ``feredge classify`` and the daemon.

The grey conversion is done once per frame and reused for detection and (for grey models)
for the crops, because on a Pi a colour conversion of a full frame costs more than
classifying a face.

Example::

    from feredge.edge.model import Classifier
    from feredge.edge.detect import FaceDetector
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.sources import open_source

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

from feredge.edge.detect import Box, FaceDetector
from feredge.edge.errors import EdgeError
from feredge.edge.model import Classifier, Prediction
from feredge.edge.preprocess import crop_face
from feredge.edge.sources import Frame


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
        if self.frame.warnings:
            d["warnings"] = list(self.frame.warnings)
        return d


class Pipeline:
    """Detect faces in a frame and classify each one. ``max_faces`` keeps the largest N.

    For consecutive frames of one video or camera, :meth:`process` searches the whole frame
    only every ``redetect_every`` frames (and whenever a known face is not re-found); in
    between it re-finds the known faces near where they were (:meth:`FaceDetector.detect_near`),
    which costs a fraction of a full search. A face entering the picture is therefore reported
    at most ``redetect_every - 1`` frames late; ``redetect_every=1`` searches every frame fully.
    Still images are always searched fully. ``redetect_every`` defaults to the detector's
    (:class:`~feredge.edge.detect.DetectorConfig`, the one place the detector defaults live).
    """

    def __init__(
        self,
        classifier: Classifier,
        detector: FaceDetector | None = None,
        max_faces: int | None = None,
        redetect_every: int | None = None,
    ):
        self.detector = detector or FaceDetector()
        if redetect_every is None:
            redetect_every = self.detector.config.redetect_every
        if redetect_every < 1:
            raise EdgeError(f"redetect_every must be >= 1, got {redetect_every}")
        self.classifier = classifier
        self.max_faces = max_faces
        self.redetect_every = redetect_every
        self._gray_model = classifier.contract.input.color == "gray"
        self._margin = classifier.contract.input.face_margin
        self._last: tuple[str, int] | None = None  # (source, index) of the previous frame
        self._boxes: list[Box] = []
        self._since_full = 0
        self.full_searches = 0  # counters, for logs and benchmarks
        self.near_searches = 0

    def detect(self, gray: np.ndarray, *, chained: bool = False, still: bool = False) -> list[Box]:
        """Face boxes in a grey plane, on the re-detection schedule (the one implementation, used
        by ``classify`` and the daemon): while ``chained`` (this frame follows the previous one of
        the same stream) and fewer than ``redetect_every`` frames have passed since the last full
        search, faces are re-found near their last boxes; otherwise, or when one is lost, the
        whole plane is searched. ``still``: a photo, searched finely enough for ``min_face``."""
        self._since_full += 1
        boxes = None
        if chained and self._boxes and self._since_full < self.redetect_every:
            boxes = self.detector.detect_near(gray, self._boxes)
            self.near_searches += 1
        if boxes is None:
            boxes = self.detector.detect_gray(gray, still)
            self.full_searches += 1
            self._since_full = 0
        if self.max_faces is not None:
            boxes = boxes[: self.max_faces]
        self._boxes = list(boxes)
        return boxes

    def faces(self, image: np.ndarray, gray: np.ndarray | None = None, *, chained: bool = False,
              still: bool = False) -> list[Face]:
        """Faces in one image (BGR or grey), detected on :meth:`detect`'s schedule and classified.
        Pass ``gray`` when you already have it (a Y plane)."""
        if gray is None:
            gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        return self.classify_boxes(image, self.detect(gray, chained=chained, still=still), gray)

    def classify_boxes(self, image: np.ndarray, boxes: Iterable[Box], gray: np.ndarray | None = None) -> list[Face]:
        """Classify given boxes (e.g. from a tracker) with crops from the full-resolution frame."""
        src = gray if (self._gray_model and gray is not None) else image
        clf = self.classifier
        return [Face(tuple(b), clf.classify(crop_face(src, b, self._margin))) for b in boxes]

    def process(self, frame: Frame, still: bool = False) -> FrameResult:
        # Image folders give every file its own source name, so only video/camera frames chain.
        chained = not still and self._last == (frame.source, frame.index - 1)
        self._last = (frame.source, frame.index)
        return FrameResult(frame, self.faces(frame.image, chained=chained, still=still))

    def run(self, source: Iterable[Frame], max_frames: int | None = None) -> Iterator[FrameResult]:
        still = getattr(source, "kind", None) == "images"
        for frame in source:
            if max_frames is not None and frame.index >= max_frames:
                break
            yield self.process(frame, still)
