"""Reliability and security, round 3 (issue 25): what an attacker on the LAN, a hostile file and a
careless user broke. Each test failed before its fix.

Real components: the daemon in-process with the shipped default model and its real HTTP server,
raw sockets for idle and slowloris clients, real TOML files, real subprocesses for exit codes.
The camera is the thin scripted stand-in of tests/helpers.py (no camera driver runs here).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from helpers import ScriptedSource, http_get, make_config, start, stop, wait_until

from feredge.edge.daemon import config as C
from feredge.edge.daemon.run import Daemon
from feredge.edge.daemon.sinks.httpserver import HEADER_TIMEOUT, host_allowed


def _daemon(edge_model, face_frame, **http):
    cfg = make_config(edge_model, http={"enabled": True, "port": 0, **http})
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)})
    return d, start(d)


def _raw(port: int, data: bytes = b"", host: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    if data:
        s.sendall(data)
    return s


def _read_to_eof(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(4096):
        out += chunk
    return out


def _timed_health(base: str) -> tuple[int, float]:
    t = time.perf_counter()
    code = http_get(base + "/healthz")[0]
    return code, time.perf_counter() - t


def test_idle_and_slowloris_clients_hold_no_thread_and_are_closed(edge_model, face_frame):
    d, t = _daemon(edge_model, face_frame, workers=6)
    socks: list[socket.socket] = []
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        assert wait_until(lambda: d.ready and d.cameras["cam0"].frames > 5, 120)
        threads_before = threading.active_count()
        for i in range(120):  # idle: connected, nothing sent; slowloris: a request line, then nothing
            socks.append(_raw(d.http.port, b"" if i % 2 else b"GET / HTTP/1.1\r\n"))
        time.sleep(0.5)
        during = threading.active_count()
        code, seconds = _timed_health(base)
        assert code == 200 and seconds < 1.0, (code, seconds)
        assert during <= threads_before + 6, (threads_before, during)  # bounded by the workers, not clients
        # a trickle does not keep a connection open past the header deadline
        trickle = _raw(d.http.port, b"G")
        for ch in b"ET / HTTP/1.1\r\n":
            time.sleep(0.4)
            try:
                trickle.send(bytes([ch]))
            except OSError:
                break
        time.sleep(HEADER_TIMEOUT + 1.0)
        for s in [*socks, trickle]:  # every one of them was closed by the server
            s.settimeout(2)
            try:
                assert s.recv(1024) == b""
            except ConnectionResetError:
                pass
        assert threading.active_count() <= threads_before + 6
        assert d.cameras["cam0"].thread.is_alive() and _timed_health(base)[0] == 200
    finally:
        for s in socks:
            s.close()
        assert stop(d, t) == 0


def test_refused_live_streams_close_and_busy_workers_answer_503(edge_model, face_frame):
    d, t = _daemon(edge_model, face_frame, workers=5)  # one live stream at most (workers - 4)
    try:
        port = d.http.port
        assert wait_until(lambda: d.ready, 120)
        live = _raw(port, b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert b"200 OK" in live.recv(4096)
        refused = _raw(port, b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        refused.settimeout(3)
        reply = _read_to_eof(refused)  # the server closes it: not kept open on a thread
        assert b" 503 " in reply.split(b"\r\n", 1)[0] and b"too many live clients" in reply
        assert wait_until(lambda: d.http.busy_workers() == 1, 5)
        live.close()
    finally:
        assert stop(d, t) == 0


def test_host_header_is_checked_against_dns_rebinding(edge_model, face_frame):
    d, t = _daemon(edge_model, face_frame)
    try:
        port = d.http.port
        assert wait_until(lambda: d.ready, 120)
        for host, ok in (("evil.example", False), ("evil.example:8800", False), (f"127.0.0.1:{port}", True),
                         ("localhost", True), ("[::1]:8800", True)):
            s = _raw(port, f"GET /api/stats HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            head = s.recv(65536).split(b"\r\n", 1)[0]
            s.close()
            assert (b" 200 " in head) == ok and (b" 403 " in head) == (not ok), (host, head)
        s = _raw(port, b"GET /snapshot/cam0.jpg HTTP/1.1\r\nHost: rebind.attacker.test\r\n\r\n")
        assert b" 403 " in s.recv(4096).split(b"\r\n", 1)[0]
        s.close()
    finally:
        assert stop(d, t) == 0
    assert host_allowed("pi.lan", "0.0.0.0", ["pi.lan"]) and host_allowed("192.168.1.7:8800", "0.0.0.0", [])
    assert not host_allowed("evil.example", "0.0.0.0", []) and not host_allowed("pi.lan", "127.0.0.1", [])
    assert host_allowed(socket.gethostname(), "0.0.0.0", [])


def test_token_spellings_are_redacted_and_bearer_is_case_insensitive(edge_model, face_frame, caplog):
    d, t = _daemon(edge_model, face_frame, token="t0ken-s3cret")
    caplog.set_level(logging.DEBUG, logger="feredge.edge.daemon.sinks.http")
    try:
        base = f"http://127.0.0.1:{d.http.port}"
        assert wait_until(lambda: d.ready, 120)
        assert http_get(base + "/api?%74oken=t0ken-s3cret")[0] == 200
        assert http_get(base + "/api", {"Authorization": "bearer t0ken-s3cret"})[0] == 200
        assert http_get(base + "/api", {"Authorization": "Bearer wrong"})[0] == 401
        s = _raw(d.http.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = s.recv(4096).decode()
        s.close()
        server = next(ln for ln in reply.split("\r\n") if ln.lower().startswith("server:"))
        assert server == "Server: feredge"  # no Python version
    finally:
        assert stop(d, t) == 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "/api?token=***" in logged and "t0ken-s3cret" not in logged


def test_a_crashed_camera_loop_exits_non_zero(edge_model, face_frame):
    cfg = make_config(edge_model)
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)})
    d.setup()

    def crashing_frames():  # what the loop met when the unit's TasksMax was reached
        raise RuntimeError("can't start new thread")
        yield  # pragma: no cover

    d.cameras["cam0"].feed.frames = crashing_frames
    assert d.run(install_signals=False, max_seconds=60) == 1  # not 0: Restart=on-failure restarts it
    assert "can't start new thread" in d.cameras["cam0"].crashed


def test_a_reader_thread_that_cannot_start_is_an_offline_camera(edge_model, face_frame, monkeypatch):
    from feredge.edge.sources import reconnect

    cfg = make_config(edge_model)
    src = lambda: ScriptedSource([face_frame], repeat_last=True)  # noqa: E731
    d = Daemon(cfg, openers={"cam0": (src, False, True)})
    real_start, calls = threading.Thread.start, []

    def start_fails_twice(self):
        if self.name.startswith("read-") and len(calls) < 2:
            calls.append(self.name)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(reconnect.threading.Thread, "start", start_fails_twice)
    t = start(d)
    try:
        assert wait_until(lambda: d.cameras["cam0"].frames > 3, 60)  # retried with backoff, then recovered
        assert len(calls) == 2 and d.cameras["cam0"].feed.reconnects >= 2
    finally:
        assert stop(d, t) == 0


# ---- config: secrets, sizes, nesting -------------------------------------------------------------

@pytest.mark.parametrize("text, secret", [
    ("[http]\ntoken = 987654321\n", "987654321"),
    ("[mqtt]\npassword = [\"hunter2-list\"]\n", "hunter2-list"),
    ("[http]\ntoken = 12.5\n", "12.5"),
])
def test_config_errors_never_echo_a_secret(tmp_path, text, secret):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(C.ConfigError) as e:
        C.load(p)
    assert secret not in str(e.value) and "secret" in str(e.value)


def test_override_of_a_secret_is_not_echoed():
    cfg = C.Config()
    with pytest.raises(C.ConfigError) as e:
        C.apply_override(cfg, "http.token", 424242)
    assert "424242" not in str(e.value)


def test_nested_huge_and_long_config_values_fail_cleanly(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[mqtt]\nhost = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(C.ConfigError, match=r"nested too deeply|must be a string"):
        C.load(deep)
    long = tmp_path / "long.toml"
    long.write_text("[http]\nbind = \"" + "x" * 200_000 + "\"\n")
    with pytest.raises(C.ConfigError) as e:
        C.load(long)
    assert len(str(e.value)) < 400 and "characters" in str(e.value)
    many = tmp_path / "many.toml"
    many.write_text("".join(f"[[camera]]\nname = \"c{i}\"\nsource = \"/dev/video{i}\"\n" for i in range(40)))
    with pytest.raises(C.ConfigError, match="at most 16"):
        C.load(many)


def test_http_bind_and_min_score_are_checked_at_load(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[http]\nbind = \"not a host!\"\n")
    with pytest.raises(C.ConfigError, match=r"http\.bind"):
        C.load(p)
    p.write_text("[model]\nmin_score = 1.0\n")  # the Classifier accepts [0, 1]; so does the config now
    assert C.load(p).model.min_score == 1.0


def test_cli_config_error_is_one_line_exit_2(tmp_path, capsys):
    from feredge.edge.cli.main import main

    p = tmp_path / "c.toml"
    p.write_text("[mqtt]\nhost = " + "[" * 5000 + "]" * 5000 + "\n")
    assert main(["run", "--config", str(p), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0]
    assert json.dumps(err)  # printable


# ---- hostile files -------------------------------------------------------------------------------

def _png_header_only(path, width: int, height: int) -> None:
    """A PNG that declares width x height (what a decompression bomb's header says); its data is a
    real zlib stream of zeros, so a decoder would inflate it in full."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    row = b"\x00" + b"\x00" * width
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(min(height, 64))) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_decompression_bomb_image_is_refused_before_decoding(tmp_path, edge_model, capsys):
    from feredge.edge.cli.main import main
    from feredge.edge.sources.images import MAX_PIXELS, image_size

    bomb = tmp_path / "huge.png"
    _png_header_only(bomb, 20000, 20000)
    assert image_size(bomb) == (20000, 20000) and 20000 * 20000 > MAX_PIXELS
    assert main(["classify", "--model", str(edge_model), str(bomb)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "20000x20000" in err[0] and "Traceback" not in err[0]
    import cv2
    import numpy as np

    for ext in (".png", ".jpg", ".bmp", ".webp"):  # the header readers agree with OpenCV's decoder
        f = tmp_path / f"ok{ext}"
        cv2.imwrite(str(f), np.zeros((37, 53, 3), np.uint8))
        assert image_size(f) == (53, 37), ext


def test_fifo_input_is_refused_not_blocking(tmp_path, edge_model):
    import os
    import subprocess
    import sys

    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    r = subprocess.run([sys.executable, "-m", "feredge", "classify", "--model", str(edge_model), str(fifo)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr


def test_keras_zip_bomb_is_refused_by_declared_sizes(tmp_path, capsys):
    import zipfile

    import cv2
    import numpy as np

    from feredge.edge.cli.main import main

    cal = tmp_path / "cal" / "happy"
    cal.mkdir(parents=True)
    for i in range(5):
        cv2.imwrite(str(cal / f"{i}.png"), np.full((48, 48), 40 * i, np.uint8))
    for name, member, size in (("config.keras", "config.json", 20 << 20), ("weights.keras", "model.weights.h5",
                                                                           300 << 20)):
        p = tmp_path / name
        with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
            if member != "config.json":
                zf.writestr("config.json", "{}")
            with zf.open(member, "w") as f:
                block = b" " * (1 << 20)
                for _ in range(size >> 20):
                    f.write(block)
        assert main(["export", str(p), "--calibration", str(tmp_path / "cal"), "--out", str(tmp_path / "o"),
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert member in err and ("declares" in err or "zip bomb" in err), err
        assert not (tmp_path / "o").exists()


def test_classify_with_nothing_readable_fails(tmp_path, edge_model, capsys):
    from feredge.edge.cli.main import main

    d = tmp_path / "photos"
    d.mkdir()
    for name in ("a.jpg", "b.jpg"):
        (d / name).write_bytes(b"\xff\xd8\xff not a jpeg at all")
    assert main(["classify", "--model", str(edge_model), str(d)]) == 2
    assert "no frame could be read" in capsys.readouterr().err
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 4000)
    assert main(["classify", "--model", str(edge_model), str(bad)]) == 2


def test_parity_does_not_fall_back_to_training_faces_when_the_test_part_is_damaged(tmp_path):
    from feredge.export.calibration import read_source
    from feredge.export.errors import ExportError, NoTestPart

    (tmp_path / "train" / "happy").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "happy").mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "train" / "happy" / "a.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(ExportError) as e:  # a test part that exists but holds nothing readable
        read_source(tmp_path, "test")
    assert not isinstance(e.value, NoTestPart)
    plain = tmp_path / "plain"
    plain.mkdir()
    cv2.imwrite(str(plain / "a.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(NoTestPart):  # only this one allows the fallback
        read_source(plain, "test")


def test_architecture_with_a_keras_file_is_refused(tmp_path, capsys):
    import keras

    from feredge.edge.cli.main import main

    m = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    m.save(tmp_path / "m.keras")
    (tmp_path / "cal" / "happy").mkdir(parents=True)
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "cal" / "happy" / "a.png"), np.zeros((48, 48), np.uint8))
    rc = main(["export", str(tmp_path / "m.keras"), "--architecture", "arch.json", "--calibration",
               str(tmp_path / "cal"), "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 2 and "--architecture is for weights-only" in capsys.readouterr().err


def test_h5_with_ten_thousand_layers_fails_fast_naming_the_cause(tmp_path, capsys):
    import h5py

    from feredge.edge.cli.main import main

    layers = [{"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": [None, 48, 48, 1],
                                                      "dtype": "float32"}}]
    layers += [{"class_name": "Activation", "config": {"name": f"a{i}", "trainable": True, "activation": "linear"}}
               for i in range(10_000)]
    p = tmp_path / "chain.h5"
    with h5py.File(p, "w") as f:
        f.attrs["keras_version"] = "2.4.0"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": layers}})
        f.create_group("model_weights")
    cal = tmp_path / "cal" / "happy"
    cal.mkdir(parents=True)
    import cv2
    import numpy as np

    cv2.imwrite(str(cal / "a.png"), np.zeros((48, 48), np.uint8))
    t = time.perf_counter()
    assert main(["export", str(p), "--calibration", str(tmp_path / "cal"), "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "10,000 layers" in err and "dtype" not in err and time.perf_counter() - t < 20


def _tiny_model_and_faces(tmp_path, n: int) -> None:
    """``m.keras`` (a small CNN) and ``cal/happy/`` with ``n`` random 48x48 faces in ``tmp_path``."""
    import cv2
    import keras
    import numpy as np

    m = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Conv2D(8, 3, activation="relu"),
                          keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7, activation="softmax")])
    m.save(tmp_path / "m.keras")
    cal = tmp_path / "cal" / "happy"
    cal.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(cal / f"{i}.png"), np.random.default_rng(i).integers(0, 255, (48, 48), np.uint8))


def test_two_sigterms_during_export_leave_no_traceback_and_no_files(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    _tiny_model_and_faces(tmp_path, 60)
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "feredge", "export", str(tmp_path / "m.keras"), "--calibration",
                             str(tmp_path / "cal"), "--out", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.name.startswith(".feredge-staging-") for p in out.iterdir()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # impatient: a second one while the child is being stopped
    _, err = proc.communicate(timeout=120)
    # 143 from the CLI, or -15 when the second signal lands after the clean-up, as the process exits
    assert proc.returncode in (128 + signal.SIGTERM, -signal.SIGTERM), err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def _importing_numpy(pid: int) -> bool:
    return "_multiarray_umath" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.3, 0.6, 1.0])
def test_ctrl_c_while_run_starts_is_one_line(tmp_path, edge_model, woman_video, delay):
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "feredge", "run", "--model", str(edge_model), "--source",
                             str(woman_video), "--loop", "--http-port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    # Measured from the moment feredge's imports are under way (numpy's core is mapped): earlier, the
    # signal lands in the interpreter's own start-up (its default action, or a fatal error in `site`),
    # before any feredge code exists; on a loaded machine that start-up alone can take 0.3 s.
    try:
        assert wait_until(lambda: _importing_numpy(proc.pid), timeout=30, interval=0.005)
        time.sleep(delay)  # while it imports, loads the model, opens the video
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a failed wait must not leave a daemon running
        proc.wait()
    assert "Traceback" not in err, err
    # Stopped cleanly, or interrupted: 130 from the CLI, or -2 (a shell shows 130 too) when the Ctrl-C
    # landed in code a C extension ran through PyRun_String during an import: CPython then marks the
    # KeyboardInterrupt "unhandled" for good and ends the process by SIGINT, whatever main() returned.
    assert proc.returncode in (0, 130, -signal.SIGINT), (proc.returncode, err)


def test_ctrl_c_that_a_library_reports_as_an_import_error_still_stops_the_daemon(monkeypatch, edge_model,
                                                                                woman_video, capsys):
    """numpy reports a Ctrl-C that lands in its C initialisation as an ImportError ("PyCapsule_Import
    could not import module datetime"). The backends fall back on ImportError, so the daemon once
    carried on with TensorFlow's interpreter and the Ctrl-C was lost (seen under load in this suite).
    Here the user's SIGINT really arrives inside the LiteRT backend's import, which turns it into an
    ImportError as numpy does."""
    import os
    import signal

    from feredge.edge.backends import litert
    from feredge.edge.cli.main import main

    def load():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt:
            raise ImportError('PyCapsule_Import could not import module "datetime"') from None
        raise AssertionError("SIGINT was not delivered")

    monkeypatch.setattr(litert, "load", load)
    previous = signal.getsignal(signal.SIGINT)
    rc = main(["run", "--model", str(edge_model), "--source", str(woman_video), "--http-port", "0"])
    assert rc == 130, capsys.readouterr().err
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is previous  # the CLI put Python's handler back


def test_clean_up_removes_only_the_killed_childs_staging_folder(tmp_path):
    from feredge.edge.fsutil import STAGING_PREFIX
    from feredge.export import isolate

    mine, theirs = tmp_path / f"{STAGING_PREFIX}4242-abc", tmp_path / f"{STAGING_PREFIX}777-def"
    for d in (mine, theirs):
        d.mkdir()
        (d / "half.tflite").write_bytes(b"x")
    isolate._clean(tmp_path, True, set(), 4242)
    assert not mine.exists() and theirs.exists()  # a concurrent export's folder is not touched


def test_bundle_pip_has_a_timeout(monkeypatch):
    import subprocess

    from feredge.export.bundle import build as bundle
    from feredge.export.errors import ExportError

    seen = {}

    def stalled(cmd, **kw):
        seen.update(cmd=cmd, **kw)
        raise subprocess.TimeoutExpired(cmd, kw.get("timeout"))

    monkeypatch.setattr(bundle.subprocess, "run", stalled)
    with pytest.raises(ExportError, match="took more than"):
        bundle._pip(["download", "x"], "download")
    assert seen["timeout"] == bundle.PIP_WALL and "--timeout" in seen["cmd"]


def test_verify_boot_names_every_missing_host_package(tmp_path):
    import os
    import subprocess
    import sys

    from helpers import ROOT

    if os.geteuid() != 0:
        pytest.skip("verify-boot checks for root before its tools")
    empty = tmp_path / "bin"
    empty.mkdir()
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "verify_boot.py")], capture_output=True, text=True,
                       env={**os.environ, "PATH": str(empty)}, timeout=60)
    assert r.returncode == 2
    for pkg in ("mmdebstrap", "e2fsprogs", "dosfstools", "mtools", "qemu-user-static", "arch-test"):
        assert pkg in r.stderr, r.stderr


def test_no_held_out_warning_reaches_the_console(tmp_path):
    import os
    import subprocess
    import sys

    _tiny_model_and_faces(tmp_path, 20)
    r = subprocess.run([sys.executable, "-m", "feredge", "export", str(tmp_path / "m.keras"), "--calibration",
                        str(tmp_path / "cal"), "--samples", "20", "--quiet", "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "no held-out images" in r.stderr  # was in the report only


def test_npz_bomb_is_refused_by_declared_size(tmp_path, monkeypatch):
    import numpy as np

    from feredge.export import calibration as cal
    from feredge.export.errors import ExportError

    p = tmp_path / "faces.npz"
    np.savez_compressed(p, x=np.zeros((200, 48, 48), np.uint8))
    monkeypatch.setattr(cal, "MAX_ARRAY_BYTES", 100_000)  # the same check, at a size a test can write
    with pytest.raises(ExportError, match="declares"):
        cal.read_source(p, "train")
