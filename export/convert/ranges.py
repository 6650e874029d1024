"""Activation ranges for the int8 TFLite beyond min-max, chosen by agreement on held-out faces.

Why: the TFLite converter quantises each activation over the min-max it saw on the calibration
faces. One outlier stretches a tensor's range, and every ordinary value then lands on a coarser
grid; on `fer`'s mini-XCEPTION that alone costs about 3 % of top-1 agreement with the float model.
Clipping a tensor's rare tail buys a finer grid for everything else.

How, with the converter's own pieces (as ``tf.lite.experimental.QuantizationDebugger`` does):
1. ``_experimental_calibrate_only`` gives the float flatbuffer with each tensor's calibrated
   min/max;
2. the float model runs on the calibration faces with every intermediate tensor kept, and one
   histogram per tensor is collected;
3. each strategy (min-max, percentiles, least squared error) proposes new min/max per tensor,
   written into the calibrated flatbuffer, and ``mlir_quantize`` makes the full-integer model;
4. the caller keeps the strategy whose int8 copy agrees best with the float model on faces that
   were not used to calibrate.

The graph's input range is pinned to what the device feeds, and the tensors that feed a graph
output keep their min-max: clipping the final logits could merge two top scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from feredge.export.errors import ExportError

log = logging.getLogger(__name__)

BINS = 2048
# Strategies tried by default, cheapest first; each is a full mlir_quantize (~1 s for a FER CNN).
STRATEGIES = ("minmax", "p99.999", "p99.99", "mse")


@dataclass
class Histogram:
    lo: float
    hi: float
    counts: np.ndarray  # BINS counts over [lo, hi]

    def edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, BINS + 1)

    def quantile(self, q: float) -> float:
        c = np.cumsum(self.counts)
        if c[-1] == 0:
            return self.lo
        i = int(np.searchsorted(c, q * c[-1]))
        return float(self.edges()[min(i + 1, BINS)])


def _schema():
    from feredge.export.convert.tflite import _schema as s

    return s()


def calibrated_ranges(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """Tensor index -> calibrated (min, max) of subgraph 0's activation tensors."""
    model = _schema().ModelT.InitFromPackedBuf(calibrated, 0)
    out = {}
    for i, t in enumerate(model.subgraphs[0].tensors or []):
        q = t.quantization
        if q is not None and q.min is not None and q.max is not None and len(q.min) == 1:
            out[i] = (float(q.min[0]), float(q.max[0]))
    return out


def with_ranges(calibrated: bytes, ranges: dict[int, tuple[float, float]]) -> bytes:
    """The calibrated flatbuffer with the given tensors' min/max replaced."""
    from feredge.export.convert.tflite import pack

    model = _schema().ModelT.InitFromPackedBuf(calibrated, 0)
    tensors = model.subgraphs[0].tensors
    for i, (lo, hi) in ranges.items():
        q = tensors[i].quantization
        q.min, q.max = [float(lo)], [float(hi)]
    return pack(model, len(calibrated))


def collect(calibrated: bytes, x: np.ndarray, tensors: dict[int, tuple[float, float]],
            progress_cb: Callable[[int], None] | None = None) -> dict[int, Histogram]:
    """One histogram per tensor over its calibrated range, from the float model on ``x``."""
    from feredge.export.convert.tflite import keeping_interpreter

    it = keeping_interpreter(calibrated)
    inp = it.get_input_details()[0]["index"]
    hists = {i: Histogram(lo, hi, np.zeros(BINS, np.int64)) for i, (lo, hi) in tensors.items() if hi > lo}
    for k in range(len(x)):
        it.set_tensor(inp, x[k:k + 1].astype(np.float32))
        it.invoke()
        for i, h in list(hists.items()):
            try:
                v = it.get_tensor(i).ravel()
            except ValueError:  # a tensor the runtime keeps no data for (an unrolled RNN's scratch)
                del hists[i]
                continue
            idx = ((v - h.lo) * (BINS / (h.hi - h.lo))).astype(np.int64)
            h.counts += np.bincount(np.clip(idx, 0, BINS - 1), minlength=BINS)
        if progress_cb is not None:
            progress_cb(1)
    return hists


