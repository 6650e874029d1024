"""Third-party-style legacy FER models, trained for seconds on FER2013 so their logits are not near-ties.

One writer per class of file the exporter used to fail on (docs/legacy-models.md):

- ``mixed_format``: a Keras 2.0.6 list-style Sequential whose channels-last convolutions are
  separated by ``MaxPooling2D(data_format="channels_first")``, as a full-model ``.h5`` and as
  weights-only ``.h5`` + JSON. Keras 2.0 ran such a pooling on the last two axes of the
  channels-last tensor (its TensorFlow backend transposed to NHWC around the op, because
  TensorFlow's CPU kernels have no NCHW pooling). The network is trained as its exact twin with
  explicit transposes, and the twin is checked against ``tf_keras.backend.pool2d`` (the function
  Keras 2's pooling layer called) before its outputs become the reference.
- ``cnn_lstm``: a tf.keras 2.11-style CNN-LSTM (Conv/BN/ReLU stages, Reshape, LSTM, Reshape,
  LSTM, Dense), weights-only ``.h5`` + JSON.
- ``locally_connected``: a full-model ``.h5`` with ``LocallyConnected2D``, which Keras 3 dropped.

Every writer records the writing library's (tf_keras's) own outputs on the given faces.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Enough for each network to give varied, confident answers (a CNN-LSTM trained less predicts
# "happy" for every face, and agreement with a constant is no test); 10-15 s per network.
TRAIN_FACES, EPOCHS, EPOCHS_LSTM = 3000, 4, 6


@dataclass
class FerCase:
    name: str
    path: Path
    y: np.ndarray  # tf_keras's softmax outputs on the test faces
    architecture: str | None = None


def _fit(model, x: np.ndarray, y: np.ndarray, epochs: int = EPOCHS) -> None:
    import tf_keras as k2

    model.compile(optimizer=k2.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x[:TRAIN_FACES], y[:TRAIN_FACES], batch_size=32, epochs=epochs, verbose=0, shuffle=True)


def _as_keras206_list(cfg: dict) -> dict:
    """tf_keras's Sequential config as Keras 2.0.6 wrote it: the list of layers, the input shape
    on the first layer (no InputLayer)."""
    layers = cfg["config"]["layers"]
    if layers[0]["class_name"] == "InputLayer":
        shape = layers.pop(0)["config"]["batch_input_shape"]
        layers[0]["config"]["batch_input_shape"] = shape
    for layer in layers:
        layer.pop("module", None)
        layer.pop("registered_name", None)
    return {"class_name": "Sequential", "config": layers}


def _set_h5_attrs(path: Path, version: str, edit_config=None) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = version.encode()
        f.attrs["backend"] = b"tensorflow"
        if edit_config is not None:
            f.attrs["model_config"] = json.dumps(edit_config(json.loads(f.attrs["model_config"]))).encode()


def _mixed_layers(k2, twin: bool) -> list:
    L = k2.layers

    def pool(name: str) -> list:
        if twin:  # what Keras 2.0's backend computed for a channels_first pooling on NHWC data
            return [L.Permute((2, 3, 1), name=f"{name}_t1"), L.MaxPooling2D(2, name=name),
                    L.Permute((3, 1, 2), name=f"{name}_t2")]
        return [L.MaxPooling2D(2, data_format="channels_first", name=name)]

    return [L.Conv2D(8, 3, padding="same", activation="relu", input_shape=(48, 48, 1), name="conv1"), *pool("pool1"),
            L.Conv2D(16, 3, padding="same", activation="relu", name="conv2"), *pool("pool2"),
            L.Flatten(name="flatten"), L.Dense(7, activation="softmax", name="dense")]


def write_mixed_format(d: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> list[FerCase]:
    import tf_keras as k2

    k2.utils.set_random_seed(0)
    twin = k2.Sequential(_mixed_layers(k2, twin=True))
    _fit(twin, x, y)
    # the twin's pooling is Keras 2's: tf_keras.backend.pool2d(channels_first) on the conv output
    conv1 = np.asarray(twin.get_layer("conv1")(x_test[:8]))
    want = np.asarray(k2.backend.pool2d(conv1, (2, 2), (2, 2), "valid", "channels_first", "max"))
    got = np.asarray(twin.layers[3](twin.layers[2](twin.layers[1](conv1))))
    assert want.shape == got.shape == (8, 48, 24, 4) and np.array_equal(want, got)
    model = k2.Sequential(_mixed_layers(k2, twin=False), name="fer_k206")
    for layer in model.layers:
        layer.set_weights(twin.get_layer(layer.name).get_weights())
    ref = np.asarray(twin.predict(x_test, verbose=0))
    full = d / "fer_k206_mixed.h5"
    model.save(full, save_format="h5")
    _set_h5_attrs(full, "2.0.6", _as_keras206_list)
    weights, arch = d / "fer_k206_mixed_weights.h5", d / "fer_k206_mixed.json"
    model.save_weights(weights, save_format="h5")
    _set_h5_attrs(weights, "2.0.6")
    cfg = json.loads(model.to_json())
    arch.write_text(json.dumps({**_as_keras206_list(cfg), "keras_version": "2.0.6", "backend": "tensorflow"}))
    return [FerCase("mixed_format", full, ref), FerCase("mixed_format_weights", weights, ref, str(arch))]


def write_cnn_lstm(d: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> FerCase:
    import tf_keras as k2

    L = k2.layers
    k2.utils.set_random_seed(1)
    model = k2.Sequential([
        L.Conv2D(8, 3, strides=2, padding="same", input_shape=(48, 48, 1)), L.BatchNormalization(), L.ReLU(),
        L.Conv2D(16, 3, strides=2, padding="same"), L.BatchNormalization(), L.ReLU(),  # (12, 12, 16)
        L.Reshape((12, 192)), L.LSTM(32, return_sequences=True),
        L.Reshape((6, 64)), L.LSTM(32),
        L.Dense(7, activation="softmax"),
    ], name="fer_cnn_lstm")
    _fit(model, x, y, EPOCHS_LSTM)
    weights, arch = d / "fer_cnn_lstm_weights.h5", d / "fer_cnn_lstm.json"
    model.save_weights(weights, save_format="h5")
    _set_h5_attrs(weights, "2.11.0")
    arch.write_text(json.dumps({**json.loads(model.to_json()), "keras_version": "2.11.0"}))
    return FerCase("cnn_lstm", weights, np.asarray(model.predict(x_test, verbose=0)), str(arch))


def write_locally_connected(d: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> FerCase:
    import tf_keras as k2

    L = k2.layers
    k2.utils.set_random_seed(2)
    model = k2.Sequential([
        L.Conv2D(8, 3, strides=2, padding="same", activation="relu", input_shape=(48, 48, 1)),  # (24, 24, 8)
        L.LocallyConnected2D(8, 3, strides=2, activation="relu"),  # (11, 11, 8)
        L.Flatten(), L.Dense(7, activation="softmax"),
    ], name="fer_locally_connected")
    _fit(model, x, y)
    full = d / "fer_locally_connected.h5"
    model.save(full, save_format="h5")
    _set_h5_attrs(full, "2.11.0")
    return FerCase("locally_connected", full, np.asarray(model.predict(x_test, verbose=0)))


def write_all(d: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray) -> dict[str, FerCase]:
    d.mkdir(parents=True, exist_ok=True)
    cases = [*write_mixed_format(d, x, y, x_test), write_cnn_lstm(d, x, y, x_test),
             write_locally_connected(d, x, y, x_test)]
    return {c.name: c for c in cases}
