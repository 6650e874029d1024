"""Training recipe for the shipped default model (``feredge train``).

A network of :mod:`feredge.export.train.arch` for 48x48 grey faces, trained with AdamW, a cosine
schedule, an EMA of the weights and one affine warp per face; optionally distilled from teachers
(earlier releases, their flip-averaged logits on the very view the student sees, computed once
for a fixed set of views: :mod:`feredge.export.train.teach`). It outputs
logits; a temperature fitted on the validation part goes into the contract so the device's
softmax(z/T) is calibrated.

The recipe never reads the test part: model selection uses a seeded, stratified validation
part of the training data. A final fit (``--val-fraction 0``) then trains on every training face
for the epoch count the validation run settled, and keeps that run's temperature. Every epoch is
checkpointed (``--resume`` continues), and the curves are written as CSV and PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from feredge.edge.contract import FER2013_LABELS
from feredge.edge.fsutil import atomic_write_text
from feredge.export.errors import ExportError
from feredge.export.train.arch import ARCHITECTURES
from feredge.export.train.augment import N_UNIFORMS, augment, mirror, unit, view_uniforms

log = logging.getLogger(__name__)

DEFAULT_NAME = "feredge-fer-v3"  # the shipped release (scripts/model_card.py)
# Files that make a run resumable on another machine (what training/resume/ holds between sessions).
RESUME_FILES = ("last.keras", "best.weights.h5", "history.csv", "split.npz", "state.json")


@dataclass
class TrainConfig:
    data: str
    out: str = "out/train"
    epochs: int = 120
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05  # decoupled (AdamW): each step shrinks weights by lr * weight_decay
    warmup_epochs: int = 5
    label_smoothing: float = 0.1
    ema_momentum: float = 0.999  # per step: ~1,000 steps (2.5 epochs) of averaging
    val_fraction: float = 0.1  # 0: the final fit on every training face (fixed epochs, no selection)
    seed: int = 0
    width: int = 32  # channels of the first block; blocks double it
    # augmentation (one affine warp per face, so the face is interpolated once)
    rotate_deg: float = 12.0
    zoom: float = 0.12
    shift: float = 0.08  # fraction of the side
    erase_p: float = 0.5
    precision: str = "float32"  # or mixed_bfloat16 (logits stay float32; release is float32)
    time_budget_min: float = 0.0  # > 0: stop after the epoch that passes it (resumable)
    threads: int = 0  # 0 = TensorFlow's default
    arch: str = "v3"  # a key of ARCHITECTURES; v3 is the shipped default's network
    # distillation: comma-separated .keras teachers (48x48 grey in [0,1], logits out); the target is
    # (1 - distill_alpha) * the label + distill_alpha * softmax(mean teacher logits) (then label-smoothed), on one of
    # teacher_views fixed views per face whose teacher logits are cached in teacher_cache (teach.py)
    teacher: str = ""
    distill_alpha: float = 0.5
    teacher_views: int = 32
    teacher_cache: str = ""  # default: teacher-cache/ beside the run folder
    # final fit only (val_fraction 0): the temperature fitted by the validation run of the same recipe
    temperature: float = 0.0


def load_fer_arrays(data_dir: Path, part: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All faces of one part as uint8 (N,48,48) with labels in FER2013 CSV order (by folder name).

    Read by the exporter's reader (:func:`feredge.export.calibration.read_source`), in the order
    runs have always used (class by class in FER2013 order, files sorted): a run's saved split
    indexes into it, so a resumed run must see the faces in the same order.
    """
    import cv2

    from feredge.edge.preprocess import to_color
    from feredge.export.calibration import read_source

    root = data_dir / part
    if not root.is_dir():
        raise ExportError(f"no {part}/ folder in {data_dir} (expected the FER2013 folder layout)")
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return z["x"], z["y"]
    faces = read_source(data_dir, part).load(progress=False)
    y_all = faces.labels_for(FER2013_LABELS)
    for idx, name in enumerate(FER2013_LABELS):
        if y_all is None or not np.any(y_all == idx):
            raise ExportError(f"no images for class {name!r} in {root}")
    order = sorted(np.flatnonzero(y_all >= 0), key=lambda i: y_all[i])  # stable: files stay sorted
    xs = []
    for i in order:
        img = to_color(faces.images[i], "gray")
        xs.append(img if img.shape == (48, 48) else cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA))
    x, y = np.stack(xs), y_all[order].astype(np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=y)
    return x, y


