"""The expression classifier: one int8 TFLite model, its contract, and a kept-alive interpreter.

Why a class: building an interpreter costs milliseconds and allocates its arena; a face costs
a fraction of a millisecond. ``Classifier`` builds everything once (interpreter, tensor
indices, quantisation parameters) and each call only prepares, quantises, invokes and
dequantises. An interpreter is not thread-safe: use one ``Classifier`` per thread.

Example::

    from feredge.edge.model import Classifier
    clf = Classifier("out/fer/")            # export dir, .tflite, or None for the default model
    pred = clf.classify(face_crop_bgr)      # Prediction(label="happy", score=0.91, scores={...})
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from feredge.edge.backends import InterpreterHandle, make_interpreter
from feredge.edge.contract import Contract, QuantParams, resolve
from feredge.edge.errors import ContractError, EdgeError
from feredge.edge.preprocess import dequantize, prepare, probabilities, quantize

log = logging.getLogger(__name__)

UNCERTAIN = "uncertain"
_DTYPES = {np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8", np.dtype(np.float32): "float32"}


@dataclass(frozen=True)
class Prediction:
    """One face's answer. ``label`` is ``"uncertain"`` when ``score`` is below ``min_score``."""

    label: str
    score: float
    scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(self.score, 4),
                "scores": {k: round(v, 4) for k, v in self.scores.items()}}


def default_model_path() -> Path:
    """The model shipped as package data (``edge/data/default/``), or a clear error."""
    d = Path(str(resources.files("feredge.edge") / "data" / "default"))
    if d.is_dir() and any(d.glob("*.tflite")):
        return d
    raise EdgeError("no default model is installed with feredge yet; pass --model PATH "
                    "(a .tflite file or a directory made by `feredge export`)")


class Classifier:
    """Run a feredge-exported TFLite model on face crops.

    ``model_path``: a ``.tflite`` (contract embedded or ``<name>.json`` beside it, whose sha256
    is checked), an export directory, or None for the shipped default model. ``contract``
    overrides the contract found with the model (used by the parity tools).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        backend: str = "auto",
        device: str = "auto",
        num_threads: int | None = None,
        min_score: float | None = None,
        contract: Contract | None = None,
    ) -> None:
        if min_score is not None and not 0.0 <= min_score <= 1.0:
            raise EdgeError(f"min_score must be between 0 and 1, got {min_score}")
        src = Path(model_path) if model_path is not None else default_model_path()
        if contract is None:
            self.path, self.contract = resolve(src)
        else:
            if not src.is_file():
                raise ContractError(f"model not found: {src}")
            self.path, self.contract = src, contract.validate()
            self.contract.verify_artifact(src)
        self.labels: list[str] = list(self.contract.labels)
        self.min_score = min_score
        self.handle: InterpreterHandle = make_interpreter(
            self.path, backend=backend, device=device, num_threads=num_threads
        )
        self.backend_name: str = self.handle.backend
        self.device: str = self.handle.device
        self._interp = self.handle.interpreter
        self._setup_tensors()

    # ---- set-up --------------------------------------------------------------------------
    def _setup_tensors(self) -> None:
        ins, outs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ContractError(f"{self.path.name} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
        i, o = ins[0], outs[0]
        spec = self.contract.input
        want = (1, spec.height, spec.width, spec.channels)
        if tuple(int(v) for v in i["shape"]) != want:
            raise ContractError(
                f"{self.path.name} input shape {tuple(i['shape'])} does not match its contract {want}"
            )
        n_out = int(np.prod(o["shape"]))
        if n_out != len(self.labels):
            raise ContractError(
                f"{self.path.name} has {n_out} outputs but its contract lists {len(self.labels)} labels"
            )
        self._in_index, self._out_index = int(i["index"]), int(o["index"])
        self._in_shape = want
        self.input_quant = self._tensor_quant(i)
        self.output_quant = self._tensor_quant(o)
        recorded = self.contract.quant_for(self.path.name)
        for key, actual in (("input", self.input_quant), ("output", self.output_quant)):
            if key in recorded:
                _check_quant(self.path.name, key, recorded[key], actual)
            else:
                log.debug("contract records no %s quantisation for %s; using the tensor's", key, self.path.name)

    @staticmethod
    def _tensor_quant(detail: dict) -> QuantParams:
        dtype = _DTYPES.get(np.dtype(detail["dtype"]))
        if dtype is None:
            raise ContractError(f"unsupported tensor type {np.dtype(detail['dtype'])} (expected int8/uint8/float32)")
        scale, zp = detail.get("quantization", (0.0, 0))
        if dtype == "float32":
            return QuantParams("float32", 0.0, 0)
        return QuantParams(dtype, float(scale), int(zp))

    # ---- inference -----------------------------------------------------------------------
    def outputs_prepared(self, x: np.ndarray) -> np.ndarray:
        """Dequantised raw outputs (K,) for a prepared input (H,W,C) or (1,H,W,C); no temperature."""
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self._in_shape:
            x = x.reshape(self._in_shape)
        self._interp.set_tensor(self._in_index, quantize(x, self.input_quant))
        self._interp.invoke()
        return dequantize(self._interp.get_tensor(self._out_index).reshape(-1), self.output_quant)

    def predict_prepared(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (K,) for a prepared input, with the contract's activation and temperature."""
        out = self.contract.output
        return probabilities(self.outputs_prepared(x), out.activation, out.temperature)

    def predict(self, face_img: np.ndarray) -> np.ndarray:
        """Probabilities (K,) for a face crop (OpenCV grey or BGR, any size)."""
        return self.predict_prepared(prepare(face_img, self.contract.input))

    def classify(self, face_img: np.ndarray) -> Prediction:
        return self.to_prediction(self.predict(face_img))

    def to_prediction(self, probs: np.ndarray) -> Prediction:
        """Label a probability vector (a one-label sigmoid model scores only its label)."""
        scores = {lab: float(p) for lab, p in zip(self.labels, probs, strict=True)}
        k = int(np.argmax(probs))
        score = float(probs[k])
        label = self.labels[k]
        if self.min_score is not None and score < self.min_score:
            label = UNCERTAIN
        return Prediction(label, score, scores)

    def describe(self) -> dict:
        """What is loaded, for logs, ``doctor`` and the daemon's status endpoint."""
        c = self.contract
        return {
            "model": str(self.path),
            "name": c.name,
            "labels": self.labels,
            "input": f"{c.input.height}x{c.input.width}x{c.input.channels} {c.input.color}",
            "input_quant": vars(self.input_quant),
            "output_quant": vars(self.output_quant),
            "activation": c.output.activation,
            "temperature": c.output.temperature,
            "backend": f"{self.backend_name} {self.handle.version}",
            "device": self.device,
        }


def _check_quant(name: str, key: str, recorded: QuantParams, actual: QuantParams) -> None:
    """The interpreter's tensor parameters are the truth; a contract that disagrees was written
    for another file, and quantising with it would silently shift every input."""
    ok = recorded.dtype == actual.dtype and recorded.zero_point == actual.zero_point
    ok = ok and math.isclose(recorded.scale, actual.scale, rel_tol=1e-5, abs_tol=1e-12)
    if not ok:
        raise ContractError(
            f"{name} {key} quantisation {actual.dtype} scale={actual.scale:.6g} zero_point={actual.zero_point} "
            f"does not match its contract ({recorded.dtype} scale={recorded.scale:.6g} "
            f"zero_point={recorded.zero_point})"
        )
