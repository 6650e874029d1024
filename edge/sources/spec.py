"""What a source string means, decided in one place, and how it may be shown.

``feredge classify INPUT``, ``[[camera]] source = …``, ``--source`` and ``run --check`` all read
a source through :func:`parse_spec`, so ``/dev/v4l/by-id/…`` is a camera everywhere and a typo
such as ``v4l2:abc`` or ``ftp://…`` is refused before anything opens. Stream URLs often carry a
password (``rtsp://user:pass@cam/…``) or a token in the query; :func:`redact` is the only form
of a source that logs, records, endpoints and errors ever show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from urllib.parse import quote, urlsplit, urlunsplit

from feredge.edge.errors import EdgeError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm"})
# What OpenCV's FFmpeg backend reads as a live stream.
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})
# Query parameters whose values are secrets (lower case; compared without "-" and "_").
SECRET_PARAMS = frozenset({"token", "accesstoken", "authtoken", "auth", "key", "apikey", "password", "passwd",
                           "pwd", "pass", "secret", "signature", "sig", "credential", "credentials", "session"})
MASK = "***"


@dataclass(frozen=True)
class SourceSpec:
    """``kind``: ``auto`` | ``picamera2`` | ``v4l2`` | ``url`` | ``path`` (an image, folder or video
    file: which one is known only by looking at it). ``device``: the V4L2 index or device path,
    or the picamera2 index."""

    raw: str
    kind: str
    device: int | str | None = None

    @property
    def is_camera(self) -> bool:
        return self.kind in ("auto", "picamera2", "v4l2", "url")

    @property
    def display(self) -> str:
        """The spec as it may be shown: credentials masked."""
        return redact(self.raw)


def parse_spec(spec: str | int) -> SourceSpec:
    """The one parser of source strings; a malformed camera spec is an :class:`EdgeError`."""
    s = str(spec).strip()
    if not s:
        raise EdgeError("empty source")
    if s == "auto":
        return SourceSpec(s, "auto")
    if s == "picamera2" or s.startswith("picamera2:"):
        idx = s.partition(":")[2] or "0"
        if not idx.isdigit():
            raise EdgeError(f"source {s!r}: the picamera2 index {idx!r} is not a number")
        return SourceSpec(s, "picamera2", int(idx))
    if s.startswith("v4l2:"):
        dev = s[len("v4l2:"):]
        if not (dev.isdigit() or dev.startswith("/dev/")):
            raise EdgeError(f"source {s!r}: use v4l2:N or v4l2:/dev/… (a device number or path)")
        return SourceSpec(s, "v4l2", _v4l2_device(dev))
    if s.isdigit() or s.startswith(("/dev/video", "/dev/v4l/")):
        return SourceSpec(s, "v4l2", _v4l2_device(s))
    if "://" in s:
        scheme = s.partition("://")[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise EdgeError(f"source {redact(s)!r}: {scheme}:// is not a stream OpenCV can read "
                            f"(use one of {', '.join(sorted(STREAM_SCHEMES))})")
        return SourceSpec(s, "url")
    return SourceSpec(s, "path")


def _v4l2_device(dev: str) -> int | str:
    """``0`` / ``/dev/video0`` -> 0 (what ``cv2.VideoCapture`` wants); a udev alias stays a path."""
    if dev.isdigit():
        return int(dev)
    if dev.startswith("/dev/video") and dev[len("/dev/video"):].isdigit():
        return int(dev[len("/dev/video"):])
    return dev


def is_image_path(path: str | PurePath) -> bool:
    return PurePath(path).suffix.lower() in IMAGE_EXTENSIONS


# ---- redaction --------------------------------------------------------------------------

def _secret_param(name: str) -> bool:
    return name.lower().replace("-", "").replace("_", "") in SECRET_PARAMS


def _redact_query(query: str) -> str:
    parts = []
    for item in query.split("&") if query else []:
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={MASK}" if eq and _secret_param(name) else item)
    return "&".join(parts)


def redact(url: str) -> str:
    """``rtsp://user:pass@cam/s?token=x`` -> ``rtsp://***@cam/s?token=***``; other text unchanged."""
    if "://" not in url:
        path, q, query = url.partition("?")
        return f"{path}?{_redact_query(query)}" if q else url
    try:
        u = urlsplit(url)
        netloc = u.netloc
    except ValueError:
        return re.sub(r"//[^/@\s]*@", f"//{MASK}@", url)
    if "@" in netloc:
        netloc = f"{MASK}@" + netloc.rpartition("@")[2]
    return urlunsplit((u.scheme, netloc, u.path, _redact_query(u.query), u.fragment))


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_PARAM_IN_TEXT = re.compile(r"([?&])([A-Za-z_-]+)=([^&\s'\"<>]*)")


def redact_text(text: str) -> str:
    """Every URL and ``?name=value`` in a message (an exception, a request line) redacted."""
    text = _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
    return _PARAM_IN_TEXT.sub(
        lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if _secret_param(m.group(2)) else m.group(0), text)


def with_password(url: str, password: str) -> str:
    """The URL with ``password`` put into its user info (percent-encoded), for opening only."""
    u = urlsplit(url)
    userinfo, at, host = u.netloc.rpartition("@")
    user = userinfo.partition(":")[0]  # as written in the URL (already percent-encoded)
    if not at or not user:
        raise EdgeError(f"source {redact(url)!r}: a password needs a user name in the URL (rtsp://USER@host/…)")
    netloc = f"{user}:{quote(password, safe='')}@{host}"
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))
