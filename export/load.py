"""Load every kind of Keras model a user may bring into one Keras 3 model, ready for predict.

Accepted: a Keras 3 ``.keras`` file, a SavedModel directory (wrapped in ``TFSMLayer``), a
legacy full-model ``.h5`` from Keras 2.x / tf.keras, a weights-only ``.h5`` plus an
architecture (Keras 2 JSON or ``builder.py:function``), and Keras 1.x weights plus a builder.
Legacy files are repaired in memory (:mod:`export.legacy`); the user's file is only read.
Everything that goes wrong because of the input raises :class:`ExportError` with one line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import marshal
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.errors import ContractError, one_line
from edge.fsutil import sha256_file
from export import model_steps
from export.errors import ExportError
from export.legacy import (
    Keras3CannotBuild,
    Repairs,
    WeightLayout,
    assign_weights,
    build_from_config,
    find_lambdas,
    is_channels_first,
    is_keras1_weights,
    read_h5_weights,
    translate_model_config,
)

if TYPE_CHECKING:
    import keras

    from edge.contract import Contract

log = logging.getLogger(__name__)

_LABEL_KEYS = ("labels", "class_names", "classes")


@dataclass
class LoadedModel:
    model: keras.Model  # Keras 3, ready for predict, never compiled
    source: Path
    source_sha256: str  # of the file; for a directory: of its files in sorted order
    source_format: str  # human-readable, goes into the report and the contract's provenance
    labels: list[str] | None = None  # labels the model file itself carries
    contract_hint: Contract | None = None  # a previous export's <stem>.json beside the model
    repairs: list[str] = field(default_factory=list)  # one line per in-memory repair
    # "raw" when the model rescales its own input first (a Rescaling layer, or tf.keras's
    # x/127.5-1 preprocess ops): it then wants 0-255 pixels. A hint for --normalize, not a rule.
    normalize_hint: str | None = None


def load_model(path: str | os.PathLike[str], *, architecture: str | None = None, keras1_theano: bool = False,
               trust_model: bool = False) -> LoadedModel:
    """Load ``path`` (see module doc) as a Keras 3 model whose input is an image tensor."""
    src = Path(path)
    if not src.exists():
        raise ExportError(f"model not found: {src}")
    repairs = Repairs()
    labels: list[str] | None = None
    if src.is_dir():
        if not (src / "saved_model.pb").is_file():
            raise ExportError(f"{src} is a directory but not a SavedModel (no saved_model.pb)")
        model, fmt = _load_savedmodel(src, repairs, trust_model)
        labels = _labels_from_text(src / "assets" / "labels.txt")
        digest = _sha256_dir(src)
    else:
        try:
            digest = sha256_file(src)
        except OSError as e:
            raise ExportError(f"cannot read model {src}: {e.strerror or e}") from None
        if zipfile.is_zipfile(src):
            model, fmt, labels = _load_keras_zip(src, architecture, trust_model)
        elif src.suffix.lower() == ".keras":
            raise ExportError(f"{src} is not a valid .keras file (not a zip archive: damaged or truncated?)")
        else:
            model, fmt, labels = _load_h5(src, architecture, keras1_theano, trust_model, repairs)
    try:
        input_geometry(model)  # refuse non-image models here, with the file's name at hand
    except ExportError as e:
        raise ExportError(f"{src.name}: {e}") from None
    model = model_steps.apply_all(model, repairs)
    return LoadedModel(model=model, source=src, source_sha256=digest, source_format=fmt, labels=labels,
                       contract_hint=_contract_beside(src), repairs=repairs.lines(),
                       normalize_hint="raw" if _rescales_own_input(model) else None)


def _rescales_own_input(model: Any) -> bool:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            return _rescales_own_input(layer)
        return isinstance(layer, keras.layers.Rescaling)
    return False


# ---- geometry and output -------------------------------------------------------------------

def input_geometry(model: Any) -> tuple[int, int, int]:
    """(H, W, C) of the model's single image input: NHWC with 1 or 3 channels, or (N, H, W)
    grey (an MLP that flattens a 28x28 image counts as one channel)."""
    inputs = list(getattr(model, "inputs", None) or [])
    if len(inputs) != 1:
        raise ExportError(f"model has {len(inputs)} inputs; feredge exports single-input image classifiers")
    shape = tuple(inputs[0].shape)
    dims = shape[1:]
    if len(dims) == 3 and dims[2] in (1, 3) and all(isinstance(d, int) and d > 0 for d in dims[:2]):
        return int(dims[0]), int(dims[1]), int(dims[2])
    if len(dims) == 2 and all(isinstance(d, int) and d > 1 for d in dims):
        return int(dims[0]), int(dims[1]), 1
    hint = ""
    if len(dims) == 3 and dims[0] in (1, 3) and dims[2] not in (1, 3):
        hint = ("; it looks channels-first (N, C, H, W): rebuild the model channels-last with a builder "
                "(--architecture builder.py:function) and load these weights")
    raise ExportError(f"model input {_fmt_shape(shape)} is not an image tensor "
                      f"(expected (N, H, W, 1|3) or (N, H, W) grey with fixed H and W){hint}")


def output_kind(model: Any) -> tuple[str, int]:
    """("softmax"|"logits"|"sigmoid", n_outputs) from the layers that produce the output.

    Looks through shape-only layers (Dropout, Reshape, Flatten) back to the first layer that
    has an activation, so ``Dense(7) -> Activation('softmax')`` and ``Dense(7, 'softmax')``
    read the same. A wrapped SavedModel is judged by the last ops of its graph.
    """
    outputs = list(getattr(model, "outputs", None) or [])
    if len(outputs) != 1:
        raise ExportError(f"model has {len(outputs)} outputs; feredge exports single-output classifiers")
    shape = tuple(outputs[0].shape)
    n = shape[-1] if len(shape) >= 2 else None
    if not isinstance(n, int) or len(shape) != 2:
        raise ExportError(f"model output {_fmt_shape(shape)} is not a class vector (expected (N, classes))")
    return _activation_of(model), int(n)


_PASS_THROUGH = {"Dropout", "Reshape", "Flatten", "InputLayer", "Identity", "ActivityRegularization",
                 "GaussianNoise", "GaussianDropout", "AlphaDropout", "SpatialDropout2D"}


def _activation_of(model: Any, top: Any = None) -> str:
    import keras

    top = model if top is None else top
    for layer in reversed(list(model.layers)):
        cls = type(layer).__name__
        if isinstance(layer, keras.Model):
            return _activation_of(layer, top)
        if cls in _PASS_THROUGH:
            continue
        if cls == "Softmax":
            return "softmax"
        act = getattr(layer, "activation", None)
        if act is None:
            # TFSMLayer, Lambda, pooling after a softmax conv...: the layers don't say; the numbers do.
            return _probe_activation(top)
        name = getattr(act, "__name__", str(act)).lower()
        if "softmax" in name:
            return "softmax"
        if "sigmoid" in name:
            return "sigmoid"
        return "logits"
    return "logits"


def _probe_activation(model: Any) -> str:
    """When the last layer does not name its activation (a SavedModel's graph, a Lambda), probe:
    rows that are probabilities summing to 1 on random inputs come from a softmax, values all
    inside (0, 1) from a sigmoid; anything else is logits."""
    import numpy as np

    shape = tuple(model.inputs[0].shape[1:])
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0, 1, (4, *shape)), rng.uniform(-1, 1, (4, *shape)),
                        rng.uniform(0, 255, (4, *shape))]).astype("float32")
    try:
        y = np.asarray(model(x, training=False), dtype="float64")
    except Exception:  # cannot run it: say nothing more than "logits"
        return "logits"
    if y.ndim != 2 or not np.all(np.isfinite(y)):
        return "logits"
    in_unit = bool(np.all(y >= 0) and np.all(y <= 1))
    if in_unit and y.shape[1] > 1 and np.allclose(y.sum(axis=1), 1.0, atol=1e-4):
        return "softmax"
    if in_unit and y.min() > 0 and y.max() < 1:
        return "sigmoid"
    return "logits"


def _fmt_shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


# ---- .keras ----------------------------------------------------------------------------------

def _load_keras_zip(src: Path, architecture: str | None, trust_model: bool) -> tuple[Any, str, list[str] | None]:
    import keras

    try:
        with zipfile.ZipFile(src) as zf:
            names = zf.namelist()
            if "config.json" not in names:
                raise ExportError(f"{src} is a zip file but not a Keras 3 .keras model (no config.json)")
            config = json.loads(zf.read("config.json"))
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as e:
        raise ExportError(f"{src} is a damaged .keras file: {e}") from None
    _refuse_lambdas(config, src, trust_model)
    try:
        model = keras.saving.load_model(src, compile=False, safe_mode=not trust_model)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"Keras 3 cannot load {src.name}: {one_line(e)}") from None
    labels = _labels_from_value(next((meta[k] for k in _LABEL_KEYS if k in meta), None))
    version = meta.get("keras_version", "3")
    return model, f"keras {version} .keras", labels


# ---- SavedModel --------------------------------------------------------------------------------

def _load_savedmodel(src: Path, repairs: Repairs, trust_model: bool) -> tuple[Any, str]:
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
    _refuse_lambdas(cfg, src, trust_model)
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
    _refuse_lambdas(configs, src, trust_model)


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
        raise ExportError(f"SavedModel {src} input {_fmt_shape(tuple(spec.shape))} is not a fixed-size image tensor")
    layer = keras.layers.TFSMLayer(str(src), call_endpoint=endpoint)
    inp = keras.Input(shape=tuple(dims), dtype=spec.dtype.name, name=spec.name or "input")
    out = layer(inp)
    if isinstance(out, dict):
        out = out[out_key]
    model = keras.Model(inp, out, name=src.name.replace(".", "_") or "savedmodel")
    repairs.note(f"SavedModel signature '{endpoint}' wrapped in a Keras 3 TFSMLayer")
    return model, "savedmodel"


# ---- HDF5 ------------------------------------------------------------------------------------

def _load_h5(src: Path, architecture: str | None, keras1_theano: bool, trust_model: bool,
             repairs: Repairs) -> tuple[Any, str, list[str] | None]:
    import h5py

    with open(src, "rb") as f:
        head = f.read(8)
    if head != b"\x89HDF\r\n\x1a\n":
        raise ExportError(f"{src} is not an HDF5 or .keras file (not a Keras model)")
    try:
        h5 = h5py.File(src, "r")
    except OSError as e:
        raise ExportError(f"{src} is a corrupt or truncated HDF5 file ({_h5_reason(e)})") from None
    try:
        with h5:
            return _load_h5_open(h5, src, architecture, keras1_theano, trust_model, repairs)
    except (OSError, KeyError, RuntimeError) as e:
        raise ExportError(f"{src} is a corrupt or truncated HDF5 file ({_h5_reason(e)})") from None


def _h5_reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:160] + "…") if len(text) > 160 else text


def _attr_str(attrs: Any, key: str) -> str | None:
    val = attrs.get(key)
    if isinstance(val, bytes):
        return val.decode("utf-8", "replace")
    return None if val is None else str(val)


def _load_h5_open(h5: Any, src: Path, architecture: str | None, keras1_theano: bool, trust_model: bool,
                  repairs: Repairs) -> tuple[Any, str, list[str] | None]:
    attrs = h5.attrs
    labels = _labels_from_value(next((attrs[k] for k in _LABEL_KEYS if k in attrs), None))
    version = _attr_str(attrs, "keras_version")
    if "model_config" in attrs:
        if "training_config" in attrs:
            repairs.note("training config (optimizer, loss) ignored: loaded for inference, never compiled")
        cfg = _json_attr(attrs["model_config"], src)
        weights_group = h5["model_weights"] if "model_weights" in h5 else h5
        weights = read_h5_weights(weights_group)
        keras1 = _keras1_options(attrs, weights, keras1_theano)
        kind = "full model"
        channels_first = False
        if architecture:
            model, arch_fmt, channels_first = _model_from_architecture(architecture, trust_model, repairs)
            kind = f"full model, architecture from {arch_fmt}"
        elif keras1 is not None:
            raise ExportError(f"{src.name} is a Keras {version or '1.x'} full model; Keras 1 layer configs are not "
                              "translated: rebuild it in Keras 3 and pass --architecture path/to/builder.py:function "
                              "(its weights are read from this file)")
        else:
            _refuse_lambdas(cfg, src, trust_model)
            channels_first = is_channels_first(cfg)
            attempt = Repairs()  # kept only if Keras 3 builds the model: else they were not made
            try:
                model = build_from_config(translate_model_config(cfg, attempt), trust_model=trust_model)
            except Keras3CannotBuild as e:
                model = _full_model_via_tf_keras(src, cfg, e, repairs)
                return model, f"keras {version or '2.x'} h5 (full model, loaded by tf_keras)", labels
            repairs.extend(attempt)
        if keras1 is not None:
            assign_weights(model, weights, repairs, keras1)
            return model, f"keras 1.x full model ({_keras1_how(keras1, attrs)}), architecture from {arch_fmt}", labels
        layout = _keras2_layout(h5, weights_group, channels_first)
        assign_weights(model, weights, repairs, layout)
        name = "tf.keras" if version and "tf" in version else "keras"
        return model, f"{name} {version or '2.x'} h5 ({kind}{_layout_note(layout)})", labels
    if "layer_names" in attrs:
        if not architecture:
            raise ExportError(f"{src} holds weights only; pass --architecture (a Keras architecture JSON or "
                              "path/to/builder.py:function)")
        weights = read_h5_weights(h5)
        model, arch_fmt, channels_first = _model_from_architecture(architecture, trust_model, repairs)
        keras1 = _keras1_options(attrs, weights, keras1_theano)
        if keras1 is not None:
            assign_weights(model, weights, repairs, keras1)
            return model, f"keras 1.x weights ({_keras1_how(keras1, attrs)}) + {arch_fmt}", labels
        layout = _keras2_layout(h5, h5, channels_first)
        assign_weights(model, weights, repairs, layout)
        return model, f"keras {version or '2.x'} h5 weights + {arch_fmt}{_layout_note(layout)}", labels
    if "vars" in h5 or "layers" in h5 or "_layer_checkpoint_dependencies" in h5:
        # Keras 3 ``.weights.h5``: Keras 3 reads its own format.
        if not architecture:
            raise ExportError(f"{src} holds Keras 3 weights only; pass --architecture "
                              "(path/to/builder.py:function or a Keras architecture JSON)")
        model, arch_fmt, _ = _model_from_architecture(architecture, trust_model, repairs)
        try:
            model.load_weights(src)
        except Exception as e:
            raise ExportError(f"architecture and weights do not match: {one_line(e)}") from None
        return model, f"keras 3 weights + {arch_fmt}", labels
    raise ExportError(f"{src} is an HDF5 file but not a Keras model or weights file "
                      "(no model_config or layer_names attribute)")


def _full_model_via_tf_keras(src: Path, cfg: Any, why: ExportError, repairs: Repairs) -> Any:
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


def _unknown_layers(cfg: Any, kmod: Any) -> list[tuple[str, str]]:
    """(name, class) of the layers in a config that ``kmod`` (keras or tf_keras) has no class for."""
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            conf = node.get("config")
            if isinstance(cls, str) and isinstance(conf, dict) and "name" in conf and cls not in (
                    "Sequential", "Functional", "Model", "InputLayer") and getattr(kmod.layers, cls, None) is None:
                found.append((str(conf["name"]), cls))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)
    return found


def _keras1_options(attrs: Any, weights: Any, keras1_theano: bool) -> WeightLayout | None:
    """Keras 1 layout, from --keras1-theano or what the file says (version, backend, ordering)."""
    if not (keras1_theano or is_keras1_weights(weights, attrs)):
        return None
    backend = (_attr_str(attrs, "backend") or "").lower()
    ordering = (_attr_str(attrs, "image_dim_ordering") or _attr_str(attrs, "image_data_format") or "").lower()
    theano = keras1_theano or backend == "theano"
    return WeightLayout(enabled=True, flip_kernels=theano,
                         channels_first=theano or ordering in ("th", "channels_first"))


def _keras2_layout(h5: Any, weights_group: Any, channels_first: bool) -> WeightLayout:
    """Keras 2 files from the Theano backend hold kernels Theano convolved with (flip them);
    a channels-first architecture was turned channels-last (permute Dense after Flatten)."""
    backend = (_attr_str(h5.attrs, "backend") or _attr_str(weights_group.attrs, "backend") or "").lower()
    return WeightLayout(enabled=False, channels_first=channels_first, flip_keras2_conv=backend == "theano")


def _layout_note(layout: WeightLayout) -> str:
    parts = (["theano"] if layout.flip_keras2_conv else []) + (["channels-first -> channels-last"]
                                                                if layout.channels_first else [])
    return f", {', '.join(parts)}" if parts else ""


def _keras1_how(opts: WeightLayout, attrs: Any) -> str:
    if opts.flip_kernels:
        return "theano"
    ordering = (_attr_str(attrs, "image_dim_ordering") or "").lower()
    return f"tensorflow, {ordering}" if ordering else "tensorflow"


def _json_attr(val: Any, src: Path) -> Any:
    if isinstance(val, bytes):
        val = val.decode("utf-8")
    try:
        return json.loads(val)
    except (TypeError, json.JSONDecodeError) as e:
        raise ExportError(f"{src}: model_config attribute is not valid JSON ({e})") from None


def _refuse_lambdas(cfg: Any, src: Path | str, trust_model: bool) -> None:
    lambdas = find_lambdas(cfg)
    if not lambdas:
        return
    if not trust_model:
        raise ExportError(f"{Path(str(src)).name} contains Lambda layer '{lambdas[0]}'; deserialising it runs code "
                          "from the file; pass --trust-model if you trust it")
    _check_lambda_bytecode(cfg, lambdas)


def _check_lambda_bytecode(cfg: Any, lambdas: list[str]) -> None:
    """Marshalled bytecode only loads under the Python that wrote it; say so plainly."""
    import base64

    def codes(node: Any):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                fn = (node.get("config") or {}).get("function")
                if isinstance(fn, list) and fn:
                    yield fn[0]
                elif isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
                    yield fn.get("config", {}).get("code")
            for v in node.values():
                yield from codes(v)
        elif isinstance(node, list):
            for v in node:
                yield from codes(v)

    for code in codes(cfg):
        if not isinstance(code, str):
            continue
        try:
            raw = base64.b64decode(code.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raw = code.encode("raw_unicode_escape")
        try:
            marshal.loads(raw)
        except (ValueError, EOFError, TypeError):
            py = f"{sys.version_info.major}.{sys.version_info.minor}"
            raise ExportError(f"Lambda layer '{lambdas[0]}' holds Python bytecode that Python {py} cannot load "
                              "(written by another Python version); rebuild the model with a builder "
                              "(--architecture builder.py:function) and its weights") from None


# ---- architecture (JSON or builder) ------------------------------------------------------------------

def _model_from_architecture(architecture: str, trust_model: bool, repairs: Repairs) -> tuple[Any, str, bool]:
    """(model, description, whether the architecture was channels-first and turned channels-last)."""
    import keras

    arch = architecture.strip()
    if arch.startswith("{"):
        cfg = _parse_arch_json(arch, "--architecture")
        return (_model_from_json_cfg(cfg, "--architecture", trust_model, repairs), "json architecture",
                is_channels_first(cfg))
    path_part, _, func = arch.rpartition(":")
    if path_part.endswith(".py") and func:
        return _model_from_builder(Path(path_part), func, keras), f"builder {Path(path_part).name}:{func}", False
    p = Path(arch)
    if arch.endswith(".py"):
        raise ExportError(f"--architecture {arch}: say which function builds the model (path/to/builder.py:function)")
    if not p.is_file():
        raise ExportError(f"architecture file not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExportError(f"cannot read architecture {p}: {e}") from None
    cfg = _parse_arch_json(text, str(p))
    return _model_from_json_cfg(cfg, p.name, trust_model, repairs), "json architecture", is_channels_first(cfg)


def _parse_arch_json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ExportError(f"architecture {where} is not valid JSON ({e})") from None


def _model_from_json_cfg(cfg: Any, where: str, trust_model: bool, repairs: Repairs) -> Any:
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ExportError(f"architecture {where} is not a Keras model JSON (as written by model.to_json())")
    _refuse_lambdas(cfg, where, trust_model)
    return build_from_config(translate_model_config(cfg, repairs), trust_model=trust_model)


def _model_from_builder(path: Path, func: str, keras: Any) -> Any:
    if not path.is_file():
        raise ExportError(f"architecture builder not found: {path}")
    mod_name = f"feredge_builder_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ExportError(f"cannot import architecture builder {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's code; report it in one line
        raise ExportError(f"importing builder {path} failed: {one_line(e)}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise ExportError(f"builder {path} has no function '{func}'")
    try:
        model = fn()
    except Exception as e:
        raise ExportError(f"builder {path.name}:{func}() failed: {one_line(e)}") from None
    if not isinstance(model, keras.Model):
        hint = " (a tf_keras/Keras 2 model? build it with `import keras`, Keras 3)" if "tf_keras" in type(
            model).__module__ else ""
        raise ExportError(f"builder {path.name}:{func}() returned {type(model).__name__}, not a Keras 3 model{hint}")
    return model


# ---- metadata -------------------------------------------------------------------------------

def _labels_from_value(val: Any) -> list[str] | None:
    if val is None:
        return None
    if isinstance(val, bytes):
        val = val.decode("utf-8", "replace")
    if isinstance(val, str):
        text = val.strip()
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            val = [s.strip() for s in text.replace("\n", ",").split(",")]
    try:
        items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(val)]
    except TypeError:
        return None
    items = [s for s in (i.strip() for i in items) if s]
    return items or None


def _labels_from_text(p: Path) -> list[str] | None:
    try:
        return _labels_from_value(p.read_text(encoding="utf-8").replace("\n", ","))
    except (OSError, UnicodeDecodeError):
        return None


def _contract_beside(src: Path) -> Contract | None:
    """A previous export's contract ``<stem>.json`` next to the model. An architecture JSON
    often sits there too (``model.json`` + ``model.h5``), so only a feredge contract counts."""
    from edge.contract import SCHEMA, Contract

    cand = src.parent / (src.name + ".json") if src.is_dir() else src.with_suffix(".json")
    if not cand.is_file():
        return None
    try:
        data = json.loads(cand.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        return None
    try:
        return Contract.from_dict(data)
    except ContractError as e:
        log.warning("ignoring malformed contract %s: %s", cand, e)
        return None


def sha256_source(path: str | os.PathLike[str]) -> str:
    """sha256 of a model file; of a directory (SavedModel): over its files' relative paths and
    hashes in sorted order, so any changed, added or removed file changes it."""
    p = Path(path)
    return _sha256_dir(p) if p.is_dir() else sha256_file(p)


def _sha256_dir(d: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(f.relative_to(d).as_posix().encode("utf-8") + b"\0" + sha256_file(f).encode("ascii") + b"\n")
    return h.hexdigest()


