"""fp32 ONNX (opset 17, tf2onnx) and its int8 QDQ twin (onnxruntime ``quantize_static``).

QDQ keeps float input and output (QuantizeLinear/DequantizeLinear pairs around each int8 op),
so the same prepared float batch feeds all three ONNX/Keras paths and the contract records
``float32`` I/O for the ``.int8.onnx``. Per-channel weights match what the TFLite converter
does, so the two int8 artifacts are comparable.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feredge.edge.contract import QuantParams
from feredge.edge.errors import one_line
from feredge.export.convert.formats import Artifact
from feredge.export.errors import ExportError

if TYPE_CHECKING:
    from feredge.export.convert.formats import ConvertJob

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"


def convert_fp32(model: Any, input_shape: tuple[int, int, int], dest: Path) -> list[str]:
    """Write the fp32 ONNX of a Keras model; returns its op types.

    The batch dimension stays dynamic: onnxruntime plans shapes at run time anyway, and batched
    scoring (export report, parity suite) is several times faster than one face per call. The
    int8 TFLite, whose arena is planned ahead on the device, is the artifact with a static batch.

    Traced through a ``tf.function`` rather than ``tf2onnx.convert.from_keras``: the latter
    looks up Keras 3 Sequential models' symbolic tensors by name and fails on them.
    """
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    h, w, c = input_shape
    spec = [tf.TensorSpec((None, h, w, c), tf.float32, name=INPUT_NAME)]

    @tf.function(input_signature=spec)
    def forward(x: Any) -> Any:
        return model(x, training=False)

    try:
        tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET, output_path=str(dest))
    except Exception as e:  # tf2onnx raises whatever the graph rewrite hits
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"ONNX conversion failed: {type(e).__name__}: {msg}") from None
    return op_types(dest)


def fold_input_affine(path: Path) -> bool:
    """Fold the input's ``x * scale + offset`` (a Rescaling in front of the model) into the first
    Conv, as the TFLite converter does, so the int8 ONNX quantises raw pixel codes exactly instead
    of requantising the normalised image onto a grid where every pixel is a rounding tie.

    Only folds when it is exact: scalar constants, a chain of single-consumer Mul/Add (and
    Reshape/Transpose, which commute with a scalar affine map) into a Conv without padding
    (padding with zeros after the map is not padding with zeros before it). Returns whether it did.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    users: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    scale, offset, chain, conv = _input_affine_chain(g.input[0].name, users, inits)
    if not chain or conv is None:
        return False
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2]
         else np.zeros(w.shape[0]))
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array((w * scale).astype(np.float32), conv.input[1]))
    new_b = (b + offset * w.sum(axis=(1, 2, 3))).astype(np.float32)
    b_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else conv.name + "_folded_bias"
    if b_name in inits:
        inits[b_name].CopyFrom(numpy_helper.from_array(new_b, b_name))
    else:
        g.initializer.append(numpy_helper.from_array(new_b, b_name))
        if len(conv.input) == 2:
            conv.input.append(b_name)
        else:
            conv.input[2] = b_name
    for n in chain:  # bypass each Mul/Add: its consumer reads its data input instead
        for u in users.get(n.output[0], []):
            for k, name in enumerate(u.input):
                if name == n.output[0]:
                    u.input[k] = n.input[0]
        g.node.remove(n)
        const = inits.get(n.input[1])
        if const is not None and len(users.get(n.input[1], [])) == 1:  # its scalar is used by no one else
            g.initializer.remove(const)
    onnx.save(m, str(path))
    return True


def _input_affine_chain(t: str, users: dict[str, list[Any]],
                        inits: dict[str, Any]) -> tuple[float, float, list[Any], Any]:
    """From the graph input: the scalar Mul/Add chain (through Reshape/Transpose), its combined
    ``x * scale + offset``, and the Conv it feeds when that Conv has no padding (else None)."""
    import onnx
    from onnx import numpy_helper

    def scalar(name: str) -> float | None:
        if name not in inits:
            return None
        a = numpy_helper.to_array(inits[name])
        return float(a.reshape(-1)[0]) if a.size == 1 else None

    scale, offset, chain = 1.0, 0.0, []
    while len(users.get(t, [])) == 1:
        n = users[t][0]
        if n.op_type in ("Mul", "Add") and len(n.input) == 2 and n.input[0] == t and scalar(n.input[1]) is not None:
            v = scalar(n.input[1])
            scale, offset = (scale * v, offset * v) if n.op_type == "Mul" else (scale, offset + v)
            chain.append(n)
        elif n.op_type not in ("Reshape", "Transpose"):
            break
        t = n.output[0]
    conv = users[t][0] if len(users.get(t, [])) == 1 else None
    if conv is None or conv.op_type != "Conv" or conv.input[1] not in inits:
        return scale, offset, chain, None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
    pads_zero = not any(attrs.get("pads", [])) and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
    return scale, offset, chain, conv if pads_zero else None


