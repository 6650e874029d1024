"""Classifier, interpreter backends and the Coral fallback, on a real int8 model run by LiteRT."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from feredge.edge import backends
from feredge.edge.backends import coral
from feredge.edge.contract import Contract, QuantParams
from feredge.edge.errors import ContractError, EdgeError
from feredge.edge.model import UNCERTAIN, Classifier, default_model_path
from feredge.edge.preprocess import dequantize, quantize


@pytest.fixture(scope="module")
def clf(edge_tiny_model: Path) -> Classifier:
    return Classifier(edge_tiny_model, device="cpu", num_threads=1)


def test_int8_model_follows_the_float_model(clf: Classifier, edge_tiny_model: Path):
    ref = np.load(edge_tiny_model / "reference.npz")
    got = np.stack([clf.predict_prepared(x) for x in ref["x"]])
    assert got.shape == ref["p"].shape
    assert np.allclose(got.sum(axis=1), 1.0, atol=0.05)
    # The float model's classes differ clearly across these inputs, so a wrong scale or zero point
    # (e.g. quantising without the -128 offset) would move them far more than int8 rounding does.
    assert ref["p"].max(axis=1).min() > 0.3
    assert np.abs(got - ref["p"]).max() < 0.06
    assert (got.argmax(1) == ref["p"].argmax(1)).mean() >= 0.9


def test_batch_dimension_and_raw_outputs(clf: Classifier, edge_tiny_model: Path):
    x = np.load(edge_tiny_model / "reference.npz")["x"][0]
    a = clf.outputs_prepared(x)
    b = clf.outputs_prepared(x[None])
    assert a.shape == (7,) and np.array_equal(a, b)
    assert np.array_equal(clf.predict_prepared(x), a)  # softmax output, T=1: unchanged


def test_quantize_dequantize_round_trip(clf: Classifier):
    q = clf.input_quant
    assert q.dtype == "int8"
    x = np.linspace(0.0, 1.0, 1001, dtype=np.float32)  # the model's 0..1 input range
    y = quantize(x, q)
    assert y.dtype == np.int8
    assert np.abs(dequantize(y, q) - x).max() <= q.scale / 2 + 1e-6
    # out of range values clip instead of wrapping around
    assert quantize(np.array([-5.0, 5.0], np.float32), q).tolist() == [-128, 127]


def test_classify_face_crop_and_min_score(edge_tiny_model: Path, astronaut_bgr):
    c = Classifier(edge_tiny_model / "tiny.int8.tflite", device="cpu", min_score=0.99)
    pred = c.classify(astronaut_bgr[60:170, 170:280])
    assert set(pred.scores) == set(c.labels)
    assert pred.score == max(pred.scores.values())
    assert pred.label == UNCERTAIN  # this untrained model is never 99% sure
    assert Classifier(edge_tiny_model, device="cpu").classify(astronaut_bgr[60:170, 170:280]).label in c.labels
    with pytest.raises(EdgeError, match="min_score"):
        Classifier(edge_tiny_model, min_score=1.5)


def test_tampered_model_is_refused(edge_tiny_model: Path, tmp_path: Path):
    d = tmp_path / "m"
    shutil.copytree(edge_tiny_model, d)
    p = d / "tiny.int8.tflite"
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ContractError, match="does not match its contract"):
        Classifier(d)


def test_contract_quantisation_must_match_the_tensor(edge_tiny_model: Path, tmp_path: Path):
    d = tmp_path / "m"
    shutil.copytree(edge_tiny_model, d)
    c = Contract.load(d / "tiny.json")
    c.quantization["tiny.int8.tflite"]["input"] = QuantParams("int8", 0.5, 3)
    c.save(d / "tiny.json")
    with pytest.raises(ContractError, match=r"input quantisation .* does not match its contract"):
        Classifier(d, device="cpu")


def test_model_without_contract_is_refused(edge_tiny_model: Path, tmp_path: Path):
    from feredge.edge.contract import _strip_tflite_zip

    p = tmp_path / "bare.tflite"
    p.write_bytes(_strip_tflite_zip((edge_tiny_model / "tiny.int8.tflite").read_bytes()))
    with pytest.raises(ContractError, match="carries no feredge contract"):
        Classifier(p)


def test_default_model(monkeypatch):
    try:
        path = default_model_path()
    except EdgeError as e:
        assert "pass --model" in str(e)
        with pytest.raises(EdgeError, match="no default model"):
            Classifier()
    else:  # once a default model ships it must load
        assert Classifier(path, device="cpu").labels


def test_backend_selection(edge_tiny_model: Path):
    assert backends.available_backends()[0] == "litert"
    assert backends.load_runtime("auto").name == "litert"
    with pytest.raises(EdgeError, match="unknown backend"):
        Classifier(edge_tiny_model, backend="onnx")
    if not backends.backend_module("tflite-runtime").available():
        with pytest.raises(EdgeError, match="pip install tflite-runtime"):
            Classifier(edge_tiny_model, backend="tflite-runtime")


def test_tensorflow_backend_gives_the_same_answer(clf: Classifier, edge_tiny_model: Path):
    pytest.importorskip("tensorflow")
    tf_clf = Classifier(edge_tiny_model, backend="tensorflow", device="cpu")
    assert tf_clf.backend_name == "tensorflow"
    x = np.load(edge_tiny_model / "reference.npz")["x"][:4]
    for xi in x:
        assert np.allclose(tf_clf.predict_prepared(xi), clf.predict_prepared(xi), atol=1 / 128)


def test_threads_and_device_validation(edge_tiny_model: Path):
    assert Classifier(edge_tiny_model, device="cpu", num_threads=2).handle.num_threads == 2
    with pytest.raises(EdgeError, match="threads"):
        Classifier(edge_tiny_model, device="cpu", num_threads=0)
    with pytest.raises(EdgeError, match="unknown device"):
        Classifier(edge_tiny_model, device="gpu")


# No Coral stick and no libedgetpu here: these exercise the real failing dlopen.
def test_coral_required_without_library_fails_clearly(edge_tiny_model: Path):
    try:
        coral.load_edgetpu_delegate(backends.load_runtime())
    except coral.CoralUnavailable:
        pass
    else:
        pytest.skip("an Edge TPU is attached here")
    with pytest.raises(EdgeError, match=r"--device coral: libedgetpu\.so\.1 (is not installed|loaded but found no)"):
        Classifier(edge_tiny_model, device="coral")


def test_coral_auto_falls_back_to_cpu_with_a_reason(edge_tiny_model: Path, caplog):
    with caplog.at_level(logging.DEBUG, logger="feredge.edge.backends"):
        c = Classifier(edge_tiny_model, device="auto")
    if c.handle.fallback_reason is None:
        pytest.skip("an Edge TPU is attached here")
    assert c.device == "cpu"
    assert "libedgetpu" in c.handle.fallback_reason
    # a CPU model loses nothing without a Coral: the reason is kept (doctor shows it) and logged
    # at DEBUG, not as a WARNING on every run of every machine without one
    recs = [r for r in caplog.records if "running on the CPU" in r.getMessage() and "libedgetpu" in r.getMessage()]
    assert recs and all(r.levelno == logging.DEBUG for r in recs)


# A Ctrl-C inside load_delegate leaves LiteRT's half-built Delegate alive in the KeyboardInterrupt's
# traceback; it is collected only at exit, long after the load, and its __del__ used to print a
# traceback under "feredge run: interrupted" (a CI failure, stop 29). Real dlopen failure, real Delegate.
_INTERRUPTED_LOAD = """
import dataclasses
import sys
from feredge.edge import backends
from feredge.edge.backends import coral

