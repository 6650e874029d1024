"""Load every kind of Keras model a user may bring into one model, ready for predict.

One loader per way a model arrives (``export/load/``, as Keras' ``export/`` has one module
per format): a Keras 3 ``.keras`` file (``keras_zip``), a SavedModel directory (``savedmodel``),
an HDF5 file (``h5``: a legacy full model from Keras 2.x / tf.keras, Keras 1 or 2 weights plus an
``--architecture``, Keras 3 weights), with what they share in ``common``. Legacy configs are
repaired in memory by named steps (:mod:`feredge.export.load.legacy`), and every loaded model then goes through
:mod:`feredge.export.load.steps`; the user's file is only read. Everything that goes wrong because of the
input raises :class:`ExportError` with one line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feredge.edge.errors import ContractError
from feredge.edge.fsutil import sha256_file
from feredge.export.errors import ExportError
from feredge.export.load import h5, keras_zip, savedmodel
from feredge.export.load import steps as model_steps
from feredge.export.load.common import fmt_shape, labels_from_text
from feredge.export.load.legacy import Repairs

if TYPE_CHECKING:
    import keras

    from feredge.edge.contract import Contract

log = logging.getLogger(__name__)


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
        model, fmt = savedmodel.load(src, repairs, trust_model)
        labels = labels_from_text(src / "assets" / "labels.txt")
        digest = _sha256_dir(src)
    else:
        try:
            digest = sha256_file(src)
        except OSError as e:
            raise ExportError(f"cannot read model {src}: {e.strerror or e}") from None
        if zipfile.is_zipfile(src):
            model, fmt, labels = keras_zip.load(src, architecture, trust_model)
        elif src.suffix.lower() == ".keras":
            raise ExportError(f"{src} is not a valid .keras file (not a zip archive: damaged or truncated?)")
        else:
            model, fmt, labels = h5.load(src, architecture, keras1_theano, trust_model, repairs)
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
    raise ExportError(f"model input {fmt_shape(shape)} is not an image tensor "
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
        raise ExportError(f"model output {fmt_shape(shape)} is not a class vector (expected (N, classes))")
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


# ---- metadata -------------------------------------------------------------------------------

def _contract_beside(src: Path) -> Contract | None:
    """A previous export's contract ``<stem>.json`` next to the model. An architecture JSON
    often sits there too (``model.json`` + ``model.h5``), so only a feredge contract counts."""
    from feredge.edge.contract import SCHEMA, Contract

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
