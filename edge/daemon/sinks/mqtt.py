"""MQTT and Home Assistant: availability, per-camera state, events, stats, discovery.

Topics (``B`` = ``mqtt.base_topic``, default ``feredge``; ``N`` = the device's node id,
:mod:`feredge.edge.daemon.identity`; ``P`` = ``mqtt.discovery_prefix``). Every topic of a device is under
``B/N/`` so that a fleet shares one broker without mixing:

- ``B/N/availability`` — retained ``online``/``offline``; ``offline`` is also the last will, so
  the broker announces a daemon that vanished without saying goodbye (that device only).
- ``B/N/<camera>/availability`` — retained ``online``/``offline`` for each camera.
- ``B/N/<camera>/state`` — retained JSON ``{"faces", "expression", "expressions", "tracks", "ts"}``,
  sent when it changes, at most every ``state_interval`` seconds.
- ``B/N/<camera>/events`` — JSON per event (``appeared``, ``changed``, ``left``), not retained.
- ``B/N/stats`` — JSON statistics every ``daemon.stats_interval`` seconds.
- ``P/sensor/N/<camera>_expression/config`` and ``…/<camera>_faces/config`` — retained
  Home Assistant discovery documents for an expression sensor and a face-count sensor.

The MQTT client id is ``N`` unless ``mqtt.client_id`` is set. When the broker says
another client took this session over (MQTT 5's reason code 0x8E), the sink logs one error naming
the id and waits 20 s or more between attempts instead of reconnecting every second. Brokers that
just close the older connection (mosquitto 2.0.11) look like a broker or network that drops every
connection: when the connection dies right after it opens twice in a row, a probe connects under
another client id. Dropped too, the broker is flapping: a warning, and the configured backoff.
Kept, it is an id clash: the error and the 20 s backoff.
Earlier versions published ``B/availability`` and ``B/<camera>/…`` for every device; on its first
connection with this layout a device clears those retained topics and its old discovery
documents, so Home Assistant keeps no ghost entities.

Why a queue of our own: paho only queues QoS>0 messages while disconnected and drops
QoS 0 ones; the daemon must keep classifying with the broker gone, hold a bounded backlog
(oldest dropped first, counted in ``feredge_mqtt_dropped_total``) and, on reconnect, restate
what a restarted broker forgot (availability, discovery, the latest state) before the backlog.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

from feredge import __version__
from feredge.edge import jsonsafe
from feredge.edge.daemon.config import MqttConfig
from feredge.edge.daemon.identity import node_id
from feredge.edge.daemon.metrics import DaemonMetrics
from feredge.edge.daemon.sinks import Sink
from feredge.edge.errors import one_line

log = logging.getLogger(__name__)


# MQTT 5 reason code 0x8E "Session taken over"; the backoff (min, max seconds) it triggers.
SESSION_TAKEN_OVER = 0x8E
TAKEOVER_BACKOFF = (20, 60)
SHORT_LIVED_S = 30.0  # a connection closed sooner than this counts towards a takeover
PROBE_WAIT = 15.0  # seconds a probe connection waits to be accepted, and at most to be dropped
PROBE_EVERY = 300.0  # at most one probe in this many seconds


def _state_dir() -> Path | None:
    """systemd's StateDirectory= (``$STATE_DIRECTORY``), where a device keeps what must survive."""
    d = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(d) if d and Path(d).is_dir() else None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "feredge"


def connect_error(e: BaseException, host: str, port: int, tls: bool = False) -> str:
    """Why a connection attempt failed, in words a user can act on."""
    if isinstance(e, socket.gaierror):
        return f"cannot resolve {host!r} (DNS: {e.strerror or e})"
    if isinstance(e, ConnectionRefusedError):
        return f"connection refused by {host}:{port} (is the broker running, and on that port?)"
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate was not accepted ({e.verify_message or e})"
    if isinstance(e, ssl.SSLError) or (tls and isinstance(e, (ConnectionResetError, BrokenPipeError))):
        why = getattr(e, "reason", None) or e.strerror or e
        return f"TLS handshake with {host}:{port} failed ({why}; is the port a TLS port?)"
    if isinstance(e, TimeoutError):
        return f"no answer from {host}:{port} (timed out)"
    return one_line(e)


