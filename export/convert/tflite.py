"""Full-integer int8 TFLite conversion, and a check of the flatbuffer that came out.

Why a SavedModel detour: handing a Keras 3 model to ``from_concrete_functions`` as the
``trackable_obj`` silently loses its variables. Keras 3's own ``model.export`` writes a
SavedModel whose signature we pin to a STATIC batch of 1 (the Edge TPU compiler and the Pi's
arena planner both want static shapes), and ``from_saved_model`` converts that reliably.

Why the check: the converter may quietly keep float islands (a DEQUANTIZE before an op it
could not quantise) — such a model runs on a CPU but not on an Edge TPU, and is slower. The
flatbuffer is parsed with LiteRT's schema module (pure Python, no interpreter needed).
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feredge.edge.contract import QuantParams
from feredge.edge.errors import one_line
from feredge.export.convert.formats import Artifact
from feredge.export.convert.ranges import STRATEGIES
from feredge.export.errors import ExportError
from feredge.export.load.steps import is_tf_keras

if TYPE_CHECKING:
    from feredge.export.convert.formats import ConvertJob

log = logging.getLogger(__name__)

_FLOAT_TYPES = {"FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "COMPLEX64", "COMPLEX128"}
# int32 holds biases, shapes and axes; int64 shows up as constant indices. Both are fine.
_ALLOWED_TYPES = {"INT8", "UINT8", "INT32", "INT64", "BOOL"}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # pragma: no cover - TensorFlow ships the same generated module
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


@dataclass
class OpInfo:
    index: int
    name: str
    version: int
    inputs: list[int]
    outputs: list[int]
    custom: str | None = None


@dataclass
class TensorInfo:
    index: int
    name: str
    type: str
    shape: list[int]
    shape_signature: list[int] | None
    scale: list[float] = field(default_factory=list)
    zero_point: list[int] = field(default_factory=list)
    constant: bool = False


@dataclass
class FlatbufferInfo:
    """What a .tflite holds, read straight from its flatbuffer."""

    ops: list[OpInfo]
    tensors: list[TensorInfo]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int

    def op_summary(self) -> list[dict[str, Any]]:
        """Distinct ops with their versions and counts, as the report and the Edge TPU check list them."""
        seen: dict[tuple[str, int], int] = {}
        for op in self.ops:
            seen[(op.name, op.version)] = seen.get((op.name, op.version), 0) + 1
        return [{"op": n, "version": v, "count": c} for (n, v), c in sorted(seen.items())]

    def quant(self, tensor_index: int) -> QuantParams:
        t = self.tensors[tensor_index]
        dtype = {"INT8": "int8", "UINT8": "uint8", "FLOAT32": "float32"}.get(t.type, t.type.lower())
        if dtype == "float32" or not t.scale:
            return QuantParams(dtype, 0.0, 0)
        return QuantParams(dtype, float(t.scale[0]), int(t.zero_point[0]) if t.zero_point else 0)


def op_code_names(model: Any) -> list[str]:
    """The builtin op name of each of a ``ModelT``'s operator codes (``OP_<n>`` when unknown)."""
    names = {v: k for k, v in vars(_schema().BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for oc in model.operatorCodes or []:
        code = max(int(oc.builtinCode), int(oc.deprecatedBuiltinCode))
        out.append(names.get(code, f"OP_{code}"))
    return out


def pack(model: Any, size_hint: int) -> bytes:
    """A (modified) ``ModelT`` written back as a flatbuffer."""
    import flatbuffers

    b = flatbuffers.Builder(size_hint + 1024)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def keeping_interpreter(data: bytes) -> Any:
    """A LiteRT interpreter that keeps every intermediate tensor readable, allocated."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # "intended for debugging": reading every tensor is the point here
        warnings.simplefilter("ignore", UserWarning)
        it = Interpreter(model_content=data, experimental_preserve_all_tensors=True, num_threads=1)
    it.allocate_tensors()
    return it


def read_flatbuffer(data: bytes) -> FlatbufferInfo:
    schema = _schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(data, 0)
    except Exception as e:  # a truncated or foreign file makes the generated reader raise anything
        raise ExportError(f"not a readable TFLite flatbuffer: {type(e).__name__}: {e}") from None
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    codes = []
    for oc, name in zip(model.operatorCodes or [], op_code_names(model), strict=True):
        custom = oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode
        codes.append((name, int(oc.version or 1), custom))
    ops: list[OpInfo] = []
    tensors: list[TensorInfo] = []
    inputs: list[int] = []
    outputs: list[int] = []
    for gi, sg in enumerate(model.subgraphs or []):
        base = len(tensors)
        for ti, t in enumerate(sg.tensors or []):
            q = t.quantization
            buf = model.buffers[t.buffer] if model.buffers is not None and t.buffer < len(model.buffers) else None
            tensors.append(TensorInfo(
                index=base + ti,
                name=(t.name.decode() if isinstance(t.name, bytes) else str(t.name)),
                type=type_names.get(t.type, str(t.type)),
                shape=[int(v) for v in (t.shape if t.shape is not None else [])],
                shape_signature=None if t.shapeSignature is None else [int(v) for v in t.shapeSignature],
                scale=[float(v) for v in (q.scale if q is not None and q.scale is not None else [])],
                zero_point=[int(v) for v in (q.zeroPoint if q is not None and q.zeroPoint is not None else [])],
                constant=buf is not None and buf.data is not None and len(buf.data) > 0,
            ))
        if gi == 0:
            inputs = [base + int(i) for i in (sg.inputs if sg.inputs is not None else [])]
            outputs = [base + int(i) for i in (sg.outputs if sg.outputs is not None else [])]
        for op in sg.operators or []:
            name, version, custom = codes[op.opcodeIndex]
            ops.append(OpInfo(
                index=len(ops),
                name=name if name != "CUSTOM" else f"CUSTOM:{custom}",
                version=version,
                inputs=[base + int(i) for i in (op.inputs if op.inputs is not None else []) if i >= 0],
                outputs=[base + int(i) for i in (op.outputs if op.outputs is not None else [])],
                custom=custom,
            ))
    return FlatbufferInfo(ops=ops, tensors=tensors, inputs=inputs, outputs=outputs,
                          subgraphs=len(model.subgraphs or []))


def verify_int8(data: bytes, what: str = "int8 TFLite") -> FlatbufferInfo:
    """Refuse anything that is not a static, full-integer model; the message names the op."""
    info = read_flatbuffer(data)
    if info.subgraphs != 1:
        raise ExportError(f"{what} has {info.subgraphs} subgraphs (control flow); expected one static graph")
    producer = {t: op for op in info.ops for t in op.outputs}
    boundary = set(info.inputs) | set(info.outputs)

    def where(t: TensorInfo) -> str:
        op = producer.get(t.index)
        return f"op #{op.index} {op.name}" if op else "a graph input"

    for i in info.inputs + info.outputs:
        t = info.tensors[i]
        if t.type not in ("INT8", "UINT8"):
            kind = "input" if i in info.inputs else "output"
            raise ExportError(f"{what}: {kind} tensor '{t.name}' is {t.type}, expected int8")
    for t in info.tensors:
        if t.shape_signature is not None and any(v < 0 for v in t.shape_signature):
            raise ExportError(
                f"{what}: tensor '{t.name}' of {where(t)} has a dynamic shape {t.shape_signature}; "
                "expected static shapes (batch 1)"
            )
        if t.type in _FLOAT_TYPES and not t.constant:
            users = [op for op in info.ops if t.index in op.inputs and op.name not in ("QUANTIZE", "DEQUANTIZE")]
            maker = producer.get(t.index)
            if users and (maker is None or maker.name == "DEQUANTIZE"):
                u = users[0]
                raise ExportError(f"{what}: op #{u.index} {u.name} has no int8 kernel and was left in {t.type} "
                                  f"(tensor '{t.name}'); replace that layer or export without it")
            raise ExportError(f"{what}: {where(t)} leaves tensor '{t.name}' in {t.type}; the model is not "
                              "fully integer (that op could not be quantised)")
        if t.type in _FLOAT_TYPES:
            raise ExportError(f"{what}: constant tensor '{t.name}' is {t.type}; the model is not fully integer")
        if t.type not in _ALLOWED_TYPES:
            raise ExportError(f"{what}: tensor '{t.name}' of {where(t)} is {t.type}, expected int8")
    for op in info.ops:
        if op.name.startswith("CUSTOM") or op.name in ("FLEX", "DELEGATE"):
            raise ExportError(f"{what}: op #{op.index} {op.name} is a custom/TF Select op; it will not run on "
                              "the device runtime")
        inner = not (set(op.inputs) | set(op.outputs)) & boundary
        # An inner QUANTIZE between integer tensors is a requantisation (one scale to another, e.g.
        # before a PACK of an unrolled recurrent layer's steps): a full-integer op. Every float
        # tensor was refused above, so only a DEQUANTIZE can still bring float into the graph.
        requantize = op.name == "QUANTIZE" and all(info.tensors[t].type in _ALLOWED_TYPES for t in op.inputs)
        if op.name in ("QUANTIZE", "DEQUANTIZE") and inner and not requantize:
            raise ExportError(f"{what}: op #{op.index} {op.name} sits inside the graph (only allowed at the "
                              "input/output boundary)")
    return info


def keras_to_saved_model(model: Any, input_shape: tuple[int, int, int], dest: Path) -> Path:
    """SavedModel with a static (1, H, W, C) float32 signature, via Keras 3's ExportArchive (a
    tf_keras model, loaded because Keras 3 cannot build it, through ``tf.saved_model.save``)."""
    import tensorflow as tf

    h, w, c = input_shape
    spec = tf.TensorSpec((1, h, w, c), tf.float32, name="input")
    if is_tf_keras(model):
        serve = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        tf.saved_model.save(model, str(dest), signatures=serve.get_concrete_function())
        return dest
    try:
        model.export(str(dest), format="tf_saved_model", input_signature=[spec], verbose=False)
    except TypeError:  # older Keras without ``verbose``
        model.export(str(dest), format="tf_saved_model", input_signature=[spec])
    return dest


def converter_error(e: BaseException) -> str:
    """The first line of a converter failure that names an op, not the whole MLIR dump."""
    text = str(e)
    for pat in (r"'([\w.]+)' op [^\n]*", r"[^\n]*not supported[^\n]*", r"[^\n]*error:[^\n]*"):
        m = re.search(pat, text)
        if m:
            return m.group(0).strip()[:300]
    return (text.strip().splitlines() or [type(e).__name__])[0][:300]


@dataclass
class Selection:
    """Faces held out from calibration (prepared as the device does) with the desktop model's
    probabilities on them: what each way of quantising is judged by. Never the test faces."""

    x: np.ndarray
    p_ref: np.ndarray
    activation: str

    def score(self, data: bytes) -> dict[str, float]:
        """Top-1 agreement and mean |dp| of an int8 flatbuffer against the desktop model."""
        return self.compare(run_int8(data, self.x))

    def compare(self, raw: np.ndarray) -> dict[str, float]:
        """Top-1 agreement and mean |dp| of any artifact's raw outputs on :attr:`x`."""
        from feredge.edge.preprocess import probabilities

        p = probabilities(raw, self.activation, 1.0)
        return {"agreement": round(float((p.argmax(1) == self.p_ref.argmax(1)).mean()), 5),
                "mean_abs_dp": round(float(np.abs(p - self.p_ref).mean()), 6)}


def run_int8(data: bytes, x: np.ndarray) -> np.ndarray:
    """Dequantised outputs of an int8 flatbuffer on a prepared float batch, one face per call,
    quantised and dequantised by :mod:`feredge.edge.preprocess` exactly as on the device."""
    from ai_edge_litert.interpreter import Interpreter

    from feredge.edge.preprocess import dequantize, quantize

    it = Interpreter(model_content=data, num_threads=1)
    it.allocate_tensors()
    d_in, d_out = it.get_input_details()[0], it.get_output_details()[0]
    (s_in, z_in), (s_out, z_out) = d_in["quantization"], d_out["quantization"]
    q_in, q_out = QuantParams("int8", float(s_in), int(z_in)), QuantParams("int8", float(s_out), int(z_out))
    out = np.empty((len(x), int(np.prod(d_out["shape"][1:]))), np.float32)
    for i in range(len(x)):
        it.set_tensor(d_in["index"], quantize(x[i:i + 1], q_in))
        it.invoke()
        out[i] = dequantize(it.get_tensor(d_out["index"]), q_out).reshape(-1)
    return out


@dataclass
class Int8Choice:
    """How the int8 TFLite was made: each strategy's score on the selection faces, and the pick."""

    strategy: str = "minmax"
    bias_corrected: bool = False
    weights_rounded: bool = False  # GPTQ (feredge.export.convert.wround) before the bias correction
    pinned_input: tuple[float, float] | None = None
    selection_faces: int = 0
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    final: dict[str, float] | None = None  # the kept model's score on the selection faces
    diagnosis: dict[str, Any] | None = None  # feredge.export.evaluate.int8diag, when the kept model agrees < 99 %
    calibrated: bytes = field(default=b"", repr=False)  # the converter's calibrated float model

    @property
    def kept(self) -> str:
        """The key of :attr:`scores` that the kept model scored."""
        return self.strategy + ("+gptq" if self.weights_rounded else "") + ("+bias" if self.bias_corrected else "")

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "bias_corrected": self.bias_corrected,
                "weights_rounded": self.weights_rounded, "kept": self.kept,
                "pinned_input": list(self.pinned_input) if self.pinned_input else None,
                "selection_faces": self.selection_faces, "scores": self.scores, "final": self.final,
                "diagnosis": self.diagnosis}


