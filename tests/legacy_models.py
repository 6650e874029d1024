"""Write legacy Keras model files the way old Keras versions wrote them, for the loader tests.

Uses the ``tf_keras`` package (the Keras 2 API, which still writes Keras-2-style HDF5) and
h5py edits of the stored config where a dialect can no longer be produced by any installed
Keras (Keras 2.2 Sequential without InputLayer, Keras 2.0 list-style Sequential, Keras 1.x
weight files). Every writer also records the ORIGINAL model's outputs on a fixed random input,
computed by the writing library itself (or, for Keras 1/Theano, by a numpy implementation of
Theano's semantics), so a test can prove the Keras 3 load gives the same numbers.

Runnable as a script (``python tests/legacy_models.py OUTDIR``) so the files can be written
in a separate process when tf_keras and Keras 3 must not share one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Case:
    name: str
    path: Path  # the model (or weights) file
    x: np.ndarray  # input
    y: np.ndarray  # the original model's output on x
    architecture: str | None = None  # JSON path or builder.py:function
    keras1_theano: bool = False


def _x(shape: tuple[int, ...], n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 1.0, (n, *shape)).astype("float32")


def _randomize(model, seed: int = 1, *, bn_only: bool = False) -> None:
    """Random non-trivial weights, BatchNorm statistics included (defaults would hide bugs:
    zero biases and unit variances make a swapped weight look right)."""
    rng = np.random.default_rng(seed)
    if not bn_only:
        # He-style scale (std sqrt(2/fan_in)) keeps activations O(1) through the layers, so the
        # outputs neither saturate nor collapse to a constant: both would hide wrong weights.
        new = []
        for w in model.get_weights():
            fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 0
            std = np.sqrt(2.0 / fan_in) if fan_in else 0.2
            new.append(rng.normal(0.0, std, w.shape).astype(w.dtype))
        model.set_weights(new)
    for layer in _all_layers(model):
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = (np.asarray(w) for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(gamma.dtype),
                               rng.normal(0, 0.2, beta.shape).astype(beta.dtype),
                               rng.normal(0, 0.2, mean.shape).astype(mean.dtype),
                               rng.uniform(0.5, 1.5, var.shape).astype(var.dtype)])


def _calibrate_bn(model, x: np.ndarray, seed: int = 4) -> None:
    """Give a deep net realistic BatchNorm statistics: one training-mode pass with momentum 0
    sets every moving mean/variance to that layer's batch statistics. With default statistics
    a randomly initialised MobileNet's activations vanish and every input gives the same output."""
    bns = [layer for layer in _all_layers(model) if type(layer).__name__ == "BatchNormalization"]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    model(x, training=True)
    rng = np.random.default_rng(seed)
    for layer, momentum in zip(bns, saved, strict=True):
        layer.momentum = momentum
        gamma, beta, mean, var = (np.asarray(w) for w in layer.get_weights())
        layer.set_weights([gamma * rng.uniform(0.7, 1.3, gamma.shape).astype(gamma.dtype),
                           beta + rng.normal(0, 0.1, beta.shape).astype(beta.dtype), mean, var])


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        yield layer


def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype="float32")