def _client_class() -> type:
    import paho.mqtt.client as mqtt

    class Client(mqtt.Client):
        """paho swallows the exception of a failed (re)connect before ``on_connect_fail`` runs;
        this keeps it, so the log can say why (DNS, refused, TLS) instead of nothing."""

        last_error: BaseException | None = None

        def reconnect(self):  # type: ignore[override]
            try:
                return super().reconnect()
            except OSError as e:
                self.last_error = e
                raise

    return Client


class MqttSink(Sink):
    name = "mqtt"

    def __init__(self, config: MqttConfig, cameras: list[str], *, password: str | None = None,
                 metrics: DaemonMetrics | None = None, node: str | None = None) -> None:
        """``node``: the device's node id when the caller has it (the daemon), else derived here."""
        self.cfg = config
        self.cameras = list(cameras)
        self.password = password
        self.metrics = metrics
        self.node_id = node or node_id(config.node_id)
        self.client_id = config.client_id or self.node_id
        self.root = config.base_topic
        self.base = f"{config.base_topic}/{self.node_id}"  # every topic of this device is under it
        self.avail_topic = f"{self.base}/availability"
        self._migrated = False
        self._taken_over = 0
        self._short_drops = 0
        self._probing = False
        self._last_probe = -PROBE_EVERY
        self.flapping = 0  # times a probe showed the broker drops every connection
        self._connected_at: float | None = None
        self._queue: collections.deque[tuple[str, str, int, bool]] = collections.deque(maxlen=config.queue_size)
        self._cond = threading.Condition()
        self._connected = False
        self._stopping = False
        self._latest_state: dict[str, str] = {}
        self._camera_avail: dict[str, str] = {}
        self._last_state_key: dict[str, Any] = {}
        self._last_state_time: dict[str, float] = {}
        self.dropped = 0
        self.published = 0
        self.connects = 0
        self._client: Any = None
        self._sender: threading.Thread | None = None
        self._last_failure: str | None = None
        if metrics:
            metrics.mqtt_connected.set(0)  # a sample from the start, so an alert on == 0 fires

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        import paho.mqtt.client as mqtt  # only when MQTT is enabled

        c = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        c.will_set(self.avail_topic, "offline", qos=1, retain=True)
        self._configure(c)
        c.reconnect_delay_set(max(1, int(self.cfg.reconnect_min)), max(1, int(self.cfg.reconnect_max)))
        # paho's own store of unacknowledged QoS>0 messages is bounded too.
        c.max_queued_messages_set(self.cfg.queue_size)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        self._client = c
        # connect_async + loop_start: an absent broker is retried in the background with
        # paho's backoff instead of failing start-up.
        c.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, clean_start=True)
        c.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()
        log.info("MQTT: connecting to %s:%d as node %s (client id %s, topics %s/…)", self.cfg.host, self.cfg.port,
                 self.node_id, self.client_id, self.base)

    def _configure(self, c: Any) -> None:
        """Credentials and TLS, for the client and for a probe alike."""
        if self.cfg.username:
            c.username_pw_set(self.cfg.username, self.password)
        if self.cfg.tls or self.cfg.ca_file:
            c.tls_set(ca_certs=self.cfg.ca_file, certfile=self.cfg.cert_file, keyfile=self.cfg.key_file,
                      cert_reqs=ssl.CERT_NONE if self.cfg.tls_insecure else ssl.CERT_REQUIRED)
            c.tls_insecure_set(self.cfg.tls_insecure)

    def close(self) -> None:
        c = self._client
        if c is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        if self._connected:
            # Flush what little is queued, then say goodbye (the will is only for crashes).
            deadline = time.monotonic() + 1.0
            while self._queue and time.monotonic() < deadline:
                self._publish_now(*self._queue.popleft())
            for cam in self.cameras:
                c.publish(f"{self.base}/{cam}/availability", "offline", qos=1, retain=True)
            info = c.publish(self.avail_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=1.0)
            except (RuntimeError, ValueError):
                pass
        c.disconnect()
        c.loop_stop()
        self._client = None

    @property
    def connected(self) -> bool:
        return self._connected

    # ---- paho callbacks (network thread) -------------------------------------------------
    def _failed(self, why: str) -> None:
        """A failed attempt: WARNING the first time and whenever the reason changes, DEBUG while
        it repeats (paho retries with backoff; the log must not fill with the same line)."""
        if why != self._last_failure:
            log.warning("MQTT: cannot connect to %s:%d: %s; retrying with backoff", self.cfg.host, self.cfg.port, why)
        else:
            log.debug("MQTT: still cannot connect: %s", why)
        self._last_failure = why

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        e = getattr(client, "last_error", None)
        tls = self.cfg.tls or bool(self.cfg.ca_file)
        self._failed(connect_error(e, self.cfg.host, self.cfg.port, tls) if e else "unknown error")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if getattr(reason_code, "is_failure", False):
            hint = " (check mqtt.username and the password)" if "authori" in str(reason_code).lower() or \
                "password" in str(reason_code).lower() else ""
            self._failed(f"the broker refused the connection: {reason_code}{hint}")
            return
        self._last_failure = None
        self._connected_at = time.monotonic()
        self.connects += 1
        log.info("MQTT: connected to %s:%d", self.cfg.host, self.cfg.port)
        if not self._migrated:
            self._clear_old_layout(client)
        # Restate everything retained first: the broker may have restarted and forgotten it.
        client.publish(self.avail_topic, "online", qos=1, retain=True)
        if self.cfg.discovery:
            for topic, doc in self.discovery_docs().items():
                client.publish(topic, jsonsafe.dumps(doc), qos=1, retain=True)
        with self._cond:
            avail = dict(self._camera_avail)
            states = dict(self._latest_state)
        for cam in self.cameras:
            client.publish(f"{self.base}/{cam}/availability", avail.get(cam, "online"), qos=1, retain=True)
        for cam, payload in states.items():
            client.publish(f"{self.base}/{cam}/state", payload, qos=self.cfg.qos, retain=True)
        with self._cond:
            self._connected = True
            self._cond.notify_all()
        if self.metrics:
            self.metrics.mqtt_connected.set(1)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
        if self.metrics:
            self.metrics.mqtt_connected.set(0)
        if self._stopping:
            return
        lived = time.monotonic() - self._connected_at if self._connected_at is not None else 0.0
        self._short_drops = self._short_drops + 1 if was and lived < SHORT_LIVED_S else 0
        if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER:
            self._on_taken_over(client, "the broker says another client took this session over")
        elif self._short_drops >= 2:
            # Brokers without MQTT 5's reason code (mosquitto 2.0.11 among them) just close the
            # older connection, and so does a broker or network that drops every connection: a
            # probe with another client id tells them apart (it is dropped too only when flapping).
            if self._taken_over:  # already diagnosed: keep the takeover backoff, no new probe
                self._on_taken_over(client, "the connection was closed right after it opened again")
            else:
                self._start_probe(lived)
        elif was:
            if self._taken_over:  # a different trouble now: back to the configured backoff
                self._taken_over = 0
                client.reconnect_delay_set(max(1, int(self.cfg.reconnect_min)), max(1, int(self.cfg.reconnect_max)))
            log.warning("MQTT: disconnected (%s); reconnecting with backoff", reason_code)

    def _start_probe(self, lived: float) -> None:
        """One probe at a time: connect under a random client id and see whether the broker drops
        it as it drops ours. Until it has decided, the configured backoff applies."""
        with self._cond:
            now = time.monotonic()
            if self._probing or now - self._last_probe < PROBE_EVERY:
                return
            self._probing, self._last_probe = True, now
        threading.Thread(target=self._probe, args=(max(lived, 1.0),), name="mqtt-probe", daemon=True).start()

    def _probe(self, lived: float) -> None:
        import paho.mqtt.client as mqtt

        dropped = threading.Event()
        up = threading.Event()
        p = _client_class()(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.client_id}-probe-{os.getpid()}",
                            protocol=mqtt.MQTTv5)
        self._configure(p)
        p.on_connect = lambda *a: up.set()
        p.on_disconnect = lambda *a: dropped.set()
        try:
            p.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive)
            p.loop_start()
            if not up.wait(PROBE_WAIT):
                return  # the broker did not even accept the probe: the ordinary failure path reports it
            dropped.wait(min(3 * lived + 2.0, PROBE_WAIT))
            client = self._client
            if client is None or self._stopping:
                return
            if dropped.is_set():
                self.flapping += 1
                log.warning("MQTT: the broker drops connections about %.0f s after they open, a probe under another "
                            "client id too: the broker or the network is unstable (not a client id clash); "
                            "reconnecting with backoff", lived)
            else:
                self._on_taken_over(client, "the broker closed our connection right after it opened, "
                                            f"{self._short_drops} times in a row, while a probe under another id "
                                            "stayed connected")
        except (OSError, ValueError) as e:
            log.debug("MQTT probe: %s", e)
        finally:
            with contextlib.suppress(Exception):
                p.disconnect()
                p.loop_stop()
            with self._cond:
                self._probing = False

    def _on_taken_over(self, client: Any, why: str) -> None:
        """Another process uses this client id; fighting it would cost a reconnect a second on both
        sides, so say so once and retry at most three times a minute."""
        self._taken_over += 1
        level = logging.ERROR if self._taken_over == 1 else logging.DEBUG
        log.log(level, "MQTT: %s: most likely another client uses the client id %r (node %s); two devices or "
                "daemons share one id: set FEREDGE_NODE_ID or mqtt.node_id to tell them apart. Retrying every %d s "
                "or more.",
                why, self.client_id, self.node_id, TAKEOVER_BACKOFF[0])
        client.reconnect_delay_set(*TAKEOVER_BACKOFF)

    def _clear_old_layout(self, client: Any) -> None:
        """Once per device: empty the retained topics and discovery documents that versions before
        the per-device layout published (``B/availability``, ``B/<camera>/…``, the hostname node)."""
        state = _state_dir()
        marker = state / "mqtt-layout-2" if state else None
        self._migrated = True
        if marker is not None and marker.exists():
            return
        old_node = _slug(self.cfg.client_id or f"feredge-{socket.gethostname()}")
        topics = [f"{self.root}/availability"]
        for cam in self.cameras:
            topics += [f"{self.root}/{cam}/availability", f"{self.root}/{cam}/state"]
            if old_node != self.node_id:
                topics += [f"{self.cfg.discovery_prefix}/sensor/{old_node}/{cam}_{what}/config"
                           for what in ("expression", "faces")]
        for t in topics:
            client.publish(t, b"", qos=1, retain=True)
        log.info("MQTT: cleared %d retained topic(s) of the earlier single-device layout", len(topics))
        if marker is not None:
            try:
                marker.write_text("topics under <base>/<node_id>/\n")
            except OSError as e:
                log.debug("cannot record the MQTT layout migration in %s: %s", marker, e)

    # ---- queue ---------------------------------------------------------------------------
    def _drop(self) -> None:
        self.dropped += 1
        if self.metrics:
            self.metrics.mqtt_dropped.inc()

    def _enqueue(self, topic: str, payload: str, qos: int, retain: bool) -> None:
        with self._cond:
            if len(self._queue) == self._queue.maxlen:
                self._drop()  # the deque pushes the oldest out
            self._queue.append((topic, payload, qos, retain))
            self._cond.notify()

    def queue_length(self) -> int:
        with self._cond:
            return len(self._queue)

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._connected and self._queue):
                    self._cond.wait(timeout=1.0)
                if self._stopping:
                    return
                item = self._queue.popleft()
            if not self._publish_now(*item):
                with self._cond:
                    if len(self._queue) < (self._queue.maxlen or 1):
                        self._queue.appendleft(item)
                    else:
                        self._drop()
                    self._cond.wait(timeout=0.5)

    def _publish_now(self, topic: str, payload: str, qos: int, retain: bool) -> bool:
        import paho.mqtt.client as mqtt

        c = self._client
        if c is None:
            return False
        try:
            rc = c.publish(topic, payload, qos=qos, retain=retain).rc
        except (ValueError, RuntimeError) as e:  # a bad topic is a bug in config validation
            log.error("MQTT: cannot publish to %s: %s", topic, e)
            return True
        if rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
            return True
        if rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self._drop()
            return True
        return False  # not connected: keep it in our queue

    # ---- sink API ------------------------------------------------------------------------
    def frame(self, camera: str, record: dict[str, Any]) -> None:
        faces = record.get("faces") or []
        labels = sorted(f["label"] for f in faces)
        expression = "none"
        if faces:
            # The most confident face names the camera's expression (one sensor per camera).
            expression = max(faces, key=lambda f: (f.get("score", 0.0), -f.get("track_id", 0)))["label"]
        key = (len(faces), expression, tuple(labels))
        now = time.monotonic()
        if key == self._last_state_key.get(camera) or now - self._last_state_time.get(camera, -1e9) < \
                self.cfg.state_interval:
            return
        self._last_state_key[camera] = key
        self._last_state_time[camera] = now
        counts: dict[str, int] = {}
        for lab in labels:
            counts[lab] = counts.get(lab, 0) + 1
        payload = jsonsafe.dumps({
            "faces": len(faces),
            "expression": expression,
            "expressions": counts,
            "tracks": [{"track_id": f["track_id"], "label": f["label"], "score": f.get("score")} for f in faces],
            "ts": record.get("ts"),
        })
        with self._cond:
            self._latest_state[camera] = payload
        self._enqueue(f"{self.base}/{camera}/state", payload, self.cfg.qos, True)

    def events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            self._enqueue(f"{self.base}/{ev['camera']}/events", jsonsafe.dumps(ev), self.cfg.qos, False)

    def camera_state(self, camera: str, online: bool, reason: str = "") -> None:
        value = "online" if online else "offline"
        with self._cond:
            self._camera_avail[camera] = value
        self._enqueue(f"{self.base}/{camera}/availability", value, 1, True)

    def stats(self, stats: dict[str, Any]) -> None:
        self._enqueue(f"{self.base}/stats", jsonsafe.dumps(stats), 0, False)

    # ---- Home Assistant ------------------------------------------------------------------
    def discovery_docs(self) -> dict[str, dict[str, Any]]:
        device = {
            "identifiers": [self.node_id],
            "name": f"feredge {self.node_id}",
            "manufacturer": "feredge",
            "model": "feredge expression daemon",
            "sw_version": __version__,
        }
        docs: dict[str, dict[str, Any]] = {}
        prefix = self.cfg.discovery_prefix
        for cam in self.cameras:
            state = f"{self.base}/{cam}/state"
            common = {
                "state_topic": state,
                "availability": [{"topic": self.avail_topic}, {"topic": f"{self.base}/{cam}/availability"}],
                "availability_mode": "all",
                "device": device,
            }
            docs[f"{prefix}/sensor/{self.node_id}/{cam}_expression/config"] = {
                "name": f"{cam} expression",
                "unique_id": f"{self.node_id}_{cam}_expression",
                "object_id": f"feredge_{cam}_expression",
                "value_template": "{{ value_json.expression }}",
                "json_attributes_topic": state,
                "json_attributes_template": "{{ {'expressions': value_json.expressions, "
                                            "'tracks': value_json.tracks} | tojson }}",
                "icon": "mdi:emoticon-outline",
                **common,
            }
            docs[f"{prefix}/sensor/{self.node_id}/{cam}_faces/config"] = {
                "name": f"{cam} faces",
                "unique_id": f"{self.node_id}_{cam}_faces",
                "object_id": f"feredge_{cam}_faces",
                "value_template": "{{ value_json.faces }}",
                "state_class": "measurement",
                "icon": "mdi:face-recognition",
                **common,
            }
        return docs


def create(config: Any, daemon: Any) -> MqttSink:
    return MqttSink(config.mqtt, list(daemon.cameras), password=config.mqtt_password(), metrics=daemon.metrics,
                    node=daemon.node_id)