def _cache_path(data_dir: Path, part: str) -> Path:
    """Decoded faces live in .cache/, not in the run folder: the run folder is committed to resume."""
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return Path(".cache") / f"fer2013-{part}-{key}.npz"


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        val.extend(idx[: max(1, round(len(idx) * fraction))])
    val_idx = np.sort(np.array(val))
    train_idx = np.setdiff1d(np.arange(len(y)), val_idx)
    return train_idx, val_idx


@contextlib.contextmanager
def ema_weights(model):
    """The optimizer's EMA of the trainable weights swapped into the model for the duration."""
    opt = model.optimizer
    pairs = list(zip(opt._trainable_variables, opt._model_variables_moving_average, strict=True))

    def swap():
        for var, avg in pairs:
            tmp = var.numpy()
            var.assign(avg)
            avg.assign(tmp)

    swap()
    try:
        yield model
    finally:
        swap()


def recalibrate_bn(model, x: np.ndarray) -> None:
    """Batch-norm statistics measured for the weights now in the model, on clean faces ``x``.

    Why: BN's moving statistics follow the raw weights; the EMA weights swapped in for
    validation and release are a different network, and with their stale statistics its
    accuracy is far below what it is (measured early in the v2 run: 17 % EMA vs 41 % raw).
    One large forward pass in training mode with momentum 0 sets them exactly; training is
    unaffected (it normalises with batch statistics) and re-estimates its own within an epoch.
    """
    from keras import layers

    bns = [la for la in model.layers if isinstance(la, layers.BatchNormalization)]
    saved = [la.momentum for la in bns]
    try:
        for la in bns:
            la.momentum = 0.0
        model(x, training=True)
    finally:
        for la, m in zip(bns, saved, strict=True):
            la.momentum = m


def _callbacks(cfg: TrainConfig, out: Path, started: float, resume: bool, bn_faces: np.ndarray):
    import keras

    state_path = out / "state.json"

    class EmaForValidation(keras.callbacks.SwapEMAWeights):
        """Validation (and the best checkpoint) sees the EMA weights with their own BN statistics."""

        def on_test_begin(self, logs=None):
            super().on_test_begin(logs)
            recalibrate_bn(self.model, bn_faces)

    class EpochEnd(keras.callbacks.Callback):
        """Seconds per epoch into the history, the EMA model kept when validation improves, the
        resumable state written last (so a killed run resumes at the last complete epoch)."""

        def __init__(self):
            super().__init__()
            prev = json.loads(state_path.read_text()) if resume and state_path.is_file() else {}
            self.best = prev.get("best_val_accuracy", -1.0)
            self.best_epoch = prev.get("best_epoch", 0)
            self.t0 = time.monotonic()

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs if logs is not None else {}
            logs["epoch_seconds"] = round(time.monotonic() - self.t0, 1)
            logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            if "val_accuracy" not in logs:  # a final fit: the release is the last epoch's EMA weights
                self.best_epoch = epoch + 1
                with ema_weights(self.model):
                    recalibrate_bn(self.model, bn_faces)
                    self.model.save_weights(out / "best.weights.h5")
            elif logs["val_accuracy"] > self.best:
                self.best, self.best_epoch = float(logs["val_accuracy"]), epoch + 1
                with ema_weights(self.model):
                    self.model.save_weights(out / "best.weights.h5")
            self.model.save(out / "last.keras")
            atomic_write_text(state_path, json.dumps(
                {"epoch": epoch + 1, "best_val_accuracy": self.best, "best_epoch": self.best_epoch,
                 "config": asdict(cfg)}, indent=2))
            if cfg.time_budget_min and (time.monotonic() - started) / 60 > cfg.time_budget_min:
                log.warning("time budget of %.0f min reached after epoch %d: resume with --resume",
                            cfg.time_budget_min, epoch + 1)
                self.model.stop_training = True

    return [EmaForValidation(), EpochEnd(),
            keras.callbacks.CSVLogger(str(out / "history.csv"), append=resume)]


