"""Whatever tf_keras (the Keras 2 API) loads, feredge exports (docs/legacy-models.md)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError
from feredge.export.load.legacy import Repairs, layer_nodes


def via_tf_keras(src: Path, cfg: Any, why: ExportError, repairs: Repairs) -> Any:
    """Whatever tf_keras (the Keras 2 API) loads, feredge exports: a full-model file Keras 3 cannot
    build even after the repairs (a layer Keras 3 dropped, such as LocallyConnected2D) is loaded
    by tf_keras, and that model is the desktop reference and the converters' input. Lambda layers
    were refused (or allowed by --trust-model) before this point."""
    try:
        import tf_keras
    except ImportError:
        raise ExportError(f"{why}; installing tf-keras (pip install 'feredge[export]') lets feredge load it "
                          "as Keras 2 did") from None
    try:
        model = tf_keras.models.load_model(str(src), compile=False)
    except Exception as e:
        unknown = _unknown_layers(cfg, tf_keras)
        if unknown:
            name, cls = unknown[0]
            raise ExportError(f"layer '{name}' ({cls}) is known to neither Keras 3 nor tf_keras, so no converter "
                              "handles it: replace it, or rebuild the model with a builder "
                              "(--architecture builder.py:function) and load these weights") from None
        raise ExportError(f"{why}; tf_keras cannot load it either: {one_line(e)}") from None
    missing = ", ".join(f"{n} ({c})" for n, c in _unknown_layers(cfg, importlib.import_module("keras")))
    how = "loaded by tf_keras, the Keras 2 API, as the desktop reference and converted from it directly"
    if missing:
        repairs.note(f"layers Keras 3 dropped: {how}", missing)
    else:
        repairs.note(f"Keras 3 cannot build this architecture ({one_line(why, 120)}): {how}")
    return model


_CONTAINERS = ("Sequential", "Functional", "Model", "InputLayer")


def _unknown_layers(cfg: Any, kmod: Any) -> list[tuple[str, str]]:
    """(name, class) of the layers in a config that ``kmod`` (keras or tf_keras) has no class for."""
    return [(str(node["config"]["name"]), node["class_name"]) for node in layer_nodes(cfg)
            if isinstance(node["class_name"], str) and isinstance(node.get("config"), dict)
            and "name" in node["config"] and node["class_name"] not in _CONTAINERS
            and getattr(kmod.layers, node["class_name"], None) is None]
