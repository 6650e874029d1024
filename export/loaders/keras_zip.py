"""A Keras 3 ``.keras`` file: Keras 3 reads it; feredge checks for Lambda layers first."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from edge.errors import one_line
from export.errors import ExportError
from export.loaders.common import LABEL_KEYS, labels_from_value, refuse_lambdas


def load(src: Path, architecture: str | None, trust_model: bool) -> tuple[Any, str, list[str] | None]:
    import keras

    try:
        with zipfile.ZipFile(src) as zf:
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