def _calibrate(model: Any, calib_x: np.ndarray, progress_cb: Callable[[int], None] | None,
               saved_model_dir: Path | None) -> bytes:
    """The float flatbuffer with the converter's calibrated min/max on every activation tensor."""
    import tensorflow as tf

    shape = tuple(int(v) for v in calib_x.shape[1:])
    with tempfile.TemporaryDirectory(prefix="feredge-sm-") as tmp:
        sm = saved_model_dir or keras_to_saved_model(model, shape, Path(tmp) / "saved_model")
        conv = tf.lite.TFLiteConverter.from_saved_model(str(sm))
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        conv._experimental_calibrate_only = True  # what QuantizationDebugger does, then mlir_quantize

        def representative():
            for i in range(len(calib_x)):
                if progress_cb is not None:
                    progress_cb(1)
                yield [calib_x[i: i + 1].astype(np.float32)]

        conv.representative_dataset = representative
        try:
            return conv.convert()
        except Exception as e:  # the converter raises ConverterError, RuntimeError, ValueError...
            raise ExportError(f"int8 TFLite conversion failed: {converter_error(e)}") from None


def _quantize(calibrated: bytes, new_ranges: dict[int, tuple[float, float]]) -> bytes:
    """``mlir_quantize`` of the calibrated model, with ``new_ranges`` written into it first. It is
    always re-packed (an unrolled LSTM's SPLIT stayed float when the converter's own bytes were
    quantised directly, and quantised once re-packed: measured, not understood)."""
    from feredge.export.convert import ranges

    try:
        return ranges.quantize(ranges.with_ranges(calibrated, new_ranges))
    except Exception as e:
        raise ExportError(f"int8 TFLite conversion failed: {converter_error(e)}") from None


