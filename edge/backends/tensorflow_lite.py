"""Backend plug-in for ``tensorflow.lite`` — the documented exception to "edge never imports TensorFlow".

It is imported only when ``--backend tensorflow`` is chosen or when neither ai-edge-litert nor
tflite-runtime is installed (a workstation with only TensorFlow). ``available()`` looks for the
package without importing it, so a default run on a device never loads TensorFlow.
"""

from __future__ import annotations

import importlib.util

from feredge.edge.backends import Runtime

NAME = "tensorflow"
PACKAGE = "tensorflow"


def available() -> bool:
    # find_spec of the top-level name only: "tensorflow.lite" would import tensorflow itself.
    return importlib.util.find_spec("tensorflow") is not None


def load() -> Runtime:
    import importlib

    tf = importlib.import_module("tensorflow")  # deliberate: only on explicit request or as last resort
    return Runtime(NAME, tf.__version__, tf.lite.Interpreter, tf.lite.experimental.load_delegate)
