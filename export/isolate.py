"""Run a workstation job in a spawned child, so that a crash in native code becomes one line.

TensorFlow's converter, tf2onnx, onnxruntime's quantiser and the LiteRT / onnxruntime runs of
verify, score and parity are C++: a segfault there kills the Python process with no message and
no cleanup. ``feredge export`` and ``feredge parity`` therefore run their whole job in one child
started with ``spawn`` (never ``fork`` after TensorFlow is imported: its thread pools do not
survive a fork). The parent never imports TensorFlow, so isolation costs one interpreter start,
not a model reload per phase. The child announces each phase it begins (:func:`phase`); when it
dies the parent names that phase and its artifact, removes the staging folder the child left in
the output folder (and the folder itself if the job created it) and raises :class:`ExportError`.

``FEREDGE_FAULT_PHASE=<key>`` makes the process kill itself with SIGSEGV when phase ``<key>``
begins: the fault injection the tests use to prove the path above (no real converter bug needs to
be kept around for that). ``FEREDGE_ISOLATE=0`` runs in-process, e.g. under a debugger.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from feredge.edge.errors import FeredgeError, InternalError, one_line
from feredge.edge.fsutil import STAGING_PREFIX
from feredge.export.errors import ExportError

log = logging.getLogger(__name__)

_conn: Any = None  # the child's end of the pipe to the parent; None in-process


def phase(key: str, what: str, artifact: str | None = None) -> None:
    """Mark the start of a phase that may crash in native code (a no-op outside a child)."""
    if _conn is not None:
        _send(_conn, ("phase", key, what, artifact))
    if os.environ.get("FEREDGE_FAULT_PHASE") == key:
        log.debug("FEREDGE_FAULT_PHASE=%s: simulating a native crash", key)
        os.kill(os.getpid(), signal.SIGSEGV)


def enabled() -> bool:
    return os.environ.get("FEREDGE_ISOLATE", "1") != "0"


def run_isolated(fn: Callable[..., Any], *args: Any, job: str, out_dir: str | os.PathLike[str] | None = None,
                 verbose: bool = False) -> Any:
    """``fn(*args)`` in a spawned child; its return value, or its FeredgeError re-raised here.

    ``fn`` and its arguments must be picklable (module-level function, dataclass options)."""
    if not enabled():
        return fn(*args)
    out = Path(out_dir) if out_dir is not None else None
    existed = out is not None and out.exists()
    before = _staging_dirs(out)
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_child, args=(send, fn, args, verbose), name=f"feredge-{job}")
    child.start()
    send.close()
    last: tuple[str, str, str | None] | None = None
    outcome: tuple[Any, ...] | None = None
    try:
        while outcome is None:
            try:
                msg = recv.recv()
            except EOFError:
                break
            if msg[0] == "phase":
                last = msg[1:]
            else:
                outcome = msg
        child.join()
    except BaseException:  # Ctrl-C or SIGTERM here: stop the child the same way, let it clean up
        with _signals_held():  # a second SIGTERM or Ctrl-C must not cut the clean-up short
            _stop(child)
            _clean(out, existed, before, child.pid)
        raise
    if outcome is not None and outcome[0] == "ok":
        return outcome[1]
    if outcome is not None and outcome[0] == "error":
        raise outcome[1]
    if outcome is not None and outcome[0] == "interrupted":
        raise KeyboardInterrupt
    _clean(out, existed, before, child.pid)
    raise ExportError(_crash_message(job, child.exitcode, last, out))


def _crash_message(job: str, code: int | None, last: tuple[str, str, str | None] | None, out: Path | None) -> str:
    how = (f"crashed in native code ({signal.Signals(-code).name})" if code is not None and code < 0
           else f"died without a result (exit status {code})")
    where = "before its first phase" if last is None else f"while {last[1]}"
    artifact = f" ({last[2]})" if last is not None and last[2] else ""
    left = f"nothing was written to {out}" if out is not None else "nothing was written"
    return f"{job} {how} {where}{artifact}; {left} (a converter or runtime bug: run with -v for the phase log)"


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...], verbose: bool) -> None:
    global _conn
    from feredge.edge.cli.main import _on_sigterm, _setup_logging

    _setup_logging(verbose)
    signal.signal(signal.SIGTERM, _on_sigterm)
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        # tqdm's default lock is a multiprocessing semaphore, which a crashed child leaks (and
        # the resource tracker then reports at exit): one process needs only a thread lock.
        tqdm.set_lock(threading.RLock())
    _conn = conn
    try:
        result = fn(*args)
    except FeredgeError as e:
        _send(conn, ("error", e))
    except KeyboardInterrupt:
        _send(conn, ("interrupted",))
    except Exception as e:  # a bug of ours: one line here, the traceback under -v
        log.debug("%s", traceback.format_exc())
        _send(conn, ("error", InternalError(f"internal error, a bug rather than bad input: {one_line(e)} (run with "
                                            "-v for the traceback, and please report it)")))
    else:
        _send(conn, ("ok", result))
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def _send(conn: Any, msg: tuple[Any, ...]) -> None:
    """To the parent; a parent that is gone (stopped, cleaning up) is no error of the child's."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError, EOFError, OSError):
        conn.send(msg)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT ignored for the duration (main thread only), then restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def _stop(child: Any) -> None:
    if child.is_alive():
        with contextlib.suppress(OSError):
            os.kill(child.pid, signal.SIGTERM)
        child.join(30)
    if child.is_alive():
        child.kill()
        child.join()


def _staging_dirs(out: Path | None) -> set[Path]:
    if out is None or not out.is_dir():
        return set()
    return {p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)}


def _clean(out: Path | None, existed: bool, before: set[Path], pid: int | None) -> None:
    """What a killed child could not remove itself: its own staging folder (named with its PID;
    a concurrent export's is left alone), and ``out`` if it made it."""
    if out is None:
        return
    for p in _staging_dirs(out) - before:
        if p.name.startswith(f"{STAGING_PREFIX}{pid}-"):
            shutil.rmtree(p, ignore_errors=True)
    if not existed:
        with contextlib.suppress(OSError):
            out.rmdir()  # only if empty