def convert_int8(
    model: Any,
    calib_x: np.ndarray,
    *,
    selection: Selection | None = None,
    pixel_input: bool = False,
    progress_cb: Callable[[int], None] | None = None,
    saved_model_dir: Path | None = None,
) -> tuple[bytes, FlatbufferInfo, Int8Choice]:
    """Keras model + prepared calibration batch (N,H,W,C float32) -> verified int8 flatbuffer.

    ``pixel_input``: the model takes raw pixel codes (0..255), so its input range is pinned to
    exactly that: the int8 input is then q = p - 128, with no rounding. ``selection``: held-out
    faces on which each activation-range strategy (then bias correction and GPTQ weight rounding)
    is scored; the one closest to the desktop model is kept. Without it, min-max ranges as the
    converter makes them.
    """
    from feredge.export.convert import ranges

    if calib_x.ndim != 4 or len(calib_x) == 0:
        raise ExportError("no calibration images to quantise with")
    calibrated = _calibrate(model, calib_x, progress_cb, saved_model_dir)
    choice = Int8Choice(selection_faces=0 if selection is None else len(selection.x), calibrated=calibrated)
    pin: dict[int, tuple[float, float]] = {}
    if pixel_input:
        sg_inputs = _schema().ModelT.InitFromPackedBuf(calibrated, 0).subgraphs[0].inputs
        pin = {int(sg_inputs[0]): (0.0, 255.0)}
        choice.pinned_input = (0.0, 255.0)
    if selection is None:
        data = _quantize(calibrated, pin)
    else:
        hists = ranges.collect(calibrated, calib_x, ranges.clippable(calibrated))
        best, first_error = None, None
        for strategy in ranges.STRATEGIES:
            if progress_cb is not None:
                progress_cb(1)
            chosen = {**ranges.propose(strategy, hists), **pin}
            try:
                cand = _quantize(calibrated, chosen)
                verify_int8(cand)
            except ExportError as e:  # ranges an op cannot take (it then stays float): not a candidate
                log.debug("int8 ranges %s: %s", strategy, e)
                first_error = first_error or e
                continue
            choice.scores[strategy] = selection.score(cand)
            key = (choice.scores[strategy]["mean_abs_dp"], -choice.scores[strategy]["agreement"])
            if best is None or key < best[0]:
                best = (key, strategy, cand, chosen)
        if best is None:
            raise first_error or ExportError("int8 TFLite conversion failed")
        _, choice.strategy, data, chosen = best
        choice.final = choice.scores[choice.strategy]
        choice.calibrated = ranges.with_ranges(calibrated, chosen) if chosen else calibrated
        data = _refine(data, calibrated, calib_x, selection, choice, progress_cb)
    info = verify_int8(data)
    log.debug("int8 TFLite: %d ops, %d bytes, ranges %s", len(info.ops), len(data), choice.strategy)
    return data, info, choice


