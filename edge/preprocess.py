"""The only code that turns a face crop into a model input tensor.

The exporter's calibration, the parity suite, the demo and the daemon all call these
functions with the model's :class:`~feredge.edge.contract.InputSpec`, so a face is prepared the same
way on the workstation and on the device.

Conventions: images are NumPy arrays as OpenCV hands them out — 2-D for grey, HxWx3 BGR for
colour, uint8 0..255 (float images are taken as 0..255 too).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from feredge.edge.contract import InputSpec, QuantParams

_INTERP = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
}


def to_color(image: np.ndarray, color: str) -> np.ndarray:
    """Convert an OpenCV image (grey, BGR or BGRA) to the contract's colour order."""
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 2:
        if color == "gray":
            return image
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if color == "rgb" else cv2.COLOR_GRAY2BGR)
    if color == "gray":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if color == "rgb":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def prepare(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One face crop -> float32 array of shape (H, W, C), normalised as the model expects."""
    if image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    img = to_color(image, spec.color)
    if img.shape[0] != spec.height or img.shape[1] != spec.width:
        img = cv2.resize(img, (spec.width, spec.height), interpolation=_INTERP[spec.resize])
    x = img.astype(np.float32)
    if x.ndim == 2:
        x = x[:, :, None]
    n = spec.normalize
    if n.scale != 1.0:
        x *= np.float32(n.scale)
    if n.offset != 0.0:
        x += np.float32(n.offset)
    return x


def prepare_batch(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """Many crops -> (N, H, W, C) float32."""
    out = np.empty((len(images), spec.height, spec.width, spec.channels), np.float32)
    for i, img in enumerate(images):
        out[i] = prepare(img, spec)
    return out


def quantize(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """Float tensor -> the interpreter's integer input (round half to even, then clip)."""
    if q.dtype == "float32" or not q.scale:
        return x.astype(np.float32, copy=False)
    info = np.iinfo(np.dtype(q.dtype))
    y = np.rint(x / np.float32(q.scale)) + q.zero_point
    return np.clip(y, info.min, info.max).astype(q.dtype)


def dequantize(y: np.ndarray, q: QuantParams) -> np.ndarray:
    if q.dtype == "float32" or not q.scale:
        return y.astype(np.float32, copy=False)
    return (y.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def crop_face(frame: np.ndarray, box: Sequence[int], margin: float) -> np.ndarray:
    """The face crop for ``box`` = (x, y, w, h), grown by ``margin`` x size on every side and
    clipped to the frame. Returns a view, not a copy."""
    x, y, w, h = (int(v) for v in box)
    dx, dy = round(w * margin), round(h * margin)
    H, W = frame.shape[:2]
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(W, x + w + dx), min(H, y + h + dy)
    return frame[y0:y1, x0:x1]


def probabilities(outputs: np.ndarray, activation: str, temperature: float = 1.0) -> np.ndarray:
    """Model outputs (last axis = classes) -> calibrated probabilities, softmax(z / T).

    For probability outputs z = log p, so T = 1 leaves them unchanged. A single sigmoid
    output stays a one-element probability (T applies to its logit).
    """
    z = np.asarray(outputs, dtype=np.float64)
    if activation == "sigmoid":
        p = np.clip(z, 1e-7, 1 - 1e-7)
        logit = np.log(p / (1 - p)) / temperature
        return (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    if activation == "softmax":
        if temperature == 1.0:
            return z.astype(np.float32)
        z = np.log(np.clip(z, 1e-12, None))
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
