"""Parity suite: do the exported artifacts behave like the desktop model they came from?

Why it exists: quantisation flips near-ties, but a wrong normalisation, colour order or label
order in an export flips confident faces too, and only a comparison on real faces shows it.
Each candidate's own contract (embedded, or its ``<name>.json`` sidecar) decides how faces are
prepared — through :mod:`edge.preprocess`, the same code the device runs — and the reference is
fed exactly the same tensors, so any difference comes from the artifact, not from preparation.

Runtimes are those of the device: TFLite through :class:`edge.model.Classifier` (LiteRT, one
face at a time, as on a Pi), ONNX through onnxruntime (batched when the graph allows it).

The end-to-end (train/serve skew) check lives here too as reusable pieces —
:func:`read_frames` and :func:`runtime_faces` take faces the way the device does — while
the model's *training* preprocessing is written independently in the test that uses them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.contract import Contract, InputSpec, resolve
from edge.errors import FeredgeError
from edge.fsutil import publish, staging_dir
from edge.preprocess import prepare, probabilities
from export import scoring as M
from export.errors import ExportError
from export.progress import progress_bar
from export.runners import run_keras as run_reference
from export.runners import run_onnx, run_tflite

log = logging.getLogger(__name__)

SCHEMA = "feredge.parity/1"
DEFAULT_MIN_AGREEMENT_INT8 = 0.99
DEFAULT_MIN_AGREEMENT_FLOAT = 0.9999
DEFAULT_MAX_ACCURACY_DROP = 0.005  # 0.5 percentage points


@dataclass
class ParityConfig:
    reference: str
    candidates: list[str]
    data: str
    split: str | None = None  # "train" | "test"; None: the test part if the source has one, else all of it
    usage: str | None = None  # Kaggle CSV usage (e.g. PublicTest); None = the reader's default for split
    min_agreement: float | None = None  # None: 0.99 for int8 artifacts, 0.9999 for float ones
    max_accuracy_drop: float = DEFAULT_MAX_ACCURACY_DROP
    margin: float = 0.1
    samples: int | None = None  # seeded class-proportional subset (quick runs); None = all faces
    seed: int = 0
    worst: int = 24  # faces on the contact sheet of each candidate
    report_dir: str | None = None
    progress: bool = True
    batch_size: int = 256
    trust_model: bool = False
    architecture: str | None = None
    footage: list[str] = field(default_factory=list)  # videos / still images for the camera-face check
    footage_every: int = 4  # use every N-th video frame


@dataclass
class Candidate:
    path: Path
    contract: Contract
    format: str  # "tflite" | "onnx"
    int8: bool

    @property
    def kind(self) -> str:
        return f"{'int8' if self.int8 else 'float'} {self.format}"


@dataclass
class ParityResult:
    report: dict[str, Any]
    passed: bool
    report_dir: Path | None = None
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        r = self.report
        ref = r["reference"]
        lines = [f"reference {ref['path']}: accuracy {_fmt_pct(ref.get('accuracy'))} on {r['data']['n']} faces"]
        for c in r["candidates"]:
            lines.append(
                f"{'PASS' if c['passed'] else 'FAIL'} {c['path']} ({c['kind']}): agreement {c['agreement']:.4f} "
                f"(margin>{r['thresholds']['margin']}: {_fmt(c['agreement_margin'])}), "
                f"accuracy {_fmt_pct(c['accuracy'])} (Δ {_fmt_pp(c['accuracy_delta'])}), "
                f"mean|Δp| {c['mean_abs_dp']:.4f}, max|Δp| {c['max_abs_dp']:.4f}"
            )
        if self.report_dir is not None:
            lines.append(f"report: {self.report_dir / 'report.md'}")
        return "\n".join(lines)


# ---- inputs --------------------------------------------------------------------------------

def _is_int8_onnx(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ops = {n.op_type for n in model.graph.node}
    return bool(ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger"})


def load_candidate(path: str | Path) -> Candidate:
    """Resolve an artifact and its contract; refuse anything the device could not run."""
    p = Path(path)
    if not p.exists():
        raise ExportError(f"candidate not found: {p}")
    if p.is_dir() or p.suffix not in (".tflite", ".onnx"):
        raise ExportError(f"candidate {p} is not a .tflite or .onnx file")
    try:
        p, contract = resolve(p, suffix=p.suffix)
    except FeredgeError:
        raise
    except Exception as e:  # a truncated flatbuffer / protobuf
        raise ExportError(f"candidate {p} cannot be read: {type(e).__name__}: {e}") from None
    q = contract.quant_for(p.name)
    if p.suffix == ".tflite":
        int8 = any(v.dtype in ("int8", "uint8") for v in q.values()) or ".int8." in p.name
        return Candidate(p, contract, "tflite", int8)
    try:
        int8 = ".int8." in p.name or _is_int8_onnx(p)
    except Exception as e:
        raise ExportError(f"candidate {p} is not a readable ONNX model: {type(e).__name__}: {e}") from None
    return Candidate(p, contract, "onnx", int8)


def _spec_key(spec: InputSpec) -> str:
    return json.dumps(asdict(spec), sort_keys=True)


def _read_data(cfg: ParityConfig):
    """The faces to compare on. ``split`` None: the source's test part when it has one (a
    FER2013 root, a Kaggle CSV's PublicTest rows), else the whole source (a folder of class
    folders such as ``fer2013/test``, a plain folder, arrays)."""
    from export.calibration import read_source

    if not Path(cfg.data).exists():
        raise ExportError(f"data not found: {cfg.data}")
    try:
        if cfg.split is not None:
            images, part = read_source(cfg.data, part=cfg.split, usage=cfg.usage, progress=False), cfg.split
        else:
            try:
                images, part = read_source(cfg.data, part="test", usage=cfg.usage, progress=False), "test"
            except ExportError:
                images, part = read_source(cfg.data, part="train", usage=cfg.usage, progress=False), "all"
        if cfg.samples is not None and cfg.samples < len(images.ids):
            images = images.sample(cfg.samples, cfg.seed, progress=cfg.progress)
        else:
            images.load(progress=cfg.progress)
    except FeredgeError:
        raise
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read data {cfg.data}: {type(e).__name__}: {e}") from None
    if not len(images.images):
        raise ExportError(f"no readable images in {cfg.data}")
    return images, part


# ---- runners -------------------------------------------------------------------------------

def _load_reference(cfg: ParityConfig):
    from export.load import load_model

    if not Path(cfg.reference).exists():
        raise ExportError(f"reference model not found: {cfg.reference}")
    return load_model(cfg.reference, architecture=cfg.architecture, trust_model=cfg.trust_model)


def _check_reference_input(model, spec: InputSpec, ref_path: str, cand: Candidate) -> None:
    shape = tuple(model.inputs[0].shape)[1:] if getattr(model, "inputs", None) else tuple(model.input_shape)[1:]
    want = (spec.height, spec.width, spec.channels)
    # A free (None) spatial dimension accepts whatever the contract asks for.
    if len(shape) != 3 or any(s is not None and int(s) != w for s, w in zip(shape, want, strict=True)):
        raise ExportError(
            f"reference {ref_path} takes input {'x'.join(map(str, shape))} but candidate {cand.path.name}'s "
            f"contract says {'x'.join(map(str, want))}: they do not come from the same model"
        )


def candidate_probs(c: Candidate, x: np.ndarray, batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Probabilities of a candidate on prepared inputs, as the device would report them."""
    if c.format == "tflite":
        raw = run_tflite(c.path, c.contract, x, progress=progress)
    else:
        raw = run_onnx(c.path, c.contract, x, batch_size=batch_size, progress=progress)
    return probabilities(raw, c.contract.output.activation, c.contract.output.temperature)


