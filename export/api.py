"""The exporter's Python API; ``feredge export`` is a thin layer over :func:`export_model`.

Example::

    from feredge.export.api import export_model
    result = export_model("emotion_model.hdf5", calibration="../shared/fer2013",
                          out_dir="out/fer", normalize="symmetric")
    print(result.summary())

Order of work, chosen so that bad input fails in seconds, before TensorFlow is even imported:
check the output folder, the options and the calibration source; then load the model, build the
contract, sample and prepare the calibration faces with :mod:`feredge.edge.preprocess`, convert, embed
the contract, score every artifact against the desktop model on held-out faces, and publish
everything at once from a staging folder (a failure leaves nothing behind).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from feredge.edge.contract import (
    FER2013_LABELS,
    Contract,
    InputSpec,
    Normalize,
    OutputSpec,
    parse_normalize,
)
from feredge.edge.errors import FeredgeError
from feredge.edge.fsutil import current_umask, publish, staging_dir
from feredge.edge.preprocess import prepare_batch
from feredge.export import calibration as cal
from feredge.export import isolate
from feredge.export.convert.formats import Converted
from feredge.export.errors import ExportError
from feredge.export.evaluate import report as rep
from feredge.export.load import steps as model_steps
from feredge.export.native import import_tf, quiet_native_logs

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What an export produced: files in ``out_dir``, the contract, the report (as written)."""

    out_dir: Path
    name: str
    files: dict[str, Path]
    contract: Contract
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        r = self.report
        lines = [f"Exported {self.name} to {self.out_dir}/"]
        for fname, a in r["artifacts"].items():
            m = a.get("metrics") or {}
            agree = "" if not m else (
                f"  agreement {100 * m['agreement']:.2f} % (margin>0.1: "
                + ("n/a" if m.get("agreement_margin") is None else f"{100 * m['agreement_margin']:.2f} %")
                + f"), max |dp| {m['max_abs_dp']:.3f}")
            lines.append(f"  {fname:<34} {a['bytes']:>10,} B{agree}")
        lines.append(f"  {rep.JSON_NAME}, {rep.MD_NAME}  (held-out: {r['heldout']['description']})")
        if r.get("edgetpu"):
            e = r["edgetpu"]
            lines.append(f"  Edge TPU: {e['mapped_ops']}/{e['total_ops']} ops mappable"
                         + (f"; compiled {e['compiled']}" if e.get("compiled") else ""))
            if e.get("instructions"):
                lines.append(f"  {e['instructions']}")
        for w in self.warnings:
            lines.append(f"  warning: {w}")
        lines.append(f"  total {r['timings'].get('total', 0):.1f} s")
        return "\n".join(lines)


# ---- model loading --------------------------------------------------------------------------

def _load(path: str | os.PathLike[str], **kw: Any) -> tuple[Any, Any, Any]:
    """(LoadedModel, input_geometry, output_kind) from :mod:`feredge.export.load.model`."""
    from feredge.export.load.model import input_geometry, load_model, output_kind

    return load_model(path, **kw), input_geometry, output_kind


def _image_view(model: Any, hwc: tuple[int, int, int]) -> Any:
    """The model seen through an (N, H, W, C) input: a grey (N, H, W) model (an MLP on 28x28)
    gets a Reshape in front so every converter and runner feeds it the same NHWC batch."""
    if len(model.inputs[0].shape) == 4:
        return model
    import keras

    h, w, c = hwc
    inp = keras.Input((h, w, c), name="image")
    return keras.Model(inp, model(keras.layers.Reshape((h, w))(inp)), name=f"{model.name}_nhwc")


# ---- options ------------------------------------------------------------------------------

