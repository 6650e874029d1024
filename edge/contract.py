"""The model contract: everything a device needs to feed a model and read its answer.

One JSON document travels with every artifact (embedded in it, and as ``<name>.json`` beside
it). Preparing faces differently on the two sides is the main cause of desktop/device
disagreement, so the exporter, the parity suite and the runtime all read this one contract
and hand it to :mod:`feredge.edge.preprocess`.

Embedding:
- ``.tflite``: a zip archive with ``feredge_contract.json`` appended to the flatbuffer (the
  same trick TFLite Support's metadata uses; interpreters ignore trailing bytes).
- ``.onnx``: the ``metadata_props`` entry ``feredge.contract``.
The sha256 of each artifact lives only in the sidecar (a file cannot hold its own hash).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from feredge.edge.errors import ContractError, one_line
from feredge.edge.fsutil import atomic_write_text, sha256_file

SCHEMA = "feredge.contract/1"
EMBED_NAME = "feredge_contract.json"
ONNX_KEY = "feredge.contract"

# Class index order of the original Kaggle CSV (emotion column). Folder names map by name.
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

NORMALIZE_PRESETS: dict[str, tuple[float, float]] = {
    "unit": (1.0 / 255.0, 0.0),
    "symmetric": (1.0 / 127.5, -1.0),
    "raw": (1.0, 0.0),
}
COLORS = ("gray", "rgb", "bgr")
RESIZES = ("area", "linear", "nearest", "cubic")
ACTIVATIONS = ("softmax", "logits", "sigmoid")


def parse_normalize(text: str) -> tuple[float, float]:
    """``unit`` | ``symmetric`` | ``raw`` | ``SCALE,OFFSET`` -> (scale, offset)."""
    key = text.strip().lower()
    if key in NORMALIZE_PRESETS:
        return NORMALIZE_PRESETS[key]
    parts = key.split(",")
    if len(parts) == 2:
        try:
            return float(parts[0]), float(parts[1])
        except ValueError:
            pass
    raise ContractError(
        f"--normalize {text!r} is not one of unit, symmetric, raw or SCALE,OFFSET (e.g. 0.00392,0)"
    )


@dataclass
class Normalize:
    scale: float = 1.0 / 255.0
    offset: float = 0.0


@dataclass
class InputSpec:
    height: int = 48
    width: int = 48
    channels: int = 1
    color: str = "gray"
    layout: str = "NHWC"
    resize: str = "linear"
    normalize: Normalize = field(default_factory=Normalize)
    face_margin: float = 0.0
    # The desktop model's own normalisation where the export folded it into the artifacts'
    # graphs: the device then feeds raw pixel codes (``normalize`` is scale 1, offset 0, and an
    # int8 input is exactly q = p - 128), while the Keras reference still wants ``folded``.
    folded: Normalize | None = None

    def desktop(self) -> InputSpec:
        """How the desktop (Keras) model wants its faces: the folded normalisation unfolded."""
        if self.folded is None:
            return self
        return replace(self, normalize=self.folded, folded=None)


@dataclass
class OutputSpec:
    # "softmax": the model outputs probabilities; "logits": raw scores; "sigmoid": one
    # probability of a binary classifier. Temperature T applies as softmax(z / T), with
    # z = log p for probability outputs.
    activation: str = "softmax"
    temperature: float = 1.0


@dataclass
class QuantParams:
    dtype: str  # "int8" | "uint8" | "float32"
    scale: float = 0.0
    zero_point: int = 0


@dataclass
class Contract:
    name: str
    labels: list[str]
    input: InputSpec = field(default_factory=InputSpec)
    output: OutputSpec = field(default_factory=OutputSpec)
    # Per artifact file name: {"input": QuantParams, "output": QuantParams}
    quantization: dict[str, dict[str, QuantParams]] = field(default_factory=dict)
    # Per artifact file name: {"sha256": ..., "bytes": ...} (sidecar only)
    artifacts: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    schema: str = SCHEMA

    # ---- validation -------------------------------------------------------------------
    def validate(self) -> Contract:
        if self.schema != SCHEMA:
            raise ContractError(f"unsupported contract schema {self.schema!r} (expected {SCHEMA})")
        if not self.labels:
            raise ContractError("contract has no labels")
        i = self.input
        if i.height <= 0 or i.width <= 0 or i.channels not in (1, 3):
            raise ContractError(
                f"contract input {i.height}x{i.width}x{i.channels} is not an image (1 or 3 channels)"
            )
        if i.color not in COLORS:
            raise ContractError(f"contract colour {i.color!r} is not one of {', '.join(COLORS)}")
        if (i.channels == 1) != (i.color == "gray"):
            raise ContractError(f"contract colour {i.color!r} does not fit {i.channels} channel(s)")
        if i.resize not in RESIZES:
            raise ContractError(f"contract resize {i.resize!r} is not one of {', '.join(RESIZES)}")
        if i.folded is not None and (i.normalize.scale, i.normalize.offset) != (1.0, 0.0):
            raise ContractError(f"contract input folds normalisation {i.folded} into the graph, so it must take raw "
                                f"pixels (normalize scale 1, offset 0), not {i.normalize}")
        if self.output.activation not in ACTIVATIONS:
            raise ContractError(f"contract output activation {self.output.activation!r} is unknown")
        if not self.output.temperature > 0:
            raise ContractError("contract temperature must be > 0")
        return self

    # ---- (de)serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"schema": d.pop("schema"), **d}

    def to_json(self, *, with_artifacts: bool = True) -> str:
        d = self.to_dict()
        if not with_artifacts:
            d.pop("artifacts", None)
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contract:
        try:
            inp = dict(d.get("input", {}))
            inp["normalize"] = Normalize(**inp.get("normalize", {}))
            if inp.get("folded") is not None:
                inp["folded"] = Normalize(**inp["folded"])
            quant = {
                art: {k: QuantParams(**v) for k, v in io_q.items()}
                for art, io_q in (d.get("quantization") or {}).items()
            }
            return cls(
                schema=d.get("schema", ""),
                name=d["name"],
                labels=list(d["labels"]),
                input=InputSpec(**inp),
                output=OutputSpec(**d.get("output", {})),
                quantization=quant,
                artifacts=dict(d.get("artifacts") or {}),
                provenance=dict(d.get("provenance") or {}),
            ).validate()
        except ContractError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ContractError(f"malformed model contract: {one_line(e)}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> Contract:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ContractError(f"model contract is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ContractError("model contract is not a JSON object")
        return cls.from_dict(d)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Contract:
        p = Path(path)
        try:
            return cls.from_json(p.read_bytes())
        except FileNotFoundError:
            raise ContractError(f"model contract not found: {p}") from None
        except ContractError as e:
            raise ContractError(f"{p}: {e}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        atomic_write_text(path, self.to_json())

    # ---- artifact bookkeeping ---------------------------------------------------------
    def record_artifact(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        self.artifacts[p.name] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}

    def verify_artifact(self, path: str | os.PathLike[str]) -> None:
        """Refuse an artifact whose bytes differ from what the sidecar recorded."""
        p = Path(path)
        rec = self.artifacts.get(p.name)
        if not rec or "sha256" not in rec:
            return
        actual = sha256_file(p)
        if actual != rec["sha256"]:
            raise ContractError(
                f"{p} does not match its contract: its sha256 is {actual}, the contract says {rec['sha256']} "
                "(the file was modified or belongs to another export)"
            )

    def for_artifact(self, artifact_name: str) -> Contract:
        """A copy holding only what an embedded contract of one artifact should carry."""
        c = Contract.from_dict(self.to_dict())
        c.artifacts = {}
        c.quantization = {k: v for k, v in self.quantization.items() if k == artifact_name}
        return c

    def quant_for(self, artifact_name: str) -> dict[str, QuantParams]:
        return self.quantization.get(artifact_name, {})


# ---- embedding -----------------------------------------------------------------------

def embed(artifact: str | os.PathLike[str], contract: Contract) -> None:
    """Write the contract into the artifact (in place; the caller works on a staged copy)."""
    p = Path(artifact)
    text = contract.for_artifact(p.name).to_json(with_artifacts=False)
    if p.suffix == ".tflite":
        data = _strip_tflite_zip(p.read_bytes())
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(EMBED_NAME, text)
        p.write_bytes(data + buf.getvalue())
    elif p.suffix == ".onnx":
        import onnx  # workstation-only; the device never embeds

        model = onnx.load(str(p))
        kept = [m for m in model.metadata_props if m.key != ONNX_KEY]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_KEY, text
        onnx.save(model, str(p))
    else:
        raise ContractError(f"cannot embed a contract in {p.name}: only .tflite and .onnx")


def _strip_tflite_zip(data: bytes) -> bytes:
    """Remove a previously appended contract zip so re-embedding does not stack archives."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            if EMBED_NAME not in zf.namelist():
                return data
            # zipfile reports member offsets from the start of the whole buffer, so the
            # first member's header is where the appended archive begins.
            return data[: min(info.header_offset for info in zf.infolist())]
    except zipfile.BadZipFile:
        return data


