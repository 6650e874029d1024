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

import numpy as np

log = logging.getLogger(__name__)

_BIASED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _name(t) -> str:
    return t.name.decode() if isinstance(t.name, bytes) else str(t.name)


def _outputs(data: bytes, x: np.ndarray, names: list[str], *, integer: bool) -> dict[str, np.ndarray]:
    """Some tensors' values (dequantised for the int8 model) on the faces ``x`` (raw float batch),
    from one pass."""
    from feredge.edge.contract import QuantParams
    from feredge.edge.preprocess import dequantize, quantize
    from feredge.export.convert.tflite import keeping_interpreter

    it = keeping_interpreter(data)
    details = {d["name"]: d for d in it.get_tensor_details() if d["name"] in names}
    d_in = it.get_input_details()[0]
    q_in = QuantParams("int8", *d_in["quantization"]) if integer else None
    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for i in range(len(x)):
        xi = x[i:i + 1]
        it.set_tensor(d_in["index"], quantize(xi, q_in) if q_in is not None else xi.astype(np.float32))
        it.invoke()
        for n in names:
            d = details[n]
            v = it.get_tensor(d["index"])
            out[n].append(dequantize(v, QuantParams("int8", *d["quantization"])) if integer else v.astype(np.float32))
    return {n: np.concatenate(v) for n, v in out.items()}


def correct(quantized: bytes, calibrated: bytes, x: np.ndarray) -> bytes:
    """``quantized`` with each conv/dense op's int32 bias moved by its measured mean error."""
    from feredge.export.convert.tflite import _schema, op_code_names, pack

    schema = _schema()
    float_names = {_name(t) for t in schema.ModelT.InitFromPackedBuf(calibrated, 0).subgraphs[0].tensors}
    model = schema.ModelT.InitFromPackedBuf(quantized, 0)
    codes = op_code_names(model)
    sg = model.subgraphs[0]
    targets = [k for k, op in enumerate(sg.operators or [])
               if codes[op.opcodeIndex] in _BIASED and len(op.inputs) >= 3 and op.inputs[2] >= 0
               and _name(sg.tensors[op.outputs[0]]) in float_names]
    # The float model does not change: its outputs are read once, for every op to correct.
    refs = _outputs(calibrated, x, [_name(sg.tensors[sg.operators[k].outputs[0]]) for k in targets], integer=False)
    data = quantized
    for k in targets:
        sg = model.subgraphs[0]
        op = sg.operators[k]
        out_name = _name(sg.tensors[op.outputs[0]])
        ref = refs.pop(out_name)
        got = _outputs(data, x, [out_name], integer=True)[out_name]  # after the ops before it were corrected
        ch = ref.shape[-1]
        active = (ref > 0) if ref.min() >= 0 else np.ones_like(ref, dtype=bool)
        err = ((got - ref) * active).reshape(-1, ch).sum(0) / np.maximum(active.reshape(-1, ch).sum(0), 1)
        bias_t = sg.tensors[op.inputs[2]]
        scale = np.asarray(bias_t.quantization.scale, np.float64)
        buf = model.buffers[bias_t.buffer]
        bias = np.frombuffer(bytes(bytearray(buf.data)), np.int32).copy()
        bias -= np.round(err / scale).astype(np.int32)
        buf.data = np.frombuffer(bias.tobytes(), np.uint8)
        data = pack(model, len(data))
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    return data