def _refine(data: bytes, calibrated: bytes, calib_x: np.ndarray, selection: Selection, choice: Int8Choice,
            progress_cb: Callable[[int], None] | None) -> bytes:
    """Bias correction, then GPTQ weight rounding followed by bias correction: each kept only
    where it is :func:`~feredge.export.convert.biascorr.worth_keeping` against what is kept so far.
    A model either step cannot handle keeps what it has (a warning, not a failed export)."""
    from feredge.export.convert import biascorr, wround

    steps = (("+bias", False, lambda d: biascorr.correct(d, calibrated, calib_x[:200])),
             ("+gptq+bias", True, lambda d: biascorr.correct(wround.round_tflite(d, calibrated, calib_x[:200]),
                                                              calibrated, calib_x[:200])))
    base = data
    for suffix, rounded, step in steps:
        try:
            cand = step(base)
            sc = selection.score(cand)
        except Exception as e:  # the interpreter raises its own types on a model it refuses
            what = "GPTQ weight rounding with bias correction" if rounded else "bias correction"
            log.warning("int8 TFLite %s skipped: %s", what, one_line(e))
            cand, sc = None, None
        if progress_cb is not None:
            progress_cb(1)
        if sc is None:
            continue
        choice.scores[choice.strategy + suffix] = sc
        assert choice.final is not None
        if biascorr.worth_keeping(sc, choice.final):
            data, choice.bias_corrected, choice.weights_rounded, choice.final = cand, True, rounded, sc
    return data


