"""Legacy FER files the exporter used to fail on (docs/legacy-models.md), exported end to end.

Each fixture (``tests/legacy_fer_models.py``) is trained for seconds on FER2013 training faces by
tf_keras and written as the old Keras version did. Then, with real TensorFlow, tf2onnx, LiteRT and
onnxruntime: the desktop model feredge loads reproduces tf_keras's own outputs on 500 PublicTest
faces, ``feredge export`` succeeds, its report names the repair, and the int8 TFLite agrees with
the desktop model on at least 95 % of the 500 PublicTest faces the export scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import need

from feredge.edge.cli.main import main
from feredge.edge.contract import FER2013_LABELS, InputSpec, Normalize

pytestmark = [pytest.mark.shared, pytest.mark.slow]

# the repair each class of file needs, as the export report words it
REPAIRS = {
    "mixed_format": "channels_first layer in a channels-last model (Keras 2.0)",
    "mixed_format_weights": "channels_first layer in a channels-last model (Keras 2.0)",
    "cnn_lstm": "recurrent layer over a fixed sequence unrolled into plain ops",
    "locally_connected": "layers Keras 3 dropped: loaded by tf_keras",
}
# Measured with issue 22's defaults on these 500 faces: TFLite 97.8-98.8 %, int8 ONNX 97.0-99.2 %
# (one face is 0.2 pp; the selection faces decide each lever, so a fixture can move by a few faces).
MIN_AGREEMENT = 0.965


@pytest.fixture(scope="module")
def fer_cases(tmp_path_factory, fer2013_dir: Path):
    import importlib.util

    need(importlib.util.find_spec("tf_keras") is not None, "tf_keras is not installed (pip install -e '.[dev]')")
    import legacy_fer_models as L

    from feredge.edge.preprocess import prepare_batch
    from feredge.export.calibration import read_source

    spec = InputSpec(height=48, width=48, channels=1, color="gray", resize="area", normalize=Normalize(1 / 255, 0.0))
    train = read_source(fer2013_dir, "train", progress=False).sample(L.TRAIN_FACES, seed=0)
    test = read_source(fer2013_dir, "test", progress=False).sample(500, seed=0)
    x, y = prepare_batch(train.images, spec), train.labels_for(list(FER2013_LABELS))
    x_test = prepare_batch(test.images, spec)
    return L.write_all(tmp_path_factory.mktemp("legacy_fer"), x, y, x_test), x_test


def _desktop_matches_tf_keras(case, x_test: np.ndarray, repair: str) -> None:
    from feredge.export.evaluate.runners import run_keras
    from feredge.export.load.model import load_model

    assert len(set(case.y.argmax(1).tolist())) >= 2, "the fixture answers one class for every face"
    desktop = load_model(case.path, architecture=case.architecture)
    p = run_keras(desktop.model, x_test)
    assert float(np.abs(p - case.y).max()) < 1e-4, "the loaded model does not compute what tf_keras computed"
    assert any(line.startswith(repair) for line in desktop.repairs), desktop.repairs


def test_mixed_format_weights_and_json_load_like_the_full_file(fer_cases):
    """The weights-only file with its JSON takes the same repair (its export is the full file's)."""
    cases, x_test = fer_cases
    _desktop_matches_tf_keras(cases["mixed_format_weights"], x_test, REPAIRS["mixed_format_weights"])


@pytest.mark.parametrize("name", ["mixed_format", "cnn_lstm", "locally_connected"])
def test_legacy_fer_file_exports_with_parity(fer_cases, name: str, fer2013_dir: Path, tmp_path: Path, capsys):
    from feredge.export.evaluate.runners import run_keras
    from feredge.export.load.model import load_model

    cases, x_test = fer_cases
    case = cases[name]
    _desktop_matches_tf_keras(case, x_test, REPAIRS[name])

    out = tmp_path / "out"
    args = ["export", str(case.path), "--calibration", str(fer2013_dir), "--samples", "200", "--eval-samples", "500",
            "--quiet", "--out", str(out)]
    if case.architecture:
        args += ["--architecture", case.architecture]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 0, err
    rep = json.loads((out / "export-report.json").read_text())
    assert any(line.startswith(REPAIRS[name]) for line in rep["repairs"]), rep["repairs"]
    arts = rep["artifacts"]
    tfl = next(v for k, v in arts.items() if k.endswith(".int8.tflite"))
    print(f"\n{name}: int8 TFLite agreement {tfl['metrics']['agreement']:.4f} on {tfl['metrics']['n']} PublicTest "
          f"faces; ONNX {[round(v['metrics']['agreement'], 4) for k, v in arts.items() if k.endswith('.onnx')]}")
    assert tfl["metrics"]["n"] == 500
    assert tfl["metrics"]["agreement"] >= MIN_AGREEMENT
    for k, v in arts.items():
        if k.endswith(".onnx"):
            assert v["metrics"]["agreement"] >= (MIN_AGREEMENT if ".int8." in k else 0.999), k
    # the desktop reference the export wrote loads back the same way (feredge parity's reference)
    ref = next(out / k for k, v in arts.items() if v.get("kind") == "keras")
    assert float(np.abs(run_keras(load_model(ref).model, x_test) - case.y).max()) < 1e-4


def test_layer_no_keras_knows_is_named(tmp_path: Path, capsys, fer2013_dir: Path):
    """A layer class neither Keras 3 nor tf_keras has: one line naming the layer and its class."""
    import h5py

    src = tmp_path / "custom.h5"
    cfg = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 48, 48, 1], "name": "in"}},
        {"class_name": "FancyExpressionPool", "config": {"name": "fancy", "trainable": True}},
        {"class_name": "Dense", "config": {"name": "dense", "units": 7, "activation": "softmax"}}]}}
    with h5py.File(src, "w") as f:
        f.attrs["model_config"] = json.dumps(cfg).encode()
        f.attrs["keras_version"] = b"2.11.0"
        f.attrs["backend"] = b"tensorflow"
        f.create_group("model_weights").attrs["layer_names"] = np.array([], dtype="S1")
    rc = main(["export", str(src), "--calibration", str(fer2013_dir), "--quiet", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    line = next(ln for ln in err.splitlines() if ln.startswith("feredge export: error:"))
    assert "layer 'fancy' (FancyExpressionPool) is known to neither Keras 3 nor tf_keras" in line, line
    assert not (tmp_path / "o").exists()


def test_keras3_recurrent_layers_unroll_and_export(tmp_path: Path, capsys, fer2013_dir: Path):
    """GRU, SimpleRNN and a Bidirectional LSTM in a Keras 3 .keras model: unrolled with identical
    outputs, then exported (rolled, the TFLite converter crashed on such loops)."""
    import keras

    from feredge.export.evaluate.runners import run_keras
    from feredge.export.load.legacy import Repairs
    from feredge.export.load.steps import unroll_recurrent

    keras.utils.set_random_seed(3)
    L = keras.layers
    inp = keras.Input((48, 48, 1))
    h = L.Conv2D(8, 3, strides=8, padding="same", activation="relu")(inp)  # (6, 6, 8): 6 steps keep it quick
    h = L.Reshape((6, 48))(h)
    h = L.GRU(16, return_sequences=True)(h)
    h = L.SimpleRNN(16, return_sequences=True)(h)
    h = L.Bidirectional(L.LSTM(8))(h)
    model = keras.Model(inp, L.Dense(7, activation="softmax")(h))
    x = np.random.default_rng(0).uniform(0, 1, (16, 48, 48, 1)).astype("float32")
    repairs = Repairs()
    unrolled = unroll_recurrent(model, repairs)
    assert np.abs(run_keras(unrolled, x) - run_keras(model, x)).max() < 1e-5
    rnns = (unrolled.layers[3], unrolled.layers[4], unrolled.layers[5].forward_layer)
    assert [rnn.unroll for rnn in rnns] == [True] * 3
    assert repairs.lines() and repairs.lines()[0].endswith(f": {model.layers[3].name}, {model.layers[4].name}, "
                                                            f"{model.layers[5].name}")
    model.save(tmp_path / "rnn.keras")
    out = tmp_path / "out"
    rc = main(["export", str(tmp_path / "rnn.keras"), "--calibration", str(fer2013_dir), "--samples", "50",
               "--eval-samples", "100", "--quiet", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    ops = {o["op"] for o in json.loads((out / "export-report.json").read_text())["artifacts"]["rnn.int8.tflite"]["ops"]}
    assert "WHILE" not in ops and {"FULLY_CONNECTED", "TANH"} <= ops, ops
