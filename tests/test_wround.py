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


def _layer_error(xin: np.ndarray, w: np.ndarray, wq: np.ndarray, stride, padding) -> float:
    """Mean squared output error of a layer (weights as TFLite holds them: (cout, kh, kw, cin) or
    (cout, k)) with dequantised weights ``wq``, on its float input, by TensorFlow's own ops."""
    import tensorflow as tf

    if w.ndim == 2:
        x = xin.reshape(len(xin), -1)
        return float(((x @ wq.T - x @ w.T) ** 2).mean())

    def conv(k: np.ndarray) -> np.ndarray:
        return tf.nn.conv2d(xin, np.transpose(k, (1, 2, 3, 0)).astype(np.float32), stride, padding).numpy()

    return float(((conv(wq) - conv(w)) ** 2).mean())


def _tflite_weights(data: bytes, k: int) -> np.ndarray:
    from feredge.export.convert.tflite import _schema

    m = _schema().ModelT.InitFromPackedBuf(data, 0)
    t = m.subgraphs[0].tensors[m.subgraphs[0].operators[k].inputs[1]]
    return np.frombuffer(bytes(bytearray(m.buffers[t.buffer].data)), np.int8).reshape(t.shape).astype(np.float64)


def _tflite_scale(data: bytes, k: int) -> np.ndarray:
    from feredge.export.convert.tflite import _schema

    m = _schema().ModelT.InitFromPackedBuf(data, 0)
    t = m.subgraphs[0].tensors[m.subgraphs[0].operators[k].inputs[1]]
    s = np.asarray(t.quantization.scale, np.float64)
    return s.reshape((-1,) + (1,) * (len(t.shape) - 1))


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
    # Every rounded layer, each on its own float input: its output error falls (TensorFlow's own
    # convolution here, so a layout, stride or padding slip in the im2col would show)
    fm = _schema().ModelT.InitFromPackedBuf(choice.calibrated, 0)
    f_by_out = {tensor_name(fm.subgraphs[0].tensors[o.outputs[0]]): o for o in fm.subgraphs[0].operators}
    layers = 0
    for k, op in enumerate(sg.operators):
        fop = f_by_out.get(tensor_name(sg.tensors[op.outputs[0]]))
        ft, wt = fm.subgraphs[0].tensors[fop.inputs[1]], sg.tensors[op.inputs[1]]
        if len(wt.shape) not in (2, 4):
            continue
        fw = np.frombuffer(bytes(bytearray(fm.buffers[ft.buffer].data)), np.float32).reshape(wt.shape)
        name = tensor_name(fm.subgraphs[0].tensors[fop.inputs[0]])
        xin = tensor_values(choice.calibrated, x_test, [name], integer=False)[name]
        opts = op.builtinOptions
        stride = (opts.strideH, opts.strideW) if len(wt.shape) == 4 else None
        errs = [_layer_error(xin, fw, _tflite_weights(d, k) * _tflite_scale(d, k), stride, "SAME")
                for d in (data, rounded)]
        assert errs[1] < 0.5 * errs[0], (k, errs)
        layers += 1
    assert layers == 3
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
    # every rounded layer on its own float input, by TensorFlow's convolution (ONNX layouts converted here)
    ref_g = onnx.load(str(fp32)).graph
    f_inits = {i.name: numpy_helper.to_array(i) for i in ref_g.initializer}
    layers = 0
    for n in ref_g.node:
        if n.op_type not in ("Conv", "MatMul"):
            continue
        xin = onnx_tensor_values(onnx.load(str(fp32)), x_test, [n.input[0]])[n.input[0]]
        fw = f_inits[n.input[1]]
        errs = []
        for path in (q8, rounded):
            ini = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
            q, sc, zp = (ini[n.input[1] + suffix].astype(np.float64) for suffix in
                         ("_quantized", "_scale", "_zero_point"))
            if n.op_type == "Conv":
                deq = (q - zp.reshape(-1, 1, 1, 1)) * sc.reshape(-1, 1, 1, 1)  # (cout, cin, kh, kw)
                attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
                t, left, b, r = attrs["pads"]
                x_nhwc = np.pad(np.moveaxis(xin, 1, -1), ((0, 0), (t, b), (left, r), (0, 0)))
                errs.append(_layer_error(x_nhwc, np.moveaxis(fw, 1, -1), np.moveaxis(deq, 1, -1),
                                         tuple(attrs["strides"]), "VALID"))
            else:
                deq = (q - zp) * sc  # (k, cout), scaled along cout
                errs.append(_layer_error(xin, fw.T, deq.T, None, None))
        assert errs[1] < 0.5 * errs[0], (n.name, errs)
        layers += 1
    assert layers == 3
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


