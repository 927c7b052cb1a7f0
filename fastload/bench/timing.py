"""Timing one run of a loader: what every contender's run measures."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from typing import Any


def time_run(loader: Iterable[Any], batches: int | None) -> tuple[int, float]:
    """(batches yielded, seconds) for up to ``batches`` batches of ``loader`` (None: an epoch)."""
    start = time.perf_counter()
    count = 0
    for _batch in itertools.islice(loader, batches):
        count += 1
    return count, time.perf_counter() - start
