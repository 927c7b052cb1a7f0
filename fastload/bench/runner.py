"""Timing contenders interleaved, run by run."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .scenarios import Contender, Scenario


@dataclass
class Measurement:
    scenario: str
    loader: str
    notes: dict[str, str] = field(default_factory=dict)
    batches_per_s: list[float] = field(default_factory=list)


def _time_run(loader: Iterable[Any], batches: int) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    for _batch in itertools.islice(loader, batches):
        count += 1
    return count, time.perf_counter() - start


def run_scenario(
    scenario: Scenario,
    *,
    batches: int,
    batch_size: int,
    workers: int,
    repeats: int,
    progress: Callable[[int], None],
) -> dict[str, Measurement]:
    """``progress(1)`` is called after each repeat. Time ``repeats`` runs of ``batches`` batches per contender, rotating the order each
    repeat, after one warm-up run each (contenders use persistent workers, so worker
    start-up is excluded; each run includes its epoch's ramp-up)."""
    contenders: dict[str, Contender] = scenario.build(batches, batch_size, workers)
    results = {name: Measurement(scenario.name, name, c.notes) for name, c in contenders.items()}
    for contender in contenders.values():
        _time_run(contender.loader, batches)
    names = list(contenders)
    for repeat in range(repeats):
        # Rotate who goes first, so that no contender always runs on a warmer machine.
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            count, seconds = _time_run(contenders[name].loader, batches)
            results[name].batches_per_s.append(count / seconds)
        progress(1)
    return results
