"""``feredge`` command line: a thin layer over the Python API.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``. Workstation commands live in ``export`` and import TensorFlow only
inside ``run``, so ``feredge --help`` works on a device without TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

from feredge import __version__
from feredge.edge.errors import FeredgeError, forget_interrupt, interrupted, note_interrupt

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "export": ("feredge.export.convert.cli", "convert a Keras model to calibrated int8 TFLite and ONNX"),
    "parity": ("feredge.export.evaluate.cli", "check exported artifacts against the desktop model"),
    "classify": ("feredge.edge.cli.classify", "find faces in images, video or a camera and classify their expressions"),
    "doctor": ("feredge.edge.cli.doctor", "check this device: interpreter, cascade, cameras, Coral, model"),
    "train": ("feredge.export.train.recipe", "train the default FER2013 model (the recipe behind models/)"),
    "run": ("feredge.edge.daemon.run", "run as a service: cameras -> expressions -> JSON lines, MQTT, Prometheus"),
    "bundle": ("feredge.export.bundle.build", "build an offline install bundle (wheels, model, service) for a Pi"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the chosen command's module is imported (start-up time on a Pi
    matters, and workstation commands must not pull TensorFlow into ``--help``)."""
    parser = argparse.ArgumentParser(
        prog="feredge",
        description="Facial-expression recognition at the edge.",
    )
    parser.add_argument("--version", action="version", version=f"feredge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    words = sys.argv[1:] if argv is None else argv
    chosen = next((w for w in words if not w.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        if name != chosen:
            sub.add_parser(name, help=help_text)
            continue
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip())
        mod.add_arguments(p)
        p.set_defaults(_module=mod)
    return parser


def _setup_logging(verbose: bool) -> None:
    # journald adds its own timestamps; keep lines short and parseable.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if os.environ.get("INVOCATION_ID") is None:  # not under systemd
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` that removes a half-written file runs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    forget_interrupt()
    previous = signal.signal(signal.SIGINT, note_interrupt) if _main_thread() else None
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while the command's modules were still importing
        print("feredge: interrupted", file=sys.stderr)
        return 130
    except Exception:
        if interrupted():  # a Ctrl-C a library reported as another error (numpy: an ImportError)
            print("feredge: interrupted", file=sys.stderr)
            return 130
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    _setup_logging(args.verbose)
    # `feredge run` installs its own handlers (a clean stop); every other command unwinds.
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if _main_thread() else None
    try:
        return int(args._module.run(args) or 0)
    except FeredgeError as e:
        if interrupted():  # e.g. "no TFLite interpreter" because Ctrl-C broke its import
            print(f"feredge {args.command}: interrupted", file=sys.stderr)
            return 130
        print(f"feredge {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        # The reader went away (`feredge classify --json … | head -1`): stop quietly, as Unix tools
        # do. Python would report the pipe again when it flushes stdout at exit, so point stdout at
        # /dev/null first.
        _silence_stdout()
        return 128 + signal.SIGPIPE
    except Terminated:
        print(f"feredge {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"feredge {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
