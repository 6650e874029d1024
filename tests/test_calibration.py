"""Calibration readers: FER2013 folder layout, plain folders, the Kaggle CSV, .npz/.npy arrays.

No TensorFlow here: these are numpy/OpenCV only and run in about a second. Synthetic images
stand in for faces where only the reading logic matters; the CSV is built from real FER2013
faces (as the Kaggle file holds them) when the shared data is present.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from feredge.edge.contract import FER2013_LABELS, InputSpec, Normalize
from feredge.edge.preprocess import prepare_batch
from feredge.export.calibration import read_heldout, read_source
from feredge.export.errors import ExportError

FOLDER_CLASSES = sorted(FER2013_LABELS)  # folders sort alphabetically: ..., neutral, sad, surprise


def _img(i: int, size: int = 48, color: bool = False) -> np.ndarray:
    rng = np.random.default_rng(i)
    a = rng.integers(0, 256, (size, size, 3) if color else (size, size), dtype=np.uint8)
    a[0, 0] = i % 256  # distinct pixels per image, so hashes differ
    return a


def _layout(root: Path, per_class: dict[str, int], part: str = "train", ext: str = ".png") -> None:
    for c, n in per_class.items():
        d = root / part / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(d / f"{c}_{i:03d}{ext}"), _img(zlib.crc32(f"{part}/{c}/{i}".encode()) % 10_000))


@pytest.fixture()
def fer_like(tmp_path: Path) -> Path:
    counts = {c: 10 * (k + 1) for k, c in enumerate(FOLDER_CLASSES)}  # 10..70: unbalanced on purpose
    _layout(tmp_path, counts, "train")
    _layout(tmp_path, {c: 3 for c in FOLDER_CLASSES}, "test")
    return tmp_path


def test_folder_layout_train_and_test(fer_like: Path):
    s = read_source(fer_like, "train", progress=False)
    assert s.class_names == FOLDER_CLASSES
    assert len(s) == sum(10 * (k + 1) for k in range(7))
    assert s.ids == sorted(s.ids) and s.ids[0].startswith("angry/")
    t = read_source(fer_like, "test", progress=False)
    assert len(t) == 21 and t.class_names == FOLDER_CLASSES
    img = t.images[0]
    assert img.dtype == np.uint8 and img.ndim == 2 and img.shape == (48, 48)


def test_folder_of_class_folders_has_no_test_part(fer_like: Path):
    s = read_source(fer_like / "train", "train", progress=False)
    assert s.class_names == FOLDER_CLASSES
    with pytest.raises(ExportError, match="no test/ part"):
        read_source(fer_like / "train", "test", progress=False)


def test_labels_map_by_name_not_index(fer_like: Path):
    s = read_source(fer_like, "train", progress=False)
    y = s.labels_for(FER2013_LABELS)
    names = [FER2013_LABELS[j] for j in y]
    assert names == [sid.split("/")[0] for sid in s.ids]
    # Folder index 4 is "neutral" but FER2013 CSV index 4 is "sad": a positional mapping fails here.
    assert FOLDER_CLASSES[4] == "neutral" and y[s.labels == 4][0] == FER2013_LABELS.index("neutral")
    # Classes the model does not have become -1; aliases of other datasets still match.
    y2 = s.labels_for(["happiness", "sadness"])
    assert set(np.unique(y2)) == {-1, 0, 1}
    assert (y2[np.array([i.startswith("happy/") for i in s.ids])] == 0).all()


def test_sample_reproducible_proportional_and_fast(fer_like: Path):
    s = read_source(fer_like, "train", progress=False)
    a, b = s.sample(56, seed=0), s.sample(56, seed=0)
    c = s.sample(56, seed=1)
    assert a.ids == b.ids and a.sha256() == b.sha256()
    assert a.ids != c.ids and a.sha256() != c.sha256()
    counts = np.bincount(a.labels, minlength=7)
    np.testing.assert_array_equal(counts, [2, 4, 6, 8, 10, 12, 14])  # 56/280 of 10..70
    assert a.ids == sorted(a.ids)
    # Sampling decodes only the sample: the parent set has not been materialised.
    assert s._images is None


def test_sample_of_real_fer2013_is_quick_and_proportional(fer2013_dir: Path):
    import time

    t0 = time.perf_counter()
    s = read_source(fer2013_dir, "train", progress=False)
    smp = s.sample(500, seed=0)
    took = time.perf_counter() - t0
    full = np.bincount(s.labels, minlength=7) / len(s.ids)
    got = np.bincount(smp.labels, minlength=7) / len(smp)
    assert len(smp) == 500 and np.abs(full - got).max() < 0.01
    print(f"listing 28k + decoding a 500 sample: {took:.2f} s")


def test_unreadable_images_are_counted_and_replaced(tmp_path: Path):
    _layout(tmp_path, {"happy": 6, "sad": 6})
    (tmp_path / "train" / "happy" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "train" / "sad" / "empty.png").write_bytes(b"")
    (tmp_path / "train" / "sad" / "notes.txt").write_text("ignored: not an image extension")
    s = read_source(tmp_path, "train", progress=False)
    assert len(s.ids) == 14
    smp = s.sample(100, seed=3)  # asks for more than there is: every file is tried
    assert len(smp) == 12 and smp.skipped == 2
    assert sorted(smp.skipped_ids) == ["happy/broken.jpg", "sad/empty.png"]
    full = read_source(tmp_path, "train", progress=False).load(progress=False)
    assert full.skipped == 2 and len(full.images) == 12


def test_all_unreadable_is_an_error(tmp_path: Path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        (d / f"x{i}.jpg").write_bytes(b"garbage")
    s = read_source(d, "train", progress=False)
    with pytest.raises(ExportError, match="all 3 sampled image"):
        s.sample(10, seed=0)


def test_empty_or_missing_sources(tmp_path: Path):
    with pytest.raises(ExportError, match="not found"):
        read_source(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="contains no images"):
        read_source(tmp_path / "empty")
    (tmp_path / "data.txt").write_text("hello")
    with pytest.raises(ExportError, match=r"not a folder, \.csv, \.npz or \.npy"):
        read_source(tmp_path / "data.txt")


def test_plain_folder_unlabelled_and_disjoint_heldout(tmp_path: Path):
    d = tmp_path / "faces"
    d.mkdir()
    for i in range(30):
        cv2.imwrite(str(d / f"f{i:02d}.jpg"), _img(i, 40, color=True))
    s = read_source(d, progress=False)
    assert s.labels is None and s.class_names == [] and len(s) == 30
    assert s.images[0].shape == (40, 40, 3)
    calib = s.sample(10, seed=0)
    held = read_heldout(d, calib, seed=0, source=s)
    assert len(held) == 20 and not set(held.ids) & set(calib.ids)
    assert "disjoint" in held.description


def test_kaggle_csv_usage(tmp_path: Path, fer2013_dir: Path):
    """A miniature fer2013.csv built from real FER2013 faces, in the Kaggle column layout."""
    rows = []
    for k, label in enumerate(FER2013_LABELS):
        files = sorted((fer2013_dir / "train" / label).glob("*.jpg"))[:3]
        for j, f in enumerate(files):
            usage = ("Training", "PublicTest", "PrivateTest")[j]
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            rows.append([k, " ".join(map(str, img.reshape(-1).tolist())), usage])
    rows.append([3, "1 2 3", "Training"])  # not a square image: unreadable, skipped
    p = tmp_path / "fer2013.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        w.writerows(rows)
    train = read_source(p, "train", progress=False)
    assert len(train.ids) == 8 and train.class_names == list(FER2013_LABELS)
    smp = train.sample(50, seed=0)
    assert len(smp) == 7 and smp.skipped == 1
    assert smp.images[0].shape == (48, 48)
    assert list(smp.labels_for(FER2013_LABELS)) == list(range(7))  # CSV order == FER2013 order
    test = read_source(p, "test", progress=False)  # PublicTest
    assert len(test) == 7 and test.description.startswith("fer2013.csv (PublicTest")
    priv = read_source(p, "train", usage="PrivateTest", progress=False)
    assert len(priv) == 7
    # Calibrating on PublicTest moves the held-out check to PrivateTest.
    assert "PrivateTest" in read_source(p, "test", usage="PublicTest", progress=False).description
    with pytest.raises(ExportError, match="no Usage 'Validation' rows"):
        read_source(p, "train", usage="Validation", progress=False)


def test_npz_split_keys_and_rgb(tmp_path: Path):
    x_train = np.stack([_img(i, 32, color=True) for i in range(20)])  # RGB by array convention
    y_train = np.arange(20) % 4
    x_test = np.stack([_img(100 + i, 32, color=True) for i in range(8)]).astype(np.float32)
    p = tmp_path / "d.npz"
    np.savez(p, x_train=x_train, y_train=y_train, x_test=x_test, y_test=np.arange(8) % 4,
             class_names=np.array(["angry", "happy", "sad", "neutral"]))
    s = read_source(p, "train", progress=False)
    assert len(s) == 20 and s.class_names == ["angry", "happy", "sad", "neutral"]
    np.testing.assert_array_equal(s.images[0], x_train[0][:, :, ::-1])  # RGB -> OpenCV BGR
    assert list(s.labels_for(FER2013_LABELS)[:4]) == [0, 3, 4, 6]
    t = read_source(p, "test", progress=False)
    assert len(t) == 8 and t.images[0].dtype == np.uint8


def test_npz_plain_keys_float01_and_npy(tmp_path: Path):
    x = np.random.default_rng(0).random((12, 28, 28)).astype(np.float32)  # 0..1 floats
    p = tmp_path / "mnistish.npz"
    np.savez(p, x=x, y=np.eye(3)[np.arange(12) % 3])  # one-hot labels
    s = read_source(p, progress=False)
    assert s.indexed_labels and list(s.labels[:4]) == [0, 1, 2, 0]
    assert s.images[0].max() > 200  # scaled from 0..1 to 0..255
    with pytest.raises(ExportError, match="no test arrays"):
        read_source(p, "test")
    q = tmp_path / "grey.npy"
    np.save(q, (x * 255).astype(np.uint8)[..., None])
    a = read_source(q, progress=False)
    assert a.labels is None and a.images[0].shape == (28, 28)
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 5, 6, 7)))
    with pytest.raises(ExportError, match="is not images"):
        read_source(bad)


def test_grey_calibration_becomes_rgb_for_three_channel_models(fer_like: Path):
    s = read_source(fer_like, "train", progress=False).sample(8, seed=0)
    spec = InputSpec(32, 32, 3, "rgb", normalize=Normalize(1 / 255.0, 0.0))
    x = prepare_batch(s.images, spec)
    assert x.shape == (8, 32, 32, 3)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey replicated into R, G and B