def _mse_range(h: Histogram) -> tuple[float, float]:
    """The int8 range with the least expected squared error (rounding inside, clipping outside)
    over the histogram; zero stays inside, as the quantiser requires."""
    centres = (h.edges()[:-1] + h.edges()[1:]) / 2
    w = h.counts.astype(np.float64)
    lo0, hi0 = min(h.lo, 0.0), max(h.hi, 0.0)
    fr = np.linspace(0.2, 1.0, 41)
    los = [lo0 * f for f in fr] if lo0 < 0 else [0.0]
    best, arg = np.inf, (h.lo, h.hi)
    for lo in los:
        his = hi0 * fr if hi0 > 0 else np.array([0.0])
        for hi in his:
            if hi - lo <= 0:
                continue
            step = (hi - lo) / 255.0
            clipped = np.clip(centres, lo, hi)
            err = (w * ((centres - clipped) ** 2)).sum() + w[(centres >= lo) & (centres <= hi)].sum() * step * step / 12
            if err < best:
                best, arg = err, (lo, hi)
    return float(arg[0]), float(arg[1])


def propose(strategy: str, hists: dict[int, Histogram]) -> dict[int, tuple[float, float]]:
    """New (min, max) per tensor for one strategy; ``minmax`` changes nothing."""
    if strategy == "minmax":
        return {}
    out = {}
    for i, h in hists.items():
        if strategy == "mse":
            out[i] = _mse_range(h)
        elif strategy.startswith("p"):
            q = float(strategy[1:]) / 100.0
            lo = h.quantile(1.0 - q) if h.lo < 0 else h.lo
            hi = h.quantile(q) if h.hi > 0 else h.hi
            out[i] = (min(lo, 0.0) if h.lo < 0 else lo, max(hi, 0.0))
        else:
            raise ExportError(f"unknown activation range strategy {strategy!r} ({', '.join(STRATEGIES)})")
    return out


def quantize(calibrated: bytes) -> bytes:
    """The full-integer int8 flatbuffer (int8 input and output) from a calibrated one."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    # the arguments TFLiteConverter.convert() passes (fully_quantize stays False there: True leaves
    # an unrolled LSTM's SPLIT in float); verify_int8 then checks that nothing float is left
    return convert.mlir_quantize(calibrated, input_data_type=tf.int8, output_data_type=tf.int8)


# Ops whose int8 kernels need their outputs on their input's scale: the quantiser propagates the
# range through them, and a range set on their outputs would leave them in float.
SAME_SCALE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "SPLIT", "SPLIT_V", "CONCATENATION", "PACK", "UNPACK",
              "MAX_POOL_2D", "TRANSPOSE", "GATHER", "STRIDED_SLICE", "SLICE", "PAD", "PADV2"}


def clippable(calibrated: bytes) -> dict[int, tuple[float, float]]:
    """The activation tensors whose range may be clipped: not the graph's input (pinned by the
    caller), not the tensors that feed an output (logits, or the input of the final softmax), and
    not the outputs of ops that share their input's scale."""
    from feredge.export.convert.tflite import op_code_names

    model = _schema().ModelT.InitFromPackedBuf(calibrated, 0)
    codes = op_code_names(model)
    sg = model.subgraphs[0]
    keep = set(int(i) for i in sg.inputs) | set(int(i) for i in sg.outputs)
    for op in sg.operators or []:
        if codes[op.opcodeIndex] in SAME_SCALE:
            keep |= {int(o) for o in op.outputs}
        if set(int(o) for o in op.outputs) & set(int(o) for o in sg.outputs):
            keep |= {int(i) for i in op.inputs if i >= 0}
    return {i: r for i, r in calibrated_ranges(calibrated).items() if i not in keep}
