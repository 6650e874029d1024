"""In-memory repairs that let Keras 3 run models saved by Keras 1.x / 2.x / tf.keras.

Old files are not broken, they are written in dialects Keras 3 no longer speaks: configs
with ``batch_input_shape`` instead of an InputLayer, list-style Sequential configs, ``dtype``
inside initializer configs, mixed-precision policy dicts, keyword arguments that were removed
(``groups`` of DepthwiseConv2D, ...), and weights stored as ``layer_names``/``weight_names``
attributes rather than Keras 3's ``vars`` groups. Instead of asking Keras 3's legacy loader
to guess, we translate the architecture ourselves, build it with Keras 3 and copy the arrays
layer by layer, by name, with a shape check at every step, so a mismatch names the layer.

Nothing here writes to the user's file; every repair is recorded as one line for the report.
Keras/TensorFlow are imported inside functions (``export`` rule: CLI start-up stays fast).
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError

log = logging.getLogger(__name__)

# Keyword arguments every Keras 3 layer accepts through ``Layer.__init__(**kwargs)``.
_BASE_LAYER_KWARGS = {"name", "trainable", "dtype", "activity_regularizer", "autocast", "input_dim", "input_shape"}
# Model-level classes whose config holds other layers.
_MODEL_CLASSES = {"Sequential", "Functional", "Model"}
_REDUCED_PRECISION = ("mixed_float16", "mixed_bfloat16", "float16", "bfloat16")


class Keras3CannotBuild(ExportError):
    """The translated config names something Keras 3 does not have (a dropped layer, a TF op
    layer): :mod:`feredge.export.load.model` then tries tf_keras, which may still load the file."""


@dataclass
class Repairs:
    """Collects repairs; the same repair on many layers becomes one report line."""

    _items: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)

    def note(self, what: str, where: str | None = None) -> None:
        names = self._items.setdefault(what, [])
        if where and where not in names:
            names.append(where)

    def extend(self, other: Repairs) -> None:
        for what, names in other._items.items():
            self.note(what)
            for name in names:
                self.note(what, name)

    def lines(self) -> list[str]:
        out = []
        for what, names in self._items.items():
            if not names:
                out.append(what)
                continue
            shown = ", ".join(names[:6]) + (f", … ({len(names)} in all)" if len(names) > 6 else "")
            out.append(f"{what}: {shown}")
        return out


# ---- architecture ------------------------------------------------------------------------

def layer_nodes(cfg: Any) -> Iterator[dict[str, Any]]:
    """Every ``{"class_name": ..., "config": ...}`` node of a (Keras 1/2/3) config, nested ones included."""
    if isinstance(cfg, dict):
        if "class_name" in cfg:
            yield cfg
        for v in cfg.values():
            yield from layer_nodes(v)
    elif isinstance(cfg, list):
        for v in cfg:
            yield from layer_nodes(v)


def find_lambdas(cfg: Any) -> list[str]:
    """Names of Lambda layers anywhere in a (Keras 1/2/3) model config, nested models included.

    Checked before deserialising because deserialising a Lambda unmarshals Python bytecode
    from the file, i.e. runs code the user may not have written.
    """
    return [str((node.get("config") or {}).get("name") or node.get("name") or "?")
            for node in layer_nodes(cfg) if node.get("class_name") == "Lambda"]


_CONV_CLASSES = {"Conv2D", "Convolution2D", "SeparableConv2D", "SeparableConvolution2D", "DepthwiseConv2D",
                 "Conv2DTranspose", "Deconvolution2D"}


def _data_formats(cfg: Any) -> list[tuple[str, str]]:
    """(class, data_format) of every layer that states one (Flatten's says something else)."""
    return [(str(node["class_name"]), str(node["config"]["data_format"])) for node in layer_nodes(cfg)
            if isinstance(node.get("config"), dict) and node["config"].get("data_format")
            and node["class_name"] != "Flatten"]


def is_channels_first(cfg: Any) -> bool:
    """Whether the model works on channels-first (Theano-era) feature maps: what its convolutions
    say (all of them), else what any layer says. A channels-last model in which a few layers say
    channels-first (Keras 2.0 let a pooling layer say so) is channels-last; those layers are
    rewritten by :func:`_wrap_foreign_layout`."""
    formats = _data_formats(cfg)
    conv = [f for c, f in formats if c in _CONV_CLASSES]
    if conv:
        return all(f == "channels_first" for f in conv)
    return any(f == "channels_first" for _, f in formats)


def translate_model_config(cfg: dict[str, Any], repairs: Repairs) -> dict[str, Any]:
    """Rewrite a Keras 1/2-era model config (``model_config`` attr or ``to_json()``) into one
    Keras 3's ``deserialize_keras_object`` accepts. Returns a new dict; ``cfg`` is untouched.

    A channels-first model (Keras 2 on Theano) is turned channels-last, because TensorFlow's CPU
    kernels, TFLite and the Edge TPU all want NHWC; the caller must then permute the first
    Dense after each Flatten (:func:`assign_weights` with ``channels_first=True``)."""
    if not isinstance(cfg, dict) or "class_name" not in cfg or "config" not in cfg:
        raise ExportError("architecture is not a Keras model config (expected {'class_name': ..., 'config': ...})")
    return _translate_model(copy.deepcopy(cfg), repairs, is_channels_first(cfg))


def _translate_model(node: dict[str, Any], repairs: Repairs, cf: bool) -> dict[str, Any]:
    cls = node.get("class_name")
    conf = node.get("config")
    if cls == "Model":
        node["class_name"] = "Functional"
        repairs.note("Keras 2.0 class 'Model' read as Keras 3 'Functional'")
    if cls == "Sequential":
        if isinstance(conf, list):
            conf = {"name": "sequential", "layers": conf}
            repairs.note("list-style Sequential config (Keras 2.0/2.1) converted to a dict")
        layers = [_translate_layer(layer, repairs, in_sequential=True, cf=cf) for layer in conf.get("layers", [])]
        if not cf:
            layers = _wrap_foreign_layout(layers, repairs)
        if layers and layers[0].get("class_name") != "InputLayer":
            first_conf = layers[0].get("config", {})
            shape = first_conf.pop("_feredge_batch_shape", None)
            if shape is not None:
                inp = {"class_name": "InputLayer",
                       "config": {"batch_shape": shape, "dtype": "float32",
                                  "name": f"{first_conf.get('name', 'input')}_input"}}
                layers.insert(0, inp)
                repairs.note("Sequential without InputLayer (Keras 2.2 style): added an explicit InputLayer",
                             conf.get("name"))
        for layer in layers:
            layer.get("config", {}).pop("_feredge_batch_shape", None)
        conf["layers"] = layers
        _clean_model_conf(conf)
        node["config"] = conf
    elif node["class_name"] == "Functional":
        conf["layers"] = [_translate_tf_op(layer, repairs) for layer in conf.get("layers", [])]
        _shift_nested_node_indices(conf, repairs)
        conf["layers"] = [_translate_layer(layer, repairs, in_sequential=False, cf=cf)
                          for layer in conf.get("layers", [])]
        foreign = [layer for layer in conf["layers"] if not cf and _foreign_layout(layer)]
        if foreign:
            lname = foreign[0].get("config", {}).get("name", "?")
            cls = foreign[0].get("class_name")
            raise ExportError(f"layer '{lname}' ({cls}) says channels_first in a channels-last functional model; "
                              "only Sequential models are rewritten for that: rebuild it with a "
                              "builder (--architecture builder.py:function) and load these weights")
        for layer in conf["layers"]:
            layer.get("config", {}).pop("_feredge_batch_shape", None)
        for key in ("input_layers", "output_layers"):
            refs = conf.get(key)
            # Keras 2 always wrote a list of refs; Keras 3 reads a one-element list as a list-structured
            # model (and warns at every call), a bare ref as a plain tensor.
            if isinstance(refs, list) and len(refs) == 1 and isinstance(refs[0], list):
                conf[key] = refs[0]
        _clean_model_conf(conf)
    else:
        raise ExportError(f"top-level class {cls!r} is not a Keras Sequential or Functional model")
    for key in ("registered_name", "build_config", "compile_config"):
        node.pop(key, None)
    return node


def _foreign_layout(layer: dict[str, Any]) -> bool:
    conf = layer.get("config")
    return (isinstance(conf, dict) and conf.get("data_format") == "channels_first"
            and layer.get("class_name") not in ("Flatten", *_MODEL_CLASSES))


def _wrap_foreign_layout(layers: list[dict[str, Any]], repairs: Repairs) -> list[dict[str, Any]]:
    """Keras 2.0 computed a ``channels_first`` layer inside a channels-last model literally: on an
    (N, A, B, C) tensor it took A for the channels and worked over B and C (its TensorFlow backend
    transposed to NHWC around the op, as TensorFlow's CPU kernels have no NCHW pooling). The weights
    were trained that way and the next Dense layer's size depends on it, so the same arithmetic is
    rebuilt: Permute to (N, B, C, A), the layer channels-last, Permute back to (N, A, B', C')."""
    out: list[dict[str, Any]] = []
    for layer in layers:
        if not _foreign_layout(layer):
            out.append(layer)
            continue
        conf = layer["config"]
        lname = str(conf.get("name"))
        conf["data_format"] = "channels_last"
        pre: dict[str, Any] = {"name": f"{lname}_to_nhwc", "dims": [2, 3, 1]}
        shape = conf.pop("_feredge_batch_shape", None)
        if shape is not None:
            pre["_feredge_batch_shape"] = shape
        out.append({"class_name": "Permute", "config": pre})
        out.append(layer)
        if not layer.get("class_name", "").startswith("Global"):  # a global pooling leaves (N, A)
            out.append({"class_name": "Permute", "config": {"name": f"{lname}_from_nhwc", "dims": [3, 1, 2]}})
        repairs.note("channels_first layer in a channels-last model (Keras 2.0): rebuilt as transpose, "
                     "channels-last layer, transpose (Keras 2's own arithmetic)", lname)
    return out


# tf.keras wraps TensorFlow ops used on symbolic tensors (``x / 127.5 - 1`` in MobileNet's
# preprocess_input) in TFOpLambda layers, which Keras 3 does not have. The elementwise ones with
# a scalar operand are exactly a Rescaling; a few activations map to layers of their own.
_TF_SCALAR_OPS = {
    "math.truediv": lambda c: (1.0 / c, 0.0),
    "math.divide": lambda c: (1.0 / c, 0.0),
    "math.multiply": lambda c: (c, 0.0),
    "math.subtract": lambda c: (1.0, -c),
    "math.add": lambda c: (1.0, c),
    "__operators__.add": lambda c: (1.0, c),
}
_TF_ACTIVATION_OPS = {
    "nn.relu": {"class_name": "ReLU", "config": {}},
    "nn.relu6": {"class_name": "ReLU", "config": {"max_value": 6.0}},
    "math.sigmoid": {"class_name": "Activation", "config": {"activation": "sigmoid"}},
    "nn.sigmoid": {"class_name": "Activation", "config": {"activation": "sigmoid"}},
    "nn.softmax": {"class_name": "Softmax", "config": {}},
    "math.tanh": {"class_name": "Activation", "config": {"activation": "tanh"}},
}


def _translate_tf_op(layer: dict[str, Any], repairs: Repairs) -> dict[str, Any]:
    if layer.get("class_name") not in ("TFOpLambda", "SlicingOpLambda"):
        return layer
    conf = layer.get("config") or {}
    name = conf.get("name") or layer.get("name")
    fn = conf.get("function")
    nodes = layer.get("inbound_nodes") or []
    refusal = Keras3CannotBuild(
        f"layer '{name}' is a TensorFlow op wrapped by tf.keras ({layer['class_name']} {fn}) that Keras 3 cannot "
        "rebuild; rebuild the model with a builder (--architecture builder.py:function) and load its weights")
    if len(nodes) != 1 or not isinstance(nodes[0], list) or not nodes[0] or not isinstance(nodes[0][0], str):
        raise refusal
    src, idx, tidx, *rest = nodes[0]
    kwargs = {k: v for k, v in (rest[0] if rest else {}).items() if k != "name"}
    if fn in _TF_SCALAR_OPS and set(kwargs) == {"y"} and isinstance(kwargs["y"], (int, float)) and kwargs["y"] != 0:
        scale, offset = _TF_SCALAR_OPS[fn](float(kwargs["y"]))
        new = {"class_name": "Rescaling", "config": {"name": name, "scale": scale, "offset": offset}}
    elif fn in _TF_ACTIVATION_OPS and not kwargs:
        new = copy.deepcopy(_TF_ACTIVATION_OPS[fn])
        new["config"]["name"] = name
    else:
        raise refusal
    new["name"] = name
    new["inbound_nodes"] = [[[src, idx, tidx, {}]]]
    repairs.note(f"tf.keras op layer tf.{fn} rebuilt as Keras 3 {new['class_name']}", name)
    return new


def _builds_own_node(layer: dict[str, Any]) -> bool:
    """Keras 2 gave a nested model built on its own inputs a node of its own (node 0), so
    its first call in the outer model is node 1; Keras 3 creates no such node."""
    cls = layer.get("class_name")
    if cls in ("Functional", "Model"):
        return True
    if cls != "Sequential":
        return False
    conf = layer.get("config")
    layers = conf if isinstance(conf, list) else (conf or {}).get("layers", [])
    if not layers:
        return False
    first = layers[0]
    fconf = first.get("config") or {}
    return first.get("class_name") == "InputLayer" or any(
        k in fconf for k in ("batch_input_shape", "input_shape", "input_dim"))


def _shift_nested_node_indices(conf: dict[str, Any], repairs: Repairs) -> None:
    shifted = {(lay.get("config") or {}).get("name") or lay.get("name")
               for lay in conf.get("layers", []) if _builds_own_node(lay)}
    shifted.discard(None)
    if not shifted:
        return

    def fix(ref: Any) -> None:
        if isinstance(ref, list) and len(ref) >= 3 and ref[0] in shifted and isinstance(ref[1], int) and ref[1] > 0:
            ref[1] -= 1
            repairs.note("Keras 2 node indices of nested models renumbered for Keras 3", ref[0])

    for lay in conf.get("layers", []):
        for node in lay.get("inbound_nodes") or []:
            if isinstance(node, list):
                for ref in node:
                    fix(ref)
    for key in ("input_layers", "output_layers"):
        refs = conf.get(key)
        if isinstance(refs, list) and refs and isinstance(refs[0], list):
            for ref in refs:
                fix(ref)
        elif isinstance(refs, list):
            fix(refs)


def _clean_model_conf(conf: dict[str, Any]) -> None:
    for key in list(conf):
        if key not in ("name", "layers", "input_layers", "output_layers", "trainable"):
            conf.pop(key)


# Layers whose meaning depends on the axis order in ways a config edit cannot fix.
_AXIS_BOUND = {"Reshape", "Permute", "Lambda", "RepeatVector", "Cropping1D", "Conv1D", "LocallyConnected2D"}


@dataclass
class _Layer:
    """One layer's config being translated, and what the steps need to know about it."""

    cls: str | None
    conf: dict[str, Any]
    name: str
    repairs: Repairs
    in_sequential: bool
    cf: bool  # the model is channels-first and is being turned channels-last


def _translate_layer(node: dict[str, Any], repairs: Repairs, *, in_sequential: bool, cf: bool) -> dict[str, Any]:
    cls = node.get("class_name")
    if cls in _MODEL_CLASSES:
        kept = {k: node[k] for k in ("name", "inbound_nodes") if k in node}
        node = _translate_model(node, repairs, cf)
        node.update(kept)
        repairs.note("nested model translated", node["config"].get("name"))
        return node
    for key in ("module", "registered_name", "build_config"):
        node.pop(key, None)
    conf = node.get("config")
    if not isinstance(conf, dict):
        return node
    layer = _Layer(cls, conf, str(conf.get("name") or node.get("name") or cls), repairs, in_sequential, cf)
    for step in LAYER_STEPS:
        step(layer)
    return node


def _input_shape(layer: _Layer) -> None:
    """Keras 3 wants an InputLayer with ``batch_shape``; Keras 2 put ``batch_input_shape``,
    ``input_shape`` or ``input_dim`` on any layer (the first of a Sequential carries it over)."""
    conf = layer.conf
    shape = conf.pop("batch_input_shape", None)
    if layer.cf:
        shape = _to_channels_last(layer.cls, conf, shape, layer.name, layer.repairs)
    if layer.cls == "InputLayer":
        if shape is not None:
            conf["batch_shape"] = shape
            layer.repairs.note("InputLayer batch_input_shape renamed batch_shape")
        return
    if shape is None and "input_shape" in conf:
        shape = [None, *conf["input_shape"]]
    if shape is None and conf.get("input_dim") is not None:
        shape = [None, conf["input_dim"]]
    conf.pop("input_shape", None)
    conf.pop("input_dim", None)
    if shape is not None and layer.in_sequential:
        conf["_feredge_batch_shape"] = shape


def _float32(layer: _Layer) -> None:
    """Everything is exported as float32 (then int8): mixed-precision policies become float32."""
    if "dtype" in layer.conf:
        layer.conf["dtype"] = _float32_policy(layer.conf["dtype"], layer.name, layer.repairs)


def _axis_list(layer: _Layer) -> None:
    """tf.keras BatchNormalization wrote its axis as a one-element list."""
    axis = layer.conf.get("axis")
    if isinstance(axis, list) and len(axis) == 1:
        layer.conf["axis"] = int(axis[0])


def _lambda_function(layer: _Layer) -> None:
    if layer.cls == "Lambda":
        _translate_lambda(layer.conf)


def _renamed_arguments(layer: _Layer) -> None:
    if layer.cls == "LeakyReLU" and "alpha" in layer.conf:
        layer.conf["negative_slope"] = layer.conf.pop("alpha")
        layer.repairs.note("LeakyReLU alpha renamed negative_slope", layer.name)


def _nested_objects(layer: _Layer) -> None:
    """Initializers, regularizers, constraints and activations given as Keras 2 object configs."""
    conf = layer.conf
    for key in list(conf):
        val = conf[key]
        if key.endswith(("_initializer", "_regularizer", "_constraint")) or key == "activity_regularizer":
            conf[key] = _translate_object(key, val, layer.name, layer.repairs)
        elif key == "activation" and isinstance(val, dict):
            conf[key] = val.get("config", {}).get("name") or val.get("class_name")


def _unknown_arguments(layer: _Layer) -> None:
    _drop_unknown_kwargs(layer.cls, layer.conf, layer.name, layer.repairs)


# The repairs of one layer's config, in order (each notes what it changed for the report).
LAYER_STEPS = (_input_shape, _float32, _axis_list, _lambda_function, _renamed_arguments, _nested_objects,
               _unknown_arguments)


def _to_channels_last(cls: str | None, conf: dict[str, Any], shape: Any, lname: str, repairs: Repairs) -> Any:
    if cls in _AXIS_BOUND:
        raise ExportError(f"channels-first model: layer '{lname}' ({cls}) cannot be turned channels-last "
                          "automatically; rebuild the model channels-last with a builder "
                          "(--architecture builder.py:function) and load these weights")
    if conf.get("data_format") == "channels_first":
        conf["data_format"] = "channels_last"
        repairs.note("channels-first (Theano-era) layers turned channels-last", lname)
    if cls in ("BatchNormalization", "Concatenate") and conf.get("axis") in (1, [1]):
        conf["axis"] = -1
        repairs.note("channel axis 1 -> -1 for channels-last", lname)
    if isinstance(shape, list) and len(shape) == 4:
        repairs.note("channels-first input shape (N,C,H,W) -> (N,H,W,C)", lname)
        return [shape[0], shape[2], shape[3], shape[1]]
    if "input_shape" in conf and isinstance(conf["input_shape"], list) and len(conf["input_shape"]) == 3:
        c, h, w = conf["input_shape"]
        conf["input_shape"] = [h, w, c]
    if isinstance(conf.get("batch_shape"), list) and len(conf["batch_shape"]) == 4:
        n, c, h, w = conf["batch_shape"]
        conf["batch_shape"] = [n, h, w, c]
    return shape


def _float32_policy(dtype: Any, lname: str, repairs: Repairs) -> Any:
    name = dtype
    if isinstance(dtype, dict):
        name = (dtype.get("config") or {}).get("name") or "float32"
    if isinstance(name, str) and name in _REDUCED_PRECISION:
        repairs.note(f"{name} dtype policy replaced by float32", lname)
        return "float32"
    if isinstance(dtype, dict):
        repairs.note("dtype policy dict replaced by its name", lname)
    return name


def _translate_lambda(conf: dict[str, Any]) -> None:
    """Keras 2 stores a Lambda's function as [code, defaults, closure]; Keras 3 wants a dict."""
    for key, type_key in (("function", "function_type"), ("output_shape", "output_shape_type")):
        val = conf.get(key)
        kind = conf.pop(type_key, None)
        if kind == "lambda" and isinstance(val, (list, tuple)):
            conf[key] = {"class_name": "__lambda__", "config": {"code": val[0], "defaults": val[1], "closure": val[2]}}
        elif kind == "function" and isinstance(val, str):
            raise ExportError(f"Lambda layer '{conf.get('name')}' calls a named function {val!r} that is not "
                              "stored in the file; rebuild the model with a builder (--architecture builder.py:fn)")
    for key in ("module", "output_shape_module"):
        conf.pop(key, None)
    if conf.get("output_shape") is None:
        conf.pop("output_shape", None)


def _translate_object(key: str, val: Any, lname: str, repairs: Repairs) -> Any:
    """Initializers, regularizers and constraints: strip ``dtype``; drop what Keras 3 can't
    build (they only matter for training; the weights come from the file)."""
    if not isinstance(val, dict):
        return val
    import keras

    val = {k: v for k, v in val.items() if k not in ("module", "registered_name")}
    conf = val.get("config")
    if isinstance(conf, dict) and "dtype" in conf:
        val["config"] = {k: v for k, v in conf.items() if k != "dtype"}
        repairs.note("'dtype' removed from initializer configs", lname)
    getter = keras.initializers.get
    if key.endswith("_regularizer"):
        getter = keras.regularizers.get
    elif key.endswith("_constraint"):
        getter = keras.constraints.get
    try:
        getter(copy.deepcopy(val))
    except Exception as e:  # any failure means Keras 3 cannot build it
        repairs.note(f"{key} {val.get('class_name')!r} unknown to Keras 3 dropped (training-only)", lname)
        log.debug("dropping %s of %s: %s", key, lname, e)
        return None
    return val


def _allowed_kwargs(layer_cls: type) -> set[str] | None:
    """All named ``__init__`` parameters along the MRO (None: accept anything)."""
    import keras

    allowed = set(_BASE_LAYER_KWARGS)
    for klass in inspect.getmro(layer_cls):
        if klass is keras.layers.Layer or klass is object:
            break
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return None
        allowed |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if layer_cls.__name__ == "InputLayer":
        allowed |= {"batch_shape", "sparse", "ragged", "optional", "input_tensor", "batch_size", "shape"}
    return allowed


def _drop_unknown_kwargs(cls: str | None, conf: dict[str, Any], lname: str, repairs: Repairs) -> None:
    import keras

    layer_cls = getattr(keras.layers, cls or "", None)
    if layer_cls is None or not isinstance(layer_cls, type):
        return  # unknown class: let Keras 3 report it
    allowed = _allowed_kwargs(layer_cls)
    if allowed is None:
        return
    allowed.add("_feredge_batch_shape")
    for key in [k for k in conf if k not in allowed]:
        val = conf.pop(key)
        repairs.note(f"{cls} argument '{key}' unknown to Keras 3 dropped", lname)
        log.debug("dropped %s.%s=%r", lname, key, val)


def build_from_config(cfg: dict[str, Any], *, trust_model: bool) -> Any:
    """Deserialise a translated config with Keras 3 (never compiled)."""
    import keras

    try:
        # Keras 2 configs carry no module path; name the two model classes for the deserialiser.
        custom = {"Functional": keras.Model, "Model": keras.Model, "Sequential": keras.Sequential}
        model = keras.saving.deserialize_keras_object(cfg, custom_objects=custom, safe_mode=not trust_model)
    except ExportError:
        raise
    except RecursionError:  # a very long chain of layers: name the real cause, do not try tf_keras too
        raise ExportError(f"Keras cannot build this architecture: its graph of {len(list(layer_nodes(cfg)))} layers "
                          "nests deeper than Python's recursion limit (RecursionError)") from None
    except Exception as e:  # Keras raises many types for bad configs
        raise Keras3CannotBuild(f"Keras 3 cannot build the architecture: {one_line(e)}") from None
    if not isinstance(model, keras.Model):
        raise ExportError(f"architecture built a {type(model).__name__}, not a Keras model")
    return model




# ---- weights -----------------------------------------------------------------------------

def _decode(names: Any) -> list[str]:
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


def read_h5_weights(group: Any) -> OrderedDict[str, list[tuple[str, np.ndarray]]]:
    """``{layer_name: [(weight_name, array), ...]}`` from a Keras 1/2 weights group (the root
    of a ``save_weights`` file, or ``model_weights`` of a full model), in the file's order."""
    if "layer_names" not in group.attrs:
        raise ExportError("HDF5 group has no 'layer_names' attribute: not Keras 1/2 weights")
    out: OrderedDict[str, list[tuple[str, np.ndarray]]] = OrderedDict()
    for lname in _decode(group.attrs["layer_names"]):
        if lname not in group:
            raise ExportError(f"weights file lists layer '{lname}' but holds no group for it (file damaged?)")
        g = group[lname]
        wnames = _decode(g.attrs.get("weight_names", []))
        arrays = []
        for wn in wnames:
            if wn not in g:
                raise ExportError(f"weights of layer '{lname}': dataset '{wn}' missing (file damaged?)")
            arrays.append((wn, np.asarray(g[wn][()])))
        out[lname] = arrays
    return out


def is_keras1_weights(weights: dict[str, list[tuple[str, np.ndarray]]], attrs: Any) -> bool:
    version = attrs.get("keras_version")
    if isinstance(version, bytes):
        version = version.decode()
    if isinstance(version, str) and version.startswith("1."):
        return True
    names = [wn for arrays in weights.values() for wn, _ in arrays]
    return bool(names) and all("/" not in n and ":" not in n for n in names) and any(
        re.search(r"_(W|b|gamma|beta|running_mean|running_std)$", n) for n in names)


@dataclass
class WeightLayout:
    """How the stored weights differ from what a channels-last Keras 3 model wants. Theano did
    true convolution (kernels flipped); Keras 1 'th' ordering stored kernels (out, in, kh, kw);
    channels-first models flattened feature maps in (C, H, W) order."""

    enabled: bool = False  # Keras 1 kernel layout: (out, in, kh, kw) transposed
    flip_kernels: bool = False  # Keras 1 + Theano: kernels flipped in space
    channels_first: bool = False  # first Dense after each Flatten: rows (C,H,W) -> (H,W,C)
    # Keras 2 on Theano: kernels already (kh, kw, in, out) but convolved by Theano, so flipped in
    # space, as Keras 2's own loader did for Conv1D/2D/3D/Conv2DTranspose (convert_kernel).
    flip_keras2_conv: bool = False


def assign_weights(model: Any, weights: OrderedDict[str, list[tuple[str, np.ndarray]]], repairs: Repairs,
                   keras1: WeightLayout | None = None) -> None:
    """Copy arrays into ``model`` layer by layer, by name; by order when the names do not
    match at all (builder models with auto-generated names). Every shape is checked."""
    keras1 = keras1 or WeightLayout()
    targets = [layer for layer in model.layers if layer.weights]
    file_layers = [(n, a) for n, a in weights.items() if a]
    by_name = {layer.name: layer for layer in targets}
    pairs: list[tuple[Any, str, list[tuple[str, np.ndarray]]]]
    if all(n in by_name for n, _ in file_layers):
        pairs = [(by_name[n], n, a) for n, a in file_layers]
        missing = [layer.name for layer in targets if layer.name not in dict(file_layers)]
        if missing:
            raise ExportError(f"weights file has no weights for layer '{missing[0]}' of the architecture "
                              f"({len(missing)} layer(s) without weights)")
    elif len(file_layers) == len(targets):
        unmatched = [n for n, _ in file_layers if n not in by_name]
        repairs.note(f"layer names differ from the weights file ({unmatched[0]!r} …); layers matched in order")
        pairs = [(layer, n, a) for layer, (n, a) in zip(targets, file_layers, strict=True)]
    else:
        unmatched = [n for n, _ in file_layers if n not in by_name]
        raise ExportError(
            f"architecture and weights do not match: the weights file has layer '{unmatched[0]}' which the "
            f"architecture lacks, and {len(file_layers)} layers with weights vs {len(targets)} in the architecture")
    for layer, fname, arrays in pairs:
        _assign_layer(layer, fname, arrays, repairs, keras1)
    if keras1.channels_first:
        _permute_dense_after_flatten(model, repairs)


def _is_model(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _assign_layer(layer: Any, fname: str, arrays: list[tuple[str, np.ndarray]], repairs: Repairs,
                  keras1: WeightLayout) -> None:
    if _is_model(layer):
        _assign_nested(layer, fname, arrays, repairs, keras1)
        return
    variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
    if len(variables) != len(arrays):
        raise ExportError(f"architecture and weights do not match at layer '{layer.name}': it has "
                          f"{len(variables)} weight arrays, the file's layer '{fname}' has {len(arrays)}")
    # Prefer matching by variable name (kernel, bias, gamma, ...); fall back to Keras 2's order.
    base = [re.sub(r"(:\d+)$", "", wn).split("/")[-1] for wn, _ in arrays]
    var_names = [v.name.split("/")[-1] for v in variables]
    if sorted(base) == sorted(var_names) and len(set(base)) == len(base):
        order = [base.index(n) for n in var_names]
        arrays = [arrays[i] for i in order]
    values = []
    for var, (wn, arr) in zip(variables, arrays, strict=True):
        arr = _convert_keras1(layer, var, arr, repairs, keras1) if keras1.enabled else arr
        is_kernel = var.name.split("/")[-1] == "kernel"
        if keras1.flip_keras2_conv and is_kernel and type(layer).__name__ in _KERAS2_FLIPPED:
            arr = np.ascontiguousarray(arr[(slice(None, None, -1),) * (arr.ndim - 2)])
            repairs.note("Keras 2 Theano kernels flipped in space (Theano convolves, TensorFlow correlates)",
                         layer.name)
        if tuple(arr.shape) != tuple(var.shape):
            raise ExportError(f"architecture and weights do not match at layer '{layer.name}': "
                              f"{var.name} has shape {tuple(var.shape)}, the file's '{wn}' has {tuple(arr.shape)}")
        values.append(arr)
    for var, arr in zip(variables, values, strict=True):
        var.assign(arr.astype(var.dtype) if str(arr.dtype) != str(var.dtype) else arr)


_KERAS2_FLIPPED = {"Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose"}


def _leaf_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if _is_model(layer):
            out.extend(_leaf_layers(layer))
        elif layer.weights:
            out.append(layer)
    return out


def _assign_nested(model: Any, fname: str, arrays: list[tuple[str, np.ndarray]], repairs: Repairs,
                   keras1: WeightLayout) -> None:
    """A nested model is one entry in ``layer_names``; its weight names carry the inner
    layer's name (``dense_1/kernel:0``). Group by that name; else use Keras 2's order
    (all trainable weights, then all non-trainable)."""
    leaves = _leaf_layers(model)
    names = {leaf.name for leaf in leaves}
    groups: OrderedDict[str, list[tuple[str, np.ndarray]]] = OrderedDict()
    for wn, arr in arrays:
        owner = next((p for p in wn.split("/")[:-1][::-1] if p in names), None)
        if owner is None:
            groups.clear()
            break
        groups.setdefault(owner, []).append((wn, arr))
    if groups and set(groups) == names:
        for leaf in leaves:
            _assign_layer(leaf, leaf.name, groups[leaf.name], repairs, keras1)
        return
    variables = list(model.trainable_weights) + list(model.non_trainable_weights)
    if len(variables) != len(arrays):
        raise ExportError(f"architecture and weights do not match at nested model '{model.name}': it has "
                          f"{len(variables)} weight arrays, the file's '{fname}' has {len(arrays)}")
    for var, (wn, arr) in zip(variables, arrays, strict=True):
        if tuple(arr.shape) != tuple(var.shape):
            raise ExportError(f"architecture and weights do not match in nested model '{model.name}': "
                              f"{var.path} has shape {tuple(var.shape)}, the file's '{wn}' has {tuple(arr.shape)}")
        var.assign(arr)
    repairs.note("nested model weights assigned in Keras 2 order", model.name)


def _convert_keras1(layer: Any, var: Any, arr: np.ndarray, repairs: Repairs, keras1: WeightLayout) -> np.ndarray:
    """Keras 1 'th' kernels are (out, in, kh, kw); Keras 3 wants (kh, kw, in, out). Theano
    convolved (flipped) where TensorFlow correlates, so its kernels are flipped in space."""
    if arr.ndim != 4 or var.shape is None or len(var.shape) != 4:
        return arr
    th_shape = (arr.shape[2], arr.shape[3], arr.shape[1], arr.shape[0])
    channels_first = keras1.channels_first or (tuple(arr.shape) != tuple(var.shape) and th_shape == tuple(var.shape))
    if not channels_first:
        return arr
    if keras1.flip_kernels:
        arr = arr[:, :, ::-1, ::-1]
        repairs.note("Keras 1 Theano kernels flipped in space (Theano convolves, TensorFlow correlates)", layer.name)
    repairs.note("Keras 1 kernels transposed (out,in,kh,kw) -> (kh,kw,in,out)", layer.name)
    return np.ascontiguousarray(arr.transpose(2, 3, 1, 0))


def _permute_dense_after_flatten(model: Any, repairs: Repairs) -> None:
    """A channels-first model flattened feature maps in (C,H,W) order; Keras 3 flattens
    (H,W,C), so the first Dense after each Flatten gets its kernel rows reordered."""
    import keras

    pending: tuple[int, int, int] | None = None
    data_format = "channels_last"
    for layer in _walk_layers(model):
        if isinstance(layer, keras.layers.Flatten):
            shape = tuple(layer.input.shape) if hasattr(layer, "input") else ()
            pending = tuple(int(s) for s in shape[1:]) if len(shape) == 4 and None not in shape[1:] else None
            # A builder that kept channels-first maps, or a Flatten that reads them channels-first,
            # already flattens in (C,H,W) order: nothing to permute.
            if data_format == "channels_first" or getattr(layer, "data_format", None) == "channels_first":
                pending = None
            continue
        if getattr(layer, "data_format", None) in ("channels_first", "channels_last"):
            data_format = layer.data_format
        elif isinstance(layer, keras.layers.Dense) and pending is not None:
            h, w, c = pending
            kernel = layer.kernel
            rows = int(kernel.shape[0])
            if rows == h * w * c:
                k = np.asarray(kernel.numpy()).reshape(c, h, w, -1).transpose(1, 2, 0, 3).reshape(rows, -1)
                kernel.assign(k)
                repairs.note("channels-first Dense rows permuted (C,H,W) -> (H,W,C) after Flatten",
                             layer.name)
            pending = None


def _walk_layers(model: Any) -> list[Any]:
    out = []
    for layer in model.layers:
        if _is_model(layer):
            out.extend(_walk_layers(layer))
        else:
            out.append(layer)
    return out