def _edit_config(path: Path, fn) -> None:
    """Rewrite the ``model_config`` attribute of an h5 file (the old dialects)."""
    import h5py

    with h5py.File(path, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        f.attrs["model_config"] = json.dumps(fn(cfg)).encode("utf-8")


def _small_cnn(k2, input_shape=(12, 12, 1), n=4, name=None):
    L = k2.layers
    return k2.Sequential([
        L.Conv2D(4, 3, padding="same", input_shape=input_shape),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.MaxPooling2D(),
        L.Flatten(),
        L.Dense(n, activation="softmax"),
    ], name=name)


# ---- writers ----------------------------------------------------------------------------------

def write_weights_json(d: Path) -> Case:
    """``save_weights`` + ``to_json`` (tf.keras 2.x): Keras 3's model_from_json rejects it."""
    import tf_keras as k2

    m = _small_cnn(k2)
    _randomize(m)
    (d / "wj.json").write_text(m.to_json())
    m.save_weights(str(d / "wj_weights.h5"))
    x = _x((12, 12, 1))
    return Case("weights+json", d / "wj_weights.h5", x, _predict(m, x), architecture=str(d / "wj.json"))


def write_nested(d: Path) -> Case:
    """A Functional model with a Sequential (with BatchNorm) inside."""
    import tf_keras as k2

    L = k2.layers
    inner = k2.Sequential([L.Conv2D(3, 3, input_shape=(10, 10, 1)), L.BatchNormalization(), L.ReLU()],
                          name="features")
    inp = k2.Input((10, 10, 1))
    out = L.Dense(5, activation="softmax")(L.GlobalAveragePooling2D()(inner(inp)))
    m = k2.Model(inp, out)
    _randomize(m)
    m.save(d / "nested.h5")
    x = _x((10, 10, 1))
    return Case("nested", d / "nested.h5", x, _predict(m, x))


def write_lambda(d: Path) -> Case:
    import tf_keras as k2

    L = k2.layers
    m = k2.Sequential([L.Lambda(lambda t: t * 2.0 - 1.0, input_shape=(8, 8, 1), name="scale"),
                       L.Conv2D(2, 3), L.Flatten(), L.Dense(3, activation="softmax")])
    _randomize(m)
    m.save(d / "lambda.h5")
    x = _x((8, 8, 1))
    return Case("lambda", d / "lambda.h5", x, _predict(m, x))


def write_seq_no_input(d: Path) -> Case:
    """Keras 2.2.x Sequential: no InputLayer; the first layer carries batch_input_shape."""
    import tf_keras as k2

    m = _small_cnn(k2, name="k22")
    _randomize(m)
    m.save(d / "k22.h5")

    def edit(cfg):
        layers = cfg["config"]["layers"]
        assert layers[0]["class_name"] == "InputLayer"
        shape = layers.pop(0)["config"]["batch_input_shape"]
        for layer in layers:
            layer.pop("module", None)
            layer.pop("registered_name", None)
            layer.pop("build_config", None)
        layers[0]["config"]["batch_input_shape"] = shape
        return cfg

    _edit_config(d / "k22.h5", edit)
    x = _x((12, 12, 1))
    return Case("k22-no-inputlayer", d / "k22.h5", x, _predict(m, x))


def write_list_sequential(d: Path) -> Case:
    """Keras 2.0/2.1 Sequential: ``config`` is the list of layers itself."""
    import tf_keras as k2

    m = _small_cnn(k2, name="k20")
    _randomize(m)
    m.save(d / "k20list.h5")

    def edit(cfg):
        layers = cfg["config"]["layers"]
        shape = layers.pop(0)["config"]["batch_input_shape"]
        layers[0]["config"]["batch_input_shape"] = shape
        return {"class_name": "Sequential", "config": layers}

    _edit_config(d / "k20list.h5", edit)
    x = _x((12, 12, 1))
    return Case("list-sequential", d / "k20list.h5", x, _predict(m, x))


def write_dtype_initializers(d: Path) -> Case:
    """tf.keras 2.x (TF 2.0-2.3 era) wrote ``dtype`` into initializer configs."""
    import tf_keras as k2

    m = _small_cnn(k2, name="dtypeinit")
    _randomize(m)
    m.save(d / "dtypeinit.h5")

    def edit(cfg):
        for layer in cfg["config"]["layers"]:
            for k, v in layer["config"].items():
                if k.endswith("_initializer") and isinstance(v, dict):
                    v["config"]["dtype"] = "float32"
        return cfg

    _edit_config(d / "dtypeinit.h5", edit)
    x = _x((12, 12, 1))
    return Case("dtype-in-initializers", d / "dtypeinit.h5", x, _predict(m, x))


def write_depthwise_groups(d: Path) -> Case:
    """tf.keras DepthwiseConv2D inherits Conv2D's ``groups``, which Keras 3 rejects."""
    import tf_keras as k2

    L = k2.layers
    m = k2.Sequential([L.DepthwiseConv2D(3, depth_multiplier=2, input_shape=(10, 10, 3)),
                       L.SeparableConv2D(4, 3), L.GlobalAveragePooling2D(), L.Dense(3)])
    _randomize(m)
    m.save(d / "dwgroups.h5")
    cfg = json.loads(m.to_json())
    assert "groups" in cfg["config"]["layers"][1]["config"], "tf_keras no longer writes groups"
    x = _x((10, 10, 3))
    return Case("depthwise-groups", d / "dwgroups.h5", x, _predict(m, x))


def write_mixed_precision(d: Path) -> Case:
    """Saved under a mixed_float16 policy (policy dicts in every layer's dtype). The reference
    is the same weights evaluated in float32, since the export is float32."""
    import tf_keras as k2

    k2.mixed_precision.set_global_policy("mixed_float16")
    try:
        m = _small_cnn(k2, name="mixed")
        _randomize(m)
        m.save(d / "mixed.h5")
    finally:
        k2.mixed_precision.set_global_policy("float32")
    ref = _small_cnn(k2, name="mixed32")
    ref.set_weights(m.get_weights())
    x = _x((12, 12, 1))
    return Case("mixed-precision", d / "mixed.h5", x, _predict(ref, x))


FER_BUILDER = '''
import keras
from keras import layers


def build():
    """Seed-style FER CNN: Conv-BN-ReLU-Pool blocks, 48x48 grey in, 7-way softmax out."""
    inp = keras.Input((48, 48, 1))
    x = inp
    for filters in (8, 16):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    out = layers.Dense(7, activation="softmax")(x)
    return keras.Model(inp, out)


def broken():
    raise RuntimeError("cannot build")
'''


def write_fer_cnn_builder(d: Path) -> Case:
    """The seed-style FER CNN trained with tf.keras, saved with ``save_weights``; the user
    rebuilds it with a Keras 3 builder (auto-generated layer names differ from the file)."""
    import tf_keras as k2

    L = k2.layers
    inp = k2.Input((48, 48, 1))
    x = inp
    for filters in (8, 16):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = L.BatchNormalization()(x)
        x = L.ReLU()(x)
        x = L.MaxPooling2D()(x)
    x = L.Dropout(0.3)(L.Flatten()(x))
    m = k2.Model(inp, L.Dense(7, activation="softmax")(x))
    _randomize(m)
    m.save_weights(str(d / "fer_cnn_weights.h5"))
    (d / "fer_builder.py").write_text(FER_BUILDER)
    x = _x((48, 48, 1))
    return Case("fer-cnn-builder", d / "fer_cnn_weights.h5", x, _predict(m, x),
                architecture=f"{d / 'fer_builder.py'}:build")


def write_mnist_mlp(d: Path) -> Case:
    import tf_keras as k2

    L = k2.layers
    m = k2.Sequential([L.Flatten(input_shape=(28, 28)), L.Dense(16, activation="relu"),
                       L.Dense(10, activation="softmax")])
    _randomize(m)
    m.save(d / "mnist_mlp.h5")
    x = _x((28, 28))
    return Case("mnist-mlp", d / "mnist_mlp.h5", x, _predict(m, x))


def write_mobilenet_rgb(d: Path) -> Case:
    """Transfer learning on 128x128 RGB: MobileNetV2 (alpha 0.35, no downloaded weights) + head."""
    import tf_keras as k2

    base = k2.applications.MobileNetV2(input_shape=(128, 128, 3), alpha=0.35, include_top=False,
                                       weights=None)
    inp = k2.Input((128, 128, 3))
    # preprocess_input inside the model: tf.keras stores x/127.5-1 as TFOpLambda layers.
    x = k2.applications.mobilenet_v2.preprocess_input(inp)
    x = k2.layers.GlobalAveragePooling2D()(base(x))
    m = k2.Model(inp, k2.layers.Dense(7, activation="softmax")(x))
    # Different kinds of picture (noise, colour gradients): after global pooling, noise
    # images all look alike and would not tell a wrong weight from a right one.
    yy, xx = np.mgrid[0:128, 0:128] / 127.0
    grads = [np.stack([yy, xx, 1.0 - yy], axis=-1), np.stack([xx * yy, 1.0 - xx, yy], axis=-1),
             np.stack([np.sin(6 * xx) ** 2, yy, xx], axis=-1)]
    cal = np.stack([*(g * 255.0 for g in grads), *(_x((128, 128, 3), n=3, seed=9) * 255.0)]).astype("float32")
    _calibrate_bn(m, cal)
    base.trainable = False  # the usual transfer-learning set-up: frozen backbone, trained head
    m.save(d / "mobilenet_rgb.h5")
    x = np.stack([_x((128, 128, 3), n=1)[0] * 255.0, grads[0] * 255.0]).astype("float32")
    return Case("mobilenetv2-rgb-128", d / "mobilenet_rgb.h5", x, _predict(m, x))


def write_slicing_op(d: Path) -> Case:
    """``x[:, 1:]`` on a symbolic tensor: tf.keras stores a SlicingOpLambda, which has no
    Keras 3 equivalent (the full-model file is then loaded by tf_keras)."""
    import tf_keras as k2

    inp = k2.Input((8, 8, 1))
    m = k2.Model(inp, k2.layers.Dense(2)(k2.layers.Flatten()(inp[:, 1:])))
    m.save(d / "slicing.h5")
    x = _x((8, 8, 1))
    return Case("slicing-op", d / "slicing.h5", x, _predict(m, x))


def write_tf_keras_savedmodel(d: Path) -> Case:
    """tf.keras 2.x ``model.save(dir)``: a SavedModel directory (Keras 3 cannot load_model it)."""
    import tf_keras as k2

    m = _small_cnn(k2, name="smk2")
    _randomize(m)
    m.save(str(d / "savedmodel_k2"), save_format="tf")
    x = _x((12, 12, 1))
    return Case("tf-keras-savedmodel", d / "savedmodel_k2", x, _predict(m, x))


def write_lambda_savedmodel(d: Path) -> Case:
    """A tf.keras SavedModel with a Lambda: its config sits in keras_metadata.pb."""
    import tf_keras as k2

    L = k2.layers
    m = k2.Sequential([L.Lambda(lambda t: t * 2.0 - 1.0, input_shape=(8, 8, 1), name="scale_sm"),
                       L.Conv2D(2, 3), L.Flatten(), L.Dense(3, activation="softmax")])
    _randomize(m)
    m.save(str(d / "lambda_savedmodel"), save_format="tf")
    x = _x((8, 8, 1))
    return Case("lambda-savedmodel", d / "lambda_savedmodel", x, _predict(m, x))


KERAS1_BUILDER = '''
import keras
from keras import layers


def build():
    """The Keras 1 model below, rebuilt channels-last with Keras 3; names as in the file."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(3, 3, activation="relu", name="conv1_1"),
        layers.Conv2D(2, 3, activation="relu", name="conv1_2"),
        layers.Flatten(name="flatten"),
        layers.Dense(4, activation="softmax", name="fc"),
    ])
'''


def _theano_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """What the Keras 1 Theano model computed: true convolution on channels-first maps,
    channels-first flatten, dense, softmax. Written from Theano's definition, not from the
    loader's repair, so the test is independent of it."""
    def conv_th(a, k, b):  # a: (C,H,W), k: (O,C,kh,kw); Theano's conv2d flips the kernel
        o, _c, kh, kw = k.shape
        hh, ww = a.shape[1] - kh + 1, a.shape[2] - kw + 1
        out = np.zeros((o, hh, ww), np.float64)
        for i in range(hh):
            for j in range(ww):
                patch = a[:, i:i + kh, j:j + kw]
                out[:, i, j] = np.tensordot(k[:, :, ::-1, ::-1], patch, axes=([1, 2, 3], [0, 1, 2]))
        return np.maximum(out + b[:, None, None], 0.0)

    ys = []
    for img in x:
        a = img.transpose(2, 0, 1).astype(np.float64)
        a = conv_th(a, w["conv1_1_W"], w["conv1_1_b"])
        a = conv_th(a, w["conv1_2_W"], w["conv1_2_b"])
        z = a.reshape(-1) @ w["fc_W"] + w["fc_b"]
        e = np.exp(z - z.max())
        ys.append(e / e.sum())
    return np.asarray(ys, dtype="float32")


def _theano_weights() -> dict[str, np.ndarray]:
    """Weights of the small Theano-era model, in Theano's (out, in, kh, kw) kernel layout."""
    rng = np.random.default_rng(7)
    return {
        "conv1_1_W": rng.normal(0, 0.5, (3, 1, 3, 3)).astype("float32"),
        "conv1_1_b": rng.uniform(0.2, 0.6, (3,)).astype("float32"),  # positive: keep the ReLUs alive
        "conv1_2_W": rng.normal(0, 0.5, (2, 3, 3, 3)).astype("float32"),
        "conv1_2_b": rng.uniform(0.2, 0.6, (2,)).astype("float32"),
        "fc_W": rng.normal(0, 0.5, (2 * 4 * 4, 4)).astype("float32"),
        "fc_b": rng.normal(0, 0.1, (4,)).astype("float32"),
    }


def write_keras2_theano_cf(d: Path) -> Case:
    """A Keras 2.0.x full model trained on Theano with channels_first data_format, as Keras 2
    wrote it: list-style Sequential config, kernels in Keras 2's (kh, kw, in, out) layout
    (which Theano convolved with, i.e. flipped), backend 'theano' in the attributes."""
    import h5py

    w = _theano_weights()
    conv = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "valid", "data_format": "channels_first",
            "dilation_rate": [1, 1], "activation": "relu", "use_bias": True, "trainable": True,
            "kernel_initializer": {"class_name": "VarianceScaling",
                                   "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform",
                                              "seed": None}},
            "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None,
            "bias_constraint": None}
    config = [
        {"class_name": "Conv2D", "config": {**conv, "name": "conv1_1", "filters": 3,
                                            "batch_input_shape": [None, 1, 8, 8], "dtype": "float32"}},
        {"class_name": "Conv2D", "config": {**conv, "name": "conv1_2", "filters": 2}},
        {"class_name": "Flatten", "config": {"name": "flatten", "trainable": True}},
        {"class_name": "Dense", "config": {"name": "fc", "units": 4, "activation": "softmax", "use_bias": True,
                                           "trainable": True}},
    ]
    path = d / "keras2_theano_cf.h5"
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.0.8"
        f.attrs["backend"] = b"theano"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": config}).encode()
        g = f.create_group("model_weights")
        names = ["conv1_1", "conv1_2", "flatten", "fc"]
        g.attrs["layer_names"] = np.array([n.encode() for n in names])
        g.attrs["backend"] = b"theano"
        g.attrs["keras_version"] = b"2.0.8"
        for n in names:
            lg = g.create_group(n)
            if n == "flatten":
                lg.attrs["weight_names"] = np.array([], dtype="S1")
                continue
            kernel = w[f"{n}_W"]
            if kernel.ndim == 4:
                kernel = kernel.transpose(2, 3, 1, 0)  # Keras 2 layout (kh, kw, in, out)
            wn = [f"{n}/kernel:0", f"{n}/bias:0"]
            lg.attrs["weight_names"] = np.array([x.encode() for x in wn])
            lg[wn[0]] = kernel
            lg[wn[1]] = w[f"{n}_b"]
    x = _x((8, 8, 1))
    return Case("keras2-theano-channels-first", path, x, _theano_reference(x, w))


