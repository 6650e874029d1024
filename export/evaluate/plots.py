"""Pictures for the parity report (PNG, matplotlib's Agg canvas).

Figures are built with :class:`matplotlib.figure.Figure` and an explicit Agg canvas instead of
``pyplot``: no global backend switch, no display needed, nothing left open between calls — the
suite runs headless in CI and on a workstation alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _figure(w: float, h: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # The caller writes into a staging folder; format given explicitly because the name may not end in .png.
    fig.savefig(str(path), format="png", bbox_inches="tight")


def confusion_png(path: Path, m: np.ndarray, labels: Sequence[str], title: str) -> None:
    """Row-normalised confusion matrix (rows: true class), counts written in each cell."""
    m = np.asarray(m)
    n = len(labels)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, np.maximum(rows, 1), dtype=np.float64)
    fig = _figure(1.0 + 0.75 * n, 0.8 + 0.7 * n)
    ax = fig.add_subplot(111)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if frac[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    _save(fig, path)


def reliability_png(path: Path, ref: dict, cand: dict, names: tuple[str, str],
                    eces: tuple[float | None, float | None]) -> None:
    """Reliability diagram: accuracy against confidence per bin, reference and candidate overlaid,
    with the bin populations below (a bin with few faces says little)."""
    fig = _figure(5.5, 6.0)
    ax = fig.add_subplot(211)
    ax2 = fig.add_subplot(212, sharex=ax)
    edges = ref["edges"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for r, name, e, style in ((ref, names[0], eces[0], "o-"), (cand, names[1], eces[1], "s--")):
        m = r["count"] > 0
        label = f"{name} (ECE {e:.3f})" if e is not None else name
        ax.plot(r["confidence"][m], r["accuracy"][m], style, ms=4, label=label)
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("reliability (15 bins)", fontsize=9)
    ax2.bar(centers - width / 4, ref["count"], width=width / 2, label=names[0])
    ax2.bar(centers + width / 4, cand["count"], width=width / 2, label=names[1])
    ax2.set_xlabel("confidence (top-1 probability)")
    ax2.set_ylabel("faces")
    ax2.legend(fontsize=7)
    _save(fig, path)


def contact_sheet_png(path: Path, faces: Sequence[np.ndarray], captions: Sequence[str], title: str,
                      cols: int = 6) -> None:
    """Faces in a grid with both predictions under each: what a reviewer looks at first."""
    import cv2

    n = len(faces)
    cols = max(1, min(cols, n))
    rows = (n + cols - 1) // cols
    fig = _figure(1.7 * cols, 2.1 * rows + 0.3, layout="constrained")
    for k, (img, cap) in enumerate(zip(faces, captions, strict=True)):
        ax = fig.add_subplot(rows, cols, k + 1)
        if img.ndim == 3:
            ax.imshow(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
        else:
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(cap, fontsize=6.5, linespacing=1.1)
    fig.suptitle(title, fontsize=9)
    _save(fig, path)
