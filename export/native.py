"""Native (C++) libraries' side effects kept out of the user's terminal.

TensorFlow, MLIR, oneDNN and onnxruntime write straight to file descriptor 2; both ``feredge
export`` and ``feredge parity`` run them, so the one way to quiet them lives here, not in either.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def quiet_native_logs(enabled: bool = True) -> Iterator[None]:
    """Send C++ log spam (TensorFlow, MLIR, oneDNN: written straight to fd 2, deaf to
    TF_CPP_MIN_LOG_LEVEL before absl initialises) to a scratch file, while Python's own stderr
    (progress bars, log records, the CLI's error line) still reaches the terminal.
    ``FEREDGE_TF_LOGS=1`` or ``-v`` shows everything."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if not enabled or os.environ.get("FEREDGE_TF_LOGS") or log.isEnabledFor(logging.DEBUG):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded interpreters)
        yield
        return
    scratch = tempfile.TemporaryFile()
    term = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True,
                            encoding=getattr(sys.stderr, "encoding", None) or "utf-8", errors="replace")
    old_stderr = sys.stderr
    moved = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old_stderr:
            moved.append(h)
            h.setStream(term)
    os.dup2(scratch.fileno(), 2)
    sys.stderr = term
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            term.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stderr
        for h in moved:
            h.setStream(old_stderr)
        with contextlib.suppress(Exception):
            term.close()
        scratch.seek(0)
        tail = scratch.read()[-4000:].decode("utf-8", "replace")
        scratch.close()
        if tail.strip():
            log.debug("native log output (tail):\n%s", tail)


def import_tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    with contextlib.suppress(Exception):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    return tf