def write_keras1_theano(d: Path, *, with_attrs: bool = True) -> Case:
    """A Keras 1.x Theano weights file (``conv1_1_W`` names, (out,in,kh,kw) kernels), written
    with h5py in Keras 1's layout. ``with_attrs=False`` leaves out the backend attribute so
    only ``--keras1-theano`` can say where the weights came from."""
    import h5py

    w = _theano_weights()
    name = "keras1_th.h5" if with_attrs else "keras1_noattrs.h5"
    with h5py.File(d / name, "w") as f:
        layers = ["input_1", "conv1_1", "conv1_2", "flatten", "fc"]
        f.attrs["layer_names"] = np.array([s.encode() for s in layers])
        if with_attrs:
            f.attrs["keras_version"] = b"1.2.2"
            f.attrs["backend"] = b"theano"
        for layer in layers:
            g = f.create_group(layer)
            names = [k for k in w if k.startswith(layer + "_")]
            g.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
            for n in names:
                g.create_dataset(n, data=w[n])
    (d / "keras1_builder.py").write_text(KERAS1_BUILDER)
    x = _x((8, 8, 1))
    return Case("keras1-theano", d / name, x, _theano_reference(x, w),
                architecture=f"{d / 'keras1_builder.py'}:build", keras1_theano=not with_attrs)


