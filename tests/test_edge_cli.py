"""`feredge classify` and `feredge doctor` end to end: real LiteRT, real OpenCV, real footage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import pytest

from feredge.edge.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(edge_model: Path) -> Path:
    return edge_model


def _contract(d: Path) -> Path:
    return next(d.glob("*.json"))


@pytest.fixture()
def astronaut_jpg(tmp_path: Path, astronaut_bgr) -> Path:
    p = tmp_path / "astronaut.jpg"
    cv2.imwrite(str(p), astronaut_bgr)
    return p


def _check_line(d: dict, labels: list[str]) -> None:
    assert set(d) <= {"source", "frame", "ts", "pts", "faces"} and {"source", "frame", "ts", "faces"} <= set(d)
    assert isinstance(d["frame"], int) and d["frame"] >= 0
    assert abs(d["ts"] - time.time()) < 600
    for f in d["faces"]:
        assert set(f) == {"box", "label", "score", "scores"}
        assert len(f["box"]) == 4 and all(isinstance(v, int) for v in f["box"])
        assert f["label"] in labels
        assert list(f["scores"]) == labels
        assert sum(f["scores"].values()) == pytest.approx(1.0, abs=0.05)
        assert f["score"] == max(f["scores"].values())


def test_classify_image_json(model_dir: Path, astronaut_jpg: Path, capsys):
    rc = main(["classify", "--model", str(model_dir), str(astronaut_jpg), "--json", "--device", "cpu"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(out) == 1
    d = json.loads(out[0])
    labels = json.loads(_contract(model_dir).read_text())["labels"]
    _check_line(d, labels)
    assert d["source"] == str(astronaut_jpg) and d["frame"] == 0 and "pts" not in d
    assert len(d["faces"]) == 1
    x, y, w, h = d["faces"][0]["box"]
    assert 140 < x + w / 2 < 300 and 60 < y + h / 2 < 200


def test_classify_video_json_and_annotate(model_dir: Path, woman_video: Path, tmp_path: Path, capsys):
    out_video = tmp_path / "annotated.mp4"
    n = 30
    rc = main(["classify", "--model", str(model_dir), str(woman_video), "--json", "--max-frames", str(n),
               "--annotate", str(out_video), "--device", "cpu", "--threads", "1"])
    assert rc == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    labels = json.loads(_contract(model_dir).read_text())["labels"]
    for d in lines:
        _check_line(d, labels)
    assert [d["frame"] for d in lines] == list(range(n))
    assert all(d["source"] == str(woman_video) for d in lines)
    pts = [d["pts"] for d in lines]
    assert pts[0] == 0.0 and pts[-1] == pytest.approx((n - 1) / 29.97, abs=0.01)
    assert sum(len(d["faces"]) == 1 for d in lines) >= n - 2  # one real face in every frame
    cap = cv2.VideoCapture(str(out_video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    ok, first = cap.read()
    assert ok and first.shape == (336, 596, 3)
    frames = 1 + sum(1 for _ in iter(lambda: cap.read()[0], False))
    assert frames == n
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left over


def test_classify_human_output_and_folder_annotate(model_dir: Path, astronaut_jpg: Path, tmp_path: Path, capsys):
    shutil.copy(astronaut_jpg, tmp_path / "second.jpg")
    out_dir = tmp_path / "annotated"
    rc = main(["classify", "--model", str(model_dir), str(tmp_path), "--annotate", str(out_dir), "--device", "cpu",
               "--min-score", "0.99"])
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0 and len(lines) == 2
    assert lines[0].startswith(f"{astronaut_jpg} frame 0: uncertain 0.") and " at (" in lines[0]
    assert sorted(p.name for p in out_dir.iterdir()) == ["astronaut.jpg", "second.jpg"]
    drawn = cv2.imread(str(out_dir / "astronaut.jpg"))
    assert drawn.shape == (512, 512, 3)
    assert cv2.absdiff(drawn, cv2.imread(str(astronaut_jpg))).max() > 100  # boxes were drawn


def test_single_image_annotate_to_file(model_dir: Path, astronaut_jpg: Path, tmp_path: Path, capsys):
    out = tmp_path / "out" / "drawn.png"
    assert main(["classify", "--model", str(model_dir), str(astronaut_jpg), "--annotate", str(out),
                 "--device", "cpu"]) == 0
    assert cv2.imread(str(out)).shape == (512, 512, 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope.jpg"], "input not found: nope.jpg"),
        (["IMG", "--max-frames", "0"], "--max-frames must be >= 1"),
        (["IMG", "--backend", "onnx"], "unknown backend 'onnx'"),
        (["IMG", "--model", "MISSING"], "model not found: "),
        (["IMG", "--device", "coral"], "--device coral: libedgetpu.so.1"),
    ],
)
def test_classify_bad_input_exit_2(model_dir: Path, astronaut_jpg: Path, tmp_path: Path, capsys, args, message):
    args = [str(astronaut_jpg) if a == "IMG" else str(tmp_path / "none") if a == "MISSING" else a for a in args]
    if "--model" not in args:
        args = ["--model", str(model_dir), *args]
    rc = main(["classify", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert err[-1].startswith("feredge classify: error: ") and message in err[-1]


def _feredge(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "feredge", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120, **kw)


def test_missing_and_tampered_model_one_line_exit_2(model_dir: Path, astronaut_jpg: Path, tmp_path: Path):
    r = _feredge("classify", "--model", str(tmp_path / "nothing.tflite"), str(astronaut_jpg))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [f"feredge classify: error: model not found: {tmp_path / 'nothing.tflite'}"]

    bad = tmp_path / "bad"
    shutil.copytree(model_dir, bad)
    p = next(bad.glob("*.int8.tflite"))
    data = bytearray(p.read_bytes())
    data[100] ^= 0x01  # flip one bit
    p.write_bytes(bytes(data))
    r = _feredge("classify", "--model", str(bad), str(astronaut_jpg))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    # both hashes in full: two prefixes can be equal when the files differ further on
    from feredge.edge.contract import Contract
    from feredge.edge.fsutil import sha256_file

    recorded = Contract.load(_contract(bad)).artifacts[p.name]["sha256"]
    assert lines[0] == (f"feredge classify: error: {p} does not match its contract: its sha256 is {sha256_file(p)}, "
                        f"the contract says {recorded} (the file was modified or belongs to another export)")

    # doctor on the same tampered model: a failed check and a non-zero exit, not "ready"
    r = _feredge("doctor", "--model", str(bad))
    assert r.returncode == 1, r.stdout
    assert f"[FAIL] model: {p} does not match its contract" in r.stdout and "pass --model" not in r.stdout
    assert "runtime ready, but the model given cannot be used" in r.stdout


def test_doctor_unknown_backend_and_invalid_contract_messages(model_dir: Path, tmp_path: Path, astronaut_jpg: Path):
    r = _feredge("doctor", "--backend", "bogus")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "feredge doctor: error: unknown backend 'bogus': choose auto, litert, tflite-runtime, tensorflow"]
    bad = tmp_path / "badjson"
    shutil.copytree(model_dir, bad)
    sidecar = _contract(bad)
    sidecar.write_text('{"schema": "feredge.contract/1", "name": "tiny", "labels": []}')
    r = _feredge("classify", "--model", str(bad), str(astronaut_jpg))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"feredge classify: error: {sidecar}: contract has no labels"], r.stderr


def test_doctor(model_dir: Path, capsys):
    assert main(["doctor", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "[ OK ] interpreter: litert " in out
    assert "[ OK ] face cascade: " in out and "haarcascade_frontalface_default.xml" in out
    assert "coral: " in out and "cameras: " in out
    name = json.loads(_contract(model_dir).read_text())["name"]
    assert f"[ OK ] model: {name} " in out and "sha256 checked" in out
    assert "summary: ready" in out
    assert main(["doctor", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["interpreter"]["backend"] == "litert" and d["can_run_without_model"] is True
    assert d["coral"]["ok"] is False or d["coral"]["library"]


def test_doctor_without_a_usable_interpreter_exits_1(capsys):
    # tflite-runtime is not installed here (Python 3.11 wheels stop at 2.14 and the project
    # uses LiteRT), so asking doctor to check it is a real "nothing can run" case.
    from feredge.edge import backends

    if backends.backend_module("tflite-runtime").available():
        pytest.skip("tflite-runtime is installed here")
    assert main(["doctor", "--backend", "tflite-runtime"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] interpreter: backend 'tflite-runtime' is not installed" in out
    assert "to do: pip install tflite-runtime" in out  # the package of the backend asked for
    assert "summary: cannot classify yet" in out


def test_edge_never_loads_tensorflow(model_dir: Path, astronaut_jpg: Path):
    """Import every module of ``edge`` and run classify the default way, in a fresh interpreter
    where TensorFlow *is* installed: none of tensorflow, keras, tf_keras may end up loaded."""
    script = textwrap.dedent(f"""
        import importlib, pkgutil, sys, json
        import feredge.edge
        hardware_only = {{"picamera2", "libcamera", "systemd"}}  # not installable off a Pi
        failed = []
        for m in pkgutil.walk_packages(feredge.edge.__path__, "feredge.edge."):
            try:
                importlib.import_module(m.name)
            except ImportError as e:
                if (e.name or "").split(".")[0] not in hardware_only:
                    failed.append(f"{{m.name}}: {{e}}")
        from feredge.edge.cli.main import main
        rc = main(["classify", "--model", {str(model_dir)!r}, {str(astronaut_jpg)!r}, "--json"])
        bad = sorted(n for n in sys.modules if n.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({{"rc": rc, "bad": bad, "failed": failed,
                          "n": sum(1 for n in sys.modules if n.startswith("feredge.edge."))}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    json.loads(lines[0])  # the classify result line
    res = json.loads(lines[-1])
    assert res["rc"] == 0 and res["failed"] == []
    assert res["n"] >= 12  # it really imported the package's modules
    assert res["bad"] == []