# ---- the suite -----------------------------------------------------------------------------

def _seeded_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def _ts_ece(p: np.ndarray, y: np.ndarray, fit: np.ndarray, held: np.ndarray) -> tuple[float, float]:
    """ECE after temperature scaling: T fitted on one seeded half, ECE measured on the other."""
    z = M.log_probs(p)
    t = M.fit_temperature(z[fit], y[fit])
    return float(M.ece(M.softmax_t(z[held], t), y[held])), float(t)


def _finite(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _label_mapping(images, labels: list[str]) -> np.ndarray | None:
    """True class indices in the model's label order, or None for unlabelled data."""
    if getattr(images, "labels", None) is None:
        return None
    try:
        y = np.asarray(images.labels_for(labels), dtype=np.int64)
    except FeredgeError:
        raise
    except (KeyError, ValueError) as e:
        raise ExportError(f"data classes do not match the model labels {labels}: {e}") from None
    if not np.any(y >= 0):
        raise ExportError(
            f"none of the data's classes ({', '.join(images.class_names or [])}) is a model label "
            f"({', '.join(labels)})"
        )
    return y


def _check_labels(cands: list[Candidate], loaded, ref_path: str) -> list[str]:
    labels = list(cands[0].contract.labels)
    for c in cands[1:]:
        if list(c.contract.labels) != labels:
            raise ExportError(
                f"label mismatch between candidates: {cands[0].path.name} has {labels}, "
                f"{c.path.name} has {list(c.contract.labels)}"
            )
    ref_labels = getattr(loaded, "labels", None)
    hint = getattr(loaded, "contract_hint", None)
    if not ref_labels and hint is not None:
        ref_labels = hint.labels
    if ref_labels and list(ref_labels) != labels:
        raise ExportError(
            f"label mismatch between reference {ref_path} ({', '.join(ref_labels)}) and candidates "
            f"({', '.join(labels)})"
        )
    return labels


def run_parity(cfg: ParityConfig) -> ParityResult:
    """Run every candidate against the reference on the data and write the report."""
    t0 = time.perf_counter()
    if not cfg.candidates:
        raise ExportError("no --candidate given")
    ref_path = Path(cfg.reference)
    if not ref_path.exists():
        raise ExportError(f"reference model not found: {ref_path}")
    cands = [load_candidate(c) for c in cfg.candidates]
    for f in cfg.footage:
        if not Path(f).is_file():
            raise ExportError(f"footage not found: {f}")
    if cfg.report_dir:
        _check_report_dir(Path(cfg.report_dir))
    timings: dict[str, float] = {}
    t = time.perf_counter()
    images, part = _read_data(cfg)
    timings["read_data"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = _load_reference(cfg)
    timings["load_reference"] = time.perf_counter() - t
    model = loaded.model
    labels = _check_labels(cands, loaded, cfg.reference)
    n_out = int(np.prod(tuple(model.outputs[0].shape)[1:]))
    if n_out != len(labels) and not (n_out == 1 and len(labels) in (1, 2)):
        raise ExportError(
            f"label mismatch between reference and candidate: the reference has {n_out} outputs, "
            f"the candidates' contract {len(labels)} labels"
        )
    y = _label_mapping(images, labels)
    classes = list(labels)
    if len(labels) == 1:
        # One sigmoid output: class 1 is the label, class 0 everything else (any other folder).
        classes = [f"not {labels[0]}", labels[0]]
        if y is not None:
            y = (y == 0).astype(np.int64)
    n = len(images.images)
    log.info("parity: %d faces from %s, %d candidate(s)", n, cfg.data, len(cands))

    # The reference's own contract (the export's <name>.json beside the .keras) says how the
    # desktop model wants its faces; without one, it gets each candidate's preparation. One
    # preparation per distinct input spec, shared by every model that uses it.
    ref_contract: Contract | None = getattr(loaded, "contract_hint", None)
    prepared: dict[str, np.ndarray] = {}
    ref_probs: dict[str, np.ndarray] = {}

    def prepared_for(spec: InputSpec) -> np.ndarray:
        key = _spec_key(spec)
        if key not in prepared:
            t = time.perf_counter()
            prepared[key] = _prepare_all(images.images, spec, cfg.progress)
            timings["prepare"] = timings.get("prepare", 0.0) + time.perf_counter() - t
        return prepared[key]

    def reference_for(c: Candidate) -> tuple[str, np.ndarray]:
        src = ref_contract if ref_contract is not None else c.contract
        key = _spec_key(src.input)
        if key not in ref_probs:
            _check_reference_input(model, src.input, cfg.reference, c)
            x_ref = prepared_for(src.input)
            t = time.perf_counter()
            raw = run_reference(model, x_ref, cfg.batch_size, cfg.progress)
            timings["reference"] = timings.get("reference", 0.0) + time.perf_counter() - t
            ref_probs[key] = probabilities(raw, src.output.activation, src.output.temperature)
        return key, ref_probs[key]

    fit, held = _seeded_halves(n, cfg.seed)
    results = []
    cand_probs: list[np.ndarray] = []
    ref_keys: list[str] = []
    for c in cands:
        ref_key, p_ref = reference_for(c)
        ref_keys.append(ref_key)
        x = prepared_for(c.contract.input)
        t = time.perf_counter()
        p = candidate_probs(c, x, cfg.batch_size, cfg.progress)
        if p.shape != p_ref.shape:
            raise ExportError(
                f"label mismatch between reference and candidate {c.path.name}: outputs of shape "
                f"{p.shape[1:]} vs {p_ref.shape[1:]}"
            )
        timings[c.path.name] = time.perf_counter() - t
        cand_probs.append(p)
        sec = _candidate_section(cfg, c, p_ref, p, y, classes, images, fit, held)
        sec["notes"] = _contract_notes(ref_contract, c)
        results.append(sec)
    if cfg.footage:
        t = time.perf_counter()
        _footage_sections(cfg, model, ref_contract, cands, results)
        timings["footage"] = time.perf_counter() - t
    ref_section = _reference_section(cfg, loaded, ref_probs[ref_keys[0]], y, classes, fit, held)
    ref_section["contract"] = "own (beside the model)" if ref_contract is not None else "the candidates'"

    report = {
        "schema": SCHEMA,
        "reference": ref_section,
        "data": {
            "path": str(cfg.data),
            "split": part,
            "n": n,
            "labelled": y is not None,
            "n_labelled": int(np.sum(y >= 0)) if y is not None else 0,
            "description": getattr(images, "description", str(cfg.data)),
            "skipped": int(getattr(images, "skipped", 0) or 0),
            "samples": cfg.samples,
            "seed": cfg.seed,
        },
        "thresholds": {
            "min_agreement": cfg.min_agreement,
            "min_agreement_int8_default": DEFAULT_MIN_AGREEMENT_INT8,
            "min_agreement_float_default": DEFAULT_MIN_AGREEMENT_FLOAT,
            "max_accuracy_drop": cfg.max_accuracy_drop,
            "margin": cfg.margin,
        },
        "labels": labels,
        "classes": classes,
        "worst": cfg.worst,
        "timings_s": timings,
        "candidates": results,
        "passed": all(r["passed"] for r in results),
    }
    failures = [f"{r['path']}: {f}" for r in results for f in r["failures"]]
    report["failures"] = failures
    out_dir = None
    if cfg.report_dir:
        out_dir = Path(cfg.report_dir)
        report["elapsed_s"] = round(time.perf_counter() - t0, 2)
        report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        t = time.perf_counter()
        write_report(report, out_dir, images=images, ref_probs=[ref_probs[k] for k in ref_keys], cands=cands,
                     cand_probs=cand_probs, y=y, labels=classes)
        timings["report"] = time.perf_counter() - t
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    log.debug("parity timings: %s", report["timings_s"])
    return ParityResult(report, report["passed"], out_dir, failures)


def _contract_notes(ref: Contract | None, c: Candidate) -> list[str]:
    """Where a candidate's contract disagrees with the reference's own: the usual cause of a
    candidate that fails although its conversion was fine."""
    if ref is None:
        return []
    notes = []
    a, b = asdict(ref.input), asdict(c.contract.input)
    for k in a:
        if a[k] != b.get(k):
            notes.append(f"contract input.{k} is {b.get(k)} but the reference's contract says {a[k]}")
    if ref.output.activation != c.contract.output.activation:
        notes.append(f"contract output activation {c.contract.output.activation} but the reference's says "
                     f"{ref.output.activation}")
    return notes


def _prepare_all(images, spec: InputSpec, progress: bool) -> np.ndarray:
    out = np.empty((len(images), spec.height, spec.width, spec.channels), np.float32)
    for i, img in enumerate(progress_bar(images, desc="prepare", unit="face", enabled=progress)):
        out[i] = prepare(img, spec)
    return out


def _per_class(p: np.ndarray, y: np.ndarray | None, labels: list[str]) -> np.ndarray | None:
    if y is None:
        return None
    return M.per_class_recall(p, y, max(len(labels), M.as_probs(p).shape[1]))


def _reference_section(cfg, loaded, p_ref, y, labels, fit, held) -> dict[str, Any]:
    sec: dict[str, Any] = {
        "path": str(cfg.reference),
        "format": getattr(loaded, "source_format", None),
        "sha256": getattr(loaded, "source_sha256", None),
        "accuracy": None,
        "ece": None,
        "ece_ts": None,
        "temperature": None,
        "per_class": None,
    }
    if y is not None:
        rec = _per_class(p_ref, y, labels)
        ece_ts, t = _ts_ece(p_ref, y, fit, held)
        sec.update(
            accuracy=_finite(M.accuracy(p_ref, y)),
            ece=_finite(M.ece(p_ref, y)),
            ece_ts=_finite(ece_ts),
            temperature=t,
            per_class={lab: _finite(rec[i]) for i, lab in enumerate(labels)},
        )
    return sec


def _candidate_section(cfg, c: Candidate, p_ref, p, y, labels, images, fit, held) -> dict[str, Any]:
    cmp = M.compare(p_ref, p, cfg.margin)
    min_agree = cfg.min_agreement
    if min_agree is None:
        min_agree = DEFAULT_MIN_AGREEMENT_INT8 if c.int8 else DEFAULT_MIN_AGREEMENT_FLOAT
    sec: dict[str, Any] = {
        "path": str(c.path),
        "name": c.path.name,
        "format": c.format,
        "int8": c.int8,
        "kind": c.kind,
        **{k: (_finite(v) if isinstance(v, float) else v) for k, v in cmp.items()},
        "accuracy": None,
        "reference_accuracy": None,
        "accuracy_delta": None,
        "ece": None,
        "reference_ece": None,
        "ece_ts": None,
        "reference_ece_ts": None,
        "temperature": None,
        "reference_temperature": None,
        "per_class": None,
        "contract_temperature": c.contract.output.temperature,
    }
    if y is not None:
        acc, ref_acc = M.accuracy(p, y), M.accuracy(p_ref, y)
        rec, ref_rec = _per_class(p, y, labels), _per_class(p_ref, y, labels)
        ece_ts, t = _ts_ece(p, y, fit, held)
        ref_ece_ts, ref_t = _ts_ece(p_ref, y, fit, held)
        sec.update(
            accuracy=_finite(acc),
            reference_accuracy=_finite(ref_acc),
            accuracy_delta=_finite(acc - ref_acc),
            ece=_finite(M.ece(p, y)),
            reference_ece=_finite(M.ece(p_ref, y)),
            ece_ts=_finite(ece_ts),
            reference_ece_ts=_finite(ref_ece_ts),
            temperature=t,
            reference_temperature=ref_t,
            per_class={
                lab: {
                    "recall": _finite(rec[i]),
                    "reference_recall": _finite(ref_rec[i]),
                    "delta": _finite(rec[i] - ref_rec[i]),
                    "n": int(np.sum(y == i)),
                }
                for i, lab in enumerate(labels)
            },
        )
    # Disagreements, most confident reference first: those are the flips that matter.
    ref_top, cand_top = M.as_probs(p_ref).argmax(1), M.as_probs(p).argmax(1)
    margin = M.top2_margin(p_ref)
    idx = np.flatnonzero(ref_top != cand_top)
    idx = idx[np.argsort(-margin[idx], kind="stable")]
    names = labels
    ids = list(getattr(images, "ids", []) or [])
    sec["disagreements"] = {
        "count": len(idx),
        "worst": [
            {
                "index": int(i),
                "id": str(ids[i]) if i < len(ids) else str(i),
                "reference": names[ref_top[i]],
                "reference_p": float(M.as_probs(p_ref)[i, ref_top[i]]),
                "candidate": names[cand_top[i]],
                "candidate_p": float(M.as_probs(p)[i, cand_top[i]]),
                "reference_margin": float(margin[i]),
                "true": (names[y[i]] if y is not None and y[i] >= 0 else None),
            }
            for i in idx[: max(cfg.worst, 50)]
        ],
    }
    failures = []
    if cmp["agreement"] < min_agree:
        failures.append(
            f"agreement {cmp['agreement']:.4f} < {min_agree:.4f} "
            f"({len(idx)} of {cmp['n']} faces flip; short by {min_agree - cmp['agreement']:.4f})"
        )
    if sec["accuracy_delta"] is not None and -sec["accuracy_delta"] > cfg.max_accuracy_drop:
        failures.append(
            f"accuracy drops {-sec['accuracy_delta'] * 100:.2f} pp > {cfg.max_accuracy_drop * 100:.2f} pp "
            f"({sec['reference_accuracy']:.4f} -> {sec['accuracy']:.4f})"
        )
    sec["thresholds"] = {"min_agreement": min_agree, "max_accuracy_drop": cfg.max_accuracy_drop}
    sec["failures"] = failures
    sec["passed"] = not failures
    return sec


def read_footage(path: str | Path, every: int = 4) -> list[np.ndarray]:
    """Frames of a video (every ``every``-th) or a single still image, decoded by the device's
    own sources (:mod:`edge.sources`)."""
    p = Path(path)
    if not p.is_file():
        raise ExportError(f"footage not found: {p}")
    return read_frames(p, every=every)


def _footage_sections(cfg: ParityConfig, model, ref_contract: Contract | None, cands: list[Candidate],
                      results: list[dict[str, Any]]) -> None:
    """Agreement on faces found in real footage the way the device finds them (Haar detection on
    full frames, each candidate's contract margin): camera faces are not FER2013 faces, and a
    candidate that only holds up on the test set should not pass. Unlabelled: agreement only."""
    from edge.detect import FaceDetector
    from edge.preprocess import crop_face

    frames: list[np.ndarray] = []
    for f in cfg.footage:
        frames += read_footage(f, cfg.footage_every)
    detector = FaceDetector()
    boxes = [detector.detect(fr) for fr in frames]
    n_boxes = sum(len(b) for b in boxes)
    if n_boxes == 0:
        # Nothing compared is not a pass: the user asked for this check.
        raise ExportError(f"no face found in the footage ({', '.join(map(str, cfg.footage))}: {len(frames)} frames "
                          "searched): footage agreement cannot be measured; give footage with frontal faces")
    for c, sec in zip(cands, results, strict=True):
        src = ref_contract if ref_contract is not None else c.contract
        crops = [np.ascontiguousarray(crop_face(fr, b, c.contract.input.face_margin))
                 for fr, bs in zip(frames, boxes, strict=True) for b in bs]
        ref_crops = [np.ascontiguousarray(crop_face(fr, b, src.input.face_margin))
                     for fr, bs in zip(frames, boxes, strict=True) for b in bs]
        info: dict[str, Any] = {"sources": [str(f) for f in cfg.footage], "frames": len(frames), "faces": n_boxes}
        x = np.stack([prepare(im, c.contract.input) for im in crops])
        x_ref = np.stack([prepare(im, src.input) for im in ref_crops])
        p = candidate_probs(c, x, cfg.batch_size, False)
        p_ref = probabilities(run_reference(model, x_ref, cfg.batch_size), src.output.activation,
                              src.output.temperature)
        cmp = M.compare(p_ref, p, cfg.margin)
        info.update({k: (_finite(v) if isinstance(v, float) else v) for k, v in cmp.items()})
        sec["footage"] = info
        need = sec["thresholds"]["min_agreement"]
        if cmp["agreement"] < need:
            flips = round((1 - cmp["agreement"]) * cmp["n"])
            sec["failures"].append(
                f"footage agreement {cmp['agreement']:.4f} < {need:.4f} ({flips} of {cmp['n']} camera faces flip)"
            )
            sec["passed"] = False


# ---- report --------------------------------------------------------------------------------

def _fmt(v: float | None, nd: int = 4) -> str:
    return "—" if v is None else f"{v:.{nd}f}"


def _fmt_pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.2f} %"


def _fmt_pp(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:+.2f} pp"


def _check_report_dir(out_dir: Path) -> None:
    """Refuse an unusable report folder before spending a minute on inference."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"cannot write the report to {out_dir}: it is a file, not a folder")
    parent = out_dir if out_dir.exists() else next((p for p in out_dir.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write the report to {out_dir}: {parent} is not writable")


def write_report(report: dict[str, Any], out_dir: Path, *, images, ref_probs, cands, cand_probs, y, labels) -> None:
    """report.json, report.md and the pictures, all staged and published together."""
    from export import plots

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create report directory {out_dir}: {e.strerror}") from None
    try:
        with staging_dir(out_dir) as stage:
            pictures: dict[str, list[str]] = {"reference": []}
            if y is not None:
                f = "confusion_reference.png"
                plots.confusion_png(stage / f, M.confusion(ref_probs[0], y, len(labels)), labels,
                                    f"reference: {Path(report['reference']['path']).name}")
                pictures["reference"].append(f)
            for k, (c, p, p_ref, sec) in enumerate(zip(cands, cand_probs, ref_probs, report["candidates"],
                                                          strict=True)):
                stem = f"{k + 1:02d}_{_safe(c.path.name)}"
                pics = []
                if y is not None:
                    plots.confusion_png(stage / f"confusion_{stem}.png", M.confusion(p, y, len(labels)), labels,
                                        f"candidate: {c.path.name}")
                    plots.reliability_png(stage / f"reliability_{stem}.png", M.reliability(p_ref, y),
                                          M.reliability(p, y), ("reference", c.path.name),
                                          (sec["reference_ece"], sec["ece"]))
                    pics += [f"confusion_{stem}.png", f"reliability_{stem}.png"]
                worst = sec["disagreements"]["worst"][: report_worst(report)]
                if worst:
                    faces = [images.images[w["index"]] for w in worst]
                    captions = [
                        f"ref {w['reference']} {w['reference_p']:.2f}\ncand {w['candidate']} {w['candidate_p']:.2f}"
                        + (f"\ntrue {w['true']}" if w["true"] else "")
                        for w in worst
                    ]
                    plots.contact_sheet_png(stage / f"disagreements_{stem}.png", faces, captions,
                                            f"{c.path.name}: worst disagreements (by reference margin)")
                    pics.append(f"disagreements_{stem}.png")
                sec["pictures"] = pics
                pictures[c.path.name] = pics
            report["pictures"] = pictures
            (stage / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
            (stage / "report.md").write_text(render_markdown(report))
            publish(stage, out_dir)
    except OSError as e:
        raise ExportError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None


def report_worst(report: dict[str, Any]) -> int:
    return int(report.get("worst", 24))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def render_markdown(r: dict[str, Any]) -> str:
    ref, data, th = r["reference"], r["data"], r["thresholds"]
    out = [
        "# feredge parity report",
        "",
        f"**{'PASSED' if r['passed'] else 'FAILED'}** — {len(r['candidates'])} candidate(s) against "
        f"`{ref['path']}` on {data['n']} faces of `{data['path']}` (split `{data['split']}`"
        + (", labelled" if data["labelled"] else ", unlabelled: agreement only") + ").",
        "",
        "All inputs were prepared once per candidate contract with `edge.preprocess`; the reference "
        "saw exactly the candidates' tensors.",
        "",
    ]
    if r.get("failures"):
        out += ["## Failures", ""] + [f"- {f}" for f in r["failures"]] + [""]
    out += [
        "## Summary",
        "",
        f"Reference accuracy {_fmt_pct(ref['accuracy'])}, ECE {_fmt(ref['ece'])} "
        f"(after temperature scaling, T={_fmt(ref['temperature'], 3)}: {_fmt(ref['ece_ts'])}).",
        "",
        f"| candidate | kind | agreement | agreement (margin > {th['margin']}) | accuracy | Δ accuracy | "
        "mean abs Δp | max abs Δp | mean KL | ECE | ECE (T-scaled) | threshold | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in r["candidates"]:
        out.append(
            f"| `{c['name']}` | {c['kind']} | {c['agreement']:.4f} | {_fmt(c['agreement_margin'])} "
            f"(n={c['n_margin']}) | {_fmt_pct(c['accuracy'])} | {_fmt_pp(c['accuracy_delta'])} | "
            f"{c['mean_abs_dp']:.4f} | {c['max_abs_dp']:.4f} | {c['mean_kl']:.4f} | {_fmt(c['ece'])} | "
            f"{_fmt(c['ece_ts'])} | ≥ {c['thresholds']['min_agreement']:.4f} | "
            f"{'pass' if c['passed'] else 'FAIL'} |"
        )
    out.append("")
    if ref["per_class"]:
        out += ["## Per-class recall", "", "| class | reference | "
                + " | ".join(f"`{c['name']}` (Δ)" for c in r["candidates"]) + " |",
                "|---|---|" + "---|" * len(r["candidates"])]
        for lab in r.get("classes", r["labels"]):
            cells = []
            for c in r["candidates"]:
                pc = (c["per_class"] or {}).get(lab) or {}
                cells.append(f"{_fmt(pc.get('recall'), 3)} ({_fmt_pp(pc.get('delta'))})")
            out.append(f"| {lab} | {_fmt(ref['per_class'].get(lab), 3)} | " + " | ".join(cells) + " |")
        out.append("")
    pics = r.get("pictures", {})
    if pics.get("reference"):
        out += ["## Reference", "", *[f"![{p}]({p})" for p in pics["reference"]], ""]
    for c in r["candidates"]:
        out += [f"## `{c['name']}`", ""]
        if c["failures"]:
            out += [f"- **{f}**" for f in c["failures"]] + [""]
        if c.get("notes"):
            out += [f"- note: {f}" for f in c["notes"]] + [""]
        fo = c.get("footage")
        if fo:
            out += [f"Real footage ({', '.join(f'`{Path(s).name}`' for s in fo['sources'])}: {fo['frames']} frames, "
                    f"{fo['faces']} faces): agreement {_fmt(fo.get('agreement'))}, margin > {th['margin']}: "
                    f"{_fmt(fo.get('agreement_margin'))}, mean abs Δp {_fmt(fo.get('mean_abs_dp'))}.", ""]
        d = c["disagreements"]
        out += [f"{d['count']} disagreement(s). Most confident reference first:", ""]
        if d["worst"]:
            out += ["| id | reference | candidate | reference margin | true |", "|---|---|---|---|---|"]
            for w in d["worst"][:10]:
                out.append(
                    f"| `{w['id']}` | {w['reference']} {w['reference_p']:.3f} | {w['candidate']} "
                    f"{w['candidate_p']:.3f} | {w['reference_margin']:.3f} | {w['true'] or '—'} |"
                )
            out.append("")
        for p in c.get("pictures", []):
            out += [f"![{p}]({p})", ""]
    out += [f"_Generated in {r.get('elapsed_s', 0):.1f} s._", ""]
    return "\n".join(out)


# ---- end-to-end (train/serve skew) building blocks --------------------------------------------

def read_frames(video: str | Path, every: int = 4, limit: int | None = None) -> list[np.ndarray]:
    """Every ``every``-th frame of a video file (or a still image) as BGR arrays, through
    :func:`edge.sources.open_source`: the decoder the device uses."""
    from edge.sources import open_source

    try:
        src = open_source(Path(video))
    except FeredgeError as e:
        raise ExportError(str(e)) from None
    frames = []
    try:
        for i, frame in enumerate(src):
            if i % every == 0:
                frames.append(frame.image)
                if limit is not None and len(frames) >= limit:
                    break
    except FeredgeError as e:
        raise ExportError(str(e)) from None
    finally:
        src.close()
    if not frames:
        raise ExportError(f"no frames decoded from {video}")
    return frames


@dataclass
class RuntimeFace:
    """One face as the device saw it: where, the crop it classified, and its probabilities."""

    source: str
    frame: int
    box: tuple[int, int, int, int]
    crop: np.ndarray  # BGR (or grey) crop of the full frame, contract margin applied
    probs: np.ndarray  # the runtime's probabilities, in the contract's label order


def runtime_faces(frames: list[np.ndarray], classifier, detector=None, source: str = "") -> list[RuntimeFace]:
    """Run the device pipeline (:class:`edge.pipeline.Pipeline`: Haar detection on the full
    frame, the contract's margin, :mod:`edge.preprocess`, the int8 interpreter) on each frame and
    keep each face's crop, so a second, independent preparation can be compared on the same
    pixels."""
    from edge.pipeline import Pipeline
    from edge.preprocess import crop_face

    pipe = Pipeline(classifier, detector)
    margin = classifier.contract.input.face_margin
    out = []
    for k, frame in enumerate(frames):
        for face in pipe.faces(frame):
            b = tuple(int(v) for v in face.box[:4])
            probs = np.array([face.prediction.scores[lab] for lab in classifier.labels], np.float32)
            out.append(RuntimeFace(source, k, b, np.ascontiguousarray(crop_face(frame, b, margin)), probs))
    return out