WRITERS = [write_weights_json, write_nested, write_lambda, write_seq_no_input, write_list_sequential,
           write_dtype_initializers, write_depthwise_groups, write_mixed_precision, write_fer_cnn_builder,
           write_mnist_mlp, write_mobilenet_rgb, write_keras1_theano, write_slicing_op, write_tf_keras_savedmodel,
           write_lambda_savedmodel, write_keras2_theano_cf]


def write_all(d: Path) -> dict[str, Case]:
    d.mkdir(parents=True, exist_ok=True)
    cases = {}
    for writer in WRITERS:
        case = writer(d)
        cases[case.name] = case
    extra = write_keras1_theano(d, with_attrs=False)
    cases["keras1-theano-flag"] = extra
    return cases


def save_cases(cases: dict[str, Case], d: Path) -> None:
    """Index + reference arrays, for the subprocess mode."""
    index = {}
    for name, c in cases.items():
        np.savez(d / f"{name}.ref.npz", x=c.x, y=c.y)
        index[name] = {"path": str(c.path), "architecture": c.architecture, "keras1_theano": c.keras1_theano}
    (d / "cases.json").write_text(json.dumps(index, indent=1))


def load_cases(d: Path) -> dict[str, Case]:
    index = json.loads((d / "cases.json").read_text())
    out = {}
    for name, v in index.items():
        ref = np.load(d / f"{name}.ref.npz")
        out[name] = Case(name, Path(v["path"]), ref["x"], ref["y"], v["architecture"], v["keras1_theano"])
    return out


def write_fer_reference(fer_h5: Path, d: Path) -> Case:
    """The real Keras 2.0.5 file, evaluated by tf_keras (Keras 2), an independent reference."""
    import tf_keras as k2

    m = k2.models.load_model(fer_h5, compile=False)
    x = np.random.default_rng(5).uniform(-1.0, 1.0, (4, *m.input_shape[1:])).astype("float32")
    return Case("fer-h5", fer_h5, x, _predict(m, x))


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    cases = write_all(out_dir)
    if len(sys.argv) > 2:
        cases["fer-h5"] = write_fer_reference(Path(sys.argv[2]), out_dir)
    save_cases(cases, out_dir)
