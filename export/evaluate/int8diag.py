"""Why an int8 TFLite decides differently from the desktop model, when it does (< 99 %).

A report that says "agreement 97 %" and nothing else leaves the user stuck. Three measurements,
all on the selection faces (held out from calibration, never the test faces), name the cause:

- **Layers that lose the most**: TensorFlow's ``QuantizationDebugger`` runs each int8 layer beside
  its float twin on the same int8 input and measures the layer's own error in units of its int8
  step. Pure rounding is about 0.29 of a step; a layer well above that has a range or weights
  int8 cannot represent, and the int8 model with those layers kept in float (a CPU-only option) is
  scored too. No layer above the noise means the loss is rounding noise adding up.
- **The output's own resolution**: an int8 softmax output moves in steps of 1/256, so faces whose
  desktop top-2 margin is below that are coin flips for any int8 copy.
- **int16 activations** (int8 weights, "16x8"): what the same weights reach when activations get
  16 bits; it runs on CPUs (LiteRT) but not on the Edge TPU.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

TOP = 3
NOISE = 0.5  # rmse/scale above this: a layer's own error is well beyond rounding (sqrt(1/12) = 0.29)


def _rmse_over_scale(f: np.ndarray, q: np.ndarray, scale: float, zero_point: int) -> float:
    """A layer's own error in units of its int8 step: about 0.29 (sqrt(1/12)) is pure rounding."""
    return float(np.sqrt(np.mean(((q.astype(np.float32) - zero_point) * scale - f) ** 2)) / scale)


def layer_errors(calibrated: bytes, x: np.ndarray) -> list[dict[str, Any]]:
    """Each layer's own int8 error (its float twin fed the same int8 input), from TensorFlow's
    QuantizationDebugger on a NumericVerify model: one quantisation and one pass, largest first."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    debug_model = convert.mlir_quantize(calibrated, enable_numeric_verify=True)
    opts = tf.lite.experimental.QuantizationDebugOptions(
        layer_debug_metrics={}, model_debug_metrics=None,
        layer_direct_compare_metrics={"rmse/scale": _rmse_over_scale})
    dbg = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model, debug_options=opts,
        debug_dataset=lambda: ([x[i:i + 1].astype(np.float32)] for i in range(len(x))))
    dbg.run()
    rows = []
    for name, m in dbg.layer_statistics.items():
        if not np.isfinite(m.get("rmse/scale", np.nan)):
            continue
        node = name.removeprefix("NumericVerify/").rsplit(":", 1)[0]
        rows.append({"op": _layer_names(node), "node": node, "rmse_over_scale": round(float(m["rmse/scale"]), 4)})
    rows.sort(key=lambda r: -r["rmse_over_scale"])
    return rows


def _layer_names(node: str) -> str:
    """'m/model_1/bn_14/batchnorm/add_1;m/model_1/sep_conv_8/separable_conv2d' -> 'bn_14+sep_conv_8':
    the Keras layers fused into one TFLite op, as the user named them."""
    names: list[str] = []
    for part in node.split(";"):
        bits = [b for b in part.split("/") if b]
        layer = bits[-2] if len(bits) >= 2 else (bits[0] if bits else part)
        if bits and bits[-1] in ("Relu", "Relu6", "BiasAdd") and len(bits) >= 2:
            layer = bits[-2]
        if layer not in names and not layer.startswith(("batchnorm", "convolution")):
            names.append(layer)
    return "+".join(names)[:120] or node[:120]


def mixed_agreement(calibrated: bytes, selection: Any, nodes: list[str]) -> dict[str, float] | None:
    """The int8 model with ``nodes`` kept in float (a CPU-only option: no Edge TPU)."""
    import tensorflow as tf
    from tensorflow.lite.python import convert

    try:
        q = convert.mlir_quantize(calibrated, fully_quantize=False, input_data_type=tf.int8,
                                  output_data_type=tf.float32, denylisted_nodes=nodes)
        return selection.score(q)
    except Exception as e:  # an op the quantiser cannot leave in float
        log.debug("mixed float/int8 with %s: %s", nodes, e)
        return None


def int16_agreement(model: Any, calib_x: np.ndarray, selection: Any) -> dict[str, float] | None:
    """The 16x8 TFLite (int16 activations, int8 weights) scored like the int8 candidates."""
    from feredge.export.convert.tflite16 import convert_16x8

    try:
        data = convert_16x8(model, calib_x)
    except Exception as e:
        log.debug("16x8 conversion: %s", e)
        return None
    return selection.score(data)


def output_limit(selection: Any) -> dict[str, Any]:
    """How many selection faces the int8 output's 1/256 steps cannot separate."""
    p = np.sort(selection.p_ref, axis=1)
    margin = p[:, -1] - p[:, -2] if p.shape[1] > 1 else np.abs(p[:, 0] - 0.5) * 2
    return {"margin_below_1_256": round(float((margin < 1 / 256).mean()), 5),
            "margin_below_0_01": round(float((margin < 0.01).mean()), 5)}


def steps(calibrated: bytes) -> int:
    """Progress steps of :func:`diagnose`: the layer scan, the mixed model, the 16x8 conversion."""
    return 3


def diagnose(model: Any, calibrated: bytes, calib_x: np.ndarray, selection: Any,
             progress_cb: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The three measurements, and one line per finding for the console and the report. The
    layer scan runs on 200 selection faces; the 16x8 model (reference kernels, slow) is calibrated
    on 200 faces and scored on 500."""
    from dataclasses import replace

    def step() -> None:
        if progress_cb is not None:
            progress_cb(1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layers = layer_errors(calibrated, selection.x[:200])
        step()
        top = [r for r in layers[:TOP] if r["rmse_over_scale"] > NOISE]
        mixed = mixed_agreement(calibrated, selection, [r["node"] for r in top]) if top else None
        step()
        i16 = int16_agreement(model, calib_x[:200], replace(selection, x=selection.x[:500],
                                                            p_ref=selection.p_ref[:500]))
        step()
    out = output_limit(selection)
    findings = []
    if top:
        names = ", ".join(f"'{r['op']}' ({r['rmse_over_scale']:.2f} steps)" for r in top)
        findings.append(f"layers whose own int8 error exceeds rounding noise (~0.29 of a step): {names}"
                        + (f"; kept in float (CPU only, no Edge TPU) they bring agreement to "
                           f"{100 * mixed['agreement']:.1f} %" if mixed else ""))
    else:
        worst = layers[0]["rmse_over_scale"] if layers else 0.0
        findings.append(f"no layer's own int8 error exceeds rounding noise (worst {worst:.2f} of a step, "
                        f"{len(layers)} layers): the loss is rounding noise adding up through the network")
    findings.append(f"{100 * out['margin_below_1_256']:.1f} % of faces have a desktop top-2 margin below 1/256, "
                    f"the int8 output's step; {100 * out['margin_below_0_01']:.1f} % below 0.01")
    if i16 is not None:
        findings.append(f"with int16 activations (16x8, CPU only, no Edge TPU) the same weights agree on "
                        f"{100 * i16['agreement']:.1f} % (export with --int16-activations to get that copy too)")
    return {"layers": layers[:TOP + 2], "layers_scored": len(layers), "float_layers": mixed, "output": out,
            "int16": i16, "findings": findings}