def op_types(path: Path) -> list[str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return sorted({n.op_type for n in m.graph.node})


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a prepared float batch."""

    def __init__(self, name: str, x: np.ndarray, progress_cb: Callable[[int], None] | None,
                 batch: int = 1) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = ({name: x[i: i + batch]} for i in range(0, len(x), batch))
        self._cb = progress_cb

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        if item is not None and self._cb is not None:
            self._cb(len(next(iter(item.values()))))
        return item

    def rewind(self) -> None:  # pragma: no cover - only used by some calibrators
        pass


@contextlib.contextmanager
def _quiet_root_warnings() -> Iterator[None]:
    """onnxruntime.quantization advises via the ROOT logger ("consider pre-processing"); that is
    noise for an end user, so drop root-logger records while it runs."""

    def drop(record: logging.LogRecord) -> bool:
        return record.name != "root"

    handlers = logging.getLogger().handlers
    for h in handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(drop)


ONNX_METHODS = ("minmax", "percentile", "entropy")


def quantize_int8(fp32: Path, dest: Path, calib_x: np.ndarray, *, method: str = "minmax",
                  progress_cb: Callable[[int], None] | None = None) -> list[str]:
    """Static QDQ int8 (per-channel weights) calibrated on ``calib_x``.

    Activations and weights are both unsigned 8-bit (U8U8, asymmetric), full range. Why: on x86
    without VNNI, onnxruntime multiplies u8 x s8 pairs into saturating int16 sums (VPMADDUBSW), which
    silently clips models with large weights; its documentation names U8U8 as the format without
    that saturation. Measured on `fer`'s mini-XCEPTION (AVX2 EPYC, 3,589 PublicTest faces): top-1
    agreement with the float model 74.3 % with U8S8 and S8S8, 95.8 % with S8S8 and 7-bit weights
    (``reduce_range``, feredge's earlier default), 96.7 % with U8U8."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ExportError(f"unknown ONNX calibration method {method!r} ({', '.join(ONNX_METHODS)})")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    inp = ort.InferenceSession(str(fp32), opts, providers=["CPUExecutionProvider"]).get_inputs()[0]
    name = inp.name
    batch = 1 if isinstance(inp.shape[0], int) else 50  # MinMax over batches == over single faces
    try:
        with _quiet_root_warnings(), contextlib.redirect_stdout(None):
            quantize_static(
                str(fp32), str(dest), _Reader(name, calib_x.astype(np.float32), progress_cb, batch),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QUInt8,
                calibrate_method=methods[method],
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": False},
            )
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"ONNX int8 quantisation failed: {msg}") from None
    return op_types(dest)


def convert(job: ConvertJob) -> list[Artifact]:
    """``<name>.onnx`` (normalisation folded into the first Conv where exact) and its int8 QDQ
    twin ``<name>.int8.onnx`` (a :data:`~feredge.export.convert.formats.FORMATS` entry)."""
    run, contract = job.run, job.contract
    spec = contract.input
    f_onnx, f_qonnx = job.built.stage / f"{contract.name}.onnx", job.built.stage / f"{contract.name}.int8.onnx"
    run.ph.start("converting to ONNX", "onnx_fp32", f_onnx.name)
    fp32_ops = convert_fp32(job.model, (spec.height, spec.width, spec.channels), f_onnx)
    folded = spec.folded is not None and fold_input_affine(f_onnx)
    run.ph.done("onnx_fp32")
    f32 = QuantParams("float32", 0.0, 0)
    # QDQ: int8 inside, float I/O; recorded so the runtime does not quantise its input.
    contract.quantization[f_onnx.name] = {"input": f32, "output": f32}
    contract.quantization[f_qonnx.name] = {"input": f32, "output": f32}
    run.ph.start("quantising the ONNX model to int8", "onnx_int8", f_qonnx.name)
    choice, int8_ops = _best_int8(job, f_onnx, f_qonnx)
    choice["input_folded"] = folded
    run.ph.done("onnx_int8")
    return [Artifact(f_onnx, "onnx-fp32", ops=fp32_ops, scored=True, embed=True),
            Artifact(f_qonnx, "onnx-int8-qdq", ops=int8_ops, int8=choice, scored=True, embed=True)]


def _best_int8(job: ConvertJob, f_onnx: Path, dest: Path) -> tuple[dict[str, Any], list[str]]:
    """The int8 QDQ model of the calibration method that agrees best on the selection faces
    (``--onnx-calibration auto``: minmax or percentile), then bias-corrected or GPTQ-rounded and
    bias-corrected where that is :func:`~feredge.export.convert.biascorr.worth_keeping` (as for the
    TFLite), moved to ``dest``; (choice, op types)."""
    from feredge.export.evaluate import runners
    from feredge.export.progress import progress_bar

    o, selection, name = job.run.opts, job.selection, job.contract.name
    methods = [o.onnx_calibration] if o.onnx_calibration != "auto" else (
        ["minmax", "percentile"] if selection is not None else ["minmax"])
    scores: dict[str, Any] = {}
    best = None
    steps = len(job.x_cal) * len(methods) + (2 if selection is not None else 0)
    with progress_bar(total=steps, desc="ONNX int8 calibration", enabled=o.progress) as bar:
        for method in methods:
            cand = job.built.stage / f".{name}.{method}.int8.onnx"
            ops = quantize_int8(f_onnx, cand, job.x_cal, method=method, progress_cb=bar.update)
            key = (0.0, 0.0)
            if selection is not None:
                scores[method] = sc = selection.compare(runners.run_onnx(cand, job.contract, selection.x))
                key = (sc["mean_abs_dp"], -sc["agreement"])
            if best is None or key < best[0]:
                if best is not None:
                    best[2].unlink()
                best = (key, method, cand, ops)
            else:
                cand.unlink()
        assert best is not None
        _, method, cand, int8_ops = best
        kept = method
        if selection is not None:
            kept = _refined(job, f_onnx, cand, scores, method, bar.update)
    cand.replace(dest)
    return {"method": method, "bias_corrected": kept.endswith("+bias"), "weights_rounded": "+gptq" in kept,
            "kept": kept, "input_folded": False, "scores": scores}, int8_ops


def _refined(job: ConvertJob, f_onnx: Path, cand: Path, scores: dict[str, Any], method: str,
             progress_cb: Any) -> str:
    """``cand`` replaced by its bias-corrected twin, or by its GPTQ-rounded and then bias-corrected
    twin (:mod:`~feredge.export.convert.wround`), each kept where it is worth keeping against what
    is kept so far, as for the TFLite; returns the kept score's key. A graph a step cannot handle
    keeps what it has (a warning, not a failed export)."""
    from feredge.export.convert import biascorr, wround
    from feredge.export.evaluate import runners

    x = job.x_cal[:200]
    best, kept = cand, method
    for suffix, what in (("+bias", "bias correction"), ("+gptq+bias", "GPTQ weight rounding with bias correction")):
        fixed = cand.with_name(f".{job.contract.name}.{method}{suffix}.int8.onnx")
        try:
            if "+gptq" in suffix:
                fixed.write_bytes(wround.round_onnx(cand, f_onnx, x))
            fixed.write_bytes(biascorr.correct_onnx(fixed if "+gptq" in suffix else cand, f_onnx, x))
            scores[method + suffix] = sc = job.selection.compare(runners.run_onnx(fixed, job.contract,
                                                                                  job.selection.x))
        except Exception as e:  # onnxruntime/onnx raise their own types on graphs they refuse
            log.warning("ONNX %s skipped: %s", what, one_line(e))
            fixed.unlink(missing_ok=True)
            continue
        finally:
            progress_cb(1)
        if biascorr.worth_keeping(sc, scores[kept]):
            if best != cand:
                best.unlink()
            best, kept = fixed, method + suffix
        else:
            fixed.unlink()
    if best != cand:
        best.replace(cand)
    return kept
