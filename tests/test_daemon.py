"""``feredge run``: the daemon loop, sd_notify, metrics, HTTP and JSON lines, and how it survives
failing cameras. Real LiteRT, real OpenCV, real sockets and real HTTP; no timed asserts (every
wait has a generous timeout and only the outcome is checked).

No camera exists here, so failing and stalling cameras are played by ``ScriptedSource``: a thin
stand-in that yields real images (``skimage``'s astronaut) and then fails or blocks as a real
driver does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import (
    ROOT,
    NotifyListener,
    RecordingSink,
    ScriptedSource,
    http_get,
    make_config,
    start,
    stop,
    wait_until,
)

from feredge.edge.cli.main import main
from feredge.edge.daemon.notify import Notifier
from feredge.edge.daemon.run import Daemon, valid_image
from feredge.edge.daemon.sinks.jsonl import RotatingWriter

# ---- small pieces -----------------------------------------------------------------------------

@pytest.mark.parametrize("abstract", [True, False])
def test_notify_datagrams(tmp_path, abstract):
    addr = f"@feredge-test-{uuid.uuid4().hex}" if abstract else str(tmp_path / "notify.sock")
    listener = NotifyListener(addr)
    try:
        n = Notifier(addr)
        assert n.ready("model up") and n.watchdog() and n.status("cam0 online\n5 fps") and n.stopping()
        assert wait_until(lambda: len(listener.messages) == 4, 10)
        msgs = [m for _, m in listener.messages]
        assert msgs[0] == {"READY": "1", "STATUS": "model up"}
        assert msgs[1] == {"WATCHDOG": "1"}
        assert msgs[2] == {"STATUS": "cam0 online 5 fps"}  # one line: systemd shows the first only
        assert msgs[3] == {"STOPPING": "1"}
        n.close()
    finally:
        listener.close()


def test_notify_without_socket_is_a_noop_and_watchdog_interval(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert Notifier().notify(READY=1) is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier().watchdog_interval() is None
    assert Notifier("/nonexistent/socket").notify(READY=1) is False  # logged, not raised


def test_metrics_exposition_format():
    """The documented names in the text format, series from the start, no _created series, and the
    process collector (prometheus_client) beside them."""
    from feredge.edge.daemon.metrics import DaemonMetrics

    m = DaemonMetrics()
    m.faces.labels(camera="cam0", expression='a"b').inc()
    for v in (0.0005, 0.005, 5):
        m.inference.labels(backend="litert").observe(v)
    m.up.set(1)
    text = m.render().decode()
    assert '# TYPE feredge_faces_total counter\nferedge_faces_total{camera="cam0",expression="a\\"b"} 1.0\n' in text
    assert 'feredge_inference_seconds_bucket{backend="litert",le="0.0005"} 1.0\n' in text
    assert 'feredge_inference_seconds_bucket{backend="litert",le="0.01"} 2.0\n' in text
    assert 'feredge_inference_seconds_bucket{backend="litert",le="+Inf"} 3.0\n' in text
    assert 'feredge_inference_seconds_count{backend="litert"} 3.0\n' in text
    assert "# TYPE feredge_up gauge\nferedge_up 1.0\n" in text
    assert "feredge_mqtt_connected 0.0\n" in text and "feredge_mqtt_dropped_total 0.0\n" in text
    assert "_created" not in text
    assert "process_resident_memory_bytes" in text and "process_open_fds" in text
    assert m.value("feredge_inference_seconds_sum", backend="litert") == pytest.approx(5.0055)


def test_rotating_writer_keeps_backups(tmp_path):
    w = RotatingWriter(tmp_path / "f.jsonl", max_bytes=1024, backups=2)
    for i in range(100):
        w.write_line(json.dumps({"i": i, "pad": "x" * 40}))
    w.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["f.jsonl", "f.jsonl.1", "f.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 1024
        lines = p.read_text().splitlines()
        assert all(json.loads(line)["pad"] for line in lines)
    last = [json.loads(x)["i"] for x in (tmp_path / "f.jsonl").read_text().splitlines()]
    assert last[-1] == 99


def test_valid_image():
    assert valid_image(np.zeros((32, 32, 3), np.uint8)) and valid_image(np.zeros((32, 32), np.uint8))
    for bad in (None, np.zeros((0, 0, 3), np.uint8), np.zeros((32, 32, 3), np.float64),
                np.zeros((8, 8, 3), np.uint8), np.zeros((32, 32, 2), np.uint8), "jpeg bytes"):
        assert not valid_image(bad)


# ---- reliability --------------------------------------------------------------------------------

def test_failing_and_silent_camera_goes_offline_and_reconnects(edge_model, face_frame, caplog):
    """Open fails (unplugged), then frames then a driver error, then a source that delivers
    nothing, then frames again: the camera is marked offline each time, reopened with
    backoff, and the daemon never crashes."""
    opened: list[ScriptedSource] = []

    def opener():
        n = len(opened)
        if n == 0:
            opened.append(None)  # type: ignore[arg-type]
            raise OSError("cannot open /dev/video0: No such device")
        script = {1: [face_frame] * 5 + ["fail"], 2: ["stall"]}.get(n, [face_frame])
        src = ScriptedSource(script, repeat_last=n >= 3)
        opened.append(src)
        return src

    caplog.set_level("DEBUG", logger="feredge.edge.sources.reconnect")
    rec = RecordingSink()
    cfg = make_config(edge_model)
    d = Daemon(cfg, openers={"cam0": (opener, False, True)}, extra_sinks=[rec])
    t = start(d)
    try:
        assert wait_until(lambda: len(opened) >= 4 and d.cameras["cam0"].frames >= 20, 120), \
            (len(opened), d.cameras["cam0"].frames, rec.states)
        cam = d.cameras["cam0"]
        assert t.is_alive()
        assert cam.feed.online
        # offline (open failed) -> online -> offline (read failed) -> online; the silent source
        # keeps it offline with a new reason but no duplicate notification.
        assert [s[1] for s in rec.states] == [False, True, False, True], rec.states
        assert "open failed" in rec.states[0][2] and "read failed" in rec.states[2][2]
        assert d.metrics.value("feredge_camera_reconnects_total", camera="cam0") == cam.feed.reconnects >= 3
        # the silent source was given up after read_timeout, its blocked reader abandoned
        assert "reader still blocked; abandoning it" in caplog.text
        assert "still offline: no frame for 1 s" in caplog.text
        assert d.metrics.value("feredge_camera_up", camera="cam0") == 1
    finally:
        assert stop(d, t) == 0


def test_offline_camera_is_unhealthy_and_faces_leave(edge_model, face_frame):
    calls = []

    def opener():
        calls.append(1)
        if len(calls) == 1:
            return ScriptedSource([face_frame] * 30 + ["stall"])
        raise OSError("gone")

    rec = RecordingSink()
    cfg = make_config(edge_model, camera={"read_timeout": 0.5})
    d = Daemon(cfg, openers={"cam0": (opener, False, True)}, extra_sinks=[rec])
    t = start(d)
    try:
        assert wait_until(lambda: len(calls) >= 2, 120)
        ok, detail = d.health()
        assert not ok and detail["cameras"]["cam0"]["online"] is False
        appeared = [e for e in rec.events_ if e["event"] == "appeared"]
        left = [e for e in rec.events_ if e["event"] == "left"]
        assert appeared and len(left) == len(appeared)  # a dead camera sees nobody
        assert d.metrics.value("feredge_camera_up", camera="cam0") == 0
    finally:
        assert stop(d, t) == 0


def test_corrupt_frames_are_skipped_and_counted(edge_model, face_frame):
    bad = [None, np.zeros((0, 0, 3), np.uint8), face_frame.astype(np.float64), np.zeros((4, 4, 3), np.uint8),
           np.zeros((64, 64, 2), np.uint8)]
    script = []
    for b in bad:
        script += [face_frame, face_frame, b]
    script += [face_frame] * 3
    rec = RecordingSink()
    cfg = make_config(edge_model)
    d = Daemon(cfg, openers={"cam0": (lambda: ScriptedSource(script), True, False)}, extra_sinks=[rec])
    d.setup()
    assert d.run(install_signals=False) == 0  # a finite source: the daemon ends by itself
    cam = d.cameras["cam0"]
    assert cam.corrupt == len(bad) == d.metrics.value("feredge_frames_corrupt_total", camera="cam0")
    assert cam.frames == len(rec.frames) == 2 * len(bad) + 3
    assert any(r["faces"] for r in rec.frames)
    assert all("track_id" in f for r in rec.frames for f in r["faces"])


def test_stalled_loop_stops_watchdog_pings(edge_model, face_frame, monkeypatch):
    addr = f"@feredge-wd-{uuid.uuid4().hex}"
    listener = NotifyListener(addr)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping every 0.2 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    rec = RecordingSink()
    rec.block_after = 20
    cfg = make_config(edge_model, daemon={"stall_timeout": 1.0, "status_interval": 0.5})
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)}, notifier=Notifier(addr), extra_sinks=[rec])
    t = start(d)
    try:
        assert wait_until(lambda: listener.times("READY", "1"), 60)
        assert wait_until(lambda: rec.blocked_at is not None, 60)
        pings_before = [x for x in listener.times("WATCHDOG") if x < rec.blocked_at]
        assert pings_before, "no watchdog pings while frames flowed"
        # Let the stall be noticed (stall_timeout + a generous margin for a loaded machine),
        # then watch a quiet window.
        time.sleep(1.0 + 1.5)
        quiet_from = time.monotonic()
        time.sleep(2.0)
        late = [x for x in listener.times("WATCHDOG") if x >= quiet_from]
        assert late == [], "watchdog kept pinging while the frame loop was stuck"
        status = [m["STATUS"] for _, m in listener.messages if "STATUS" in m]
        assert any("fps" in s and "infer" in s and "cam0 online" in s for s in status), status
        # Unblock: frames flow again and so do the pings.
        rec.block.set()
        resumed = time.monotonic()
        assert wait_until(lambda: [x for x in listener.times("WATCHDOG") if x > resumed], 30)
    finally:
        rec.block.set()
        assert stop(d, t) == 0
        assert wait_until(lambda: listener.times("STOPPING", "1"), 10)
        listener.close()


# ---- HTTP ----------------------------------------------------------------------------------------

def test_http_endpoints_over_real_http(edge_model, face_frame):
    cfg = make_config(edge_model, http={"enabled": True, "port": 0})
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)})
    t = start(d)
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        assert wait_until(lambda: d.ready and d.cameras["cam0"].frames > 10 and d.cameras["cam0"].fps > 0, 120)
        code, body, ctype = http_get(base + "/healthz")
        assert code == 200 and json.loads(body)["status"] == "ok"
        code, body, ctype = http_get(base + "/metrics")
        assert code == 200 and ctype.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "feredge_up 1.0\n" in text and "process_resident_memory_bytes " in text
        assert f'feredge_inference_seconds_bucket{{backend="{d.backend}",le="+Inf"}}' in text
        assert 'feredge_camera_fps{camera="cam0"}' in text
        assert 'feredge_camera_reconnects_total{camera="cam0"} 0' in text
        assert 'feredge_frames_corrupt_total{camera="cam0"} 0' in text
        assert 'feredge_faces_total{camera="cam0",expression="' in text
        code, body, _ = http_get(base + "/api/stats")
        stats = json.loads(body)
        assert code == 200 and stats["cameras"]["cam0"]["online"] is True and stats["cameras"]["cam0"]["frames"] > 0
        assert stats["model"]["backend"] == d.backend
        # the JSON index moved to /api; / is the status page (tests/test_status_page.py)
        code, body, ctype = http_get(base + "/api")
        assert code == 200 and ctype == "application/json" and "/api/stats" in json.loads(body)["feredge"]
        code, body, ctype = http_get(base + "/")
        assert code == 200 and ctype.startswith("text/html") and b"<title>feredge status</title>" in body
        # privacy: no frame endpoints unless enabled
        assert http_get(base + "/snapshot/cam0.jpg")[0] == 404
        assert http_get(base + "/mjpeg/cam0")[0] == 404
    finally:
        assert stop(d, t) == 0


def test_http_token_and_snapshots(edge_model, face_frame):
    cfg = make_config(edge_model, http={"enabled": True, "port": 0, "token": "t0ken", "snapshots": True,
                                             "mjpeg": True})
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)})
    t = start(d)
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        assert wait_until(lambda: d.cameras["cam0"].frames > 3, 120)
        assert http_get(base + "/metrics")[0] == 401
        assert http_get(base + "/metrics", {"Authorization": "Bearer nope"})[0] == 401
        assert http_get(base + "/metrics", {"Authorization": "Bearer t0ken"})[0] == 200
        assert http_get(base + "/api/stats?token=t0ken")[0] == 200
        assert http_get(base + "/healthz")[0] == 200  # health needs no token
        code, body, ctype = http_get(base + "/snapshot/cam0.jpg", {"Authorization": "Bearer t0ken"})
        assert code == 200 and ctype == "image/jpeg"
        img = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == face_frame.shape
        req = urllib.request.Request(base + "/mjpeg/cam0", headers={"Authorization": "Bearer t0ken"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.headers["Content-Type"] == "multipart/x-mixed-replace; boundary=frame"
            head = r.read(4096)
        assert head.startswith(b"--frame\r\nContent-Type: image/jpeg\r\n") and b"\xff\xd8" in head
        assert http_get(base + "/mjpeg/nocam", {"Authorization": "Bearer t0ken"})[0] == 404
    finally:
        assert stop(d, t) == 0


# ---- end to end on the shared video ------------------------------------------------------------

@pytest.mark.slow
def test_video_end_to_end_jsonl_rotation(edge_model, woman_video, tmp_path, capsys):
    out = tmp_path / "faces.jsonl"
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        rc = main(["run", "--model", str(edge_model), "--source", str(woman_video), "--pace", "fast",
                   "--jsonl", str(out), "--set", "jsonl.mode='all'", "--set", "jsonl.max_bytes=50000",
                   "--set", "jsonl.backups=2", "--set", "http.enabled=false"])
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
    assert rc == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["faces.jsonl", "faces.jsonl.1", "faces.jsonl.2"]
    records = [json.loads(line) for p in (out.with_name("faces.jsonl.1"), out) for line in p.read_text().splitlines()]
    frames = [r for r in records if r["type"] == "frame"]
    assert frames and all(r["camera"] == "cam0" and "pts" in r for r in frames)
    with_faces = [r for r in frames if r["faces"]]
    assert len(with_faces) > 0.8 * len(frames)  # one real face in every frame of this clip
    assert len({f["track_id"] for r in with_faces for f in r["faces"]}) <= 3  # tracked, not re-created
    indices = [r["frame"] for r in frames]
    assert indices == sorted(indices)


def test_missing_and_tampered_model_exit_2(edge_model, tmp_path, capsys, woman_video):
    assert main(["run", "--check", "--model", str(tmp_path / "none.tflite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("feredge run: error: model not found") and "\n" not in err
    bad = tmp_path / "bad"
    bad.mkdir()
    for p in Path(edge_model).iterdir():
        (bad / p.name).write_bytes(p.read_bytes())
    model = next(bad.glob("*.tflite"))
    data = bytearray(model.read_bytes())
    data[len(data) // 3] ^= 0xFF
    model.write_bytes(bytes(data))
    assert main(["run", "--check", "--model", str(bad), "--source", str(woman_video)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match its contract" in err and "\n" not in err


def test_check_reports_ok(edge_model, woman_video, capsys):
    assert main(["run", "--check", "--model", str(edge_model), "--source", str(woman_video)]) == 0
    out = capsys.readouterr().out
    name = json.loads(next(Path(edge_model).glob('*.json')).read_text())['name']
    assert out.startswith("config OK:") and f"model {name}" in out and f"cam0={woman_video}" in out


# ---- the real process: SIGTERM, notify, exit codes ---------------------------------------------

@pytest.mark.slow
def test_sigterm_clean_exit_with_notify(edge_model, woman_video, tmp_path):
    sock = str(tmp_path / "notify.sock")
    listener = NotifyListener(sock)
    env = {**os.environ, "NOTIFY_SOCKET": sock, "WATCHDOG_USEC": "2000000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "feredge", "run", "--model", str(edge_model), "--source", str(woman_video),
         "--loop", "--pace", "realtime", "--http-port", "0", "--set", "daemon.status_interval=0.5"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert wait_until(lambda: listener.times("READY", "1") or proc.poll() is not None, 120)
        assert proc.poll() is None, proc.stderr.read()
        # SIGTERM once a face is tracked (a loaded machine may be slow to get there)
        assert wait_until(lambda: listener.times("WATCHDOG", "1") and any(
            "fps" in m.get("STATUS", "") and " 0 face(s)" not in m.get("STATUS", "") for _, m in listener.messages),
            60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        assert listener.times("STOPPING", "1")
        assert '"event":"appeared"' in out  # events went to stdout as JSON lines
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        listener.close()


def test_process_missing_model_exits_2(tmp_path):
    r = subprocess.run([sys.executable, "-m", "feredge", "run", "--model", str(tmp_path / "x.tflite")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if "feredge run: error:" in line]
    assert lines and "model not found" in lines[0] and "Traceback" not in r.stderr