rt = backends.load_runtime()

def interrupted_load(lib, options):
    try:
        rt.load_delegate(lib, options)  # fails in dlopen here: a half-built Delegate
    except Exception:
        raise KeyboardInterrupt  # chained: its traceback keeps the Delegate alive

try:
    coral.load_edgetpu_delegate(dataclasses.replace(rt, load_delegate=interrupted_load))
except KeyboardInterrupt as e:
    kept = e
except coral.CoralUnavailable:
    sys.exit(3)

class Other:
    def __del__(self):
        self._library  # the very same error, from another object's __del__: still reported

Other()
print("done", flush=True)
"""


def test_interrupted_coral_load_leaves_no_traceback_at_exit():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_LOAD], capture_output=True, text=True, timeout=120)
    if r.returncode == 3:
        pytest.skip("an Edge TPU is attached here")
    assert r.returncode == 0 and "done" in r.stdout, r.stderr
    assert "Delegate.__del__" not in r.stderr, r.stderr
    assert "Other.__del__" in r.stderr  # the filter drops only the half-built delegate


def test_edgetpu_model_without_coral_is_refused(edge_tiny_model: Path, tmp_path: Path):
    # A model compiled by edgetpu_compiler holds an "edgetpu-custom-op"; on the CPU it cannot run.
    p = tmp_path / "tiny_edgetpu.tflite"
    p.write_bytes((edge_tiny_model / "tiny.int8.tflite").read_bytes() + b"edgetpu-custom-op")
    assert backends.is_edgetpu_model(p)
    with pytest.raises(EdgeError, match="compiled for the Edge TPU and cannot run on the CPU"):
        backends.make_interpreter(p, device="cpu")
