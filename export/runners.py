"""One way to run each artifact kind on PREPARED float batches, returning raw outputs.

"Prepared" means :func:`edge.preprocess.prepare_batch` already turned faces into the model's
float input; every runner then does only what its runtime needs (the TFLite one quantises and
dequantises through the device's own :class:`edge.model.Classifier`, so the exporter checks
the code path the Pi runs). Raw outputs go through
:func:`edge.preprocess.probabilities` with the contract's activation to become comparable.
The exporter's report and the parity suite both use these.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract import Contract
from edge.preprocess import probabilities
from export.errors import ExportError

Runner = Callable[[np.ndarray], np.ndarray]


def keras_runner(model: Any, batch_size: int = 64) -> Runner:
    """The desktop model (any batch size). ``predict`` compiles a graph: ~3x faster than eager calls."""

    def run(x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            return np.zeros((0, 0), np.float32)
        with warnings.catch_warnings():
            # Keras 2 files name their input as a list; Keras 3 warns about the structure, harmlessly.
            warnings.simplefilter("ignore", UserWarning)
            y = model.predict(x.astype(np.float32, copy=False), batch_size=batch_size, verbose=0)
        return np.asarray(y, dtype=np.float32).reshape(len(x), -1)

    return run


def tflite_runner(path: str | os.PathLike[str], contract: Contract | None = None, *,
                  num_threads: int | None = None) -> Runner:
    """An int8 (or float) TFLite model through the device's Classifier: quantise, invoke, dequantise."""
    from edge.model import Classifier

    # device="cpu": scoring on a workstation; an absent Coral is no news worth a warning.
    clf = Classifier(path, contract=contract, device="cpu", num_threads=num_threads)

    def run(x: np.ndarray) -> np.ndarray:
        return np.stack([clf.outputs_prepared(xi) for xi in x]) if len(x) else np.zeros((0, 0), np.float32)

    return run


def onnx_runner(path: str | os.PathLike[str], *, num_threads: int | None = None) -> Runner:
    """An ONNX model (fp32 or QDQ, float I/O) with onnxruntime's CPU provider, batch by batch.

    Worker threads do not spin: spinning workers starve everything else on a small machine.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads:
        opts.intra_op_num_threads = num_threads
        opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    batch = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def run(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        step = batch or 256
        outs = [sess.run(None, {inp.name: x[i: i + step]})[0] for i in range(0, len(x), step)]
        return np.concatenate([o.reshape(len(o), -1) for o in outs]) if outs else np.zeros((0, 0), np.float32)

    return run


def runner_for(artifact: str | os.PathLike[str], contract: Contract | None = None, **kw: Any) -> Runner:
    """Pick the runner by file type: ``.tflite``, ``.onnx``, or ``.keras``/``.h5`` (Keras)."""
    p = Path(artifact)
    if p.suffix == ".tflite":
        return tflite_runner(p, contract, **kw)
    if p.suffix == ".onnx":
        return onnx_runner(p, **kw)
    if p.suffix in (".keras", ".h5", ".hdf5"):
        import keras

        return keras_runner(keras.models.load_model(str(p), compile=False))
    raise ExportError(f"no runner for {p.name} (expected .tflite, .onnx or .keras)")


def probs(runner: Runner, x: np.ndarray, contract: Contract) -> np.ndarray:
    """Probabilities (N, K) of a runner on a prepared batch, with the contract's activation at T=1."""
    return probabilities(runner(x), contract.output.activation, 1.0)
