"""The default model's training recipe runs, resumes, and hands its temperature to the exporter.

CI never trains for real: this runs the recipe for one or two epochs on a few synthetic faces in
the FER2013 folder layout, with a very narrow network.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.cli import main
from edge.contract import FER2013_LABELS, Contract


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fer")
    rng = np.random.default_rng(0)
    for part, n in (("train", 10), ("test", 2)):
        for k, name in enumerate(FER2013_LABELS):
            (d / part / name).mkdir(parents=True)
            for j in range(n):
                img = rng.integers(0, 60, (48, 48), dtype=np.uint8) + np.uint8(25 * k)
                cv2.imwrite(str(d / part / name / f"{part}_{k}_{j}.png"), img)
    return d


def test_recipe_trains_resumes_and_exports_with_its_temperature(tiny_fer: Path, tmp_path: Path):
    from export.train import TrainConfig, build_model, stratified_split, train

    assert build_model(32).count_params() < 900_000  # int8 TFLite <= 1 MB
    y = np.repeat(np.arange(7), 10)
    tr, va = stratified_split(y, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and sorted(np.bincount(y[va]).tolist()) == [1] * 7
    out = tmp_path / "train"
    cfg = TrainConfig(data=str(tiny_fer), out=str(out), epochs=1, batch_size=16, width=4)
    release = train(cfg, progress=False)
    assert (out / "last.keras").is_file() and (out / "curves.png").is_file()
    cfg.epochs = 2
    train(cfg, resume=True, progress=False)  # continues at epoch 2, not from scratch
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    hint = Contract.load(release.with_suffix(".json"))
    assert hint.output.activation == "logits" and hint.output.temperature > 0
    assert hint.input.resize == "area" and hint.labels == list(FER2013_LABELS)

    exp = tmp_path / "export"
    rc = main(["export", str(release), "--calibration", str(tiny_fer), "--samples", "35", "--quiet",
               "--out", str(exp)])
    assert rc == 0
    c = Contract.load(exp / "feredge-fer-v1.json")
    assert c.output.activation == "logits"
    assert c.output.temperature == hint.output.temperature
    assert (c.input.normalize.scale, c.input.resize) == (hint.input.normalize.scale, "area")
    assert c.provenance["training"]["config"]["epochs"] == 2  # the recipe travels with the export
