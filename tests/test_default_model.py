"""The shipped default model: artifacts match their contract, the model card's numbers reproduce,
and the device uses it when no --model is given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import need

from feredge.edge.cli.main import main
from feredge.edge.contract import Contract, extract, resolve
from feredge.edge.fsutil import sha256_file

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
DEFAULT = ROOT / "edge" / "data" / "default"
NAME = "feredge-fer-v3"



@pytest.fixture(autouse=True)
def _shipped() -> None:
    # A missing default model fails under CI (it is part of the product), skips elsewhere.
    need((MODELS / f"{NAME}.json").is_file(), f"no shipped default model {NAME} in models/")


def test_shipped_artifacts_match_their_contract():
    c = Contract.load(MODELS / f"{NAME}.json")
    for ext in (".int8.tflite", ".onnx", ".int8.onnx", ".keras"):
        f = MODELS / f"{NAME}{ext}"
        assert c.artifacts[f.name]["sha256"] == sha256_file(f), f
    assert c.output.activation == "logits" and c.output.temperature > 0
    assert (c.input.height, c.input.width, c.input.channels) == (48, 48, 1)
    # the package-data copy the device loads is the same model and the same contract
    assert sha256_file(DEFAULT / f"{NAME}.int8.tflite") == sha256_file(MODELS / f"{NAME}.int8.tflite")
    assert Contract.load(DEFAULT / f"{NAME}.json") == c
    path, dc = resolve(DEFAULT)
    assert path.name == f"{NAME}.int8.tflite" and extract(path).labels == dc.labels
    assert (MODELS / f"{NAME}.int8.tflite").stat().st_size <= 1_000_000


def test_int8_accuracy_reproduces_the_model_card(fer2013_dir: Path):
    """Re-measure the int8 artifact on PublicTest through the device's Classifier (default model,
    no --model) and compare with the figure the model card was written from."""
    import numpy as np

    from feredge.edge.model import Classifier
    from feredge.export.calibration import read_source

    card = json.loads((MODELS / "metrics.json").read_text())
    claimed = card["artifacts"][f"{NAME}.int8.tflite"]["accuracy"]
    clf = Classifier(device="cpu")  # the shipped default
    assert clf.path.parent.resolve() == DEFAULT.resolve()
    test = read_source(fer2013_dir, "test", progress=False)
    y = test.labels_for(clf.labels)
    pred = np.array([int(np.argmax(clf.predict(img))) for img in test.images])
    acc = float((pred == y).mean())
    print(f"\nint8 default model on {len(y)} PublicTest faces: {acc:.4f} (model card: {claimed:.4f})")
    assert len(y) == 3589
    assert abs(acc - claimed) <= 0.001
    assert (MODELS / "MODEL_CARD.md").read_text().count(f"{100 * claimed:.2f} %") >= 1


def test_classify_uses_the_default_model(astronaut_bgr, tmp_path: Path, capsys):
    import cv2

    img = tmp_path / "astronaut.png"
    cv2.imwrite(str(img), astronaut_bgr)
    assert main(["classify", str(img), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert len(rec["faces"]) == 1
    face = rec["faces"][0]
    assert face["label"] in Contract.load(MODELS / f"{NAME}.json").labels
    assert abs(sum(face["scores"].values()) - 1.0) < 0.01


def test_calibration_list_is_the_exporters_sample(fer2013_dir: Path):
    from feredge.export.calibration import read_source

    listed = [ln for ln in (ROOT / "calibration_data" / f"{NAME}.txt").read_text().splitlines()
              if ln and not ln.startswith("#")]
    sample = read_source(fer2013_dir, "train", progress=False).sample(500, seed=0)
    assert [str(i) for i in sample.ids] == listed
    assert sample.sha256() == Contract.load(MODELS / f"{NAME}.json").provenance["calibration"]["sha256"]
