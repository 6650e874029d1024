"""Calibration and held-out data: FER2013 folders, the Kaggle CSV, NumPy arrays, plain folders.

Every reader yields an :class:`ImageSet` of OpenCV images (uint8, 2-D grey or HxWx3 BGR) with
the source's OWN class names. Turning them into model input is left to
:func:`feredge.edge.preprocess.prepare_batch` so calibration sees exactly what the device sees, and
mapping classes to model outputs goes by name (:meth:`ImageSet.labels_for`), because FER2013's
folder order (alphabetical) and its CSV order differ.

Images are decoded lazily: a sample of 500 out of 28k JPEGs decodes only those 500, which
keeps an export on a small workstation within a minute.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.contract import FER2013_LABELS
from feredge.edge.sources import IMAGE_EXTENSIONS
from feredge.edge.sources.images import read_image
from feredge.export.errors import ExportError, NoTestPart
from feredge.export.progress import progress_bar

log = logging.getLogger(__name__)

# Names other datasets use for the FER2013 classes (AffectNet, RAF-DB, CK+ folders...).
_ALIASES = {
    "anger": "angry", "angered": "angry", "mad": "angry",
    "disgusted": "disgust", "fearful": "fear", "scared": "fear", "afraid": "fear",
    "happiness": "happy", "joy": "happy", "smile": "happy",
    "sadness": "sad", "unhappy": "sad",
    "surprised": "surprise", "neutrality": "neutral", "calm": "neutral",
}

Loader = Callable[[int], "np.ndarray | None"]


def _norm_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(key, key)


def as_opencv(image: np.ndarray) -> np.ndarray | None:
    """Any decoded image -> the OpenCV convention (uint8, 2-D grey or HxWx3 BGR); None if not an image."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGRA2BGR)
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 3)) or img.size == 0:
        return None
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(np.rint(img.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


@dataclass
class ImageSet:
    """Images with the source's own class names; decoded on first access of :attr:`images`.

    ``labels`` index into ``class_names`` (None for unlabelled sources). ``skipped`` counts the
    files that could not be decoded; they are dropped, never fatal on their own.
    """

    ids: list[str]
    labels: np.ndarray | None
    class_names: list[str]
    description: str
    loader: Loader | None = field(default=None, repr=False)
    skipped: int = 0
    skipped_ids: list[str] = field(default_factory=list)
    # True when the labels are already indices of the model's outputs (arrays without names).
    indexed_labels: bool = False
    _images: list[np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self._images) if self._images is not None else len(self.ids)

    @property
    def images(self) -> list[np.ndarray]:
        if self._images is None:
            self._materialize(progress=False)
        assert self._images is not None
        return self._images

    def load(self, *, progress: bool = True) -> ImageSet:
        """Decode every image now (with a progress bar); unreadable ones are counted and dropped."""
        if self._images is None:
            self._materialize(progress=progress)
        return self

    def _materialize(self, *, progress: bool) -> None:
        assert self.loader is not None
        keep, imgs = [], []
        for i in progress_bar(range(len(self.ids)), desc="reading images", enabled=progress):
            img = self.loader(i)
            if img is None:
                self.skipped += 1
                self.skipped_ids.append(self.ids[i])
            else:
                keep.append(i)
                imgs.append(img)
        if self.skipped:
            log.warning("skipped %d unreadable image(s) in %s (first: %s)", self.skipped, self.description,
                        self.skipped_ids[0])
        self.ids = [self.ids[i] for i in keep]
        if self.labels is not None:
            self.labels = self.labels[keep]
        self._images = imgs
        if not imgs and self.skipped:
            raise ExportError(f"all {self.skipped} image(s) in {self.description} are unreadable")

    # ---- sampling ---------------------------------------------------------------------
    def sample(self, n: int, seed: int = 0, *, exclude: Sequence[str] = (), progress: bool = False) -> ImageSet:
        """A seeded, class-proportional sample of ``n`` readable images, decoded.

        Reproducible: the order is fixed by the sorted ids and ``seed``. An unreadable file is
        replaced by the next one the seeded order of its class offers, so the sample keeps its
        size and proportions while the count of skipped files is still reported.
        """
        if n <= 0:
            raise ExportError(f"sample size must be positive, got {n}")
        excluded = set(exclude)
        pool = np.array([i for i, s in enumerate(self.ids) if s not in excluded], dtype=np.int64)
        if pool.size == 0:
            raise ExportError(f"{self.description} has no images left to sample")
        labels = self.labels[pool] if self.labels is not None else np.zeros(pool.size, np.int64)
        classes = np.unique(labels)
        rng = np.random.default_rng(seed)
        orders = {int(c): pool[labels == c][rng.permutation(int((labels == c).sum()))] for c in classes}
        quota = _proportional_quota({c: len(o) for c, o in orders.items()}, min(n, pool.size))

        chosen: list[int] = []
        images: dict[int, np.ndarray] = {}
        skipped_ids: list[str] = []
        with progress_bar(total=sum(quota.values()), desc="reading sample", enabled=progress) as bar:
            for c, order in orders.items():
                got = 0
                for idx in order:
                    if got >= quota[c]:
                        break
                    img = self._get(int(idx))
                    if img is None:
                        skipped_ids.append(self.ids[idx])
                        continue
                    images[int(idx)] = img
                    chosen.append(int(idx))
                    got += 1
                    bar.update(1)
        if not chosen:
            raise ExportError(f"all {len(skipped_ids)} sampled image(s) in {self.description} are unreadable")
        chosen.sort()
        if skipped_ids:
            log.warning("skipped %d unreadable image(s) while sampling %s (first: %s)", len(skipped_ids),
                        self.description, skipped_ids[0])
        return ImageSet(
            ids=[self.ids[i] for i in chosen],
            labels=None if self.labels is None else self.labels[chosen],
            class_names=list(self.class_names),
            description=f"{len(chosen)} of {pool.size} from {self.description} (seed {seed})",
            skipped=len(skipped_ids),
            skipped_ids=skipped_ids,
            indexed_labels=self.indexed_labels,
            _images=[images[i] for i in chosen],
        )

    def _get(self, i: int) -> np.ndarray | None:
        if self._images is not None:
            return self._images[i]
        assert self.loader is not None
        return self.loader(i)

    # ---- identity and labels ------------------------------------------------------------
    def sha256(self) -> str:
        """Hash of ids and pixels: names the exact calibration data in the contract's provenance."""
        h = hashlib.sha256()
        for sid, img in zip(self.ids, self.images, strict=True):
            h.update(sid.encode("utf-8") + b"\0")
            h.update(str(img.shape).encode() + b"\0")
            h.update(np.ascontiguousarray(img).tobytes())
        return h.hexdigest()

    def labels_for(self, model_labels: Sequence[str]) -> np.ndarray | None:
        """Labels as indices of the model's outputs, matched by NAME; -1 where the model lacks the class.

        Never by position: FER2013 folders sort alphabetically (…, neutral, sad, surprise) while
        the CSV and most FER models use angry, disgust, fear, happy, sad, surprise, neutral.
        """
        if self.labels is None:
            return None
        if self.indexed_labels:
            out = self.labels.astype(np.int64)
            return np.where(out < len(model_labels), out, -1)
        wanted = {_norm_name(m): j for j, m in enumerate(model_labels)}
        mapping = np.array([wanted.get(_norm_name(c), -1) for c in self.class_names], dtype=np.int64)
        unmatched = [c for c, j in zip(self.class_names, mapping, strict=True) if j < 0]
        if unmatched:
            log.warning("classes %s of %s are not model labels (%s); they count as unlabelled",
                        unmatched, self.description, ", ".join(model_labels))
        return mapping[self.labels]


def _proportional_quota(counts: dict[int, int], n: int) -> dict[int, int]:
    """Largest-remainder split of ``n`` over classes in proportion to their sizes."""
    total = sum(counts.values())
    raw = {c: n * k / total for c, k in counts.items()}
    quota = {c: min(counts[c], int(np.floor(v))) for c, v in raw.items()}
    left = n - sum(quota.values())
    for c in sorted(raw, key=lambda c: (-(raw[c] - np.floor(raw[c])), c)):
        if left <= 0:
            break
        if quota[c] < counts[c]:
            quota[c] += 1
            left -= 1
    return quota


# ---- readers ----------------------------------------------------------------------------

def read_source(path: str | os.PathLike[str], part: str = "train", usage: str | None = None,
                progress: bool = True) -> ImageSet:
    """Read a calibration source; ``part`` picks the training or the held-out test part.

    Raises :class:`ExportError` for a missing, empty or unsupported source. For a source that
    has no test part, ``part="test"`` raises too; use :func:`read_heldout`, which falls back to
    a disjoint sample.
    """
    if part not in ("train", "test"):
        raise ValueError(f"part must be 'train' or 'test', not {part!r}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ExportError(f"calibration source not found: {p}")
    if p.is_dir():
        s = _read_dir(p, part)
    elif p.suffix.lower() in (".csv", ".gz") or p.name.lower().endswith(".csv.gz"):
        s = _read_csv(p, part, usage, progress)
    elif p.suffix.lower() in (".npz", ".npy"):
        s = _read_arrays(p, part)
    elif p.suffix.lower() in IMAGE_EXTENSIONS:
        raise ExportError(f"calibration source {p} is a single image; give the folder that holds the images")
    else:
        raise ExportError(
            f"calibration source {p} is not a folder, .csv, .npz or .npy (FER2013 layout, Kaggle CSV, arrays)"
        )
    if len(s.ids) == 0:
        raise ExportError(f"calibration source {p} contains no images")
    return s


HELDOUT_DISJOINT = 1000  # held-out faces drawn beside the calibration sample when there is no test part


def read_heldout(path: str | os.PathLike[str], calibration: ImageSet, *, n: int | None = None, seed: int = 0,
                 usage: str | None = None, source: ImageSet | None = None, progress: bool = False) -> ImageSet:
    """Held-out data for the export report: the source's test part, else a sample disjoint
    from the calibration sample (so the report never scores the data the scales were fit on);
    ``n`` caps either (default: the whole test part, or :data:`HELDOUT_DISJOINT` faces)."""
    try:
        test = read_source(path, "test", usage=usage, progress=False)
    except NoTestPart:
        test = None
    if test is not None:
        if n is not None and n < len(test.ids):
            return test.sample(n, seed, progress=progress)
        return test.load(progress=progress)
    base = source if source is not None else read_source(path, "train", usage=usage, progress=False)
    used = set(calibration.ids) | set(calibration.skipped_ids)
    remaining = sum(1 for i in base.ids if i not in used)
    if remaining > 0:
        try:
            s = base.sample(min(n or HELDOUT_DISJOINT, remaining), seed + 1, exclude=sorted(used))
        except ExportError:  # what is left is unreadable
            s = None
        if s is not None:
            s.description = f"held-out {s.description} (disjoint from the calibration sample)"
            return s
    log.warning("%s has no readable images left after calibration; the report scores the calibration "
                "sample itself", base.description)
    return calibration


def _list_images(folder: Path, recursive: bool) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(f for f in it if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith("."))


def _read_dir(p: Path, part: str) -> ImageSet:
    split_dir = None
    for name in (("train", "training", "Training") if part == "train" else ("test", "val", "PublicTest")):
        if (p / name).is_dir():
            split_dir = p / name
            break
    has_split = any((p / n).is_dir() for n in ("train", "training", "Training", "test", "val", "PublicTest"))
    if split_dir is None and (part == "test" or has_split):
        raise (NoTestPart if part == "test" else ExportError)(f"{p} has no {part}/ part")
    root = split_dir or p
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    class_files = [(d.name, _list_images(d, recursive=True)) for d in class_dirs]
    class_files = [(n, fs) for n, fs in class_files if fs]
    if class_files:
        class_names = [n for n, _ in class_files]
        files = [f for _, fs in class_files for f in fs]
        labels = np.array([i for i, (_, fs) in enumerate(class_files) for _ in fs], dtype=np.int64)
        desc = f"{root} ({len(files)} images in {len(class_names)} class folders)"
    else:
        files = _list_images(root, recursive=False)
        class_names, labels = [], None
        desc = f"{root} ({len(files)} unlabelled images)"
    ids = [f.relative_to(root).as_posix() for f in files]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    ids = [ids[i] for i in order]
    files = [files[i] for i in order]
    if labels is not None:
        labels = labels[order]
    if not files:
        raise ExportError(f"calibration source {root} contains no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return ImageSet(ids=ids, labels=labels, class_names=class_names, description=desc,
                    loader=lambda i: read_image(files[i], keep_grey=True, strict=True)[0])


_CSV_PART = {"train": "Training", "test": "PublicTest"}


def _read_csv(p: Path, part: str, usage: str | None, progress: bool) -> ImageSet:
    """The original Kaggle ``fer2013.csv``: ``emotion,pixels,Usage``; pixels decoded lazily."""
    import gzip

    opener = gzip.open if p.suffix.lower() == ".gz" else open
    try:
        with opener(p, "rt", newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header:
                raise ExportError(f"calibration CSV {p} is empty")
            cols = {h.strip().lower(): i for i, h in enumerate(header)}
            if "pixels" not in cols:
                raise ExportError(f"calibration CSV {p} has no 'pixels' column (expected emotion,pixels,Usage)")
            rows = list(reader)
    except UnicodeDecodeError:
        raise ExportError(f"calibration CSV {p} is not a text CSV") from None
    except (OSError, csv.Error) as e:
        raise ExportError(f"cannot read calibration CSV {p}: {e}") from None
    pi, ei, ui = cols["pixels"], cols.get("emotion"), cols.get("usage")
    want = None
    if ui is not None:
        usages = sorted({r[ui].strip() for r in rows if len(r) > ui})
        if part == "train":
            want = usage or _CSV_PART["train"]
        else:
            want = "PrivateTest" if usage == "PublicTest" else _CSV_PART["test"]
        if want not in usages:
            if part == "test":
                raise NoTestPart(f"{p} has no {want} rows")
            raise ExportError(f"calibration CSV {p} has no Usage {want!r} rows (it has: {', '.join(usages)})")
    elif part == "test":
        raise NoTestPart(f"{p} has no Usage column, so no test part")
    sel = [i for i, r in enumerate(rows) if len(r) > pi and (want is None or r[ui].strip() == want)]
    pixels = [rows[i][pi] for i in sel]
    labels = None
    if ei is not None:
        try:
            labels = np.array([int(rows[i][ei]) for i in sel], dtype=np.int64)
        except ValueError:
            raise ExportError(f"calibration CSV {p} has a non-integer emotion value") from None
        if labels.size and (labels.min() < 0 or labels.max() >= len(FER2013_LABELS)):
            raise ExportError(f"calibration CSV {p} has emotion values outside 0..{len(FER2013_LABELS) - 1}")

    def load(i: int) -> np.ndarray | None:
        try:
            v = np.array(pixels[i].split(), dtype=np.float64)
        except ValueError:
            return None
        side = math.isqrt(v.size)
        if v.size == 0 or side * side != v.size or v.min() < 0 or v.max() > 255:
            return None
        return v.reshape(side, side).astype(np.uint8)

    desc = f"{p.name} ({want or 'all rows'}, {len(sel)} rows)"
    return ImageSet(ids=[f"row{sel[i] + 2:06d}" for i in range(len(sel))], labels=labels,
                    class_names=list(FER2013_LABELS), description=desc, loader=load)


_NPZ_KEYS = {
    "train": (("x_train", "X_train", "train_x", "images_train", "train_images"),
              ("y_train", "Y_train", "train_y", "labels_train", "train_labels")),
    "test": (("x_test", "X_test", "test_x", "images_test", "test_images"),
             ("y_test", "Y_test", "test_y", "labels_test", "test_labels")),
    "all": (("x", "X", "images", "data", "arr_0"), ("y", "Y", "labels", "targets", "arr_1")),
}


MAX_ARRAY_BYTES = 4 << 30  # FER2013 as uint8 arrays is 0.1 GB; a member declaring more is refused unread


def _check_npz(p: Path) -> None:
    """Declared sizes of an .npz's members, before numpy inflates one (a zip bomb of zeros)."""
    import zipfile

    if not zipfile.is_zipfile(p):
        return
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            if info.file_size > MAX_ARRAY_BYTES:
                raise ExportError(f"calibration arrays {p}: member {info.filename[:80]} declares "
                                  f"{info.file_size:,} bytes, more than {MAX_ARRAY_BYTES:,}")


def _read_arrays(p: Path, part: str) -> ImageSet:
    try:
        _check_npz(p)
        obj = np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read calibration arrays {p}: {e}") from None
    names: list[str] = []
    if isinstance(obj, np.ndarray):
        if part == "test":
            raise NoTestPart(f"{p} has no test part")
        x, y = obj, None
    else:
        with obj:
            keys = set(obj.files)
            x_keys, y_keys = _NPZ_KEYS[part]
            xk = next((k for k in x_keys if k in keys), None)
            if xk is None and part == "train":
                x_keys, y_keys = _NPZ_KEYS["all"]
                xk = next((k for k in x_keys if k in keys), None)
            if xk is None:
                if part == "test":
                    raise NoTestPart(f"{p} has no test arrays")
                raise ExportError(f"{p} has no image array (keys: {', '.join(sorted(keys))}; expected x or x_train)")
            yk = next((k for k in y_keys if k in keys), None)
            x = obj[xk]
            y = obj[yk] if yk else None
            for k in ("class_names", "classes", "label_names"):
                if k in keys:
                    names = [str(s) for s in obj[k].tolist()]
                    break
    x = _as_images(x, p)
    labels = None
    if y is not None:
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] > 1:
            y = y.argmax(axis=1)
        y = y.reshape(-1).astype(np.int64)
        if y.size != len(x):
            raise ExportError(f"{p}: {len(x)} images but {y.size} labels")
        labels = y
    indexed = labels is not None and not names
    if indexed:
        names = [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []
    desc = f"{p.name} ({part if not isinstance(obj, np.ndarray) else 'array'}, {len(x)} images)"
    return ImageSet(ids=[f"{i:07d}" for i in range(len(x))], labels=labels, class_names=names, description=desc,
                    loader=lambda i: _array_image(x[i]), indexed_labels=indexed)


def _as_images(x: np.ndarray, p: Path) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "uif":
        raise ExportError(f"{p}: image array has dtype {x.dtype}, expected uint8 or float 0..255")
    if x.ndim == 2:  # flattened square images (N, H*W)
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ExportError(f"{p}: array of shape {x.shape} is not images (N,H,W[,C])")
        x = x.reshape(len(x), side, side)
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # channels-first
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3))):
        raise ExportError(f"{p}: array of shape {x.shape} is not images (N,H,W), (N,H,W,1) or (N,H,W,3)")
    if x.dtype.kind == "f" and x.size and float(np.nanmax(x)) <= 1.0:
        log.warning("%s holds floats in 0..1; taking them as x/255 (expected 0..255 pixels)", p.name)
        x = x * 255.0
    return x


def _array_image(a: np.ndarray) -> np.ndarray | None:
    a = np.asarray(a)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        return None
    img = as_opencv(a)
    if img is not None and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # arrays are RGB by convention; OpenCV images BGR
    return img
