"""Convert a trained Keras model (.keras, SavedModel, legacy Keras 1.x/2.x .h5, or weights +
architecture) into full-integer int8 TFLite, fp32 ONNX and int8 ONNX, calibrated on a seeded
sample of FER2013, with the model contract embedded and an export report."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feredge.export.api import ExportOptions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help=".keras file, SavedModel dir, or legacy .h5")
    p.add_argument("--calibration", required=True, metavar="DATA",
                   help="FER2013 folder layout, Kaggle CSV, .npz/.npy, or a folder of images "
                        "(default sample source; env FER2013_DIR is not used implicitly)")
    p.add_argument("--architecture", metavar="ARCH",
                   help="for weights-only .h5: Keras architecture JSON, or path/to/builder.py:function")
    p.add_argument("--labels", metavar="L", help="comma-separated labels in output order, or a file (one per line)")
    p.add_argument("--normalize", metavar="N",
                   help="unit (x/255), symmetric (x/127.5-1), raw, or SCALE,OFFSET on 0-255 pixels")
    p.add_argument("--resize", choices=["area", "linear", "nearest", "cubic"],
                   help="interpolation used to resize faces (default: linear, as cv2.resize)")
    p.add_argument("--color", choices=["gray", "rgb", "bgr"],
                   help="channel order of 3-channel models (default rgb; 1-channel models are gray)")
    p.add_argument("--face-margin", type=float, metavar="F",
                   help="grow detected face boxes by F x size on each side (default 0)")
    p.add_argument("--usage", metavar="U", help="Kaggle CSV usage for calibration (default Training)")
    p.add_argument("--samples", type=int, default=500, help="calibration sample size (default 500)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--name", help="artifact base name (default: model file stem)")
    p.add_argument("--keras1-theano", action="store_true",
                   help="Keras 1.x weights came from the Theano backend (channels-first, flipped kernels)")
    p.add_argument("--onnx-calibration", choices=["auto", "minmax", "percentile", "entropy"], default="auto",
                   help="activation range method of the int8 ONNX (default auto: minmax or percentile, whichever "
                        "agrees better with the desktop model on the selection faces)")
    p.add_argument("--selection-samples", type=int, default=1000, metavar="N",
                   help="faces held out from calibration (same source, never the test part) on which each way of "
                        "quantising is scored and the best kept (default 1000; 0: plain min-max ranges)")
    p.add_argument("--no-fold", dest="fold", action="store_false",
                   help="keep the input normalisation on the device instead of folding it into the graphs "
                        "(the int8 input then rounds normalised pixels; for comparisons)")
    p.add_argument("--eval-samples", type=int, metavar="N",
                   help="cap the held-out check at N faces (default: the whole test part)")
    p.add_argument("--edgetpu", action="store_true", help="check Edge TPU compatibility and compile if possible")
    p.add_argument("--int16-activations", action="store_true",
                   help="also write <name>.16x8.tflite (int8 weights, int16 activations): closer to the desktop "
                        "model where int8 is not close enough; CPU only, ~25x the int8 latency (reference kernels)")
    p.add_argument("--trust-model", action="store_true",
                   help="allow Lambda layers (deserialising them runs code from the file)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--out", default="out", metavar="DIR", help="output directory (default ./out)")


def run(args: argparse.Namespace) -> int:
    from feredge.export.api import ExportOptions
    from feredge.export.isolate import run_isolated

    opts = ExportOptions(
        calibration=args.calibration, out_dir=args.out, architecture=args.architecture, labels=args.labels,
        normalize=args.normalize, resize=args.resize, color=args.color, face_margin=args.face_margin,
        usage=args.usage, samples=args.samples, seed=args.seed, name=args.name, keras1_theano=args.keras1_theano,
        edgetpu=args.edgetpu, int16_activations=args.int16_activations, trust_model=args.trust_model,
        progress=not args.quiet,
        eval_samples=args.eval_samples, onnx_calibration=args.onnx_calibration,
        selection_samples=args.selection_samples, fold=args.fold,
    )
    summary = run_isolated(_export_job, args.model, opts, job="export", out_dir=args.out,
                           verbose=getattr(args, "verbose", False))
    if not args.quiet:
        print(summary)
    return 0


def _export_job(model: str, opts: ExportOptions) -> str:
    """The export, as run in the isolated child (module level: it is pickled by name)."""
    from feredge.export.api import export_model

    return export_model(model, opts).summary()
