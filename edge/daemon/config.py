"""Daemon configuration: one TOML file, validated into dataclasses before anything starts.

A daemon that runs unattended for months should refuse a typo at start-up rather than
silently ignore it, so every unknown key is an error that names the key *and* the line of
the file it is on (``tomllib`` does not report positions, so the line is found by scanning
the TOML text). Secrets never need to live in the file: they come from the environment or
from systemd credentials (``LoadCredential=`` puts them in ``$CREDENTIALS_DIRECTORY``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from feredge.edge import rules
from feredge.edge.backends import ALIASES, BACKENDS, DEVICES
from feredge.edge.daemon.identity import NODE_ID_RULE, valid_node_id
from feredge.edge.detect import DetectorConfig
from feredge.edge.errors import EdgeError
from feredge.edge.rules import at_least, choice, either, positive, ruled
from feredge.edge.track import TrackingConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 only
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/feredge/config.toml")


class ConfigError(EdgeError):
    """The configuration file or a command-line override is invalid."""


# ---- rules (each beside its field, as ruled(default, check, what it must be)) -----------------

_CAMERA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9][A-Za-z0-9-]{0,62}(\.[A-Za-z0-9][A-Za-z0-9-]{0,62})*")
# model.backend: a backend plug-in's name or one of its aliases, or "auto".
BACKEND_NAMES = ("auto", *BACKENDS, *ALIASES)


def _host_or_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return _HOSTNAME.fullmatch(v) is not None


def _port(lo: int) -> Callable[[int], bool]:
    return lambda v: lo <= v < 65536


@dataclass
class ModelConfig:
    # None: the shipped default model (package data).
    path: str | None = None
    backend: str = choice("auto", BACKEND_NAMES, either(("auto", *BACKENDS)))  # or an alias (backends.ALIASES)
    device: str = choice("auto", DEVICES)
    num_threads: int | None = ruled(None, lambda v: v is None or v >= 1, ">= 1")
    # Faces whose smoothed top probability is below this are reported as "uncertain".
    min_score: float = ruled(0.0, lambda v: 0.0 <= v <= 1.0, "in [0, 1]")


@dataclass
class CameraConfig:
    name: str = ruled("cam0", lambda v: _CAMERA_NAME.fullmatch(v) is not None,
                      "only letters, digits, _ and - (1 to 64)")
    # auto | picamera2[:N] | v4l2:/dev/videoN | /dev/videoN | N | video file | rtsp://… | http://…
    source: str = "auto"
    width: int = ruled(1280, positive, "> 0")
    height: int = ruled(720, positive, "> 0")
    fps: float = ruled(15.0, positive, "> 0")
    # Video files only: "realtime" paces frames by their timestamps, "fast" as fast as possible.
    pace: str = choice("realtime", ("realtime", "fast"), "'realtime' or 'fast'")
    loop: bool = False
    # Reconnect backoff: first wait, cap, and the read timeout after which a camera is offline.
    reconnect_min: float = ruled(0.5, positive, "> 0")
    reconnect_max: float = ruled(30.0, positive, "> 0")
    read_timeout: float = ruled(5.0, positive, "> 0")
    # Detection on every Nth frame only (the tracker keeps boxes in between).
    detect_every: int = ruled(1, at_least(1), ">= 1")
    # A stream URL's password, kept out of the file: read from this environment variable or
    # systemd credential and put into the URL (rtsp://USER@host/…) only when it is opened.
    password_env: str | None = None
    password_credential: str | None = None


@dataclass
class DaemonConfig:
    # A camera loop that has not made progress for this long stops the watchdog pings.
    stall_timeout: float = ruled(10.0, positive, "> 0 seconds")
    # A camera offline this long also stops the watchdog pings, so systemd restarts the service
    # (the last resort for a wedged driver); 0 = never.
    offline_restart: float = ruled(300.0, at_least(0), ">= 0 seconds (0 = never)")
    # How long start-up waits for the first frames before reporting READY anyway.
    startup_timeout: float = ruled(20.0, at_least(0), ">= 0 seconds")
    status_interval: float = ruled(5.0, positive, "> 0 seconds")
    stats_interval: float = ruled(30.0, positive, "> 0 seconds")


@dataclass
class JsonlConfig:
    enabled: bool = True
    path: str = "-"  # "-" = stdout
    max_bytes: int = ruled(10_000_000, at_least(1024), ">= 1024")
    backups: int = ruled(3, at_least(0), ">= 0")
    # "events": appear/change/leave only; "frames": also every frame with faces; "all": every frame.
    mode: str = choice("events", ("events", "frames", "all"))


@dataclass
class MqttConfig:
    enabled: bool = False
    host: str = "localhost"
    port: int = ruled(1883, _port(1), "a TCP port (1-65535)")
    # The device's identity in a fleet (topics, Home Assistant device); $FEREDGE_NODE_ID wins, and
    # the default is derived from /etc/machine-id (edge/daemon/identity.py). client_id defaults to it.
    node_id: str | None = ruled(None, lambda v: v is None or valid_node_id(v), NODE_ID_RULE)
    client_id: str | None = None
    base_topic: str = ruled("feredge", lambda v: re.fullmatch(r"[^#+\s]+", v) is not None and not v.endswith("/"),
                            "a topic without #, +, spaces or a trailing /")
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    username: str | None = None
    password: str | None = None  # prefer password_env / password_credential
    password_env: str = "FEREDGE_MQTT_PASSWORD"
    password_credential: str = "mqtt_password"
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive: int = ruled(30, at_least(1), ">= 1 second")
    qos: int = choice(1, (0, 1, 2))
    queue_size: int = ruled(1000, at_least(1), ">= 1")
    reconnect_min: float = ruled(1.0, positive, "> 0 seconds")
    reconnect_max: float = ruled(60.0, positive, "> 0 seconds")
    # Per-camera state is published on change, at most this often (seconds).
    state_interval: float = ruled(1.0, at_least(0), ">= 0 seconds")


@dataclass
class HttpConfig:
    enabled: bool = True
    bind: str = ruled("127.0.0.1", _host_or_ip, "an IP address or a host name")
    port: int = ruled(8800, _port(0), "a TCP port (0-65535, 0 = any free port)")
    token: str | None = None  # prefer token_env / token_credential
    token_env: str = "FEREDGE_HTTP_TOKEN"
    token_credential: str = "http_token"
    # Privacy: no frame is kept in memory unless one of these is switched on.
    snapshots: bool = False
    mjpeg: bool = False
    # Threads answering requests (a fixed pool); a request that finds them all busy is answered 503
    # at once. Live streams (events, MJPEG) each hold one, at most workers - 4 (and 8) of them.
    # Connections still sending their headers hold no thread (at most 256, 5 s each).
    workers: int = ruled(12, lambda v: 4 <= v <= 256, "between 4 and 256")
    # Names this server is reached by besides its addresses, localhost and its hostname, comma-
    # separated (e.g. "pi.example.lan"): any other Host header is refused (DNS rebinding).
    allowed_hosts: str = ruled("", lambda v: all(_host_or_ip(h.strip()) for h in v.split(",") if h.strip()),
                               "comma-separated host names")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    camera: list[CameraConfig] = field(default_factory=lambda: [CameraConfig()])
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    jsonl: JsonlConfig = field(default_factory=JsonlConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    source_path: str | None = None  # the file this came from (for messages), not a TOML key

    def validate(self) -> Config:
        """The rules on the fields (each message naming the key and its line), then the checks
        that involve more than one key."""
        for section, index, table in self._tables():
            for key, value, must in rules.broken(table):
                raise ConfigError(f"{self.where(section, key, index)}: {section}.{key} = "
                                  f"{_show(value, f'{section}.{key}')}: must be {must}")
        if not self.camera:
            raise ConfigError(f"{self.where()}: at least one [[camera]] is required")
        if len(self.camera) > MAX_CAMERAS:
            raise ConfigError(f"{self.where()}: {len(self.camera)} cameras; at most {MAX_CAMERAS} (each is a thread "
                              "and a pipeline on the device)")
        names = [c.name for c in self.camera]
        for i, c in enumerate(self.camera):
            if c.reconnect_min > c.reconnect_max:
                raise ConfigError(f"{self.where('camera', 'reconnect_min', i)}: camera {c.name}: "
                                  "need reconnect_min <= reconnect_max")
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.where()}: camera names must be unique, got {', '.join(names)}")
        if self.mqtt.enabled:
            for name in ("ca_file", "cert_file", "key_file"):
                p = getattr(self.mqtt, name)
                if p and not Path(p).is_file():
                    raise ConfigError(f"{self.where('mqtt', name)}: mqtt.{name} {p} does not exist")
        self._check_jsonl_path()
        h = self.http
        if h.enabled and not is_loopback(h.bind) and not self.http_token():
            raise ConfigError(
                f"{self.where('http', 'bind')}: http.bind = {h.bind!r} is reachable from other machines, so a "
                f"token is required (set ${h.token_env}, the systemd credential {h.token_credential!r}, "
                "or http.token)"
            )
        return self

    def _tables(self) -> Iterator[tuple[str, int | None, Any]]:
        """``(section, camera index or None, table)``: the cameras first, then the other sections."""
        for i, cam in enumerate(self.camera):
            yield "camera", i, cam
        for f in dataclasses.fields(self):
            if f.name not in ("camera", "source_path"):
                yield f.name, None, getattr(self, f.name)

    def _check_jsonl_path(self) -> None:
        """A path the daemon cannot write fails the check, not the first event hours later."""
        j = self.jsonl
        if not j.enabled or j.path == "-":
            return
        p = Path(j.path)
        where = self.where("jsonl", "path")
        if p.is_dir():
            raise ConfigError(f"{where}: jsonl.path {p} is a folder; name a file in it")
        parent = next((a for a in p.parents if a.exists()), None)
        if parent is None or not parent.is_dir():
            raise ConfigError(f"{where}: jsonl.path {p}: {parent} is not a folder")
        target = p if p.exists() else parent
        if not os.access(target, os.W_OK | (0 if p.exists() else os.X_OK)):
            raise ConfigError(f"{where}: jsonl.path {p} cannot be written ({target} is not writable)")

    def where(self, section: str | None = None, key: str | None = None, index: int | None = None) -> str:
        """``FILE line N`` of a key (``override`` when ``--set`` gave it), for messages."""
        base = self.source_path or "config"
        if section is None:
            return base
        dotted = f"{section}.{key}" if key else section
        if dotted in self._overridden or (index is not None and f"camera.{index}.{key}" in self._overridden):
            return f"override {dotted}"
        locator = getattr(self, "_locator", None)
        path = (section, key) if key else (section,)
        return base + (locator.suffix(path, index) if locator else "")

    @property
    def _overridden(self) -> set[str]:
        return getattr(self, "_override_keys", set())

    # ---- secrets ---------------------------------------------------------------------
    def mqtt_password(self) -> str | None:
        m = self.mqtt
        return read_secret(m.password, m.password_env, m.password_credential, what="mqtt password")

    def http_token(self) -> str | None:
        h = self.http
        return read_secret(h.token, h.token_env, h.token_credential, what="http token")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_secret(value: str | None, env: str | None, credential: str | None, *, what: str = "secret") -> str | None:
    """A systemd credential wins (it never shows in ``/proc/*/environ``), then the environment,
    then a value written in the file. Surrounding whitespace (a trailing newline) is dropped; a
    secret that is only whitespace is refused, since ``?token=%20`` must not be a password.
    Messages name where the secret came from, never its value."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    found: list[tuple[str, str]] = []
    if cred_dir and credential:
        p = Path(cred_dir) / credential
        if p.is_file():
            found.append((f"the systemd credential {credential!r}", p.read_text()))
    if env and os.environ.get(env) is not None and os.environ[env] != "":
        found.append((f"${env}", os.environ[env]))
    if value is not None and value != "":
        found.append(("the config file", value))
    if not found:
        return None
    source, secret = found[0]
    if not secret.strip():
        raise ConfigError(f"the {what} from {source} is empty or only whitespace")
    return secret.strip()


# ---- messages --------------------------------------------------------------------------

SHOW_MAX = 60  # characters of a bad value quoted in an error; a 10 MB value is not echoed whole
_SECRET_KEY = re.compile(r"(token|password|secret|passphrase)$")


def _show(value: Any, name: str = "") -> str:
    """A bad value for an error message: never a secret's, and never more than SHOW_MAX characters."""
    if _SECRET_KEY.search(name.rsplit(".", 1)[-1]):
        return f"<{type(value).__name__}, hidden: {name} is a secret>"
    text = repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= SHOW_MAX else f"{text[:SHOW_MAX]}… ({len(text):,} characters)"


# ---- loading ---------------------------------------------------------------------------

MAX_CONFIG_BYTES = 1 << 20
MAX_CAMERAS = 16

def load(path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read, check and return the configuration; ``None`` means defaults only."""
    data: dict[str, Any] = {}
    text = ""
    where = "config"
    if path is not None:
        p = Path(path)
        where = str(p)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {p}: {e}") from None
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {len(text):,} characters; a config file is at most {MAX_CONFIG_BYTES:,}")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p}: invalid TOML: {e}") from None
        except RecursionError:  # tomllib recurses once per nesting level: [[[[...]]]] exhausts the stack
            raise ConfigError(f"{p}: invalid TOML: values nested too deeply") from None
    cfg = from_dict(data, text=text, where=where)
    cfg.source_path = None if path is None else str(path)
    if path is not None:
        _resolve_paths(cfg, Path(path).resolve().parent)
    cfg._override_keys = set()  # type: ignore[attr-defined]
    for dotted, value in (overrides or {}).items():
        apply_override(cfg, dotted, value)
        cfg._override_keys.add(dotted)  # type: ignore[attr-defined]
    return cfg.validate()


def _resolve_paths(cfg: Config, base: Path) -> None:
    """Relative paths in a config file mean "next to this file", whatever the working directory
    (systemd starts the daemon in /var/lib/feredge). Command-line overrides stay relative to
    the shell's directory: they are applied afterwards."""

    def fix(value: str | None) -> str | None:
        if not value or Path(value).is_absolute():
            return value
        return str(base / value)

    cfg.model.path = fix(cfg.model.path)
    if cfg.detector.cascade and ("/" in cfg.detector.cascade):
        cfg.detector.cascade = fix(cfg.detector.cascade)
    if cfg.jsonl.path != "-":
        cfg.jsonl.path = fix(cfg.jsonl.path) or cfg.jsonl.path
    for name in ("ca_file", "cert_file", "key_file"):
        setattr(cfg.mqtt, name, fix(getattr(cfg.mqtt, name)))
    from feredge.edge.sources.spec import parse_spec

    for cam in cfg.camera:
        try:
            is_file = parse_spec(cam.source).kind == "path"
        except EdgeError:
            continue  # reported by the source check, which names the camera
        if is_file:
            cam.source = fix(cam.source) or cam.source


def from_dict(data: dict[str, Any], *, text: str = "", where: str = "config") -> Config:
    locator = _LineLocator(text)
    cfg = Config()
    cfg.source_path = where
    cfg._locator = locator  # type: ignore[attr-defined]  # range errors name the line too
    top_hints = get_type_hints(Config)
    for key, value in data.items():
        if key == "source_path" or key not in top_hints:
            raise ConfigError(f"{where}{locator.suffix((key,))}: unknown key {key!r} (known: {_known(Config)})")
        if key == "camera":
            items = value if isinstance(value, list) else [value]
            cams = []
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ConfigError(f"{where}{locator.suffix(('camera',))}: [[camera]] entries must be tables")
                cams.append(_build(CameraConfig, item, ("camera",), i, locator, where))
            cfg.camera = cams
        else:
            if not isinstance(value, dict):
                raise ConfigError(f"{where}{locator.suffix((key,))}: {key} must be a table [{key}]")
            setattr(cfg, key, _build(type(getattr(cfg, key)), value, (key,), None, locator, where))
    return cfg


def _known(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.name != "source_path")


# Keys of earlier versions that an upgrade (install.sh keeps the old config) may still carry.
_REPLACED = {
    "tracking.ema": "use tracking.smoothing, a time constant in seconds (0.5 is the default; the old "
                    "per-frame weight a at F fps is about smoothing = 1 / (F * a))",
}


def _build(cls: type, values: dict[str, Any], path: tuple[str, ...], index: int | None,
           locator: _LineLocator, where: str) -> Any:
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        full = (*path, key)
        if key not in hints:
            line = locator.suffix(full, index)
            dotted = ".".join(full)
            if dotted in _REPLACED:
                raise ConfigError(f"{where}{line}: {dotted!r} was replaced: {_REPLACED[dotted]}")
            raise ConfigError(f"{where}{line}: unknown key {dotted!r} (known in [{path[-1]}]: {_known(cls)})")
        kwargs[key] = _coerce(value, hints[key], ".".join(full), where + locator.suffix(full, index))
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, name: str, where: str) -> Any:
    """Check a TOML value against a dataclass field type (ints are accepted for floats)."""
    optional = False
    base = hint
    if get_origin(hint) is not None and type(None) in get_args(hint):
        optional = True
        base = next(a for a in get_args(hint) if a is not type(None))
    if value is None and optional:
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: {name} must be a finite number, got {value!r}")
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - only scalar fields exist
        return value
    shown = _show(value, name)
    got = shown if shown.startswith("<") else f"{type(value).__name__} {shown}"
    raise ConfigError(f"{where}: {name} must be {_type_name(base)}, got {got}")


def _type_name(t: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(t, t.__name__)


def apply_override(cfg: Config, dotted: str, value: Any) -> None:
    """``section.key`` (``camera.key`` sets every camera; ``camera.N.key`` one) from the CLI."""
    parts = dotted.split(".")
    targets: list[Any]
    if parts[0] == "camera":
        if len(parts) == 3 and parts[1].isdigit():
            i = int(parts[1])
            if i >= len(cfg.camera):
                raise ConfigError(f"override {dotted}: there is no camera {i}")
            targets, key = [cfg.camera[i]], parts[2]
        elif len(parts) == 2:
            targets, key = list(cfg.camera), parts[1]
        else:
            raise ConfigError(f"override {dotted}: use camera.KEY or camera.N.KEY")
    elif len(parts) == 2 and hasattr(cfg, parts[0]) and dataclasses.is_dataclass(getattr(cfg, parts[0])):
        targets, key = [getattr(cfg, parts[0])], parts[1]
    else:
        raise ConfigError(f"override {dotted}: unknown setting (use SECTION.KEY, e.g. mqtt.host)")
    for t in targets:
        hints = get_type_hints(type(t))
        if key not in hints:
            raise ConfigError(f"override {dotted}: unknown key {key!r} (known: {_known(type(t))})")
        setattr(t, key, _coerce(value, hints[key], dotted, "override"))


# ---- line lookup -------------------------------------------------------------------------

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEYLINE = re.compile(rf"^\s*({_PART}(?:\s*\.\s*{_PART})*)\s*=")


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(p.strip().strip("\"'") for p in re.findall(r"""(?:"[^"]*"|'[^']*'|[^.]+)""", text))


class _LineLocator:
    """Maps a key path (and array-of-tables index) to its 1-based line in the TOML text.

    A small scanner, not a TOML parser: it follows table headers and ``key =`` lines, which
    is all a config file written by hand uses. Multi-line strings are skipped so their
    contents are never taken for keys.
    """

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple[tuple[str, ...], int | None], int] = {}
        table: tuple[str, ...] = ()
        index: int | None = None
        counts: dict[tuple[str, ...], int] = {}
        in_multiline: str | None = None
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw
            if in_multiline:
                if in_multiline in line:
                    in_multiline = None
                continue
            m = _HEADER.match(line)
            if m:
                table = _split_key(m.group(2))
                if m.group(1) == "[[":
                    index = counts.get(table, -1) + 1
                    counts[table] = index
                else:
                    index = None
                self.lines.setdefault((table, index), n)
                continue
            k = _KEYLINE.match(line)
            if k:
                key = (*table, *_split_key(k.group(1)))
                self.lines.setdefault((key, index), n)
                for i in range(len(table) + 1, len(key)):
                    self.lines.setdefault((key[:i], index), n)
                rest = line[k.end():]
                for q in ('"""', "'''"):
                    if rest.count(q) == 1:
                        in_multiline = q

    def line(self, path: tuple[str, ...], index: int | None = None) -> int | None:
        for p in (path, path[:-1]):
            if (p, index) in self.lines:
                return self.lines[(p, index)]
        return None

    def suffix(self, path: tuple[str, ...], index: int | None = None) -> str:
        n = self.line(path, index)
        return f" line {n}" if n else ""
