"""Backend plug-in for Google's ``ai-edge-litert`` (the successor of tflite-runtime)."""

from __future__ import annotations

import importlib.util

from feredge.edge.backends import Runtime

NAME = "litert"
PACKAGE = "ai-edge-litert"


def available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def load() -> Runtime:
    import ai_edge_litert
    from ai_edge_litert.interpreter import Interpreter, load_delegate

    ver = getattr(ai_edge_litert, "__version__", None)
    if ver is None:  # importlib.metadata costs ~0.1 s of start-up on a Pi; only when needed
        from importlib.metadata import version

        ver = version(PACKAGE)
    return Runtime(NAME, ver, Interpreter, load_delegate)