def _compile_new(cfg: TrainConfig, steps_per_epoch: int, n_cls: int):
    import keras

    model = ARCHITECTURES[cfg.arch](cfg.width, n_cls)
    steps = steps_per_epoch * cfg.epochs
    warm = steps_per_epoch * cfg.warmup_epochs
    schedule = keras.optimizers.schedules.CosineDecay(
        cfg.lr * 0.05, steps - warm, alpha=0.0, warmup_target=cfg.lr, warmup_steps=warm)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay, use_ema=True,
                                         ema_momentum=cfg.ema_momentum),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return model


def _run_config(cfg: TrainConfig, resume: bool) -> TrainConfig:
    """On resume the schedule and augmentation are the run's own (state.json); only where and
    how long to run may change."""
    state_path = Path(cfg.out) / "state.json"
    if not (resume and state_path.is_file()):
        return cfg
    saved = json.loads(state_path.read_text())["config"]
    keep = {k: getattr(cfg, k) for k in ("data", "out", "time_budget_min", "threads")}
    keep["teacher_cache"] = cfg.teacher_cache or saved.get("teacher_cache", "")
    return TrainConfig(**{**saved, **keep})


def _split(out: Path, y: np.ndarray, cfg: TrainConfig, resume: bool) -> tuple[np.ndarray, np.ndarray]:
    """The seeded, stratified train/validation split, saved with the run and checked on resume
    (a final fit: every face, no validation part)."""
    if cfg.val_fraction > 0:
        tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
    else:
        tr, va = np.arange(len(y)), np.array([], dtype=np.int64)
    split_path = out / "split.npz"
    if resume and split_path.is_file():
        z = np.load(split_path)
        if not (np.array_equal(z["train"], tr) and np.array_equal(z["val"], va)):
            raise ExportError(f"{split_path}: the data differs from the run being resumed")
    else:
        np.savez_compressed(split_path, train=tr, val=va)
    return tr, va


@dataclass
class _Session:
    """This invocation of a run (a run may take several): where it writes, the epoch it starts
    at, whether it continues a saved run, whether Keras shows a progress bar."""

    out: Path
    initial_epoch: int = 0
    resume: bool = False
    progress: bool = True
    started: float = 0.0  # time.monotonic() when it began: the time budget counts from there


def training_batches(faces: np.ndarray, y1h: np.ndarray, cfg: TrainConfig, soft: np.ndarray | None, seed: int):
    """The map from a batch of face indices to (augmented faces, targets). Plain: fresh uniforms
    per face. Distilled: one of the cached views (``soft``: (views, N, 7) teacher probabilities)
    or its mirror image, with its teachers' probabilities mixed into the target. Its generator is seeded here, so with
    a sequential map the draws are a function of ``seed`` (tf.data traces this once, at .map)."""
    import tensorflow as tf

    faces_t, labels = tf.constant(faces[..., None]), tf.constant(y1h)  # uint8: 66 MB, not 265
    gen = tf.random.Generator.from_seed(seed)
    if soft is not None:
        uniforms = tf.constant(np.stack([view_uniforms(cfg.seed, k, len(faces)) for k in range(len(soft))]))
        soft_t = tf.constant(soft)

    def batch(idx):
        x = tf.cast(tf.gather(faces_t, idx), tf.float32) / 255.0
        y = tf.gather(labels, idx)
        if soft is None:
            return augment(x, gen.uniform([tf.shape(idx)[0], N_UNIFORMS]), cfg), y
        at = tf.stack([gen.uniform_full_int([tf.shape(idx)[0]], tf.int64) % len(soft), idx], axis=1)
        y = (1.0 - cfg.distill_alpha) * y + cfg.distill_alpha * tf.gather_nd(soft_t, at)
        x = augment(x, tf.gather_nd(uniforms, at), cfg)
        # the teachers' logits are averaged over the view and its mirror image, so both have the same
        # target: a free second view per cached one
        return mirror(x, gen.uniform([tf.shape(idx)[0]]) < 0.5), y

    return batch


