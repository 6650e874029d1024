"""Check that exported artifacts (int8/float TFLite, fp32/int8 ONNX) behave like the desktop
Keras model: top-1 agreement, accuracy and its change, per-class recall, |Δp|, KL, calibration
(ECE before/after temperature scaling), the worst disagreements; a report with pictures.
Exit 0 when every candidate meets the thresholds, 1 when one does not, 2 on bad input."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feredge.export.evaluate.parity import ParityConfig


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return v


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True, metavar="DESKTOP",
                   help="the desktop model: the .keras written by `feredge export`, a legacy .h5, a SavedModel dir")
    p.add_argument("--candidate", required=True, action="append", metavar="ARTIFACT", dest="candidates",
                   help=".tflite or .onnx artifact with its contract (repeat for several)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="FER2013 folder layout, a folder of class folders, Kaggle CSV, .npz/.npy, or a folder "
                        "of images (unlabelled: agreement only)")
    p.add_argument("--split", choices=["train", "test"],
                   help="part of DATA to use (default: its test part when it has one, else all of it)")
    p.add_argument("--usage", metavar="U", help="Kaggle CSV Usage value for the test part (default PublicTest)")
    p.add_argument("--min-agreement", type=_fraction, metavar="F",
                   help="minimum top-1 agreement (default 0.99 for int8 artifacts, 0.9999 for float ones)")
    p.add_argument("--max-accuracy-drop", type=_fraction, default=0.005, metavar="F",
                   help="largest allowed accuracy drop as a fraction (default 0.005 = 0.5 pp)")
    p.add_argument("--margin", type=_fraction, default=0.1, metavar="F",
                   help="also report agreement on faces whose reference top-2 margin exceeds F (default 0.1)")
    p.add_argument("--samples", type=_positive, metavar="N",
                   help="use a seeded class-proportional sample of N faces instead of all of them")
    p.add_argument("--seed", type=int, default=0, help="seed for --samples and the temperature-fit split")
    p.add_argument("--worst", type=_positive, default=24, metavar="N",
                   help="faces on each contact sheet of disagreements (default 24)")
    p.add_argument("--footage", action="append", default=[], metavar="VIDEO",
                   help="also compare on faces the device's Haar detector finds in this video or image "
                        "(repeatable; unlabelled: agreement only, same threshold)")
    p.add_argument("--footage-every", type=_positive, default=4, metavar="N",
                   help="use every N-th frame of --footage videos (default 4)")
    p.add_argument("--architecture", metavar="ARCH", help="for a weights-only reference .h5 (as in export)")
    p.add_argument("--trust-model", action="store_true", help="allow Lambda layers in the reference")
    p.add_argument("--report", metavar="DIR", help="write report.json, report.md and pictures here")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, no summary")


def run(args: argparse.Namespace) -> int:
    from feredge.export.evaluate.parity import ParityConfig
    from feredge.export.isolate import run_isolated

    cfg = ParityConfig(
        reference=args.reference,
        candidates=list(args.candidates),
        data=args.data,
        split=args.split,
        usage=args.usage,
        min_agreement=args.min_agreement,
        max_accuracy_drop=args.max_accuracy_drop,
        margin=args.margin,
        samples=args.samples,
        seed=args.seed,
        worst=args.worst,
        report_dir=args.report,
        progress=not args.quiet,
        architecture=args.architecture,
        trust_model=args.trust_model,
        footage=list(args.footage),
        footage_every=args.footage_every,
    )
    verbose = getattr(args, "verbose", False)
    summary, failures, passed = run_isolated(_parity_job, cfg, verbose, job="parity", out_dir=args.report,
                                             verbose=verbose)
    if not args.quiet:
        print(summary)
    for f in failures:
        print(f"feredge parity: FAILED {f}", file=sys.stderr)
    return 0 if passed else 1


def _parity_job(cfg: ParityConfig, verbose: bool) -> tuple[str, list[str], bool]:
    """The parity run, as run in the isolated child (module level: it is pickled by name)."""
    from feredge.export.evaluate.parity import run_parity
    from feredge.export.native import quiet_native_logs

    with quiet_native_logs(enabled=not verbose):
        result = run_parity(cfg)
    return result.summary(), list(result.failures), bool(result.passed)
