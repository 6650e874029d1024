"""The exporter's Python API; ``feredge export`` is a thin layer over :func:`export_model`.

Example::

    from export.api import export_model
    result = export_model("emotion_model.hdf5", calibration="../shared/fer2013",
                          out_dir="out/fer", normalize="symmetric")
    print(result.summary())

Order of work, chosen so that bad input fails in seconds, before TensorFlow is even imported:
check the output folder, the options and the calibration source; then load the model, build the
contract, sample and prepare the calibration faces with :mod:`edge.preprocess`, convert, embed
the contract, score every artifact against the desktop model on held-out faces, and publish
everything at once from a staging folder (a failure leaves nothing behind).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.contract import (
    FER2013_LABELS,
    Contract,
    InputSpec,
    Normalize,
    OutputSpec,
    QuantParams,
    embed,
    parse_normalize,
)
from edge.errors import FeredgeError
from edge.fsutil import current_umask, publish, staging_dir
from edge.preprocess import prepare_batch
from export import calibration as cal
from export import report as rep
from export.errors import ExportError
from export.progress import progress_bar

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


# ---- quiet TensorFlow -----------------------------------------------------------------------

@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Send C++ log spam (TensorFlow, MLIR, oneDNN: written straight to fd 2, deaf to
    TF_CPP_MIN_LOG_LEVEL before absl initialises) to a scratch file, while Python's own stderr
    (progress bars, log records, the CLI's error line) still reaches the terminal.
    ``FEREDGE_TF_LOGS=1`` or ``-v`` shows everything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not enabled or os.environ.get("FEREDGE_TF_LOGS") or log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        yield
        return
    scratch = tempfile.TemporaryFile()
    term = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True,
                            encoding=getattr(sys.stderr, "encoding", None) or "utf-8", errors="replace")
    old_stderr = sys.stderr
    moved = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old_stderr:
            moved.append(h)
            h.setStream(term)
    os.dup2(scratch.fileno(), 2)
    sys.stderr = term
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            term.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stderr
        for h in moved:
            h.setStream(old_stderr)
        with contextlib.suppress(Exception):
            term.close()
        scratch.seek(0)
        tail = scratch.read()[-4000:].decode("utf-8", "replace")
        scratch.close()
        if tail.strip():
            log.debug("native log output (tail):\n%s", tail)


def _import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    with contextlib.suppress(Exception):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    return tf


# ---- model loading --------------------------------------------------------------------------

def _load(path: str | os.PathLike[str], **kw: Any) -> tuple[Any, Any, Any]:
    """(LoadedModel, input_geometry, output_kind) from :mod:`export.load`."""
    from export.load import input_geometry, load_model, output_kind

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

    def start(self, what: str) -> None:
        log.log(logging.INFO if self.verbose else logging.DEBUG, "%s", what)

    def done(self, key: str) -> None:
        now = time.perf_counter()
        self.times[key] = self.times.get(key, 0.0) + now - self.last
        self.last = now


# ---- the export ---------------------------------------------------------------------------

def export_model(
    model: str | os.PathLike[str],
    *,
    calibration: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    architecture: str | None = None,
    labels: str | list[str] | None = None,
    normalize: str | None = None,
    resize: str | None = None,
    color: str | None = None,
    face_margin: float | None = None,
    usage: str | None = None,
    samples: int = 500,
    seed: int = 0,
    name: str | None = None,
    keras1_theano: bool = False,
    edgetpu: bool = False,
    trust_model: bool = False,
    progress: bool = True,
    eval_samples: int | None = None,
    onnx_calibration: str = "minmax",
) -> ExportResult:
    """Convert ``model`` into ``<name>.int8.tflite``, ``<name>.onnx``, ``<name>.int8.onnx``,
    ``<name>.keras`` and ``<name>.json`` in ``out_dir``, plus ``export-report.json/.md``.

    ``eval_samples`` caps the held-out check (default: the whole test part of the calibration
    source, or 1000 faces disjoint from the calibration sample when it has no test part).
    Raises :class:`ExportError` / :class:`~edge.errors.ContractError` for bad input.
    """
    with quiet_native_logs(enabled=True):
        return _export(
            model, calibration=calibration, out_dir=out_dir, architecture=architecture, labels=labels,
            normalize=normalize, resize=resize, color=color, face_margin=face_margin, usage=usage,
            samples=samples, seed=seed, name=name, keras1_theano=keras1_theano, edgetpu=edgetpu,
            trust_model=trust_model, progress=progress, eval_samples=eval_samples,
            onnx_calibration=onnx_calibration,
        )


def _export(model: str | os.PathLike[str], *, calibration: str | os.PathLike[str], out_dir: str | os.PathLike[str],
            architecture: str | None, labels: str | list[str] | None, normalize: str | None, resize: str | None,
            color: str | None, face_margin: float | None, usage: str | None, samples: int, seed: int,
            name: str | None, keras1_theano: bool, edgetpu: bool, trust_model: bool, progress: bool,
            eval_samples: int | None, onnx_calibration: str) -> ExportResult:
    ph = _Phases(progress)
    warnings: list[str] = []

    def warn(msg: str) -> None:
        warnings.append(msg)
        log.warning("%s", msg)

    # 1. cheap checks first: options, calibration source, output folder ------------------
    if samples <= 0:
        raise ExportError(f"--samples must be positive, got {samples}")
    if eval_samples is not None and eval_samples <= 0:
        raise ExportError(f"--eval-samples must be positive, got {eval_samples}")
    if onnx_calibration not in ("minmax", "percentile", "entropy"):
        raise ExportError(f"unknown ONNX calibration method {onnx_calibration!r} (minmax, percentile, entropy)")
    if face_margin is not None and not 0.0 <= face_margin <= 2.0:
        raise ExportError(f"--face-margin must be between 0 and 2, got {face_margin}")
    norm = parse_normalize(normalize) if normalize is not None else None
    label_arg = parse_labels(labels)
    if name is not None and (not name.strip() or "/" in name or "\\" in name or name.startswith(".")):
        raise ExportError(f"--name {name!r} is not a plain file name")
    if not Path(model).exists():
        raise ExportError(f"model not found: {model}")
    ph.start("reading calibration source")
    source = cal.read_source(calibration, "train", usage=usage, progress=progress)
    ph.done("read_source")
    out, created = _check_out_dir(out_dir)
    try:
        return _export_checked(
            model, source=source, calibration=calibration, out=out, architecture=architecture,
            label_arg=label_arg, norm=norm, resize=resize, color=color, face_margin=face_margin, usage=usage,
            samples=samples, seed=seed, name=name, keras1_theano=keras1_theano, edgetpu=edgetpu,
            trust_model=trust_model, progress=progress, eval_samples=eval_samples,
            onnx_calibration=onnx_calibration, ph=ph, warnings=warnings, warn=warn,
        )
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if still empty: never touch files that were there before
        raise


def _export_checked(model: Any, *, source: cal.ImageSet, calibration: Any, out: Path, architecture: str | None,
                    label_arg: list[str] | None, norm: tuple[float, float] | None, resize: str | None,
                    color: str | None, face_margin: float | None, usage: str | None, samples: int, seed: int,
                    name: str | None, keras1_theano: bool, edgetpu: bool, trust_model: bool, progress: bool,
                    eval_samples: int | None, onnx_calibration: str, ph: _Phases, warnings: list[str],
                    warn: Any) -> ExportResult:
    # 2. model ------------------------------------------------------------------------------
    ph.start("importing TensorFlow")
    _import_tf()
    ph.done("import_tf")
    ph.start("loading the model")
    lm, input_geometry, output_kind = _load(model, architecture=architecture, keras1_theano=keras1_theano,
                                            trust_model=trust_model)
    hwc = input_geometry(lm.model)
    activation, n_out = output_kind(lm.model)
    view = _image_view(lm.model, hwc)
    ph.done("load_model")
    hint: Contract | None = lm.contract_hint
    stem = Path(lm.source).name
    for ext in (".keras", ".hdf5", ".h5"):
        stem = stem.removesuffix(ext)
    name = name or stem

    # 3. contract ---------------------------------------------------------------------------
    if label_arg is not None:
        model_labels = label_arg
    elif lm.labels:
        model_labels = list(lm.labels)
    elif hint is not None and hint.labels:
        model_labels = list(hint.labels)
    elif n_out == len(FER2013_LABELS) and activation != "sigmoid":
        model_labels = list(FER2013_LABELS)
        warn("no labels given and none in the model: assuming the FER2013 CSV order "
             f"({', '.join(FER2013_LABELS)}); pass --labels if the model was trained otherwise")
    elif n_out == 1 and activation == "sigmoid":
        model_labels = ["positive"]
        warn("single sigmoid output: a binary classifier; its one label is 'positive' (use --labels to name it)")
    else:
        raise ExportError(f"the model has {n_out} outputs and no labels; pass --labels with {n_out} names")
    if len(model_labels) != n_out:
        raise ExportError(f"{len(model_labels)} labels ({', '.join(model_labels)}) but the model has {n_out} "
                          "outputs")
    if norm is None and hint is not None:
        norm = (hint.input.normalize.scale, hint.input.normalize.offset)
    if norm is None and getattr(lm, "normalize_hint", None):
        # The model rescales its own input (e.g. a stored preprocess_input): it wants 0-255 pixels.
        norm = parse_normalize(lm.normalize_hint)
        warn(f"no --normalize given: the model rescales its own input, so using {lm.normalize_hint}")
    if norm is None:
        norm = parse_normalize("unit")
        warn("no --normalize given: assuming unit (x/255); pass --normalize symmetric for x/127.5-1 models")
    h, w, c = hwc
    hint_in = hint.input if hint is not None else None
    col = "gray" if c == 1 else (color or (hint_in.color if hint_in and hint_in.color != "gray" else None) or "rgb")
    if c == 1 and color not in (None, "gray"):
        warn(f"--color {color} ignored: the model takes 1 channel (grey)")
    spec = InputSpec(height=h, width=w, channels=c, color=col,
                     resize=resize or (hint_in.resize if hint_in else "linear"),
                     normalize=Normalize(float(norm[0]), float(norm[1])),
                     face_margin=float(face_margin if face_margin is not None
                                       else (hint_in.face_margin if hint_in else 0.0)))
    contract = Contract(name=name, labels=model_labels, input=spec,
                        output=OutputSpec(activation=activation,
                                          temperature=hint.output.temperature if hint is not None else 1.0))
    contract.validate()

    # 4. data -------------------------------------------------------------------------------
    ph.start(f"sampling {samples} calibration faces")
    calib = source.sample(samples, seed, progress=progress)
    x_cal = prepare_batch(calib.images, spec)
    ph.done("calibration_data")
    held = cal.read_heldout(calibration, calib, n=eval_samples, seed=seed, usage=usage, source=source,
                            progress=progress)
    if held is calib:
        warnings.append("no held-out images: agreement is measured on the calibration sample")
    x_held = prepare_batch(held.images, spec)
    y_held = held.labels_for(model_labels)
    ph.done("heldout_data")
    if len(calib) < samples:
        warn(f"calibration used {len(calib)} images (fewer than --samples {samples})")
    if calib.skipped or source.skipped:
        warn(f"{calib.skipped + source.skipped} unreadable calibration image(s) skipped")

    contract.provenance = {
        "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"file": Path(lm.source).name, "sha256": lm.source_sha256, "format": lm.source_format},
        "repairs": list(lm.repairs),
        "calibration": {"description": calib.description, "samples": len(calib), "seed": seed,
                        "sha256": calib.sha256(), "skipped": calib.skipped, "onnx_method": onnx_calibration},
        "tools": _tool_versions(),
    }
    if hint is not None and "training" in hint.provenance:
        # How the model was trained (feredge train's release) travels on with its exports.
        contract.provenance["training"] = hint.provenance["training"]

    from export import edgetpu as etpu
    from export import onnxconv, runners, tflite
    from export.scoring import accuracy, compare

    files: dict[str, Path] = {}
    with staging_dir(out) as stage:
        # 5. conversions ------------------------------------------------------------------
        f_tfl = stage / f"{name}.int8.tflite"
        ph.start("converting to int8 TFLite")
        with progress_bar(total=len(x_cal), desc="int8 TFLite calibration", enabled=progress) as bar:
            data, fb = tflite.convert_int8(view, x_cal, progress_cb=bar.update)
        f_tfl.write_bytes(data)
        contract.quantization[f_tfl.name] = {"input": fb.quant(fb.inputs[0]), "output": fb.quant(fb.outputs[0])}
        ph.done("tflite_int8")

        f_onnx, f_qonnx = stage / f"{name}.onnx", stage / f"{name}.int8.onnx"
        ph.start("converting to ONNX")
        onnx_ops = onnxconv.convert_fp32(view, hwc, f_onnx)
        ph.done("onnx_fp32")
        with progress_bar(total=len(x_cal), desc="ONNX int8 calibration", enabled=progress) as bar:
            qonnx_ops = onnxconv.quantize_int8(f_onnx, f_qonnx, x_cal, method=onnx_calibration,
                                               progress_cb=bar.update)
        f32 = QuantParams("float32", 0.0, 0)
        contract.quantization[f_onnx.name] = {"input": f32, "output": f32}
        # QDQ: int8 inside, float I/O; recorded so the runtime does not quantise its input.
        contract.quantization[f_qonnx.name] = {"input": f32, "output": f32}
        ph.done("onnx_int8")

        f_keras = stage / f"{name}.keras"
        try:
            lm.model.save(str(f_keras))
        except Exception as e:  # a wrapped SavedModel may refuse; the export is still useful
            warn(f"could not save the desktop model as {f_keras.name}: {str(e).splitlines()[0][:160]}")
        ph.done("save_keras")

        for f in (f_tfl, f_onnx, f_qonnx):
            embed(f, contract)

        # 6. Edge TPU ---------------------------------------------------------------------
        etpu_res = None
        if edgetpu:
            ph.start("checking Edge TPU compatibility")
            etpu_res = etpu.check(fb)
            etpu_res = etpu.compile_model(f_tfl, stage, etpu_res, name=name, final_dir=out)
            for p in etpu_res.problems:
                warn(f"Edge TPU: {p}")
            if etpu_res.compiled:
                fc = stage / etpu_res.compiled
                comp_fb = tflite.read_flatbuffer(fc.read_bytes())
                contract.quantization[fc.name] = {"input": comp_fb.quant(comp_fb.inputs[0]),
                                                  "output": comp_fb.quant(comp_fb.outputs[0])}
                embed(fc, contract)
            ph.done("edgetpu")

        # 7. held-out check ---------------------------------------------------------------
        ph.start(f"scoring artifacts on {len(x_held)} held-out faces")
        p_ref = runners.probs(runners.run_keras(view, x_held), contract)
        ph.done("evaluate_keras")
        artifacts: dict[str, dict[str, Any]] = {}
        for f in (f_tfl, f_onnx, f_qonnx):
            if f is f_tfl:
                try:
                    raw = runners.run_tflite(f, contract, x_held)
                except FeredgeError as e:
                    raise ExportError(f"the int8 TFLite does not load on the device runtime ({e}); the calibration "
                                      "sample may be too uniform for sane int8 ranges: give more varied images"
                                      ) from None
            else:
                raw = runners.run_onnx(f, contract, x_held)
            p = runners.probs(raw, contract)
            artifacts[f.name] = {"metrics": compare(p_ref, p),
                                 "accuracy": accuracy(p, y_held) if y_held is not None else None}
            ph.done(f"evaluate_{f.name.removeprefix(name + '.').replace('.', '_')}")

        # 8. sidecar, report, publish -------------------------------------------------------
        op_lists = {f_tfl.name: fb.op_summary(), f_onnx.name: onnx_ops, f_qonnx.name: qonnx_ops}
        kinds = {f_tfl.name: "tflite-int8", f_onnx.name: "onnx-fp32", f_qonnx.name: "onnx-int8-qdq",
                 f_keras.name: "keras"}
        if etpu_res is not None and etpu_res.compiled:
            kinds[etpu_res.compiled] = "tflite-edgetpu"
        for fname in kinds:
            f = stage / fname
            if not f.exists():
                continue
            contract.record_artifact(f)
            files[fname] = out / fname
            entry = artifacts.setdefault(fname, {})
            entry.update({"kind": kinds[fname], "bytes": f.stat().st_size,
                          "sha256": contract.artifacts[fname]["sha256"]})
            if fname in op_lists:
                entry["ops"] = op_lists[fname]
            if fname in contract.quantization:
                entry["quantization"] = {k: vars(v) for k, v in contract.quantization[fname].items()}
        artifacts = {k: artifacts[k] for k in kinds if k in artifacts}
        sidecar = stage / f"{name}.json"
        contract.save(sidecar)
        files[sidecar.name] = out / sidecar.name
        ph.done("write")
        ph.times["total"] = time.perf_counter() - ph.t0
        report = {
            "name": name,
            "source": contract.provenance["source"],
            "input": f"{h}x{w}x{c} {col}, resize {spec.resize}",
            "normalize": f"x*{spec.normalize.scale:.6g}{spec.normalize.offset:+.6g}",
            "output": activation,
            "labels": model_labels,
            "calibration": {**contract.provenance["calibration"], "source": source.description,
                            "skipped": calib.skipped + source.skipped, "skipped_files": calib.skipped_ids[:20]},
            "heldout": {"description": held.description, "n": len(held), "skipped": held.skipped,
                        "skipped_files": held.skipped_ids[:20], "labelled": int((y_held >= 0).sum())
                        if y_held is not None else 0},
            "desktop_accuracy": accuracy(p_ref, y_held) if y_held is not None else None,
            "artifacts": artifacts,
            "edgetpu": etpu_res.to_dict() if etpu_res is not None else None,
            "repairs": list(lm.repairs),
            "warnings": warnings,
            "timings": {k: round(v, 2) for k, v in ph.times.items()},
            "tools": contract.provenance["tools"],
        }
        rep.write(report, stage)
        files[rep.JSON_NAME] = out / rep.JSON_NAME
        files[rep.MD_NAME] = out / rep.MD_NAME
        _readable(stage)
        publish(stage, out)
    written = rep._clean(report)
    return ExportResult(out_dir=out, name=name, files=files, contract=contract, report=written, warnings=warnings)


def _readable(stage: Path) -> None:
    """Atomic writes start as 0600 temp files; the device service usually runs as another user
    (systemd DynamicUser), so published files get the usual 0644 minus the umask."""
    mask = current_umask()  # read, never set: setting races with files other threads create
    for f in stage.iterdir():
        if f.is_file():
            f.chmod(0o644 & ~mask)


__all__ = ["ExportResult", "export_model", "parse_labels"]