def parse_labels(value: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """``--labels``: a comma list, or a file with one label per line (``#`` comments allowed)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value]
    else:
        p = Path(value)
        if "," not in value and p.is_file():
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise ExportError(f"cannot read labels file {p}: {e}") from None
            items = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        else:
            items = [s.strip() for s in value.split(",")]
    if not items or any(not s for s in items):
        raise ExportError(f"--labels {value!r} has an empty label")
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise ExportError(f"--labels repeats {', '.join(dup)}")
    return items


def _check_out_dir(out_dir: str | os.PathLike[str]) -> tuple[Path, bool]:
    """Fail before any work when the output folder cannot be written. Returns (path, created)."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"output directory {out} is not writable: it is a file")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".feredge-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ExportError(f"output directory {out} is not writable: {e.strerror or e}") from None
    return out, created


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("feredge", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert", "numpy",
                 "opencv-python-headless"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


class _Phases:
    def __init__(self, verbose: bool) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.times: dict[str, float] = {}
        self.verbose = verbose

    def start(self, what: str, key: str | None = None, artifact: str | None = None) -> None:
        """``key``: a phase that runs native code (the crash report names it and ``artifact``)."""
        log.log(logging.INFO if self.verbose else logging.DEBUG, "%s", what)
        if key is not None:
            isolate.phase(key, what, artifact)

    def done(self, key: str) -> None:
        now = time.perf_counter()
        self.times[key] = self.times.get(key, 0.0) + now - self.last
        self.last = now


# ---- the export ---------------------------------------------------------------------------

ONNX_CALIBRATIONS = ("auto", "minmax", "percentile", "entropy")


@dataclass
class ExportOptions:
    """Everything ``feredge export`` can be told, checked in :meth:`validate` before any work.

    ``eval_samples`` caps the held-out check (default: the whole test part of the calibration
    source, or 1000 faces disjoint from the calibration sample when it has no test part)."""

    calibration: str | os.PathLike[str]
    out_dir: str | os.PathLike[str] = "out"
    architecture: str | None = None
    labels: str | list[str] | None = None
    normalize: str | None = None
    resize: str | None = None
    color: str | None = None
    face_margin: float | None = None
    usage: str | None = None
    samples: int = 500
    seed: int = 0
    name: str | None = None
    keras1_theano: bool = False
    edgetpu: bool = False
    int16_activations: bool = False
    trust_model: bool = False
    progress: bool = True
    eval_samples: int | None = None
    onnx_calibration: str = "auto"
    selection_samples: int = 1000
    fold: bool = True
    # parsed by validate()
    label_list: list[str] | None = field(default=None, init=False)
    norm: tuple[float, float] | None = field(default=None, init=False)

    def validate(self) -> ExportOptions:
        if self.samples <= 0:
            raise ExportError(f"--samples must be positive, got {self.samples}")
        if self.selection_samples < 0:
            raise ExportError(f"--selection-samples must be 0 or more, got {self.selection_samples}")
        if self.eval_samples is not None and self.eval_samples <= 0:
            raise ExportError(f"--eval-samples must be positive, got {self.eval_samples}")
        if self.onnx_calibration not in ONNX_CALIBRATIONS:
            raise ExportError(f"unknown ONNX calibration method {self.onnx_calibration!r} "
                              f"({', '.join(ONNX_CALIBRATIONS)})")
        if self.face_margin is not None and not 0.0 <= self.face_margin <= 2.0:
            raise ExportError(f"--face-margin must be between 0 and 2, got {self.face_margin}")
        n = self.name
        if n is not None and (not n.strip() or "/" in n or "\\" in n or n.startswith(".")):
            raise ExportError(f"--name {n!r} is not a plain file name")
        self.norm = parse_normalize(self.normalize) if self.normalize is not None else None
        self.label_list = parse_labels(self.labels)
        return self


class _Run:
    """One export's phase timer and warnings (each warning is logged once and reported)."""

    def __init__(self, opts: ExportOptions) -> None:
        self.opts = opts
        self.ph = _Phases(opts.progress)
        self.warnings: list[str] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s", msg)


@dataclass
class _Loaded:
    lm: Any  # feredge.export.load.model.LoadedModel
    view: Any  # the Keras model seen through an NHWC batch
    hwc: tuple[int, int, int]
    activation: str
    n_out: int


@dataclass
class _Sets:
    """Faces prepared for the device (``x_*``) and for the desktop model (``x_*_ref``: differs
    only when the normalisation is folded into the artifacts)."""

    source: cal.ImageSet  # what calib, held and the selection faces were drawn from
    calib: cal.ImageSet
    x_cal: Any
    held: cal.ImageSet
    x_held: Any
    x_held_ref: Any
    y_held: Any
    x_sel: Any = None  # selection faces: held out from calibration, never the test part
    x_sel_ref: Any = None


def export_model(model: str | os.PathLike[str], options: ExportOptions | None = None, **kwargs: Any) -> ExportResult:
    """Convert ``model`` into ``<name>.int8.tflite``, ``<name>.onnx``, ``<name>.int8.onnx``,
    ``<name>.keras`` and ``<name>.json`` in ``out_dir``, plus ``export-report.json/.md``.

    Pass an :class:`ExportOptions` or its fields as keywords. Raises :class:`ExportError` /
    :class:`~feredge.edge.errors.ContractError` for bad input.
    """
    opts = (options or ExportOptions(**kwargs)).validate()
    with quiet_native_logs(enabled=True):
        run = _Run(opts)
        if not Path(model).exists():
            raise ExportError(f"model not found: {model}")
        run.ph.start("reading calibration source")
        source = cal.read_source(opts.calibration, "train", usage=opts.usage, progress=opts.progress)
        run.ph.done("read_source")
        out, created = _check_out_dir(opts.out_dir)
        try:
            return _export(run, model, source, out)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    out.rmdir()  # only if still empty: never touch files that were there before
            raise


def _export(run: _Run, model: Any, source: cal.ImageSet, out: Path) -> ExportResult:
    """load -> contract -> calibration sets -> convert -> score -> report, published at once."""
    loaded = _load_phase(run, model)
    contract = _contract_phase(run, loaded)
    sets = _sets_phase(run, source, contract)
    _provenance(run, contract, loaded.lm, sets.calib)
    with staging_dir(out) as stage:
        conv = _convert_phase(run, loaded, contract, sets, stage, out)
        scores = _score_phase(run, loaded.view, contract, conv, sets)
        report = _report_phase(run, loaded, contract, sets, conv, scores)
        files = {a.name: out / a.name for a in conv.artifacts if a.path.exists()}
        files.update({f"{contract.name}.json": out / f"{contract.name}.json", rep.JSON_NAME: out / rep.JSON_NAME,
                      rep.MD_NAME: out / rep.MD_NAME})
        _readable(stage)
        publish(stage, out)
    return ExportResult(out_dir=out, name=contract.name, files=files, contract=contract, report=rep._clean(report),
                        warnings=run.warnings)


def _load_phase(run: _Run, model: Any) -> _Loaded:
    o = run.opts
    run.ph.start("importing TensorFlow")
    import_tf()
    run.ph.done("import_tf")
    run.ph.start("loading the model", "load_model", Path(str(model)).name)
    lm, input_geometry, output_kind = _load(model, architecture=o.architecture, keras1_theano=o.keras1_theano,
                                            trust_model=o.trust_model)
    hwc = input_geometry(lm.model)
    activation, n_out = output_kind(lm.model)
    run.ph.done("load_model")
    return _Loaded(lm, _image_view(lm.model, hwc), hwc, activation, n_out)


def _labels(run: _Run, loaded: _Loaded) -> list[str]:
    """--labels, else the model's own, else the training hint's, else FER2013's when 7 outputs fit."""
    hint, n_out, activation = loaded.lm.contract_hint, loaded.n_out, loaded.activation
    if run.opts.label_list is not None:
        labels = run.opts.label_list
    elif loaded.lm.labels:
        labels = list(loaded.lm.labels)
    elif hint is not None and hint.labels:
        labels = list(hint.labels)
    elif n_out == len(FER2013_LABELS) and activation != "sigmoid":
        labels = list(FER2013_LABELS)
        run.warn("no labels given and none in the model: assuming the FER2013 CSV order "
                 f"({', '.join(FER2013_LABELS)}); pass --labels if the model was trained otherwise")
    elif n_out == 1 and activation == "sigmoid":
        labels = ["positive"]
        run.warn("single sigmoid output: a binary classifier; its one label is 'positive' (use --labels to name it)")
    else:
        raise ExportError(f"the model has {n_out} outputs and no labels; pass --labels with {n_out} names")
    if len(labels) != n_out:
        raise ExportError(f"{len(labels)} labels ({', '.join(labels)}) but the model has {n_out} outputs")
    return labels


def _normalization(run: _Run, loaded: _Loaded) -> tuple[float, float]:
    """--normalize, else the training hint's, else what the model does to its own input, else unit."""
    hint = loaded.lm.contract_hint
    if run.opts.norm is not None:
        return run.opts.norm
    if hint is not None:  # a previous export that folded it: the model still wants its own
        return hint.input.desktop().normalize.scale, hint.input.desktop().normalize.offset
    if getattr(loaded.lm, "normalize_hint", None):
        # The model rescales its own input (e.g. a stored preprocess_input): it wants 0-255 pixels.
        run.warn(f"no --normalize given: the model rescales its own input, so using {loaded.lm.normalize_hint}")
        return parse_normalize(loaded.lm.normalize_hint)
    run.warn("no --normalize given: assuming unit (x/255); pass --normalize symmetric for x/127.5-1 models")
    return parse_normalize("unit")


def _contract_phase(run: _Run, loaded: _Loaded) -> Contract:
    o, hint = run.opts, loaded.lm.contract_hint
    labels, norm = _labels(run, loaded), _normalization(run, loaded)
    h, w, c = loaded.hwc
    hint_in = hint.input if hint is not None else None
    col = "gray" if c == 1 else (o.color or (hint_in.color if hint_in and hint_in.color != "gray" else None) or "rgb")
    if c == 1 and o.color not in (None, "gray"):
        run.warn(f"--color {o.color} ignored: the model takes 1 channel (grey)")
    margin = o.face_margin if o.face_margin is not None else (hint_in.face_margin if hint_in else 0.0)
    model_norm = Normalize(float(norm[0]), float(norm[1]))
    # Folded: the artifacts take raw pixel codes and do the normalisation as their first op.
    fold = o.fold and (model_norm.scale, model_norm.offset) != (1.0, 0.0)
    spec = InputSpec(height=h, width=w, channels=c, color=col,
                     resize=o.resize or (hint_in.resize if hint_in else "linear"),
                     normalize=Normalize(1.0, 0.0) if fold else model_norm, face_margin=float(margin),
                     folded=model_norm if fold else None)
    stem = Path(loaded.lm.source).name
    for ext in (".keras", ".hdf5", ".h5"):
        stem = stem.removesuffix(ext)
    temperature = hint.output.temperature if hint is not None else 1.0
    return Contract(name=o.name or stem, labels=labels, input=spec,
                    output=OutputSpec(activation=loaded.activation, temperature=temperature)).validate()


def _sets_phase(run: _Run, source: cal.ImageSet, contract: Contract) -> _Sets:
    """The calibration sample, the selection faces and the held-out faces, prepared by
    :mod:`feredge.edge.preprocess`."""
    o, ph = run.opts, run.ph
    dev, desk = contract.input, contract.input.desktop()
    ph.start(f"sampling {o.samples} calibration faces")
    calib = source.sample(o.samples, o.seed, progress=o.progress)
    x_cal = prepare_batch(calib.images, dev)
    ph.done("calibration_data")
    held = cal.read_heldout(o.calibration, calib, n=o.eval_samples, seed=o.seed, usage=o.usage, source=source,
                            progress=o.progress)
    if held is calib:
        run.warn("no held-out images: agreement is measured on the calibration sample")
    x_held = prepare_batch(held.images, dev)
    sets = _Sets(source, calib, x_cal, held, x_held, prepare_batch(held.images, desk) if dev.folded else x_held,
                 held.labels_for(contract.labels))
    ph.done("heldout_data")
    if len(calib) < o.samples:
        run.warn(f"calibration used {len(calib)} images (fewer than --samples {o.samples})")
    if calib.skipped or source.skipped:
        run.warn(f"{calib.skipped + source.skipped} unreadable calibration image(s) skipped")
    if o.selection_samples:
        _selection_faces(run, sets, contract)
    return sets


MIN_SELECTION = 50


def _selection_faces(run: _Run, sets: _Sets, contract: Contract) -> None:
    """Faces from the calibration source that neither calibrate nor measure the export."""
    o = run.opts
    used = sorted(set(sets.calib.ids) | set(sets.calib.skipped_ids) | set(sets.held.ids))
    try:
        sel = sets.source.sample(o.selection_samples, o.seed + 1, exclude=used, progress=o.progress)
    except ExportError:
        sel = None
    if sel is None or len(sel) < MIN_SELECTION:
        run.warn(f"only {0 if sel is None else len(sel)} calibration-source faces left beyond the calibration "
                 f"sample (fewer than {MIN_SELECTION}): int8 ranges are the converter's min-max, not selected")
        return
    sets.x_sel = prepare_batch(sel.images, contract.input)
    sets.x_sel_ref = prepare_batch(sel.images, contract.input.desktop()) if contract.input.folded else sets.x_sel
    run.ph.done("selection_data")


def _provenance(run: _Run, contract: Contract, lm: Any, calib: cal.ImageSet) -> None:
    contract.provenance = {
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"file": Path(lm.source).name, "sha256": lm.source_sha256, "format": lm.source_format},
        "repairs": list(lm.repairs),
        "calibration": {"description": calib.description, "samples": len(calib), "seed": run.opts.seed,
                        "sha256": calib.sha256(), "skipped": calib.skipped,
                        "onnx_method": run.opts.onnx_calibration},
        "tools": _tool_versions(),
    }
    hint = lm.contract_hint
    if hint is not None and "training" in hint.provenance:
        # How the model was trained (feredge train's release) travels on with its exports.
        contract.provenance["training"] = hint.provenance["training"]


def _device_view(view: Any, spec: InputSpec) -> Any:
    """The model as the artifacts take it: raw pixel codes in, the folded normalisation as its
    first op (the TFLite converter merges it into the first convolution's weights and bias)."""
    if spec.folded is None:
        return view
    if model_steps.is_tf_keras(view):
        import tf_keras as k
    else:
        import keras as k
    h, w, c = (spec.height, spec.width, spec.channels)
    inp = k.Input((h, w, c), name="pixels")
    out = view(k.layers.Rescaling(spec.folded.scale, spec.folded.offset, name="folded_normalize")(inp))
    return k.Model(inp, out, name=f"{view.name}_pixels")


def _selection(run: _Run, loaded: _Loaded, contract: Contract, sets: _Sets) -> Any:
    """The selection faces with the desktop model's probabilities on them (None: no selection)."""
    from feredge.export.convert import tflite
    from feredge.export.evaluate import runners

    if sets.x_sel is None:
        return None
    p_ref = runners.probs(runners.run_keras(loaded.view, sets.x_sel_ref), contract)
    return tflite.Selection(sets.x_sel, p_ref, contract.output.activation)


def _convert_phase(run: _Run, loaded: _Loaded, contract: Contract, sets: _Sets, stage: Path, out: Path) -> Converted:
    """Every target format into ``stage`` (:data:`feredge.export.convert.formats.FORMATS`, in
    order), the contract embedded in each; the Edge TPU on request."""
    from feredge.export.convert import formats

    job = formats.ConvertJob(run=run, model=_device_view(loaded.view, contract.input), desktop=loaded.lm,
                             contract=contract, x_cal=sets.x_cal, selection=_selection(run, loaded, contract, sets),
                             out=out, built=formats.Converted(stage))
    return formats.convert_all(job, derived=("tflite-edgetpu",) if run.opts.edgetpu else ())


@dataclass
class _Score:
    """One artifact against the desktop model on the held-out faces."""

    metrics: dict[str, Any]  # feredge.export.evaluate.scoring.compare
    accuracy: float | None  # None: unlabelled held-out faces

    def to_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics, "accuracy": self.accuracy}