# progress steps of a selection: one per strategy, one for the bias correction, one for GPTQ + bias
SELECTION_STEPS = len(STRATEGIES) + 2


DIAGNOSE_BELOW = 0.99


def convert(job: ConvertJob) -> list[Artifact]:
    """``<name>.int8.tflite`` (a :data:`~feredge.export.convert.formats.FORMATS` entry), its
    quantisation recorded in the contract; below 99 % agreement, why (:func:`_diagnose`)."""
    from feredge.export.progress import progress_bar

    run, contract, selection = job.run, job.contract, job.selection
    f_tfl = job.built.stage / f"{contract.name}.int8.tflite"
    run.ph.start("converting to int8 TFLite", "tflite_int8", f_tfl.name)
    steps = len(job.x_cal) + (SELECTION_STEPS if selection is not None else 0)
    norm = contract.input.normalize
    with progress_bar(total=steps, desc="int8 TFLite calibration and range selection",
                      enabled=run.opts.progress) as bar:
        data, fb, choice = convert_int8(job.model, job.x_cal, selection=selection,
                                        pixel_input=norm.scale == 1.0 and norm.offset == 0.0,
                                        progress_cb=bar.update)
    f_tfl.write_bytes(data)
    contract.quantization[f_tfl.name] = {"input": fb.quant(fb.inputs[0]), "output": fb.quant(fb.outputs[0])}
    run.ph.done("tflite_int8")
    if choice.final is not None and choice.final["agreement"] < DIAGNOSE_BELOW:
        _diagnose(job, choice)
    return [Artifact(f_tfl, "tflite-int8", ops=fb.op_summary(), int8=choice.to_dict(), scored=True, embed=True,
                     flatbuffer=fb)]


