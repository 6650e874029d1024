"""The target formats of an export, one module each, registered by key.

Why a table: the orchestrator (:mod:`feredge.export.api`) should not know how each format is
made, only in which order; adding a format is a module with ``convert(job) -> list[Artifact]``
and a line here. Order matters twice: later formats may read earlier ones (the Edge TPU compiles
the int8 TFLite), and the contract embedded in every artifact names the quantisation of all the
primary ones, so it is embedded once they all exist and before any derived format is made.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feredge.edge.contract import Contract, embed

# key -> module with ``convert(job: ConvertJob) -> list[Artifact]``, in order of work.
FORMATS: dict[str, str] = {
    "tflite-int8": "feredge.export.convert.tflite",
    "tflite-16x8": "feredge.export.convert.tflite16",  # only with --int16-activations
    "onnx": "feredge.export.convert.onnx",
    "keras": "feredge.export.convert.desktop",
}
# Formats made from a finished (contract-embedded) primary artifact; only on request.
DERIVED: dict[str, str] = {
    "tflite-edgetpu": "feredge.export.convert.edgetpu",
}


@dataclass
class Artifact:
    """One file an export wrote into its staging folder, and what the report says about it.

    ``kind`` is the report's name for the format (``tflite-int8``, ``onnx-fp32``, ``onnx-int8-qdq``,
    ``keras``, ``tflite-edgetpu``); ``int8`` the quantisation choice made (ranges kept, method).
    """

    path: Path
    kind: str
    ops: Any = None  # op summary: TFLite's ops with versions, ONNX's op types
    int8: dict[str, Any] | None = None
    scored: bool = False  # measured against the desktop model on the held-out faces
    embed: bool = False  # carries the contract inside the file
    flatbuffer: Any = field(default=None, repr=False)  # TFLite's FlatbufferInfo, for derived formats

    @property
    def name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        """The report's fields of this artifact (``ops``/``int8`` only where there are some)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.ops is not None:
            out["ops"] = self.ops
        if self.int8 is not None:
            out["int8"] = self.int8
        return out


@dataclass
class Converted:
    """Everything the convert phase made, in order, and the Edge TPU check when asked for."""

    stage: Path
    artifacts: list[Artifact] = field(default_factory=list)
    edgetpu: Any = None  # feredge.export.convert.edgetpu.EdgeTPUCheck

    def get(self, kind: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind), None)


@dataclass
class ConvertJob:
    """What every converter is handed: the model as the device takes it, the contract it fills
    in (quantisation per artifact), the calibration faces, and where to write."""

    run: Any  # feredge.export.api._Run: phase timer, warnings, options
    model: Any  # the Keras model with raw pixels in when the normalisation is folded
    desktop: Any  # the loaded desktop model (feredge.export.load.model.LoadedModel), saved as is
    contract: Contract
    x_cal: np.ndarray
    selection: Any  # feredge.export.convert.tflite.Selection, or None
    out: Path  # the final folder (instructions name it), not the staging one
    built: Converted


def convert_all(job: ConvertJob, derived: tuple[str, ...] = ()) -> Converted:
    """Every primary format, the contract embedded in each that carries it, then ``derived``."""
    for module in FORMATS.values():
        job.built.artifacts += importlib.import_module(module).convert(job)
    for a in job.built.artifacts:
        if a.embed:
            embed(a.path, job.contract)
    for key in derived:
        job.built.artifacts += importlib.import_module(DERIVED[key]).convert(job)
    return job.built
