"""What every loader shares: reading attributes and labels, and refusing Lambda layers before
anything is deserialised (deserialising a Lambda unmarshals bytecode from the file)."""

from __future__ import annotations

import json
import marshal
import sys
from pathlib import Path
from typing import Any

from feredge.export.errors import ExportError
from feredge.export.load.legacy import find_lambdas

LABEL_KEYS = ("labels", "class_names", "classes")


def attr_str(attrs: Any, key: str) -> str | None:
    val = attrs.get(key)
    if isinstance(val, bytes):
        return val.decode("utf-8", "replace")
    return None if val is None else str(val)


def json_attr(val: Any, src: Path) -> Any:
    if isinstance(val, bytes):
        val = val.decode("utf-8")
    try:
        return json.loads(val)
    except (TypeError, json.JSONDecodeError) as e:
        raise ExportError(f"{src}: model_config attribute is not valid JSON ({e})") from None


def refuse_lambdas(cfg: Any, src: Path | str, trust_model: bool) -> None:
    lambdas = find_lambdas(cfg)
    if not lambdas:
        return
    if not trust_model:
        raise ExportError(f"{Path(str(src)).name} contains Lambda layer '{lambdas[0]}'; deserialising it runs code "
                          "from the file; pass --trust-model if you trust it")
    _check_lambda_bytecode(cfg, lambdas)


def _check_lambda_bytecode(cfg: Any, lambdas: list[str]) -> None:
    """Marshalled bytecode only loads under the Python that wrote it; say so plainly."""
    import base64

    def codes(node: Any):
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                fn = (node.get("config") or {}).get("function")
                if isinstance(fn, list) and fn:
                    yield fn[0]
                elif isinstance(fn, dict) and fn.get("class_name") == "__lambda__":
                    yield fn.get("config", {}).get("code")
            for v in node.values():
                yield from codes(v)
        elif isinstance(node, list):
            for v in node:
                yield from codes(v)

    for code in codes(cfg):
        if not isinstance(code, str):
            continue
        try:
            raw = base64.b64decode(code.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raw = code.encode("raw_unicode_escape")
        try:
            marshal.loads(raw)
        except (ValueError, EOFError, TypeError):
            py = f"{sys.version_info.major}.{sys.version_info.minor}"
            raise ExportError(f"Lambda layer '{lambdas[0]}' holds Python bytecode that Python {py} cannot load "
                              "(written by another Python version); rebuild the model with a builder "
                              "(--architecture builder.py:function) and its weights") from None


def labels_from_value(val: Any) -> list[str] | None:
    if val is None:
        return None
    if isinstance(val, bytes):
        val = val.decode("utf-8", "replace")
    if isinstance(val, str):
        text = val.strip()
        try:
            val = json.loads(text)
        except json.JSONDecodeError:
            val = [s.strip() for s in text.replace("\n", ",").split(",")]
    try:
        items = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in list(val)]
    except TypeError:
        return None
    items = [s for s in (i.strip() for i in items) if s]
    return items or None


def labels_from_text(p: Path) -> list[str] | None:
    try:
        return labels_from_value(p.read_text(encoding="utf-8").replace("\n", ","))
    except (OSError, UnicodeDecodeError):
        return None


def fmt_shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"

