"""Training recipe for the shipped default model (``feredge train``).

A compact VGG-style CNN for 48x48 grey faces, built only from ops that int8 TFLite and the
Edge TPU compiler accept (Conv2D, folded BatchNorm, ReLU, MaxPool, global average pool,
Dense). It outputs logits; a temperature fitted on the validation part goes into the
contract so the device's softmax(z/T) is calibrated.

The recipe never reads the test part: model selection uses a seeded, stratified validation
part of the training data. Every epoch is checkpointed (``--resume`` continues), and the
curves are written as CSV and PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edge.contract import FER2013_LABELS
from edge.fsutil import atomic_write_text
from export.errors import ExportError

log = logging.getLogger(__name__)

DEFAULT_NAME = "feredge-fer-v1"


@dataclass
class TrainConfig:
    data: str
    out: str = "out/train"
    epochs: int = 18
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    val_fraction: float = 0.1
    seed: int = 0
    width: int = 32  # channels of the first block; blocks double it
    time_budget_min: float = 115.0  # stop early (keeping the best checkpoint) past this
    threads: int = 0  # 0 = TensorFlow's default


def build_model(width: int = 32, n_classes: int = 7):
    """Four Conv-BN-ReLU stages (48 -> 24 -> 12 -> 6 -> 3), GAP, dropout, Dense logits."""
    import keras
    from keras import layers

    inp = keras.Input((48, 48, 1), name="face")
    x = inp
    for stage, (filters, convs) in enumerate([(width, 2), (width * 2, 2), (width * 4, 2), (width * 8, 1)]):
        for j in range(convs):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"s{stage}c{j}")(x)
            x = layers.BatchNormalization(name=f"s{stage}bn{j}")(x)
            x = layers.ReLU(name=f"s{stage}relu{j}")(x)
        x = layers.MaxPooling2D(2, name=f"s{stage}pool")(x)
        if stage >= 1:
            x = layers.Dropout(0.1 * stage, name=f"s{stage}drop")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.4, name="head_drop")(x)
    out = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="feredge_fer")


def load_fer_arrays(data_dir: Path, part: str, cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """All faces of one part as uint8 (N,48,48) with labels in FER2013 CSV order (by folder name)."""
    import cv2

    root = data_dir / part
    if not root.is_dir():
        raise ExportError(f"no {part}/ folder in {data_dir} (expected the FER2013 folder layout)")
    if cache is not None and cache.is_file():
        z = np.load(cache)
        return z["x"], z["y"]
    xs, ys = [], []
    for idx, name in enumerate(FER2013_LABELS):
        files = sorted((root / name).glob("*"))
        if not files:
            raise ExportError(f"no images for class {name!r} in {root}")
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            if img is None:
                continue
            if img.shape != (48, 48):
                img = cv2.resize(img, (48, 48), interpolation=cv2.INTER_AREA)
            xs.append(img)
            ys.append(idx)
    x, y = np.stack(xs), np.array(ys, np.int64)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, x=x, y=y)
    return x, y


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


def _augment_fn(seed: int):
    import tensorflow as tf

    def aug(x, y):
        x = tf.image.random_flip_left_right(x, seed=seed)
        # random crop after padding = small translations; plus brightness/contrast jitter
        x = tf.image.resize_with_crop_or_pad(x, 54, 54)
        x = tf.image.random_crop(x, (48, 48, 1), seed=seed)
        x = tf.image.random_brightness(x, 0.15, seed=seed)
        x = tf.image.random_contrast(x, 0.8, 1.2, seed=seed)
        return tf.clip_by_value(x, 0.0, 1.0), y

    return aug


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    if cfg.threads:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(cfg.seed)
    x, y = load_fer_arrays(Path(cfg.data), "train", cache=out / "train-cache.npz")
    tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
    np.savez(out / "split.npz", train=tr, val=va)
    xf = (x.astype(np.float32) / 255.0)[..., None]
    n_cls = len(FER2013_LABELS)
    ls = cfg.label_smoothing
    y1h = (np.eye(n_cls, dtype=np.float32)[y] * (1 - ls) + ls / n_cls)
    train_ds = (
        tf.data.Dataset.from_tensor_slices((xf[tr], y1h[tr]))
        .shuffle(len(tr), seed=cfg.seed, reshuffle_each_iteration=True)
        .map(_augment_fn(cfg.seed), num_parallel_calls=2)
        .batch(cfg.batch_size)
        .prefetch(2)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((xf[va], np.eye(n_cls, dtype=np.float32)[y[va]])).batch(256)

    ckpt = out / "last.keras"
    state_path = out / "state.json"
    initial_epoch = 0
    if resume and ckpt.is_file() and state_path.is_file():
        model = keras.models.load_model(ckpt)
        initial_epoch = json.loads(state_path.read_text())["epoch"]
        log.info("resuming at epoch %d", initial_epoch)
    else:
        model = build_model(cfg.width, n_cls)
        steps = math.ceil(len(tr) / cfg.batch_size) * cfg.epochs
        schedule = keras.optimizers.schedules.CosineDecay(
            cfg.lr * 0.1, steps, warmup_target=cfg.lr, warmup_steps=steps // 20
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
    started = time.monotonic()

    class Budget(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            state_path.write_text(json.dumps({"epoch": epoch + 1, "config": asdict(cfg)}))
            if (time.monotonic() - started) / 60 > cfg.time_budget_min:
                log.warning("time budget of %.0f min reached after epoch %d", cfg.time_budget_min, epoch + 1)
                self.model.stop_training = True

    callbacks = [
        keras.callbacks.ModelCheckpoint(str(ckpt)),
        keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_accuracy", save_best_only=True),
        keras.callbacks.CSVLogger(str(out / "history.csv"), append=resume),
        Budget(),
    ]
    model.fit(train_ds, validation_data=val_ds, epochs=cfg.epochs, initial_epoch=initial_epoch,
              callbacks=callbacks, verbose=1 if progress else 2)
    best = keras.models.load_model(out / "best.keras")
    logits = best.predict(xf[va], batch_size=256, verbose=0)
    from export.metrics import fit_temperature

    temperature = float(fit_temperature(logits, y[va]))
    val_acc = float((logits.argmax(1) == y[va]).mean())
    atomic_write_text(out / "selection.json", json.dumps(
        {"val_accuracy": val_acc, "temperature": temperature, "val_size": len(va), "train_size": len(tr),
         "params": int(best.count_params()), "config": asdict(cfg)}, indent=2))
    plot_history(out / "history.csv", out / "curves.png")
    log.info("best val accuracy %.4f, temperature %.3f", val_acc, temperature)
    return write_release(out, temperature=temperature, val_accuracy=val_acc, config=cfg)


def write_release(out: Path, *, temperature: float, val_accuracy: float, config: TrainConfig,
                  name: str = DEFAULT_NAME) -> Path:
    """``<name>.keras`` plus ``<name>.json`` beside it: the contract hint ``feredge export``
    picks up (labels, 48x48 grey, x/255, area resize, logits, the validation-fitted temperature),
    so the export needs no flags beyond ``--calibration``."""
    import shutil

    from edge.contract import Contract, InputSpec, Normalize, OutputSpec

    model = out / f"{name}.keras"
    shutil.copyfile(out / "best.keras", model)
    hint = Contract(
        name=name,
        labels=list(FER2013_LABELS),
        input=InputSpec(height=48, width=48, channels=1, color="gray", resize="area",
                        normalize=Normalize(1.0 / 255.0, 0.0), face_margin=0.0),
        output=OutputSpec(activation="logits", temperature=round(float(temperature), 4)),
        provenance={"training": {"recipe": "feredge train", "config": asdict(config),
                                 "val_accuracy": round(val_accuracy, 4),
                                 "temperature_fitted_on": "validation part (seeded, stratified)"}},
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
    p.add_argument("--width", type=int, default=TrainConfig.width)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--time-budget-min", type=float, default=TrainConfig.time_budget_min)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue from out/last.keras")
    p.add_argument("--quiet", "-q", action="store_true")


def run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(data=args.data, out=args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      width=args.width, seed=args.seed, time_budget_min=args.time_budget_min, threads=args.threads)
    release = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"best model: {release} (with its contract hint {release.with_suffix('.json').name}); next:\n"
          f"  feredge export {release} --calibration {cfg.data} --out models")
    return 0
