"""Backend plug-in for Google's ``ai-edge-litert`` (the successor of tflite-runtime)."""

from __future__ import annotations

import importlib.util

from edge.backends import Runtime

NAME = "litert"
PACKAGE = "ai-edge-litert"


def available() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None


def load() -> Runtime:
    from importlib.metadata import PackageNotFoundError, version

    from ai_edge_litert.interpreter import Interpreter, load_delegate

    try:
        ver = version(PACKAGE)
    except PackageNotFoundError:
        ver = "unknown"
    return Runtime(NAME, ver, Interpreter, load_delegate)
