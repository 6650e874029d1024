"""Value rules kept beside the dataclass fields they check, in ``field(metadata=...)``.

Why beside the field: a table of rules kept apart from the fields can drift from them (a field
added without its range, a rule left behind for a renamed key). With the rule on the field, the
daemon's config check and the detector read the same rules from the same place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rule:
    ok: Callable[[Any], bool]
    must: str  # what a value must be, as an error message says it: "> 0", "auto, cpu or coral"


def ruled(default: Any, ok: Callable[[Any], bool], must: str) -> Any:
    """A dataclass field defaulting to ``default`` whose values must pass ``ok``."""
    return dataclasses.field(default=default, metadata={"rule": Rule(ok, must)})


def choice(default: Any, values: Collection[Any], must: str | None = None) -> Any:
    """A field whose value is one of ``values`` (``must`` defaults to "a, b or c")."""
    return ruled(default, lambda v: v in values, must or either(values))


def either(values: Collection[Any]) -> str:
    names = [str(v) for v in values]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def broken(obj: Any) -> Iterator[tuple[str, Any, str]]:
    """``(field, value, must)`` for each field of the dataclass ``obj`` whose value breaks its rule."""
    for f in dataclasses.fields(obj):
        rule = f.metadata.get("rule")
        value = getattr(obj, f.name)
        if rule is not None and not rule.ok(value):
            yield f.name, value, rule.must


def positive(v: float) -> bool:
    return v > 0


def at_least(n: float) -> Callable[[float], bool]:
    return lambda v: v >= n
