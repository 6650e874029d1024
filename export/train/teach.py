"""Distillation targets: the teachers' flip-averaged logits on fixed views of every training face.

Why cached: a teacher in the training step doubled its cost (v2: 539 vs 260 ms per batch of 64 on
a 2-core EPYC), so a 250-epoch distilled run took 10-14 h. Here each teacher sees ``views``
augmented copies of each face once (:mod:`feredge.export.train.augment` makes view ``k`` a pure
function of the seed); the student then trains at the plain step's cost on one of those views
per epoch, with the teachers' logits for exactly that view (the consistency distillation needs).
The logits are kept per teacher and per view in ``teacher_cache`` (float16, 0.4 MB a view),
keyed by the teacher's bytes, the faces and the augmentation settings, so an interrupted run, a
proxy, the validation run and the final fit all reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feredge.edge.contract import FER2013_LABELS
from feredge.edge.fsutil import atomic_write_text
from feredge.export.errors import ExportError
from feredge.export.progress import progress_bar
from feredge.export.train import augment

if TYPE_CHECKING:
    from feredge.export.train.recipe import TrainConfig

log = logging.getLogger(__name__)

_BATCH = 512


def teacher_paths(spec: str) -> list[Path]:
    paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    for path in paths:
        if not path.is_file():
            raise ExportError(f"teacher not found: {path} (a .keras release of feredge train)")
    return paths


def load_teacher(path: Path):
    """The teacher model, checked to take the student's faces and give the seven classes' logits."""
    import keras

    t = keras.models.load_model(path, compile=False)
    if tuple(t.input_shape[1:]) != (48, 48, 1) or t.output_shape[-1] != len(FER2013_LABELS):
        raise ExportError(f"teacher {path}: takes {t.input_shape[1:]} and gives {t.output_shape[-1]} outputs; "
                          f"a teacher must take (48, 48, 1) faces and give {len(FER2013_LABELS)} logits")
    t.trainable = False
    return t


def cache_root(cfg: TrainConfig) -> Path:
    """Beside the run folders by default (training/teacher-cache for training/resume), so runs share it."""
    return Path(cfg.teacher_cache) if cfg.teacher_cache else Path(cfg.out).resolve().parent / "teacher-cache"


def _views(cfg: TrainConfig) -> dict:
    """What defines the views (besides the faces): the cache key, and its about.json."""
    return {**{k: getattr(cfg, k) for k in ("seed", "rotate_deg", "zoom", "shift", "erase_p")},
            "version": augment.VERSION}


def _folder(path: Path, faces: np.ndarray, cfg: TrainConfig) -> Path:
    h = hashlib.sha256(path.read_bytes())
    h.update(faces.tobytes())
    h.update(json.dumps(_views(cfg), sort_keys=True).encode())
    return cache_root(cfg) / f"{path.stem}-{h.hexdigest()[:12]}"


def teacher_logits(path: Path, faces: np.ndarray, cfg: TrainConfig, *, progress: bool = True) -> np.ndarray:
    """(views, N, 7) float16: the teacher's logits on views 0..views-1 of the N faces (uint8 48x48),
    averaged with the mirror image of each view. Computed views are read back, missing ones computed
    and saved one by one, so a stopped run loses at most one view."""
    import tensorflow as tf

    folder = _folder(path, faces, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "about.json", json.dumps(
        {"teacher": path.name, "faces": len(faces), "views": _views(cfg),
         "logits": "float16 (faces, 7), averaged over the view and its mirror image, one file per view"}, indent=2))
    files = [folder / f"view-{k:03d}.npy" for k in range(cfg.teacher_views)]
    todo = [k for k, f in enumerate(files) if not f.is_file()]
    if todo:
        log.info("teacher %s: %d of %d views to compute (cached in %s)", path.name, len(todo), len(files), folder)
        model = load_teacher(path)
        infer = tf.function(lambda v: (model(v, training=False) + model(tf.reverse(v, axis=[2]), training=False)) / 2)
        xf = faces.astype(np.float32)[..., None] / 255.0
        bar = progress_bar(total=len(todo) * len(faces), desc=f"teacher {path.stem}", unit="face", enabled=progress)
        for k in todo:
            u = augment.view_uniforms(cfg.seed, k, len(faces))
            out = np.empty((len(faces), len(FER2013_LABELS)), np.float16)
            for i in range(0, len(faces), _BATCH):
                view = augment.augment(tf.constant(xf[i:i + _BATCH]), tf.constant(u[i:i + _BATCH]), cfg)
                out[i:i + _BATCH] = infer(view).numpy()
                bar.update(len(out[i:i + _BATCH]))
            tmp = files[k].with_suffix(".tmp.npy")
            np.save(tmp, out)
            os.replace(tmp, files[k])
        bar.close()
    return np.stack([np.load(f) for f in files])


def teacher_probabilities(cfg: TrainConfig, faces: np.ndarray, *, progress: bool = True) -> np.ndarray:
    """(views, N, 7) float32: softmax of the teachers' mean logits on each view of each face."""
    paths = teacher_paths(cfg.teacher)
    for path in paths:  # every teacher is checked before any long computation starts
        load_teacher(path)
    logits = np.mean([teacher_logits(p, faces, cfg, progress=progress).astype(np.float32) for p in paths], axis=0)
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)
