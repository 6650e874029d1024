"""Faces from real footage, found and cropped the way the device does (:mod:`feredge.edge.sources`,
:mod:`feredge.edge.detect`, :mod:`feredge.edge.pipeline`): the parity suite's camera-face check and the
end-to-end (train/serve skew) building blocks.

The model's *training* preprocessing is written independently in the test that uses these, so
that a mismatch between the two shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feredge.edge.errors import FeredgeError
from feredge.export.errors import ExportError


def read_footage(path: str | Path, every: int = 4) -> list[np.ndarray]:
    """Frames of a video (every ``every``-th) or a single still image, decoded by the device's
    own sources (:mod:`feredge.edge.sources`)."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"footage not found: {p}")
    return read_frames(p, every=every)


def read_frames(video: str | Path, every: int = 4, limit: int | None = None) -> list[np.ndarray]:
    """Every ``every``-th frame of a video file (or a still image) as BGR arrays, through
    :func:`feredge.edge.sources.open_source`: the decoder the device uses."""
    from feredge.edge.sources import open_source

    try:
        src = open_source(Path(video))
    except FeredgeError as e:
        raise ExportError(str(e)) from None
    frames = []
    try:
        for i, frame in enumerate(src):
            if i % every == 0:
                frames.append(frame.image)
                if limit is not None and len(frames) >= limit:
                    break
    except FeredgeError as e:
        raise ExportError(str(e)) from None
    finally:
        src.close()
    if not frames:
        raise ExportError(f"no frames decoded from {video}")
    return frames


@dataclass
class RuntimeFace:
    """One face as the device saw it: where, the crop it classified, and its probabilities."""

    source: str
    frame: int
    box: tuple[int, int, int, int]
    crop: np.ndarray  # BGR (or grey) crop of the full frame, contract margin applied
    probs: np.ndarray  # the runtime's probabilities, in the contract's label order


def runtime_faces(frames: list[np.ndarray], classifier, detector=None, source: str = "") -> list[RuntimeFace]:
    """Run the device pipeline (:class:`feredge.edge.pipeline.Pipeline`: Haar detection on the full
    frame, the contract's margin, :mod:`feredge.edge.preprocess`, the int8 interpreter) on each frame and
    keep each face's crop, so a second, independent preparation can be compared on the same
    pixels."""
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.preprocess import crop_face

    pipe = Pipeline(classifier, detector)
    margin = classifier.contract.input.face_margin
    out = []
    for k, frame in enumerate(frames):
        for face in pipe.faces(frame):
            b = tuple(int(v) for v in face.box[:4])
            probs = np.array([face.prediction.scores[lab] for lab in classifier.labels], np.float32)
            out.append(RuntimeFace(source, k, b, np.ascontiguousarray(crop_face(frame, b, margin)), probs))
    return out