def extract(artifact: str | os.PathLike[str]) -> Contract | None:
    """The contract embedded in an artifact, or None when it carries none."""
    p = Path(artifact)
    if p.suffix == ".tflite":
        try:
            with zipfile.ZipFile(p) as zf:
                if EMBED_NAME not in zf.namelist():
                    return None
                text: str | bytes | None = zf.read(EMBED_NAME)
        except zipfile.BadZipFile:
            return None
    elif p.suffix == ".onnx":
        text = _onnx_metadata(p)
    else:
        return None
    try:
        return Contract.from_json(text) if text else None
    except ContractError as e:
        raise ContractError(f"{p} (embedded contract): {e}") from None


def _onnx_metadata(p: Path) -> str | None:
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        return sess.get_modelmeta().custom_metadata_map.get(ONNX_KEY)
    except ImportError:
        import onnx

        model = onnx.load(str(p), load_external_data=False)
        for m in model.metadata_props:
            if m.key == ONNX_KEY:
                return m.value
        return None


def resolve(model_path: str | os.PathLike[str], suffix: str = ".tflite") -> tuple[Path, Contract]:
    """Find the artifact and its contract from a file or an export directory.

    The sidecar ``<name>.json`` wins (it holds the sha256 checked here); otherwise the
    embedded contract is used.
    """
    p = Path(model_path)
    if not p.exists():
        raise ContractError(f"model not found: {p}")
    if p.is_dir():
        candidates = sorted(p.glob(f"*.int8{suffix}")) or sorted(p.glob(f"*{suffix}"))
        if not candidates:
            raise ContractError(f"no {suffix} model in {p}")
        p = candidates[0]
    sidecar = _sidecar_for(p)
    contract: Contract | None = None
    if sidecar is not None:
        contract = Contract.load(sidecar)
        contract.verify_artifact(p)
    embedded = extract(p)
    if contract is None:
        contract = embedded
    elif embedded is not None and not contract.quant_for(p.name):
        contract.quantization.update(embedded.quantization)
    if contract is None:
        raise ContractError(
            f"{p} carries no feredge contract and has no <name>.json beside it; export it with "
            "`feredge export` first"
        )
    return p, contract


def _sidecar_for(p: Path) -> Path | None:
    stem = p.name
    for ext in (".int8.tflite", ".tflite", ".int8.onnx", ".onnx", ".edgetpu.tflite"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    for base in (stem, stem.removesuffix("_edgetpu")):
        cand = p.with_name(base + ".json")
        if cand.exists():
            return cand
    return None
