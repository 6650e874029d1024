"""Empirical bias correction of a full-integer TFLite model, on its int32 biases.

Why: rounding weights and inputs shifts the mean of a convolution's output a little, per output
channel, and the shift adds up layer after layer. Measuring each biased op's output in the float
(calibrated) model and in the int8 model on the same faces, and moving its int32 bias by the mean
difference, takes the shift out (Nagel et al., "Data-Free Quantization", the empirical variant).
Ops are corrected in graph order, each measured after the ones before it were corrected.

An op whose activation (ReLU) is fused sees only its clipped output; the mean is taken where the
float output is positive, the region where clipped and unclipped outputs agree.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

log = logging.getLogger(__name__)

_BIASED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def _outputs(data: bytes, x: np.ndarray, name: str, *, integer: bool) -> np.ndarray:
    """One tensor's values (dequantised for the int8 model) on the faces ``x`` (raw float batch)."""
    from ai_edge_litert.interpreter import Interpreter

    from edge.contract import QuantParams
    from edge.preprocess import dequantize, quantize

    with warnings.catch_warnings():  # "intended for debugging": reading every tensor is the point here
        warnings.simplefilter("ignore", UserWarning)
        it = Interpreter(model_content=data, experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    det = next(d for d in it.get_tensor_details() if d["name"] == name)
    d_in = it.get_input_details()[0]
    q_in = QuantParams("int8", *d_in["quantization"]) if integer else None
    q_t = QuantParams("int8", *det["quantization"]) if integer else None
    out = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        it.set_tensor(d_in["index"], quantize(xi, q_in) if q_in is not None else xi.astype(np.float32))
        it.invoke()
        v = it.get_tensor(det["index"])
        out.append(dequantize(v, q_t) if q_t is not None else v.astype(np.float32))
    return np.concatenate(out)


def correct(quantized: bytes, calibrated: bytes, x: np.ndarray) -> bytes:
    """``quantized`` with each conv/dense op's int32 bias moved by its measured mean error."""
    import flatbuffers

    from export.tflite import _schema

    schema = _schema()
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    float_names = {_name(t) for t in schema.ModelT.InitFromPackedBuf(calibrated, 0).subgraphs[0].tensors}
    model = schema.ModelT.InitFromPackedBuf(quantized, 0)
    codes = [names.get(max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))) for oc in model.operatorCodes]
    n_ops = len(model.subgraphs[0].operators)
    data = quantized
    for k in range(n_ops):
        sg = model.subgraphs[0]
        op = sg.operators[k]
        if codes[op.opcodeIndex] not in _BIASED or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        out_name = _name(sg.tensors[op.outputs[0]])
        if out_name not in float_names:
            continue
        ref = _outputs(calibrated, x, out_name, integer=False)
        got = _outputs(data, x, out_name, integer=True)
        ch = ref.shape[-1]
        active = (ref > 0) if ref.min() >= 0 else np.ones_like(ref, dtype=bool)
        err = ((got - ref) * active).reshape(-1, ch).sum(0) / np.maximum(active.reshape(-1, ch).sum(0), 1)
        bias_t = sg.tensors[op.inputs[2]]
        scale = np.asarray(bias_t.quantization.scale, np.float64)
        buf = model.buffers[bias_t.buffer]
        bias = np.frombuffer(bytes(bytearray(buf.data)), np.int32).copy()
        bias -= np.round(err / scale).astype(np.int32)
        buf.data = np.frombuffer(bias.tobytes(), np.uint8)
        b = flatbuffers.Builder(len(data) + 1024)
        b.Finish(model.Pack(b), file_identifier=b"TFL3")
        data = bytes(b.Output())
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    return data