def _fit(model, cfg: TrainConfig, session: _Session, data: tuple[np.ndarray, np.ndarray],
         split: tuple[np.ndarray, np.ndarray], soft: np.ndarray | None) -> None:
    import tensorflow as tf

    faces, y1h = data
    tr, va = split
    out, initial_epoch, resume = session.out, session.initial_epoch, session.resume
    # a different shuffle/augmentation stream per resumption, still a function of (seed, epoch)
    stream = cfg.seed * 1000 + initial_epoch
    train_ds = (
        tf.data.Dataset.from_tensor_slices(tr)
        .shuffle(len(tr), seed=stream, reshuffle_each_iteration=True)
        .batch(cfg.batch_size)
        .map(training_batches(faces, y1h, cfg, soft, stream))  # sequential: ~15 ms a batch, the step ~100+
        .prefetch(2)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((unit(faces[va]), y1h[va])).batch(256) if len(va) else None
    # a fixed sample of clean training faces for the BN statistics of the EMA weights
    bn_idx = np.random.default_rng(cfg.seed).choice(tr, size=min(len(tr), 2048), replace=False)
    callbacks = _callbacks(cfg, out, session.started, resume, unit(faces[np.sort(bn_idx)]))
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
              callbacks=callbacks, verbose=1 if session.progress else 2)


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path | None:
    """Train (or continue) a run; returns the release model, or None when the time budget stopped it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
    started = time.monotonic()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _run_config(cfg, resume)
    if cfg.precision != "float32":
        keras.mixed_precision.set_global_policy(cfg.precision)
    keras.utils.set_random_seed(cfg.seed)
    x, y = load_fer_arrays(Path(cfg.data), "train", cache=_cache_path(Path(cfg.data), "train"))
    tr, va = _split(out, y, cfg, resume)
    n_cls = len(FER2013_LABELS)
    state_path = out / "state.json"
    initial_epoch = 0
    if not (resume and state_path.is_file()):  # resumable from now on, teacher caching included
        atomic_write_text(state_path, json.dumps(
            {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "config": asdict(cfg)}, indent=2))
    if resume and (out / "last.keras").is_file() and state_path.is_file():
        model = keras.models.load_model(out / "last.keras")
        initial_epoch = json.loads(state_path.read_text())["epoch"]
        log.info("resuming at epoch %d of %d", initial_epoch, cfg.epochs)
    else:
        model = _compile_new(cfg, math.ceil(len(tr) / cfg.batch_size), n_cls)
    if initial_epoch < cfg.epochs:
        soft = None
        if cfg.teacher:
            from feredge.export.train.teach import teacher_probabilities

            deadline = started + 60 * cfg.time_budget_min if cfg.time_budget_min else math.inf
            soft = teacher_probabilities(cfg, x, progress=progress, deadline=deadline)
            if soft is None:
                log.warning("time budget of %.0f min reached while caching the teachers' logits: resume with "
                            "--resume", cfg.time_budget_min)
                return None
        _fit(model, cfg, _Session(out, initial_epoch, resume, progress, started),
             (x, np.eye(n_cls, dtype=np.float32)[y]), (tr, va), soft)
        if json.loads(state_path.read_text())["epoch"] < cfg.epochs:
            return None
    return finish(cfg, out, unit(x[va]), y[va], train_size=len(tr))


def finish(cfg: TrainConfig, out: Path, xv: np.ndarray, yv: np.ndarray, *, train_size: int) -> Path:
    """The selected (EMA) weights in a float32 model, its validation temperature, the release.
    A final fit has no validation faces: its temperature is the validation run's (``cfg.temperature``)."""
    import keras

    from feredge.export.evaluate.scoring import fit_temperature

    keras.mixed_precision.set_global_policy("float32")
    best = ARCHITECTURES[cfg.arch](cfg.width, len(FER2013_LABELS))
    best.load_weights(out / "best.weights.h5")
    best.save(out / "best.keras")
    if len(yv):
        logits = best.predict(xv, batch_size=256, verbose=0)
        temperature = float(fit_temperature(logits, yv))
        val_acc: float | None = float((logits.argmax(1) == yv).mean())
    else:
        temperature, val_acc = cfg.temperature, None
    state = json.loads((out / "state.json").read_text())
    atomic_write_text(out / "selection.json", json.dumps(
        {"val_accuracy": val_acc, "best_epoch": state.get("best_epoch"), "temperature": temperature,
         "val_size": len(yv), "train_size": train_size, "params": int(best.count_params()),
         "config": asdict(cfg)}, indent=2))
    plot_history(out / "history.csv", out / "curves.png")
    log.info("selected epoch %s (validation accuracy %s), temperature %.3f", state.get("best_epoch"),
             "none: final fit" if val_acc is None else f"{val_acc:.4f}", temperature)
    return write_release(out, temperature=temperature, val_accuracy=val_acc, config=cfg)