@dataclass
class _Scores:
    desktop_accuracy: float | None
    artifacts: dict[str, _Score] = field(default_factory=dict)  # by file name


def _score_phase(run: _Run, view: Any, contract: Contract, conv: Converted, sets: _Sets) -> _Scores:
    """Every artifact against the desktop model on the held-out faces (the device's runners)."""
    from feredge.export.evaluate import runners
    from feredge.export.evaluate.scoring import compare

    run.ph.start(f"scoring artifacts on {len(sets.x_held)} held-out faces", "evaluate_keras", "desktop model")
    p_ref = runners.probs(runners.run_keras(view, sets.x_held_ref), contract)
    run.ph.done("evaluate_keras")
    scores = _Scores(_accuracy(p_ref, sets.y_held))
    for a in (a for a in conv.artifacts if a.scored):
        f = a.path
        key = f"evaluate_{f.name.removeprefix(contract.name + '.').replace('.', '_')}"
        run.ph.start(f"scoring {f.name}", key, f.name)
        if f.suffix == ".tflite":
            try:
                raw = runners.run_tflite(f, contract, sets.x_held)
            except FeredgeError as e:
                raise ExportError(f"the int8 TFLite does not load on the device runtime ({e}); the calibration "
                                  "sample may be too uniform for sane int8 ranges: give more varied images") from None
        else:
            raw = runners.run_onnx(f, contract, sets.x_held)
        p = runners.probs(raw, contract)
        scores.artifacts[f.name] = _Score(compare(p_ref, p), _accuracy(p, sets.y_held))
        run.ph.done(key)
    return scores


