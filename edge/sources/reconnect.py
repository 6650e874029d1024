"""Keeping a camera alive: reconnect with backoff, mark offline, never crash.

A daemon on a shelf meets every failure a camera has: unplugged USB cables, an RTSP camera
rebooting, a driver that stops delivering frames without an error. :class:`CameraFeed`
turns any source opener into an endless stream of frames for the daemon loop:

- the source is read on its own thread and handed over through a small queue, so a read
  that never returns cannot hang the loop: after ``read_timeout`` seconds without a frame
  the camera is *offline*, the stuck reader is abandoned, and the source is reopened;
- failed opens and reads are retried with exponential backoff (``reconnect_min`` doubling
  up to ``reconnect_max``), reset by the first good frame;
- live cameras keep only the newest frame (a slow loop reports what is in front of the
  camera now, not a backlog); files keep every frame.

``heartbeat`` advances whenever the feed's own control loop runs (a frame, a wait slice, a
backoff slice), and stops when the *caller* stops pulling frames — which is exactly what the
systemd watchdog should see as a stall.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from feredge.edge.errors import EdgeError, one_line
from feredge.edge.sources import Frame, FrameSource
from feredge.edge.sources.spec import redact_text

log = logging.getLogger(__name__)

Opener = Callable[[], FrameSource]


class SourcePlan(NamedTuple):
    """How to (re)open one camera's source, and how it behaves once open."""

    opener: Opener
    finite: bool  # the feed ends when the source ends (a video file without ``loop``)
    live: bool  # drop stale frames: a slow loop sees what is in front of the camera now


@dataclass(frozen=True)
class ReconnectPolicy:
    """When a camera counts as offline and how fast it is retried (a camera's ``reconnect_min``,
    ``reconnect_max`` and ``read_timeout``)."""

    backoff_min: float
    backoff_max: float
    read_timeout: float

_END = object()


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class VideoFileSource:
    """A video file for the daemon: paced to its timestamps (``realtime``) or as fast as
    possible (``fast``), optionally looped. Built on the runtime's ``VideoSource``; frame
    indices keep counting across loops so every frame of a run is distinct."""

    kind = "video"

    def __init__(self, path: Path, *, pace: str = "realtime", loop: bool = False) -> None:
        from feredge.edge.sources.video import VideoSource

        self._video_cls = VideoSource
        self.path, self.pace, self.loop = Path(path), pace, loop
        self._src = VideoSource(self.path)  # opens now, so a bad file fails at open time
        self.name = str(self.path)
        self.fps = self._src.fps

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            src = self._src if self._src is not None else self._video_cls(self.path)
            self._src = None
            n = 0
            start = time.monotonic()
            first_pts: float | None = None
            try:
                for f in src:
                    if self.pace == "realtime":
                        pts = f.pts if f.pts is not None else n / (self.fps or 25.0)
                        if first_pts is None:
                            first_pts = pts
                        delay = start + (pts - first_pts) - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    yield Frame(image=f.image, index=index, ts=time.time(), source=self.name, pts=f.pts)
                    index += 1
                    n += 1
            finally:
                src.close()
            if not self.loop:
                return
            if n == 0:
                raise EdgeError(f"{self.path} has no decodable frames")

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


# ---- the feed -----------------------------------------------------------------------------

