"""The default model's training recipe runs, resumes, and hands its temperature to the exporter.

CI never trains for real: this runs the recipe for one or two epochs on a few synthetic faces in
the FER2013 folder layout, with a very narrow network.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.edge.cli.main import main
from feredge.edge.contract import FER2013_LABELS, Contract


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
    from feredge.export.train.arch import ARCHITECTURES
    from feredge.export.train.recipe import RESUME_FILES, TrainConfig, stratified_split, train

    assert TrainConfig.arch == "v3"  # the default trains the shipped model's network
    assert all(build(32).count_params() < 900_000 for build in ARCHITECTURES.values())  # int8 TFLite <= 1 MB
    y = np.repeat(np.arange(7), 10)
    tr, va = stratified_split(y, 0.1, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and sorted(np.bincount(y[va]).tolist()) == [1] * 7
    out = tmp_path / "train"
    cfg = TrainConfig(data=str(tiny_fer), out=str(out), epochs=3, batch_size=16, width=4, warmup_epochs=1,
                      time_budget_min=1e-6)
    assert train(cfg, progress=False) is None  # the budget stops it after one epoch: resumable, no release
    assert all((out / f).is_file() for f in RESUME_FILES) and not (out / "curves.png").exists()
    ema_before = _ema_values(out / "last.keras")
    cfg.time_budget_min = 0
    cfg.epochs = 99  # ignored on resume: the run's own schedule (3 epochs) is kept
    release = train(cfg, resume=True, progress=False)  # continues at epoch 2, not from scratch
    assert (out / "curves.png").is_file()
    rows = (out / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and "epoch_seconds" in rows[0]  # header + 3 epochs, timed
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    assert not np.allclose(ema_before, _ema_values(out / "last.keras"))  # the EMA travelled and moved on
    hint = Contract.load(release.with_suffix(".json"))
    assert hint.output.activation == "logits" and hint.output.temperature > 0
    assert hint.input.resize == "area" and hint.labels == list(FER2013_LABELS)

    exp = tmp_path / "export"
    rc = main(["export", str(release), "--calibration", str(tiny_fer), "--samples", "35", "--quiet",
               "--out", str(exp)])
    assert rc == 0
    c = Contract.load(exp / "feredge-fer-v3.json")
    assert c.output.activation == "logits"
    assert c.output.temperature == hint.output.temperature
    # the recipe's x/255 is folded into the artifacts (issue 22); the desktop model still wants it
    assert (c.input.desktop().normalize.scale, c.input.resize) == (hint.input.normalize.scale, "area")
    assert c.provenance["training"]["config"]["epochs"] == 3  # the recipe travels with the export


def _ema_values(path: Path) -> np.ndarray:
    """The optimizer's EMA of the first conv kernel, as saved in a .keras checkpoint."""
    import keras

    model = keras.models.load_model(path)
    opt = model.optimizer
    assert opt.use_ema and len(opt._model_variables_moving_average) == len(model.trainable_variables)
    return np.array(opt._model_variables_moving_average[0])


def test_augmentation_is_identity_when_its_ranges_are_zero_and_a_function_of_its_uniforms():
    import tensorflow as tf

    from feredge.export.train.augment import augment, view_uniforms
    from feredge.export.train.recipe import TrainConfig

    rng = np.random.default_rng(1)
    x = tf.constant(rng.uniform(0, 1, (16, 48, 48, 1)).astype(np.float32))
    u = tf.constant(view_uniforms(seed=0, view=3, n=16))
    still = TrainConfig(data="", rotate_deg=0, zoom=0, shift=0, erase_p=0)
    still_out = augment(x, u, still).numpy()
    # only flips and brightness/contrast remain: each face equals itself or its mirror image up to an affine
    # change of intensity, which the per-image correlation sees as 1
    for a, b in zip(x.numpy(), still_out, strict=True):
        r = max(np.corrcoef(a.ravel(), b.ravel())[0, 1], np.corrcoef(a[:, ::-1].ravel(), b.ravel())[0, 1])
        assert r > 0.95
    moved = augment(x, u, TrainConfig(data="")).numpy()
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 1
    assert not np.allclose(moved, still_out)
    # a view is its uniforms: the same (seed, view) gives the same faces, another view other faces
    assert np.array_equal(augment(x, tf.constant(view_uniforms(0, 3, 16)), TrainConfig(data="")).numpy(), moved)
    assert not np.allclose(augment(x, tf.constant(view_uniforms(0, 4, 16)), TrainConfig(data="")).numpy(), moved)
    # a face's view does not depend on the faces beside it in the batch (the teachers saw other batches)
    p = np.array([5, 0, 11, 3])
    part = augment(tf.gather(x, p), tf.gather(u, p), TrainConfig(data="")).numpy()
    assert np.allclose(part, moved[p], atol=1e-6)


