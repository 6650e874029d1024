"""The training views of a face, each defined by 13 uniforms in [0, 1).

Why uniforms: a view is then a pure function of its numbers, so the teachers' logits for view
``k`` of face ``i`` can be computed once (:mod:`feredge.export.train.teach`) and the student,
epochs later, sees exactly the face the teachers saw. A plain run draws fresh uniforms per batch;
a distilled run draws one of the cached views. Both go through :func:`augment`.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from feredge.export.train.recipe import TrainConfig

# flip, angle, scale, shift x, shift y, contrast, brightness, erase area, erase aspect, erase top,
# erase left, erase or not, which noise fills the erased box
N_UNIFORMS = 13
NOISE_IMAGES = 512  # the erased box is filled from a fixed bank, so a view needs no per-pixel draws
VERSION = 1  # bump when a view's meaning changes: cached teacher logits are keyed by it


def unit(faces: np.ndarray) -> np.ndarray:
    """uint8 faces (N,48,48) as the network takes them: (N,48,48,1) float32 in [0,1]."""
    return (faces.astype(np.float32) / 255.0)[..., None]


def view_uniforms(seed: int, view: int, n: int) -> np.ndarray:
    """The uniforms of view ``view`` of each of ``n`` faces, (n, 13) float32, from (seed, view) only."""
    return np.random.default_rng([seed, view, VERSION]).random((n, N_UNIFORMS), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    return np.random.default_rng([VERSION, 48]).random((NOISE_IMAGES, 48, 48, 1), dtype=np.float32)


def mirror(x, where):
    """Faces (N,48,48,1) flipped left-right where ``where`` (N,) is true."""
    import tensorflow as tf

    return tf.where(where[:, None, None, None], tf.reverse(x, axis=[2]), x)


def augment(x, u, cfg: TrainConfig):
    """Flip, one affine warp (rotation, zoom, shift about the centre), brightness/contrast jitter and
    random erasing of a batch (N,48,48,1) in [0,1], as ``u`` (N,13) says. One warp per face, so a
    face is interpolated once. Batched TF ops: ~3 ms a batch of 64 on 2 cores."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    size = tf.cast(tf.shape(x)[1], tf.float32)

    def col(j, lo, hi):
        return lo + (hi - lo) * u[:, j]

    x = mirror(x, u[:, 0] < 0.5)
    ang = col(1, -cfg.rotate_deg, cfg.rotate_deg) * (math.pi / 180.0)
    scale = col(2, 1.0 - cfg.zoom, 1.0 + cfg.zoom)
    tx, ty = col(3, -cfg.shift, cfg.shift) * size, col(4, -cfg.shift, cfg.shift) * size
    c = (size - 1.0) / 2.0
    # output pixel p -> input pixel R(-ang) (p - c - t) / scale + c
    a0, a1 = tf.cos(ang) / scale, -tf.sin(ang) / scale
    b0, b1 = tf.sin(ang) / scale, tf.cos(ang) / scale
    a2 = c - a0 * (c + tx) - a1 * (c + ty)
    b2 = c - b0 * (c + tx) - b1 * (c + ty)
    zeros = tf.zeros_like(a0)
    transforms = tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)
    x = tf.raw_ops.ImageProjectiveTransformV3(
        images=x, transforms=transforms, output_shape=tf.shape(x)[1:3], fill_value=0.0,
        interpolation="BILINEAR", fill_mode="REFLECT")
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    contrast = tf.reshape(col(5, 0.8, 1.2), [n, 1, 1, 1])
    bright = tf.reshape(col(6, -0.12, 0.12), [n, 1, 1, 1])
    x = (x - mean) * contrast + mean + bright
    # random erasing: one rectangle of 2-25 % of the face, aspect 0.3-3.3, filled with noise
    area = col(7, 0.02, 0.25) * size * size
    ratio = tf.exp(col(8, math.log(0.3), math.log(3.3)))
    h = tf.minimum(tf.sqrt(area * ratio), size)
    w = tf.minimum(tf.sqrt(area / ratio), size)
    y0 = u[:, 9] * (size - h)
    x0 = u[:, 10] * (size - w)
    rows = tf.range(size)[None, :, None]
    cols = tf.range(size)[None, None, :]
    box = ((rows >= y0[:, None, None]) & (rows < (y0 + h)[:, None, None])
           & (cols >= x0[:, None, None]) & (cols < (x0 + w)[:, None, None]))
    box = box & (u[:, 11] < cfg.erase_p)[:, None, None]
    bank = tf.constant(_noise_bank())  # training faces are 48x48
    noise = tf.gather(bank, tf.minimum(tf.cast(u[:, 12] * NOISE_IMAGES, tf.int32), NOISE_IMAGES - 1))
    x = tf.where(box[..., None], noise, x)
    return tf.clip_by_value(x, 0.0, 1.0)
