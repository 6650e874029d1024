"""Backend plug-in for the older ``tflite-runtime`` wheel (still on many Pi images; Python <= 3.11)."""

from __future__ import annotations

import importlib.util

from feredge.edge.backends import Runtime

NAME = "tflite-runtime"
PACKAGE = "tflite-runtime"


def available() -> bool:
    return importlib.util.find_spec("tflite_runtime") is not None


def load() -> Runtime:
    import tflite_runtime
    from tflite_runtime.interpreter import Interpreter, load_delegate

    return Runtime(NAME, getattr(tflite_runtime, "__version__", "unknown"), Interpreter, load_delegate)