def _accuracy(p: Any, y: Any) -> float | None:
    from feredge.export.evaluate.scoring import accuracy

    return accuracy(p, y) if y is not None else None


def _artifact_entries(contract: Contract, conv: Converted, scores: _Scores) -> dict[str, dict[str, Any]]:
    """The report's ``artifacts``: each file written, its hash recorded in the contract."""
    entries: dict[str, dict[str, Any]] = {}
    for a in conv.artifacts:
        if not a.path.exists():
            continue
        contract.record_artifact(a.path)
        fields, score = a.to_dict(), scores.artifacts.get(a.name)
        entry = {**(score.to_dict() if score is not None else {}), "kind": fields.pop("kind"),
                 "bytes": a.path.stat().st_size, "sha256": contract.artifacts[a.name]["sha256"], **fields}
        if a.name in contract.quantization:
            entry["quantization"] = {k: vars(v) for k, v in contract.quantization[a.name].items()}
        entries[a.name] = entry
    return entries


def _report_phase(run: _Run, loaded: _Loaded, contract: Contract, sets: _Sets, conv: Converted,
                  scores: _Scores) -> dict[str, Any]:
    """The sidecar contract (artifact hashes recorded) and the export report, written into the stage."""
    artifacts = _artifact_entries(contract, conv, scores)
    contract.save(conv.stage / f"{contract.name}.json")
    run.ph.done("write")
    run.ph.times["total"] = time.perf_counter() - run.ph.t0
    spec, calib, held, y, source = contract.input, sets.calib, sets.held, sets.y_held, sets.source
    report = {
        "name": contract.name,
        "source": contract.provenance["source"],
        "input": f"{spec.height}x{spec.width}x{spec.channels} {spec.color}, resize {spec.resize}",
        "normalize": f"x*{spec.normalize.scale:.6g}{spec.normalize.offset:+.6g}",
        "output": loaded.activation,
        "labels": contract.labels,
        "calibration": {**contract.provenance["calibration"], "source": source.description,
                        "skipped": calib.skipped + source.skipped, "skipped_files": calib.skipped_ids[:20]},
        "heldout": {"description": held.description, "n": len(held), "skipped": held.skipped,
                    "skipped_files": held.skipped_ids[:20], "labelled": int((y >= 0).sum()) if y is not None else 0},
        "desktop_accuracy": scores.desktop_accuracy,
        "artifacts": artifacts,
        "edgetpu": conv.edgetpu.to_dict() if conv.edgetpu is not None else None,
        "repairs": list(loaded.lm.repairs),
        "warnings": run.warnings,
        "timings": {k: round(v, 2) for k, v in run.ph.times.items()},
        "tools": contract.provenance["tools"],
    }
    rep.write(report, conv.stage)
    return report


def _readable(stage: Path) -> None:
    """Atomic writes start as 0600 temp files; the device service usually runs as another user
    (systemd DynamicUser), so published files get the usual 0644 minus the umask."""
    mask = current_umask()  # read, never set: setting races with files other threads create
    for f in stage.iterdir():
        if f.is_file():
            f.chmod(0o644 & ~mask)


__all__ = ["ExportOptions", "ExportResult", "export_model", "parse_labels"]
