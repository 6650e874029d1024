"""Edge TPU readiness of an int8 TFLite model, and ``edgetpu_compiler`` when it is installed.

The compiler maps ops to the TPU up to the first op it cannot take; everything after runs on
the Pi's CPU, so one unsupported op near the input can cost most of the speed-up. The table
below is the "Supported operations" table of coral.ai/docs/edgetpu/models-intro (Edge TPU
compiler 16 / runtime 14+), keyed by TFLite builtin op name. Op versions: the compiler 16
was built against the TF 2.5-era schema and rejects newer kernel versions with "Operation
version not supported"; ``MAX_VERSION`` lists the newest version it is known to map (int8
kernels). Both are a pre-flight check — the compiler's own log stays the final word.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feredge.export.convert.formats import Artifact
from feredge.export.convert.tflite import FlatbufferInfo, read_flatbuffer

if TYPE_CHECKING:
    from feredge.export.convert.formats import ConvertJob

log = logging.getLogger(__name__)

COMPILER = "edgetpu_compiler"
COMPILER_VERSION = 16

# op -> known limitation (from the Coral table); "" when none.
SUPPORTED: dict[str, str] = {
    "ADD": "", "AVERAGE_POOL_2D": "no fused activation", "CONCATENATION": "no fused activation",
    "CONV_2D": "same dilation in x and y", "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "", "FULLY_CONNECTED": "default weights format; 1-D output",
    "L2_NORMALIZATION": "", "LOGISTIC": "", "LSTM": "unidirectional only", "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation", "MEAN": "no reduction over batch; z-reduction needs depth % 4 == 0",
    "MINIMUM": "", "MUL": "", "PACK": "not along batch", "PAD": "not along batch", "PRELU": "constant alpha",
    "QUANTIZE": "", "REDUCE_MAX": "not along batch", "REDUCE_MIN": "not along batch", "RELU": "", "RELU6": "",
    "RELU_N1_TO_1": "", "RESHAPE": "large reshapes may stay on CPU",
    "RESIZE_BILINEAR": "3-D input/output", "RESIZE_NEAREST_NEIGHBOR": "3-D input/output", "RSQRT": "",
    "SLICE": "", "SOFTMAX": "1-D input of at most 16,000 elements", "SPACE_TO_DEPTH": "",
    "SPLIT": "not along batch", "SQUEEZE": "leading 1s only", "STRIDED_SLICE": "", "SUB": "", "SUM": "",
    "SQUARED_DIFFERENCE": "", "TANH": "", "TRANSPOSE": "", "TRANSPOSE_CONV": "",
}

# Newest op version compiler 16 maps; newer versions (int16 / hybrid / later schema) stay on the CPU.
MAX_VERSION: dict[str, int] = {
    "ADD": 2, "AVERAGE_POOL_2D": 2, "CONCATENATION": 3, "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 5, "LOGISTIC": 2, "MAX_POOL_2D": 2, "MEAN": 2, "MUL": 3, "PAD": 2, "QUANTIZE": 2,
    "RESHAPE": 1, "RESIZE_BILINEAR": 3, "RESIZE_NEAREST_NEIGHBOR": 3, "SOFTMAX": 2, "SUB": 2, "TANH": 2,
    "CONCAT": 3, "MAXIMUM": 2, "MINIMUM": 2, "RELU": 2, "RELU6": 2, "HARD_SWISH": 1,
}


@dataclass
class EdgeTPUCheck:
    ok: bool
    mapped_ops: int
    total_ops: int
    problems: list[str] = field(default_factory=list)
    compiled: str | None = None
    compiler_log: str = ""
    instructions: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "mapped_ops": self.mapped_ops, "total_ops": self.total_ops,
                "problems": self.problems, "compiled": self.compiled, "compiler_log": self.compiler_log[-4000:],
                "instructions": self.instructions}


def check(info: FlatbufferInfo) -> EdgeTPUCheck:
    """Which ops the compiler would map; the first unsupported op ends the TPU segment."""
    problems: list[str] = []
    first_bad: int | None = None
    for t in info.tensors:
        if t.shape_signature is not None and any(v < 0 for v in t.shape_signature):
            problems.append(f"tensor '{t.name}' has a dynamic shape")
    for i in info.inputs + info.outputs:
        if info.tensors[i].type not in ("INT8", "UINT8"):
            problems.append(f"I/O tensor '{info.tensors[i].name}' is {info.tensors[i].type}")
    for op in info.ops:
        why = None
        if op.name not in SUPPORTED:
            why = f"op #{op.index} {op.name} is not supported by the Edge TPU"
        elif op.version > MAX_VERSION.get(op.name, op.version):
            why = (f"op #{op.index} {op.name} version {op.version} is newer than compiler {COMPILER_VERSION} "
                   f"accepts (<= {MAX_VERSION[op.name]})")
        if why:
            problems.append(why + " (runs on the CPU)")
            if first_bad is None:
                first_bad = op.index
    mapped = len(info.ops) if first_bad is None else first_bad
    return EdgeTPUCheck(ok=not problems, mapped_ops=mapped, total_ops=len(info.ops), problems=problems)


def compiled_name(name: str) -> str:
    """``<name>_edgetpu.tflite``: the name the runtime's contract lookup pairs with ``<name>.json``."""
    return f"{name}_edgetpu.tflite"


