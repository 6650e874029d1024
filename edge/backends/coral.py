"""The Coral Edge TPU delegate (``libedgetpu``), loaded through whichever runtime is in use.

No PyPI package ships libedgetpu; it comes from a Debian package or a community build that
must match the runtime's TFLite version (see docs/edge.md). Two failures are normal and both
are turned into :class:`CoralUnavailable` with a reason a person can act on:

- the library is missing -> ``OSError`` from ``dlopen``;
- the library loads but finds no Edge TPU (unplugged, no udev permission) -> ``ValueError``.
"""

from __future__ import annotations

import gc
import logging
import platform
import sys
from typing import Any

from feredge.edge.errors import one_line

log = logging.getLogger(__name__)

LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


class CoralUnavailable(Exception):
    """The Edge TPU delegate cannot be used here; the message says why."""


def library_name() -> str:
    return LIBRARIES.get(platform.system(), LIBRARIES["Linux"])


def _half_built_delegate(u: Any) -> bool:
    # "_library": interrupted (or failed) before the library loaded; "_delegate_ptr": interrupted
    # inside tflite_plugin_create_delegate (a USB probe), before its result was assigned.
    return (isinstance(u.exc_value, AttributeError)
            and getattr(u.exc_value, "name", None) in ("_library", "_delegate_ptr")
            and "Delegate.__del__" in getattr(u.object, "__qualname__", repr(u.object)))


def _quiet_failed_delegates() -> None:
    """A failed (or Ctrl-C'd) ``load_delegate`` leaves a half-built ``Delegate`` whose ``__del__``
    raises ``AttributeError('_library')``; Python prints that as a traceback on stderr whenever
    the object is collected. That can be long after the load (a KeyboardInterrupt's traceback
    keeps it alive until the process exits), so the filter stays for the process's lifetime.
    It drops exactly that upstream noise and passes everything else on."""
    prev = sys.unraisablehook
    if getattr(prev, "_feredge_delegate_filter", False):
        return

    def hook(u: Any) -> None:
        if not _half_built_delegate(u):
            prev(u)

    hook._feredge_delegate_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def load_edgetpu_delegate(runtime: Any, device: str | None = None) -> Any:
    """Load the Edge TPU delegate with ``runtime.load_delegate``; ``device`` is e.g. ``"usb"``,
    ``"pci"`` or ``"usb:0"`` (libedgetpu's own option), None for the first one found."""
    lib = library_name()
    options = {"device": device} if device else None
    reason = None
    _quiet_failed_delegates()
    try:
        try:
            return runtime.load_delegate(lib, options)
        except OSError as e:
            reason = (
                f"{lib} is not installed ({one_line(e, 200, with_type=False)}); install a libedgetpu build that "
                f"matches "
                f"{runtime.name} {runtime.version} (see docs/edge.md)"
            )
        except (ValueError, RuntimeError) as e:  # ValueError from the Python wrapper; RuntimeError seen in old ones
            reason = (f"{lib} loaded but found no Edge TPU ({one_line(e, 200, with_type=False)}); "
                      "is the Coral plugged in and readable?")
    finally:
        gc.collect()  # collect the half-built delegate now, while the failure is being reported
    raise CoralUnavailable(reason)
