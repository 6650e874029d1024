"""JSON that every consumer can parse: NaN and infinity become ``null``.

Python's ``json`` writes ``NaN``, which is not JSON: a Home Assistant template, ``jq`` or a
browser's ``JSON.parse`` rejects the whole message. Validation refuses non-finite settings, so
this is the last guard, for a number computed from a broken input.
"""

from __future__ import annotations

import json
import math
from typing import Any


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` with non-finite floats as ``null`` (the common, finite case costs nothing extra)."""
    try:
        return json.dumps(obj, allow_nan=False, **kwargs)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, **kwargs)
