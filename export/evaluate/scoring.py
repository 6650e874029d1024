"""Numbers that say whether two models behave alike (numpy only, no TensorFlow).

Shared by the exporter's report and the parity suite so both speak of the same quantities under
the same field names (``agreement``, ``agreement_margin``, ``mean_abs_dp`` ...).

Conventions: ``p`` is an (N, C) array of probabilities, one row per face; ``y`` an (N,) int
array of true class indices where a negative value means "no label for this face" (a folder class
the model does not know), and such faces are left out of label-based metrics. A single-column
``p`` is a sigmoid classifier and is widened to (N, 2) = [1 - p, p] so argmax works the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-12


def as_probs(p: np.ndarray) -> np.ndarray:
    """(N, C) float64 probabilities; a single sigmoid column becomes two classes."""
    a = np.asarray(p, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"probabilities must be (N, C), got shape {a.shape}")
    if a.shape[1] == 1:
        a = np.concatenate([1.0 - a, a], axis=1)
    return a


def top2_margin(p: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability of each row: how far a face is from a tie."""
    a = as_probs(p)
    part = np.sort(a, axis=1)
    return part[:, -1] - part[:, -2]


def _labelled(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = as_probs(p)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if len(y) != len(a):
        raise ValueError(f"{len(a)} predictions but {len(y)} labels")
    keep = y >= 0
    return a[keep], y[keep]


def accuracy(p: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy over the labelled faces (nan when none is labelled)."""
    a, yy = _labelled(p, y)
    if len(yy) == 0:
        return float("nan")
    return float(np.mean(a.argmax(axis=1) == yy))


def per_class_recall(p: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Recall of each class (nan for a class without faces)."""
    a, yy = _labelled(p, y)
    pred = a.argmax(axis=1)
    out = np.full(n_classes, np.nan)
    for c in range(n_classes):
        m = yy == c
        if m.any():
            out[c] = float(np.mean(pred[m] == c))
    return out


def confusion(p: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """(n, n) counts, rows = true class, columns = predicted class."""
    a, yy = _labelled(p, y)
    pred = a.argmax(axis=1)
    m = np.zeros((n, n), dtype=np.int64)
    np.add.at(m, (yy, pred), 1)
    return m


def mean_kl(p_ref: np.ndarray, p_cand: np.ndarray) -> float:
    """Mean KL(p_ref || p_cand) in nats; probabilities are clipped at 1e-12 so a hard zero in
    the candidate (int8 outputs round small probabilities to 0) gives a large, finite value."""
    a, b = as_probs(p_ref), as_probs(p_cand)
    a = np.clip(a, _EPS, 1.0)
    b = np.clip(b, _EPS, 1.0)
    a = a / a.sum(axis=1, keepdims=True)
    b = b / b.sum(axis=1, keepdims=True)
    if len(a) == 0:
        return float("nan")
    return float(np.mean(np.sum(a * (np.log(a) - np.log(b)), axis=1)))


def reliability(p: np.ndarray, y: np.ndarray, bins: int = 15) -> dict[str, np.ndarray]:
    """Per confidence bin (equal width on [0, 1]): mean confidence, accuracy and count.

    Bins are right-closed, (lo, hi], the usual ECE convention; a confidence of exactly 0 cannot
    occur for a top-1 probability (it is at least 1/C).
    """
    a, yy = _labelled(p, y)
    conf = a.max(axis=1)
    correct = (a.argmax(axis=1) == yy).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins).astype(np.int64)
    sum_conf = np.bincount(idx, weights=conf, minlength=bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, sum_conf / np.maximum(count, 1), np.nan)
        acc = np.where(count > 0, sum_acc / np.maximum(count, 1), np.nan)
    return {"edges": edges, "confidence": mean_conf, "accuracy": acc, "count": count}


def ece(p: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| x bin share."""
    r = reliability(p, y, bins)
    n = int(r["count"].sum())
    if n == 0:
        return float("nan")
    m = r["count"] > 0
    return float(np.sum(np.abs(r["accuracy"][m] - r["confidence"][m]) * r["count"][m]) / n)


def log_probs(p: np.ndarray) -> np.ndarray:
    """z = log p, the logits of a probability output (softmax(z) == p)."""
    return np.log(np.clip(as_probs(p), _EPS, 1.0))


def softmax_t(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(z / T) row-wise, in float64."""
    s = np.asarray(z, dtype=np.float64) / float(temperature)
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=1, keepdims=True)


def nll(z: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(z / T) on the labelled rows."""
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    keep = y >= 0
    z, y = z[keep], y[keep]
    if len(y) == 0:
        return float("nan")
    s = z / float(temperature)
    s = s - s.max(axis=1, keepdims=True)
    lse = np.log(np.exp(s).sum(axis=1))
    return float(np.mean(lse - s[np.arange(len(y)), y]))


def fit_temperature(logits_or_logp: np.ndarray, y: np.ndarray, lo: float = 0.05, hi: float = 20.0) -> float:
    """The T in [lo, hi] that minimises the NLL of softmax(z / T).

    NLL is convex in 1/T, hence unimodal in log T: a coarse log grid finds the bracket and a
    golden-section search refines it (no scipy on the workstation extra). Pass log p for a model
    whose output is already a softmax.
    """
    z = np.asarray(logits_or_logp, dtype=np.float64)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if z.ndim != 2 or len(z) != len(y):
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match")
    if not np.any(y >= 0):
        return 1.0
    grid = np.linspace(np.log(lo), np.log(hi), 41)
    vals = [nll(z, y, float(np.exp(g))) for g in grid]
    k = int(np.argmin(vals))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(z, y, float(np.exp(c))), nll(z, y, float(np.exp(d)))
    for _ in range(60):
        if b - a < 1e-6:
            break
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(z, y, float(np.exp(c)))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(z, y, float(np.exp(d)))
    return float(np.exp((a + b) / 2.0))


def compare(p_ref: np.ndarray, p_cand: np.ndarray, margin: float = 0.1) -> dict[str, Any]:
    """How closely a candidate's probabilities follow the reference's, label-free.

    ``agreement_margin`` counts only faces whose REFERENCE top-2 margin exceeds ``margin``:
    int8 rounding flips near-ties, and a flip there says little about the artifact.
    """
    a, b = as_probs(p_ref), as_probs(p_cand)
    if a.shape != b.shape:
        raise ValueError(f"reference {a.shape} and candidate {b.shape} probabilities differ in shape")
    n = len(a)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "agreement": nan, "agreement_margin": nan, "n_margin": 0,
                "mean_abs_dp": nan, "max_abs_dp": nan, "mean_kl": nan}
    same = a.argmax(axis=1) == b.argmax(axis=1)
    confident = top2_margin(a) > margin
    dp = np.abs(a - b)
    return {
        "n": int(n),
        "agreement": float(np.mean(same)),
        "agreement_margin": float(np.mean(same[confident])) if confident.any() else float("nan"),
        "n_margin": int(confident.sum()),
        "mean_abs_dp": float(dp.mean()),
        "max_abs_dp": float(dp.max()),
        "mean_kl": mean_kl(a, b),
    }
