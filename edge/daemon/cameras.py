"""Opening a configured camera: its source spec checked at start-up, and the plug-in that opens it.

This is the daemon's side of the sources: it reads ``[[camera]]`` settings (and the camera's
password, a secret), while the runtime core (:mod:`feredge.edge.sources`) knows nothing of the
daemon's configuration. The feed that keeps an opened source alive is
:class:`feredge.edge.sources.reconnect.CameraFeed`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from feredge.edge.daemon.config import CameraConfig, ConfigError, read_secret
from feredge.edge.errors import EdgeError
from feredge.edge.sources import FrameSource
from feredge.edge.sources.reconnect import SourcePlan, VideoFileSource
from feredge.edge.sources.spec import SourceSpec, parse_spec, with_password


def check_source(cfg: CameraConfig) -> SourceSpec:
    """What can be checked before start-up (``feredge run --check``, and ``run`` itself): the spec
    parses, a file exists and decodes at least one frame. Errors name the camera, never a secret."""
    try:
        spec = parse_spec(cfg.source)
    except EdgeError as e:
        raise ConfigError(f"camera {cfg.name}: {e}") from None
    if spec.kind == "path":
        p = Path(cfg.source)
        if not p.is_file():
            raise ConfigError(f"camera {cfg.name}: source {cfg.source!r} is not a file, a device, a URL or 'auto'")
        if p.stat().st_size == 0:
            raise ConfigError(f"camera {cfg.name}: source {cfg.source} is an empty file")
        _first_frame(cfg.name, p)
    if (cfg.password_env or cfg.password_credential) and spec.kind != "url":
        raise ConfigError(f"camera {cfg.name}: password_env / password_credential are for stream URLs only")
    if spec.kind == "url" and camera_password(cfg):
        try:
            with_password(spec.raw, "x")
        except EdgeError as e:
            raise ConfigError(f"camera {cfg.name}: {e}") from None
    return spec


def _first_frame(name: str, path: Path) -> None:
    from feredge.edge.sources.video import VideoSource

    try:
        src = VideoSource(path)
    except EdgeError as e:
        raise ConfigError(f"camera {name}: {e}") from None
    try:
        if next(iter(src), None) is None:
            raise ConfigError(f"camera {name}: {path} has no decodable video frames")
    finally:
        src.close()


def camera_password(cfg: CameraConfig) -> str | None:
    """A stream URL's password from a systemd credential or the environment (never the file)."""
    return read_secret(None, cfg.password_env, cfg.password_credential, what=f"camera {cfg.name} password")


def make_opener(cfg: CameraConfig) -> SourcePlan:
    """``(opener, finite, live)`` for a camera config, from :data:`OPENERS` by the spec's kind."""
    spec = check_source(cfg)
    open_fn, live = OPENERS[spec.kind]
    finite = spec.kind == "path" and not cfg.loop
    return SourcePlan((lambda: open_fn(cfg, spec)), finite, live)


def _open_picamera2(cfg: CameraConfig, spec: SourceSpec) -> FrameSource:
    from feredge.edge.sources.picamera2 import Picamera2Source

    index = int(spec.device or 0)
    return Picamera2Source(index, width=cfg.width, height=cfg.height, fps=cfg.fps, timeout=cfg.read_timeout)


def _open_v4l2(cfg: CameraConfig, spec: SourceSpec) -> FrameSource:
    from feredge.edge.sources.v4l2 import V4l2Source

    device = 0 if spec.device is None else spec.device
    return V4l2Source(device, width=cfg.width, height=cfg.height, fps=cfg.fps)


def _open_url(cfg: CameraConfig, spec: SourceSpec) -> FrameSource:
    from feredge.edge.sources.camera import CameraSource

    return CameraSource(spec, password=camera_password(cfg))


def _open_file(cfg: CameraConfig, spec: SourceSpec) -> FrameSource:
    return VideoFileSource(Path(cfg.source), pace=cfg.pace, loop=cfg.loop)


def _open_auto(cfg: CameraConfig, spec: SourceSpec) -> FrameSource:
    """A Pi camera when libcamera sees one, else the first V4L2 device."""
    from feredge.edge.sources.picamera2 import camera_present
    from feredge.edge.sources.v4l2 import list_devices

    if camera_present():
        return _open_picamera2(cfg, parse_spec("picamera2:0"))
    devices = list_devices()
    if not devices:
        raise EdgeError("no camera found (no Pi camera via picamera2, no /dev/video*)")
    return _open_v4l2(cfg, parse_spec(devices[0]))


# The daemon's source plug-ins by spec kind (feredge.edge.sources.spec): (open, live). Each plug-in
# module is imported only when its kind is opened.
OPENERS: dict[str, tuple[Callable[[CameraConfig, SourceSpec], FrameSource], bool]] = {
    "auto": (_open_auto, True),
    "picamera2": (_open_picamera2, True),
    "v4l2": (_open_v4l2, True),
    "url": (_open_url, True),
    "path": (_open_file, False),
}
