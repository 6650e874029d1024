"""How the weights of a Keras 1 or Keras 2 file are laid out (Theano kernels, channels-first
maps): read from the file's attributes, or ``--keras1-theano``."""

from __future__ import annotations

from typing import Any

from feredge.export.load.common import attr_str
from feredge.export.load.legacy import WeightLayout, is_keras1_weights


def keras1_options(attrs: Any, weights: Any, keras1_theano: bool) -> WeightLayout | None:
    """Keras 1 layout, from --keras1-theano or what the file says (version, backend, ordering)."""
    if not (keras1_theano or is_keras1_weights(weights, attrs)):
        return None
    backend = (attr_str(attrs, "backend") or "").lower()
    ordering = (attr_str(attrs, "image_dim_ordering") or attr_str(attrs, "image_data_format") or "").lower()
    theano = keras1_theano or backend == "theano"
    return WeightLayout(enabled=True, flip_kernels=theano,
                         channels_first=theano or ordering in ("th", "channels_first"))


def keras2_layout(h5: Any, weights_group: Any, channels_first: bool) -> WeightLayout:
    """Keras 2 files from the Theano backend hold kernels Theano convolved with (flip them);
    a channels-first architecture was turned channels-last (permute Dense after Flatten)."""
    backend = (attr_str(h5.attrs, "backend") or attr_str(weights_group.attrs, "backend") or "").lower()
    return WeightLayout(enabled=False, channels_first=channels_first, flip_keras2_conv=backend == "theano")


def layout_note(layout: WeightLayout) -> str:
    parts = (["theano"] if layout.flip_keras2_conv else []) + (["channels-first -> channels-last"]
                                                                if layout.channels_first else [])
    return f", {', '.join(parts)}" if parts else ""


def keras1_how(opts: WeightLayout, attrs: Any) -> str:
    if opts.flip_kernels:
        return "theano"
    ordering = (attr_str(attrs, "image_dim_ordering") or "").lower()
    return f"tensorflow, {ordering}" if ordering else "tensorflow"