def _diagnose(job: ConvertJob, choice: Int8Choice) -> None:
    """Name why the int8 TFLite falls short of 99 % on the selection faces (feredge.export.evaluate.int8diag)."""
    from feredge.export.evaluate import int8diag
    from feredge.export.progress import progress_bar

    run = job.run
    run.ph.start("diagnosing the int8 TFLite's disagreement", "tflite_diagnosis", "int8 TFLite")
    with progress_bar(total=int8diag.steps(choice.calibrated), desc="int8 diagnosis (one op in float at a time)",
                      enabled=run.opts.progress) as bar:
        choice.diagnosis = int8diag.diagnose(job.model, choice.calibrated, job.x_cal, job.selection,
                                             progress_cb=bar.update)
    refined = [w for w, on in (("GPTQ weight rounding", choice.weights_rounded),
                               ("bias correction", choice.bias_corrected)) if on]
    if refined:  # the scan re-quantises the calibrated model: nearest rounding, converter's biases
        choice.diagnosis["findings"].append(
            f"the layer and int16 figures are for the converter's own rounding, before {' and '.join(refined)}, "
            f"which took agreement from {100 * choice.scores[choice.strategy]['agreement']:.1f} to "
            f"{100 * choice.final['agreement']:.1f} % on the selection faces")
    assert choice.final is not None
    run.warn(f"int8 TFLite agrees with the desktop model on {100 * choice.final['agreement']:.1f} % of the "
             "selection faces (< 99 %): " + "; ".join(choice.diagnosis["findings"]))
    run.ph.done("tflite_diagnosis")