class CameraFeed:
    """Frames from one camera for as long as the daemon runs; see the module docstring."""

    def __init__(self, name: str, source: SourcePlan, *, stop: threading.Event, policy: ReconnectPolicy,
                 on_state: Callable[[bool, str], None] | None = None,
                 on_reconnect: Callable[[], None] | None = None) -> None:
        self.name = name
        self.opener, self.finite, self.live = source
        self.stop = stop
        self.policy = policy
        self.on_state = on_state
        self.on_reconnect = on_reconnect
        self.online = False
        self.offline_since: float | None = time.monotonic()
        self.reason = "starting"
        self.reconnects = 0
        self.opens = 0
        self.ended = False  # a finite source delivered its last frame
        self.heartbeat = time.monotonic()
        self._reader_thread: threading.Thread | None = None
        self._abandon: threading.Event | None = None

    def close(self, timeout: float = 2.0) -> bool:
        """Stop reading and wait (bounded) for the reader to release the device; False when a
        driver call is still blocked (the thread is a daemon and dies with the process)."""
        if self._abandon is not None:
            self._abandon.set()
        t = self._reader_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            return not t.is_alive()
        return True

    # ---- state ----------------------------------------------------------------------------
    def _set_online(self) -> None:
        self.online, self.offline_since, self.reason = True, None, ""
        log.info("camera %s online", self.name)
        if self.on_state:
            self.on_state(True, "")

    def _set_offline(self, reason: str) -> None:
        first = self.online or self.reason == "starting"
        was_online = self.online
        self.online, self.reason = False, reason
        if was_online or self.offline_since is None:
            self.offline_since = time.monotonic()
        if first:
            log.warning("camera %s offline: %s", self.name, reason)
            if self.on_state:
                self.on_state(False, reason)
        else:
            log.debug("camera %s still offline: %s", self.name, reason)

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stop.is_set():
            self.heartbeat = time.monotonic()
            left = end - self.heartbeat
            if left <= 0:
                return
            self.stop.wait(min(0.25, left))

    # ---- reading --------------------------------------------------------------------------
    def _reader(self, src: FrameSource, q: queue.Queue[Any], abandon: threading.Event) -> None:
        def put(item: Any) -> None:
            while not abandon.is_set():
                try:
                    q.put(item, timeout=0.2)
                    return
                except queue.Full:
                    if self.live and item is not _END and not isinstance(item, _Failed):
                        try:  # newest frame wins: drop the stale one
                            q.get_nowait()
                        except queue.Empty:
                            pass

        try:
            for frame in src:
                if abandon.is_set():
                    break
                put(frame)
            put(_END)
        except BaseException as e:  # anything a driver throws ends this source, not the daemon
            put(_Failed(e))
        finally:
            try:
                src.close()
            except Exception as e:
                log.debug("camera %s: close failed: %s", self.name, e)

    def frames(self) -> Iterator[Frame]:
        delay = self.policy.backoff_min
        attempt = 0
        while not self.stop.is_set():
            if attempt:
                self.reconnects += 1
                if self.on_reconnect:
                    self.on_reconnect()
                log.info("camera %s: reconnect attempt %d", self.name, self.reconnects)
            attempt += 1
            self.heartbeat = time.monotonic()
            try:
                src = self.opener()
            except Exception as e:
                reason = f"open failed: {_short(e)}"
            else:
                self.opens += 1
                finished, reason, got = yield from self._read_all(src)
                if got:
                    delay = self.policy.backoff_min  # it worked: the next failure starts the backoff afresh
                if self.stop.is_set():
                    return
                if finished and self.finite:
                    self.ended = True
                    self._set_offline("end of file")
                    return
            self._set_offline(reason)
            self._sleep(delay)
            delay = min(delay * 2, self.policy.backoff_max)

    def _read_all(self, src: FrameSource) -> Generator[Frame, None, tuple[bool, str, int]]:
        """Frames of one opened source, read on a thread of its own; returns ``(finished, reason
        it stopped, frames got)`` when it ends, fails, stalls or the daemon stops."""
        q: queue.Queue[Any] = queue.Queue(maxsize=1 if self.live else 4)
        abandon = threading.Event()
        reader = threading.Thread(target=self._reader, args=(src, q, abandon), name=f"read-{self.name}", daemon=True)
        try:
            reader.start()
        except RuntimeError as e:  # "can't start new thread" (TasksMax reached): offline, retried with backoff
            with contextlib.suppress(Exception):
                src.close()
            return False, f"cannot start a reader thread: {_short(e)}", 0
        self._reader_thread, self._abandon = reader, abandon
        reason, finished, got = "source ended", False, 0
        last = time.monotonic()
        try:
            while not self.stop.is_set():
                try:
                    item = q.get(timeout=0.25)
                except queue.Empty:
                    self.heartbeat = now = time.monotonic()
                    if now - last > self.policy.read_timeout:
                        reason = f"no frame for {self.policy.read_timeout:g} s"
                        break
                    continue
                if item is _END:
                    finished = True
                    break
                if isinstance(item, _Failed):
                    reason = f"read failed: {_short(item.exc)}"
                    break
                self.heartbeat = last = time.monotonic()
                if got == 0:
                    self._set_online()
                got += 1
                yield item
        finally:
            abandon.set()
        if reader.is_alive() and not finished and not self.stop.is_set():
            log.warning("camera %s: reader still blocked; abandoning it", self.name)
        return finished, reason, got


def _short(e: BaseException) -> str:
    """One line for a reason/log; a driver's message may quote the URL it was given, so redacted."""
    return redact_text(one_line(e))
