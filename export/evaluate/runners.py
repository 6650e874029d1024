"""One way to run each artifact kind on PREPARED float batches, returning raw outputs.

"Prepared" means :func:`feredge.edge.preprocess.prepare_batch` already turned faces into the model's
float input; each runner then does only what its runtime needs. TFLite goes through the
device's own :class:`feredge.edge.model.Classifier` (quantise, invoke, dequantise), so the exporter's
report and the parity suite both check the code path the Pi runs. Raw outputs become
comparable probabilities with :func:`feredge.edge.preprocess.probabilities` and the contract.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from feredge.edge.contract import Contract
from feredge.edge.errors import FeredgeError
from feredge.edge.preprocess import dequantize, probabilities, quantize
from feredge.export.errors import ExportError
from feredge.export.progress import progress_bar


def run_keras(model, x: np.ndarray, batch_size: int = 256, progress: bool = False, desc: str = "") -> np.ndarray:
    """Raw outputs of the Keras model on a prepared batch.

    One traced graph (``tf.function``) called on fixed-size chunks — the last one padded so the
    graph is traced once — costs about half the CPU of eager calls or ``predict``; that matters
    on a 2-core workstation shared with the candidates' runtimes.
    """
    import tensorflow as tf

    n = len(x)
    if n == 0:
        return np.zeros((0, 1), np.float32)
    bs = max(1, min(batch_size, n))

    def call(t):
        y = model(t, training=False)
        return y[0] if isinstance(y, (list, tuple)) else y

    fn = tf.function(call)
    outs = []
    with warnings.catch_warnings():
        # Keras 3 warns when a model built with a named input list gets a bare tensor; harmless.
        warnings.filterwarnings("ignore", message="The structure of `inputs`")
        for i in progress_bar(range(0, n, bs), desc=desc or "reference", unit="batch", enabled=progress):
            xb = x[i:i + bs]
            k = len(xb)
            if k < bs:
                xb = np.concatenate([xb, np.zeros((bs - k, *xb.shape[1:]), xb.dtype)])
            outs.append(np.asarray(fn(tf.constant(xb)), dtype=np.float32)[:k])
    return np.concatenate(outs).reshape(n, -1)


def run_onnx(path: str | os.PathLike[str], contract: Contract, x: np.ndarray, *, batch_size: int = 256,
             progress: bool = False) -> np.ndarray:
    """Raw outputs of an ONNX artifact via onnxruntime. A static batch of 1 (what the exporter
    writes for the device) is run face by face; a free batch dimension in chunks."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
        static_one = len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value == 1
    except Exception:
        static_one = False
    if static_one:
        # One face per call: thread-pool hand-offs cost more than the work (measured: 2x the CPU).
        opts.intra_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = (str(e).splitlines() or [""])[0]
        raise ExportError(f"onnxruntime cannot load {path}: {type(e).__name__}: {first}") from None
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    shape = list(inp.shape)
    spec = contract.input
    nchw = len(shape) == 4 and shape[1] == spec.channels and shape[3] != spec.channels
    want = [spec.channels, spec.height, spec.width] if nchw else [spec.height, spec.width, spec.channels]
    got = shape[1:]
    if len(got) != 3 or any(isinstance(g, int) and g != w for g, w in zip(got, want, strict=True)):
        raise ExportError(
            f"{Path(path).name} takes input {shape} but its contract says "
            f"{spec.height}x{spec.width}x{spec.channels}: the contract belongs to another model"
        )
    if nchw:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    q = contract.quant_for(Path(path).name)
    integer_in = inp.type in ("tensor(int8)", "tensor(uint8)")
    step = batch_size if not isinstance(shape[0], int) or shape[0] != 1 else 1
    outs = []
    with progress_bar(total=len(x), desc=Path(path).name, unit="face", enabled=progress) as bar:
        for i in range(0, len(x), step):
            xb = x[i:i + step]
            if integer_in:
                xb = quantize(xb, q["input"])
            y = sess.run([out_name], {inp.name: xb})[0]
            if y.dtype != np.float32 and "output" in q:
                y = dequantize(y, q["output"])
            outs.append(np.asarray(y, np.float32).reshape(len(xb), -1))
            bar.update(len(xb))
    return np.concatenate(outs)


def run_tflite(path: str | os.PathLike[str], contract: Contract | None, x: np.ndarray, *, progress: bool = False,
               num_threads: int | None = None) -> np.ndarray:
    """Raw (dequantised) outputs of a TFLite artifact through the device's own Classifier, one
    face at a time (quantisation of inputs and outputs included), exactly as on a Pi."""
    from feredge.edge.model import Classifier

    name = Path(path).name
    # An Edge TPU-compiled model only runs with the delegate (a Coral stick on this machine);
    # scoring a CPU model on a workstation needs no warning about an absent Coral.
    device = "coral" if "edgetpu" in name else "cpu"
    try:
        clf = Classifier(path, backend="auto", device=device, contract=contract, num_threads=num_threads)
    except FeredgeError:
        raise
    except Exception as e:  # a flatbuffer LiteRT rejects, an unresolved custom op
        first = (str(e).splitlines() or [""])[0]
        raise ExportError(f"LiteRT cannot load {path}: {type(e).__name__}: {first}") from None
    out = np.empty((len(x), len(clf.labels) if len(clf.labels) > 1 else 1), np.float32)
    for i in progress_bar(range(len(x)), desc=name, unit="face", enabled=progress):
        out[i] = np.asarray(clf.outputs_prepared(x[i]), np.float32).reshape(-1)
    return out


def probs(raw: np.ndarray, contract: Contract) -> np.ndarray:
    """Probabilities (N, K) from raw outputs with the contract's activation at T=1 (temperature is
    a calibration choice layered on top; artifacts are compared before it)."""
    return probabilities(raw, contract.output.activation, 1.0)
