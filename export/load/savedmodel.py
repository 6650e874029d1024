"""A SavedModel directory: rebuilt as Keras 3 from a tf.keras 2.x config, else its serving
signature wrapped in a ``TFSMLayer``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError
from feredge.export.load.common import fmt_shape, refuse_lambdas
from feredge.export.load.legacy import Repairs, assign_weights, build_from_config, translate_model_config

log = logging.getLogger(__name__)


def load(src: Path, repairs: Repairs, trust_model: bool) -> tuple[Any, str]:
    """Keras 3 cannot ``load_model`` a SavedModel. One written by tf.keras 2.x carries its
    Keras config (``keras_metadata.pb``): with tf_keras installed we rebuild it as a real
    Keras 3 model (layers visible, savable as .keras). Otherwise wrap the serving signature
    in a TFSMLayer with a static input read from the signature."""
    if (src / "keras_metadata.pb").is_file():
        rebuilt = _savedmodel_via_tf_keras(src, repairs, trust_model)
        if rebuilt is not None:
            return rebuilt, "tf.keras savedmodel (rebuilt as Keras 3)"
    return _savedmodel_tfsm(src, repairs)


def _savedmodel_via_tf_keras(src: Path, repairs: Repairs, trust_model: bool) -> Any | None:
    try:
        import tf_keras
    except ImportError:
        log.info("tf_keras not installed: %s is wrapped as a TFSMLayer instead of rebuilt", src)
        return None
    from collections import OrderedDict

    _refuse_savedmodel_lambdas(src, trust_model)  # before tf_keras revives (unmarshals) anything
    try:
        k2_model = tf_keras.models.load_model(str(src), compile=False)
        cfg = json.loads(k2_model.to_json())
    except Exception as e:
        log.info("tf_keras could not load %s (%s); wrapping it as a TFSMLayer", src, one_line(e))
        return None
    refuse_lambdas(cfg, src, trust_model)
    weights = OrderedDict((layer.name, [(w.name, w.numpy()) for w in layer.weights]) for layer in k2_model.layers)
    model = build_from_config(translate_model_config(cfg, repairs), trust_model=trust_model)
    assign_weights(model, weights, repairs)
    repairs.note("tf.keras SavedModel rebuilt from its Keras config and variables (via tf_keras)")
    return model


def _refuse_savedmodel_lambdas(src: Path, trust_model: bool) -> None:
    """tf.keras stores each layer's config as JSON in ``keras_metadata.pb``; look for Lambda."""
    raw = (src / "keras_metadata.pb").read_bytes()
    configs: list[Any] = []
    try:
        from tf_keras.protobuf import saved_metadata_pb2

        meta = saved_metadata_pb2.SavedMetadata()
        meta.ParseFromString(raw)
        configs = [json.loads(node.metadata or "{}") for node in meta.nodes]
    except Exception:  # unparsable: fall back to a plain byte search of the JSON
        if b'"class_name": "Lambda"' in raw:
            configs.append({"class_name": "Lambda", "config": {"name": "?"}})
    refuse_lambdas(configs, src, trust_model)


def _savedmodel_tfsm(src: Path, repairs: Repairs) -> tuple[Any, str]:
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(src))
    except Exception as e:
        raise ExportError(f"cannot load SavedModel {src}: {one_line(e)}") from None
    sigs = dict(loaded.signatures)
    if not sigs:
        raise ExportError(f"SavedModel {src} has no serving signature (save it with model.export() or a signature)")
    endpoint = "serving_default" if "serving_default" in sigs else sorted(sigs)[0]
    fn = sigs[endpoint]
    _, kwargs = fn.structured_input_signature
    if len(kwargs) != 1:
        raise ExportError(f"SavedModel {src} signature '{endpoint}' has {len(kwargs)} inputs; "
                          "feredge exports single-input image classifiers")
    spec = next(iter(kwargs.values()))
    outs = fn.structured_outputs
    if len(outs) != 1:
        raise ExportError(f"SavedModel {src} signature '{endpoint}' has {len(outs)} outputs; "
                          "feredge exports single-output classifiers")
    out_key = next(iter(outs))
    dims = list(spec.shape)[1:]
    if any(d is None for d in dims):
        raise ExportError(f"SavedModel {src} input {fmt_shape(tuple(spec.shape))} is not a fixed-size image tensor")
    layer = keras.layers.TFSMLayer(str(src), call_endpoint=endpoint)
    inp = keras.Input(shape=tuple(dims), dtype=spec.dtype.name, name=spec.name or "input")
    out = layer(inp)
    if isinstance(out, dict):
        out = out[out_key]
    model = keras.Model(inp, out, name=src.name.replace(".", "_") or "savedmodel")
    repairs.note(f"SavedModel signature '{endpoint}' wrapped in a Keras 3 TFSMLayer")
    return model, "savedmodel"