# Which refinement is kept: the refinements themselves are replaced by tagged bytes (thin fakes) so
# that each branch of the rule can be forced; the scores are the only input to the choice.
SCORES = {"plain": (0.97, 0.006), "bias": (0.98, 0.004), "gptq": (0.985, 0.003), "worse": (0.96, 0.003)}


@pytest.mark.parametrize("bias, gptq, kept", [
    ("bias", "gptq", "+gptq+bias"),      # each better than what is kept so far
    ("worse", "gptq", "+gptq+bias"),     # bias correction alone flips close calls; with GPTQ it does not
    ("bias", "fails", "+bias"),          # GPTQ cannot handle the graph: the bias-corrected copy stays
    ("bias", "worse", "+bias"),          # GPTQ lowers mean |dp| but costs agreement: not kept
])
def test_the_kept_refinement_is_the_one_the_rule_picks(monkeypatch, tmp_path: Path, caplog, bias, gptq, kept):
    from types import SimpleNamespace

    from feredge.export.convert import biascorr, tflite
    from feredge.export.convert import onnx as onnx_conv
    from feredge.export.evaluate import runners

    def score(tag: bytes) -> dict[str, float]:
        ag, dp = SCORES[tag.decode().rsplit("+", 1)[-1]]
        return {"agreement": ag, "mean_abs_dp": dp}

    def rounded(data, *_a):
        if gptq == "fails":
            raise RuntimeError("graph it cannot handle")
        return b"x+" + gptq.encode()

    def corrected(data, *_a):
        return data if data.startswith(b"x+") else b"x+" + bias.encode()

    # TFLite
    monkeypatch.setattr(biascorr, "correct", corrected)
    monkeypatch.setattr(wround, "round_tflite", rounded)
    choice = tflite.Int8Choice(strategy="mse", scores={"mse": score(b"plain")}, final=score(b"plain"))
    out = tflite._refine(b"plain", b"", np.zeros((1, 4, 4, 1)), SimpleNamespace(score=score), choice, None)
    assert choice.kept == "mse" + kept and choice.final == choice.scores[choice.kept] == score(out)
    assert choice.weights_rounded is (kept == "+gptq+bias") and choice.bias_corrected

    # ONNX: the candidates are files; the kept one takes the model's place and nothing else is left
    monkeypatch.setattr(biascorr, "correct_onnx", lambda p, *_a: corrected(Path(p).read_bytes()))
    monkeypatch.setattr(wround, "round_onnx", rounded)
    monkeypatch.setattr(runners, "run_onnx", lambda p, *_a: Path(p).read_bytes())
    cand = tmp_path / ".m.percentile.int8.onnx"
    cand.write_bytes(b"plain")
    job = SimpleNamespace(contract=SimpleNamespace(name="m"), x_cal=np.zeros((1, 4, 4, 1)),
                          selection=SimpleNamespace(x=None, compare=score))
    scores = {"percentile": score(b"plain")}
    steps = []
    got = onnx_conv._refined(job, tmp_path / "m.onnx", cand, scores, "percentile", steps.append)
    assert got == "percentile" + kept and score(cand.read_bytes()) == scores[got]
    assert [p.name for p in tmp_path.iterdir()] == [cand.name] and len(steps) == 2
    if gptq == "fails":
        assert any("GPTQ weight rounding with bias correction skipped" in r.getMessage() for r in caplog.records)
