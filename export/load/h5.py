"""An HDF5 file: a full model (Keras 2.x / tf.keras), Keras 1 or 2 weights with an architecture,
or Keras 3 ``.weights.h5`` with an architecture. The file's attributes say which."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError
from feredge.export.load.architecture import model_from_architecture
from feredge.export.load.common import LABEL_KEYS, attr_str, json_attr, labels_from_value, refuse_lambdas
from feredge.export.load.layouts import keras1_how, keras1_options, keras2_layout, layout_note
from feredge.export.load.legacy import (
    Keras3CannotBuild,
    Repairs,
    assign_weights,
    build_from_config,
    is_channels_first,
    layer_nodes,
    read_h5_weights,
    translate_model_config,
)
from feredge.export.load.tf_keras_fallback import via_tf_keras


def load(src: Path, architecture: str | None, keras1_theano: bool, trust_model: bool,
             repairs: Repairs) -> tuple[Any, str, list[str] | None]:
    import h5py

    with open(src, "rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise ExportError(f"{src} is not an HDF5 or .keras file (not a Keras model)")
    try:
        h5 = h5py.File(src, "r")
    except OSError as e:
        raise ExportError(f"{src} is a corrupt or truncated HDF5 file ({h5_reason(e)})") from None
    try:
        with h5:
            return _load_h5_open(h5, src, architecture, keras1_theano, trust_model, repairs)
    except (OSError, KeyError, RuntimeError) as e:
        raise ExportError(f"{src} is a corrupt or truncated HDF5 file ({h5_reason(e)})") from None


def h5_reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:160] + "…") if len(text) > 160 else text


@dataclass
class _Ask:
    """What the user passed with the file."""

    src: Path
    architecture: str | None
    keras1_theano: bool
    trust_model: bool
    repairs: Repairs


def _load_h5_open(h5: Any, src: Path, architecture: str | None, keras1_theano: bool, trust_model: bool,
                  repairs: Repairs) -> tuple[Any, str, list[str] | None]:
    labels = labels_from_value(next((h5.attrs[k] for k in LABEL_KEYS if k in h5.attrs), None))
    ask = _Ask(src, architecture, keras1_theano, trust_model, repairs)
    for holds, load_kind in _KINDS:
        if holds(h5):
            model, fmt = load_kind(h5, ask)
            return model, fmt, labels
    raise ExportError(f"{src} is an HDF5 file but not a Keras model or weights file "
                      "(no model_config or layer_names attribute)")


MAX_LAYERS = 5000


def _full_model(h5: Any, ask: _Ask) -> tuple[Any, str]:
    """``model.save("x.h5")`` of Keras 2.x / tf.keras: the config, translated, and its weights."""
    attrs, src, repairs = h5.attrs, ask.src, ask.repairs
    version = attr_str(attrs, "keras_version")
    if "training_config" in attrs:
        repairs.note("training config (optimizer, loss) ignored: loaded for inference, never compiled")
    cfg = json_attr(attrs["model_config"], src)
    n_layers = sum(1 for n in layer_nodes(cfg) if isinstance(n.get("config"), dict) and "trainable" in n["config"])
    if n_layers > MAX_LAYERS:  # fail in a second, not after 30 s of Keras recursing
        raise ExportError(f"{src.name} declares {n_layers:,} layers, more than the {MAX_LAYERS:,} feredge builds "
                          "(a face classifier has tens to hundreds)")
    weights_group = h5["model_weights"] if "model_weights" in h5 else h5
    weights = read_h5_weights(weights_group)
    keras1 = keras1_options(attrs, weights, ask.keras1_theano)
    if ask.architecture:
        model, arch_fmt, channels_first = model_from_architecture(ask.architecture, ask.trust_model, repairs)
        if keras1 is not None:
            assign_weights(model, weights, repairs, keras1)
            return model, f"keras 1.x full model ({keras1_how(keras1, attrs)}), architecture from {arch_fmt}"
        kind = f"full model, architecture from {arch_fmt}"
    elif keras1 is not None:
        raise ExportError(f"{src.name} is a Keras {version or '1.x'} full model; Keras 1 layer configs are not "
                          "translated: rebuild it in Keras 3 and pass --architecture path/to/builder.py:function "
                          "(its weights are read from this file)")
    else:
        refuse_lambdas(cfg, src, ask.trust_model)
        channels_first = is_channels_first(cfg)
        attempt = Repairs()  # kept only if Keras 3 builds the model: else they were not made
        try:
            model = build_from_config(translate_model_config(cfg, attempt), trust_model=ask.trust_model)
        except Keras3CannotBuild as e:
            return via_tf_keras(src, cfg, e, repairs), f"keras {version or '2.x'} h5 (full model, loaded by tf_keras)"
        repairs.extend(attempt)
        kind = "full model"
    layout = keras2_layout(h5, weights_group, channels_first)
    assign_weights(model, weights, repairs, layout)
    name = "tf.keras" if version and "tf" in version else "keras"
    return model, f"{name} {version or '2.x'} h5 ({kind}{layout_note(layout)})"


def _keras2_weights(h5: Any, ask: _Ask) -> tuple[Any, str]:
    """``save_weights("x.h5")`` of Keras 1 or 2, with ``--architecture``."""
    if not ask.architecture:
        raise ExportError(f"{ask.src} holds weights only; pass --architecture (a Keras architecture JSON or "
                          "path/to/builder.py:function)")
    weights = read_h5_weights(h5)
    model, arch_fmt, channels_first = model_from_architecture(ask.architecture, ask.trust_model, ask.repairs)
    keras1 = keras1_options(h5.attrs, weights, ask.keras1_theano)
    if keras1 is not None:
        assign_weights(model, weights, ask.repairs, keras1)
        return model, f"keras 1.x weights ({keras1_how(keras1, h5.attrs)}) + {arch_fmt}"
    layout = keras2_layout(h5, h5, channels_first)
    assign_weights(model, weights, ask.repairs, layout)
    version = attr_str(h5.attrs, "keras_version")
    return model, f"keras {version or '2.x'} h5 weights + {arch_fmt}{layout_note(layout)}"


def _keras3_weights(h5: Any, ask: _Ask) -> tuple[Any, str]:
    """Keras 3 ``.weights.h5``, with ``--architecture``: Keras 3 reads its own format."""
    if not ask.architecture:
        raise ExportError(f"{ask.src} holds Keras 3 weights only; pass --architecture "
                          "(path/to/builder.py:function or a Keras architecture JSON)")
    model, arch_fmt, _ = model_from_architecture(ask.architecture, ask.trust_model, ask.repairs)
    try:
        model.load_weights(ask.src)
    except Exception as e:
        raise ExportError(f"architecture and weights do not match: {one_line(e)}") from None
    return model, f"keras 3 weights + {arch_fmt}"


# What the file holds -> its loader, in this order (a full model also has layer_names inside).
_KINDS = (
    (lambda h5: "model_config" in h5.attrs, _full_model),
    (lambda h5: "layer_names" in h5.attrs, _keras2_weights),
    (lambda h5: any(k in h5 for k in ("vars", "layers", "_layer_checkpoint_dependencies")), _keras3_weights),
)
