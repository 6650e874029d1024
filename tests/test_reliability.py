"""Secrets, bad input and faults found by a probe of the device commands (issue "Reliability and
security of the device side"). Each test failed before its fix.

Real components throughout: a real MJPEG-over-HTTP camera served by the test (with Basic auth,
so the password inserted from ``password_env`` is proven to reach the camera), OpenCV/FFmpeg
reading it, the daemon in-process, real HTTP, real subprocesses for pipes and signals.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys

import cv2
import numpy as np
import pytest
from helpers import ROOT, MjpegCamera, RecordingSink, http_get, make_config, start, stop, wait_until

from feredge.edge import jsonsafe
from feredge.edge.cli.main import main
from feredge.edge.daemon import config as C
from feredge.edge.daemon.run import Daemon
from feredge.edge.daemon.sinks.jsonl import JsonlSink
from feredge.edge.sources.spec import parse_spec, redact, redact_text, with_password

PASSWORD = "p@ss w0rd"  # URL-hostile on purpose: "@" and a space must be percent-encoded
USER = "viewer"


def _feredge(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "feredge", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT, **kw)


# ---- redaction ----------------------------------------------------------------------------------

def test_redaction_of_urls_and_request_lines():
    assert redact("rtsp://admin:hunter2@10.0.0.9:554/live?channel=1&token=abc") == \
        "rtsp://***@10.0.0.9:554/live?channel=1&token=***"
    assert redact("http://cam/mjpg?user=a&Access-Token=zz") == "http://cam/mjpg?user=a&Access-Token=***"
    assert redact("/dev/video0") == "/dev/video0" and redact("clip.mp4") == "clip.mp4"
    assert redact_text("GET /api/stats?token=s3cret HTTP/1.1") == "GET /api/stats?token=*** HTTP/1.1"
    assert "hunter2" not in redact_text("cannot open camera 'rtsp://admin:hunter2@cam/x'; check the URL")
    assert parse_spec("rtsp://admin:hunter2@cam/x").display == "rtsp://***@cam/x"
    url = with_password("rtsp://viewer@cam:554/s", PASSWORD)
    assert url == "rtsp://viewer:p%40ss%20w0rd@cam:554/s"
    with pytest.raises(Exception, match=r"needs a user name in the URL"):
        with_password("rtsp://cam/s", PASSWORD)


# ---- a camera URL's password is shown to no one -------------------------------------------------

def test_camera_password_from_env_reaches_the_camera_and_is_never_shown(edge_model, face_frame, monkeypatch,
                                                                       caplog, capfd):
    cam = MjpegCamera(face_frame, credentials=(USER, PASSWORD))  # wants Basic auth
    monkeypatch.setenv("FEREDGE_TEST_CAMERA_PASSWORD", PASSWORD)
    url = f"http://{USER}@127.0.0.1:{cam.port}/stream.mjpg?token=also-secret"
    cfg = make_config(edge_model, camera={"source": url, "password_env": "FEREDGE_TEST_CAMERA_PASSWORD",
                                               "read_timeout": 5.0},
                      http={"enabled": True, "port": 0})
    cfg.jsonl.mode = "all"
    jsonl = io.StringIO()
    rec = RecordingSink()
    d = Daemon(cfg, extra_sinks=[rec, JsonlSink(cfg.jsonl, stream=jsonl)])
    caplog.set_level(logging.DEBUG)
    t = start(d)
    try:
        assert wait_until(lambda: len(rec.frames) >= 5, timeout=60), "no frames from the MJPEG camera"
        assert cam.authorized >= 1  # the password from the environment was put into the URL
        base = f"http://127.0.0.1:{d.http.port}"
        stats = http_get(base + "/api/stats?token=irrelevant")[1].decode()
        health = http_get(base + "/healthz")
    finally:
        stop(d, t)
        cam.close()
    shown = f"http://***@127.0.0.1:{cam.port}/stream.mjpg?token=***"
    assert rec.frames[0]["source"] == shown
    # a camera says once what the detection scale can see (320 px wide frames: 40-px faces)
    assert caplog.text.count("camera cam0: 320x320 frames; faces smaller than 40 px are not detected") == 1
    assert json.loads(health[1]) == {"status": "ok"}  # up/down and nothing else
    everything = "\n".join([stats, jsonl.getvalue(), caplog.text, *capfd.readouterr(), json.dumps(rec.frames[:3])])
    for secret in (PASSWORD, "p%40ss", "also-secret", f"{USER}@"):
        assert secret not in everything, secret


def test_unreachable_camera_url_is_redacted_in_every_output(edge_model, caplog, capsys):
    url = "rtsp://admin:hunter2@127.0.0.1:1/live?token=abc"
    cfg = make_config(edge_model, camera={"source": url}, http={"enabled": True, "port": 0})
    jsonl = io.StringIO()
    d = Daemon(cfg, extra_sinks=[JsonlSink(cfg.jsonl, stream=jsonl)])
    caplog.set_level(logging.DEBUG)
    t = start(d)
    try:
        cam = d.cameras["cam0"]
        assert wait_until(lambda: cam.feed.reason.startswith("open failed"), timeout=60)
        base = f"http://127.0.0.1:{d.http.port}"
        code, body, _ = http_get(base + "/healthz")
        stats = http_get(base + "/api/stats")[1].decode()
    finally:
        stop(d, t)
    assert code == 503 and json.loads(body) == {"status": "degraded"}
    assert "rtsp://***@127.0.0.1:1/live?token=***" in stats  # the reason stays useful
    assert main(["run", "--check", "--model", str(edge_model), "--source", url]) == 0
    out = capsys.readouterr()
    assert "cam0=rtsp://***@127.0.0.1:1/live?token=***" in out.out
    everything = "\n".join([stats, jsonl.getvalue(), caplog.text, out.out, out.err])
    assert "hunter2" not in everything and "token=abc" not in everything and "admin" not in everything


def test_http_request_log_never_shows_the_token(edge_model, face_frame, caplog):
    from helpers import ScriptedSource

    cfg = make_config(edge_model, http={"enabled": True, "port": 0, "token": "t0ken-value"})
    d = Daemon(cfg, openers={"cam0": (lambda: ScriptedSource([face_frame], repeat_last=True), False, True)})
    caplog.set_level(logging.DEBUG, logger="feredge.edge.daemon.sinks.http")
    t = start(d)
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        assert http_get(base + "/api/stats?token=t0ken-value")[0] == 200
        assert http_get(base + "/api/stats?token=wrong-guess")[0] == 401
    finally:
        stop(d, t)
    assert "/api/stats?token=***" in caplog.text
    assert "t0ken-value" not in caplog.text and "wrong-guess" not in caplog.text


@pytest.mark.parametrize("value", [" ", "\t\n"])
def test_whitespace_only_secrets_are_refused(value, monkeypatch, tmp_path):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("FEREDGE_HTTP_TOKEN", value)
    p = tmp_path / "c.toml"
    p.write_text('[http]\nbind = "0.0.0.0"\n')
    with pytest.raises(C.ConfigError, match=r"http token from \$FEREDGE_HTTP_TOKEN is empty or only whitespace"):
        C.load(p)
    monkeypatch.setenv("FEREDGE_HTTP_TOKEN", " s3cret\n")
    assert C.load(p).http_token() == "s3cret"


# ---- bad input and faults -----------------------------------------------------------------------

def test_closed_stdout_ends_classify_quietly(woman_video):
    proc = subprocess.run(f"'{sys.executable}' -m feredge classify --json '{woman_video}' | head -1",
                          shell=True, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, executable="/bin/bash")
    assert json.loads(proc.stdout)["frame"] == 0
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    pipe = subprocess.run(["bash", "-o", "pipefail", "-c",
                           f"'{sys.executable}' -m feredge classify --json '{woman_video}' | head -1 >/dev/null"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert pipe.returncode in (0, 141), pipe.stderr


def test_small_faces_in_a_large_photo_are_found_with_the_defaults(astronaut_bgr, tmp_path):
    # the astronaut's face (95 px at (177, 66)) with a margin, scaled so that the face is ~135 px
    face = cv2.resize(astronaut_bgr[40:185, 152:297], (200, 200), interpolation=cv2.INTER_AREA)
    sheet = np.full((2400, 2400, 3), 200, np.uint8)
    for k in range(16):
        y, x = 150 + (k // 4) * 560, 150 + (k % 4) * 560
        sheet[y:y + 200, x:x + 200] = face
    photo = tmp_path / "group.jpg"
    cv2.imwrite(str(photo), sheet)
    r = _feredge("classify", "--json", str(photo))
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)["faces"]) == 16
    # what the defaults did before: searched at 320 px, the faces are under the cascade's window
    from feredge.edge.detect import FaceDetector

    det = FaceDetector()
    assert det.detect(sheet) == [] and det.smallest_face(2400) == 180


def test_annotate_targets_that_cannot_be_written(astronaut_bgr, tmp_path, woman_video):
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), astronaut_bgr)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        ((str(img), "--annotate", str(tmp_path / "out.xyz")), "OpenCV cannot write .xyz images"),
        ((str(img), "--annotate", str(locked / "out.png")), "is not a writable folder"),
        ((str(woman_video), "--annotate", str(tmp_path / "frame.jpg")), "an image file name, but the input is a video"),
        ((str(woman_video), "--annotate", str(tmp_path / "clip.xyz")), "not a video OpenCV can write"),
    ]
    try:
        for args, fragment in cases:
            if os.geteuid() == 0 and "locked" in args[2]:
                continue  # root writes anywhere; the check cannot be seen failing
            r = _feredge("classify", *args)
            lines = r.stderr.strip().splitlines()
            assert r.returncode == 2 and len(lines) == 1 and fragment in lines[0], r.stderr
            assert r.stdout == ""  # refused before a single frame is reported
    finally:
        locked.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "locked"]


def test_annotate_into_a_folder_root_cannot_write(astronaut_bgr, tmp_path):
    # As root the permission check above cannot fail, so a path under a file stands in for it.
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), astronaut_bgr)
    r = _feredge("classify", str(img), "--annotate", str(img / "sub" / "out.png"))
    assert r.returncode == 2 and "is not a writable folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sigterm_during_annotate_leaves_no_temporary_file(woman_video, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "feredge", "classify", str(woman_video), "--annotate",
                             str(out / "clip.mp4")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=ROOT)
    for _ in range(5):  # a few frames written: the temporary video exists
        proc.stdout.readline()
    assert any(out.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and "terminated" in err and "Traceback" not in err, err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("setting, fragment", [
    ("zero-byte", "is an empty file"),
    ("v4l2:abc", "use v4l2:N or v4l2:/dev/"),
    ("ftp://u:pw@host/a.mp4", "ftp:// is not a stream OpenCV can read"),
    ("jsonl-folder", "is a folder"),
    ("jsonl-uncreatable", "is not a folder"),
])
def test_run_check_refuses_what_run_cannot_use(setting, fragment, edge_model, woman_video, tmp_path, capsys):
    args = ["run", "--check", "--model", str(edge_model), "--source", str(woman_video)]
    if setting == "zero-byte":
        (tmp_path / "empty.mp4").write_bytes(b"")
        args[-1] = str(tmp_path / "empty.mp4")
    elif setting.startswith("jsonl"):
        blocker = tmp_path / "file"
        blocker.write_text("x")
        args += ["--jsonl", str(tmp_path) if setting == "jsonl-folder" else str(blocker / "sub" / "x.jsonl")]
    else:
        args[-1] = setting
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and "\n" not in err and "pw@" not in err, err


@pytest.mark.parametrize("text", ["[tracking]\nsmoothing = nan\n", "[tracking]\nleave_after = inf\n",
                                  "[[camera]]\nfps = -inf\n"])
def test_non_finite_numbers_are_refused(text, tmp_path):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(C.ConfigError, match=r"line 2: .* must be a finite number"):
        C.load(p)
    assert main(["run", "--check", "--set", "tracking.smoothing=nan"]) == 2


def test_json_never_carries_nan():
    line = jsonsafe.dumps({"score": float("nan"), "scores": [1.0, float("inf")], "ok": 0.5})
    assert json.loads(line) == {"score": None, "scores": [1.0, None], "ok": 0.5}
    assert "NaN" not in line and "Infinity" not in line


def test_truncated_jpeg_is_reported(astronaut_bgr, tmp_path):
    data = cv2.imencode(".jpg", astronaut_bgr)[1].tobytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) * 2 // 3])
    whole = tmp_path / "whole.jpg"
    whole.write_bytes(data)
    r = _feredge("classify", "--json", str(cut), str(whole))
    assert r.returncode == 0, r.stderr
    first, second = (json.loads(line) for line in r.stdout.splitlines())
    assert first["warnings"] == ["truncated JPEG (no end-of-image marker): its lower part is missing"]
    assert "warnings" not in second
    assert f"{cut}: truncated JPEG" in r.stderr and str(whole) not in r.stderr