def compile_model(tflite: Path, out_dir: Path, result: EdgeTPUCheck, *, name: str,
                  final_dir: Path | None = None) -> EdgeTPUCheck:
    """Run ``edgetpu_compiler`` when on PATH (output renamed to :func:`compiled_name`);
    otherwise record exactly what to run where."""
    exe = shutil.which(COMPILER)
    shown = (final_dir or out_dir) / tflite.name
    if exe is None:
        produced = shown.parent / (tflite.name.removesuffix(".tflite") + "_edgetpu.tflite")
        result.instructions = (
            "edgetpu_compiler is not installed here. On an x86-64 Debian/Ubuntu workstation add the Coral apt "
            "repository (coral.ai/docs/edgetpu/compiler), `sudo apt-get install edgetpu-compiler`, then run: "
            f"edgetpu_compiler -s -o {shown.parent} {shown} && mv {produced} {shown.parent / compiled_name(name)} "
            f"-- and copy {compiled_name(name)} with {name}.json to the Pi (`feredge classify --device coral`; "
            "for `feredge run`, device = \"coral\" under [model])."
        )
        return result
    try:
        r = subprocess.run([exe, "-s", "-o", str(out_dir), str(tflite)], capture_output=True, text=True,
                           timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        result.compiler_log = f"{type(e).__name__}: {e}"
        result.ok = False
        return result
    result.compiler_log = (r.stdout or "") + (r.stderr or "")
    produced = out_dir / (tflite.name.removesuffix(".tflite") + "_edgetpu.tflite")
    if r.returncode != 0 or not produced.is_file():
        result.ok = False
        result.problems.append(f"edgetpu_compiler failed (exit {r.returncode})")
        return result
    final = out_dir / compiled_name(name)
    produced.replace(final)
    for extra in out_dir.glob(tflite.name.removesuffix(".tflite") + "_edgetpu.log"):
        extra.unlink()
    result.compiled = final.name
    return result


def convert(job: ConvertJob) -> list[Artifact]:
    """``--edgetpu`` (a :data:`~feredge.export.convert.formats.DERIVED` entry): the int8 TFLite
    checked op by op, compiled when the compiler is here; the check goes into ``job.built.edgetpu``."""
    from feredge.edge.contract import embed

    run, contract, stage = job.run, job.contract, job.built.stage
    src = job.built.get("tflite-int8")
    assert src is not None, "the Edge TPU compiles the int8 TFLite: convert it first"
    run.ph.start("checking Edge TPU compatibility", "edgetpu", src.name)
    res = compile_model(src.path, stage, check(src.flatbuffer), name=contract.name, final_dir=job.out)
    for p in res.problems:
        run.warn(f"Edge TPU: {p}")
    job.built.edgetpu = res
    made = []
    if res.compiled:
        fc = stage / res.compiled
        comp_fb = read_flatbuffer(fc.read_bytes())
        contract.quantization[fc.name] = {"input": comp_fb.quant(comp_fb.inputs[0]),
                                          "output": comp_fb.quant(comp_fb.outputs[0])}
        embed(fc, contract)
        made.append(Artifact(fc, "tflite-edgetpu"))
    run.ph.done("edgetpu")
    return made
