"""Error types that carry a message meant for the user.

The CLI prints any :class:`FeredgeError` as one line and exits with status 2; every other
exception is a bug and is allowed to show its traceback.
"""

from __future__ import annotations


class FeredgeError(Exception):
    """Base of all user-facing errors (bad input, missing files, unusable models)."""

    exit_code = 2


class InternalError(FeredgeError):
    """A bug (ours or a library's) met inside an isolated job: one line and exit status 3, so a
    script can tell it from bad input (2); ``-v`` shows the traceback."""

    exit_code = 3


class EdgeError(FeredgeError):
    """A problem on the device side: model, contract, camera, config."""


class ContractError(EdgeError):
    """A model contract is missing, malformed or does not match its artifact."""


def one_line(e: BaseException, limit: int = 240, *, with_type: bool = True) -> str:
    """An exception as one line of at most ``limit`` characters, for a message or a reason.

    A user-facing error is its own message; anything else is prefixed with its type (unless
    ``with_type`` is off), since "[Errno 2] No such file" alone does not say what failed."""
    text = " ".join(str(e).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text if isinstance(e, FeredgeError) or not with_type else f"{type(e).__name__}: {text}"


# ---- Ctrl-C that a library swallowed ------------------------------------------------------------
# A Ctrl-C that lands inside a C extension's initialisation can come back as another error: numpy
# reports "PyCapsule_Import could not import module datetime" as an ImportError, and a caller that
# falls back on ImportError (the interpreter backends) then carries on as if nothing was asked. The
# CLI's SIGINT handler records every Ctrl-C here, so the places that catch such errors can tell.
_interrupted = False


def note_interrupt(signum: int, frame: object) -> None:
    """SIGINT handler: remember the interrupt, then raise it as Python's own handler does."""
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def forget_interrupt() -> None:
    """A new command starts (the CLI's ``main`` may run more than once in one process)."""
    global _interrupted
    _interrupted = False


def interrupted() -> bool:
    """Whether Ctrl-C was pressed since the CLI started (even if some library turned it into another error)."""
    return _interrupted
