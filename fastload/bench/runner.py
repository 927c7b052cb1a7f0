"""Timing loaders interleaved, epoch by epoch."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch.utils.data

import fastload

from .scenarios import Scenario


@dataclass
class Measurement:
    scenario: str
    loader: str  # "torch" | "fastload"
    batches_per_s: list[float] = field(default_factory=list)


def _time_epoch(loader: Iterable[Any]) -> tuple[int, float]:
    start = time.perf_counter()
    batches = 0
    for _batch in loader:
        batches += 1
    return batches, time.perf_counter() - start


def run_scenario(
    scenario: Scenario,
    *,
    batches: int,
    batch_size: int,
    workers: int,
    repeats: int,
    progress: Callable[[int], None],
) -> dict[str, Measurement]:
    """Time ``repeats`` epochs of each loader, alternating, after one warm-up epoch each.

    Both loaders use persistent workers, so worker start-up is excluded and every
    timed epoch measures steady-state throughput including each epoch's ramp-up.
    """
    dataset = scenario.make_dataset(batches, batch_size)
    kwargs = dict(batch_size=batch_size, num_workers=workers, persistent_workers=workers > 0, **scenario.loader_kwargs)
    loaders = {
        "torch": torch.utils.data.DataLoader(dataset, **kwargs),
        "fastload": fastload.DataLoader(dataset, **kwargs),
    }
    results = {name: Measurement(scenario.name, name) for name in loaders}
    for loader in loaders.values():
        _time_epoch(loader)
    for repeat in range(repeats):
        # Alternate which loader goes first, so neither always runs on a warmer machine.
        order = list(loaders) if repeat % 2 == 0 else list(reversed(loaders))
        for name in order:
            n, seconds = _time_epoch(loaders[name])
            results[name].batches_per_s.append(n / seconds)
            progress(1)
    del loaders
    return results