def write_release(out: Path, *, temperature: float, val_accuracy: float | None, config: TrainConfig) -> Path:
    """``<name>.keras`` plus ``<name>.json`` beside it: the contract hint ``feredge export``
    picks up (labels, 48x48 grey, x/255, area resize, logits, the validation-fitted temperature),
    so the export needs no flags beyond ``--calibration``. The architecture names the release:
    feredge-fer-v3 (or feredge-fer-v2)."""
    import shutil

    from feredge.edge.contract import Contract, InputSpec, Normalize, OutputSpec

    name = f"feredge-fer-{config.arch}"
    model = out / f"{name}.keras"
    shutil.copyfile(out / "best.keras", model)
    hint = Contract(
        name=name,
        labels=list(FER2013_LABELS),
        input=InputSpec(height=48, width=48, channels=1, color="gray", resize="area",
                        normalize=Normalize(1.0 / 255.0, 0.0), face_margin=0.0),
        output=OutputSpec(activation="logits", temperature=round(float(temperature), 4)),
        provenance={"training": {
            "recipe": "feredge train", "config": asdict(config),
            "val_accuracy": None if val_accuracy is None else round(val_accuracy, 4),
            "temperature_fitted_on": "validation part (seeded, stratified)" if val_accuracy is not None
            else "the validation run of the same recipe (final fit on every training face)"}},
    ).validate()
    hint.save(out / f"{name}.json")
    return model


