"""MQTT against a real mosquitto broker started by the test on a free loopback port: topics, Home
Assistant discovery, last will, and a broker that is absent at start and restarted mid-run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import Broker, ScriptedSource, Subscriber, free_port, make_config, need, start, stop, wait_until

from feredge.edge.daemon.run import Daemon

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def face_source(astronaut_bgr):
    import cv2

    img = cv2.resize(astronaut_bgr, (320, 320), interpolation=cv2.INTER_AREA)
    return lambda: ScriptedSource([img], repeat_last=True)


def mqtt_config(model, port, **mqtt):
    return make_config(model, mqtt={"enabled": True, "host": "127.0.0.1", "port": port,
                                    "node_id": "feredge-test", "reconnect_min": 1.0, "reconnect_max": 2.0,
                                    **mqtt}, daemon={"stats_interval": 0.5})


def test_topics_and_home_assistant_discovery(tmp_path, edge_model, face_source):
    port = free_port()
    broker = Broker(tmp_path, port).start()
    sub = Subscriber(port)
    d = None
    try:
        cfg = mqtt_config(edge_model, port, state_interval=0.0)
        d = Daemon(cfg, openers={"cam0": (face_source, False, True)})
        t = start(d)
        P, node = "homeassistant", "feredge-test"
        B = f"feredge/{node}"  # every topic of a device under base/node_id
        assert wait_until(lambda: sub.on(f"{B}/cam0/events") and sub.on(f"{B}/stats")
                          and sub.on(f"{B}/cam0/state"), 120), sub.messages[-10:]
        assert sub.on(f"{B}/availability")[-1] == "online"
        assert "online" in sub.on(f"{B}/cam0/availability")
        labels = d.cameras["cam0"].pipeline.classifier.labels
        state = json.loads(sub.on(f"{B}/cam0/state")[-1])
        assert state["faces"] >= 1 and state["expression"] in labels and state["tracks"][0]["track_id"] >= 1
        ev = json.loads(sub.on(f"{B}/cam0/events")[0])
        assert ev["event"] == "appeared" and ev["camera"] == "cam0" and ev["label"] in labels
        stats = json.loads(sub.on(f"{B}/stats")[-1])
        assert stats["cameras"]["cam0"]["frames"] > 0 and stats["mqtt"]["connected"] is True
        expr = json.loads(sub.on(f"{P}/sensor/{node}/cam0_expression/config")[-1])
        faces = json.loads(sub.on(f"{P}/sensor/{node}/cam0_faces/config")[-1])
        for doc in (expr, faces):
            assert doc["state_topic"] == f"{B}/cam0/state"
            assert {"topic": f"{B}/availability"} in doc["availability"]
            assert doc["device"]["identifiers"] == [node]
        assert expr["value_template"] == "{{ value_json.expression }}"
        assert expr["unique_id"] == f"{node}_cam0_expression"
        assert faces["value_template"] == "{{ value_json.faces }}" and faces["state_class"] == "measurement"
        # A late subscriber gets discovery, availability and state as retained messages.
        late = Subscriber(port)
        try:
            assert wait_until(lambda: late.retained(f"{P}/sensor/{node}/cam0_faces/config")
                              and late.retained(f"{B}/availability") and late.retained(f"{B}/cam0/state"), 30)
        finally:
            late.close()
        assert stop(d, t) == 0
        d = None
        assert wait_until(lambda: sub.on(f"{B}/availability")[-1:] == ["offline"], 30)
    finally:
        if d is not None:
            d.request_stop()
        sub.close()
        broker.stop()


def test_broker_absent_at_start_and_restarted(tmp_path, edge_model, face_source):
    port = free_port()
    broker = Broker(tmp_path, port)  # not started: the daemon must run without it
    cfg = mqtt_config(edge_model, port, queue_size=20, state_interval=0.0)
    cfg.daemon.stats_interval = 0.05  # fills the queue quickly while the broker is away
    d = Daemon(cfg, openers={"cam0": (face_source, False, True)})
    t = start(d)
    sub = None
    try:
        cam = d.cameras["cam0"]
        assert wait_until(lambda: cam.frames > 20 and d.mqtt.dropped > 0, 120)
        assert not d.mqtt.connected and d.mqtt.queue_length() <= 20  # bounded, oldest dropped
        assert d.metrics.value("feredge_mqtt_dropped_total") == d.mqtt.dropped

        broker.start()
        sub = Subscriber(port)
        assert wait_until(lambda: d.mqtt.connected and sub.on("feredge/feredge-test/stats"), 60)
        assert d.mqtt.connects == 1
        frames = cam.frames

        broker.stop()  # mid-run
        assert wait_until(lambda: not d.mqtt.connected, 60)
        assert wait_until(lambda: cam.frames > frames + 20, 60)  # still classifying
        assert d.mqtt.queue_length() <= 20

        broker.start()  # same port, empty broker: retained messages must be restated
        assert wait_until(lambda: d.mqtt.connects == 2 and d.mqtt.connected, 60)
        late = Subscriber(port)
        try:
            assert wait_until(lambda: late.retained("homeassistant/sensor/feredge-test/cam0_expression/config")
                              and late.retained("feredge/feredge-test/availability") == ["online"], 30)
        finally:
            late.close()
        assert t.is_alive()
    finally:
        rc = stop(d, t)
        if sub is not None:
            sub.close()
        broker.stop()
    assert rc == 0


@pytest.mark.slow
def test_last_will_marks_a_killed_daemon_offline(tmp_path, edge_model, woman_video):
    port = free_port()
    broker = Broker(tmp_path, port).start()
    sub = Subscriber(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feredge", "run", "--model", str(edge_model), "--source", str(woman_video),
         "--loop", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--http-port", "0",
         "--set", "mqtt.node_id='feredge-will'"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        avail = "feredge/feredge-will/availability"
        assert wait_until(lambda: sub.on(avail)[-1:] == ["online"] or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)  # no goodbye: only the broker's last will can tell
        proc.wait(timeout=30)
        assert wait_until(lambda: sub.on(avail)[-1:] == ["offline"], 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
        broker.stop()


@pytest.mark.slow
def test_example_config_end_to_end(tmp_path, edge_model, woman_video):
    """What a new user does: the example config on the shared video (looped), a local mosquitto,
    JSON lines on stdout, MQTT messages and discovery at a subscriber, /metrics over HTTP."""
    import urllib.request

    port, http_port = free_port(), free_port()
    broker = Broker(tmp_path, port).start()
    sub = Subscriber(port)
    example = ROOT / "systemd" / "config.example.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "feredge", "run", "--config", str(example), "--model", str(edge_model),
         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(port), "--http-port", str(http_port),
         "--set", "mqtt.node_id='feredge-example'", "--set", "jsonl.mode='frames'"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        node = "feredge-example"
        def seen() -> bool:
            states = [json.loads(x) for x in sub.on("feredge/feredge-example/shelf/state")]
            return bool(sub.on(f"homeassistant/sensor/{node}/shelf_expression/config")
                        and any(st["faces"] >= 1 for st in states) and sub.on("feredge/feredge-example/shelf/events"))

        assert wait_until(lambda: seen() or proc.poll() is not None, 180)
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=30) as r:
            metrics = r.read().decode()
        assert 'feredge_frames_total{camera="shelf"}' in metrics and "feredge_up 1.0" in metrics
        assert wait_until(lambda: any('"type":"frame"' in x for x in lines), 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=10)
        records = [json.loads(x) for x in lines if x.startswith("{")]
        assert any(r["type"] == "event" and r["event"] == "appeared" for r in records)
        assert all(f["track_id"] >= 1 for r in records if r["type"] == "frame" for f in r["faces"])
        assert wait_until(lambda: sub.on(f"feredge/{node}/availability")[-1:] == ["offline"], 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sub.close()
        broker.stop()


def test_connection_failures_say_why_and_connected_starts_at_zero(tmp_path, caplog):
    """DNS, refused, TLS and auth failures each get one WARNING naming the cause (none was logged,
    even with -v), and feredge_mqtt_connected reads 0 before the first success, so an alert on
    == 0 fires for a daemon that never connected."""
    import logging

    from feredge.edge.daemon.config import MqttConfig
    from feredge.edge.daemon.metrics import DaemonMetrics
    from feredge.edge.daemon.sinks.mqtt import MqttSink

    port = free_port()
    broker = Broker(tmp_path, port)
    pw = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    need(os.path.exists(pw), "mosquitto_passwd is not installed (apt install mosquitto)")
    passwd = tmp_path / "passwd"
    subprocess.run([pw, "-c", "-b", str(passwd), "alice", "right"], check=True, capture_output=True)
    # as root, mosquitto drops to its own user, which cannot read the test's private folder
    run_as = "user root\n" if os.geteuid() == 0 else ""
    broker.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                           f"persistence false\n{run_as}")
    broker.start()
    cases = [
        ({"host": "no-such-host.invalid", "port": port}, "cannot resolve 'no-such-host.invalid' (DNS"),
        ({"host": "127.0.0.1", "port": free_port()}, "connection refused by 127.0.0.1:"),
        ({"host": "127.0.0.1", "port": port, "tls": True, "tls_insecure": True}, "TLS handshake with 127.0.0.1:"),
        ({"host": "127.0.0.1", "port": port, "username": "alice"},
         "the broker refused the connection: Not authorized (check mqtt.username and the password)"),
    ]
    caplog.set_level(logging.DEBUG, logger="feredge.edge.daemon.sinks.mqtt")
    try:
        for settings, reason in cases:
            caplog.clear()
            metrics = DaemonMetrics()
            sink = MqttSink(MqttConfig(enabled=True, reconnect_min=1, reconnect_max=1, **settings), ["cam0"],
                            password="wrong" if "username" in settings else None, metrics=metrics)
            assert metrics.value("feredge_mqtt_connected") == 0
            sink.start()
            try:
                assert wait_until(lambda r=reason: r in caplog.text, 30), (reason, caplog.text)
                assert wait_until(lambda: "still cannot connect" in caplog.text, 30)  # retried ...
            finally:
                sink.close()
            warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "cannot connect" in r.message]
            assert len(warnings) == 1, [r.message for r in warnings]  # ... but said once, not every second
            assert metrics.value("feredge_mqtt_connected") == 0
            assert "wrong" not in caplog.text
    finally:
        broker.stop()
