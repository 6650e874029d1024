"""Steps applied to every loaded model, whatever its file format; each one it takes is a report line.

The config repairs of :mod:`feredge.export.load.legacy` make an old file buildable; these make a built model
convertible. They must not change a single output value (tests compare against the original).
"""

from __future__ import annotations

import logging
from typing import Any

from feredge.export.load.legacy import Repairs

log = logging.getLogger(__name__)

RECURRENT = ("LSTM", "GRU", "SimpleRNN")


def is_tf_keras(model: Any) -> bool:
    """A model built by ``tf_keras`` (the Keras 2 API) rather than Keras 3."""
    return type(model).__module__.startswith("tf_keras")


def unroll_recurrent(model: Any, repairs: Repairs) -> Any:
    """Recurrent layers over a fixed number of steps, unrolled into plain ops.

    The TFLite converter lowers a rolled LSTM/GRU/SimpleRNN to a While loop whose int8
    quantisation crashed the process (a segfault, on a tf.keras 2.11 CNN-LSTM); unrolled, the same
    weights become Conv/FullyConnected/Logistic/Tanh/Mul/Add ops that int8 TFLite, tf2onnx and
    onnxruntime's quantiser all take, and the outputs are identical. An image classifier's
    sequence length is fixed by its input size, so the cost is only graph size.

    LSTM and GRU also get ``implementation=1`` (one matmul per gate, the kernel split once as a
    constant): the default fused matmul splits an activation tensor into the gates, and the
    int8 quantiser left that SPLIT in float on some conversions of the same model and not others."""
    names: list[str] = []
    if not _has_rolled(model):
        return model
    kmod = _keras_of(model)

    def clone(layer: Any) -> Any:
        if hasattr(layer, "layers") and _has_rolled(layer):
            return kmod.models.clone_model(layer, clone_function=clone)
        cfg = layer.get_config()
        if _rolled(layer) and type(layer).__name__ == "Bidirectional":
            for key in ("layer", "backward_layer"):
                if isinstance(cfg.get(key), dict):
                    _unrolled_config(cfg[key]["class_name"], cfg[key]["config"])
            names.append(layer.name)
        elif _rolled(layer):
            _unrolled_config(type(layer).__name__, cfg)
            names.append(layer.name)
        return layer.__class__.from_config(cfg)

    unrolled = kmod.models.clone_model(model, clone_function=clone)
    unrolled.set_weights(model.get_weights())
    for name in names:
        repairs.note("recurrent layer over a fixed sequence unrolled into plain ops (int8 TFLite and ONNX "
                     "convert those; a rolled loop crashed the TFLite converter)", name)
    return unrolled


def _unrolled_config(cls: str, cfg: dict[str, Any]) -> None:
    cfg["unroll"] = True
    if cls in ("LSTM", "GRU"):
        cfg["implementation"] = 1  # not in get_config: see unroll_recurrent


def _keras_of(model: Any) -> Any:
    if is_tf_keras(model):
        import tf_keras

        return tf_keras
    import keras

    return keras


def _steps(layer: Any) -> int | None:
    try:
        return layer.input.shape[1]
    except (AttributeError, ValueError, IndexError):  # a layer never called on a symbolic tensor
        return None


def _rolled(layer: Any, steps: int | None = None) -> bool:
    """A rolled recurrent layer over a fixed number of steps (Bidirectional: its forward layer)."""
    if type(layer).__name__ == "Bidirectional":
        return _rolled(layer.forward_layer, _steps(layer))
    if type(layer).__name__ not in RECURRENT or getattr(layer, "unroll", True):
        return False
    if (steps or _steps(layer)) is None:
        log.info("recurrent layer %s has no fixed sequence length: left rolled", layer.name)
        return False
    return True


def _has_rolled(model: Any) -> bool:
    return any(_rolled(layer) or (hasattr(layer, "layers") and _has_rolled(layer)) for layer in model.layers)


STEPS = (unroll_recurrent,)


def apply_all(model: Any, repairs: Repairs) -> Any:
    for step in STEPS:
        model = step(model, repairs)
    return model
