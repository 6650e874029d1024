"""Interpreter backends: one small plug-in module per TFLite runtime.

A device may have any one of three Python packages that can run a ``.tflite`` file:
``ai-edge-litert`` (the current one), ``tflite-runtime`` (older Pi images, Python <= 3.11) or
full TensorFlow (a workstation). ``backend="auto"`` takes the first that imports, in that order,
so TensorFlow is imported only when it is asked for by name or is the only runtime present —
the one documented exception to "edge never imports TensorFlow".

Every plug-in module exposes the same four names:

- ``NAME`` — the ``--backend`` value; ``PACKAGE`` — what to ``pip install``;
- ``available() -> bool`` — cheap check that never imports the runtime;
- ``load() -> Runtime`` — imports it and returns its ``Interpreter`` class, ``load_delegate``
  function and version.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feredge.edge.errors import EdgeError, interrupted, one_line

log = logging.getLogger(__name__)

# Order matters: "auto" tries them in this order.
BACKENDS: dict[str, str] = {
    "litert": "feredge.edge.backends.litert",
    "tflite-runtime": "feredge.edge.backends.tflite_runtime",
    "tensorflow": "feredge.edge.backends.tensorflow_lite",
}
ALIASES = {
    "ai-edge-litert": "litert",
    "tflite_runtime": "tflite-runtime",
    "tflite": "tflite-runtime",
    "tf": "tensorflow",
}
DEVICES = ("auto", "cpu", "coral")


@dataclass(frozen=True)
class Runtime:
    """What a backend plug-in hands back once its package is imported."""

    name: str
    version: str
    interpreter_class: Callable[..., Any]
    load_delegate: Callable[..., Any]


@dataclass
class InterpreterHandle:
    """An allocated interpreter plus how it came to be (doctor and logs report this)."""

    interpreter: Any
    backend: str
    version: str
    device: str  # "cpu" | "coral"
    num_threads: int | None = None
    fallback_reason: str | None = None  # why device="auto" ended up on the CPU
    delegates: list[Any] = field(default_factory=list)  # kept alive as long as the interpreter


def backend_module(name: str):
    """The plug-in module for a backend name (``litert``, ``tflite-runtime``, ``tensorflow``)."""
    key = ALIASES.get(name, name)
    if key not in BACKENDS:
        raise EdgeError(f"unknown backend {name!r}: choose auto, {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[key])


def available_backends() -> list[str]:
    """Backends whose package is installed, in "auto" order, without importing any of them."""
    return [name for name in BACKENDS if backend_module(name).available()]


def load_runtime(backend: str = "auto") -> Runtime:
    """Import the requested runtime (or the first installed one for ``auto``)."""
    if backend != "auto":
        mod = backend_module(backend)
        try:
            return mod.load()
        except ImportError as e:
            if interrupted():
                raise KeyboardInterrupt from None
            raise EdgeError(
                f"backend {mod.NAME!r} is not installed ({one_line(e, with_type=False)}); pip install {mod.PACKAGE}"
            ) from None
    errors = []
    for name in BACKENDS:
        mod = backend_module(name)
        if not mod.available():
            errors.append(f"{mod.PACKAGE} not installed")
            continue
        try:
            return mod.load()
        except ImportError as e:  # installed but broken (e.g. a wheel for another CPU)
            if interrupted():  # or Ctrl-C landed in its import: stop, do not fall back
                raise KeyboardInterrupt from None
            errors.append(f"{mod.PACKAGE}: {one_line(e, with_type=False)}")
            log.debug("backend %s not usable: %s", name, e)
    raise EdgeError(
        "no TFLite interpreter is installed (" + "; ".join(errors) + "); pip install 'feredge[edge]' (ai-edge-litert)"
    )


def is_edgetpu_model(path: str | os.PathLike[str]) -> bool:
    """True for a model compiled by ``edgetpu_compiler`` (it holds an ``edgetpu-custom-op``)."""
    with open(path, "rb") as f:
        return b"edgetpu-custom-op" in f.read()


def _coral_delegates(rt: Runtime, path: Path, device: str, edgetpu_model: bool) -> tuple[list[Any], str | None]:
    """``([delegate], None)`` when the Edge TPU is to be used, else ``([], why not)``.

    Without a Coral, a CPU model under ``device="auto"`` loses nothing, so that is logged at
    DEBUG (a WARNING on every run of a laptop without one would be noise); an Edge TPU model
    without a Coral cannot run at all, and says so."""
    from feredge.edge.backends import coral

    if device not in ("auto", "coral"):
        return [], None
    try:
        delegates = [coral.load_edgetpu_delegate(rt)]
    except coral.CoralUnavailable as e:
        if device == "coral":
            raise EdgeError(f"--device coral: {e}") from None
        log.debug("Coral Edge TPU not used, running on the CPU: %s", e)
        return [], str(e)
    if not edgetpu_model:
        log.warning("%s is not compiled for the Edge TPU (feredge export --edgetpu), so it runs on the CPU "
                    "even though a Coral is attached", path.name)
    return delegates, None


def make_interpreter(
    path: str | os.PathLike[str],
    backend: str = "auto",
    device: str = "auto",
    num_threads: int | None = None,
) -> InterpreterHandle:
    """Create and allocate an interpreter for ``path`` on the CPU or a Coral Edge TPU.

    ``device="auto"`` tries the Edge TPU delegate and falls back to the CPU;
    ``device="coral"`` raises :class:`EdgeError` instead of falling back.
    """
    if device not in DEVICES:
        raise EdgeError(f"unknown device {device!r}: choose {', '.join(DEVICES)}")
    if num_threads is not None and num_threads < 1:
        raise EdgeError(f"--threads must be >= 1, got {num_threads}")
    path = Path(path)
    if not path.is_file():
        raise EdgeError(f"model not found: {path}")
    rt = load_runtime(backend)
    edgetpu_model = is_edgetpu_model(path)
    delegates, fallback = _coral_delegates(rt, path, device, edgetpu_model)
    if edgetpu_model and not delegates:
        raise EdgeError(
            f"{path.name} is compiled for the Edge TPU and cannot run on the CPU"
            + (f" ({fallback})" if fallback else "")
            + "; use the CPU model (<name>.int8.tflite) or attach a Coral"
        )
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if delegates:
        kwargs["experimental_delegates"] = delegates
    if num_threads is not None:
        kwargs["num_threads"] = int(num_threads)
    try:
        interp = rt.interpreter_class(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgeError(f"{rt.name} cannot load {path.name}: {one_line(e, 300, with_type=False)}") from None
    used = "coral" if delegates and edgetpu_model else "cpu"
    log.debug("interpreter %s %s on %s, threads=%s", rt.name, rt.version, used, num_threads)
    return InterpreterHandle(interpreter=interp, backend=rt.name, version=rt.version, device=used,
                             num_threads=num_threads, fallback_reason=fallback, delegates=delegates)