def test_distillation_caches_the_teachers_flip_averaged_logits_per_view(tiny_fer: Path, tmp_path: Path, capsys):
    import keras
    import tensorflow as tf

    from feredge.export.errors import ExportError
    from feredge.export.train.augment import augment, unit, view_uniforms
    from feredge.export.train.recipe import TrainConfig, load_fer_arrays, train, training_batches
    from feredge.export.train.teach import teacher_logits, teacher_probabilities

    keras.utils.set_random_seed(0)
    teacher = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Conv2D(3, 5, strides=2),
                                keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(7)])
    teacher.save(tmp_path / "t.keras")
    faces, labels = load_fer_arrays(tiny_fer, "train")
    cfg = TrainConfig(data=str(tiny_fer), out=str(tmp_path / "d"), epochs=2, batch_size=16, width=4, warmup_epochs=1,
                      arch="v3", teacher=str(tmp_path / "t.keras"), teacher_views=3)
    logits = teacher_logits(tmp_path / "t.keras", faces, cfg, progress=False)
    assert logits.shape == (3, len(faces), 7) and logits.dtype == np.float16
    # view 2 as the student will see it; the teacher's logits are averaged with its mirror image
    view = augment(tf.constant(unit(faces)), tf.constant(view_uniforms(0, 2, len(faces))), cfg).numpy()
    want = (teacher.predict(view, verbose=0) + teacher.predict(view[:, :, ::-1], verbose=0)) / 2
    assert np.allclose(logits[2], want, atol=2e-2)
    assert not np.allclose(teacher.predict(view, verbose=0), teacher.predict(view[:, :, ::-1], verbose=0), atol=2e-2)
    assert not np.allclose(logits[1], logits[2], atol=2e-2)  # each view is another face

    # the student's batch: exactly that view of each face, and the label mixed with the teachers' probabilities
    soft = teacher_probabilities(cfg, faces, progress=False)
    assert soft.shape == (3, len(faces), 7) and np.allclose(soft.sum(-1), 1, atol=1e-5)
    y1h = np.eye(7, dtype=np.float32)[labels]
    views = np.stack([augment(tf.constant(unit(faces)), tf.constant(view_uniforms(0, k, len(faces))), cfg).numpy()
                      for k in range(3)])
    idx = np.arange(len(faces))[::-1]
    xb, yb = training_batches(faces, y1h, TrainConfig(data="", distill_alpha=0.25), soft, seed=1)(tf.constant(idx))
    both = np.concatenate([views, views[:, :, :, ::-1]])  # a view and its mirror image share the flip-averaged target
    seen = [np.flatnonzero([np.allclose(xb.numpy()[j], both[k, i], atol=1e-6) for k in range(6)]) for j, i in
            enumerate(idx)]
    assert all(len(k) == 1 for k in seen) and len({int(k[0]) for k in seen}) == 6  # one cached view each, all used
    k = np.array([int(k[0]) % 3 for k in seen])
    again = training_batches(faces, y1h, TrainConfig(data="", distill_alpha=0.25), soft, seed=1)(tf.constant(idx))
    assert np.array_equal(again[0].numpy(), xb.numpy())  # the draws are the seed's
    assert np.allclose(yb.numpy(), 0.75 * y1h[idx] + 0.25 * soft[k, idx], atol=1e-6)
    xb, yb = training_batches(faces, y1h, cfg, None, seed=1)(tf.constant(idx))  # plain: fresh views, the label
    assert np.array_equal(yb.numpy(), y1h[idx]) and not np.allclose(xb.numpy(), views[:, idx], atol=1e-2)

    # computed once: the cached views are read back, a damaged one is recomputed, a changed teacher gets its own
    folder = next((tmp_path / "teacher-cache").iterdir())
    stamps = {f: f.stat().st_mtime_ns for f in folder.glob("view-*.npy")}
    assert len(stamps) == 3
    assert np.array_equal(teacher_logits(tmp_path / "t.keras", faces, cfg, progress=False), logits)
    assert stamps == {f: f.stat().st_mtime_ns for f in folder.glob("view-*.npy")}
    (folder / "view-001.npy").write_bytes(b"\x93NUMPY truncated")
    assert np.array_equal(teacher_logits(tmp_path / "t.keras", faces, cfg, progress=False), logits)
    assert sorted(p.name for p in folder.iterdir()) == ["about.json", "view-000.npy", "view-001.npy", "view-002.npy"]
    teacher.layers[-1].bias.assign(np.ones(7))
    teacher.save(tmp_path / "t.keras")
    assert not np.allclose(teacher_logits(tmp_path / "t.keras", faces, cfg, progress=False), logits)
    assert len(list((tmp_path / "teacher-cache").iterdir())) == 2

    wrong = keras.Sequential([keras.Input((64, 64, 1)), keras.layers.Flatten(), keras.layers.Dense(7)])
    wrong.save(tmp_path / "wrong.keras")
    (tmp_path / "broken.keras").write_bytes(b"PK\x03\x04 not a whole zip")
    for spec, msg in ((str(tmp_path / "wrong.keras"), r"teacher .*wrong.keras.* must take \(48, 48, 1\)"),
                      (str(tmp_path / "broken.keras"), r"broken.keras is a damaged \.keras file")):
        with pytest.raises(ExportError, match=msg):
            teacher_probabilities(TrainConfig(data="", teacher=spec, teacher_cache=str(tmp_path / "c")), faces,
                                  progress=False)
        assert not (tmp_path / "c").exists()  # refused before any work
    for extra, says in ((["--teacher", f"{tmp_path / 't.keras'},{tmp_path / 'missing.keras'}"], "teacher not found"),
                        (["--teacher", " , "], "--teacher names no file"),
                        (["--teacher", str(tmp_path / "t.keras"), "--teacher-views", "0"], "--teacher-views"),
                        (["--label-smoothing", "1"], "--label-smoothing must be at least 0 and below 1, got 1.0")):
        rc = main(["train", "--data", str(tiny_fer), "--out", str(tmp_path / "e"), "--epochs", "2",
                   "--warmup-epochs", "1", "-q", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and says in err[0] and not (tmp_path / "e").exists(), err

    # a time budget spent while caching stops the run resumably; --resume keeps the teachers and the cache
    cfg.time_budget_min = 1e-9
    cfg.teacher_cache = str(tmp_path / "elsewhere")
    assert train(cfg, progress=False) is None
    assert not list((tmp_path / "elsewhere").glob("*/view-*.npy"))
    release = train(TrainConfig(data=str(tiny_fer), out=cfg.out), resume=True, progress=False)
    assert len(list((tmp_path / "elsewhere").glob("*/view-*.npy"))) == 3
    # a distilled run of the v3 network trains and names its release after the architecture
    assert release.name == "feredge-fer-v3.keras"
    hint = Contract.load(release.with_suffix(".json"))
    assert hint.name == "feredge-fer-v3" and hint.provenance["training"]["config"]["teacher"].endswith("t.keras")


def test_final_fit_trains_on_every_face_and_keeps_the_validation_runs_temperature(tiny_fer: Path, tmp_path: Path,
                                                                                    capsys):
    import keras

    from feredge.export.train.arch import build_v3

    out = tmp_path / "final"
    rc = main(["train", "--data", str(tiny_fer), "--out", str(out), "--epochs", "2", "--batch-size", "16",
               "--width", "4", "--warmup-epochs", "1", "--val-fraction", "0", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--temperature" in err[0] and not out.exists()
    rc = main(["train", "--data", str(tiny_fer), "--out", str(out), "--epochs", "2", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--warmup-epochs (5)" in err[0] and not out.exists()
    for extra, says in ((["--val-fraction", "0", "--resume"], "--temperature"),  # --resume of no run: checked too
                        (["--temperature", "1.2"], "is for a final fit")):
        rc = main(["train", "--data", str(tiny_fer), "--out", str(out), "--epochs", "2", "--warmup-epochs", "1",
                   "-q", *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc != 0 and len(err) == 1 and says in err[0] and not out.exists(), err
    rc = main(["train", "--data", str(tiny_fer), "--out", str(out), "--epochs", "2", "--batch-size", "16",
               "--width", "4", "--warmup-epochs", "1", "--val-fraction", "0", "--temperature", "1.25", "-q"])
    assert rc == 0
    split = np.load(out / "split.npz")
    assert len(split["train"]) == 70 and len(split["val"]) == 0  # every face trains
    hint = Contract.load(out / "feredge-fer-v3.json")
    assert hint.output.temperature == 1.25
    assert hint.provenance["training"]["val_accuracy"] is None
    assert "final fit" in hint.provenance["training"]["temperature_fitted_on"]
    # the release is the last epoch's EMA weights, not the raw ones
    last = keras.models.load_model(out / "last.keras")
    release = build_v3(4)
    release.load_weights(out / "best.weights.h5")
    ema = np.array(last.optimizer._model_variables_moving_average[0])
    assert np.allclose(release.trainable_variables[0].numpy(), ema)
    assert not np.allclose(ema, last.trainable_variables[0].numpy())
    assert (out / "curves.png").is_file()
