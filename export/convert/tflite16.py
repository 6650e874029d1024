"""``<name>.16x8.tflite``: int8 weights, int16 activations, float input and output (``--int16-activations``).

Why: on some models full int8 cannot reach the 99 % agreement bar, whatever the ranges
(docs/int8-fidelity.md: `fer`'s mini-XCEPTION stops near 97 %, the loss being 8-bit activation
noise that adds up through 33 layers). The same int8 weights with int16 activations reach
99.2–99.3 % there. This is the copy for CPU-only devices that need the desktop model's decisions:
LiteRT runs it with reference kernels (slower than int8, which XNNPACK speeds up), and the Edge TPU
cannot run it at all. Opt-in, so the default export stays what a Coral can take.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feredge.export.convert.formats import Artifact
from feredge.export.convert.tflite import FlatbufferInfo, converter_error, keras_to_saved_model, read_flatbuffer
from feredge.export.errors import ExportError

if TYPE_CHECKING:
    from feredge.export.convert.formats import ConvertJob

# int16 activations, int8 weights, int64 (conv/FC) or int32 biases; float only at the graph's edges
_INNER_TYPES = {"INT16", "INT8", "INT32", "INT64"}


def convert_16x8(model: Any, calib_x: np.ndarray) -> bytes:
    """The TFLite converter's 16x8 mode, calibrated on the same faces as the int8 copy."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="feredge-16x8-") as tmp:
        sm = keras_to_saved_model(model, tuple(int(v) for v in calib_x.shape[1:]), Path(tmp) / "sm")
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.representative_dataset = lambda: ([calib_x[i:i + 1].astype(np.float32)] for i in range(len(calib_x)))
        return conv.convert()


def verify_16x8(data: bytes) -> FlatbufferInfo:
    """Refuse a 16x8 model in which some op stayed float (the converter does so silently)."""
    info = read_flatbuffer(data)
    edge = set(info.inputs) | set(info.outputs)
    for t in info.tensors:
        if t.index not in edge and t.type not in _INNER_TYPES:
            raise ExportError(f"16x8 TFLite: tensor '{t.name}' is {t.type}; an op could not take int16 "
                              "activations (export without --int16-activations)")
    return info


def convert(job: ConvertJob) -> list[Artifact]:
    """A :data:`~feredge.export.convert.formats.FORMATS` entry that makes nothing unless asked for."""
    if not job.run.opts.int16_activations:
        return []
    run, contract = job.run, job.contract
    f16 = job.built.stage / f"{contract.name}.16x8.tflite"
    run.ph.start("converting to 16x8 TFLite (int16 activations)", "tflite_16x8", f16.name)
    try:
        data = convert_16x8(job.model, job.x_cal)
    except Exception as e:
        raise ExportError(f"16x8 TFLite conversion failed: {converter_error(e)}") from None
    fb = verify_16x8(data)
    f16.write_bytes(data)
    contract.quantization[f16.name] = {"input": fb.quant(fb.inputs[0]), "output": fb.quant(fb.outputs[0])}
    run.ph.done("tflite_16x8")
    return [Artifact(f16, "tflite-16x8", ops=fb.op_summary(), scored=True, embed=True, flatbuffer=fb)]
