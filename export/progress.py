"""One way to show progress on long work (reading data, calibration, scoring, parity).

Bars go to stderr and only when stderr is a terminal (tqdm's ``disable=None``), so CI logs,
journald and ``2>&1 | tee`` stay free of carriage-return noise; ``--quiet`` turns them off.
A disabled bar is still a tqdm object, so callers ``update``/``close`` it without checks.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str,
                 unit: str = "img", enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True,
                disable=None if enabled else True)
