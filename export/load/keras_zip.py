"""A Keras 3 ``.keras`` file: Keras 3 reads it; feredge checks for Lambda layers first."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from feredge.edge.errors import one_line
from feredge.export.errors import ExportError
from feredge.export.load.common import LABEL_KEYS, labels_from_value, refuse_lambdas

# Declared (uncompressed) sizes read before anything is: a config.json that declares 1 GiB reached
# 2.7 GB of memory and was still loading after 30 s. Keras' own check covers only assets/.
MAX_JSON_BYTES = 16 << 20
MAX_MEMBER_BYTES = 2 << 30
MAX_RATIO = 200  # a large member compressed more than this is a zip bomb, not weights


def check_members(zf: zipfile.ZipFile, src: Path) -> None:
    for info in zf.infolist():
        limit = MAX_JSON_BYTES if info.filename.endswith(".json") else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise ExportError(f"{src.name}: member {info.filename[:80]} declares {info.file_size:,} bytes, more than "
                              f"{limit:,}; not a model this tool will unpack")
        if info.file_size > (64 << 20) and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            fold = info.file_size // max(1, info.compress_size)
            raise ExportError(f"{src.name}: member {info.filename[:80]} expands {fold}-fold ({info.file_size:,} "
                              "bytes): a zip bomb, not a model")


def load(src: Path, architecture: str | None, trust_model: bool) -> tuple[Any, str, list[str] | None]:
    import keras

    if architecture is not None:
        raise ExportError(f"--architecture is for weights-only .h5 files; {src.name} is a .keras model that carries "
                          "its own architecture")
    try:
        with zipfile.ZipFile(src) as zf:
            check_members(zf, src)
            names = zf.namelist()
            if "config.json" not in names:
                raise ExportError(f"{src} is a zip file but not a Keras 3 .keras model (no config.json)")
            config = json.loads(zf.read("config.json"))
            meta = json.loads(zf.read("metadata.json")) if "metadata.json" in names else {}
    except (zipfile.BadZipFile, json.JSONDecodeError, OSError) as e:
        raise ExportError(f"{src} is a damaged .keras file: {e}") from None
    refuse_lambdas(config, src, trust_model)
    try:
        model = keras.saving.load_model(src, compile=False, safe_mode=not trust_model)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"Keras 3 cannot load {src.name}: {one_line(e)}") from None
    labels = labels_from_value(next((meta[k] for k in LABEL_KEYS if k in meta), None))
    version = meta.get("keras_version", "3")
    return model, f"keras {version} .keras", labels