def plot_history(csv_path: Path, png: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    ep = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for key, a in (("loss", ax[0]), ("accuracy", ax[1])):
        a.plot(ep, [float(r[key]) for r in rows], label=f"train {key}")
        if rows[0].get("val_" + key, "NA") != "NA":  # Keras' CSVLogger writes NA without validation
            a.plot(ep, [float(r["val_" + key]) for r in rows], label=f"val {key}")
        a.set_xlabel("epoch")
        a.legend()
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=os.environ.get("FER2013_DIR", "../shared/fer2013"),
                   help="FER2013 folder layout (train/<class>/*.jpg); default $FER2013_DIR or ../shared/fer2013")
    p.add_argument("--out", default="out/train")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup-epochs", type=int, default=TrainConfig.warmup_epochs,
                   help="linear warm-up to --lr before the cosine decay")
    p.add_argument("--width", type=int, default=TrainConfig.width)
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), default=TrainConfig.arch,
                   help="network: v3 (the shipped default's, ~21 M MACs) or v2 (its VGG-style predecessor, ~96 M MACs)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--precision", choices=["float32", "mixed_bfloat16"], default=TrainConfig.precision,
                   help="mixed_bfloat16 trains faster on CPUs with AVX512_BF16; the release is float32")
    p.add_argument("--time-budget-min", type=float, default=TrainConfig.time_budget_min,
                   help="stop after the epoch that passes this many minutes; --resume continues")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--teacher", default="", metavar="KERAS[,KERAS...]",
                   help="distil from these releases (their flip-averaged logits on each augmented face)")
    p.add_argument("--teacher-views", type=int, default=TrainConfig.teacher_views,
                   help="augmented views per face the teachers see once (cached); the student sees one per epoch")
    p.add_argument("--teacher-cache", default="", metavar="DIR",
                   help="where the teachers' logits are kept (default: teacher-cache/ beside --out)")
    p.add_argument("--label-smoothing", type=float, default=TrainConfig.label_smoothing,
                   help="share of the label's target spread over all classes; lower it when the softmax must be "
                        "calibrated (ECE), since smoothing and soft teacher targets both pull confidence down")
    p.add_argument("--distill-alpha", type=float, default=TrainConfig.distill_alpha,
                   help="weight of the teachers' probabilities in the target (the label gets the rest)")
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction,
                   help="the validation part; 0 = the final fit on every face, for the epochs the "
                        "validation run settled (then --temperature is required)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="final fit only: the temperature of the validation run (its selection.json)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its schedule and augmentation are kept from state.json)")
    p.add_argument("--quiet", "-q", action="store_true")


def check_config(cfg: TrainConfig) -> None:
    """One-line errors for settings the run would only fail on later (or with a traceback)."""
    if cfg.teacher:
        from feredge.export.train.teach import teacher_paths

        teacher_paths(cfg.teacher)
    if cfg.teacher_views < 1:
        raise ExportError(f"--teacher-views must be at least 1, got {cfg.teacher_views}")
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ExportError(f"--label-smoothing must be at least 0 and below 1, got {cfg.label_smoothing}")
    if not 0.0 <= cfg.distill_alpha <= 1.0:
        raise ExportError(f"--distill-alpha must be between 0 and 1, got {cfg.distill_alpha}")
    if not 0 <= cfg.warmup_epochs < cfg.epochs:
        raise ExportError(f"--epochs ({cfg.epochs}) must exceed --warmup-epochs ({cfg.warmup_epochs})")
    if not 0.0 <= cfg.val_fraction < 0.5:
        raise ExportError(f"--val-fraction must be at least 0 and below 0.5, got {cfg.val_fraction}")
    if cfg.val_fraction == 0 and not cfg.temperature > 0:
        raise ExportError("a final fit (--val-fraction 0) has no validation part to fit the temperature on: "
                          "pass --temperature T of the validation run (its selection.json)")
    if cfg.val_fraction > 0 and cfg.temperature:
        raise ExportError("--temperature is for a final fit (--val-fraction 0); with a validation part the "
                          "temperature is fitted on it")


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in TrainConfig.__dataclass_fields__})
    check_config(_run_config(cfg, args.resume))  # a resumed run is checked as it will run
    release = train(cfg, resume=args.resume, progress=not args.quiet)
    if release is None:
        state = json.loads((Path(cfg.out) / "state.json").read_text())
        print(f"stopped after epoch {state['epoch']} of {state['config']['epochs']} (time budget); continue with:\n"
              f"  feredge train --resume --out {cfg.out}")
        return 0
    print(f"best model: {release} (with its contract hint {release.with_suffix('.json').name}); next:\n"
          f"  feredge export {release} --calibration {cfg.data} --out models")
    return 0
