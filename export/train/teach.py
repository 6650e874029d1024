"""Distillation targets: the teachers' flip-averaged logits on fixed views of every training face.

Why cached: a teacher in the training step doubled its cost (v2: 539 vs 260 ms per batch of 64 on
a 2-core EPYC), so a 250-epoch distilled run took 10-14 h. Here each teacher sees ``views``
augmented copies of each face once (:mod:`feredge.export.train.augment` makes view ``k`` a pure
function of the seed); the student then trains at the plain step's cost on one of those views
per epoch (or its mirror image), with the teachers' logits for exactly that view (the consistency distillation needs).
The logits are kept per teacher and per view in ``teacher_cache`` (float16, 0.4 MB a view),
keyed by the teacher's bytes, the faces and the augmentation settings, so an interrupted run, a
proxy, the validation run and the final fit all reuse them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from feredge.edge.contract import FER2013_LABELS
from feredge.edge.fsutil import atomic_path, atomic_write_text
from feredge.export.errors import ExportError
from feredge.export.evaluate.scoring import softmax_t
from feredge.export.progress import progress_bar
from feredge.export.train import augment

if TYPE_CHECKING:
    from feredge.export.train.recipe import TrainConfig

log = logging.getLogger(__name__)

_BATCH = 512


def teacher_paths(spec: str) -> list[Path]:
    """The teachers of ``--teacher`` (comma-separated), each checked to exist (before any work starts)."""
    paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    if not paths:
        raise ExportError(f"--teacher names no file: {spec!r} (comma-separated .keras releases of feredge train)")
    for path in paths:
        if not path.is_file():
            raise ExportError(f"teacher not found: {path} (a .keras release of feredge train)")
    return paths


def load_teacher(path: Path):
    """The teacher model, checked to take the student's faces and give the seven classes' logits."""
    from feredge.export.load import keras_zip

    t, _, _ = keras_zip.load(path, None, trust_model=False)  # a damaged file is a one-line error
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


def _read_view(f: Path, n: int) -> np.ndarray | None:
    """A cached view, or None when it is missing or not what a finished write leaves (recomputed)."""
    try:
        v = np.load(f, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return v if v.shape == (n, len(FER2013_LABELS)) and v.dtype == np.float16 else None


def teacher_logits(path: Path, faces: np.ndarray, cfg: TrainConfig, *, progress: bool = True,
                   deadline: float = math.inf) -> np.ndarray | None:
    """(views, N, 7) float16: the teacher's logits on views 0..views-1 of the N faces (uint8 48x48),
    averaged with the mirror image of each view. Cached views are read back; missing ones are
    computed and saved one by one, so a stopped run loses at most one view. None when
    ``deadline`` (time.monotonic()) passed before all were there: ``--resume`` continues."""
    import tensorflow as tf

    folder = _folder(path, faces, cfg)
    files = [folder / f"view-{k:03d}.npy" for k in range(cfg.teacher_views)]
    views = [_read_view(f, len(faces)) for f in files]
    todo = [k for k, v in enumerate(views) if v is None]
    if todo:
        log.info("teacher %s: %d of %d views to compute (cached in %s)", path.name, len(todo), len(files), folder)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "about.json", json.dumps(
                {"teacher": path.name, "faces": len(faces), "views": _views(cfg),
                 "logits": "float16 (faces, 7), averaged over the view and its mirror image, one file per view"},
                indent=2))
        except OSError as e:
            raise ExportError(f"cannot write the teacher cache {folder}: {e.strerror or e}") from None
        model = load_teacher(path)
        infer = tf.function(lambda v: (model(v, training=False) + model(tf.reverse(v, axis=[2]), training=False)) / 2)
        bar = progress_bar(total=len(todo) * len(faces), desc=f"teacher {path.stem}", unit="face", enabled=progress)
        for k in todo:
            if time.monotonic() > deadline:
                bar.close()
                return None
            u = augment.view_uniforms(cfg.seed, k, len(faces))
            out = np.empty((len(faces), len(FER2013_LABELS)), np.float16)
            for i in range(0, len(faces), _BATCH):
                x = tf.constant(augment.unit(faces[i:i + _BATCH]))
                out[i:i + _BATCH] = infer(augment.augment(x, tf.constant(u[i:i + _BATCH]), cfg)).numpy()
                bar.update(len(out[i:i + _BATCH]))
            with atomic_path(files[k], suffix=".npy") as tmp:
                np.save(tmp, out)
            views[k] = out
        bar.close()
    return np.stack(views)


def teacher_probabilities(cfg: TrainConfig, faces: np.ndarray, *, progress: bool = True,
                          deadline: float = math.inf) -> np.ndarray | None:
    """(views, N, 7) float32: softmax of the teachers' mean logits on each view of each face; None
    when the deadline stopped the caching."""
    paths = teacher_paths(cfg.teacher)
    for path in paths:  # every teacher is checked before any long computation starts
        load_teacher(path)
    logits = []
    for path in paths:
        one = teacher_logits(path, faces, cfg, progress=progress, deadline=deadline)
        if one is None:
            return None
        logits.append(one.astype(np.float32))
    mean = np.mean(logits, axis=0)
    return softmax_t(mean.reshape(-1, mean.shape[-1])).astype(np.float32).reshape(mean.shape)
