"""JSON lines to stdout (journald collects them) or to a size-rotated file.

A Pi's SD card fills and wears out; rotation keeps at most ``max_bytes * (backups + 1)`` on
disk. The file is opened line-buffered and each record is one ``write`` of one line, so a
reader tailing it never sees half a record.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from feredge.edge import jsonsafe
from feredge.edge.daemon.config import JsonlConfig
from feredge.edge.daemon.sinks import Sink
from feredge.edge.errors import EdgeError


class RotatingWriter:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int, backups: int) -> None:
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self._f: IO[str] | None = None

    def _open(self) -> IO[str]:
        if self._f is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._f = open(self.path, "a", encoding="utf-8", buffering=1)
            except OSError as e:
                raise EdgeError(f"cannot open the JSON lines file {self.path}: {e.strerror or e}") from None
        return self._f

    def write_line(self, line: str) -> None:
        f = self._open()
        if f.tell() + len(line) + 1 > self.max_bytes and f.tell() > 0:
            self._rotate()
            f = self._open()
        f.write(line + "\n")

    def _rotate(self) -> None:
        assert self._f is not None
        self._f.close()
        self._f = None
        if self.backups <= 0:
            self.path.unlink(missing_ok=True)
            return
        for i in range(self.backups - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{i}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class JsonlSink(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlConfig, stream: IO[str] | None = None) -> None:
        self.cfg = config
        self._lock = threading.Lock()
        self._stream = stream
        self._writer: RotatingWriter | None = None
        if config.path != "-":
            self._writer = RotatingWriter(config.path, config.max_bytes, config.backups)

    def start(self) -> None:
        if self._writer is not None:
            with self._lock:
                self._writer._open()  # fail at start-up, not at the first face

    def _emit(self, obj: dict[str, Any]) -> None:
        line = jsonsafe.dumps(obj, separators=(",", ":"), ensure_ascii=False)
        with self._lock:
            if self._writer is not None:
                self._writer.write_line(line)
            else:
                out = self._stream or sys.stdout
                out.write(line + "\n")
                out.flush()

    def frame(self, camera: str, record: dict[str, Any]) -> None:
        mode = self.cfg.mode
        if mode == "all" or (mode == "frames" and record.get("faces")):
            self._emit({"type": "frame", **record})

    def events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self._emit({"type": "event", **ev})

    def camera_state(self, camera: str, online: bool, reason: str = "") -> None:
        self._emit({"type": "camera", "camera": camera, "online": online, "reason": reason,
                    "ts": round(time.time(), 3)})

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()


def create(config: Any, daemon: Any) -> JsonlSink:
    return JsonlSink(config.jsonl)
