"""GPTQ weight rounding (feredge.export.convert.wround) on real TensorFlow/LiteRT and onnxruntime models.

The models here copy what made v3's int8 copy miss 99 %: a first convolution on raw pixel codes
(mean ~120) whose filters nearly sum to zero (edge and blob detectors, as trained stems are), so the
rounding errors of its weights, multiplied by the common brightness, dominate its output.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.export.convert import wround


def _images(n: int, seed: int) -> np.ndarray:
    """Smooth grey images with a face-like brightness (120 +- 40), raw pixel codes as float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 24, 24, 1), np.float32)
    for i in range(n):
        img = cv2.GaussianBlur(rng.normal(0, 1, (24, 24)).astype(np.float32), (0, 0), 2.0)
        out[i, ..., 0] = np.clip(120 + rng.normal(0, 25) + 40 * img / (img.std() + 1e-6), 0, 255).round()
    return out


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 1))
    first = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")
    x = first(inp)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(x)
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    k, b = first.get_weights()
    k = k - k.mean(axis=(0, 1, 2), keepdims=True)  # zero-sum filters: the output cancels the brightness
    first.set_weights([k / 40, np.full_like(b, 0.05)])
    return m


def test_gptq_is_nearest_rounding_without_correlation_and_better_with_it():
    rng = np.random.default_rng(0)
    w = rng.normal(0, 30, (16, 9))
    assert np.array_equal(wround.gptq(w, np.eye(9), -127, 127), np.clip(np.round(w), -127, 127))
    x = 120 + rng.normal(0, 20, (5000, 9))  # a common component, as raw pixels have
    h = x.T @ x / len(x)
    q = wround.gptq(w, h, -127, 127)
    assert np.array_equal(q, np.round(q)) and q.min() >= -127 and q.max() <= 127

    def err(r: np.ndarray) -> float:
        d = w - r
        return float(np.einsum("ck,kl,cl->", d, h, d))

    assert err(q) < 0.2 * err(np.round(w))
    assert np.array_equal(wround.gptq(np.full((2, 3), 500.0), h[:3, :3], 0, 255), np.full((2, 3), 255.0))


def test_tflite_rounding_lowers_the_first_layers_error_and_keeps_the_graph():
    from feredge.export.convert.biascorr import tensor_name, tensor_values
    from feredge.export.convert.tflite import _schema, convert_int8, read_flatbuffer, verify_int8

    m, x_cal, x_test = _model(), _images(100, 0), _images(100, 1)
    data, _, choice = convert_int8(m, x_cal, selection=None, pixel_input=True)
    rounded = wround.round_tflite(data, choice.calibrated, x_cal)

    sg = _schema().ModelT.InitFromPackedBuf(data, 0).subgraphs[0]
    stem = tensor_name(sg.tensors[sg.operators[0].outputs[0]])
    ref = tensor_values(choice.calibrated, x_test, [stem], integer=False)[stem]

    def mse(d: bytes) -> float:
        return float(((tensor_values(d, x_test, [stem], integer=True)[stem] - ref) ** 2).mean())

    before, after = mse(data), mse(rounded)
    assert after < 0.7 * before, (before, after)
    a, b = read_flatbuffer(data), read_flatbuffer(rounded)
    assert [o.name for o in a.ops] == [o.name for o in b.ops]
    assert [(t.name, t.type, t.shape, t.scale, t.zero_point) for t in a.tensors] == \
        [(t.name, t.type, t.shape, t.scale, t.zero_point) for t in b.tensors]  # only integers changed
    verify_int8(rounded)
    assert rounded != data


def test_onnx_rounding_lowers_the_first_convs_error_and_stays_integer(tmp_path: Path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from feredge.export.convert.biascorr import onnx_tensor_values
    from feredge.export.convert.onnx import convert_fp32, quantize_int8

    m, x_cal, x_test = _model(), _images(100, 0), _images(100, 1)
    fp32, q8, rounded = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "m.gptq.onnx"
    convert_fp32(m, (24, 24, 1), fp32)
    quantize_int8(fp32, q8, x_cal)
    rounded.write_bytes(wround.round_onnx(q8, fp32, x_cal))

    # the first Conv's ReLU output: where the int8 model quantises (the ReLU is fused into its Conv)
    conv = next(n for n in onnx.load(str(fp32)).graph.node if n.op_type == "Relu").output[0]
    ref = onnx_tensor_values(onnx.load(str(fp32)), x_test, [conv])[conv]

    def mse(p: Path) -> float:
        name = conv + "_DequantizeLinear_Output"
        return float(((onnx_tensor_values(onnx.load(str(p)), x_test, [name])[name] - ref) ** 2).mean())

    before, after = mse(q8), mse(rounded)
    assert after < 0.7 * before, (before, after)
    old = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(q8)).graph.initializer}
    new = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(rounded)).graph.initializer}
    assert old.keys() == new.keys() and all(old[k].dtype == new[k].dtype for k in old)
    changed = [k for k in old if not np.array_equal(old[k], new[k])]
    assert changed and all(old[k].dtype in (np.uint8, np.int8) for k in changed)  # weights only, not scales
    fused = ort.SessionOptions()
    fused.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(rounded), fused, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(fused.optimized_model_filepath).graph.node].count("QLinearConv") == 2


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_grouped_convolutions_keep_their_rounding(tmp_path: Path, fmt: str):
    """Depthwise convolutions are left as the quantiser rounded them (only ungrouped ones are handled)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 1))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    x_cal = _images(40, 0)
    if fmt == "tflite":
        from feredge.export.convert.tflite import _schema, convert_int8, op_code_names

        data, _, choice = convert_int8(m, x_cal, selection=None, pixel_input=True)
        out = wround.round_tflite(data, choice.calibrated, x_cal)

        def weights(d: bytes) -> dict[str, bytes]:
            model = _schema().ModelT.InitFromPackedBuf(d, 0)
            sg, codes = model.subgraphs[0], op_code_names(model)
            return {codes[op.opcodeIndex]: bytes(bytearray(model.buffers[sg.tensors[op.inputs[1]].buffer].data))
                    for op in sg.operators if codes[op.opcodeIndex] in ("CONV_2D", "DEPTHWISE_CONV_2D")}

        a, b = weights(data), weights(out)
        assert a["DEPTHWISE_CONV_2D"] == b["DEPTHWISE_CONV_2D"] and a["CONV_2D"] != b["CONV_2D"]
    else:
        import onnx

        from feredge.export.convert.onnx import convert_fp32, quantize_int8

        fp32, q8 = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
        convert_fp32(m, (24, 24, 1), fp32)
        quantize_int8(fp32, q8, x_cal)
        g = onnx.load(str(q8)).graph
        new = onnx.ModelProto.FromString(wround.round_onnx(q8, fp32, x_cal)).graph
        producer = {o: n for n in g.node for o in n.output}
        inits = {i.name: i for i in g.initializer}
        new_inits = {i.name: i for i in new.initializer}
        for n in g.node:
            if n.op_type == "Conv":
                w = producer[n.input[1]].input[0]
                grouped = any(a.name == "group" and a.i > 1 for a in n.attribute)
                assert (inits[w] == new_inits[w]) is grouped, n.name
