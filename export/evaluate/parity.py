"""Parity suite: do the exported artifacts behave like the desktop model they came from?

Why it exists: quantisation flips near-ties, but a wrong normalisation, colour order or label
order in an export flips confident faces too, and only a comparison on real faces shows it.
Each candidate's own contract (embedded, or its ``<name>.json`` sidecar) decides how faces are
prepared — through :mod:`feredge.edge.preprocess`, the same code the device runs — and the reference is
fed exactly the same tensors, so any difference comes from the artifact, not from preparation.

Runtimes are those of the device: TFLite through :class:`feredge.edge.model.Classifier` (LiteRT, one
face at a time, as on a Pi), ONNX through onnxruntime (batched when the graph allows it).

Footage and the end-to-end building blocks are in :mod:`feredge.export.evaluate.footage`, the report in
:mod:`feredge.export.evaluate.parity_report`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feredge.edge.contract import Contract, InputSpec, resolve
from feredge.edge.errors import FeredgeError
from feredge.edge.preprocess import prepare_batch, probabilities
from feredge.export import isolate
from feredge.export.errors import ExportError, NoTestPart
from feredge.export.evaluate import scoring as M
from feredge.export.evaluate.footage import read_footage
from feredge.export.evaluate.parity_report import (
    Pictured,
    check_report_dir,
    fmt,
    fmt_pct,
    fmt_pp,
    write_report,
)
from feredge.export.evaluate.runners import run_keras as run_reference
from feredge.export.evaluate.runners import run_onnx, run_tflite
from feredge.export.progress import progress_bar

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
    int8: bool  # quantised: held to the int8 bar (16x8 too: int8 weights, int16 activations)

    @property
    def kind(self) -> str:
        precision = "16x8" if ".16x8." in self.path.name else "int8" if self.int8 else "float"
        return f"{precision} {self.format}"


@dataclass
class ParityResult:
    report: dict[str, Any]
    passed: bool
    report_dir: Path | None = None
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        r = self.report
        ref = r["reference"]
        lines = [f"reference {ref['path']}: accuracy {fmt_pct(ref.get('accuracy'))} on {r['data']['n']} faces"]
        for c in r["candidates"]:
            lines.append(
                f"{'PASS' if c['passed'] else 'FAIL'} {c['path']} ({c['kind']}): agreement {c['agreement']:.4f} "
                f"(margin>{r['thresholds']['margin']}: {fmt(c['agreement_margin'])}), "
                f"accuracy {fmt_pct(c['accuracy'])} (Δ {fmt_pp(c['accuracy_delta'])}), "
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
        int8 = any(v.dtype in ("int8", "uint8") for v in q.values()) or ".int8." in p.name or ".16x8." in p.name
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
    from feredge.export.calibration import read_source

    if not Path(cfg.data).exists():
        raise ExportError(f"data not found: {cfg.data}")
    try:
        if cfg.split is not None:
            images, part = read_source(cfg.data, part=cfg.split, usage=cfg.usage, progress=False), cfg.split
        else:
            try:
                images, part = read_source(cfg.data, part="test", usage=cfg.usage, progress=False), "test"
            except NoTestPart as e:  # only a source without a test part; a damaged one is an error
                log.info("%s; comparing on the whole source", e)
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
    from feredge.export.load.model import load_model

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
    isolate.phase("parity_candidate", f"running {c.path.name} on {len(x)} faces", c.path.name)
    if c.format == "tflite":
        raw = run_tflite(c.path, c.contract, x, progress=progress)
    else:
        raw = run_onnx(c.path, c.contract, x, batch_size=batch_size, progress=progress)
    return probabilities(raw, c.contract.output.activation, c.contract.output.temperature)


# ---- the suite -----------------------------------------------------------------------------

def _seeded_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2:])


def _ts_ece(p: np.ndarray, truth: _Truth) -> tuple[float, float]:
    """ECE after temperature scaling: T fitted on one seeded half, ECE measured on the other."""
    y, fit, held = truth.y, truth.fit, truth.held
    assert y is not None
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


@dataclass
class _Inputs:
    """What a run compares on, all checked before any inference."""

    cands: list[Candidate]
    images: Any
    part: str
    loaded: Any
    labels: list[str]
    classes: list[str]
    y: np.ndarray | None


def _inputs(cfg: ParityConfig, timings: dict[str, float]) -> _Inputs:
    if not cfg.candidates:
        raise ExportError("no --candidate given")
    if not Path(cfg.reference).exists():
        raise ExportError(f"reference model not found: {cfg.reference}")
    cands = [load_candidate(c) for c in cfg.candidates]
    for f in cfg.footage:
        if not Path(f).is_file():
            raise ExportError(f"footage not found: {f}")
    if cfg.report_dir:
        check_report_dir(Path(cfg.report_dir))
    t = time.perf_counter()
    images, part = _read_data(cfg)
    timings["read_data"] = time.perf_counter() - t
    t = time.perf_counter()
    loaded = _load_reference(cfg)
    timings["load_reference"] = time.perf_counter() - t
    labels = _check_labels(cands, loaded, cfg.reference)
    n_out = int(np.prod(tuple(loaded.model.outputs[0].shape)[1:]))
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
    return _Inputs(cands, images, part, loaded, labels, classes, y)


@dataclass
class _Truth:
    """What probabilities are scored against: true classes (None: unlabelled faces), the class
    names, and the seeded halves on which a temperature is fitted and its ECE measured."""

    y: np.ndarray | None
    classes: list[str]
    fit: np.ndarray
    held: np.ndarray


class _Tensors:
    """One preparation per distinct input spec and one reference run per spec, shared by every
    model that uses it. The reference's own contract (the export's ``<name>.json`` beside the
    ``.keras``) says how the desktop model wants its faces; without one, it gets each
    candidate's preparation."""

    def __init__(self, cfg: ParityConfig, inp: _Inputs, timings: dict[str, float]) -> None:
        self.cfg, self.inp, self.timings = cfg, inp, timings
        self.ref_contract: Contract | None = getattr(inp.loaded, "contract_hint", None)
        self.prepared: dict[str, np.ndarray] = {}
        self.ref_probs: dict[str, np.ndarray] = {}

    def _time(self, key: str, t: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t

    def prepared_for(self, spec: InputSpec) -> np.ndarray:
        key = _spec_key(spec)
        if key not in self.prepared:
            t = time.perf_counter()
            faces = progress_bar(self.inp.images.images, desc="prepare", unit="face", enabled=self.cfg.progress)
            self.prepared[key] = prepare_batch(faces, spec)
            self._time("prepare", t)
        return self.prepared[key]

    def reference_for(self, c: Candidate) -> tuple[str, np.ndarray]:
        src = self.ref_contract if self.ref_contract is not None else c.contract
        spec = src.input.desktop()  # an export that folded the normalisation: the Keras model still wants it
        key = _spec_key(spec)
        if key not in self.ref_probs:
            model = self.inp.loaded.model
            _check_reference_input(model, spec, self.cfg.reference, c)
            x_ref = self.prepared_for(spec)
            t = time.perf_counter()
            isolate.phase("parity_reference", f"running the reference on {len(x_ref)} faces",
                          Path(self.cfg.reference).name)
            raw = run_reference(model, x_ref, self.cfg.batch_size, self.cfg.progress)
            self._time("reference", t)
            self.ref_probs[key] = probabilities(raw, src.output.activation, src.output.temperature)
        return key, self.ref_probs[key]


def run_parity(cfg: ParityConfig) -> ParityResult:
    """Run every candidate against the reference on the data and write the report."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    inp = _inputs(cfg, timings)
    n = len(inp.images.images)
    log.info("parity: %d faces from %s, %d candidate(s)", n, cfg.data, len(inp.cands))
    tensors = _Tensors(cfg, inp, timings)
    truth = _Truth(inp.y, inp.classes, *_seeded_halves(n, cfg.seed))
    results, cand_probs, ref_keys = [], [], []
    for c in inp.cands:
        ref_key, p_ref = tensors.reference_for(c)
        ref_keys.append(ref_key)
        x = tensors.prepared_for(c.contract.input)
        t = time.perf_counter()
        p = candidate_probs(c, x, cfg.batch_size, cfg.progress)
        if p.shape != p_ref.shape:
            raise ExportError(f"label mismatch between reference and candidate {c.path.name}: outputs of shape "
                              f"{p.shape[1:]} vs {p_ref.shape[1:]}")
        timings[c.path.name] = time.perf_counter() - t
        cand_probs.append(p)
        sec = _candidate_section(cfg, c, (p_ref, p), truth, inp.images)
        sec["notes"] = _contract_notes(tensors.ref_contract, c)
        results.append(sec)
    if cfg.footage:
        t = time.perf_counter()
        _footage_sections(cfg, inp.loaded.model, tensors.ref_contract, inp.cands, results)
        timings["footage"] = time.perf_counter() - t
    ref_section = _reference_section(cfg, inp.loaded, tensors.ref_probs[ref_keys[0]], truth)
    ref_section["contract"] = "own (beside the model)" if tensors.ref_contract is not None else "the candidates'"
    report = _report_doc(cfg, inp, ref_section, results, timings)
    out_dir = None
    if cfg.report_dir:
        out_dir = Path(cfg.report_dir)
        report["elapsed_s"] = round(time.perf_counter() - t0, 2)
        report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
        t = time.perf_counter()
        write_report(report, out_dir, Pictured(inp.images, inp.cands, cand_probs,
                                               [tensors.ref_probs[k] for k in ref_keys], inp.y, inp.classes))
        timings["report"] = time.perf_counter() - t
    report["elapsed_s"] = round(time.perf_counter() - t0, 2)
    report["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    log.debug("parity timings: %s", report["timings_s"])
    return ParityResult(report, report["passed"], out_dir, report["failures"])


def _report_doc(cfg: ParityConfig, inp: _Inputs, ref_section: dict[str, Any], results: list[dict[str, Any]],
                timings: dict[str, float]) -> dict[str, Any]:
    y, images = inp.y, inp.images
    return {
        "schema": SCHEMA,
        "reference": ref_section,
        "data": {
            "path": str(cfg.data),
            "split": inp.part,
            "n": len(images.images),
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
        "labels": inp.labels,
        "classes": inp.classes,
        "worst": cfg.worst,
        "timings_s": timings,
        "candidates": results,
        "passed": all(r["passed"] for r in results),
        "failures": [f"{r['path']}: {f}" for r in results for f in r["failures"]],
    }


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


def _per_class(p: np.ndarray, y: np.ndarray | None, labels: list[str]) -> np.ndarray | None:
    if y is None:
        return None
    return M.per_class_recall(p, y, max(len(labels), M.as_probs(p).shape[1]))


def _reference_section(cfg: ParityConfig, loaded: Any, p_ref: np.ndarray, truth: _Truth) -> dict[str, Any]:
    y, labels = truth.y, truth.classes
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
        ece_ts, t = _ts_ece(p_ref, truth)
        sec.update(
            accuracy=_finite(M.accuracy(p_ref, y)),
            ece=_finite(M.ece(p_ref, y)),
            ece_ts=_finite(ece_ts),
            temperature=t,
            per_class={lab: _finite(rec[i]) for i, lab in enumerate(labels)},
        )
    return sec


def _candidate_section(cfg: ParityConfig, c: Candidate, probs: tuple[np.ndarray, np.ndarray], truth: _Truth,
                       images: Any) -> dict[str, Any]:
    """``probs``: (reference, candidate) on the same faces."""
    p_ref, p = probs
    cmp = M.compare(p_ref, p, cfg.margin)
    min_agree = cfg.min_agreement
    if min_agree is None:
        min_agree = DEFAULT_MIN_AGREEMENT_INT8 if c.int8 else DEFAULT_MIN_AGREEMENT_FLOAT
    sec: dict[str, Any] = {
        "path": str(c.path), "name": c.path.name, "format": c.format, "int8": c.int8, "kind": c.kind,
        **{k: (_finite(v) if isinstance(v, float) else v) for k, v in cmp.items()},
        **dict.fromkeys(("accuracy", "reference_accuracy", "accuracy_delta", "ece", "reference_ece", "ece_ts",
                         "reference_ece_ts", "temperature", "reference_temperature", "per_class")),
        "contract_temperature": c.contract.output.temperature,
    }
    if truth.y is not None:
        sec.update(_labelled_fields(p_ref, p, truth))
    sec["disagreements"] = _disagreements(probs, truth, images, max(cfg.worst, 50))
    sec["thresholds"] = {"min_agreement": min_agree, "max_accuracy_drop": cfg.max_accuracy_drop}
    sec["failures"] = _failures(sec, cmp, min_agree, cfg.max_accuracy_drop)
    sec["passed"] = not sec["failures"]
    return sec


def _labelled_fields(p_ref: np.ndarray, p: np.ndarray, truth: _Truth) -> dict[str, Any]:
    """Accuracy, calibration and per-class recall of a candidate beside the reference's."""
    y, labels = truth.y, truth.classes
    assert y is not None
    acc, ref_acc = M.accuracy(p, y), M.accuracy(p_ref, y)
    rec, ref_rec = _per_class(p, y, labels), _per_class(p_ref, y, labels)
    ece_ts, t = _ts_ece(p, truth)
    ref_ece_ts, ref_t = _ts_ece(p_ref, truth)
    return {
        "accuracy": _finite(acc), "reference_accuracy": _finite(ref_acc), "accuracy_delta": _finite(acc - ref_acc),
        "ece": _finite(M.ece(p, y)), "reference_ece": _finite(M.ece(p_ref, y)),
        "ece_ts": _finite(ece_ts), "reference_ece_ts": _finite(ref_ece_ts),
        "temperature": t, "reference_temperature": ref_t,
        "per_class": {lab: {"recall": _finite(rec[i]), "reference_recall": _finite(ref_rec[i]),
                            "delta": _finite(rec[i] - ref_rec[i]), "n": int(np.sum(y == i))}
                      for i, lab in enumerate(labels)},
    }


def _disagreements(probs: tuple[np.ndarray, np.ndarray], truth: _Truth, images: Any, keep: int) -> dict[str, Any]:
    """Faces where the top label differs, most confident reference first: those flips matter."""
    (p_ref, p), y, names = probs, truth.y, truth.classes
    ref_top, cand_top = M.as_probs(p_ref).argmax(1), M.as_probs(p).argmax(1)
    margin = M.top2_margin(p_ref)
    idx = np.flatnonzero(ref_top != cand_top)
    idx = idx[np.argsort(-margin[idx], kind="stable")]
    ids = list(getattr(images, "ids", []) or [])
    worst = [{"index": int(i), "id": str(ids[i]) if i < len(ids) else str(i),
              "reference": names[ref_top[i]], "reference_p": float(M.as_probs(p_ref)[i, ref_top[i]]),
              "candidate": names[cand_top[i]], "candidate_p": float(M.as_probs(p)[i, cand_top[i]]),
              "reference_margin": float(margin[i]), "true": (names[y[i]] if y is not None and y[i] >= 0 else None)}
             for i in idx[:keep]]
    return {"count": len(idx), "worst": worst}


def _failures(sec: dict[str, Any], cmp: dict[str, Any], min_agree: float, max_drop: float) -> list[str]:
    out = []
    if cmp["agreement"] < min_agree:
        out.append(f"agreement {cmp['agreement']:.4f} < {min_agree:.4f} ({sec['disagreements']['count']} of "
                   f"{cmp['n']} faces flip; short by {min_agree - cmp['agreement']:.4f})")
    if sec["accuracy_delta"] is not None and -sec["accuracy_delta"] > max_drop:
        out.append(f"accuracy drops {-sec['accuracy_delta'] * 100:.2f} pp > {max_drop * 100:.2f} pp "
                   f"({sec['reference_accuracy']:.4f} -> {sec['accuracy']:.4f})")
    return out


def _footage_sections(cfg: ParityConfig, model, ref_contract: Contract | None, cands: list[Candidate],
                      results: list[dict[str, Any]]) -> None:
    """Agreement on faces found in real footage the way the device finds them (Haar detection on
    full frames, each candidate's contract margin): camera faces are not FER2013 faces, and a
    candidate that only holds up on the test set should not pass. Unlabelled: agreement only."""
    from feredge.edge.detect import FaceDetector
    from feredge.edge.preprocess import crop_face

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
        x, x_ref = prepare_batch(crops, c.contract.input), prepare_batch(ref_crops, src.input.desktop())
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
